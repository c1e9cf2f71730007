//! HTML report: one self-contained file for a change board, printable on A4 and no wider than
//! the window, readable without JavaScript. It opens with the board's summary and lists only
//! the users who need action, grouped by reason with the fix stated once per group. Inline
//! style and a small inline script (table sorting) only; no external asset, font or URL.
//!
//! The markup is written with `maud`, which escapes every interpolated value unless it is
//! wrapped in `PreEscaped` (only the constant style sheet and script are): a value from the
//! tenant, the input or Graph cannot reach the page as markup, whether or not its line
//! remembered to escape it. Text values go through [`Text`], which also writes `'` as `&#39;`.
//! The sections are [`Section`]s: what each says is computed in `report/mod.rs`, shared with
//! the Markdown report; this file only lays them out.

use maud::{html, Markup, PreEscaped, Render, DOCTYPE};

use super::ticks;

use super::{
    item_detail, item_fix, item_reason, mode_label, not_redeemed_state, state_label,
    things_to_consider, thousands, Section, SharedDetail, Summary, ESTIMATE_FORMULA, HISTORY_ROWS,
    LEFT_TO_DO_TITLE, NOTHING_TO_FIX, NO_ATTENTION, ONE_WAY, THINGS_TO_CONSIDER_INTRO,
};
use crate::item::{ItemRecord, ItemState, RunMode};

/// The HTML report's sections, in reading order: the board's summary and who needs action
/// first, the reference tables after.
const ORDER: [Section; 13] = [
    Section::BoardSummary,
    Section::Pace,
    Section::Attention,
    Section::Redemption,
    Section::StateCounts,
    Section::ReasonCounts,
    Section::Estimate,
    Section::Throughput,
    Section::FollowUps,
    Section::Run,
    Section::Options,
    Section::Plan,
    Section::ThingsToConsider,
];

/// Writes `s` escaped for HTML content and quoted attribute values.
fn push_escaped(out: &mut String, s: &str) {
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
}

/// Escapes text for HTML content and quoted attribute values, as [`Text`] renders it.
#[cfg(test)]
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

/// A text value in the page. maud already escapes `& < > "` of any value spliced in; this
/// also writes `'` as `&#39;`, so text reads the same whichever attribute quote surrounds it.
struct Text<'a>(&'a str);

impl Render for Text<'_> {
    fn render_to(&self, buffer: &mut String) {
        push_escaped(buffer, self.0);
    }
}

fn t(s: &str) -> Text<'_> {
    Text(s)
}

/// An optional value, empty when absent.
fn opt(s: &Option<String>) -> Text<'_> {
    Text(s.as_deref().unwrap_or_default())
}

/// A line break between blocks and rows, so the page's source reads line by line.
const NL: PreEscaped<&str> = PreEscaped("\n");

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
td.n,th.n,table.attn td:first-child{text-align:right;white-space:nowrap}
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

fn kv_table(rows: &[(&str, String)]) -> Markup {
    html! {
        table.kv {
            tbody {
                (NL)
                @for (k, v) in rows {
                    tr { th { (t(k)) } td { (t(v)) } } (NL)
                }
            }
        }
        (NL)
    }
}

/// Most bars the pace chart draws; longer runs are drawn in bins of several minutes.
const PACE_BARS: usize = 120;

/// The pace chart's drawing area, in the SVG's own units: it scales with the page (the
/// viewBox), so labels spaced for this width never overlap at any window or paper width.
const CHART_W: f64 = 900.0;
const CHART_H: f64 = 240.0;
const PLOT_LEFT: f64 = 56.0;
const PLOT_RIGHT: f64 = 876.0;
const PLOT_TOP: f64 = 12.0;
const PLOT_BOTTOM: f64 = 200.0;

