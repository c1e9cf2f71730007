//! `report`: write a run's report from the database alone (any past run, from any machine).

use std::path::Path;

use super::common;
use crate::cli::{ReportArgs, ReportFormat};
use crate::exit::{ExitError, ExitStatus};
use crate::queue::Queue;
use crate::report::{self, ReportData};

pub fn report(db: &Path, args: ReportArgs) -> anyhow::Result<ExitStatus> {
    let queue = Queue::open_existing(db)?;
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
    let data = ReportData {
        run: common::pick_run(queue, Some(run_id))?,
        counts: queue.counts(run_id)?,
        items: queue.items(run_id)?,
        generated_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    crate::queue::write_private(path, report::render(format, &data).as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}
