//! Reports for a change board and a service desk, rendered from data alone.
//!
//! The caller reads a run's aggregates and the users who need action from the queue into
//! [`ReportData`]; [`write`] lays them out as Markdown, one self-contained HTML file, CSV or JSON.
//! The full per-user list (CSV, JSON) is streamed from an [`ItemSource`] row by row, so memory
//! stays flat at a million items. This module owns the facts every format states (the board's
//! summary, run identity, options, counts, blocked and failed users, the dry-run estimate, live
//! throughput and pace, the things to consider); the format modules only lay them out and
//! escape them. The only I/O is writing to the caller's writer.

mod csv;
mod html;
mod json;
mod markdown;
mod ticks;

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use chrono::DateTime;
use serde::Serialize;

use crate::config::ReportFormat;
pub use crate::item::{FollowUpCounts, ItemExtras, PaceMinute};
use crate::item::{ItemRecord, ItemState, Reason, RunCounts, RunMode, RunRecord};
pub use crate::queue::report_facts::LeftToDo;
use crate::queue::track::{NotRedeemed, RedemptionCounts, RedemptionDay, TrackPass};
use crate::queue::OptionChange;

pub use self::csv::CSV_COLUMNS;

/// Graph's sustained write ceiling per app+tenant: the write bucket of 3,000 per 150 s.
pub const GRAPH_WRITE_CEILING_PER_S: f64 = 20.0;
/// Size of the write bucket, available at once when a run starts.
pub const GRAPH_WRITE_BURST: u64 = 3_000;
/// `/invitations` allows 150 per 5 s per tenant: it caps the initial burst at 30/s.
pub const GRAPH_INVITATIONS_PER_S: f64 = 30.0;
/// Size of the `/invitations` bucket.
pub const GRAPH_INVITATIONS_BURST: u64 = 150;

/// `schema` of the JSON report (docs/report-json.md).
pub const JSON_SCHEMA: &str = "b2b-convert.report";
/// `version` of the JSON report; additive changes keep it.
pub const JSON_VERSION: u32 = 1;

/// How much of a custom invitation message the human formats show.
pub const MESSAGE_PREVIEW_CHARS: usize = 200;

/// Most users not yet redeemed the people formats list (oldest invitation first). At 100,000
/// converted users the whole list would drown the report; everyone is in the CSV and JSON
/// reports (`external_user_state`), and the report says how many more there are.
pub const NOT_REDEEMED_LISTED: usize = 500;

/// Everything a report states apart from the full per-user list; the caller reads it from the
/// queue by aggregate queries.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportData {
    pub run: RunRecord,
    pub counts: RunCounts,
    /// The users the people formats list: every blocked or failed item, ordered by id. Items in
    /// other states passed here are ignored by those formats.
    pub items: Vec<ItemRecord>,
    /// Items carrying per-row overrides.
    pub overridden: u64,
    /// Seconds the run was being worked (the sum of its work spans); `None` when no span was
    /// recorded (a run from an older version): then start to finish counts.
    pub active_seconds: Option<f64>,
    /// Live runs: conversions and 429s per minute of activity, oldest first.
    pub pace: Vec<PaceMinute>,
    /// The follow-up steps (`--set-mail`, `--set-guest`): planned and done.
    pub follow_ups: FollowUpCounts,
    /// Live runs: what `track` found; `None` for a dry run.
    pub redemption: Option<Redemption>,
    /// Live runs: who still holds a working internal password (`retire`, `track`).
    pub retired: Option<crate::queue::RetiredCounts>,
    /// The users converted (live) or that would convert (dry run), by what the conversion
    /// leaves as it was: synced passwords, userType.
    pub left_to_do: LeftToDo,
    /// `apply` runs: the dry run this live run executes.
    pub plan: Option<PlanRef>,
    /// `resume` with other send options: the run's option history, oldest first (empty when
    /// the options never changed).
    pub option_history: Vec<OptionChange>,
    /// Live runs: what `restore` and `rollback` did (empty for a dry run).
    pub backout: BackoutDone,
    /// RFC 3339.
    pub generated_at: String,
    pub tool_version: String,
}

/// What the back-out commands did for a live run: the users restored and rolled back, at most
/// [`NOT_REDEEMED_LISTED`] of each listed (everyone is in the database), with the totals.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackoutDone {
    pub restored: Vec<BackoutUser>,
    pub restored_total: u64,
    pub rolled_back: Vec<BackoutUser>,
    pub rolled_back_total: u64,
}

/// One user a back-out finished with, and what was done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackoutUser {
    pub user: String,
    pub what: String,
}

/// The approved dry run an `apply` run executes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanRef {
    pub run_id: i64,
    pub finished_at: Option<String>,
}

impl ReportData {
    /// "This live run applies dry run 4 (finished …)", for the people formats.
    pub fn plan_sentence(&self) -> Option<String> {
        self.plan.as_ref().map(|p| {
            format!(
                "This live run applies dry run {} (finished {}): only its would-convert users, \
                 with its options. Users who changed since the plan were not converted: {}.",
                p.run_id,
                p.finished_at.as_deref().unwrap_or("unknown"),
                thousands(
                    self.counts
                        .reasons
                        .get(Reason::ChangedSincePlan.as_str())
                        .copied()
                        .unwrap_or(0)
                )
            )
        })
    }

    /// The "Back-out" paragraph of every people-facing report, with this run's numbers: what
    /// `restore` covers, how many users would need `rollback` once redeemed, and what nothing
    /// undoes. Computed once here; the renderers only place it.
    pub fn backout_sentence(&self) -> String {
        let f = &self.follow_ups;
        let live = self.run.mode == RunMode::Live;
        let (mail, guest, invited) = if live {
            (
                f.mail_set,
                f.guest_set,
                self.counts.state(crate::item::ItemState::Converted),
            )
        } else {
            (
                f.mail_planned,
                f.guest_planned,
                self.counts.state(crate::item::ItemState::WouldConvert),
            )
        };
        let restore = if mail + guest == 0 {
            "`restore` has nothing to put back: this run makes no follow-up writes".to_string()
        } else {
            format!(
                "`restore` puts back from the snapshot what the tool itself {}: mail for {} users \
                 (--set-mail) and userType for {} users (--set-guest)",
                if live { "wrote" } else { "writes" },
                thousands(mail),
                thousands(guest)
            )
        };
        let emails = if self.run.options.silent {
            "the partners' redemption e-mails (no invitation e-mail is sent: --silent)".to_string()
        } else {
            format!(
                "the invitation e-mail {} to {} users, or the partners' redemption e-mails",
                if live { "already sent" } else { "sent" },
                thousands(invited)
            )
        };
        let mut text = format!(
            "{restore}. The invitation itself is undone only by `rollback` (Microsoft Graph beta, \
             not supported by Microsoft in production): {} users would need it once they have \
             redeemed (cloud users get a new password; a user rolled back cannot be invited \
             again). Nothing undoes {emails}.",
            thousands(invited)
        );
        if live {
            text.push_str(&format!(
                " So far {} users restored, {} rolled back.",
                thousands(self.backout.restored_total),
                thousands(self.backout.rolled_back_total)
            ));
        }
        text
    }

    /// The users an `apply` found changed since the plan (among the listed items).
    pub fn drifted(&self) -> Vec<&ItemRecord> {
        self.items
            .iter()
            .filter(|i| i.reason == Some(Reason::ChangedSincePlan))
            .collect()
    }

    /// The option history in words, one line per stretch of sent items ("items 1–50 silent (no
    /// invitation email) …, 51–… with Microsoft's invitation email").
    pub fn option_history_lines(&self) -> Vec<String> {
        let h = &self.option_history;
        h.iter()
            .enumerate()
            .map(|(i, c)| {
                let from = c.sent_before + 1;
                let span = match h.get(i + 1) {
                    Some(next) if next.sent_before < from => "no items".to_string(),
                    Some(next) if next.sent_before == from => format!("item {from}"),
                    Some(next) => {
                        format!("items {}–{}", thousands(from), thousands(next.sent_before))
                    }
                    None => format!("items {}–…", thousands(from)),
                };
                let email = if c.options.silent {
                    "silent (no invitation email)"
                } else {
                    "with Microsoft's invitation email"
                };
                // A stretch worked by an invocation scoped to named or counted users.
                let pilot = match (c.options.only, c.options.limit) {
                    (Some(n), _) => format!("; pilot: {} named users (--only)", thousands(n)),
                    (None, Some(n)) => format!("; pilot: at most {} users (--limit)", thousands(n)),
                    (None, None) => String::new(),
                };
                if i == 0 {
                    format!("{span}: {email} (as the run started, {}{pilot})", c.at)
                } else {
                    format!(
                        "{span}: {email} (changed at {}: {}{pilot})",
                        c.at, c.changes
                    )
                }
            })
            .collect()
    }
}

