//! Read-only redemption aggregates (issue 10): what `status`, the reports and `export-links`
//! show of the runs' redemption, from what `track` stored. SQL only, and no writes.

use rusqlite::params;

use super::pass::{PassUser, PASS_USER_COLUMNS};
use super::resend::ResendState;
use super::track::{TrackCounts, ACCEPTED, NOT_APPLIED, PENDING_ACCEPTANCE, TRACK_COUNT_COLUMNS};
use super::{Queue, Result};
use crate::item::ItemState;

/// `status --json`'s `redemption` object and `lastTrackedAt`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedemptionCounts {
    pub pending_acceptance: u64,
    pub accepted: u64,
    /// Items `track` moved to `failed` / `NotApplied` that are still there (not yet retried).
    pub not_applied: u64,
    /// Converted items no `track` has read yet (or whose user has vanished).
    pub untracked: u64,
    pub last_tracked_at: Option<String>,
}

/// One `track` invocation, for the redemption chart over time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackPass {
    pub id: i64,
    pub started_at: String,
    pub finished_at: Option<String>,
    #[serde(flatten)]
    pub counts: TrackCounts,
}

/// Redemptions on one day (UTC), from Graph's own change times of the accepted users.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedemptionDay {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub accepted: u64,
    /// Accepted up to and including this day.
    pub cumulative: u64,
}

/// A converted user who has not redeemed (yet), per the last `track`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotRedeemed {
    #[serde(flatten)]
    pub user: PassUser,
    /// When the item became `converted`.
    pub invited_at: Option<String>,
    /// `PendingAcceptance`, or `None` when never tracked.
    pub external_user_state: Option<String>,
    pub external_user_state_changed_at: Option<String>,
    /// When the last `resend` pass re-invited the user, if one did.
    pub last_resent_at: Option<String>,
}

/// One line of `export-links`. Holds a credential-like URL: never log it.
#[derive(Clone, PartialEq, Eq)]
pub struct RedeemLink {
    pub user_principal_name: Option<String>,
    pub external_email: Option<String>,
    pub invite_redeem_url: String,
}

impl std::fmt::Debug for RedeemLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedeemLink")
            .field("user_principal_name", &self.user_principal_name)
            .field("external_email", &self.external_email)
            .field("invite_redeem_url", &"<redacted>")
            .finish()
    }
}

/// Whether the item's run keeps redeem links (`RunOptions.keepRedeemLinks`); evaluated inside
/// the UPDATE so a URL is never written, not even transiently, for a run without the flag.
pub(super) const KEEP_LINKS: &str = "coalesce((SELECT json_extract(options, '$.keepRedeemLinks') \
    FROM runs WHERE runs.id = items.run_id), 0) = 1";

impl Queue {
    /// Redemption counts of the run as of the last `track` (docs/usage.md, "Machine-readable status").
    pub fn redemption_counts(&self, run_id: i64) -> Result<RedemptionCounts> {
        let conn = self.conn();
        let (pending, accepted, untracked, not_applied): (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT
                   coalesce(sum(state = ?2 AND external_user_state = ?3), 0),
                   coalesce(sum(state = ?2 AND external_user_state = ?4), 0),
                   coalesce(sum(state = ?2 AND (external_user_state IS NULL
                     OR external_user_state NOT IN (?3, ?4))), 0),
                   coalesce(sum(state = ?5 AND error_code = ?6), 0)
                 FROM items WHERE run_id = ?1",
                params![
                    run_id,
                    ItemState::Converted,
                    PENDING_ACCEPTANCE,
                    ACCEPTED,
                    ItemState::Failed,
                    NOT_APPLIED
                ],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(|e| self.err(e))?;
        let last_tracked_at: Option<String> = conn
            .query_row(
                "SELECT max(finished_at) FROM tracks WHERE run_id = ?1",
                [run_id],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(RedemptionCounts {
            pending_acceptance: pending as u64,
            accepted: accepted as u64,
            not_applied: not_applied as u64,
            untracked: untracked as u64,
            last_tracked_at,
        })
    }

    /// Every completed `track` of the run, oldest first: redemption counts over time.
    pub fn track_history(&self, run_id: i64) -> Result<Vec<TrackPass>> {
        self.select_rows(
            &format!(
                "SELECT id, started_at, finished_at, {TRACK_COUNT_COLUMNS}
                 FROM tracks WHERE run_id = ?1 AND finished_at IS NOT NULL ORDER BY id"
            ),
            [run_id],
            |r| {
                Ok(TrackPass {
                    id: r.get(0)?,
                    started_at: r.get(1)?,
                    finished_at: r.get(2)?,
                    counts: TrackCounts::from_row(r, 3)?,
                })
            },
        )
    }

    /// Redemptions per UTC day, from Graph's change times of the users `track` saw `Accepted`.
    pub fn redemption_timeline(&self, run_id: i64) -> Result<Vec<RedemptionDay>> {
        let rows: Vec<(String, u64)> = self.select_rows(
            "SELECT substr(external_user_state_changed_at, 1, 10) AS day, count(*)
             FROM items WHERE run_id = ?1 AND state = ?2
               AND external_user_state = ?3
               AND external_user_state_changed_at IS NOT NULL
             GROUP BY day ORDER BY day",
            params![run_id, ItemState::Converted, ACCEPTED],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)),
        )?;
        let mut cumulative = 0;
        Ok(rows
            .into_iter()
            .map(|(day, accepted)| {
                cumulative += accepted;
                RedemptionDay {
                    day,
                    accepted,
                    cumulative,
                }
            })
            .collect())
    }

    /// Converted users who have not redeemed per the last `track` (pending or never tracked),
    /// oldest invitation first, at most `limit`.
    pub fn not_redeemed(&self, run_id: i64, limit: usize) -> Result<Vec<NotRedeemed>> {
        self.select_rows(
            &format!(
                "SELECT {PASS_USER_COLUMNS}, i.invited_at,
                   i.external_user_state, i.external_user_state_changed_at,
                   (SELECT max(r.sent_at) FROM resends r WHERE r.item_id = i.id AND r.state = ?3)
                 FROM items i WHERE i.run_id = ?1 AND i.state = ?4
                   AND (i.external_user_state IS NULL OR i.external_user_state <> ?5)
                 ORDER BY i.invited_at, i.id LIMIT ?2"
            ),
            params![
                run_id,
                limit as i64,
                ResendState::Sent,
                ItemState::Converted,
                ACCEPTED
            ],
            |r| {
                Ok(NotRedeemed {
                    user: PassUser::from_row(r)?,
                    invited_at: r.get(4)?,
                    external_user_state: r.get(5)?,
                    external_user_state_changed_at: r.get(6)?,
                    last_resent_at: r.get(7)?,
                })
            },
        )
    }

    /// Redeem links of the run's converted users (only runs with `--keep-redeem-links` have any).
    pub fn redeem_links(&self, run_id: i64) -> Result<Vec<RedeemLink>> {
        self.select_rows(
            "SELECT user_principal_name, external_email, invite_redeem_url FROM items
             WHERE run_id = ?1 AND state = ?2 AND invite_redeem_url IS NOT NULL
             ORDER BY id",
            params![run_id, ItemState::Converted],
            |r| {
                Ok(RedeemLink {
                    user_principal_name: r.get(0)?,
                    external_email: r.get(1)?,
                    invite_redeem_url: r.get(2)?,
                })
            },
        )
    }
}
