//! Ingestion: a source's rows into a run's queue, in large transactions, each carrying the
//! source's cursor so an ingestion killed at any point resumes without losing or repeating a row.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use crate::graph::{GraphClient, Pager};
use crate::item::{NewItem, Overrides, RunRecord, SourceSpec, UserKey};
use crate::model::{Page, User};
use crate::progress::Progress;
use crate::queue::threads::db;
use crate::queue::{FinishStats, InsertStats, Queue};

/// Rows per transaction: large enough to make ingestion cheap, small enough to lose little.
const BATCH: usize = 5_000;

/// Marks a Graph listing whose last page was stored.
const LISTING_DONE: &str = "";

#[derive(Debug, Default, Clone)]
pub struct IngestSummary {
    pub stats: InsertStats,
    pub duplicate_email: u64,
    pub warnings: Vec<String>,
}

impl IngestSummary {
    fn add(&mut self, s: InsertStats) {
        self.stats.pending += s.pending;
        self.stats.bad_input += s.bad_input;
        self.stats.duplicate_user += s.duplicate_user;
    }

    /// `finish` counts the whole run; on a resume the rows stored before the kill are not in
    /// `pending`, hence the saturating subtraction.
    fn finish(&mut self, f: FinishStats) {
        self.stats.duplicate_user += f.duplicate_user;
        self.stats.pending = self.stats.pending.saturating_sub(f.duplicate_user);
        self.duplicate_email = f.duplicate_email;
    }
}

/// Ingests (or finishes ingesting) the run's source. `first_page` is a listing page the caller
/// already fetched to check the query before creating the run.
pub async fn ingest(
    queue: &Arc<Queue>,
    run: &RunRecord,
    graph: &GraphClient,
    first_page: Option<Page<User>>,
) -> anyhow::Result<IngestSummary> {
    if run.ingest_complete {
        return Ok(IngestSummary::default());
    }
    let _driving = crate::queue::threads::driving_tasks();
    let mut summary = match &run.source {
        SourceSpec::Csv { path } => {
            let queue = queue.clone();
            let path = path.clone();
            let run_id = run.id;
            crate::queue::threads::blocking(move || ingest_csv(&queue, run_id, Path::new(&path)))
                .await
                .context("CSV ingestion task panicked")??
        }
        SourceSpec::Filter { .. } | SourceSpec::Group { .. } => {
            ingest_listing(queue, run, graph, first_page).await?
        }
    };
    let run_id = run.id;
    summary.finish(db(queue, move |q| q.finish_ingest(run_id)).await?);
    Ok(summary)
}

pub fn ingest_csv(queue: &Queue, run_id: i64, path: &Path) -> anyhow::Result<IngestSummary> {
    let cursor: u64 = queue
        .ingest_cursor(run_id)?
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut source = crate::source::CsvSource::open(path, cursor)?;
    let mut summary = IngestSummary {
        warnings: source.warnings().to_vec(),
        ..Default::default()
    };
    for w in &summary.warnings {
        tracing::warn!("{w}");
    }
    let progress = Progress::new("reading", source.total_bytes());
    let mut batch = Vec::with_capacity(BATCH);
    let mut last_line = cursor;
    loop {
        let next = source.next().transpose()?;
        if let Some(item) = &next {
            last_line = item.line.unwrap_or(last_line);
        }
        let end = next.is_none();
        batch.extend(next);
        if batch.len() >= BATCH || (end && !batch.is_empty()) {
            summary.add(queue.insert_items(run_id, &batch, Some(&last_line.to_string()))?);
            batch.clear();
            progress.set_position(source.bytes_read());
        }
        if end {
            break;
        }
    }
    progress.finish();
    Ok(summary)
}

async fn ingest_listing(
    queue: &Arc<Queue>,
    run: &RunRecord,
    graph: &GraphClient,
    first_page: Option<Page<User>>,
) -> anyhow::Result<IngestSummary> {
    let mut summary = IngestSummary::default();
    let fetch =
        |link: Option<String>| async move { fetch_page(graph, &run.source, link.as_deref()).await };
    // Resuming mid-listing, the page fetched to check the query is not the next one.
    let run_id = run.id;
    let mut pages = match db(queue, move |q| q.ingest_cursor(run_id)).await? {
        Some(done) if done == LISTING_DONE => Pager::finished(fetch),
        Some(link) => Pager::resume(Some(link), fetch),
        None => Pager::new(fetch).with_first_page(first_page),
    };
    let progress = Progress::new("listing", 0);
    while let Some(page) = pages.next_page().await? {
        let next = page
            .next_link
            .clone()
            .unwrap_or_else(|| LISTING_DONE.to_string());
        let items: Vec<NewItem> = page.value.into_iter().map(listed_user).collect();
        progress.inc(items.len() as u64);
        summary.add(db(queue, move |q| q.insert_items(run_id, &items, Some(&next))).await?);
    }
    progress.finish();
    Ok(summary)
}

/// Fetches one page of the run's Graph query (`link` = the stored nextLink, `None` = first).
pub async fn fetch_page(
    graph: &GraphClient,
    source: &SourceSpec,
    link: Option<&str>,
) -> anyhow::Result<Page<User>> {
    let page = match source {
        SourceSpec::Filter { filter } => graph.list_users_page(filter, link).await,
        SourceSpec::Group { id, transitive } => {
            graph.group_members_page(id, *transitive, link).await
        }
        SourceSpec::Csv { .. } => unreachable!("CSV sources are not listed"),
    };
    Ok(page?)
}

/// A user returned by a listing already carries every property validation needs, so the
/// snapshot is stored now and the user is never fetched again.
fn listed_user(user: User) -> NewItem {
    NewItem {
        line: None,
        key: Some(UserKey::Id(user.id.clone())),
        external_email: None,
        overrides: Overrides::default(),
        bad_input: None,
        snapshot: Some(user),
    }
}
