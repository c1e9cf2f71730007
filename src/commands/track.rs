//! `track`: re-read every converted user of a run in bulk (15 ids per filter, 20 filters per
//! `$batch`: about 300 users per Graph request) and record `externalUserState`, its change time
//! and when it was read. A user still without a state after a 201 is `notApplied`: named loudly
//! with the invitation's request id and moved to `failed` / `NotApplied` so `retry` invites it
//! again — never silently counted as converted.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use super::common;
use crate::cli::TrackArgs;
use crate::exit::ExitStatus;
use crate::item::RunMode;
use crate::model::User;
use crate::queue::threads;
use crate::queue::track::{TrackResult, TrackTarget, ACCEPTED};
use crate::queue::{CredentialFacts, Queue};
use crate::workers::executor::UsersById;

/// Items read from the queue at a time: ten full `$batch` requests.
const CHUNK: usize = 3_000;

pub async fn track(db: &Path, args: TrackArgs) -> anyhow::Result<ExitStatus> {
    let queue = Arc::new(Queue::open_existing(db)?);
    let run = common::pick_live_run(&queue, args.run_id)?;
    common::require_live(&run, "nobody was converted, there is nothing to track")?;
    let graph = common::sign_in(&args.sign_in, &queue, &run, RunMode::Live).await?;

    let _driving = threads::driving_tasks();
    let run_id = run.id;
    let track_id = threads::db(&queue, move |q| q.start_track(run_id)).await?;
    let mut after = 0;
    let mut not_applied = 0u64;
    loop {
        let targets = threads::db(&queue, move |q| q.track_targets(run_id, after, CHUNK)).await?;
        let Some(last) = targets.last() else { break };
        after = last.item_id;
        let ids: Vec<String> = targets.iter().map(|t| t.user_id.clone()).collect();
        let by_id = UsersById::read(&graph, &ids).await.with_context(|| {
            format!(
                "reading run {}'s converted users (`track` can simply be run again)",
                run.id
            )
        })?;
        let results: Vec<TrackResult> = targets
            .iter()
            .map(|t| classify(t, by_id.get(&t.user_id), run.id))
            .collect();
        for (target, result) in targets.iter().zip(&results) {
            match result {
                TrackResult::NotApplied { message, .. } => {
                    not_applied += 1;
                    tracing::error!(
                        user_id = target.user_id,
                        user_principal_name = target.user_principal_name,
                        request_id = target.trace.request_id,
                        "invitation answered 201 but never took effect"
                    );
                    eprintln!(
                        "NOT APPLIED: {} ({}): {message}",
                        target.user_principal_name.as_deref().unwrap_or("?"),
                        target.user_id
                    );
                }
                TrackResult::Missing { .. } => tracing::warn!(
                    user_id = target.user_id,
                    "converted user no longer exists in the tenant"
                ),
                TrackResult::Seen { .. } => {}
            }
        }
        threads::db(&queue, move |q| q.record_track_results(track_id, &results)).await?;
        // Synced users' on-premises retirement shows as a password change after redemption.
        let facts: Vec<CredentialFacts> = targets
            .iter()
            .filter_map(|t| {
                let u = by_id.get(&t.user_id)?;
                Some(CredentialFacts {
                    item_id: t.item_id,
                    synced: u.on_premises_sync_enabled == Some(true),
                    password_changed_at: u.last_password_change_date_time.clone(),
                    seen: None,
                })
            })
            .collect();
        threads::db(&queue, move |q| q.record_credentials(&facts)).await?;
    }
    let counts = threads::db(&queue, move |q| q.finish_track(track_id)).await?;
    if args.json {
        let v = serde_json::json!({
            "runId": run.id,
            "accepted": counts.accepted,
            "pendingAcceptance": counts.pending,
            "notApplied": counts.not_applied,
            "missing": counts.missing,
        });
        println!("{v}");
    } else {
        println!(
            "run {} tracked: {} accepted, {} pending acceptance, {} not applied, {} no longer in the tenant",
            run.id, counts.accepted, counts.pending, counts.not_applied, counts.missing
        );
    }
    if not_applied > 0 && args.json {
        return Ok(ExitStatus::NeedsAttention);
    }
    if not_applied > 0 {
        println!(
            "{not_applied} invitations never took effect: they are now failed/NotApplied; \
             `b2b-convert retry {}` invites them again",
            run.id
        );
        return Ok(ExitStatus::NeedsAttention);
    }
    Ok(ExitStatus::Success)
}

/// What one re-read says about one converted item. Pure: the decision `track` records.
pub fn classify(target: &TrackTarget, user: Option<&User>, run_id: i64) -> TrackResult {
    let Some(user) = user else {
        return TrackResult::Missing {
            item_id: target.item_id,
        };
    };
    match user
        .external_user_state
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        Some(state) => TrackResult::Seen {
            item_id: target.item_id,
            state: if state.eq_ignore_ascii_case(ACCEPTED) {
                ACCEPTED.to_string()
            } else {
                state.to_string()
            },
            changed_at: user.external_user_state_change_date_time.clone(),
        },
        None => TrackResult::NotApplied {
            item_id: target.item_id,
            message: format!(
                "Graph accepted the invitation (request-id {}, client-request-id {}) but the \
                 user's externalUserState is still empty: the conversion never took effect; \
                 `b2b-convert retry {run_id}` invites the user again",
                target.trace.request_id.as_deref().unwrap_or("unknown"),
                target
                    .trace
                    .client_request_id
                    .as_deref()
                    .unwrap_or("unknown"),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Trace;

    fn target() -> TrackTarget {
        TrackTarget {
            item_id: 7,
            user_id: "u1".into(),
            user_principal_name: Some("u1@contoso.com".into()),
            trace: Trace {
                request_id: Some("req-9".into()),
                client_request_id: Some("crid-9".into()),
            },
        }
    }

    fn user(state: Option<&str>, at: Option<&str>) -> User {
        User {
            id: "u1".into(),
            external_user_state: state.map(str::to_string),
            external_user_state_change_date_time: at.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn every_kind_of_reread_is_classified() {
        let at = Some("2026-11-20T10:00:00Z");
        let rows: Vec<(Option<User>, &str)> = vec![
            (Some(user(Some("Accepted"), at)), "seen Accepted"),
            (Some(user(Some("accepted"), at)), "seen Accepted"),
            (
                Some(user(Some("PendingAcceptance"), at)),
                "seen PendingAcceptance",
            ),
            (Some(user(None, None)), "not applied"),
            (Some(user(Some(""), None)), "not applied"),
            (Some(user(Some("  "), None)), "not applied"),
            (None, "missing"),
        ];
        for (u, expected) in rows {
            let got = match classify(&target(), u.as_ref(), 3) {
                TrackResult::Seen {
                    item_id: 7,
                    state,
                    changed_at,
                } => {
                    assert_eq!(changed_at.as_deref(), at);
                    format!("seen {state}")
                }
                TrackResult::NotApplied {
                    item_id: 7,
                    message,
                } => {
                    assert!(message.contains("req-9"), "{message}");
                    assert!(message.contains("retry 3"), "{message}");
                    "not applied".into()
                }
                TrackResult::Missing { item_id: 7 } => "missing".into(),
                other => panic!("wrong item: {other:?}"),
            };
            assert_eq!(got, expected, "{u:?}");
        }
    }
}