/// What `track` found about a live run's converted users.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Redemption {
    /// Counts as of the last `track` (`lastTrackedAt` is `None` before the first).
    pub counts: RedemptionCounts,
    /// Every completed `track`, oldest first.
    pub tracks: Vec<TrackPass>,
    /// Redemptions per day, from Graph's change times.
    pub timeline: Vec<RedemptionDay>,
    /// Users not yet redeemed, oldest invitation first, at most [`NOT_REDEEMED_LISTED`].
    pub not_redeemed: Vec<NotRedeemed>,
}

impl Redemption {
    /// Converted users who have not redeemed (pending, or never tracked).
    pub fn not_redeemed_total(&self) -> u64 {
        self.counts.pending_acceptance + self.counts.untracked
    }

    pub fn tracked(&self) -> bool {
        self.counts.last_tracked_at.is_some()
    }
}

/// Where the full per-user list of the CSV and JSON reports comes from: the queue streams it
/// row by row; tests pass a slice.
pub trait ItemSource {
    /// Calls `f` with every item of the run, ordered by id; stops at the first error.
    fn each(&self, f: &mut dyn FnMut(&ItemRecord, &ItemExtras) -> io::Result<()>)
        -> io::Result<()>;
}

impl ItemSource for Vec<ItemRecord> {
    fn each(
        &self,
        f: &mut dyn FnMut(&ItemRecord, &ItemExtras) -> io::Result<()>,
    ) -> io::Result<()> {
        let none = ItemExtras::default();
        self.iter().try_for_each(|i| f(i, &none))
    }
}

/// The format a report path asks for, from its extension (case-insensitive).
pub fn format_from_path(path: &Path) -> Option<ReportFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "md" | "markdown" => Some(ReportFormat::Md),
        "html" | "htm" => Some(ReportFormat::Html),
        "csv" => Some(ReportFormat::Csv),
        "json" => Some(ReportFormat::Json),
        _ => None,
    }
}

/// Writes a report to `out`. CSV and JSON take every item from `items`, one at a time; Markdown
/// and HTML use only `data` (aggregates and the users who need action).
pub fn write(
    format: ReportFormat,
    data: &ReportData,
    items: &dyn ItemSource,
    out: &mut dyn Write,
) -> io::Result<()> {
    let summary = Summary::new(data);
    match format {
        ReportFormat::Md => out.write_all(markdown::render(&summary).as_bytes()),
        ReportFormat::Html => out.write_all(html::render(&summary).as_bytes()),
        ReportFormat::Csv => csv::write(items, out),
        ReportFormat::Json => json::write(&summary, items, out),
    }
}

/// Renders a report to a string, taking the full list from `data.items` (tests).
#[cfg(test)]
pub(crate) fn render(format: ReportFormat, data: &ReportData) -> String {
    let mut out = Vec::new();
    write(format, data, &data.items, &mut out).expect("writing to memory");
    String::from_utf8(out).expect("reports are UTF-8")
}

/// The plain words people read for a state; CSV and JSON keep the codes.
pub fn state_label(state: ItemState, mode: RunMode) -> &'static str {
    match (state, mode) {
        (ItemState::Pending, RunMode::DryRun) => "not checked yet",
        (ItemState::Pending, RunMode::Live) => "not started yet",
        (ItemState::InFlight, _) => "in progress",
        (ItemState::Converted, _) => "converted",
        (ItemState::WouldConvert, _) => "will be converted",
        (ItemState::Skipped, _) => "skipped (nothing to do)",
        (ItemState::Blocked, _) => "needs fixing",
        (ItemState::Failed, _) => "failed",
    }
}

/// The run status in plain words.
pub fn status_label(status: &str) -> &str {
    match status {
        "running" => "running (or stopped without a checkpoint; `resume` continues it)",
        "finished" => "finished",
        "interrupted" => "interrupted (resumable)",
        "stopped" => "stopped by the tenant (resumable once fixed)",
        other => other,
    }
}

/// Time to send `users_to_convert` invitations at a steady `rate_per_s`: `users / rate`.
///
/// A rate that is not a positive number never finishes: `Duration::MAX`.
pub fn estimate_live_duration(users_to_convert: u64, rate_per_s: f64) -> Duration {
    if users_to_convert == 0 {
        return Duration::ZERO;
    }
    if !(rate_per_s.is_finite() && rate_per_s > 0.0) {
        return Duration::MAX;
    }
    Duration::try_from_secs_f64(users_to_convert as f64 / rate_per_s).unwrap_or(Duration::MAX)
}

/// Shortest time Graph lets `invitations` invitations and `writes` writes in all (the
/// invitations plus the follow-up PATCHes) through one app+tenant.
///
/// Each conversion costs one write and one `/invitations` call; each `mail` or `userType`
/// PATCH one more write on the same bucket. Both buckets start full, so the last request can
/// go at `max(0, (writes − 3,000) / 20, (invitations − 150) / 30)` seconds: without follow-up
/// steps the `/invitations` bucket (150 per 5 s) binds below 8,700 users, the write bucket
/// (3,000 per 150 s, 20/s sustained) above. 100,000 users take at least ~81 minutes, ~2 h 44
/// min with one follow-up step each and ~4 h 8 min with both. Reads cost resource units, not writes, and are left out.
pub fn estimate_at_graph_ceiling(invitations: u64, writes: u64) -> Duration {
    let writes = (writes as f64 - GRAPH_WRITE_BURST as f64) / GRAPH_WRITE_CEILING_PER_S;
    let invitations =
        (invitations as f64 - GRAPH_INVITATIONS_BURST as f64) / GRAPH_INVITATIONS_PER_S;
    Duration::try_from_secs_f64(writes.max(invitations).max(0.0)).unwrap_or(Duration::MAX)
}

/// Which limit bounds the estimated live run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundBy {
    ConfiguredRate,
    GraphCeiling,
}

/// Dry run only: how long the live run will take.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Estimate {
    /// Items in state `would_convert`.
    pub would_convert: u64,
    /// `--limit`, when set.
    pub limit: Option<u64>,
    /// `min(would_convert, limit)`.
    pub users_to_convert: u64,
    /// Follow-up PATCHes the live run will send: users whose `mail` will be set.
    pub mail_writes: u64,
    /// Users whose `userType` will be set to Guest.
    pub guest_writes: u64,
    /// Writes on Graph's shared write bucket: one invitation per user plus the follow-ups.
    pub writes: u64,
    pub configured_rate_per_second: f64,
    /// `None` when the configured rate is not a positive number.
    pub at_configured_rate_seconds: Option<f64>,
    pub graph_ceiling_per_second: f64,
    pub at_graph_ceiling_seconds: f64,
    /// The slower of the two.
    pub estimated_seconds: Option<f64>,
    pub bound_by: BoundBy,
}

impl Estimate {
    fn new(run: &RunRecord, counts: &RunCounts, follow_ups: &FollowUpCounts) -> Estimate {
        let would_convert = counts.state(ItemState::WouldConvert);
        let limit = run.options.limit;
        let users = limit.map_or(would_convert, |l| l.min(would_convert));
        // A --limit below the would-convert count: at most `users` of them need a step.
        let mail_writes = follow_ups.mail_planned.min(users);
        let guest_writes = follow_ups.guest_planned.min(users);
        let writes = users + mail_writes + guest_writes;
        let rate = run.options.rate;
        // The limiter paces every write (invitations and PATCHes) at the configured rate.
        let at_rate = estimate_live_duration(writes, rate);
        let at_ceiling = estimate_at_graph_ceiling(users, writes);
        let at_rate_s = (at_rate != Duration::MAX).then_some(at_rate.as_secs_f64());
        let bound_by = if at_rate >= at_ceiling {
            BoundBy::ConfiguredRate
        } else {
            BoundBy::GraphCeiling
        };
        let estimated = match bound_by {
            BoundBy::ConfiguredRate => at_rate_s,
            BoundBy::GraphCeiling => Some(at_ceiling.as_secs_f64()),
        };
        Estimate {
            would_convert,
            limit,
            users_to_convert: users,
            mail_writes,
            guest_writes,
            writes,
            configured_rate_per_second: rate,
            at_configured_rate_seconds: at_rate_s,
            graph_ceiling_per_second: GRAPH_WRITE_CEILING_PER_S,
            at_graph_ceiling_seconds: at_ceiling.as_secs_f64(),
            estimated_seconds: estimated,
            bound_by,
        }
    }
}

