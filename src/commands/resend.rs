//! `resend`: re-invite converted users still `PendingAcceptance` (per the last `track`) with
//! `resetRedemption: true`, `invitedUser.id` and the run's message options.
//!
//! A pass is recorded in the database with its users fixed when it starts; each is re-invited
//! once per pass with the first invitation's discipline: checkpoint `in_flight` before the
//! request can leave, and on an unknown outcome (lost answer, 5xx, a process killed mid-request)
//! re-read the user and let Graph's `externalUserStateChangeDateTime` decide before anything is
//! sent again. An interrupted pass is continued by the next `resend`, never started over.
//! The decisions are the pure functions [`after_unknown`] and [`cutoff`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::common;
use crate::cli::ResendArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::graph::{Credentials, GraphClient, GraphError};
use crate::item::{RunMode, RunRecord};
use crate::model::User;
use crate::queue::track::{ResendEntry, ResendPass, ResendState, ACCEPTED};
use crate::queue::Queue;

/// Graph stamps `externalUserStateChangeDateTime` to the second: two changes at least this far
/// apart in real time carry different stamps.
pub const STAMP_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// What a re-read of the user showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reread {
    /// No such user any more.
    Gone,
    /// The user's `externalUserState` and its change time.
    State {
        state: Option<String>,
        changed_at: Option<String>,
    },
}

impl Reread {
    pub fn of(user: Option<&User>) -> Reread {
        match user {
            None => Reread::Gone,
            Some(u) => Reread::State {
                state: u.external_user_state.clone(),
                changed_at: u.external_user_state_change_date_time.clone(),
            },
        }
    }
}

/// The decision after a resend whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUnknown {
    /// Graph's change time moved past the one `track` read: the reset took effect.
    TookEffect,
    /// The user redeemed meanwhile: nothing more to send.
    Redeemed,
    /// The user no longer exists.
    Gone,
    /// The user shows no invitation at all (not a B2B user): a reset cannot apply.
    NotInvited,
    /// Unchanged since the track: the reset did not take effect; it may be sent again.
    SendAgain,
    /// Unchanged, and the pass's attempts for this user are used up.
    GiveUp,
    /// Nothing proves the reset did not happen (no change time, or the track read the user
    /// too shortly before the checkpoint for a second-resolution stamp to differ): never send
    /// blind; the operator checks after the next `track`.
    Ambiguous,
}

/// What the last `track` knew about the user before the pass touched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline<'a> {
    /// Graph's `externalUserStateChangeDateTime` as tracked (Graph's clock).
    pub changed_at: Option<&'a str>,
    /// When `track` read it (our clock).
    pub tracked_at: Option<&'a str>,
}

/// Decides what a lost answer means, before anything is sent again. Graph's change times are
/// compared only with each other, and our checkpoint only with our own `tracked_at`, so clock
/// skew between us and Graph cannot mislead it: the tracked change happened before the track
/// read it, a reset after the checkpoint; when those are at least [`STAMP_RESOLUTION`] apart
/// an unchanged stamp proves the reset did not happen. Times that do not parse count as absent.
pub fn after_unknown(
    reread: &Reread,
    checkpoint_at: &str,
    baseline: Baseline<'_>,
    attempts: u32,
    max_attempts: u32,
) -> AfterUnknown {
    let (state, changed_at) = match reread {
        Reread::Gone => return AfterUnknown::Gone,
        Reread::State { state, changed_at } => (state, changed_at),
    };
    let Some(state) = state.as_deref().filter(|s| !s.trim().is_empty()) else {
        return AfterUnknown::NotInvited;
    };
    if state.eq_ignore_ascii_case(ACCEPTED) {
        return AfterUnknown::Redeemed;
    }
    let (Some(changed), Some(before)) = (parse(changed_at.as_deref()), parse(baseline.changed_at))
    else {
        return AfterUnknown::Ambiguous;
    };
    if changed > before {
        return AfterUnknown::TookEffect;
    }
    match (parse(baseline.tracked_at), parse(Some(checkpoint_at))) {
        (Some(tracked), Some(checkpoint)) if checkpoint - tracked >= STAMP_RESOLUTION => {}
        _ => return AfterUnknown::Ambiguous,
    }
    if attempts < max_attempts {
        AfterUnknown::SendAgain
    } else {
        AfterUnknown::GiveUp
    }
}

