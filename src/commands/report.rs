//! `report`: write a run's report from the database alone (any past run, from any machine),
//! streamed: aggregates by query, every item row by row.

use std::path::Path;

use super::common;
use super::restore::put_back_changes;
use crate::cli::{ReportArgs, ReportFormat};
use crate::exit::{ExitError, ExitStatus};
use crate::item::{ItemExtras, ItemRecord, ItemState};
use crate::queue::Queue;
use crate::report::{self, ItemSource, ReportData};

pub fn report(db: &Path, args: ReportArgs) -> anyhow::Result<ExitStatus> {
    let queue = Queue::open_existing_read_only(db)?;
    common::pick_run(&queue, Some(args.run_id))?;
    write(&queue, args.run_id, &args.out, args.format)?;
    println!("report: {}", args.out.display());
    Ok(ExitStatus::Success)
}

/// Renders the run and writes it to `path` (format from the extension unless given).
pub fn write(
    queue: &Queue,
    run_id: i64,
    path: &Path,
    format: Option<ReportFormat>,
) -> anyhow::Result<()> {
    let format = format.or_else(|| report::format_from_path(path)).ok_or_else(|| {
        ExitError::usage(format!(
            "{}: cannot tell the report format from the extension; use .md, .html, .csv or .json, or --format",
            path.display()
        ))
    })?;
    let run = common::pick_run(queue, Some(run_id))?;
    let live = run.mode == crate::item::RunMode::Live;
    let run_plan = run.plan_run_id;
    let data = ReportData {
        run,
        counts: queue.counts(run_id)?,
        items: queue.attention_items(run_id)?,
        overridden: queue.overridden_count(run_id)?,
        active_seconds: queue.active_seconds(run_id)?,
        pace: if live {
            queue.pace(run_id)?
        } else {
            Vec::new()
        },
        follow_ups: queue.follow_up_counts(run_id)?,
        redemption: if live {
            Some(report::Redemption {
                counts: queue.redemption_counts(run_id)?,
                tracks: queue.track_history(run_id)?,
                timeline: queue.redemption_timeline(run_id)?,
                not_redeemed: queue.not_redeemed(run_id, report::NOT_REDEEMED_LISTED)?,
            })
        } else {
            None
        },
        retired: if live {
            Some(queue.retired_counts(run_id)?)
        } else {
            None
        },
        left_to_do: queue.left_to_do(
            run_id,
            if live {
                ItemState::Converted
            } else {
                ItemState::WouldConvert
            },
        )?,
        plan: match run_plan {
            Some(id) => Some(report::PlanRef {
                run_id: id,
                finished_at: queue.run(id)?.and_then(|p| p.finished_at),
            }),
            None => None,
        },
        option_history: queue.option_history(run_id)?,
        backout: backout_done(queue, run_id)?,
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Written beside the target and renamed into place: a reader never sees half a report.
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let written = (|| -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(crate::queue::open_private(&partial)?);
        report::write(format, &data, &RunItems { queue, run_id }, &mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&partial, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(anyhow::anyhow!("{}: {e}", path.display()));
    }
    Ok(())
}

/// The full item list of one run, streamed from the queue for the CSV and JSON reports.
struct RunItems<'a> {
    queue: &'a Queue,
    run_id: i64,
}

impl ItemSource for RunItems<'_> {
    fn each(
        &self,
        f: &mut dyn FnMut(&ItemRecord, &ItemExtras) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.queue.for_each_item(self.run_id, f)
    }
}

/// What `restore` and `rollback` finished for the run, at most [`report::NOT_REDEEMED_LISTED`]
/// users of each listed.
fn backout_done(queue: &Queue, run_id: i64) -> anyhow::Result<report::BackoutDone> {
    use crate::queue::backout::{BackoutKind, BackoutState};
    let list = |kind: BackoutKind| -> anyhow::Result<(Vec<report::BackoutUser>, u64)> {
        let done = queue.backout_entries(run_id, kind, Some(BackoutState::Done))?;
        let total = done.len() as u64;
        let users = done
            .into_iter()
            .take(report::NOT_REDEEMED_LISTED)
            .map(|e| {
                let mut what = put_back_changes(
                    &e.put_back,
                    |to| format!("userType back to {to}"),
                    |_tool, before| format!("mail back to {before}"),
                );
                if kind == BackoutKind::Rollback {
                    what.push(format!(
                        "internal member again since {}",
                        e.converted_back_at
                            .as_deref()
                            .or(e.finished_at.as_deref())
                            .unwrap_or("(unknown)")
                    ));
                }
                report::BackoutUser {
                    user: e
                        .user
                        .user_principal_name
                        .or(e.user.user_id)
                        .unwrap_or_default(),
                    what: what.join(", "),
                }
            })
            .collect();
        Ok((users, total))
    };
    let (restored, restored_total) = list(BackoutKind::Restore)?;
    let (rolled_back, rolled_back_total) = list(BackoutKind::Rollback)?;
    Ok(report::BackoutDone {
        restored,
        restored_total,
        rolled_back,
        rolled_back_total,
    })
}