/// Live run only: what the run achieved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Throughput {
    pub converted: u64,
    /// Time the run was being worked (the sum of its work spans, pauses between an
    /// interruption and its resume left out); start to finish for a run recorded before work
    /// spans existed. `None` if the times do not parse.
    pub duration_seconds: Option<f64>,
    pub converted_per_second: Option<f64>,
    pub graph_requests: u64,
    pub requests_per_converted: Option<f64>,
    pub retries: u64,
    pub throttled_requests: u64,
    /// Converted by re-reading the user after an unknown outcome.
    pub reconciled: u64,
}

/// One reason code present in the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReasonCount {
    pub code: String,
    pub count: u64,
    /// `blocked` or `skipped`; `None` for a code this version does not know.
    pub state: Option<ItemState>,
    pub explanation: Option<&'static str>,
    pub fix_hint: Option<&'static str>,
}

/// The facts every format states, computed once.
pub(crate) struct Summary<'a> {
    pub data: &'a ReportData,
    /// Start to finish (to the report while unfinished), pauses included.
    pub elapsed: Option<Duration>,
    /// Time worked: the sum of work spans when recorded, else `elapsed`.
    pub duration: Option<Duration>,
    pub estimate: Option<Estimate>,
    pub throughput: Option<Throughput>,
    pub reasons: Vec<ReasonCount>,
    /// Blocked and failed items, each once, by id.
    pub attention: Vec<&'a ItemRecord>,
}

/// The follow-up table's row of `--set-mail`: the step, and what it means.
const MAIL_STEP: (&str, &str) = (
    "mail set to the input address (before the invitation)",
    "The invitation goes to the user's mail; Microsoft requires it to be the external address. The old value is kept in the item's snapshot.",
);

/// The follow-up table's row of `--set-guest`: the step, and what it means.
const GUEST_STEP: (&str, &str) = (
    "userType switched to Guest (after the invitation)",
    "Moves the user to External ID monthly active user (MAU) billing (see Billing below).",
);

impl<'a> Summary<'a> {
    pub fn new(data: &'a ReportData) -> Summary<'a> {
        let run = &data.run;
        let elapsed = run_duration(run, &data.generated_at);
        let duration = match data.active_seconds {
            Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
            _ => elapsed,
        };
        let estimate = (run.mode == RunMode::DryRun)
            .then(|| Estimate::new(run, &data.counts, &data.follow_ups));
        let throughput = (run.mode == RunMode::Live).then(|| {
            let c = &data.counts;
            let converted = c.state(ItemState::Converted);
            let secs = duration.map(|d| d.as_secs_f64());
            Throughput {
                converted,
                duration_seconds: secs,
                converted_per_second: secs.filter(|s| *s > 0.0).map(|s| converted as f64 / s),
                graph_requests: c.graph_requests,
                requests_per_converted: (converted > 0)
                    .then(|| c.graph_requests as f64 / converted as f64),
                retries: c.retries,
                throttled_requests: c.throttled_requests,
                reconciled: c.reconciled,
            }
        });
        let reasons = data
            .counts
            .reasons
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| {
                let reason = code.parse::<Reason>().ok();
                ReasonCount {
                    code: code.clone(),
                    count: *n,
                    state: reason.map(Reason::state),
                    explanation: reason.map(Reason::explanation),
                    fix_hint: reason.map(Reason::fix_hint),
                }
            })
            .collect();
        let mut seen = BTreeSet::new();
        let mut attention: Vec<&ItemRecord> = data
            .items
            .iter()
            .filter(|i| i.state.needs_attention() && seen.insert(i.id))
            .collect();
        attention.sort_by_key(|i| i.id);
        Summary {
            data,
            elapsed,
            duration,
            estimate,
            throughput,
            reasons,
            attention,
        }
    }

    /// The board's figures, biggest decision first: (count, plain label, tone for styling).
    pub fn headline(&self) -> Vec<(u64, &'static str, Tone)> {
        let c = &self.data.counts;
        let mut out = match self.data.run.mode {
            RunMode::DryRun => vec![(
                c.state(ItemState::WouldConvert),
                "will be converted",
                Tone::Good,
            )],
            RunMode::Live => vec![(c.state(ItemState::Converted), "converted", Tone::Good)],
        };
        out.push((c.state(ItemState::Blocked), "need fixing first", Tone::Warn));
        out.push((c.state(ItemState::Failed), "failed", Tone::Bad));
        out.push((
            c.state(ItemState::Skipped),
            "skipped (nothing to do)",
            Tone::Plain,
        ));
        let open = c.state(ItemState::Pending) + c.state(ItemState::InFlight);
        if open > 0 {
            out.push((open, "not finished yet", Tone::Plain));
        }
        out
    }

    /// One paragraph a board reads first: what happens to how many users, what blocks whom,
    /// how long it takes.
    pub fn verdict(&self) -> String {
        let c = &self.data.counts;
        let blocked = c.state(ItemState::Blocked);
        let failed = c.state(ItemState::Failed);
        let mut text = match (self.data.run.mode, self.estimate) {
            (RunMode::DryRun, Some(e)) => {
                let when = e.estimated_seconds.map_or_else(
                    || "never finishes: the configured rate is not a positive number".into(),
                    |s| format!("takes about {}", human_duration(Duration::from_secs_f64(s))),
                );
                format!(
                    "This dry run sent nothing. A live run would convert {} of {} users and {when}.",
                    thousands(e.users_to_convert),
                    thousands(c.total)
                )
            }
            _ => {
                let worked = self
                    .duration
                    .map(|d| format!(" in {} of work", human_duration(d)))
                    .unwrap_or_default();
                format!(
                    "{} of {} users were converted{worked}.",
                    thousands(c.state(ItemState::Converted)),
                    thousands(c.total)
                )
            }
        };
        if blocked > 0 {
            text.push_str(&format!(
                " {} need fixing first and are not converted until fixed (see \"What needs fixing first\").",
                thousands(blocked)
            ));
        }
        if failed > 0 {
            text.push_str(&format!(
                " {} failed at Graph; `b2b-convert retry` sends them again once the cause is fixed.",
                thousands(failed)
            ));
        }
        text
    }

    /// What needs fixing, by reason, with the fix: blocked reasons and, when any item failed, one
    /// line for the failures.
    pub fn fixes(&self) -> Vec<(String, u64, String)> {
        let mut out: Vec<(String, u64, String)> = self
            .reasons
            .iter()
            .filter(|r| r.state != Some(ItemState::Skipped))
            .map(|r| {
                (
                    r.explanation
                        .map_or_else(|| r.code.clone(), |e| e.to_string()),
                    r.count,
                    r.fix_hint
                        .unwrap_or("Read the detail in the CSV report.")
                        .to_string(),
                )
            })
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let failed = self.data.counts.state(ItemState::Failed);
        if failed > 0 {
            out.push((
                "Graph refused or did not answer the invitation".to_string(),
                failed,
                "See each user's Graph message and fix below; then `b2b-convert retry RUN_ID`."
                    .to_string(),
            ));
        }
        out
    }

    /// Whether the run asked for follow-up steps or took any.
    pub fn has_follow_ups(&self) -> bool {
        let o = &self.data.run.options;
        let f = &self.data.follow_ups;
        o.set_mail || o.set_guest || f.mail_set > 0 || f.guest_set > 0
    }

    /// One sentence per follow-up step: how many users it touches (dry run) or touched (live).
    pub fn follow_up_sentences(&self) -> Vec<String> {
        let o = &self.data.run.options;
        let f = &self.data.follow_ups;
        let mut out = Vec::new();
        match self.data.run.mode {
            RunMode::DryRun => {
                if o.set_mail {
                    out.push(format!(
                        "mail will be set to the input address for {} users before their invitation (--set-mail)",
                        thousands(f.mail_planned)
                    ));
                }
                if o.set_guest {
                    out.push(format!(
                        "userType will be set to Guest for {} users after their invitation (--set-guest)",
                        thousands(f.guest_planned)
                    ));
                }
                if f.extra_writes() > 0 {
                    out.push(format!(
                        "{} extra Graph writes, counted in the estimate",
                        thousands(f.extra_writes())
                    ));
                }
            }
            RunMode::Live => {
                if o.set_mail || f.mail_set > 0 {
                    out.push(format!(
                        "mail set for {} of {} users that needed it (--set-mail)",
                        thousands(f.mail_set),
                        thousands(f.mail_planned.max(f.mail_set))
                    ));
                }
                if o.set_guest || f.guest_set > 0 {
                    out.push(format!(
                        "userType switched to Guest for {} of {} users that needed it (--set-guest)",
                        thousands(f.guest_set),
                        thousands(f.guest_planned.max(f.guest_set))
                    ));
                }
            }
        }
        out
    }