/// Conversions (green bars) and 429s (red bars) per minute of work, as an inline SVG with its
/// numbers in the title and labels, so it reads without colour too. The axes carry computed
/// ticks (`report::ticks`): counts in 1-2-5 steps, time worked in clock steps with labels in
/// seconds, minutes or hours by the run's length, at most eight of each.
fn pace_chart(s: &Summary) -> Markup {
    let pace = &s.data.pace;
    if pace.is_empty() {
        return html! { p { "No conversion or 429 was recorded yet." } (NL) };
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
    let max = bins.iter().map(|(c, t)| (*c).max(*t)).max().unwrap_or(0);
    let (y_ticks, y_top) = ticks::counts(max);
    // Minute i of activity is worked time [60·i, 60·(i+1)); a run shorter than its last minute
    // ends where its work did.
    let minutes = pace.len() as f64;
    let total = match s.duration.map(|d| d.as_secs_f64()) {
        Some(d) if d > 0.0 => d.clamp((minutes - 1.0) * 60.0 + 1.0, minutes * 60.0),
        _ => minutes * 60.0,
    };
    let x_ticks = ticks::time(total);
    let plot_w = PLOT_RIGHT - PLOT_LEFT;
    let plot_h = PLOT_BOTTOM - PLOT_TOP;
    let x_of = |secs: f64| PLOT_LEFT + plot_w * (secs / total).min(1.0);
    let y_of = |n: u64| PLOT_BOTTOM - plot_h * n as f64 / y_top as f64;
    let unit = if bin == 1 {
        "minute".to_string()
    } else {
        format!("{bin} minutes")
    };
    let total_c: u64 = pace.iter().map(|m| m.converted).sum();
    let total_t: u64 = pace.iter().map(|m| m.throttled).sum();
    let f = |v: f64| format!("{v:.1}");
    html! {
        svg role="img" aria-labelledby="pace-title" width=(CHART_W) height=(CHART_H) viewBox=(format!("0 0 {CHART_W} {CHART_H}")) {
            (NL)
            title id="pace-title" {
                "Conversions and 429 responses per " (unit) ": " (total_c) " conversions, "
                (total_t) " 429s over " (pace.len()) " minutes with activity"
            }
            (NL)
            @for n in &y_ticks {
                line x1=(f(PLOT_LEFT)) y1=(f(y_of(*n))) x2=(f(PLOT_RIGHT)) y2=(f(y_of(*n))) stroke=(if *n == 0 { "#888" } else { "#e2e2e2" }) {}
                text class="y" x=(f(PLOT_LEFT - 6.0)) y=(f(y_of(*n) + 4.0)) text-anchor="end" { (thousands(*n)) }
                (NL)
            }
            @for (k, (c, th)) in bins.iter().enumerate() {
                @let x0 = x_of((k * bin) as f64 * 60.0);
                @let x1 = x_of(((k + 1) * bin) as f64 * 60.0);
                @let w = x1 - x0;
                rect x=(f(x0 + w * 0.1)) y=(f(y_of(*c))) width=(f((w * 0.8).max(0.5))) height=(f(PLOT_BOTTOM - y_of(*c))) fill="#4c9a4c" {}
                @if *th > 0 {
                    rect x=(f(x0 + w * 0.3)) y=(f(y_of(*th))) width=(f((w * 0.4).max(0.5))) height=(f(PLOT_BOTTOM - y_of(*th))) fill="#b00020" {}
                }
            }
            (NL)
            @for (at, label) in &x_ticks {
                @let x = x_of(*at);
                line x1=(f(x)) y1=(f(PLOT_BOTTOM)) x2=(f(x)) y2=(f(PLOT_BOTTOM + 5.0)) stroke="#888" {}
                text class="x" x=(f(x)) y=(f(PLOT_BOTTOM + 19.0)) text-anchor="middle" { (t(label)) }
                (NL)
            }
            text x=(f((PLOT_LEFT + PLOT_RIGHT) / 2.0)) y=(f(CHART_H - 4.0)) text-anchor="middle" {
                "time worked (pauses left out) · per " (unit)
            }
            (NL)
        }
        (NL)
        p.note {
            span.bar style="width:1em" {} "conversions per " (unit) " "
            span class="bar bad" style="width:1em;margin-left:1em" {}
            "429 (throttled) responses per " (unit) ". In all: " (thousands(total_c))
            " conversions and " (thousands(total_t)) " 429s over " (thousands(pace.len() as u64))
            " minutes with activity (" (t(&pace[0].minute)) " to " (t(&pace[pace.len() - 1].minute))
            "); minutes without activity (pauses between an interruption and its resume) are left out."
        }
        (NL)
    }
}

fn user_cell(i: &ItemRecord) -> Markup {
    let main = match (&i.user_principal_name, &i.key) {
        (Some(upn), _) => upn.as_str(),
        (None, Some(k)) => k.value(),
        (None, None) => "(no user key)",
    };
    html! {
        (t(main))
        @if let Some(name) = &i.display_name {
            small { (t(name)) }
        }
    }
}

/// The group a user who needs action is listed under: reason code for blocked, Graph error code
/// for failed.
fn group_key(i: &ItemRecord) -> (u8, String) {
    (u8::from(i.state == ItemState::Failed), item_reason(i))
}

/// The "Back-out" paragraph and, for a live run, the users restored and rolled back (issue 20).
fn backout_block(data: &super::ReportData) -> Markup {
    let b = &data.backout;
    html! {
        p { strong { "Back-out." } " " (t(&data.backout_sentence())) } (NL)
        @for (title, users) in [("Restored", &b.restored), ("Rolled back", &b.rolled_back)] {
            @if !users.is_empty() {
                p { (title) ":" }
                ul {
                    @for u in users.iter() {
                        li { (t(&u.user)) ": " (t(&u.what)) } (NL)
                    }
                }
                (NL)
            }
        }
    }
}

fn summary_section(s: &Summary) -> Markup {
    let run = &s.data.run;
    let fixes = s.fixes();
    html! {
        section.summary aria-labelledby="summary" {
            (NL)
            h2 id="summary" { (Section::BoardSummary.title()) } (NL)
            p.verdict { (t(&s.verdict())) } (NL)
            ul.figures {
                (NL)
                @for (n, label, tone) in s.headline() {
                    li class=(tone.class()) { b { (thousands(n)) } (t(label)) } (NL)
                }
            }
            (NL)
            @if fixes.is_empty() {
                p.ok { (t(NOTHING_TO_FIX)) } (NL)
            } @else {
                h3 { "What needs fixing first" } (NL)
                table.fixes {
                    colgroup { col style="width:34%"; col style="width:6em"; col; }
                    thead { tr { th { "Reason" } th.n { "Users" } th { "Fix" } } }
                    tbody {
                        (NL)
                        @for (reason, n, fix) in &fixes {
                            tr { td { (t(reason)) } td.n { (thousands(*n)) } td { (t(fix)) } } (NL)
                        }
                    }
                }
                (NL)
            }
            @if let Some(e) = s.estimate {
                p { strong { "Estimate." } " " (t(&super::estimate_text(&e))) "." } (NL)
            }
            p { strong { "Follow-up steps." } " " (t(&super::follow_up_text(&s.follow_up_sentences()))) } (NL)
            @if let Some(text) = s.redemption_sentence() {
                p { strong { "Redemption." } " " (t(&text)) } (NL)
            }
            h3 id="left-to-do" { (LEFT_TO_DO_TITLE) } (NL)
            ul.left {
                (NL)
                @for (topic, text) in s.left_to_do() {
                    li { strong { (t(topic)) "." } " " (t(&text)) } (NL)
                }
            }
            (NL)
            p.oneway { strong { "One-way." } " " (t(ONE_WAY)) } (NL)
            (backout_block(s.data))
            p.note {
                "Run " (run.id) " · " (t(mode_label(run.mode))) " · tenant "
                (t(&s.tenant_name())) " · source "
                (t(&run.source.to_string())) "."
            }
            (NL)
        }
        (NL)
    }
}

fn attention_section(s: &Summary) -> Markup {
    let mode = s.data.run.mode;
    let mut sorted = s.attention.clone();
    sorted.sort_by(|a, b| group_key(a).cmp(&group_key(b)).then(a.id.cmp(&b.id)));
    // Consecutive users of one group share a heading, a fix and a table.
    let mut groups: Vec<((u8, String), Vec<&ItemRecord>)> = Vec::new();
    for i in sorted {
        let key = group_key(i);
        match groups.last_mut() {
            Some((k, members)) if *k == key => members.push(i),
            _ => groups.push((key, vec![i])),
        }
    }
    html! {
        h2 id="attention" { (Section::Attention.title()) " (" (thousands(s.attention.len() as u64)) ")" } (NL)
        @if s.attention.is_empty() {
            p { (t(NO_ATTENTION)) } (NL)
        } @else {
            p.note { "Only users who need action are listed, grouped by reason; the CSV and JSON reports list every user of the run." } (NL)
            @for ((failed, code), members) in &groups {
                (group_table(mode, *failed == 1, code, members))
            }
        }
    }
}

/// One group of listed users: its heading, the fix and what every detail shares, said once,
/// then one row per user with only what is that user's own.
fn group_table(mode: RunMode, failed: bool, code: &str, members: &[&ItemRecord]) -> Markup {
    let first = members[0];
    let title = match first.reason {
        Some(r) => r.explanation().to_string(),
        None => format!("Failed at Graph: {code}"),
    };
    let details: Vec<String> = members.iter().map(|i| item_detail(i)).collect();
    let shared = SharedDetail::of(&details.iter().map(String::as_str).collect::<Vec<_>>());
    let own_parts = details.iter().any(|d| !shared.own(d).is_empty());
    let detail_head = if failed { "Graph message" } else { "Detail" };
    html! {
        h3 { (t(state_label(first.state, mode))) " — " (t(&title)) " (" (thousands(members.len() as u64)) ")" } (NL)
        p { strong { "Fix:" } " " (t(item_fix(first))) } (NL)
        @if !shared.is_empty() {
            p.note {
                (detail_head) @if own_parts { ", the same for every user below (each row gives the part in place of …)" } @else { " of every user below" }
                ": " (t(&shared.template(own_parts)))
            }
            (NL)
        }
        table class="users sortable attn" {
            colgroup {
                col.line; col.user; col.oid; col.mail;
                @if own_parts { col; }
                // Request ids exist only for users a request was sent for: failed ones.
                @if failed { col.req; }
            }
            thead {
                tr {
                    th.n { "Line" } th { "User" } th { "Object id" } th { "External email" }
                    @if own_parts { th { (detail_head) } }
                    @if failed { th { "Request id" } }
                }
            }
            tbody {
                (NL)
                @for (i, detail) in members.iter().zip(&details) {
                    tr class=(i.state.as_str()) data-item=(i.id) data-reason=(t(&item_reason(i))) {
                        td { @if let Some(l) = i.line { (l) } }
                        td { (user_cell(i)) }
                        td { (opt(&i.user_id)) }
                        td { (opt(&i.external_email)) }
                        @if own_parts { td { (t(shared.own(detail))) } }
                        @if failed { td { (opt(&i.request_id)) } }
                    }
                    (NL)
                }
            }
        }
        (NL)
    }
}

fn follow_up_section(s: &Summary) -> Markup {
    let live = s.data.run.mode == RunMode::Live;
    html! {
        h2 id="follow-ups" { (Section::FollowUps.title()) } (NL)
        table.steps {
            @if live {
                colgroup { col style="width:30%"; col style="width:12em"; col style="width:6em"; col; }
                thead { tr { th { "Step" } th.n { "Users that needed it" } th.n { "Done" } th { "What it means" } } }
            } @else {
                colgroup { col style="width:30%"; col style="width:12em"; col; }
                thead { tr { th { "Step" } th.n { "Users it will touch" } th { "What it means" } } }
            }
            tbody {
                (NL)
                @for (step, planned, done, meaning) in s.follow_up_rows() {
                    tr {
                        td { (t(step)) }
                        td.n { (thousands(planned)) }
                        @if let Some(d) = done { td.n { (thousands(d)) } }
                        td { (t(meaning)) }
                    }
                    (NL)
                }
            }
        }
        (NL)
        @if let Some(e) = s.estimate.filter(|e| e.writes > e.users_to_convert) {
            p {
                (t("Each step is one more write on Graph's shared write bucket: the estimate counts "))
                (thousands(e.writes)) " writes for " (thousands(e.users_to_convert)) " users."
            }
            (NL)
        }
        @if let Some(note) = s.billing_note() {
            p.oneway { strong { "Billing." } " " (t(&note)) } (NL)
        }
        @if live {
            p.note {
                "Who got which step: the CSV report (" code { "mail_set_at" } ", " code { "guest_set_at" }
                ") and the JSON report (" code { "mailSetAt" } ", " code { "guestSetAt" } ") give the time per user."
            }
        } @else {
            p.note {
                (t("Who gets which step: each user's detail in the CSV and JSON reports says \"mail will be set …\" or \"userType will be set to Guest …\"."))
            }
        }
        (NL)
    }
}

/// Most days the redemption chart draws (the latest).
const REDEMPTION_BARS: usize = 90;

/// Users redeemed so far, per day with redemptions, as an inline SVG; each bar's count is in
/// the title and the table beside it, so it reads without colour too.
fn redemption_chart(days: &[crate::queue::track::RedemptionDay]) -> Markup {
    let days = &days[days.len().saturating_sub(REDEMPTION_BARS)..];
    let Some(last) = days.last() else {
        return html! { p { "No user has redeemed yet." } (NL) };
    };
    let max = last.cumulative.max(1);
    const W: usize = 900;
    const H: usize = 180;
    const LEFT: usize = 50;
    const BOTTOM: usize = 24;
    let slot = (W - LEFT) as f64 / days.len().max(20) as f64;
    let plot_h = (H - BOTTOM - 10) as f64;
    let y0 = (H - BOTTOM) as f64;
    let lx = LEFT - 6;
    html! {
        svg role="img" aria-labelledby="redeem-title" width=(W) height=(H) viewBox=(format!("0 0 {W} {H}")) {
            (NL)
            title id="redeem-title" { "Users redeemed so far, per day: " (last.cumulative) " by " (t(&last.day)) }
            (NL)
            line x1=(LEFT) y1=(y0) x2=(W) y2=(y0) stroke="#888" {}
            text x=(lx) y="14" text-anchor="end" { (max) }
            text x=(lx) y=(y0) text-anchor="end" { "0" }
            @for (n, d) in days.iter().enumerate() {
                @let h = plot_h * d.cumulative as f64 / max as f64;
                rect x=(format!("{:.1}", LEFT as f64 + slot * n as f64)) y=(format!("{:.1}", y0 - h))
                    width=(format!("{:.1}", (slot * 0.8).max(0.5))) height=(format!("{h:.1}")) fill="#4c9a4c" {
                    title { (t(&d.day)) ": " (d.accepted) " redeemed, " (d.cumulative) " so far" }
                }
            }
            (NL)
            text x=(LEFT) y=(H) { (t(&days[0].day)) }
            @if days.len() > 1 {
                text x=(format!("{:.1}", LEFT as f64 + slot * days.len() as f64)) y=(H) text-anchor="end" {
                    (t(&last.day))
                }
            }
            (NL)
        }
        (NL)
        p.note {
            span.bar style="width:1em" {}
            "users redeemed so far, by the day Graph recorded each redemption (days without a redemption left out)."
        }
        (NL)
    }
}

fn redemption_section(s: &Summary) -> Markup {
    let Some(r) = &s.data.redemption else {
        return html! {};
    };
    let Some(rows) = s.redemption_rows() else {
        return html! {
            h2 id="redemption" { (Section::Redemption.title()) } (NL)
            p {
                "Not tracked yet. " code { "b2b-convert track " (s.data.run.id) }
                (t(" reads every converted user's redemption state; run it again later to follow progress."))
            }
            (NL)
        };
    };
    let total: u64 = rows.iter().map(|(_, n, _)| n).sum::<u64>().max(1);
    let not_redeemed = r.not_redeemed_total();
    let listed = r.not_redeemed.len() as u64;
    let skip = r.tracks.len().saturating_sub(HISTORY_ROWS);
    html! {
        h2 id="redemption" { (Section::Redemption.title()) } (NL)
        p {
            "As of the last " code { "track" } ", "
            (t(r.counts.last_tracked_at.as_deref().unwrap_or(""))) "."
        }
        (NL)
        table.redemption {
            colgroup { col style="width:12em"; col style="width:7em"; col style="width:22%"; col; }
            thead { tr { th { "Redemption state" } th.n { "Users" } th { "Share" } th { "Meaning" } } }
            tbody {
                (NL)
                @for (label, n, meaning) in &rows {
                    @let tone = match *label {
                        "Accepted" => "bar",
                        "Not applied" => "bar bad",
                        _ => "bar warn",
                    };
                    tr {
                        td { (t(label)) }
                        td.n { (thousands(*n)) }
                        td {
                            span class=(tone) style=(format!("width:{:.1}%", 70.0 * *n as f64 / total as f64)) {}
                            (format!("{:.1}%", 100.0 * *n as f64 / total as f64))
                        }
                        td { (t(meaning)) }
                    }
                    (NL)
                }
            }
        }
        (NL)
        h3 { "Redemptions over time" } (NL)
        (redemption_chart(&r.timeline))
        @if !r.tracks.is_empty() {
            table.tracks {
                thead { tr { th { "Track finished" } th.n { "Accepted" } th.n { "Pending" } th.n { "Not applied" } th.n { "Missing" } } }
                tbody {
                    (NL)
                    @for pass in &r.tracks[skip..] {
                        tr {
                            td { (opt(&pass.finished_at)) }
                            td.n { (thousands(pass.counts.accepted)) }
                            td.n { (thousands(pass.counts.pending)) }
                            td.n { (thousands(pass.counts.not_applied)) }
                            td.n { (thousands(pass.counts.missing)) }
                        }
                        (NL)
                    }
                }
            }
            (NL)
        }
        h3 id="not-redeemed" { "Not redeemed yet (" (thousands(not_redeemed)) ")" } (NL)
        @if not_redeemed == 0 {
            p.ok { "Every converted user has redeemed." } (NL)
        } @else {
            @if listed < not_redeemed {
                p.note {
                    "The " (thousands(listed)) " oldest invitations are listed; all " (thousands(not_redeemed))
                    " are in the CSV and JSON reports (" code { "external_user_state" } " empty or "
                    code { "PendingAcceptance" } ")."
                }
                (NL)
            }
            table class="users sortable" {
                colgroup { col style="width:28%"; col style="width:28%"; col style="width:14em"; col style="width:10em"; col; }
                thead { tr { th { "User" } th { "External email" } th { "Invited" } th { "State" } th { "Last resent" } } }
                tbody {
                    (NL)
                    @for n in &r.not_redeemed {
                        tr data-not-redeemed=(n.user.item_id) {
                            td { (opt(&n.user.user_principal_name)) }
                            td { (opt(&n.user.external_email)) }
                            td { (opt(&n.invited_at)) }
                            td { (t(&not_redeemed_state(n))) }
                            td { (t(n.last_resent_at.as_deref().unwrap_or("never"))) }
                        }
                        (NL)
                    }
                }
            }
            (NL)
        }
    }
}

fn state_counts_section(s: &Summary) -> Markup {
    let d = s.data;
    let total = d.counts.total.max(1);
    html! {
        h2 { (Section::StateCounts.title()) } (NL)
        table.states {
            colgroup { col style="width:40%"; col style="width:8em"; col; }
            thead { tr { th { "State" } th.n { "Users" } th { "Share" } } }
            tbody {
                (NL)
                @for (state, n) in s.state_counts() {
                    @let tone = match state {
                        ItemState::Blocked => "bar warn",
                        ItemState::Failed => "bar bad",
                        _ => "bar",
                    };
                    tr {
                        td { (t(state_label(state, d.run.mode))) " " small { "(" (state.as_str()) ")" } }
                        td.n { (n) }
                        td {
                            span class=(tone) style=(format!("width:{:.1}%", 80.0 * n as f64 / total as f64)) {}
                            (format!("{:.1}%", 100.0 * n as f64 / total as f64))
                        }
                    }
                    (NL)
                }
            }
            tfoot { tr { th { "total" } th.n { (d.counts.total) } th {} } }
        }
        (NL)
    }
}

fn reason_counts_section(s: &Summary) -> Markup {
    let mode = s.data.run.mode;
    html! {
        h2 { (Section::ReasonCounts.title()) } (NL)
        @if s.reasons.is_empty() {
            p { "No user was blocked or skipped." } (NL)
        } @else {
            table.reasons {
                colgroup { col style="width:12em"; col style="width:9em"; col style="width:5em"; col; col; }
                thead { tr { th { "Reason" } th { "State" } th.n { "Users" } th { "Meaning" } th { "Fix" } } }
                tbody {
                    (NL)
                    @for r in &s.reasons {
                        tr {
                            td { (t(&r.code)) }
                            td { (t(r.state.map(|st| state_label(st, mode)).unwrap_or(""))) }
                            td.n { (r.count) }
                            td { (t(r.explanation.unwrap_or("Unknown reason code."))) }
                            td { (t(r.fix_hint.unwrap_or(""))) }
                        }
                        (NL)
                    }
                }
            }
            (NL)
        }
    }
}

fn things_to_consider_section(s: &Summary) -> Markup {
    let run = &s.data.run;
    html! {
        h2 { (Section::ThingsToConsider.title()) } (NL)
        p { (t(THINGS_TO_CONSIDER_INTRO)) } (NL)
        ul {
            (NL)
            @for (topic, text) in things_to_consider(run.tenant_id.as_deref(), run.options.set_guest) {
                li { strong { (t(topic)) "." } " " (t(&text)) } (NL)
            }
        }
        (NL)
    }
}

/// One section, or nothing when it has nothing to say for this run.
fn section(s: &Summary, section: Section) -> Markup {
    let heading = |rows: &[(&str, String)]| {
        html! { h2 { (section.title()) } (NL) (kv_table(rows)) }
    };
    match section {
        Section::BoardSummary => summary_section(s),
        Section::Pace if s.data.run.mode == RunMode::Live => {
            html! { h2 { (section.title()) } (NL) (pace_chart(s)) }
        }
        Section::Pace => html! {},
        Section::Attention => attention_section(s),
        Section::Redemption => redemption_section(s),
        Section::StateCounts => state_counts_section(s),
        Section::ReasonCounts => reason_counts_section(s),
        Section::Estimate => match s.estimate_rows() {
            Some(rows) => html! {
                (heading(&rows))
                p.note { (t(ESTIMATE_FORMULA)) } (NL)
            },
            None => html! {},
        },
        Section::Throughput => match s.throughput_rows() {
            Some(rows) => heading(&rows),
            None => html! {},
        },
        Section::FollowUps if s.has_follow_ups() => follow_up_section(s),
        Section::FollowUps => html! {},
        Section::Run => heading(&s.run_rows()),
        Section::Options => heading(&s.option_rows()),
        Section::Plan => plan_section(s.data),
        Section::ThingsToConsider => things_to_consider_section(s),
    }
}

pub(super) fn render(s: &Summary) -> String {
    let d = s.data;
    let run = &d.run;
    let title = format!(
        "Conversion to B2B collaboration: run {} ({})",
        run.id,
        mode_label(run.mode)
    );
    let page = html! {
        (DOCTYPE) (NL)
        html lang="en" {
            (NL)
            head {
                (NL)
                meta charset="utf-8"; (NL)
                meta name="viewport" content="width=device-width, initial-scale=1"; (NL)
                title { (t(&title)) } (NL)
                style { (PreEscaped(STYLE)) } (NL)
            }
            (NL)
            body {
                (NL)
                h1 { (t(&title)) } (NL)
                p.sub {
                    "Converting internal accounts of tenant " (t(&s.tenant_name()))
                    " to B2B collaboration · report generated " (t(&d.generated_at))
                    " · b2b-convert " (t(&d.tool_version))
                }
                (NL)
                @for part in ORDER {
                    (section(s, part))
                }
                p.note { "Generated " (t(&d.generated_at)) " by b2b-convert " (t(&d.tool_version)) "." } (NL)
                script { (PreEscaped(SCRIPT)) } (NL)
            }
            (NL)
        }
        (NL)
    };
    page.into_string()
}

/// `apply` runs: the plan and who drifted; runs whose send options changed: the history.
fn plan_section(data: &crate::report::ReportData) -> Markup {
    let history = data.option_history_lines();
    html! {
        @if let Some(sentence) = data.plan_sentence() {
            h2 id="plan" { (Section::Plan.title()) } (NL)
            p { (t(&sentence)) } (NL)
            @let drifted = data.drifted();
            @if !drifted.is_empty() {
                table {
                    (NL)
                    tr { th { "User" } th { "What changed since the plan" } } (NL)
                    @for i in drifted {
                        tr {
                            td { (t(i.user_principal_name.as_deref().or(i.user_id.as_deref()).unwrap_or(""))) }
                            td { (t(i.detail.as_deref().unwrap_or(""))) }
                        }
                        (NL)
                    }
                }
                (NL)
            }
        }
        @if !history.is_empty() {
            h2 id="option-history" { "Option history" } (NL)
            ul {
                (NL)
                @for line in &history {
                    li { (t(line)) } (NL)
                }
            }
            (NL)
        }
    }
}

/// The HTML checker the integration tests use too: one copy.
#[cfg(test)]
#[path = "../../tests/it/common/html.rs"]
#[allow(dead_code)]
mod html_check;

#[cfg(test)]
mod tests {
    use super::super::fixtures::{dry_run, live_run, XSS_NAME};
    use super::html_check::check_balanced;
    use super::*;
    use crate::config::ReportFormat;
    use crate::report::render;

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

    /// The `(x, y, label)` of every `<text class="{class}">` in the pace chart.
    fn axis_labels(html: &str, class: &str) -> Vec<(f64, f64, String)> {
        let svg = &html[html.find("aria-labelledby=\"pace-title\"").unwrap()..];
        let svg = &svg[..svg.find("</svg>").unwrap()];
        let marker = format!("<text class=\"{class}\" ");
        svg.match_indices(&marker)
            .map(|(at, _)| {
                let tag = &svg[at..];
                let attr = |name: &str| -> f64 {
                    let from = tag.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                    tag[from..from + tag[from..].find('"').unwrap()]
                        .parse()
                        .unwrap()
                };
                let body = &tag[tag.find('>').unwrap() + 1..];
                (
                    attr("x"),
                    attr("y"),
                    body[..body.find('<').unwrap()].to_string(),
                )
            })
            .collect()
    }

    /// Runs of 10 s, 1 h and 3 days: each axis has 2 to 8 labels, distinct, in order, inside
    /// the plot, and far enough apart that 12 px text (at most 0.6 em a character) never
    /// touches its neighbour, whatever the width the page is shown at (the SVG scales).
    #[test]
    fn pace_chart_axes_read_well_at_any_run_length() {
        for (minutes, worked, first, last) in [
            (1usize, 10.0, "0 s", "10 s"),
            (60, 3_600.0, "0 min", "60 min"),
            (3 * 24 * 60, 3.0 * 86_400.0, "0 h", "72 h"),
        ] {
            let mut data = live_run();
            data.active_seconds = Some(worked);
            data.pace = (0..minutes)
                .map(|m| crate::item::PaceMinute {
                    minute: format!("2025-03-01T10:{:02}:00Z", m % 60),
                    converted: 1_150 + (m as u64 * 37) % 300,
                    throttled: (m as u64 * 7) % 40,
                })
                .collect();
            let html = render(ReportFormat::Html, &data);
            check_balanced(&html);
            let x = axis_labels(&html, "x");
            let names: Vec<&str> = x.iter().map(|(_, _, l)| l.as_str()).collect();
            assert!((2..=8).contains(&x.len()), "{minutes} min: {names:?}");
            assert_eq!(
                (names[0], *names.last().unwrap()),
                (first, last),
                "{names:?}"
            );
            let distinct: std::collections::BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(distinct.len(), names.len(), "{names:?}");
            for pair in x.windows(2) {
                let ((xa, _, a), (xb, _, b)) = (&pair[0], &pair[1]);
                let half_widths = 7.2 * (a.len() + b.len()) as f64 / 2.0;
                assert!(xb - xa >= half_widths + 6.0, "{a} at {xa}, {b} at {xb}");
            }
            for (at, _, l) in &x {
                assert!((PLOT_LEFT..=PLOT_RIGHT).contains(at), "{l} at {at}");
                let half = 7.2 * l.len() as f64 / 2.0;
                assert!(
                    at - half >= 0.0 && at + half <= CHART_W,
                    "{l} leaves the chart"
                );
            }
            let y = axis_labels(&html, "y");
            let values: Vec<u64> = y
                .iter()
                .map(|(_, _, l)| l.replace(',', "").parse().unwrap())
                .collect();
            assert!((2..=8).contains(&y.len()), "{values:?}");
            assert!(values.windows(2).all(|w| w[0] < w[1]), "{values:?}");
            assert!(
                y.windows(2).all(|w| w[1].1 + 12.0 <= w[0].1),
                "y labels overlap: {y:?}"
            );
            assert!(y
                .iter()
                .all(|(_, at, _)| (PLOT_TOP..=PLOT_BOTTOM + 4.0).contains(at)));
            let peak = data.pace.iter().map(|m| m.converted).max().unwrap();
            let bin = minutes.div_ceil(PACE_BARS) as u64;
            assert!(
                *values.last().unwrap() >= peak,
                "the top tick covers the tallest bar"
            );
            assert!(*values.last().unwrap() <= 2 * peak * bin, "{values:?}");
        }
    }

    #[test]
    fn wide_values_wrap_and_tables_fit_the_page() {
        let wants = [
            "overflow-wrap:break-word",
            "table{table-layout:fixed}",
            "table.users{table-layout:fixed}",
            "@page{size:A4",
        ];
        super::super::fixtures::assert_contains(STYLE, &wants);
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
