//! Hand-built runs for the report tests: a dry run with an item in every state and every reason
//! code (and hostile values), and a live run with failures carrying Graph error codes.

use super::ReportData;
use crate::item::{
    ItemRecord, ItemState, Reason, RunCounts, RunMode, RunOptions, RunRecord, SourceSpec, UserKey,
};
use crate::model::User;

pub const XSS_NAME: &str = "<script>alert(1)</script>";

/// Asserts that `text` contains each of `wants`.
pub fn assert_contains(text: &str, wants: &[&str]) {
    for want in wants {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
}
pub const INJECTION: &str = "=HYPERLINK(\"http://x\")";

pub fn item(id: i64, state: ItemState) -> ItemRecord {
    let upn = format!("user{id}@contoso.com");
    ItemRecord {
        id,
        run_id: 1,
        state,
        line: Some(id as u64 + 1),
        key: Some(UserKey::UserPrincipalName(upn.clone())),
        user_id: Some(format!("00000000-0000-0000-0000-{id:012}")),
        user_principal_name: Some(upn),
        display_name: Some(format!("User {id}")),
        user_type: Some("Guest".into()),
        external_email: Some(format!("user{id}@partner.example")),
        snapshot: Some(User {
            id: format!("00000000-0000-0000-0000-{id:012}"),
            display_name: Some(format!("User {id}")),
            mail: Some(format!("user{id}@partner.example")),
            ..User::default()
        }),
        updated_at: "2025-03-01T10:05:00Z".into(),
        ..ItemRecord::default()
    }
}

pub fn counts_of(items: &[ItemRecord]) -> RunCounts {
    let mut c = RunCounts {
        total: items.len() as u64,
        ..RunCounts::default()
    };
    for s in ItemState::ALL {
        c.states.insert(s.as_str().into(), 0);
    }
    for i in items {
        *c.states.entry(i.state.as_str().into()).or_default() += 1;
        if let Some(r) = i.reason {
            *c.reasons.entry(r.as_str().into()).or_default() += 1;
        }
        c.reconciled += u64::from(i.reconciled);
    }
    c
}

fn run(mode: RunMode) -> RunRecord {
    RunRecord {
        id: 1,
        source: SourceSpec::Csv {
            path: "users.csv".into(),
        },
        mode,
        options: RunOptions {
            message_body: Some("Welcome | to <b>B2B</b>\nsecond line".into()),
            cc: Some("it@contoso.com".into()),
            // Pinned: the estimates below are worked out at 20/s, whatever the default pace.
            rate: 20.0,
            ..RunOptions::default()
        },
        tenant_id: Some("11111111-2222-3333-4444-555555555555".into()),
        graph_url: "https://graph.microsoft.com".into(),
        started_at: "2025-03-01T10:00:00Z".into(),
        finished_at: Some("2025-03-01T11:23:04Z".into()),
        status: "finished".into(),
        ingest_complete: true,
        tenant: None,
        plan_run_id: None,
    }
}

/// Display names and UPNs an attacker (or a careless spreadsheet) could put in a tenant or a
/// CSV: markup, link and image syntax, table pipes, backticks, line breaks, formula prefixes.
pub const HOSTILE_NAMES: [&str; 10] = [
    "<script>alert(1)</script>",
    "x](javascript:alert(1))",
    "![img](javascript:alert(2))",
    "a | b | c",
    "`code` ```fence```",
    "line one\nline two\r\nline three",
    "=HYPERLINK(\"http://x\")",
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A2)",
];

/// A dry run whose users carry [`HOSTILE_NAMES`] as display name and UPN, each blocked so the
/// people-facing reports list it.
pub fn hostile_run() -> ReportData {
    let mut data = dry_run();
    data.items = HOSTILE_NAMES
        .iter()
        .enumerate()
        .map(|(n, name)| {
            let mut it = item(n as i64 + 1, ItemState::Blocked);
            it.reason = Some(Reason::MailMissing);
            it.display_name = Some((*name).into());
            it.user_principal_name = Some(format!("{name}@contoso.com"));
            it.detail = Some(format!("detail: {name}"));
            it
        })
        .collect();
    data.counts = counts_of(&data.items);
    data
}

/// A dry run: every state, every reason, a script-tag display name, a CSV-injection value.
pub fn dry_run() -> ReportData {
    let mut items = Vec::new();
    let mut xss = item(1, ItemState::WouldConvert);
    xss.display_name = Some(XSS_NAME.into());
    items.push(xss);
    let mut inj = item(2, ItemState::WouldConvert);
    inj.display_name = Some(INJECTION.into());
    items.push(inj);
    items.push(item(3, ItemState::Pending));
    items.push(item(4, ItemState::InFlight));
    items.push(item(5, ItemState::Converted));
    let mut id = 6;
    for r in Reason::ALL {
        let mut it = item(id, r.state());
        it.reason = Some(r);
        it.detail = Some(format!("detail of {r} | with pipe\nand newline"));
        if r == Reason::BadInput {
            it.key = None;
            it.user_id = None;
            it.user_principal_name = None;
            it.display_name = Some(XSS_NAME.into());
            it.detail = Some("line 13: invalid email `a@@b` <x>".into());
        }
        items.push(it);
        id += 1;
    }
    items.push(failed(
        id,
        "Request_BadRequest",
        INVALID_INPUT,
        "req-dry-failed",
    ));
    let counts = counts_of(&items);
    ReportData {
        run: run(RunMode::DryRun),
        counts,
        items,
        overridden: 0,
        active_seconds: None,
        pace: Vec::new(),
        follow_ups: Default::default(),
        redemption: None,
        retired: None,
        left_to_do: super::LeftToDo {
            users: 2,
            synced: 1,
            member: 1,
            guest: 1,
        },
        plan: None,
        option_history: Vec::new(),
        backout: Default::default(),
        generated_at: "2025-03-01T11:30:00Z".into(),
        tool_version: "0.1.0".into(),
    }
}