    /// Follow-up steps as table rows: (step, users planned, users done, what it means).
    pub fn follow_up_rows(&self) -> Vec<(&'static str, u64, Option<u64>, &'static str)> {
        let o = &self.data.run.options;
        let f = &self.data.follow_ups;
        let live = self.data.run.mode == RunMode::Live;
        // (shown, users planned, users set, the step and what it means)
        let steps = [
            (
                o.set_mail || f.mail_set > 0,
                f.mail_planned,
                f.mail_set,
                MAIL_STEP,
            ),
            (
                o.set_guest || f.guest_set > 0,
                f.guest_planned,
                f.guest_set,
                GUEST_STEP,
            ),
        ];
        steps
            .into_iter()
            .filter(|(shown, ..)| *shown)
            .map(|(_, planned, set, (step, meaning))| {
                (step, planned.max(set), live.then_some(set), meaning)
            })
            .collect()
    }

    /// What the userType switch means for billing, when the run asked for it.
    pub fn billing_note(&self) -> Option<String> {
        let f = &self.data.follow_ups;
        if !(self.data.run.options.set_guest || f.guest_set > 0) {
            return None;
        }
        let who = match self.data.run.mode {
            RunMode::DryRun => format!(
                "The {} users whose userType will be set to Guest",
                thousands(f.guest_planned)
            ),
            RunMode::Live => format!("The {} users switched to Guest", thousands(f.guest_set)),
        };
        Some(format!(
            "{who} move from member billing to Microsoft Entra External ID monthly active user \
             (MAU) pricing: they are billed as external users, by the months they sign in, not as \
             licensed members. MAU billing is active only once the tenant is linked to an Azure \
             subscription. Users already Guest were left alone; users not switched stay on member \
             billing."
        ))
    }

    pub fn state_counts(&self) -> Vec<(ItemState, u64)> {
        ItemState::ALL
            .into_iter()
            .map(|s| (s, self.data.counts.state(s)))
            .collect()
    }

    /// Run identity, as label → plain text (the renderer escapes).
    pub fn run_rows(&self) -> Vec<(&'static str, String)> {
        let run = &self.data.run;
        let finished = match &run.finished_at {
            Some(t) => t.clone(),
            None if run.status == "running" => "still running".to_string(),
            None => format!("not finished ({})", run.status),
        };
        let worked = if self.data.active_seconds.is_some() {
            " worked (pauses left out)"
        } else {
            ""
        };
        let duration = match (self.duration, &run.finished_at) {
            (Some(d), Some(_)) => format!("{}{worked}", human_duration(d)),
            (Some(d), None) => format!("{}{worked} so far", human_duration(d)),
            (None, _) => "unknown".to_string(),
        };
        vec![
            ("Run id", run.id.to_string()),
            ("Tenant", self.tenant_name()),
            ("Source", run.source.to_string()),
            ("Mode", mode_label(run.mode).to_string()),
            ("Status", status_label(&run.status).to_string()),
            ("Graph endpoint", run.graph_url.clone()),
            ("Started", run.started_at.clone()),
            ("Finished", finished),
            ("Duration", duration),
            ("Report generated", self.data.generated_at.clone()),
            ("Tool version", self.data.tool_version.clone()),
        ]
    }