/// The latest last-invitation time a user may have to be re-invited with `--older-than DAYS`,
/// in the queue's time format.
pub fn cutoff(now: DateTime<Utc>, older_than_days: u32) -> String {
    (now - chrono::TimeDelta::days(i64::from(older_than_days)))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn parse(t: Option<&str>) -> Option<DateTime<Utc>> {
    t.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

pub async fn resend(db: &Path, args: ResendArgs) -> anyhow::Result<ExitStatus> {
    // One process at a time works a run: a resend pass holds the run's lease like run/resume do,
    // taken before the pass is read or created.
    let (queue, _lease, run) = common::lease_run(db, Some(args.run_id))?;
    if run.mode != RunMode::Live {
        return Err(ExitError::usage(format!(
            "run {} is a dry run: nobody was invited, there is nothing to resend",
            run.id
        ))
        .into());
    }
    common::require_consent_possible(RunMode::Live, args.yes)?;
    let counts = queue.redemption_counts(run.id)?;
    let Some(last_tracked) = counts.last_tracked_at.clone() else {
        return Err(ExitError::usage(format!(
            "run {} has never been tracked: `b2b-convert track {}` first shows who is still pending",
            run.id, run.id
        ))
        .into());
    };

    let (pass, continued) = match queue.open_resend_pass(run.id)? {
        Some(pass) => (pass, true),
        None => {
            let cut = cutoff(Utc::now(), args.older_than);
            let n = queue.resend_candidates(run.id, &cut)?;
            if n == 0 {
                println!(
                    "nobody to re-invite: no converted user of run {} is pending acceptance \
                     (older than {} days) per the track of {last_tracked}",
                    run.id, args.older_than
                );
                return Ok(ExitStatus::Success);
            }
            if !args.yes && !confirm(&run, n, args.older_than, &last_tracked)? {
                println!("not confirmed: nothing sent");
                return Ok(ExitStatus::Interrupted);
            }
            match queue.create_resend_pass(run.id, args.older_than, &cut)? {
                Some(pass) => (pass, false),
                None => {
                    println!("nobody to re-invite");
                    return Ok(ExitStatus::Success);
                }
            }
        }
    };
    if continued {
        let s = queue.resend_summary(pass.id)?;
        println!(
            "continuing resend pass {} of run {} (started {}): {} sent, {} left",
            pass.id,
            run.id,
            pass.started_at,
            s.sent,
            s.pending + s.in_flight
        );
        if !args.yes && s.pending + s.in_flight > 0 {
            let left = s.pending + s.in_flight;
            if !confirm(&run, left, pass.older_than_days, &last_tracked)? {
                println!("not confirmed: nothing sent");
                return Ok(ExitStatus::Interrupted);
            }
        }
    }

    let graph = common::connect_to_run(
        &common::endpoints_for(&args.endpoints, &run),
        Credentials::resolve(args.auth)?,
        &queue,
        &run,
        RunMode::Live,
    )
    .await?;

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after the request on the wire; `resend` continues this pass");
            let _ = stop_tx.send(true);
        }
    });
    let ctx = Ctx {
        queue: queue.clone(),
        graph,
        run: &run,
        pass: &pass,
        stop,
    };
    let outcome = ctx.work().await;
    ctrl_c.abort();
    let outcome = outcome?;
    let s = queue.resend_summary(pass.id)?;
    let finished = queue.finish_resend_pass(pass.id)?;
    println!(
        "resend pass {} of run {}: {} re-invited, {} failed, {} skipped (redeemed meanwhile or gone), {} left",
        pass.id,
        run.id,
        s.sent,
        s.failed,
        s.skipped,
        s.pending + s.in_flight
    );
    match outcome {
        Stop::TenantRefused(message) => {
            eprintln!("error: the tenant refused to go on: {message}");
            println!(
                "stopped: nothing more was sent; `b2b-convert resend {}` continues this pass",
                run.id
            );
            Ok(ExitStatus::TenantRefused)
        }
        Stop::Interrupted => {
            println!(
                "interrupted: `b2b-convert resend {}` continues this pass",
                run.id
            );
            Ok(ExitStatus::Interrupted)
        }
        Stop::Done if !finished => {
            println!(
                "some outcomes are still unknown; `b2b-convert resend {}` reconciles them",
                run.id
            );
            Ok(ExitStatus::NeedsAttention)
        }
        Stop::Done if s.failed > 0 => Ok(ExitStatus::NeedsAttention),
        Stop::Done => Ok(ExitStatus::Success),
    }
}

