//! HTML report: one self-contained file for a change board, printable on A4 and no wider than
//! the window, readable without JavaScript. It opens with the board's summary and lists only
//! the users who need action, grouped by reason with the fix stated once per group. Inline style and a small inline script (table sorting) only; no external asset,
//! font or URL. Every value from the tenant, the input or Graph goes through [`esc`].

use std::fmt::Write as _;

use super::{
    item_detail, item_fix, item_reason, mode_label, not_redeemed_state, state_label,
    things_to_consider, thousands, Summary, HISTORY_ROWS, ONE_WAY, THINGS_TO_CONSIDER_INTRO,
};
use crate::item::{ItemRecord, ItemState, RunMode};

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
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;color:#1b1b1b;background:#fff;margin:1.5em auto;max-width:72em;padding:0 1.5em;line-height:1.45}
h1{font-size:1.55em;margin:0 0 .1em}h2{font-size:1.2em;margin:1.6em 0 .5em;border-bottom:1px solid #ccc;padding-bottom:.15em}
h3{font-size:1em;margin:1.2em 0 .3em}
.sub{color:#555;margin:0 0 1em}
section.summary{border:2px solid #1b1b1b;border-radius:6px;padding:.8em 1.2em 1em;margin:1em 0 1.5em}
section.summary h2{margin-top:.2em;border:0}
.verdict{font-size:1.1em;margin:.3em 0 .8em}
.figures{display:flex;flex-wrap:wrap;gap:.6em;margin:0 0 .8em;padding:0;list-style:none}
.figures li{flex:1 1 9em;border:1px solid #bbb;border-left-width:6px;border-radius:4px;padding:.35em .7em}
.figures b{display:block;font-size:1.6em;line-height:1.2}
.figures .good{border-left-color:#2e7d32}.figures .warn{border-left-color:#c77700}.figures .bad{border-left-color:#b00020}.figures .plain{border-left-color:#888}
.oneway{background:#fff4e5;border:1px solid #c77700;border-radius:4px;padding:.5em .8em;margin:.8em 0}
.ok{background:#edf7ed;border:1px solid #2e7d32;border-radius:4px;padding:.5em .8em}
table{border-collapse:collapse;margin:.4em 0 1em;font-size:.9em;width:100%}
th,td{border:1px solid #bbb;padding:.25em .45em;text-align:left;vertical-align:top;overflow-wrap:break-word}
table{table-layout:fixed}
th{background:#f0f0f0}
td.n,th.n{text-align:right;white-space:nowrap}
table.kv{table-layout:fixed}table.kv th{width:14em}
table.users{table-layout:fixed}
table.users col.line{width:3.8em}table.users col.user{width:27%}table.users col.oid{width:17%}table.users col.mail{width:21%}table.users col.req{width:13%}
td small{color:#555;display:block}
.bar{display:inline-block;height:.8em;background:#4c9a4c;vertical-align:middle;margin-right:.4em}
.blocked .bar,.bar.warn{background:#c77700}.bar.bad{background:#b00020}
table.sortable th{cursor:pointer}
table.sortable th[aria-sort=ascending]::after{content:' \\25B2'}
table.sortable th[aria-sort=descending]::after{content:' \\25BC'}
.note{color:#444;font-size:.9em}
svg{max-width:100%;height:auto}
svg text{font-size:12px;fill:#1b1b1b}
@page{size:A4;margin:14mm 12mm}
@media print{body{margin:0;max-width:none;padding:0;font-size:9pt}h2,h3{break-after:avoid}tr,li,.oneway{break-inside:avoid}
table.sortable th::after{content:''}thead{display:table-header-group}
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

/// Most minutes the pace chart draws; longer runs are drawn in bins of several minutes.
const PACE_BARS: usize = 120;

/// Conversions (green bars) and 429s (red bars) per minute, as an inline SVG with its numbers
/// in the title and labels, so it reads without colour too.
fn pace_chart(s: &Summary) -> String {
    let pace = &s.data.pace;
    if pace.is_empty() {
        return String::from("<p>No conversion or 429 was recorded yet.</p>\n");
    }
    let bin = pace.len().div_ceil(PACE_BARS).max(1);
    let bins: Vec<(u64, u64)> = pace
        .chunks(bin)
        .map(|c| {
            (
                c.iter().map(|m| m.converted).sum(),
                c.iter().map(|m| m.throttled).sum(),
            )
        })
        .collect();
    let max = bins
        .iter()
        .map(|(c, t)| (*c).max(*t))
        .max()
        .unwrap_or(0)
        .max(1);
    const W: usize = 900;
    const H: usize = 200;
    const LEFT: usize = 50;
    const BOTTOM: usize = 24;
    // A short run keeps bars of a readable width instead of one slab across the chart.
    let slot = (W - LEFT) as f64 / bins.len().max(30) as f64;
    let unit = if bin == 1 {
        "minute".to_string()
    } else {
        format!("{bin} minutes")
    };
    let mut out = String::new();
    let total_c: u64 = pace.iter().map(|m| m.converted).sum();
    let total_t: u64 = pace.iter().map(|m| m.throttled).sum();
    let _ = writeln!(
        out,
        "<svg role=\"img\" aria-labelledby=\"pace-title\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">\n\
         <title id=\"pace-title\">Conversions and 429 responses per {unit}: {total_c} conversions, {total_t} 429s over {} minutes with activity</title>",
        pace.len()
    );
    let plot_h = (H - BOTTOM - 10) as f64;
    let y0 = (H - BOTTOM) as f64;
    let _ = writeln!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{W}\" y2=\"{y0}\" stroke=\"#888\"></line>\
         <text x=\"{lx}\" y=\"14\" text-anchor=\"end\">{max}</text><text x=\"{lx}\" y=\"{y0}\" text-anchor=\"end\">0</text>",
        lx = LEFT - 6
    );
    for (n, (c, t)) in bins.iter().enumerate() {
        let x = LEFT as f64 + slot * n as f64;
        let hc = plot_h * *c as f64 / max as f64;
        let ht = plot_h * *t as f64 / max as f64;
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{hc:.1}\" fill=\"#4c9a4c\"></rect>",
            y0 - hc,
            (slot * 0.8).max(0.5)
        );
        if *t > 0 {
            let _ = write!(
                out,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{ht:.1}\" fill=\"#b00020\"></rect>",
                x + slot * 0.25,
                y0 - ht,
                (slot * 0.35).max(0.5)
            );
        }
    }
    let first = &pace[0].minute;
    let last = &pace[pace.len() - 1].minute;
    let _ = write!(out, "\n<text x=\"{LEFT}\" y=\"{H}\">{}</text>", esc(first));
    if pace.len() > 1 {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{H}\" text-anchor=\"end\">{}</text>",
            LEFT as f64 + slot * bins.len() as f64,
            esc(last)
        );
    }
    out.push_str("\n</svg>\n");
    let _ = writeln!(
        out,
        "<p class=\"note\"><span class=\"bar\" style=\"width:1em\"></span>conversions per {unit} \
         <span class=\"bar bad\" style=\"width:1em;margin-left:1em\"></span>429 (throttled) responses per {unit}. \
         In all: {} conversions and {} 429s over {} minutes with activity; minutes without activity \
         (pauses between an interruption and its resume) are left out.</p>",
        thousands(total_c),
        thousands(total_t),
        thousands(pace.len() as u64)
    );
    out
}

fn user_cell(i: &ItemRecord) -> String {
    let main = match (&i.user_principal_name, &i.key) {
        (Some(upn), _) => esc(upn),
        (None, Some(k)) => esc(k.value()),
        (None, None) => "(no user key)".to_string(),
    };
    match &i.display_name {
        Some(name) => format!("{main}<small>{}</small>", esc(name)),
        None => main,
    }
}

/// The group a user who needs action is listed under: reason code for blocked, Graph error code
/// for failed.
fn group_key(i: &ItemRecord) -> (u8, String) {
    (u8::from(i.state == ItemState::Failed), item_reason(i))
}

/// The "Back-out" paragraph and, for a live run, the users restored and rolled back (issue 20).
fn backout_block(out: &mut String, data: &super::ReportData) {
    let _ = writeln!(
        out,
        "<p><strong>Back-out.</strong> {}</p>",
        esc(&data.backout_sentence())
    );
    let b = &data.backout;
    for (title, users) in [("Restored", &b.restored), ("Rolled back", &b.rolled_back)] {
        if users.is_empty() {
            continue;
        }
        let _ = writeln!(out, "<p>{title}:</p><ul>");
        for u in users {
            let _ = writeln!(out, "<li>{}: {}</li>", esc(&u.user), esc(&u.what));
        }
        out.push_str("</ul>\n");
    }
}

fn summary_section(out: &mut String, s: &Summary) {
    let run = &s.data.run;
    out.push_str("<section class=\"summary\" aria-labelledby=\"summary\">\n<h2 id=\"summary\">Summary for the change board</h2>\n");
    let _ = writeln!(out, "<p class=\"verdict\">{}</p>", esc(&s.verdict()));
    out.push_str("<ul class=\"figures\">\n");
    for (n, label, tone) in s.headline() {
        let _ = writeln!(
            out,
            "<li class=\"{}\"><b>{}</b>{}</li>",
            tone.class(),
            thousands(n),
            esc(label)
        );
    }
    out.push_str("</ul>\n");
    let fixes = s.fixes();
    if fixes.is_empty() {
        out.push_str("<p class=\"ok\">Nothing needs fixing before the live run.</p>\n");
    } else {
        out.push_str(
            "<h3>What needs fixing first</h3>\n<table class=\"fixes\"><colgroup><col style=\"width:34%\"><col style=\"width:6em\"><col></colgroup>\
             <thead><tr><th>Reason</th><th class=\"n\">Users</th><th>Fix</th></tr></thead><tbody>\n",
        );
        for (reason, n, fix) in &fixes {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(reason),
                thousands(*n),
                esc(fix)
            );
        }
        out.push_str("</tbody></table>\n");
    }
    if let Some(e) = s.estimate {
        let _ = writeln!(
            out,
            "<p><strong>Estimate.</strong> {}.</p>",
            esc(&super::estimate_text(&e))
        );
    }
    let _ = writeln!(
        out,
        "<p><strong>Follow-up steps.</strong> {}</p>",
        esc(&super::follow_up_text(&s.follow_up_sentences()))
    );
    if let Some(text) = s.redemption_sentence() {
        let _ = writeln!(out, "<p><strong>Redemption.</strong> {}</p>", esc(&text));
    }
    if let Some(text) = s.credentials_sentence() {
        let _ = writeln!(
            out,
            "<p><strong>Internal credentials.</strong> {}</p>",
            esc(&text)
        );
    }
    let _ = writeln!(
        out,
        "<p class=\"oneway\"><strong>One-way.</strong> {}</p>",
        esc(ONE_WAY)
    );
    backout_block(out, s.data);
    let _ = writeln!(
        out,
        "<p class=\"note\">Run {} · {} · tenant {} · source {}.</p>\n</section>",
        run.id,
        esc(mode_label(run.mode)),
        esc(run.tenant_id.as_deref().unwrap_or("unknown")),
        esc(&run.source.to_string())
    );
}

fn attention_section(out: &mut String, s: &Summary) {
    let mode = s.data.run.mode;
    let _ = writeln!(
        out,
        "<h2 id=\"attention\">Users who need action ({})</h2>",
        thousands(s.attention.len() as u64)
    );
    if s.attention.is_empty() {
        out.push_str("<p>None. The CSV and JSON reports list every user of the run.</p>\n");
        return;
    }
    out.push_str(
        "<p class=\"note\">Only users who need action are listed, grouped by reason; the CSV and JSON reports list every user of the run.</p>\n",
    );
    let mut sorted = s.attention.clone();
    sorted.sort_by(|a, b| group_key(a).cmp(&group_key(b)).then(a.id.cmp(&b.id)));
    let mut current: Option<(u8, String)> = None;
    for i in sorted {
        let key = group_key(i);
        if current.as_ref() != Some(&key) {
            if current.is_some() {
                out.push_str("</tbody></table>\n");
            }
            let n = s.attention.iter().filter(|o| group_key(o) == key).count();
            let title = match (i.reason, i.state) {
                (Some(r), _) => r.explanation().to_string(),
                (None, _) => format!("Failed at Graph: {}", key.1),
            };
            let _ = writeln!(
                out,
                "<h3>{} — {} ({})</h3>\n<p><strong>Fix:</strong> {}</p>",
                esc(state_label(i.state, mode)),
                esc(&title),
                thousands(n as u64),
                esc(item_fix(i))
            );
            // Request ids exist only for users a request was sent for: failed ones.
            out.push_str(if key.0 == 1 {
                "<table class=\"users sortable\"><colgroup><col class=\"line\"><col class=\"user\"><col class=\"oid\"><col class=\"mail\"><col><col class=\"req\"></colgroup>\
                 <thead><tr><th class=\"n\">Line</th><th>User</th><th>Object id</th><th>External email</th><th>Graph message</th><th>Request id</th></tr></thead><tbody>\n"
            } else {
                "<table class=\"users sortable\"><colgroup><col class=\"line\"><col class=\"user\"><col class=\"oid\"><col class=\"mail\"><col></colgroup>\
                 <thead><tr><th class=\"n\">Line</th><th>User</th><th>Object id</th><th>External email</th><th>Detail</th></tr></thead><tbody>\n"
            });
            current = Some(key.clone());
        }
        let req = if key.0 == 1 {
            format!("<td>{}</td>", opt(&i.request_id))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "<tr class=\"{st}\" data-item=\"{id}\" data-reason=\"{reason}\"><td class=\"n\">{line}</td><td>{user}</td><td>{oid}</td><td>{mail}</td><td>{detail}</td>{req}</tr>",
            st = i.state.as_str(),
            id = i.id,
            reason = esc(&item_reason(i)),
            line = i.line.map(|l| l.to_string()).unwrap_or_default(),
            user = user_cell(i),
            oid = opt(&i.user_id),
            mail = opt(&i.external_email),
            detail = esc(&item_detail(i)),
        );
    }
    out.push_str("</tbody></table>\n");
}

fn follow_up_section(out: &mut String, s: &Summary) {
    if !s.has_follow_ups() {
        return;
    }
    let live = s.data.run.mode == RunMode::Live;
    out.push_str("<h2 id=\"follow-ups\">Follow-up steps</h2>\n");
    out.push_str(if live {
        "<table class=\"steps\"><colgroup><col style=\"width:30%\"><col style=\"width:12em\"><col style=\"width:6em\"><col></colgroup>\
         <thead><tr><th>Step</th><th class=\"n\">Users that needed it</th><th class=\"n\">Done</th><th>What it means</th></tr></thead><tbody>\n"
    } else {
        "<table class=\"steps\"><colgroup><col style=\"width:30%\"><col style=\"width:12em\"><col></colgroup>\
         <thead><tr><th>Step</th><th class=\"n\">Users it will touch</th><th>What it means</th></tr></thead><tbody>\n"
    });
    for (step, planned, done, meaning) in s.follow_up_rows() {
        let done = done
            .map(|d| format!("<td class=\"n\">{}</td>", thousands(d)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td>{done}<td>{}</td></tr>",
            esc(step),
            thousands(planned),
            esc(meaning)
        );
    }
    out.push_str("</tbody></table>\n");
    if let Some(e) = s.estimate.filter(|e| e.writes > e.users_to_convert) {
        let _ = writeln!(
            out,
            "<p>Each step is one more write on Graph&#39;s shared write bucket: the estimate counts {} writes for {} users.</p>",
            thousands(e.writes),
            thousands(e.users_to_convert)
        );
    }
    if let Some(note) = s.billing_note() {
        let _ = writeln!(
            out,
            "<p class=\"oneway\"><strong>Billing.</strong> {}</p>",
            esc(&note)
        );
    }
    out.push_str(if live {
        "<p class=\"note\">Who got which step: the CSV report (<code>mail_set_at</code>, <code>guest_set_at</code>) and the JSON report (<code>mailSetAt</code>, <code>guestSetAt</code>) give the time per user.</p>\n"
    } else {
        "<p class=\"note\">Who gets which step: each user&#39;s detail in the CSV and JSON reports says &quot;mail will be set …&quot; or &quot;userType will be set to Guest …&quot;.</p>\n"
    });
}

/// Most days the redemption chart draws (the latest).
const REDEMPTION_BARS: usize = 90;

/// Users redeemed so far, per day with redemptions, as an inline SVG; each bar's count is in
/// the title and the table beside it, so it reads without colour too.
fn redemption_chart(days: &[crate::queue::track::RedemptionDay]) -> String {
    let days = &days[days.len().saturating_sub(REDEMPTION_BARS)..];
    let Some(last) = days.last() else {
        return "<p>No user has redeemed yet.</p>\n".to_string();
    };
    let max = last.cumulative.max(1);
    const W: usize = 900;
    const H: usize = 180;
    const LEFT: usize = 50;
    const BOTTOM: usize = 24;
    let slot = (W - LEFT) as f64 / days.len().max(20) as f64;
    let plot_h = (H - BOTTOM - 10) as f64;
    let y0 = (H - BOTTOM) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg role=\"img\" aria-labelledby=\"redeem-title\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\">\n\
         <title id=\"redeem-title\">Users redeemed so far, per day: {} by {}</title>\n\
         <line x1=\"{LEFT}\" y1=\"{y0}\" x2=\"{W}\" y2=\"{y0}\" stroke=\"#888\"></line>\
         <text x=\"{lx}\" y=\"14\" text-anchor=\"end\">{max}</text><text x=\"{lx}\" y=\"{y0}\" text-anchor=\"end\">0</text>",
        last.cumulative,
        esc(&last.day),
        lx = LEFT - 6
    );
    for (n, d) in days.iter().enumerate() {
        let h = plot_h * d.cumulative as f64 / max as f64;
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4c9a4c\"><title>{}: {} redeemed, {} so far</title></rect>",
            LEFT as f64 + slot * n as f64,
            y0 - h,
            (slot * 0.8).max(0.5),
            esc(&d.day),
            d.accepted,
            d.cumulative
        );
    }
    let _ = write!(
        out,
        "\n<text x=\"{LEFT}\" y=\"{H}\">{}</text>",
        esc(&days[0].day)
    );
    if days.len() > 1 {
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{H}\" text-anchor=\"end\">{}</text>",
            LEFT as f64 + slot * days.len() as f64,
            esc(&last.day)
        );
    }
    out.push_str("\n</svg>\n<p class=\"note\"><span class=\"bar\" style=\"width:1em\"></span>users redeemed so far, by the day Graph recorded each redemption (days without a redemption left out).</p>\n");
    out
}

fn redemption_section(out: &mut String, s: &Summary) {
    let Some(r) = &s.data.redemption else {
        return;
    };
    out.push_str("<h2 id=\"redemption\">Redemption</h2>\n");
    let Some(rows) = s.redemption_rows() else {
        let _ = writeln!(
            out,
            "<p>Not tracked yet. <code>b2b-convert track {}</code> reads every converted user&#39;s redemption state; run it again later to follow progress.</p>",
            s.data.run.id
        );
        return;
    };
    let _ = writeln!(
        out,
        "<p>As of the last <code>track</code>, {}.</p>",
        esc(r.counts.last_tracked_at.as_deref().unwrap_or(""))
    );
    let total: u64 = rows.iter().map(|(_, n, _)| n).sum::<u64>().max(1);
    out.push_str(
        "<table class=\"redemption\"><colgroup><col style=\"width:12em\"><col style=\"width:7em\"><col style=\"width:22%\"><col></colgroup>\
         <thead><tr><th>Redemption state</th><th class=\"n\">Users</th><th>Share</th><th>Meaning</th></tr></thead><tbody>\n",
    );
    for (label, n, meaning) in &rows {
        let tone = match *label {
            "Accepted" => "",
            "Not applied" => " bad",
            _ => " warn",
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td><span class=\"bar{tone}\" style=\"width:{w:.1}%\"></span>{p:.1}%</td><td>{}</td></tr>",
            esc(label),
            thousands(*n),
            esc(meaning),
            w = 70.0 * *n as f64 / total as f64,
            p = 100.0 * *n as f64 / total as f64,
        );
    }
    out.push_str("</tbody></table>\n<h3>Redemptions over time</h3>\n");
    out.push_str(&redemption_chart(&r.timeline));
    if !r.tracks.is_empty() {
        let skip = r.tracks.len().saturating_sub(HISTORY_ROWS);
        out.push_str(
            "<table class=\"tracks\"><thead><tr><th>Track finished</th><th class=\"n\">Accepted</th><th class=\"n\">Pending</th><th class=\"n\">Not applied</th><th class=\"n\">Missing</th></tr></thead><tbody>\n",
        );
        for t in &r.tracks[skip..] {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                opt(&t.finished_at),
                thousands(t.accepted),
                thousands(t.pending),
                thousands(t.not_applied),
                thousands(t.missing)
            );
        }
        out.push_str("</tbody></table>\n");
    }
    let total = r.not_redeemed_total();
    let _ = writeln!(
        out,
        "<h3 id=\"not-redeemed\">Not redeemed yet ({})</h3>",
        thousands(total)
    );
    if total == 0 {
        out.push_str("<p class=\"ok\">Every converted user has redeemed.</p>\n");
        return;
    }
    let listed = r.not_redeemed.len() as u64;
    if listed < total {
        let _ = writeln!(
            out,
            "<p class=\"note\">The {} oldest invitations are listed; all {} are in the CSV and JSON reports (<code>external_user_state</code> empty or <code>PendingAcceptance</code>).</p>",
            thousands(listed),
            thousands(total)
        );
    }
    out.push_str(
        "<table class=\"users sortable\"><colgroup><col style=\"width:28%\"><col style=\"width:28%\"><col style=\"width:14em\"><col style=\"width:10em\"><col></colgroup>\
         <thead><tr><th>User</th><th>External email</th><th>Invited</th><th>State</th><th>Last resent</th></tr></thead><tbody>\n",
    );
    for n in &r.not_redeemed {
        let _ = writeln!(
            out,
            "<tr data-not-redeemed=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            n.item_id,
            opt(&n.user_principal_name),
            opt(&n.external_email),
            opt(&n.invited_at),
            esc(&not_redeemed_state(n)),
            n.last_resent_at
                .as_deref()
                .map(esc)
                .unwrap_or_else(|| "never".into()),
        );
    }
    out.push_str("</tbody></table>\n");
}

pub(super) fn render(s: &Summary) -> String {
    let d = s.data;
    let run = &d.run;
    let mut out = String::with_capacity(16 * 1024 + s.attention.len() * 400);
    let title = format!(
        "Conversion to B2B collaboration: run {} ({})",
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
        "<p class=\"sub\">Converting internal accounts of tenant {} to B2B collaboration · report generated {} · b2b-convert {}</p>",
        esc(run.tenant_id.as_deref().unwrap_or("unknown")),
        esc(&d.generated_at),
        esc(&d.tool_version)
    );
    summary_section(&mut out, s);

    if run.mode == RunMode::Live {
        out.push_str("<h2>Pace</h2>\n");
        out.push_str(&pace_chart(s));
    }

    attention_section(&mut out, s);
    redemption_section(&mut out, s);

    out.push_str("<h2>Counts by state</h2>\n");
    let total = d.counts.total.max(1);
    out.push_str(
        "<table class=\"states\"><colgroup><col style=\"width:40%\"><col style=\"width:8em\"><col></colgroup><thead><tr><th>State</th><th class=\"n\">Users</th><th>Share</th></tr></thead><tbody>\n",
    );
    for (state, n) in s.state_counts() {
        let tone = match state {
            ItemState::Blocked => " warn",
            ItemState::Failed => " bad",
            _ => "",
        };
        let _ = writeln!(
            out,
            "<tr><td>{label} <small>({code})</small></td><td class=\"n\">{n}</td><td><span class=\"bar{tone}\" style=\"width:{w:.1}%\"></span>{p:.1}%</td></tr>",
            label = esc(state_label(state, run.mode)),
            code = state.as_str(),
            w = 80.0 * n as f64 / total as f64,
            p = 100.0 * n as f64 / total as f64,
        );
    }
    let _ = writeln!(
        out,
        "</tbody><tfoot><tr><th>total</th><th class=\"n\">{}</th><th></th></tr></tfoot></table>",
        d.counts.total
    );

    out.push_str("<h2>Counts by reason</h2>\n");
    if s.reasons.is_empty() {
        out.push_str("<p>No user was blocked or skipped.</p>\n");
    } else {
        out.push_str(
            "<table class=\"reasons\"><colgroup><col style=\"width:12em\"><col style=\"width:9em\"><col style=\"width:5em\"><col><col></colgroup>\
             <thead><tr><th>Reason</th><th>State</th><th class=\"n\">Users</th><th>Meaning</th><th>Fix</th></tr></thead><tbody>\n",
        );
        for r in &s.reasons {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.code),
                r.state.map(|st| state_label(st, run.mode)).unwrap_or(""),
                r.count,
                esc(r.explanation.unwrap_or("Unknown reason code.")),
                esc(r.fix_hint.unwrap_or("")),
            );
        }
        out.push_str("</tbody></table>\n");
    }

    if let Some(rows) = s.estimate_rows() {
        out.push_str("<h2>Estimated duration of the live run</h2>\n");
        kv_table(&mut out, &rows);
        out.push_str(
            "<p class=\"note\">Formula: writes (one invitation per user, plus one per mail or userType PATCH) ÷ configured rate, \
             against Graph&#39;s ceiling max(0, (writes − 3,000) ÷ 20, (users − 150) ÷ 30) seconds; the slower bounds the run.</p>\n",
        );
    }
    if let Some(rows) = s.throughput_rows() {
        out.push_str("<h2>Throughput</h2>\n");
        kv_table(&mut out, &rows);
    }
    follow_up_section(&mut out, s);
    out.push_str("<h2>Run</h2>\n");
    kv_table(&mut out, &s.run_rows());
    out.push_str("<h2>Options</h2>\n");
    kv_table(&mut out, &s.option_rows());
    plan_section(&mut out, s.data);

    out.push_str("<h2>Things to consider</h2>\n");
    let _ = writeln!(out, "<p>{}</p>\n<ul>", esc(THINGS_TO_CONSIDER_INTRO));
    for (topic, text) in things_to_consider(run.tenant_id.as_deref(), run.options.set_guest) {
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

/// `apply` runs: the plan and who drifted; runs whose send options changed: the history.
fn plan_section(out: &mut String, data: &crate::report::ReportData) {
    if let Some(sentence) = data.plan_sentence() {
        out.push_str("<h2 id=\"plan\">Plan</h2>\n");
        let _ = writeln!(out, "<p>{}</p>", esc(&sentence));
        let drifted = data.drifted();
        if !drifted.is_empty() {
            out.push_str("<table>\n<tr><th>User</th><th>What changed since the plan</th></tr>\n");
            for i in drifted {
                let _ = writeln!(
                    out,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    esc(i
                        .user_principal_name
                        .as_deref()
                        .or(i.user_id.as_deref())
                        .unwrap_or("")),
                    esc(i.detail.as_deref().unwrap_or(""))
                );
            }
            out.push_str("</table>\n");
        }
    }
    let history = data.option_history_lines();
    if !history.is_empty() {
        out.push_str("<h2 id=\"option-history\">Option history</h2>\n<ul>\n");
        for line in history {
            let _ = writeln!(out, "<li>{}</li>", esc(&line));
        }
        out.push_str("</ul>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{dry_run, live_run, XSS_NAME};
    use super::*;
    use crate::config::ReportFormat;
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
            assert_eq!(html.contains("<svg"), data.run.mode == RunMode::Live);
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
                let row = format!(
                    "<tr><td>{} <small>({})</small></td><td class=\"n\">{n}</td>",
                    state_label(st, data.run.mode),
                    st.as_str()
                );
                assert!(html.contains(&row), "{row}");
                assert_eq!(n, data.counts.state(st));
            }
            for i in &data.items {
                let marker = format!("data-item=\"{}\"", i.id);
                let expected = usize::from(i.state.needs_attention());
                assert_eq!(html.matches(&marker).count(), expected, "item {}", i.id);
                if i.state.needs_attention() {
                    let row_start = html.find(&marker).unwrap();
                    let row =
                        &html[row_start..row_start + html[row_start..].find("</tr>").unwrap()];
                    assert!(html.contains(&format!("<tr class=\"{}\" {marker} ", i.state)));
                    assert!(row.contains(&esc(&item_detail(i))));
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

    #[test]
    fn opens_with_the_boards_summary() {
        let dry = render(ReportFormat::Html, &dry_run());
        let summary =
            &dry[dry.find("<section class=\"summary\"").unwrap()..dry.find("</section>").unwrap()];
        assert!(
            dry.find("<section class=\"summary\"").unwrap() < dry.find("<h2>Run</h2>").unwrap()
        );
        assert!(summary.contains("A live run would convert 2 of"));
        assert!(summary.contains("will be converted"));
        assert!(summary.contains("need fixing first"));
        assert!(summary.contains("What needs fixing first"));
        assert!(summary.contains("One-way."));
        assert!(summary.contains("Follow-up steps"));
        assert!(summary.contains("Estimate."));
        for r in crate::item::Reason::ALL {
            if r.state() == ItemState::Blocked {
                assert!(summary.contains(&esc(r.fix_hint())), "{r}");
            }
        }
        // The raw state codes are not what people read.
        assert!(!summary.contains("would_convert"));
        let live = render(ReportFormat::Html, &live_run());
        assert!(live.contains("<h2>Pace</h2>"));
        assert!(live.contains("3 conversions, 5 429s over 2 minutes"));
    }

    #[test]
    fn wide_values_wrap_and_tables_fit_the_page() {
        assert!(STYLE.contains("overflow-wrap:break-word"));
        assert!(STYLE.contains("table{table-layout:fixed}"));
        assert!(STYLE.contains("table.users{table-layout:fixed}"));
        assert!(STYLE.contains("@page{size:A4"));
    }

    #[test]
    fn tracked_run_has_redemption_section_chart_and_follow_ups() {
        let data = super::super::fixtures::tracked_live_run();
        let html = render(ReportFormat::Html, &data);
        let tags = check_balanced(&html);
        assert!(!tags.iter().any(|t| t.starts_with("script>alert")));
        let r = &html[html.find("<h2 id=\"redemption\">").unwrap()..];
        let r = &r[..r
            .find("<h2")
            .map_or(r.len(), |_| r[4..].find("<h2").unwrap() + 4)];
        for want in [
            "<td>Accepted</td><td class=\"n\">2,345</td>",
            "<td>Pending acceptance</td><td class=\"n\">1,150</td>",
            "<td>Not applied</td><td class=\"n\">7</td>",
            "<td>Untracked</td><td class=\"n\">50</td>",
            "<title id=\"redeem-title\">Users redeemed so far, per day: 2345 by 2025-03-02</title>",
            "Not redeemed yet (1,200)",
            "The 2 oldest invitations are listed; all 1,200 are in the CSV and JSON reports",
            "<tr data-not-redeemed=\"3\"><td>user3@contoso.com</td>",
        ] {
            assert!(r.contains(want), "missing {want:?}");
        }
        assert!(r.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert_eq!(r.matches("<rect ").count(), 2, "one bar per day");
        let f = &html[html.find("<h2 id=\"follow-ups\">").unwrap()..];
        assert!(f.contains("<td>userType switched to Guest (after the invitation)</td><td class=\"n\">3</td><td class=\"n\">3</td>"));
        assert!(f.contains("<strong>Billing.</strong> The 3 users switched to Guest"));
        assert!(!html.to_lowercase().contains("redeem?"));
        assert!(
            !html.contains("http://") && !html.contains("src="),
            "no external asset"
        );
    }
}