    /// The options that change what a run does. The custom message is cut to a preview.
    pub fn option_rows(&self) -> Vec<(&'static str, String)> {
        let o = &self.data.run.options;
        let message = match &o.message_body {
            None => "none".to_string(),
            Some(body) => {
                let n = body.chars().count();
                let preview: String = body.chars().take(MESSAGE_PREVIEW_CHARS).collect();
                if n > MESSAGE_PREVIEW_CHARS {
                    format!("{n} characters, begins: {preview}…")
                } else {
                    format!("{n} characters: {preview}")
                }
            }
        };
        let overridden = self.data.overridden;
        vec![
            (
                "Invitation email",
                if o.silent {
                    "not sent (silent: sendInvitationMessage=false)".to_string()
                } else {
                    "sent (sendInvitationMessage=true)".to_string()
                },
            ),
            ("Redirect URL", o.redirect_url.clone()),
            (
                "Message language",
                o.message_language
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            ("Custom message", message),
            (
                "Cc recipient",
                o.cc.clone().unwrap_or_else(|| "none".into()),
            ),
            ("Rate", format!("{} requests/s", num(o.rate))),
            ("Concurrency", o.concurrency.to_string()),
            ("Max attempts per user", o.max_attempts.to_string()),
            (
                "Limit",
                o.limit
                    .map_or_else(|| "none".to_string(), |l| format!("{l} users")),
            ),
            ("Rows with per-row overrides", overridden.to_string()),
        ]
    }

    pub fn estimate_rows(&self) -> Option<Vec<(&'static str, String)>> {
        let e = self.estimate?;
        let users = match e.limit {
            Some(l) if l < e.would_convert => {
                format!(
                    "{} ({} would convert, --limit {l})",
                    e.users_to_convert, e.would_convert
                )
            }
            _ => e.users_to_convert.to_string(),
        };
        let secs = |s: Option<f64>| {
            s.map_or_else(
                || "never (the rate is not a positive number)".to_string(),
                |s| human_duration(Duration::from_secs_f64(s)),
            )
        };
        let bound = match e.bound_by {
            BoundBy::ConfiguredRate => "the configured rate is the slower, so it bounds the run",
            BoundBy::GraphCeiling => {
                "Graph's ceiling is the slower, so it bounds the run (a higher --rate will not help)"
            }
        };
        let writes = if e.writes > e.users_to_convert {
            format!(
                "{} ({} invitations + {} mail PATCHes + {} userType PATCHes; each PATCH is one more write on Graph's shared write bucket)",
                thousands(e.writes),
                thousands(e.users_to_convert),
                thousands(e.mail_writes),
                thousands(e.guest_writes)
            )
        } else {
            format!(
                "{} (one invitation per user; no follow-up steps)",
                thousands(e.writes)
            )
        };
        Some(vec![
            ("Users that would convert", users),
            ("Graph writes", writes),
            (
                "At the configured rate",
                format!(
                    "{} (at {} requests/s)",
                    secs(e.at_configured_rate_seconds),
                    num(e.configured_rate_per_second)
                ),
            ),
            (
                "At Graph's write ceiling",
                format!(
                    "{} (about 20 writes/s sustained per app+tenant after an initial burst of 3,000 writes; /invitations allows at most 30/s)",
                    if e.at_graph_ceiling_seconds == 0.0 {
                        "0 s, within the initial burst".to_string()
                    } else {
                        secs(Some(e.at_graph_ceiling_seconds))
                    }
                ),
            ),
            (
                "Estimated duration",
                format!("{}: {bound}", secs(e.estimated_seconds)),
            ),
        ])
    }

    /// One sentence for the board's summary on a live run: redemption as of the last `track`.
    pub fn redemption_sentence(&self) -> Option<String> {
        let r = self.data.redemption.as_ref()?;
        let c = &r.counts;
        Some(match &c.last_tracked_at {
            None => format!(
                "Redemption not tracked yet: `b2b-convert track {}` reads whether each converted user has redeemed.",
                self.data.run.id
            ),
            Some(at) => format!(
                "As of {at}: {} accepted, {} pending acceptance, {} not applied, {} not tracked.",
                thousands(c.accepted),
                thousands(c.pending_acceptance),
                thousands(c.not_applied),
                thousands(c.untracked)
            ),
        })
    }

    /// One paragraph for a live run: who still holds a working internal password — the first
    /// thing a security review asks after the weekend. Cloud-only users are retired by
    /// `retire` once they redeemed; synced users by the on-premises script (`scripts`), seen by
    /// `track` as a password change after their redemption.
    pub fn credentials_sentence(&self) -> Option<String> {
        let r = self.data.retired.as_ref()?;
        let run = self.data.run.id;
        let cloud_left = r.awaiting_redemption + r.redeemed_not_retired;
        if cloud_left + r.on_premises.not_yet == 0 {
            return Some(format!(
                "No converted user holds a working internal password: {} cloud-only users were given a random password with their sessions revoked, {} synced users changed their on-premises password after redeeming.",
                thousands(r.passwords),
                thousands(r.on_premises.retired)
            ));
        }
        Some(format!(
            "{} converted users still hold a working internal password: {} cloud-only users who redeemed (`b2b-convert retire {run}` retires them), {} cloud-only users not redeemed yet (retire after they redeem), and {} synced users (`b2b-convert scripts {run} --out DIR`: the on-premises password, run by an AD administrator; `track` then sees it). Retired so far: {} cloud-only passwords ({} sessions revoked), {} synced.",
            thousands(cloud_left + r.on_premises.not_yet),
            thousands(r.redeemed_not_retired),
            thousands(r.awaiting_redemption),
            thousands(r.on_premises.not_yet),
            thousands(r.passwords),
            thousands(r.sessions),
            thousands(r.on_premises.retired)
        ))
    }

    /// The tenant as people name it: "contoso.onmicrosoft.com (a26…)", else its id.
    pub fn tenant_name(&self) -> String {
        let run = &self.data.run;
        match (&run.tenant, &run.tenant_id) {
            (Some(t), _) => t.to_string(),
            (None, Some(id)) => id.clone(),
            (None, None) => "unknown".into(),
        }
    }

    /// The tenant's id (`tid`), for the Teams link.
    fn tenant_id(&self) -> Option<&str> {
        let run = &self.data.run;
        run.tenant
            .as_ref()
            .map(|t| t.id.as_str())
            .or(run.tenant_id.as_deref())
    }

    /// What the conversion leaves to do, with this run's numbers, as (topic, text): the
    /// internal passwords that still work, billing, the Teams tenant link, the back-out. The
    /// wording follows Microsoft's article on inviting internal users (its "Things to
    /// consider"); the board reads it on the first page, before approving.
    pub fn left_to_do(&self) -> Vec<(&'static str, String)> {
        let d = self.data;
        let live = d.run.mode == RunMode::Live;
        let l = &d.left_to_do;
        let cloud = l.users - l.synced.min(l.users);
        let n = thousands;
        let passwords = match (live, self.credentials_sentence()) {
            (true, Some(text)) => text,
            _ => format!(
                "Internal passwords still work until they are retired (after the invitation, \
                 Microsoft notes, the user can still use their internal credentials): for the {} \
                 cloud-only users, `b2b-convert retire` on the live run once each has \
                 redeemed (a random password, sessions revoked); for the {} synced users, the \
                 on-premises password, reset by an AD administrator with the script \
                 `b2b-convert scripts` writes.",
                n(cloud),
                n(l.synced)
            ),
        };
        let f = &d.follow_ups;
        let switched = if live { f.guest_set } else { f.guest_planned };
        let (keep, stay) = if live {
            ("keep", "stay")
        } else {
            ("will keep", "will stay")
        };
        let billing = if d.run.options.set_guest || switched > 0 {
            format!(
                "--set-guest {} userType to Guest for {} users after their invitation, which is \
                 what activates External ID monthly active user (MAU) pricing for them; {} users \
                 {stay} userType Member, on member billing. MAU billing also needs the tenant \
                 linked to an Azure subscription.",
                if live { "set" } else { "sets" },
                n(switched),
                n(l.member.saturating_sub(switched))
            )
        } else {
            let mut text = format!(
                "The conversion does not change userType: the {} users who are userType Member \
                 {keep} it, so their billing does not switch to External ID monthly active user \
                 (MAU) pricing. To activate MAU pricing, userType must be changed to Guest \
                 (--set-guest does it after each invitation), and the tenant linked to an Azure \
                 subscription.",
                n(l.member)
            );
            if l.guest > 0 {
                text.push_str(&format!(
                    " {} users are userType Guest already (internal guests) and stay so.",
                    n(l.guest)
                ));
            }
            text
        };
        let teams = format!(
            "When the {} users sign in to Teams with their external account, this tenant is not \
             in the Teams tenant picker at first: they reach it through a URL that contains the \
             tenant, https://teams.microsoft.com/?tenantId={}, after which it appears in the \
             picker. Send them that link with the news of the conversion.",
            n(l.users),
            self.tenant_id().unwrap_or("<tenant id>")
        );
        let backout = "What `restore` and `rollback` can undo for this run, and what nothing \
                       undoes, is in the Back-out paragraph below."
            .to_string();
        vec![
            ("Internal passwords", passwords),
            ("Billing", billing),
            ("Teams", teams),
            ("Back-out", backout),
        ]
    }

    /// Redemption counts as table rows: (label, count, meaning), for a tracked live run.
    pub fn redemption_rows(&self) -> Option<Vec<(&'static str, u64, &'static str)>> {
        let r = self.data.redemption.as_ref().filter(|r| r.tracked())?;
        let c = &r.counts;
        Some(vec![
            (
                "Accepted",
                c.accepted,
                "redeemed: signs in with their external account",
            ),
            (
                "Pending acceptance",
                c.pending_acceptance,
                "invited, not redeemed yet; b2b-convert resend RUN_ID --older-than DAYS re-invites them",
            ),
            (
                "Not applied",
                c.not_applied,
                "Graph answered 201 but the user never changed; back in the queue for b2b-convert retry RUN_ID",
            ),
            (
                "Untracked",
                c.untracked,
                "converted, not read by a completed track yet (or deleted since)",
            ),
        ])
    }

    pub fn throughput_rows(&self) -> Option<Vec<(&'static str, String)>> {
        let t = self.throughput?;
        let per = |v: Option<f64>, unit: &str| {
            v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.2} {unit}"))
        };
        Some(vec![
            ("Converted", t.converted.to_string()),
            (
                "Duration",
                t.duration_seconds.map_or_else(
                    || "unknown".to_string(),
                    |s| human_duration(Duration::from_secs_f64(s)),
                ),
            ),
            (
                "Throughput",
                per(t.converted_per_second, "users/s converted"),
            ),
            ("Graph requests", t.graph_requests.to_string()),
            (
                "Requests per converted user",
                per(t.requests_per_converted, "requests"),
            ),
            ("Retries", t.retries.to_string()),
            ("Throttled requests (429)", t.throttled_requests.to_string()),
            (
                "Reconciled (converted, found by re-reading after an unknown outcome)",
                t.reconciled.to_string(),
            ),
        ])
    }
}

/// The sections of the Markdown and HTML reports. What each one says is computed here, once
/// (the [`Summary`] methods and the sentences below); each renderer lays the sections out in its
/// own order and matches on every variant, so a new section is a variant, its title, and one
/// arm in each renderer — the compiler points at both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    BoardSummary,
    /// Conversions and 429s per minute: a chart, in HTML only.
    Pace,
    Attention,
    Redemption,
    StateCounts,
    ReasonCounts,
    Estimate,
    Throughput,
    FollowUps,
    Run,
    Options,
    /// `apply` runs: the plan and who drifted; runs whose send options changed: the history.
    Plan,
    ThingsToConsider,
}

impl Section {
    /// The section's heading (Attention's is followed by its count).
    pub fn title(self) -> &'static str {
        match self {
            Section::BoardSummary => "Summary for the change board",
            Section::Pace => "Pace",
            Section::Attention => "Users who need action",
            Section::Redemption => "Redemption",
            Section::StateCounts => "Counts by state",
            Section::ReasonCounts => "Counts by reason",
            Section::Estimate => "Estimated duration of the live run",
            Section::Throughput => "Throughput",
            Section::FollowUps => "Follow-up steps",
            Section::Run => "Run",
            Section::Options => "Options",
            Section::Plan => "Plan",
            Section::ThingsToConsider => "Things to consider",
        }
    }
}

/// The heading of the first page's list of what the conversion leaves to do.
pub(crate) const LEFT_TO_DO_TITLE: &str = "What the conversion leaves to do";

/// The board summary when no user is blocked or failed.
pub(crate) const NOTHING_TO_FIX: &str = "Nothing needs fixing before the live run.";

/// The attention section of a run where nobody needs action.
pub(crate) const NO_ATTENTION: &str = "None. The CSV and JSON reports list every user of the run.";

/// How the live-run estimate is worked out, under its table.
pub(crate) const ESTIMATE_FORMULA: &str = "Formula: writes (one invitation per user, plus one per \
    mail or userType PATCH) ÷ configured rate, against Graph's ceiling max(0, (writes − 3,000) ÷ \
    20, (users − 150) ÷ 30) seconds; the slower bounds the run.";

/// How a headline figure is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tone {
    Good,
    Warn,
    Bad,
    Plain,
}