fn confirm(run: &RunRecord, n: u64, days: u32, tracked: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, Write};
    let mut err = std::io::stderr();
    writeln!(
        err,
        "About to RE-INVITE {n} users of run {} (tenant {}) still pending acceptance per the track \
         of {tracked} (last invited {days}+ days ago), with resetRedemption: their earlier \
         redeem links stop working. Invitation emails: {}.\nType `yes` to go on: ",
        run.id,
        run.tenant_id.as_deref().unwrap_or("(from token)"),
        if run.options.silent {
            "not sent (--silent)"
        } else {
            "sent"
        },
    )?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}

enum Stop {
    Done,
    Interrupted,
    TenantRefused(String),
}

struct Ctx<'a> {
    queue: Arc<Queue>,
    graph: GraphClient,
    run: &'a RunRecord,
    pass: &'a ResendPass,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// How one user's resend ended in this process.
enum One {
    Settled,
    /// Outcome unknown and the user could not be re-read: stays in flight for the next `resend`.
    Unresolved,
    Refused(String),
}

impl Ctx<'_> {
    fn max_attempts(&self) -> u32 {
        self.run.options.max_attempts.max(1)
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    async fn work(&self) -> anyhow::Result<Stop> {
        // Entries a killed process left in flight are decided before anything is sent.
        for entry in self
            .queue
            .resend_entries(self.pass.id, ResendState::InFlight)?
        {
            if let One::Refused(m) = self.reconcile(&entry, None).await? {
                return Ok(Stop::TenantRefused(m));
            }
        }
        for entry in self
            .queue
            .resend_entries(self.pass.id, ResendState::Pending)?
        {
            if self.stopping() {
                return Ok(Stop::Interrupted);
            }
            if let One::Refused(m) = self.send(entry).await? {
                return Ok(Stop::TenantRefused(m));
            }
        }
        Ok(if self.stopping() {
            Stop::Interrupted
        } else {
            Stop::Done
        })
    }

    /// Re-invites one user: checkpoint, send, record; on an unknown outcome re-read first.
    async fn send(&self, mut entry: ResendEntry) -> anyhow::Result<One> {
        let q = &self.queue;
        let (pass, item_id) = (self.pass.id, entry.item_id);
        let item = q.item(item_id)?.context("a resend names a vanished item")?;
        let (Some(_), Some(email)) = (item.user_id.as_deref(), item.external_email.clone()) else {
            q.record_resend_failed(
                pass,
                item_id,
                "NoAddress",
                "the item has no object id or invited address",
                None,
                None,
            )?;
            return Ok(One::Settled);
        };
        let mut req = crate::workers::invitation_request(&item, &email, &self.run.options);
        req.reset_redemption = Some(true);
        let mut unknown_before = false;
        loop {
            let checkpoint = q.mark_resend_in_flight(pass, item_id)?;
            entry.attempts += 1;
            entry.checkpoint_at = Some(checkpoint);
            match self.graph.invite(&req).await {
                Ok(traced) => {
                    q.record_resent(
                        pass,
                        item_id,
                        Some(&traced.value.id),
                        traced.meta.request_id.as_deref(),
                        Some(&traced.meta.client_request_id),
                        traced.value.invite_redeem_url.as_deref(),
                    )?;
                    return Ok(One::Settled);
                }
                Err(GraphError::TenantRefused { message, .. }) => {
                    q.resend_back_to_pending(pass, item_id)?;
                    return Ok(One::Refused(message));
                }
                Err(GraphError::Api {
                    code,
                    message,
                    meta,
                    ..
                }) => {
                    if unknown_before {
                        // An earlier attempt's answer was lost: the tenant's word decides.
                        return self.reconcile(&entry, Some((&code, &message))).await;
                    }
                    q.record_resend_failed(
                        pass,
                        item_id,
                        &code,
                        &message,
                        meta.request_id.as_deref(),
                        Some(&meta.client_request_id),
                    )?;
                    return Ok(One::Settled);
                }
                Err(other) => {
                    unknown_before = true;
                    let code = other.code().unwrap_or("UnknownOutcome").to_string();
                    q.note_resend_error(
                        pass,
                        item_id,
                        &code,
                        &other.to_string(),
                        other.meta().and_then(|m| m.request_id.as_deref()),
                    )?;
                    match self.reconcile(&entry, None).await? {
                        One::Settled => {}
                        other => return Ok(other),
                    }
                    let now = q
                        .resend_entries(pass, ResendState::Pending)?
                        .into_iter()
                        .any(|e| e.item_id == item_id);
                    if !now || self.stopping() {
                        return Ok(One::Settled);
                    }
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(entry.attempts)))
                        .await;
                }
            }
        }
    }

    /// Decides an in-flight entry by re-reading the user. `refusal` is a later attempt's
    /// refusal, recorded if the re-read shows nothing took effect.
    async fn reconcile(
        &self,
        entry: &ResendEntry,
        refusal: Option<(&str, &str)>,
    ) -> anyhow::Result<One> {
        let q = &self.queue;
        let (pass, item_id) = (self.pass.id, entry.item_id);
        let Some(user_id) = entry.user_id.as_deref() else {
            q.record_resend_failed(pass, item_id, "NoUserId", "no object id", None, None)?;
            return Ok(One::Settled);
        };
        let reread = match self.graph.get_user(user_id).await {
            Ok(u) => Reread::of(u.as_ref()),
            Err(GraphError::TenantRefused { message, .. }) => return Ok(One::Refused(message)),
            Err(e) => {
                tracing::warn!(item = item_id, error = %e, "cannot re-read user; the resend stays in flight");
                return Ok(One::Unresolved);
            }
        };
        let checkpoint = entry.checkpoint_at.as_deref().unwrap_or("");
        let decision = after_unknown(
            &reread,
            checkpoint,
            Baseline {
                changed_at: entry.tracked_changed_at.as_deref(),
                tracked_at: entry.tracked_at.as_deref(),
            },
            entry.attempts,
            if refusal.is_some() {
                0
            } else {
                self.max_attempts()
            },
        );
        tracing::info!(
            item = item_id,
            ?decision,
            "resend with unknown outcome decided"
        );
        match decision {
            AfterUnknown::TookEffect => q.record_resent(pass, item_id, None, None, None, None)?,
            AfterUnknown::Redeemed => {
                q.record_resend_skipped(pass, item_id, "the user redeemed meanwhile")?
            }
            AfterUnknown::Gone => {
                q.record_resend_skipped(pass, item_id, "the user no longer exists")?
            }
            AfterUnknown::NotInvited => q.record_resend_failed(
                pass,
                item_id,
                "NotInvited",
                "the user shows no invitation (externalUserState empty): run `track`, then `retry`",
                None,
                None,
            )?,
            AfterUnknown::SendAgain => q.resend_back_to_pending(pass, item_id)?,
            AfterUnknown::GiveUp => {
                let (code, message) = refusal.unwrap_or((
                    "UnknownOutcome",
                    "the answer was lost and the user is unchanged",
                ));
                q.record_resend_failed(
                    pass,
                    item_id,
                    code,
                    &format!("{message} (after {} attempts)", entry.attempts),
                    None,
                    None,
                )?
            }
            AfterUnknown::Ambiguous => q.record_resend_failed(
                pass,
                item_id,
                "UnknownOutcome",
                "the answer was lost and Graph's change time cannot show whether the reset took \
                 effect; nothing was sent again: check the user after the next `track`",
                None,
                None,
            )?,
        }
        Ok(One::Settled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(s: &str, at: &str) -> Reread {
        Reread::State {
            state: Some(s.into()),
            changed_at: Some(at.into()),
        }
    }

    const CHANGED: &str = "2026-11-01T08:00:00Z";
    const TRACKED_AT: &str = "2026-11-22T09:00:00.000Z";
    const CHECKPOINT: &str = "2026-11-22T10:00:00.000Z";
    const BASE: Baseline<'static> = Baseline {
        changed_at: Some(CHANGED),
        tracked_at: Some(TRACKED_AT),
    };

    #[test]
    fn a_lost_answer_is_decided_by_graphs_change_time() {
        use AfterUnknown::*;
        let pending = |at: &str| state("PendingAcceptance", at);
        let just_tracked = Baseline {
            changed_at: Some(CHANGED),
            tracked_at: Some("2026-11-22T09:59:59.500Z"),
        };
        let rows: Vec<(&str, Reread, Baseline, u32, u32, AfterUnknown)> = vec![
            ("gone", Reread::Gone, BASE, 1, 6, Gone),
            (
                "redeemed meanwhile",
                state("Accepted", "2026-11-22T09:30:00Z"),
                BASE,
                1,
                6,
                Redeemed,
            ),
            (
                "no state at all",
                Reread::State {
                    state: None,
                    changed_at: None,
                },
                BASE,
                1,
                6,
                NotInvited,
            ),
            (
                "changed since track",
                pending("2026-11-22T10:00:01Z"),
                BASE,
                1,
                6,
                TookEffect,
            ),
            (
                "changed since track, Graph's clock far behind ours",
                pending("2026-11-01T08:00:01Z"),
                BASE,
                1,
                6,
                TookEffect,
            ),
            (
                "unchanged since track",
                pending(CHANGED),
                BASE,
                1,
                6,
                SendAgain,
            ),
            (
                "unchanged, attempts used up",
                pending(CHANGED),
                BASE,
                6,
                6,
                GiveUp,
            ),
            (
                "unchanged but tracked under a second before the checkpoint",
                pending(CHANGED),
                just_tracked,
                1,
                6,
                Ambiguous,
            ),
            (
                "never tracked a change time",
                pending("2026-11-22T10:00:05Z"),
                Baseline {
                    changed_at: None,
                    tracked_at: Some(TRACKED_AT),
                },
                1,
                6,
                Ambiguous,
            ),
            (
                "no change time now",
                Reread::State {
                    state: Some("PendingAcceptance".into()),
                    changed_at: None,
                },
                BASE,
                1,
                6,
                Ambiguous,
            ),
            (
                "no tracked_at",
                pending(CHANGED),
                Baseline {
                    changed_at: Some(CHANGED),
                    tracked_at: None,
                },
                1,
                6,
                Ambiguous,
            ),
        ];
        for (name, reread, baseline, attempts, max, expected) in rows {
            assert_eq!(
                after_unknown(&reread, CHECKPOINT, baseline, attempts, max),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn cutoff_counts_whole_days_back() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(cutoff(now, 0), "2026-11-22T10:00:00.000Z");
        assert_eq!(cutoff(now, 7), "2026-11-15T10:00:00.000Z");
    }
}