/// Graph's message for a refused invitation.
const INVALID_INPUT: &str = "User invitation failed. Invalid request input.";

/// Item `id`, failed with Graph's `code` and `message`, answered as request `request_id`.
fn failed(id: i64, code: &str, message: &str, request_id: &str) -> ItemRecord {
    let mut it = item(id, ItemState::Failed);
    it.error_code = Some(code.into());
    it.error_message = Some(message.into());
    it.request_id = Some(request_id.into());
    it
}

/// A live run: converted (one reconciled), failed with codes and request ids, one blocked.
pub fn live_run() -> ReportData {
    let mut items = Vec::new();
    for id in 1..=3 {
        let mut it = item(id, ItemState::Converted);
        it.attempts = 1;
        it.invitation_id = Some(format!("inv-{id}"));
        it.invitation_status = Some("PendingAcceptance".into());
        it.request_id = Some(format!("req-ok-{id}"));
        it.reconciled = id == 3;
        items.push(it);
    }
    let mut f1 = failed(
        4,
        "TooManyRequests",
        "Too many requests; retry after 2 s",
        "req-fail-4",
    );
    f1.attempts = 6;
    f1.client_request_id = Some("creq-4".into());
    items.push(f1);
    let mut f2 = failed(5, "BadRequest", INVALID_INPUT, "req-fail-5");
    f2.attempts = 1;
    items.push(f2);
    let mut b = item(6, ItemState::Blocked);
    b.reason = Some(Reason::MailMismatch);
    b.detail = Some("mail is user6@contoso.com".into());
    items.push(b);
    let mut s = item(7, ItemState::Skipped);
    s.reason = Some(Reason::AlreadyB2b);
    items.push(s);
    let mut counts = counts_of(&items);
    counts.graph_requests = 21;
    counts.throttled_requests = 5;
    counts.retries = 7;
    let mut run = run(RunMode::Live);
    run.options.silent = true;
    run.options.message_body = None;
    run.finished_at = Some("2025-03-01T10:01:40Z".into());
    ReportData {
        run,
        counts,
        items,
        overridden: 0,
        active_seconds: None,
        pace: vec![
            super::PaceMinute {
                minute: "2025-03-01T10:00:00Z".into(),
                converted: 2,
                throttled: 3,
            },
            super::PaceMinute {
                minute: "2025-03-01T10:01:00Z".into(),
                converted: 1,
                throttled: 2,
            },
        ],
        follow_ups: Default::default(),
        redemption: Some(Default::default()),
        retired: None,
        left_to_do: super::LeftToDo {
            users: 3,
            synced: 1,
            member: 2,
            guest: 1,
        },
        plan: None,
        option_history: Vec::new(),
        backout: Default::default(),
        generated_at: "2025-03-01T10:02:00Z".into(),
        tool_version: "0.1.0".into(),
    }
}

/// The live run after `--set-mail --set-guest` and two `track` passes: one user redeemed, one
/// pending (resent once, hostile UPN), one never tracked; 1,200 not redeemed in all, so the
/// people formats list only some of them.
pub fn tracked_live_run() -> ReportData {
    use crate::queue::pass::PassUser;
    use crate::queue::track::{
        NotRedeemed, RedemptionCounts, RedemptionDay, TrackCounts, TrackPass,
    };
    let mut data = live_run();
    data.run.options.set_mail = true;
    data.run.options.set_guest = true;
    data.follow_ups = super::FollowUpCounts {
        mail_planned: 2,
        mail_set: 2,
        guest_planned: 3,
        guest_set: 3,
    };
    let pass = |id: i64, day: &str, accepted, pending| TrackPass {
        id,
        started_at: format!("{day}T09:00:00Z"),
        finished_at: Some(format!("{day}T09:00:05Z")),
        counts: TrackCounts {
            accepted,
            pending,
            not_applied: 1,
            missing: 0,
        },
    };
    let waiting =
        |item_id: i64, upn: &str, state: Option<&str>, resent: Option<&str>| NotRedeemed {
            user: PassUser {
                item_id,
                user_id: Some(format!("00000000-0000-0000-0000-{item_id:012}")),
                user_principal_name: Some(upn.into()),
                external_email: Some(format!("user{item_id}@partner.example")),
            },
            invited_at: Some("2025-03-01T10:00:30Z".into()),
            external_user_state: state.map(String::from),
            external_user_state_changed_at: None,
            last_resent_at: resent.map(String::from),
        };
    data.redemption = Some(super::Redemption {
        counts: RedemptionCounts {
            pending_acceptance: 1_150,
            accepted: 2_345,
            not_applied: 7,
            untracked: 50,
            last_tracked_at: Some("2025-03-04T09:00:05Z".into()),
        },
        tracks: vec![
            pass(1, "2025-03-02", 1_000, 2_495),
            pass(2, "2025-03-04", 2_345, 1_150),
        ],
        timeline: vec![
            RedemptionDay {
                day: "2025-03-01".into(),
                accepted: 400,
                cumulative: 400,
            },
            RedemptionDay {
                day: "2025-03-02".into(),
                accepted: 1_945,
                cumulative: 2_345,
            },
        ],
        not_redeemed: vec![
            waiting(
                2,
                XSS_NAME,
                Some("PendingAcceptance"),
                Some("2025-03-03T08:00:00Z"),
            ),
            waiting(3, "user3@contoso.com", None, None),
        ],
    });
    data
}