impl Tone {
    pub fn class(self) -> &'static str {
        match self {
            Tone::Good => "good",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
            Tone::Plain => "plain",
        }
    }
}

/// The board summary's estimate in plain words, the same in every format: "48 users at 20
/// requests/s: about 3 s".
pub(crate) fn estimate_text(e: &Estimate) -> String {
    format!(
        "{}{} at {} requests/s: {}",
        thousands(e.users_to_convert),
        writes_clause(e),
        e.configured_rate_per_second,
        e.estimated_seconds.map_or_else(
            || "never (the rate is not a positive number)".to_string(),
            |v| format!("about {}", human_duration(Duration::from_secs_f64(v)))
        )
    )
}

/// The board summary's follow-up steps in plain words, the same in every format.
pub(crate) fn follow_up_text(sentences: &[String]) -> String {
    if sentences.is_empty() {
        "None requested (mail and user type are left as they are).".to_string()
    } else {
        format!("{}.", sentences.join("; "))
    }
}

/// " users" or " users (505 Graph writes)" when follow-up PATCHes add writes.
pub(crate) fn writes_clause(e: &Estimate) -> String {
    if e.writes > e.users_to_convert {
        format!(" users ({} Graph writes)", thousands(e.writes))
    } else {
        " users".to_string()
    }
}

/// A not-redeemed user's state in plain words.
pub(crate) fn not_redeemed_state(n: &NotRedeemed) -> String {
    match n.external_user_state.as_deref() {
        Some(crate::queue::track::PENDING_ACCEPTANCE) => "pending acceptance".to_string(),
        Some(other) => other.to_string(),
        None => "not tracked yet".to_string(),
    }
}

/// Most `track` passes and redemption days the tables list (the latest).
pub(crate) const HISTORY_ROWS: usize = 30;

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) const ONE_WAY: &str = "The conversion is one-way in Graph's supported API: only the \
    beta conversion back (see Back-out) returns a redeemed user to an internal account. Users keep their object id, user principal name, groups and app \
    assignments; each user's properties as read before the change are kept in the run's \
    database and in the JSON report.";

/// Start to finish; to the report's time while the run has not finished.
fn run_duration(run: &RunRecord, generated_at: &str) -> Option<Duration> {
    let start = DateTime::parse_from_rfc3339(&run.started_at).ok()?;
    let end =
        DateTime::parse_from_rfc3339(run.finished_at.as_deref().unwrap_or(generated_at)).ok()?;
    (end - start).to_std().ok()
}

pub(crate) fn mode_label(mode: RunMode) -> &'static str {
    match mode {
        RunMode::DryRun => "Dry run",
        RunMode::Live => "Live",
    }
}

/// "1 h 23 min 4 s": whole seconds, rounded; leading and trailing zero units left out.
pub fn human_duration(d: Duration) -> String {
    if d == Duration::MAX {
        return "unbounded".to_string();
    }
    if d > Duration::ZERO && d < Duration::from_millis(500) {
        return "under 1 s".to_string();
    }
    let total = d.as_secs() + u64::from(d.subsec_millis() >= 500);
    let parts = [
        (total / 86_400, "d"),
        (total / 3_600 % 24, "h"),
        (total / 60 % 60, "min"),
        (total % 60, "s"),
    ];
    let first = parts.iter().position(|(n, _)| *n > 0);
    let last = parts.iter().rposition(|(n, _)| *n > 0);
    match (first, last) {
        (Some(f), Some(l)) => parts[f..=l]
            .iter()
            .map(|(n, u)| format!("{n} {u}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => "0 s".to_string(),
    }
}

/// A rate or ratio without needless decimals: 20 → "20", 12.5 → "12.5".
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Reason code for a blocked or skipped item, Graph error code for a failed one.
pub(crate) fn item_reason(item: &ItemRecord) -> String {
    match (item.reason, &item.error_code) {
        (Some(r), _) => r.as_str().to_string(),
        (None, Some(code)) => code.clone(),
        (None, None) => String::new(),
    }
}

/// What exactly was wrong: the detail and the Graph error message.
pub(crate) fn item_detail(item: &ItemRecord) -> String {
    match (&item.detail, &item.error_message) {
        (Some(d), Some(m)) if d != m => format!("{d} — {m}"),
        (Some(d), _) => d.clone(),
        (None, Some(m)) => m.clone(),
        (None, None) => String::new(),
    }
}

/// Fewest characters a group's details must share before the people formats say them once: a
/// shorter common part is not worth a line of its own.
const SHARED_DETAIL_MIN: usize = 12;

/// What the details of one group of listed users have in common, said once above the group:
/// the words every detail begins and ends with. A row then shows only its own part, so a
/// 50,000-user report does not repeat the same explanation thousands of times (issue 22).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SharedDetail {
    pub prefix: String,
    pub suffix: String,
}

impl SharedDetail {
    /// The common beginning and end of `details`, cut at word boundaries; nothing for fewer
    /// than two details or when less than [`SHARED_DETAIL_MIN`] characters are shared. When
    /// every detail is the same, it is all prefix.
    pub fn of(details: &[&str]) -> SharedDetail {
        let (Some(first), true) = (details.first(), details.len() >= 2) else {
            return SharedDetail::default();
        };
        if details.iter().all(|d| d == first) {
            return if first.len() >= SHARED_DETAIL_MIN {
                SharedDetail {
                    prefix: first.to_string(),
                    suffix: String::new(),
                }
            } else {
                SharedDetail::default()
            };
        }
        let shortest = details.iter().map(|d| d.len()).min().unwrap_or(0);
        let mut prefix = details.iter().fold(first.len(), |n, d| {
            first
                .char_indices()
                .zip(d.chars())
                .take_while(|((i, a), b)| *i < n && a == b)
                .last()
                .map_or(0, |((i, a), _)| i + a.len_utf8())
        });
        // A prefix ends after a space: never half a word (or half an address).
        prefix = first[..prefix].rfind(' ').map_or(0, |at| at + 1);
        let mut suffix = details.iter().fold(first.len(), |n, d| {
            first
                .char_indices()
                .rev()
                .zip(d.chars().rev())
                .take_while(|((i, a), b)| first.len() - i <= n && a == b)
                .last()
                .map_or(0, |((i, _), _)| first.len() - i)
        });
        suffix = suffix.min(shortest.saturating_sub(prefix));
        while !first.is_char_boundary(first.len() - suffix) {
            suffix -= 1;
        }
        // A suffix starts at a space.
        let tail = &first[first.len() - suffix..];
        suffix = tail.find(' ').map_or(0, |at| suffix - at);
        if prefix + suffix < SHARED_DETAIL_MIN {
            return SharedDetail::default();
        }
        SharedDetail {
            prefix: first[..prefix].to_string(),
            suffix: first[first.len() - suffix..].to_string(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.prefix.is_empty() && self.suffix.is_empty()
    }

    /// What of `detail` is its row's own, between the shared beginning and end.
    pub fn own<'d>(&self, detail: &'d str) -> &'d str {
        let rest = detail.strip_prefix(self.prefix.as_str()).unwrap_or(detail);
        rest.strip_suffix(self.suffix.as_str()).unwrap_or(rest)
    }

    /// The shared text with "…" where each row's own part goes ("externalEmail … is not the
    /// user's mail …"); the whole detail when all rows share it.
    pub fn template(&self, own_parts: bool) -> String {
        if own_parts {
            format!("{}…{}", self.prefix, self.suffix)
        } else {
            format!("{}{}", self.prefix, self.suffix)
        }
    }
}

/// What the service desk does about one blocked or failed item.
pub(crate) fn item_fix(item: &ItemRecord) -> &'static str {
    if let Some(r) = item.reason {
        return r.fix_hint();
    }
    failed_fix_hint(item.error_code.as_deref())
}

/// Fix hint for a failed item, by Graph error code.
pub(crate) fn failed_fix_hint(code: Option<&str>) -> &'static str {
    let code = code.unwrap_or("").to_ascii_lowercase();
    if code.contains("toomanyrequests")
        || code.contains("unavailable")
        || code.contains("timeout")
        || code.contains("gateway")
        || code.contains("internal")
    {
        "Transient Graph error; attempts ran out. Run `b2b-convert retry RUN_ID` later."
    } else if code.contains("authorization")
        || code.contains("forbidden")
        || code.contains("denied")
    {
        "Check the app's User.Invite.All consent and the tenant's B2B invitation settings, then retry the run."
    } else {
        "Read the Graph error message, correct the user or tenant setting it names, then run `b2b-convert retry RUN_ID`; quote the request id to Microsoft support if it persists."
    }
}

