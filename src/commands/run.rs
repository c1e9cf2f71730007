//! `run`: ingest a source into a new run, then validate and convert.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use super::common::{self, Endpoints, RequestLog};
use crate::cli::RunArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::graph::Credentials;
use crate::item::{RunMode, RunOptions, SourceSpec};
use crate::queue::Queue;

/// Everything a new run needs, resolved from flags (or built by `demo`).
pub struct NewRun {
    pub source: SourceSpec,
    pub mode: RunMode,
    pub options: RunOptions,
    pub endpoints: Endpoints,
    pub yes: bool,
    pub report: Option<PathBuf>,
    /// `--only`: the names of the users this invocation works (read before the run exists).
    pub only: Option<Vec<String>>,
}

pub async fn run(db: &Path, args: RunArgs) -> anyhow::Result<ExitStatus> {
    let auth = args.exec.sign_in.auth;
    let new = from_args(args)?;
    common::require_consent_possible(new.mode, new.yes)?;
    let credentials = Credentials::resolve(auth)?;
    start(db, new, credentials).await
}

fn from_args(args: RunArgs) -> anyhow::Result<NewRun> {
    let source = match (args.source.csv, args.source.filter, args.source.group) {
        (Some(path), None, None) => {
            if args.transitive {
                return Err(ExitError::usage("--transitive goes with --group").into());
            }
            SourceSpec::Csv {
                path: path.to_string_lossy().into_owned(),
            }
        }
        (None, Some(filter), None) => SourceSpec::Filter { filter },
        (None, None, Some(id)) => SourceSpec::Group {
            id,
            transitive: args.transitive,
        },
        _ => return Err(ExitError::usage("give exactly one of --csv, --filter, --group").into()),
    };
    let message_body = match &args.message_file {
        Some(p) => Some(common::read_message_file(p)?),
        None => None,
    };
    if let Some(cc) = &args.cc {
        if let Some(problem) = crate::validate::email_syntax_error(cc) {
            return Err(ExitError::usage(format!("--cc {cc}: {problem}")).into());
        }
    }
    if !(args.redirect_url.starts_with("https://") || args.redirect_url.starts_with("http://")) {
        return Err(ExitError::usage("--redirect-url must be an http(s) URL").into());
    }
    let defaults = RunOptions::default();
    let options = RunOptions {
        silent: args.silent,
        redirect_url: args.redirect_url,
        message_language: args.message_language,
        message_body,
        cc: args.cc,
        rate: args.exec.rate.unwrap_or(defaults.rate),
        settle_rate: args.exec.settle_rate,
        read_budget: args.exec.read_budget,
        read_by_key: args.exec.read_by_key,
        concurrency: args.exec.concurrency.unwrap_or(defaults.concurrency),
        max_attempts: args.exec.max_attempts.unwrap_or(defaults.max_attempts),
        http_retries: args.exec.http_retries.unwrap_or(defaults.http_retries),
        limit: args.exec.limit.filter(|l| *l > 0),
        only: None,
        set_mail: args.exec.set_mail,
        set_guest: args.exec.set_guest,
        keep_redeem_links: args.exec.keep_redeem_links,
    };
    common::check_options(&options)?;
    let only = common::read_only(args.exec.only.as_deref())?;
    let options = RunOptions {
        only: only.as_ref().map(|names| names.len() as u64),
        ..options
    };
    Ok(NewRun {
        source,
        mode: if args.dry_run {
            RunMode::DryRun
        } else {
            RunMode::Live
        },
        options,
        endpoints: Endpoints::new(
            args.exec.sign_in.endpoints.graph_url(),
            args.exec.sign_in.endpoints.login_url(),
        )
        .with_timeouts(&args.exec),
        yes: args.exec.yes,
        report: args.exec.report,
        only,
    })
}

/// Creates the run, ingests its source and executes it.
pub async fn start(db: &Path, new: NewRun, credentials: Credentials) -> anyhow::Result<ExitStatus> {
    if let SourceSpec::Csv { path } = &new.source {
        // An input the tool cannot use at all is refused before a run exists (exit 2).
        crate::source::csv::check_header(Path::new(path))
            .map_err(|e| ExitError::usage(format!("--csv {e}")))?;
    }
    let tenant_id = credentials.tenant_id().map(str::to_string);
    let graph = common::connect(&new.endpoints, credentials, &new.options, new.mode)?;
    graph.authenticate().await?;
    // The run belongs to the tenant this token is for, recorded when it is created.
    let tenant = super::tenant::signed_in(&graph, tenant_id.as_deref())
        .await?
        .identity;
    if tenant.is_none() {
        eprintln!(
            "warning: the sign-in names no tenant id (a token without a `tid` claim): this run \
             cannot be bound to its tenant, and later commands cannot check it"
        );
    }
    let group = matches!(new.source, SourceSpec::Group { .. });
    super::preflight::require_ready(
        &graph,
        &super::preflight::needs_of(new.mode, &new.options, group),
    )
    .await?;
    // A Graph query is checked before anything is queued: an unsupported filter or an unknown
    // group is a usage error, not a run.
    let first_page = match &new.source {
        SourceSpec::Csv { .. } => None,
        source => Some(
            crate::source::ingest::fetch_page(&graph, source, None)
                .await
                .map_err(query_error)?,
        ),
    };
    let queue = Arc::new(Queue::open(db)?);
    let (run_id, lease) = queue.create_leased_run(
        crate::queue::NewRun {
            source: &new.source,
            mode: new.mode,
            options: &new.options,
            tenant_id: tenant_id.as_deref(),
            graph_url: &new.endpoints.graph_url,
        },
        tenant.as_ref(),
    )?;
    println!("run-id: {run_id}");
    std::io::stdout().flush()?;
    let graph = graph.with_observer(Arc::new(RequestLog {
        queue: queue.clone(),
        run_id,
    }));
    let run = queue.run(run_id)?.context("the new run vanished")?;
    let summary = crate::source::ingest::ingest(&queue, &run, &graph, first_page).await?;
    tracing::info!(
        run_id,
        pending = summary.stats.pending,
        bad_input = summary.stats.bad_input,
        duplicate_user = summary.stats.duplicate_user,
        duplicate_email = summary.duplicate_email,
        "source ingested"
    );
    let run = queue.run(run_id)?.context("the new run vanished")?;
    let scope = match common::Scope::of(&queue, &graph, &run, new.only.as_deref()).await {
        Ok(scope) => scope,
        Err(e) => {
            // A name matching nobody of the run: nothing was sent, and no half-started run stays.
            drop(lease);
            queue.discard_run(run_id)?;
            return Err(e);
        }
    };
    if new.mode == RunMode::Live
        && !new.yes
        && scope.users > 0
        && !common::confirm(&run, scope.users)?
    {
        // Nothing was sent, and a declined run must not be started by a later bare `resume`.
        drop(lease);
        queue.discard_run(run_id)?;
        println!("run {run_id} removed");
        return Err(common::declined());
    }
    common::execute(queue, &lease, run, graph, new.report.as_deref(), scope).await
}

/// An input the tool cannot use at all (no file, no header, no key column) is refused before a
/// run exists: exit 2, nothing stored. Bad rows are not checked here; they become items.
/// Graph's refusal of a query (400 unsupported filter, 404 unknown group) is the operator's
/// input being wrong: a usage error.
fn query_error(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<crate::graph::GraphError>() {
        Some(crate::graph::GraphError::Api {
            status,
            code,
            message,
            ..
        }) if (400..500).contains(status) => ExitError::usage(format!(
            "Graph refused the query ({status} {code}): {message}"
        ))
        .into(),
        _ => e,
    }
}
