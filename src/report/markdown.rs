//! Markdown report: headings and pipe tables, readable in a terminal and on a wiki.
//!
//! Every value from the tenant or the input is escaped for a table cell: `|` cannot split a
//! cell, a newline cannot end a row, and `<`, `>`, `[`, `]`, `` ` ``, `*`, `&` and `\` are
//! backslash-escaped so a wiki renders them as text, never as HTML, links or entities. The
//! pieces of link and image syntax are escaped as pairs too — a `(` right after `]`, a `!` right
//! before `[` — so a display name such as `x](javascript:alert(1))` leaves no `](` or `![` in the
//! text, even for a renderer that mishandles a single escape.

use std::fmt::Write as _;

use super::{
    item_detail, item_fix, item_reason, mode_label, not_redeemed_state, state_label,
    things_to_consider, thousands, Section, Summary, ESTIMATE_FORMULA, HISTORY_ROWS,
    LEFT_TO_DO_TITLE, NOTHING_TO_FIX, NO_ATTENTION, ONE_WAY, THINGS_TO_CONSIDER_INTRO,
};
use crate::item::ItemRecord;

/// Escapes text for a Markdown table cell or a paragraph.
pub(crate) fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' | '<' | '>' | '[' | '`' | '\\' | '*' | '&' => {
                out.push('\\');
                out.push(c);
            }
            ']' => {
                out.push_str("\\]");
                if chars.peek() == Some(&'(') {
                    chars.next();
                    out.push_str("\\(");
                }
            }
            '!' if chars.peek() == Some(&'[') => out.push_str("\\!"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str(" / ");
            }
            '\n' => out.push_str(" / "),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn opt(s: &Option<String>) -> String {
    s.as_deref().map(cell).unwrap_or_default()
}

/// Live runs: the users `restore` and `rollback` finished with.
fn backout_section(out: &mut String, b: &super::BackoutDone) {
    for (title, users, total) in [
        ("Restored", &b.restored, b.restored_total),
        ("Rolled back", &b.rolled_back, b.rolled_back_total),
    ] {
        if users.is_empty() {
            continue;
        }
        let _ = writeln!(out, "**{title}** ({} users):\n", super::thousands(total));
        for u in users {
            let _ = writeln!(out, "- {}: {}", cell(&u.user), cell(&u.what));
        }
        if total > users.len() as u64 {
            let _ = writeln!(
                out,
                "- … and {} more (see the CSV or JSON report)",
                super::thousands(total - users.len() as u64)
            );
        }
        out.push('\n');
    }
}

fn kv_table(out: &mut String, rows: &[(&str, String)]) {
    out.push_str("| Field | Value |\n| --- | --- |\n");
    for (k, v) in rows {
        let _ = writeln!(out, "| {} | {} |", cell(k), cell(v));
    }
    out.push('\n');
}

/// The Markdown report's sections, in reading order: the board's summary, then the run's
/// reference tables, the users who need action last (a long list in a terminal).
const ORDER: [Section; 12] = [
    Section::BoardSummary,
    Section::Run,
    Section::Options,
    Section::Plan,
    Section::Estimate,
    Section::Throughput,
    Section::FollowUps,
    Section::Redemption,
    Section::StateCounts,
    Section::ReasonCounts,
    Section::Attention,
    Section::ThingsToConsider,
];

pub(super) fn render(s: &Summary) -> String {
    let d = s.data;
    let run = &d.run;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Conversion to B2B collaboration: run {} ({})\n",
        run.id,
        mode_label(run.mode)
    );
    let _ = writeln!(
        out,
        "Converting internal accounts of tenant {} to B2B collaboration.\n",
        cell(&s.tenant_name())
    );
    for part in ORDER {
        section(&mut out, s, part);
    }
    out
}

fn heading(out: &mut String, section: Section) {
    let _ = writeln!(out, "## {}\n", section.title());
}

/// One section, or nothing when it has nothing to say for this run.
fn section(out: &mut String, s: &Summary, section: Section) {
    let run = &s.data.run;
    match section {
        Section::BoardSummary => summary_section(out, s),
        // A chart: the HTML report draws it; here the throughput table stands for it.
        Section::Pace => {}
        Section::Run => {
            heading(out, section);
            kv_table(out, &s.run_rows());
        }
        Section::Options => {
            heading(out, section);
            kv_table(out, &s.option_rows());
        }
        Section::Plan => plan_section(out, s.data),
        Section::Estimate => {
            if let Some(rows) = s.estimate_rows() {
                heading(out, section);
                kv_table(out, &rows);
                let _ = writeln!(out, "{ESTIMATE_FORMULA}\n");
            }
        }
        Section::Throughput => {
            if let Some(rows) = s.throughput_rows() {
                heading(out, section);
                kv_table(out, &rows);
            }
        }
        Section::FollowUps => follow_up_section(out, s),
        Section::Redemption => redemption_section(out, s),
        Section::StateCounts => {
            heading(out, section);
            out.push_str("| State | Count |\n| --- | ---: |\n");
            for (state, n) in s.state_counts() {
                let _ = writeln!(
                    out,
                    "| {} ({}) | {n} |",
                    state_label(state, run.mode),
                    cell(state.as_str())
                );
            }
            let _ = writeln!(out, "| **total** | **{}** |\n", s.data.counts.total);
        }
        Section::ReasonCounts => {
            heading(out, section);
            if s.reasons.is_empty() {
                out.push_str("No item was blocked or skipped.\n\n");
                return;
            }
            out.push_str(
                "| Reason | State | Count | Meaning | Fix |\n| --- | --- | ---: | --- | --- |\n",
            );
            for r in &s.reasons {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} |",
                    cell(&r.code),
                    r.state.map(|st| state_label(st, run.mode)).unwrap_or(""),
                    r.count,
                    cell(r.explanation.unwrap_or("Unknown reason code.")),
                    cell(r.fix_hint.unwrap_or("")),
                );
            }
            out.push('\n');
        }
        Section::Attention => attention_section(out, s),
        Section::ThingsToConsider => {
            heading(out, section);
            let _ = writeln!(out, "{THINGS_TO_CONSIDER_INTRO}\n");
            for (topic, text) in things_to_consider(run.tenant_id.as_deref(), run.options.set_guest)
            {
                let _ = writeln!(out, "- **{topic}.** {}", cell(&text));
            }
        }
    }
}

fn summary_section(out: &mut String, s: &Summary) {
    heading(out, Section::BoardSummary);
    let _ = writeln!(out, "{}\n", cell(&s.verdict()));
    out.push_str("| Users | |\n| ---: | --- |\n");
    for (n, label, _) in s.headline() {
        let _ = writeln!(out, "| **{}** | {label} |", thousands(n));
    }
    out.push('\n');
    let fixes = s.fixes();
    if fixes.is_empty() {
        let _ = writeln!(out, "{NOTHING_TO_FIX}\n");
    } else {
        out.push_str(
            "### What needs fixing first\n\n| Reason | Users | Fix |\n| --- | ---: | --- |\n",
        );
        for (reason, n, fix) in &fixes {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                cell(reason),
                thousands(*n),
                cell(fix)
            );
        }
        out.push('\n');
    }
    if let Some(e) = s.estimate {
        let _ = writeln!(out, "**Estimate.** {}.\n", cell(&super::estimate_text(&e)));
    }
    let _ = writeln!(
        out,
        "**Follow-up steps.** {}\n",
        cell(&super::follow_up_text(&s.follow_up_sentences()))
    );
    if let Some(text) = s.redemption_sentence() {
        let _ = writeln!(out, "**Redemption.** {}\n", cell(&text));
    }
    let _ = writeln!(out, "### {LEFT_TO_DO_TITLE}\n");
    for (topic, text) in s.left_to_do() {
        let _ = writeln!(out, "- **{topic}.** {}", cell(&text));
    }
    out.push('\n');
    let _ = writeln!(out, "> **One-way.** {ONE_WAY}\n");
    let _ = writeln!(out, "**Back-out.** {}\n", cell(&s.data.backout_sentence()));
    backout_section(out, &s.data.backout);
}

fn attention_section(out: &mut String, s: &Summary) {
    let mode = s.data.run.mode;
    let _ = writeln!(
        out,
        "## {} ({})\n",
        Section::Attention.title(),
        s.attention.len()
    );
    if s.attention.is_empty() {
        let _ = writeln!(out, "{NO_ATTENTION}\n");
        return;
    }
    out.push_str(
        "Only users who need action are listed; the CSV and JSON reports list every user of the run.\n\n",
    );
    out.push_str(
        "| Item | Line | User | Object id | External email | State | Reason / error code | Detail / Graph message | Request id | Fix |\n\
         | ---: | ---: | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for i in &s.attention {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            i.id,
            i.line.map(|l| l.to_string()).unwrap_or_default(),
            upn_or_key(i),
            opt(&i.user_id),
            opt(&i.external_email),
            state_label(i.state, mode),
            cell(&item_reason(i)),
            cell(&item_detail(i)),
            opt(&i.request_id),
            cell(item_fix(i)),
        );
    }
    out.push('\n');
}

/// `apply` runs: the plan and who drifted; runs whose send options changed: the history.
fn plan_section(out: &mut String, data: &crate::report::ReportData) {
    if let Some(sentence) = data.plan_sentence() {
        out.push_str("## Plan\n\n");
        let _ = writeln!(out, "{}\n", cell(&sentence));
        let drifted = data.drifted();
        if !drifted.is_empty() {
            out.push_str("| User | What changed since the plan |\n| --- | --- |\n");
            for i in drifted {
                let _ = writeln!(
                    out,
                    "| {} | {} |",
                    cell(&upn_or_key(i)),
                    cell(i.detail.as_deref().unwrap_or(""))
                );
            }
            out.push('\n');
        }
    }
    let history = data.option_history_lines();
    if !history.is_empty() {
        out.push_str("## Option history\n\n");
        for line in history {
            let _ = writeln!(out, "- {}", cell(&line));
        }
        out.push('\n');
    }
}

fn follow_up_section(out: &mut String, s: &Summary) {
    if !s.has_follow_ups() {
        return;
    }
    let live = s.data.run.mode == crate::item::RunMode::Live;
    heading(out, Section::FollowUps);
    if live {
        out.push_str(
            "| Step | Users that needed it | Done | What it means |\n| --- | ---: | ---: | --- |\n",
        );
    } else {
        out.push_str("| Step | Users it will touch | What it means |\n| --- | ---: | --- |\n");
    }
    for (step, planned, done, meaning) in s.follow_up_rows() {
        match done {
            Some(done) => {
                let _ = writeln!(
                    out,
                    "| {step} | {} | {} | {} |",
                    thousands(planned),
                    thousands(done),
                    cell(meaning)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "| {step} | {} | {} |",
                    thousands(planned),
                    cell(meaning)
                );
            }
        }
    }
    out.push('\n');
    if let Some(e) = s.estimate.filter(|e| e.writes > e.users_to_convert) {
        let _ = writeln!(
            out,
            "Each step is one more write on Graph's shared write bucket: the estimate counts {} writes for {} users.\n",
            thousands(e.writes),
            thousands(e.users_to_convert)
        );
    }
    if let Some(note) = s.billing_note() {
        let _ = writeln!(out, "**Billing.** {}\n", cell(&note));
    }
    out.push_str(if live {
        "Who got which step: the CSV report (`mail_set_at`, `guest_set_at`) and the JSON report (`mailSetAt`, `guestSetAt`) give the time per user.\n\n"
    } else {
        "Who gets which step: each user's detail in the CSV and JSON reports says \"mail will be set …\" or \"userType will be set to Guest …\".\n\n"
    });
}

fn redemption_section(out: &mut String, s: &Summary) {
    let Some(r) = &s.data.redemption else {
        return;
    };
    heading(out, Section::Redemption);
    let Some(rows) = s.redemption_rows() else {
        let _ = writeln!(
            out,
            "Not tracked yet. `b2b-convert track {}` reads every converted user's redemption state; run it again later to follow progress.\n",
            s.data.run.id
        );
        return;
    };
    let _ = writeln!(
        out,
        "As of the last `track`, {}.\n",
        r.counts
            .last_tracked_at
            .as_deref()
            .map(cell)
            .unwrap_or_default()
    );
    out.push_str("| Redemption state | Users | Meaning |\n| --- | ---: | --- |\n");
    for (label, n, meaning) in rows {
        let _ = writeln!(out, "| {label} | {} | {} |", thousands(n), cell(meaning));
    }
    out.push('\n');
    if !r.timeline.is_empty() {
        out.push_str("### Redemptions per day\n\n| Day (UTC) | Redeemed | Redeemed so far |\n| --- | ---: | ---: |\n");
        let skip = r.timeline.len().saturating_sub(HISTORY_ROWS);
        if skip > 0 {
            let _ = writeln!(out, "| (earlier {skip} days) | | |");
        }
        for d in &r.timeline[skip..] {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                cell(&d.day),
                thousands(d.accepted),
                thousands(d.cumulative)
            );
        }
        out.push('\n');
    }
    out.push_str("### Track passes\n\n| Finished | Accepted | Pending | Not applied | Missing |\n| --- | ---: | ---: | ---: | ---: |\n");
    let skip = r.tracks.len().saturating_sub(HISTORY_ROWS);
    for t in &r.tracks[skip..] {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            t.finished_at.as_deref().map(cell).unwrap_or_default(),
            thousands(t.counts.accepted),
            thousands(t.counts.pending),
            thousands(t.counts.not_applied),
            thousands(t.counts.missing)
        );
    }
    out.push('\n');
    let total = r.not_redeemed_total();
    let _ = writeln!(out, "### Not redeemed yet ({})\n", thousands(total));
    if total == 0 {
        out.push_str("Every converted user has redeemed.\n\n");
        return;
    }
    let listed = r.not_redeemed.len() as u64;
    if listed < total {
        let _ = writeln!(
            out,
            "The {} oldest invitations are listed; all {} are in the CSV and JSON reports (`external_user_state` empty or `PendingAcceptance`).\n",
            thousands(listed),
            thousands(total)
        );
    }
    out.push_str("| Item | User | External email | Invited | State | Last resent |\n| ---: | --- | --- | --- | --- | --- |\n");
    for n in &r.not_redeemed {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            n.user.item_id,
            opt(&n.user.user_principal_name),
            opt(&n.user.external_email),
            opt(&n.invited_at),
            not_redeemed_state(n),
            n.last_resent_at
                .as_deref()
                .map(cell)
                .unwrap_or_else(|| "never".into()),
        );
    }
    out.push('\n');
}

/// The UPN, else the key the input gave (a bad row may have neither), then the display name.
fn upn_or_key(i: &ItemRecord) -> String {
    let key = match (&i.user_principal_name, &i.key) {
        (Some(upn), _) => cell(upn),
        (None, Some(k)) => cell(k.value()),
        (None, None) => String::new(),
    };
    match &i.display_name {
        Some(name) if key.is_empty() => cell(name),
        Some(name) => format!("{key} ({})", cell(name)),
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{assert_contains, dry_run, live_run, XSS_NAME};
    use super::*;
    use crate::config::ReportFormat;
    use crate::item::ItemState;
    use crate::report::render;

    fn section<'a>(md: &'a str, heading: &str) -> &'a str {
        let start = md.find(heading).unwrap_or_else(|| panic!("no {heading}"));
        let rest = &md[start + heading.len()..];
        &rest[..rest.find("\n## ").unwrap_or(rest.len())]
    }

    #[test]
    fn cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc\r\nd"), "a\\|b / c / d");
        assert_eq!(cell(XSS_NAME), "\\<script\\>alert(1)\\</script\\>");
        assert_eq!(cell("[x](javascript:y)"), "\\[x\\]\\(javascript:y)");
        let md = cell("a](javascript:alert(1)) ![i](x) &lt;b&gt; &#91;");
        for raw in ["](", "![", " &lt;", " &#91;"] {
            assert!(!md.contains(raw), "{raw} survives in {md}");
        }
    }

    #[test]
    fn dry_run_states_counts_reasons_and_estimate() {
        let data = dry_run();
        let md = render(ReportFormat::Md, &data);
        let states = section(&md, "## Counts by state");
        for st in ItemState::ALL {
            let row = format!(
                "| {} ({}) | {} |",
                state_label(st, data.run.mode),
                cell(st.as_str()),
                data.counts.state(st)
            );
            assert!(states.contains(&row), "missing {row}");
        }
        let reasons = section(&md, "## Counts by reason");
        for (code, n) in &data.counts.reasons {
            let r: crate::item::Reason = code.parse().unwrap();
            assert!(reasons.contains(&format!("| {} |", cell(code))));
            assert!(reasons.contains(&format!(" | {n} | ")));
            assert!(reasons.contains(&cell(r.explanation())));
            assert!(reasons.contains(&cell(r.fix_hint())));
        }
        let est = section(&md, "## Estimated duration of the live run");
        assert!(est.contains("At Graph's write ceiling"));
        assert!(est.contains("bounds the run"));
        assert!(!md.contains("## Throughput"));
        assert!(md.contains("- **Billing.**"));
        let summary = section(&md, "## Summary for the change board");
        let wants = [
            "| **2** | will be converted |",
            "### What needs fixing first",
            "> **One-way.**",
        ];
        assert_contains(summary, &wants);
        assert!(md.find("## Summary").unwrap() < md.find("## Run").unwrap());
        assert!(md.contains("11111111-2222-3333-4444-555555555555"));
        assert!(!md.contains("<script>"));
        assert!(md.contains(
            "| Custom message | 35 characters: Welcome \\| to \\<b\\>B2B\\</b\\> / second line |"
        ));
    }

    #[test]
    fn each_blocked_or_failed_user_listed_once_with_reason() {
        for data in [dry_run(), live_run()] {
            let md = render(ReportFormat::Md, &data);
            let section = section(&md, "## Users who need action");
            let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| ")).collect();
            let attention: Vec<_> = data
                .items
                .iter()
                .filter(|i| i.state.needs_attention())
                .collect();
            assert_eq!(rows.len(), attention.len() + 2, "{section}");
            for i in attention {
                let prefix = format!("| {} | ", i.id);
                let mine: Vec<_> = rows.iter().filter(|r| r.starts_with(&prefix)).collect();
                assert_eq!(mine.len(), 1, "item {} in {section}", i.id);
                assert!(mine[0].contains(&cell(&item_reason(i))));
                assert_eq!(mine[0].matches(" | ").count(), 9, "cell split: {}", mine[0]);
                if let Some(req) = &i.request_id {
                    assert!(mine[0].contains(req.as_str()));
                }
                let everywhere = md.lines().filter(|l| l.starts_with(&prefix)).count();
                assert_eq!(everywhere, 1, "item {} listed twice", i.id);
            }
        }
    }

    #[test]
    fn live_run_shows_throughput_not_estimate() {
        let md = render(ReportFormat::Md, &live_run());
        assert!(!md.contains("Estimated duration of the live run"));
        let t = section(&md, "## Throughput");
        let rows = [
            "| Throughput | 0.03 users/s converted |",
            "| Requests per converted user | 7.00 requests |",
            "| Retries | 7 |",
            "| Throttled requests (429) | 5 |",
            "re-reading after an unknown outcome) | 1 |",
            "| Duration | 1 min 40 s |",
        ];
        assert_contains(t, &rows);
        assert!(md.contains("| TooManyRequests |"));
    }

    #[test]
    fn tracked_run_shows_redemption_counts_history_and_who_has_not_redeemed() {
        let data = super::super::fixtures::tracked_live_run();
        let md = render(ReportFormat::Md, &data);
        let summary = section(&md, "## Summary for the change board");
        assert!(summary.contains(
            "As of 2025-03-04T09:00:05Z: 2,345 accepted, 1,150 pending acceptance, 7 not applied, 50 not tracked."
        ), "{summary}");
        let r = section(&md, "## Redemption");
        for row in [
            "| Accepted | 2,345 |",
            "| Pending acceptance | 1,150 |",
            "| Not applied | 7 |",
            "| Untracked | 50 |",
            "| 2025-03-02 | 1,945 | 2,345 |",
            "| 2025-03-04T09:00:05Z | 2,345 | 1,150 | 1 | 0 |",
            "### Not redeemed yet (1,200)",
            "The 2 oldest invitations are listed; all 1,200 are in the CSV and JSON reports",
            "| 3 | user3@contoso.com | user3@partner.example | 2025-03-01T10:00:30Z | not tracked yet | never |",
        ] {
            assert!(r.contains(row), "missing {row:?} in {r}");
        }
        let pending = r.lines().find(|l| l.starts_with("| 2 | ")).unwrap();
        assert!(pending.contains("\\<script\\>"), "escaped: {pending}");
        assert!(pending.contains("pending acceptance | 2025-03-03T08:00:00Z |"));
        assert!(!md.to_lowercase().contains("redeem?"));
    }

    #[test]
    fn untracked_live_run_says_how_to_track_and_dry_run_has_no_redemption() {
        let md = render(ReportFormat::Md, &live_run());
        let r = section(&md, "## Redemption");
        assert!(r.contains("Not tracked yet. `b2b-convert track 1`"), "{r}");
        assert!(!render(ReportFormat::Md, &dry_run()).contains("## Redemption"));
    }

    #[test]
    fn follow_up_counts_and_billing_note() {
        let md = render(
            ReportFormat::Md,
            &super::super::fixtures::tracked_live_run(),
        );
        let summary = section(&md, "## Summary for the change board");
        let wants = [
            "mail set for 2 of 2 users that needed it (--set-mail)",
            "userType switched to Guest for 3 of 3 users that needed it",
        ];
        assert_contains(summary, &wants);
        let f = section(&md, "## Follow-up steps");
        let wants = [
            "| mail set to the input address (before the invitation) | 2 | 2 |",
            "| userType switched to Guest (after the invitation) | 3 | 3 |",
            "**Billing.** The 3 users switched to Guest move from member billing to Microsoft Entra External ID monthly active user (MAU) pricing",
            "`mail_set_at`, `guest_set_at`",
        ];
        assert_contains(f, &wants);
        // Without the options there is no section and the billing consideration says how.
        let plain = render(ReportFormat::Md, &live_run());
        assert!(!plain.contains("## Follow-up steps"));
        assert!(plain.contains("set userType to Guest (--set-guest)"));
    }

    #[test]
    fn dry_run_estimate_counts_the_follow_up_writes() {
        let mut data = dry_run();
        data.run.options.set_mail = true;
        data.run.options.set_guest = true;
        data.follow_ups.mail_planned = 1;
        data.follow_ups.guest_planned = 2;
        let md = render(ReportFormat::Md, &data);
        let est = section(&md, "## Estimated duration of the live run");
        assert!(
            est.contains(
                "| Graph writes | 5 (2 invitations + 1 mail PATCHes + 2 userType PATCHes;"
            ),
            "{est}"
        );
        let f = section(&md, "## Follow-up steps");
        assert!(
            f.contains("the estimate counts 5 writes for 2 users"),
            "{f}"
        );
        assert!(f.contains("**Billing.** The 2 users whose userType will be set to Guest"));
        let summary = section(&md, "## Summary for the change board");
        assert!(
            summary.contains("3 extra Graph writes, counted in the estimate"),
            "{summary}"
        );
    }
}