/// The seed documents' "Things to consider", as (topic, text).
pub(crate) fn things_to_consider(
    tenant_id: Option<&str>,
    set_guest: bool,
) -> Vec<(&'static str, String)> {
    let tenant = tenant_id.unwrap_or("<tenant id>");
    let billing = if set_guest {
        "This run sets userType to Guest after each invitation (--set-guest), which moves those \
         users to External ID monthly active user (MAU) pricing; the tenant must also be linked \
         to an Azure subscription for MAU billing."
    } else {
        "userType is not changed, so converted users stay on member-based billing. To move them \
         to External ID monthly active user (MAU) pricing, set userType to Guest (--set-guest); \
         the tenant must also be linked to an Azure subscription for MAU billing."
    };
    vec![
        (
            "One-way",
            "The conversion cannot be undone. Each user's properties as read before the change are \
             kept in the run's database and in the JSON report."
                .to_string(),
        ),
        ("Billing", billing.to_string()),
        (
            "On-premises access",
            "Converted users can still use their internal credentials for on-premises resources \
             until the password of the internal account is reset or changed."
                .to_string(),
        ),
        (
            "Synced users",
            "For accounts synced from on-premises, the on-premises directory stays the source of \
             authority: changes there, including disabling or deleting, reach the cloud account. \
             To stop on-premises sign-in, set the on-premises password to an unknown value rather \
             than deleting the account."
                .to_string(),
        ),
        (
            "Sign-in account",
            "When redeeming, users must sign in with an account in the domain of their mail \
             address, or services such as Teams cannot authenticate them."
                .to_string(),
        ),
        (
            "Teams",
            format!(
                "At first this tenant is missing from the Teams tenant picker for converted users; \
                 give them a link with the tenant id, https://teams.microsoft.com/?tenantId={tenant} \
                 — after that first visit it appears in the picker."
            ),
        ),
    ]
}

pub(crate) const THINGS_TO_CONSIDER_INTRO: &str =
    "These are consequences of the conversion the board approves, not findings of this run:";

