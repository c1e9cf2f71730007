//! HTML report: one self-contained file for a change board, printable, readable without
//! JavaScript. Inline style and a small inline script (table sorting) only; no external asset,
//! font or URL. Every value from the tenant, the input or Graph goes through [`esc`].

use std::fmt::Write as _;

use super::{
    item_detail, item_fix, item_reason, mode_label, things_to_consider, Summary, FULL_LIST_LIMIT,
    THINGS_TO_CONSIDER_INTRO,
};
use crate::item::{ItemRecord, ItemState};

/// Escapes text for HTML content and quoted attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map(esc).unwrap_or_default()
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;color:#1b1b1b;background:#fff;margin:2em auto;max-width:75em;padding:0 1em;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em}
th,td{border:1px solid #bbb;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f0f0f0}
td.n,th.n{text-align:right}
table.kv th{width:16em}
table.sortable th{cursor:pointer}
table.sortable th[aria-sort=ascending]::after{content:' \\25B2'}
table.sortable th[aria-sort=descending]::after{content:' \\25BC'}
.blocked{color:#8a4b00}.failed{color:#a00000}
.note{color:#444}
svg text{font-size:13px;fill:#1b1b1b}
@media print{body{margin:0;max-width:none;font-size:10pt}h2{page-break-after:avoid}tr{page-break-inside:avoid}table.sortable th::after{content:''}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
";

/// Sorts a table on a header click; numbers numerically, text by locale. Without it the tables
/// are already in item order.
const SCRIPT: &str = "
(function(){
function key(r,i){return r.cells[i]?r.cells[i].textContent.trim():'';}
function isNum(s){return /^-?[0-9]+(\\.[0-9]+)?$/.test(s);}
document.querySelectorAll('table.sortable').forEach(function(t){
var ths=t.tHead.rows[0].cells;
Array.prototype.forEach.call(ths,function(th,i){
th.tabIndex=0;th.title='Sort by this column';
function sort(){
var asc=th.getAttribute('aria-sort')!=='ascending';
Array.prototype.forEach.call(ths,function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');
var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows);
rows.sort(function(x,y){var a=key(x,i),c=key(y,i);
var r=(isNum(a)&&isNum(c))?parseFloat(a)-parseFloat(c):a.localeCompare(c);
return asc?r:-r;});
rows.forEach(function(r){b.appendChild(r);});}
th.addEventListener('click',sort);
th.addEventListener('keydown',function(e){if(e.key==='Enter'){sort();}});
});});
})();
";

fn kv_table(out: &mut String, rows: &[(&str, String)]) {
    out.push_str("<table class=\"kv\"><tbody>\n");
    for (k, v) in rows {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    out.push_str("</tbody></table>\n");
}

fn bar_colour(s: ItemState) -> &'static str {
    match s {
        ItemState::Pending => "#b0b0b0",
        ItemState::InFlight => "#8fb3d9",
        ItemState::Converted => "#4c9a4c",
        ItemState::WouldConvert => "#7cc47c",
        ItemState::Skipped => "#9fa8da",
        ItemState::Blocked => "#e0a030",
        ItemState::Failed => "#d05050",
    }
}

/// A horizontal bar per state, with its name and count as text.
fn chart(s: &Summary) -> String {
    const LABEL_W: u64 = 110;
    const BAR_W: u64 = 320;
    const ROW_H: u64 = 24;
    let counts = s.state_counts();
    let max = counts.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let height = ROW_H * counts.len() as u64 + 4;
    let width = LABEL_W + BAR_W + 80;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg role=\"img\" aria-labelledby=\"chart-title\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n<title id=\"chart-title\">Items by state</title>"
    );
    for (row, (state, n)) in counts.iter().enumerate() {
        let y = ROW_H * row as u64 + 2;
        let w = if *n == 0 { 0 } else { (BAR_W * n / max).max(2) };
        let _ = writeln!(
            out,
            "<text x=\"0\" y=\"{ty}\">{name}</text><rect x=\"{LABEL_W}\" y=\"{y}\" width=\"{w}\" height=\"{bh}\" fill=\"{fill}\"></rect><text x=\"{cx}\" y=\"{ty}\">{n}</text>",
            ty = y + 15,
            name = esc(state.as_str()),
            bh = ROW_H - 6,
            fill = bar_colour(*state),
            cx = LABEL_W + w + 6,
        );
    }
    out.push_str("</svg>\n");
    out
}

fn upn_or_key(i: &ItemRecord) -> String {
    match (&i.user_principal_name, &i.key) {
        (Some(upn), _) => esc(upn),
        (None, Some(k)) => esc(k.value()),
        (None, None) => String::new(),
    }
}

pub(super) fn render(s: &Summary) -> String {
    let d = s.data;
    let run = &d.run;
    let mut out = String::new();
    let title = format!(
        "b2b-convert report: run {} ({})",
        run.id,
        mode_label(run.mode)
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n",
        t = esc(&title)
    );
    let _ = writeln!(
        out,
        "<p>Converting internal accounts of tenant {} to B2B collaboration.</p>",
        esc(run.tenant_id.as_deref().unwrap_or("unknown"))
    );

    out.push_str("<h2>Run</h2>\n");
    kv_table(&mut out, &s.run_rows());
    out.push_str("<h2>Options</h2>\n");
    kv_table(&mut out, &s.option_rows());

    if let Some(rows) = s.estimate_rows() {
        out.push_str("<h2>Estimated duration of the live run</h2>\n");
        kv_table(&mut out, &rows);
        out.push_str(
            "<p class=\"note\">Formula: users ÷ configured rate, against Graph&#39;s ceiling \
             max(0, (users − 3,000) ÷ 20, (users − 150) ÷ 30) seconds; the slower bounds the run.</p>\n",
        );
    }
    if let Some(rows) = s.throughput_rows() {
        out.push_str("<h2>Throughput</h2>\n");
        kv_table(&mut out, &rows);
    }

    out.push_str("<h2>Counts by state</h2>\n");
    out.push_str(&chart(s));
    out.push_str(
        "<table class=\"states\"><thead><tr><th>State</th><th class=\"n\">Count</th></tr></thead><tbody>\n",
    );
    for (state, n) in s.state_counts() {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{n}</td></tr>",
            esc(state.as_str())
        );
    }
    let _ = writeln!(
        out,
        "</tbody><tfoot><tr><th>total</th><th class=\"n\">{}</th></tr></tfoot></table>",
        d.counts.total
    );

    out.push_str("<h2>Counts by reason</h2>\n");
    if s.reasons.is_empty() {
        out.push_str("<p>No item was blocked or skipped.</p>\n");
    } else {
        out.push_str(
            "<table class=\"reasons\"><thead><tr><th>Reason</th><th>State</th><th class=\"n\">Count</th><th>Meaning</th><th>Fix</th></tr></thead><tbody>\n",
        );
        for r in &s.reasons {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.code),
                r.state.map(|s| s.as_str()).unwrap_or(""),
                r.count,
                esc(r.explanation.unwrap_or("Unknown reason code.")),
                esc(r.fix_hint.unwrap_or("")),
            );
        }
        out.push_str("</tbody></table>\n");
    }

    let _ = writeln!(
        out,
        "<h2 id=\"attention\">Blocked and failed users ({})</h2>",
        s.attention.len()
    );
    if s.attention.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str(
            "<table class=\"sortable attention\"><thead><tr><th class=\"n\">Item</th><th class=\"n\">Line</th>\
             <th>User principal name</th><th>Display name</th><th>Object id</th><th>External email</th><th>State</th>\
             <th>Reason / error code</th><th>Detail / Graph message</th><th>Request id</th><th>Fix</th></tr></thead><tbody>\n",
        );
        for i in &s.attention {
            let _ = writeln!(
                out,
                "<tr class=\"{st}\" data-item=\"{id}\"><td class=\"n\">{id}</td><td class=\"n\">{line}</td><td>{upn}</td><td>{name}</td><td>{oid}</td>\
                 <td>{mail}</td><td>{st}</td><td>{reason}</td><td>{detail}</td><td>{req}</td><td>{fix}</td></tr>",
                st = i.state.as_str(),
                id = i.id,
                line = i.line.map(|l| l.to_string()).unwrap_or_default(),
                upn = upn_or_key(i),
                name = opt(&i.display_name),
                oid = opt(&i.user_id),
                mail = opt(&i.external_email),
                reason = esc(&item_reason(i)),
                detail = esc(&item_detail(i)),
                req = opt(&i.request_id),
                fix = esc(item_fix(i)),
            );
        }
        out.push_str("</tbody></table>\n");
    }

    let _ = writeln!(out, "<h2>Other users ({})</h2>", s.others.len());
    if d.items.len() > FULL_LIST_LIMIT {
        let _ = writeln!(
            out,
            "<p>The run has more than {FULL_LIST_LIMIT} items; the CSV and JSON reports list every one.</p>"
        );
    } else if s.others.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str(
            "<table class=\"sortable others\"><thead><tr><th class=\"n\">Item</th><th class=\"n\">Line</th>\
             <th>User principal name</th><th>Display name</th><th>User type</th><th>External email</th><th>State</th>\
             <th>Reason</th><th class=\"n\">Attempts</th><th>Request id</th></tr></thead><tbody>\n",
        );
        for i in &s.others {
            let _ = writeln!(
                out,
                "<tr data-item=\"{id}\"><td class=\"n\">{id}</td><td class=\"n\">{line}</td><td>{upn}</td><td>{name}</td><td>{ut}</td>\
                 <td>{mail}</td><td>{st}</td><td>{reason}</td><td class=\"n\">{att}</td><td>{req}</td></tr>",
                id = i.id,
                line = i.line.map(|l| l.to_string()).unwrap_or_default(),
                upn = upn_or_key(i),
                name = opt(&i.display_name),
                ut = opt(&i.user_type),
                mail = opt(&i.external_email),
                st = i.state.as_str(),
                reason = esc(&item_reason(i)),
                att = i.attempts,
                req = opt(&i.request_id),
            );
        }
        out.push_str("</tbody></table>\n");
    }

    out.push_str("<h2>Things to consider</h2>\n");
    let _ = writeln!(out, "<p>{}</p>\n<ul>", esc(THINGS_TO_CONSIDER_INTRO));
    for (topic, text) in things_to_consider(run.tenant_id.as_deref()) {
        let _ = writeln!(
            out,
            "<li><strong>{}.</strong> {}</li>",
            esc(topic),
            esc(&text)
        );
    }
    out.push_str("</ul>\n");
    let _ = write!(
        out,
        "<p class=\"note\">Generated {} by b2b-convert {}.</p>\n<script>{SCRIPT}</script>\n</body>\n</html>\n",
        esc(&d.generated_at),
        esc(&d.tool_version)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{dry_run, live_run, XSS_NAME};
    use super::*;
    use crate::cli::ReportFormat;
    use crate::report::render;

    const VOID: [&str; 14] = [
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr",
    ];

    /// Checks every opened non-void tag is closed in order; skips `<script>`/`<style>` bodies.
    /// Returns the text of every tag seen, for further checks.
    fn check_balanced(html: &str) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        let mut tags = Vec::new();
        let mut rest = html;
        while let Some(open) = rest.find('<') {
            rest = &rest[open..];
            if rest.starts_with("<!--") {
                let end = rest.find("-->").expect("unclosed comment");
                rest = &rest[end + 3..];
                continue;
            }
            let end = rest.find('>').expect("unclosed tag");
            let tag = &rest[1..end];
            tags.push(tag.to_string());
            rest = &rest[end + 1..];
            if tag.starts_with('!') {
                assert!(tag.eq_ignore_ascii_case("!DOCTYPE html"), "{tag}");
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack.pop().unwrap_or_else(|| panic!("stray </{name}>"));
                assert_eq!(top, name.trim(), "mismatched close");
                continue;
            }
            let name: String = tag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect::<String>()
                .to_ascii_lowercase();
            assert!(!name.is_empty(), "bad tag <{tag}>");
            if tag.ends_with('/') || VOID.contains(&name.as_str()) {
                continue;
            }
            if name == "script" || name == "style" {
                let close = format!("</{name}>");
                let end = rest.find(&close).expect("unclosed raw text element");
                rest = &rest[end..];
            }
            stack.push(name);
        }
        assert!(stack.is_empty(), "unclosed: {stack:?}");
        tags
    }

    #[test]
    fn checker_catches_unbalanced_markup() {
        assert!(std::panic::catch_unwind(|| check_balanced("<p><b>x</p>")).is_err());
        assert!(std::panic::catch_unwind(|| check_balanced("<div>")).is_err());
        check_balanced("<p>a<br>b<meta charset=\"utf-8\"><script>if(a<b){}</script></p>");
    }

    #[test]
    fn escapes_every_special_character() {
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn hostile_names_are_text_and_markup_is_well_formed() {
        for data in [dry_run(), live_run()] {
            let html = render(ReportFormat::Html, &data);
            assert!(html.starts_with("<!DOCTYPE html>"));
            assert!(html.contains("<meta charset=\"utf-8\">"));
            assert!(html.contains("<html lang=\"en\">"));
            assert!(html.contains("@media print"));
            assert!(html.contains("<svg"));
            assert!(!html.contains("<script>alert(1)"));
            let tags = check_balanced(&html);
            // No external reference: no URL inside any tag, no loading attribute or CSS import.
            for t in &tags {
                assert!(!t.contains("http"), "URL in a tag: <{t}>");
                for bad in ["href", "src=", "url(", "@import"] {
                    assert!(!t.contains(bad), "<{t}>");
                }
            }
            let style = &html[html.find("<style>").unwrap()..html.find("</style>").unwrap()];
            let script = &html[html.rfind("<script>").unwrap()..html.rfind("</script>").unwrap()];
            for raw in [style, script] {
                assert!(!raw.contains("http") && !raw.contains("url(") && !raw.contains("@import"));
            }
            assert_eq!(html.matches("<script>").count(), 1);
        }
        let html = render(ReportFormat::Html, &dry_run());
        assert!(html.contains(&esc(XSS_NAME)));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    }

    #[test]
    fn counts_and_each_attention_item_once() {
        for data in [dry_run(), live_run()] {
            let html = render(ReportFormat::Html, &data);
            for (st, n) in Summary::new(&data).state_counts() {
                let row = format!("<tr><td>{}</td><td class=\"n\">{n}</td></tr>", st.as_str());
                assert!(html.contains(&row), "{row}");
                assert_eq!(n, data.counts.state(st));
            }
            for i in &data.items {
                let marker = format!("data-item=\"{}\"", i.id);
                assert_eq!(html.matches(&marker).count(), 1, "item {}", i.id);
                if i.state.needs_attention() {
                    let row_start = html.find(&marker).unwrap();
                    let row =
                        &html[row_start..row_start + html[row_start..].find("</tr>").unwrap()];
                    assert!(html.contains(&format!("<tr class=\"{}\" {marker}>", i.state)));
                    assert!(row.contains(&esc(&item_reason(i))));
                    if let Some(r) = &i.request_id {
                        assert!(row.contains(r.as_str()));
                    }
                }
            }
        }
        let dry = render(ReportFormat::Html, &dry_run());
        assert!(dry.contains("Estimated duration of the live run"));
        assert!(!dry.contains("<h2>Throughput</h2>"));
        let live = render(ReportFormat::Html, &live_run());
        assert!(!live.contains("Estimated duration of the live run"));
        assert!(live.contains("<h2>Throughput</h2>"));
        assert!(live.contains("0.03 users/s converted"));
    }
}