#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::RunOptions;

    #[test]
    fn the_back_out_paragraph_carries_the_runs_numbers() {
        let mut dry = fixtures::dry_run();
        dry.follow_ups.mail_planned = 7;
        dry.follow_ups.guest_planned = 9;
        let would = dry.counts.state(ItemState::WouldConvert);
        let text = dry.backout_sentence();
        assert!(text.contains("mail for 7 users"), "{text}");
        assert!(text.contains("userType for 9 users"), "{text}");
        assert!(
            text.contains(&format!("{} users would need it", thousands(would))),
            "{text}"
        );
        assert!(text.contains("redemption e-mails"), "{text}");
        assert!(!text.contains("So far"), "{text}");
        let mut live = fixtures::live_run();
        live.backout.restored_total = 3;
        live.backout.rolled_back_total = 2;
        let text = live.backout_sentence();
        assert!(
            text.contains("So far 3 users restored, 2 rolled back."),
            "{text}"
        );
    }

    #[test]
    fn a_groups_shared_detail_is_cut_at_words_and_leaves_each_row_its_own() {
        let same = "accountEnabled is false: the partner could not sign in after conversion";
        let s = SharedDetail::of(&[same, same, same]);
        assert_eq!((s.prefix.as_str(), s.suffix.as_str()), (same, ""));
        assert_eq!(s.own(same), "");
        let onprem = |upn: &str| {
            format!(
                "onPremisesUserPrincipalName is \"{upn}\": Entra Connect's default sync rule \
                 writes this attribute"
            )
        };
        let (a, b) = (onprem("ann@contoso.com"), onprem("bob@contoso.com"));
        let s = SharedDetail::of(&[&a, &b]);
        assert_eq!(s.prefix, "onPremisesUserPrincipalName is ");
        assert_eq!(
            s.suffix,
            " Entra Connect's default sync rule writes this attribute"
        );
        assert_eq!(s.own(&a), "\"ann@contoso.com\":");
        assert_eq!(s.own(&b), "\"bob@contoso.com\":");
        assert_eq!(
            format!("{}{}{}", s.prefix, s.own(&a), s.suffix),
            a,
            "nothing is lost"
        );
        let v = [
            "a@x.example is in x.example, a verified domain of this tenant",
            "b@x.example is in x.example, a verified domain of this tenant",
        ];
        let s = SharedDetail::of(&v);
        assert_eq!(
            s.suffix,
            " is in x.example, a verified domain of this tenant"
        );
        assert_eq!(s.own(v[0]), "a@x.example");
        // Too little in common, one row, or multi-byte text at the cut: nothing is shared.
        assert!(SharedDetail::of(&["mail is a", "mail is b"]).is_empty());
        assert!(SharedDetail::of(&[same]).is_empty());
        let s = SharedDetail::of(&["ünïcödé prefix é one", "ünïcödé prefix ë one"]);
        assert_eq!(
            (s.prefix.as_str(), s.suffix.as_str()),
            ("ünïcödé prefix ", " one")
        );
        assert_eq!(s.own("ünïcödé prefix ë one"), "ë");
    }

    #[test]
    fn the_first_page_says_what_is_left_to_do_with_the_runs_numbers() {
        let mut dry = fixtures::dry_run();
        dry.left_to_do = LeftToDo {
            users: 1_200,
            synced: 200,
            member: 700,
            guest: 500,
        };
        dry.run.tenant = Some(crate::item::TenantIdentity {
            id: "a26f0000-0000-4000-8000-000000000001".into(),
            initial_domain: Some("contoso.onmicrosoft.com".into()),
            default_domain: Some("contoso.com".into()),
        });
        let s = Summary::new(&dry);
        let left = s.left_to_do();
        let get = |k: &str| left.iter().find(|(t, _)| *t == k).unwrap().1.clone();
        assert!(get("Internal passwords").contains("for the 1,000 cloud-only users"));
        assert!(get("Internal passwords").contains("for the 200 synced users"));
        assert!(get("Billing").contains("the 700 users who are userType Member will keep it"));
        assert!(get("Billing").contains("500 users are userType Guest already"));
        assert!(get("Teams").contains(
            "https://teams.microsoft.com/?tenantId=a26f0000-0000-4000-8000-000000000001"
        ));
        assert!(get("Back-out").contains("Back-out paragraph"));
        assert_eq!(
            s.tenant_name(),
            "contoso.onmicrosoft.com (a26f0000-0000-4000-8000-000000000001)"
        );
        dry.run.options.set_guest = true;
        dry.follow_ups.guest_planned = 700;
        let s = Summary::new(&dry);
        let billing = &s.left_to_do()[1].1;
        assert!(
            billing.contains("sets userType to Guest for 700 users"),
            "{billing}"
        );
        assert!(
            billing.contains("0 users will stay userType Member"),
            "{billing}"
        );

        let mut live = fixtures::live_run();
        live.retired = Some(crate::queue::RetiredCounts {
            awaiting_redemption: 2,
            ..Default::default()
        });
        let s = Summary::new(&live);
        let passwords = &s.left_to_do()[0].1;
        assert!(
            passwords.starts_with("2 converted users still hold"),
            "{passwords}"
        );
        for format in [ReportFormat::Html, ReportFormat::Md] {
            let text = render(format, &live);
            let first_page = &text[..text.find(Section::Run.title()).unwrap()];
            for topic in ["Internal passwords.", "Billing.", "Teams.", "Back-out."] {
                assert!(first_page.contains(topic), "{format:?}: {topic}");
            }
        }
    }

    #[test]
    fn format_from_extension() {
        let f = |p: &str| format_from_path(Path::new(p));
        assert_eq!(f("r.md"), Some(ReportFormat::Md));
        assert_eq!(f("r.MARKDOWN"), Some(ReportFormat::Md));
        assert_eq!(f("out/r.html"), Some(ReportFormat::Html));
        assert_eq!(f("r.HTM"), Some(ReportFormat::Html));
        assert_eq!(f("r.csv"), Some(ReportFormat::Csv));
        assert_eq!(f("r.json"), Some(ReportFormat::Json));
        assert_eq!(f("r.txt"), None);
        assert_eq!(f("report"), None);
        assert_eq!(f(".md"), None);
    }

    #[test]
    fn durations_read_like_people_say_them() {
        let s = |n| human_duration(Duration::from_secs(n));
        assert_eq!(s(0), "0 s");
        assert_eq!(s(4), "4 s");
        assert_eq!(s(60), "1 min");
        assert_eq!(s(3600), "1 h");
        assert_eq!(s(3604), "1 h 0 min 4 s");
        assert_eq!(s(5_004), "1 h 23 min 24 s");
        assert_eq!(s(3600 + 23 * 60 + 4), "1 h 23 min 4 s");
        assert_eq!(s(90_061), "1 d 1 h 1 min 1 s");
        assert_eq!(human_duration(Duration::from_millis(1_600)), "2 s");
        assert_eq!(human_duration(Duration::from_millis(100)), "under 1 s");
        assert_eq!(human_duration(Duration::MAX), "unbounded");
    }

    #[test]
    fn estimate_is_users_over_rate() {
        assert_eq!(estimate_live_duration(0, 20.0), Duration::ZERO);
        assert_eq!(estimate_live_duration(1_000, 20.0), Duration::from_secs(50));
        assert_eq!(estimate_live_duration(100, 0.5), Duration::from_secs(200));
        assert_eq!(estimate_live_duration(10, 0.0), Duration::MAX);
        assert_eq!(estimate_live_duration(10, f64::NAN), Duration::MAX);
        assert_eq!(estimate_live_duration(10, -1.0), Duration::MAX);
    }

    #[test]
    fn graph_ceiling_allows_the_burst_then_twenty_per_second() {
        let at = |n| estimate_at_graph_ceiling(n, n);
        assert_eq!(at(0), Duration::ZERO);
        assert_eq!(at(150), Duration::ZERO);
        // Below 8,700 users the /invitations bucket (30/s after 150) binds.
        assert_eq!(at(3_150), Duration::from_secs(100));
        assert_eq!(at(8_700), Duration::from_secs(285));
        // Above, the write bucket (20/s after 3,000): 100,000 users ≈ 81 min.
        assert_eq!(at(100_000), Duration::from_secs(4_850));
        assert_eq!(human_duration(at(100_000)), "1 h 20 min 50 s");
        // Follow-up PATCHes share the write bucket: both steps for every user triple it.
        assert_eq!(
            estimate_at_graph_ceiling(100_000, 300_000),
            Duration::from_secs(14_850)
        );
        assert_eq!(
            estimate_at_graph_ceiling(100_000, 200_000),
            Duration::from_secs(9_850)
        );
        // Few users: the /invitations bucket still binds.
        assert_eq!(
            estimate_at_graph_ceiling(3_150, 4_000),
            Duration::from_secs(100)
        );
    }

    #[test]
    fn slower_limit_bounds_the_estimate() {
        let mut run = fixtures::dry_run().run;
        let mut counts = RunCounts::default();
        counts.states.insert("would_convert".into(), 100_000);
        run.options.rate = 20.0;
        let e = Estimate::new(&run, &counts, &FollowUpCounts::default());
        assert_eq!(e.bound_by, BoundBy::ConfiguredRate);
        assert_eq!(e.estimated_seconds, Some(5_000.0));
        run.options.rate = 100.0;
        let e = Estimate::new(&run, &counts, &FollowUpCounts::default());
        assert_eq!(e.bound_by, BoundBy::GraphCeiling);
        assert_eq!(e.estimated_seconds, Some(4_850.0));
        run.options.limit = Some(1_000);
        let e = Estimate::new(&run, &counts, &FollowUpCounts::default());
        assert_eq!(e.users_to_convert, 1_000);
        assert_eq!(e.at_configured_rate_seconds, Some(10.0));
        run.options = RunOptions {
            rate: 0.0,
            ..RunOptions::default()
        };
        let e = Estimate::new(&run, &counts, &FollowUpCounts::default());
        assert_eq!(e.bound_by, BoundBy::ConfiguredRate);
        assert_eq!(e.estimated_seconds, None);
    }

    #[test]
    fn follow_up_writes_are_counted_in_the_estimate() {
        let mut run = fixtures::dry_run().run;
        run.options.rate = 20.0;
        let mut counts = RunCounts::default();
        counts.states.insert("would_convert".into(), 1_000);
        let steps = FollowUpCounts {
            mail_planned: 300,
            guest_planned: 1_000,
            ..FollowUpCounts::default()
        };
        let e = Estimate::new(&run, &counts, &steps);
        assert_eq!(
            (e.mail_writes, e.guest_writes, e.writes),
            (300, 1_000, 2_300)
        );
        // 2,300 writes at 20/s, not 1,000 invitations.
        assert_eq!(e.at_configured_rate_seconds, Some(115.0));
        run.options.limit = Some(200);
        let e = Estimate::new(&run, &counts, &steps);
        assert_eq!((e.mail_writes, e.guest_writes, e.writes), (200, 200, 600));
        assert_eq!(e.at_configured_rate_seconds, Some(30.0));
    }

    #[test]
    fn summary_lists_each_blocked_or_failed_item_once() {
        let mut data = fixtures::dry_run();
        let dup = data.items[0].clone();
        data.items.push(dup);
        let s = Summary::new(&data);
        let blocked = data
            .items
            .iter()
            .filter(|i| i.state.needs_attention())
            .map(|i| i.id)
            .collect::<BTreeSet<_>>();
        let listed: Vec<i64> = s.attention.iter().map(|i| i.id).collect();
        assert_eq!(listed, blocked.into_iter().collect::<Vec<_>>());
        assert!(s.attention.iter().all(|i| i.state.needs_attention()));
    }

    #[test]
    fn unfinished_run_counts_to_the_report_time() {
        let mut data = fixtures::live_run();
        data.run.finished_at = None;
        data.run.status = "running".into();
        let s = Summary::new(&data);
        let rows = s.run_rows();
        let get = |k: &str| rows.iter().find(|(l, _)| *l == k).unwrap().1.clone();
        assert_eq!(get("Finished"), "still running");
        assert!(get("Duration").ends_with("so far"), "{}", get("Duration"));
    }

    #[test]
    fn custom_message_is_previewed() {
        let mut data = fixtures::dry_run();
        data.run.options.message_body = Some("x".repeat(500));
        let s = Summary::new(&data);
        let rows = s.option_rows();
        let msg = &rows.iter().find(|(l, _)| *l == "Custom message").unwrap().1;
        assert!(msg.starts_with("500 characters"));
        assert_eq!(msg.matches('x').count(), MESSAGE_PREVIEW_CHARS);
    }

    /// Every hostile name through all four formats: Markdown and HTML show it as text (no tag,
    /// link, image, broken row), CSV keeps one record per user with formulas defused, JSON keeps
    /// the exact value.
    #[test]
    fn hostile_names_stay_text_in_every_format() {
        use fixtures::HOSTILE_NAMES;
        let data = fixtures::hostile_run();

        let md = render(ReportFormat::Md, &data);
        for raw in ["](", "!["] {
            assert!(!md.contains(raw), "{raw} reaches the Markdown");
        }
        let attention = md
            .split("## Users who need action")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .unwrap();
        let rows: Vec<&str> = attention
            .lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| Item") && !l.starts_with("| ---"))
            .collect();
        assert_eq!(rows.len(), HOSTILE_NAMES.len(), "one table row per user");
        for row in rows {
            assert!(row.ends_with(" |"), "row cut short: {row}");
            for (at, c) in row.char_indices() {
                if matches!(c, '<' | '>' | '`' | '[' | ']') {
                    assert_eq!(&row[at - 1..at], "\\", "unescaped {c} in {row}");
                }
            }
        }

        let html = render(ReportFormat::Html, &data);
        assert_eq!(
            html.matches("<script").count(),
            1,
            "only the report's own script"
        );
        assert!(!html.contains("href=\"javascript"));
        assert!(!html.contains("src=\"javascript"));
        assert!(html.contains("&lt;script&gt;"));

        let csv_text = render(ReportFormat::Csv, &data);
        let mut reader = ::csv::ReaderBuilder::new().from_reader(csv_text.as_bytes());
        let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
        let name_col = header.iter().position(|h| h == "display_name").unwrap();
        let names: Vec<String> = reader
            .records()
            .map(|r| r.unwrap()[name_col].to_string())
            .collect();
        assert_eq!(names.len(), HOSTILE_NAMES.len(), "one record per user");
        for (got, want) in names.iter().zip(HOSTILE_NAMES) {
            if want.starts_with(['=', '+', '-', '@']) {
                assert_eq!(got, &format!("'{want}"));
            } else {
                assert_eq!(got, want);
            }
        }

        let json: serde_json::Value =
            serde_json::from_str(&render(ReportFormat::Json, &data)).unwrap();
        let names: Vec<&str> = json["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["displayName"].as_str().unwrap())
            .collect();
        assert_eq!(names, HOSTILE_NAMES);
    }
}
