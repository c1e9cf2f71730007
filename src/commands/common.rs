//! What `run`, `resume`, `retry` and `demo` share: connecting to Graph, executing a run's queue
//! with signal handling (SIGINT, SIGTERM and SIGHUP alike), and turning the result into the exit
//! code. And what the passes over a run's users (`resend`, `retire`, `restore`, `rollback`)
//! share: signing in, choosing who `--only` and `--limit` name, working the pass under the lease
//! ([`PassRun`]) and the exit status of its end ([`pass_exit`]).

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::cli::ExecArgs;
use crate::exit::{ExitError, ExitStatus};
use crate::graph::{
    Credentials, GraphClient, GraphConfig, Limiter, ReadBudget, RequestEvent, RequestObserver,
};
use crate::item::{ItemState, RequestRecord, RunMode, RunOptions, RunRecord, RunStatus};
use crate::progress::Progress;
use crate::queue::pass::{PassTable, PassUser};
use crate::queue::{Queue, RunLease};
use crate::source::only::OnlyList;
use crate::workers::executor::{work_entries, EntryWork, PassContext, PassEnd, PassScope};
use crate::workers::planner::StopReason;
use crate::workers::{self, Outcome, Pipeline};

/// Graph and token endpoints of one invocation.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub graph_url: String,
    pub login_url: String,
    /// `--http-timeout`: how long one request waits for its answer (`None`: the default).
    pub http_timeout: Option<std::time::Duration>,
    /// Hidden `--unreachable-after`: how long connections that cannot open are retried before the
    /// run stops resumable (`None`: the default, about 45 s).
    pub unreachable_after: Option<std::time::Duration>,
}

impl Endpoints {
    /// Graph and the token endpoint at these addresses, with the default timeouts.
    pub fn new(graph_url: String, login_url: String) -> Endpoints {
        Endpoints {
            graph_url,
            login_url,
            http_timeout: None,
            unreachable_after: None,
        }
    }

    /// With the timeouts `run`, `resume` and `retry` were given (`--http-timeout`, the hidden
    /// `--unreachable-after`); they are not stored with the run.
    pub fn with_timeouts(self, exec: &ExecArgs) -> Endpoints {
        let secs = |s: Option<u64>| s.map(std::time::Duration::from_secs);
        Endpoints {
            http_timeout: secs(exec.http_timeout),
            unreachable_after: secs(exec.unreachable_after),
            ..self
        }
    }
}

/// Builds the run's Graph client (one limiter for all its workers). Fails on bad endpoints or
/// incomplete credentials: exit 1 with the cause.
pub fn connect(
    endpoints: &Endpoints,
    credentials: Credentials,
    options: &RunOptions,
    mode: RunMode,
) -> anyhow::Result<GraphClient> {
    let config = GraphConfig {
        graph_url: endpoints.graph_url.clone(),
        login_url: endpoints.login_url.clone(),
        credentials,
        request_timeout: endpoints
            .http_timeout
            .unwrap_or(crate::config::DEFAULT_HTTP_TIMEOUT),
        http_retries: options.http_retries,
        not_sent_retry_for: endpoints
            .unreachable_after
            .unwrap_or(crate::config::DEFAULT_NOT_SENT_RETRY_FOR),
        ca_file: crate::graph::ca_file_from_env(),
    };
    let settle = options
        .settle_rate
        .unwrap_or(crate::config::DEFAULT_SETTLE_RATE);
    let limiter = Limiter::pacing(options.rate, settle);
    let budget = ReadBudget::new(
        options
            .read_budget
            .unwrap_or(crate::config::DEFAULT_READ_BUDGET),
    );
    Ok(GraphClient::new(config, limiter)?
        .with_read_budget(budget)
        .with_batching(mode == RunMode::Live))
}

/// Signs in for work on a stored run: its Graph client logs every request into the run's request
/// table, and the token is fetched now so a bad credential stops before anything else.
pub async fn connect_to_run(
    endpoints: &Endpoints,
    credentials: Credentials,
    queue: &Arc<Queue>,
    run: &RunRecord,
    mode: RunMode,
) -> anyhow::Result<GraphClient> {
    let credentials_tenant = credentials.tenant_id().map(str::to_string);
    let graph =
        connect(endpoints, credentials, &run.options, mode)?.with_observer(Arc::new(RequestLog {
            queue: queue.clone(),
            run_id: run.id,
        }));
    graph.authenticate().await?;
    // Runs belong to their tenant: nothing beyond sign-in and domains before this check.
    super::tenant::check_run_tenant(&graph, queue, run, credentials_tenant.as_deref()).await?;
    Ok(graph)
}

/// Logs every Graph request of a run into the queue's append-only request table.
pub struct RequestLog {
    pub queue: Arc<Queue>,
    pub run_id: i64,
}

impl RequestObserver for RequestLog {
    fn on_request(&self, ev: &RequestEvent) {
        let rec = RequestRecord {
            run_id: self.run_id,
            item_id: None,
            method: ev.method.clone(),
            path: ev.path.clone(),
            status: ev.status,
            client_request_id: ev.client_request_id.clone(),
            request_id: ev.request_id.clone(),
            duration_ms: ev.duration.as_millis() as u64,
            error: ev.error.clone(),
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        };
        if let Err(e) = self.queue.log_request(&rec, ev.throttled, ev.attempt) {
            tracing::warn!(error = %e, "could not log a Graph request");
        }
    }
}

/// Applies `resume`/`retry` overrides of how the work is done to the stored options.
pub fn apply_exec(options: &mut RunOptions, exec: &ExecArgs) -> anyhow::Result<()> {
    if let Some(rate) = exec.rate {
        options.rate = rate;
    }
    if let Some(settle) = exec.settle_rate {
        options.settle_rate = Some(settle);
    }
    if let Some(budget) = exec.read_budget {
        options.read_budget = Some(budget);
    }
    if exec.read_by_key {
        options.read_by_key = true;
    }
    if let Some(c) = exec.concurrency {
        options.concurrency = c;
    }
    if let Some(m) = exec.max_attempts {
        options.max_attempts = m;
    }
    if let Some(r) = exec.http_retries {
        options.http_retries = r;
    }
    // `--limit` counts users of this invocation: a `resume` without it works every pending
    // user, never a limit an earlier pilot left behind (`--limit 0` still means none).
    options.limit = exec.limit.filter(|l| *l > 0);
    // Follow-up steps can be added on resume, never dropped: items half-way through keep theirs.
    options.set_mail |= exec.set_mail;
    options.set_guest |= exec.set_guest;
    if exec.keep_redeem_links {
        options.keep_redeem_links = true;
    }
    check_options(options)
}

/// Reads `--message-file`, never more than [`crate::config::MAX_MESSAGE_BYTES`] plus one byte:
/// a wrong path (`/dev/zero`, a huge log) is refused at once instead of filling memory.
pub fn read_message_file(path: &Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let limit = crate::config::MAX_MESSAGE_BYTES;
    let fail = |why: String| ExitError::usage(format!("--message-file {}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() > limit {
        return Err(fail(format!(
            "longer than {} KiB; an invitation message must be shorter",
            limit / 1024
        ))
        .into());
    }
    String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()).into())
}

pub fn check_options(options: &RunOptions) -> anyhow::Result<()> {
    if let Some(tag) = &options.message_language {
        if !crate::validate::is_language_tag(tag) {
            return Err(ExitError::usage(format!(
                "--message-language {tag:?} is not a BCP 47 language tag like en-US or zh-Hans-CN"
            ))
            .into());
        }
    }
    if !(options.rate.is_finite() && options.rate > 0.0) {
        return Err(
            ExitError::usage("--rate must be a positive number of requests per second").into(),
        );
    }
    if options.concurrency == 0 || options.concurrency > 256 {
        return Err(ExitError::usage("--concurrency must be between 1 and 256").into());
    }
    if options.max_attempts == 0 {
        return Err(ExitError::usage("--max-attempts must be at least 1").into());
    }
    Ok(())
}

/// A live run asks before touching anyone; without a terminal it needs `--yes`.
pub fn require_consent_possible(mode: RunMode, yes: bool) -> anyhow::Result<()> {
    if mode == RunMode::Live && !yes && !std::io::stdin().is_terminal() {
        return Err(ExitError::usage(
            "a live run needs confirmation: run it from a terminal, or pass --yes",
        )
        .into());
    }
    Ok(())
}

/// Asks before a live invocation touches anyone, naming the tenant by domain and id and the
/// number of users this invocation will work (`--limit`/`--only` applied), never the run's total.
pub fn confirm(run: &RunRecord, users: u64) -> anyhow::Result<bool> {
    let tenant = match (&run.tenant, &run.tenant_id) {
        (Some(t), _) => t.to_string(),
        (None, Some(t)) => format!("{t} (not verified: the run recorded no tenant id)"),
        (None, None) => "(unknown: the run recorded no tenant)".to_string(),
    };
    confirm_pass(&format!(
        "About to CONVERT up to {users} users of tenant {tenant} to B2B collaboration (run {}, source {}).\n\
         The conversion is one-way. Invitation emails: {}.",
        run.id,
        run.source,
        if run.options.silent { "not sent (--silent)" } else { "sent" },
    ))
}

/// Whether a pass's [`StopWatch`] is listening for signals (it then stops the pass cleanly).
static PASS_LISTENING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Until a pass's workers listen, the first SIGINT, SIGTERM or SIGHUP ends the process at once,
/// exit 130: before the workers start nothing is on the wire (sign-in, reading the source into
/// the queue are transactions a later `resume` continues). Registered at the start of every
/// command that works a run, because once tokio listens for a signal the default disposition
/// never comes back: without this a SIGTERM during sign-in would be ignored, or end the process
/// with 143 before the handler exists.
pub fn stop_at_once_until_a_pass_listens() -> anyhow::Result<()> {
    let mut signals = Signals::new().context("cannot listen for SIGINT, SIGTERM and SIGHUP")?;
    tokio::spawn(async move {
        loop {
            let name = signals.next().await;
            if !PASS_LISTENING.load(std::sync::atomic::Ordering::SeqCst) {
                crate::progress::suspend(|| {
                    eprintln!(
                        "\n{name}: stopped before any request of the pass was on the wire; \
                         `b2b-convert resume` continues a run already created"
                    )
                });
                std::process::exit(ExitStatus::Interrupted.code());
            }
        }
    });
    Ok(())
}

/// How a pass is told to stop: the first SIGINT, SIGTERM or SIGHUP (all alike, see
/// docs/reliability.md) or the run's lease lost to another process. A signal prints `stopping`
/// with what continues the pass; a second one within [`SECOND_SIGNAL_WINDOW`] exits at once
/// (130). Dropping the watch hands the signals back to [`stop_at_once_until_a_pass_listens`].
pub struct StopWatch {
    pub stop: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StopWatch {
    /// `continues` ends the `stopping` line, e.g. "`resume` is safe either way".
    pub fn start(lease: &RunLease, continues: String) -> anyhow::Result<StopWatch> {
        let (stop_tx, stop) = watch::channel(false);
        let lost = lease.lost_flag();
        let mut signals = Signals::new().context("cannot listen for SIGINT, SIGTERM and SIGHUP")?;
        PASS_LISTENING.store(true, std::sync::atomic::Ordering::SeqCst);
        let task = tokio::spawn(async move {
            let lease_lost = async {
                while !lost.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            };
            tokio::select! {
                name = signals.next() => {
                    crate::progress::suspend(|| {
                        eprintln!(
                            "\n{name}: stopping: finishing the requests on the wire and checkpointing (a second signal within {} s quits at once); {continues}",
                            SECOND_SIGNAL_WINDOW.as_secs()
                        )
                    });
                    let _ = stop_tx.send(true);
                    signals.second().await;
                    std::process::exit(ExitStatus::Interrupted.code());
                },
                () = lease_lost => {
                    let _ = stop_tx.send(true);
                }
            }
        });
        Ok(StopWatch { stop, task })
    }
}

impl Drop for StopWatch {
    fn drop(&mut self) {
        self.task.abort();
        PASS_LISTENING.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A second signal this soon after the first quits at once; a later one only restarts the
/// window (docs/usage.md, "When a run stops").
pub const SECOND_SIGNAL_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGINT, SIGTERM and SIGHUP, handled alike: job schedulers, `systemd`, containers and CI stop
/// jobs with SIGTERM, and a closed terminal or SSH session sends SIGHUP. Each is a Ctrl-C.
pub struct Signals {
    #[cfg(unix)]
    kinds: [(tokio::signal::unix::Signal, &'static str); 3],
}

impl Signals {
    #[cfg(unix)]
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            kinds: [
                (signal(SignalKind::interrupt())?, "SIGINT"),
                (signal(SignalKind::terminate())?, "SIGTERM"),
                (signal(SignalKind::hangup())?, "SIGHUP"),
            ],
        })
    }

    #[cfg(not(unix))]
    pub fn new() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    /// The next signal's name.
    #[cfg(unix)]
    pub async fn next(&mut self) -> &'static str {
        let [(int, a), (term, b), (hup, c)] = &mut self.kinds;
        tokio::select! {
            _ = int.recv() => a,
            _ = term.recv() => b,
            _ = hup.recv() => c,
        }
    }

    #[cfg(not(unix))]
    pub async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }

    /// Returns at the first signal that comes within [`SECOND_SIGNAL_WINDOW`] of the one
    /// before it; a signal after a longer pause only says the run is still stopping.
    pub async fn second(&mut self) {
        loop {
            match tokio::time::timeout(SECOND_SIGNAL_WINDOW, self.next()).await {
                Ok(_) => return,
                Err(_) => {
                    let name = self.next().await;
                    crate::progress::suspend(|| {
                        eprintln!(
                            "{name}: still stopping (another signal within {} s quits at once)",
                            SECOND_SIGNAL_WINDOW.as_secs()
                        )
                    });
                }
            }
        }
    }
}

/// The error of a declined confirmation: exit 1, nothing was sent.
pub fn declined() -> anyhow::Error {
    ExitError::fatal("declined: nothing was sent").into()
}

/// Which items one invocation works: `--only`'s selection (all pending without it) and how
/// many users that is with `--limit` applied, for the prompt and the progress bar.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub only: Option<Arc<HashSet<i64>>>,
    pub users: u64,
}

impl Scope {
    /// The scope of an invocation over `run`: `names` from `--only` must each match an item of
    /// the run (else a usage error, before anything is sent).
    ///
    /// A UPN is matched against the items' keys and the UPNs their look-ups stored; a UPN still
    /// unmatched (an item named by object id, not looked up yet) is resolved to its object id
    /// with one bulk read.
    pub async fn of(
        queue: &Queue,
        graph: &GraphClient,
        run: &RunRecord,
        names: Option<&[String]>,
    ) -> anyhow::Result<Scope> {
        let only = match names {
            None => None,
            Some(names) => {
                let mut selection = queue.only_selection(run.id, names)?;
                let upns: Vec<String> = selection
                    .unmatched
                    .iter()
                    .filter(|n| n.contains('@'))
                    .cloned()
                    .collect();
                if !upns.is_empty() {
                    let found = graph.users_by_upns(&upns).await?;
                    let ids: Vec<String> = found.iter().map(|u| u.id.clone()).collect();
                    let by_id = queue.only_selection(run.id, &ids)?;
                    selection.items.extend(by_id.items);
                    let resolved: HashSet<String> = found
                        .iter()
                        .filter(|u| !by_id.unmatched.contains(&u.id))
                        .filter_map(|u| u.user_principal_name.as_deref())
                        .map(str::to_lowercase)
                        .collect();
                    selection
                        .unmatched
                        .retain(|n| !resolved.contains(&n.to_lowercase()));
                }
                if !selection.unmatched.is_empty() {
                    let shown: Vec<&str> = selection
                        .unmatched
                        .iter()
                        .take(5)
                        .map(String::as_str)
                        .collect();
                    return Err(ExitError::usage(format!(
                        "--only names {} user(s) that are not in run {}: {}{}",
                        selection.unmatched.len(),
                        run.id,
                        shown.join(", "),
                        if selection.unmatched.len() > 5 {
                            ", …"
                        } else {
                            ""
                        }
                    ))
                    .into());
                }
                Some(Arc::new(selection.items))
            }
        };
        let pending = queue.pending_among(run.id, only.as_deref())?;
        let users = run.options.limit.map_or(pending, |l| pending.min(l));
        Ok(Scope { only, users })
    }
}

/// Reads a `--only` file: unreadable or naming nobody is a usage error (exit 2).
pub fn read_only(path: Option<&Path>) -> anyhow::Result<Option<Vec<String>>> {
    path.map(|p| crate::source::only::read(p).map_err(|e| ExitError::usage(e.to_string()).into()))
        .transpose()
}

/// Works the run's queue to the end (or Ctrl-C, or a tenant refusal), then prints the status
/// and writes the report. Returns the exit status of docs/usage.md.
pub async fn execute(
    queue: Arc<Queue>,
    lease: &RunLease,
    run: RunRecord,
    graph: GraphClient,
    report: Option<&Path>,
    scope: Scope,
) -> anyhow::Result<ExitStatus> {
    let run_id = run.id;
    queue.set_run_status(run_id, RunStatus::Running)?;
    let watch = StopWatch::start(lease, "`resume` is safe either way".into())?;
    let label = match run.mode {
        RunMode::DryRun => "checking",
        RunMode::Live => "converting",
    };
    let progress = Arc::new(Progress::new(label, scope.users));
    progress.watch(queue.clone(), run_id);
    let pipeline = Pipeline {
        queue: queue.clone(),
        graph: graph.with_gate(lease_gate(lease)),
        progress,
        run: Arc::new(run),
        stop: watch.stop.clone(),
        only: scope.only,
    };
    let span = crate::queue::WorkSpan::start(queue.clone(), run_id)?;
    let outcome = workers::work(pipeline).await;
    // A full disk fails these too: the run's own error (and the resume advice) goes first.
    let bookkeeping = span.finish().and_then(|()| queue.flush_request_log());
    drop(watch);
    if lease.is_lost() || outcome.as_ref().is_err_and(lease_refused) {
        // Another process took the run over (this one stopped heart-beating for a long time):
        // its status is now that process's to write.
        return Err(taken_over(run_id));
    }
    let stopped = |e: &anyhow::Error| {
        format!(
            "run {run_id} stopped; `b2b-convert resume {run_id}` continues it{}",
            if storage_trouble(e) {
                " once the disk has room (the database could not be written: disk full or file size limit?)"
            } else {
                ""
            }
        )
    };
    let outcome = match outcome.and_then(|o| bookkeeping.map(|()| o).map_err(Into::into)) {
        Ok(o) => o,
        Err(e) => {
            if let Err(status) = queue.set_run_status(run_id, RunStatus::Interrupted) {
                tracing::warn!(run_id, error = %status, "could not record the run as interrupted");
            }
            let why = stopped(&e);
            return Err(e.context(why));
        }
    };
    let (status, exit) = match &outcome {
        Outcome::Completed { .. } => {
            let exit = if workers::needs_attention(&queue, run_id)? {
                ExitStatus::NeedsAttention
            } else {
                ExitStatus::Success
            };
            (RunStatus::Finished, exit)
        }
        Outcome::Interrupted => (RunStatus::Interrupted, ExitStatus::Interrupted),
        Outcome::TenantRefused(_) => (RunStatus::Stopped, ExitStatus::TenantRefused),
    };
    queue.set_run_status(run_id, status)?;
    super::status::print_table(&queue, run_id)?;
    match &outcome {
        Outcome::Completed {
            limit_reached: true,
        } => {
            let left = queue.counts(run_id)?.state(ItemState::Pending);
            println!("--limit reached: {left} users left pending; `b2b-convert resume {run_id} --limit N` continues");
        }
        Outcome::Interrupted => {
            println!("interrupted: `b2b-convert resume {run_id}` continues the run")
        }
        Outcome::TenantRefused(message) => {
            eprintln!("error: the tenant refused to go on: {message}");
            println!(
                "stopped: nothing more was sent; fix the cause, then `b2b-convert resume {run_id}`"
            );
        }
        Outcome::Completed { .. } => {}
    }
    if let Some(path) = report {
        // Read through a connection of its own that cannot write, like `report`'s: the log's
        // last buffered rows are written first, so the reader sees every request.
        queue.flush_request_log()?;
        let reader = Queue::open_read_only(queue.path())?;
        super::report::write(&reader, run_id, path, None)
            .with_context(|| format!("writing the report {}", path.display()))?;
        println!("report: {}", path.display());
    }
    Ok(exit)
}

/// The run's lease as the gate every request passes just before it leaves.
pub fn lease_gate(lease: &RunLease) -> Arc<dyn crate::graph::SendGate> {
    struct Gate(Arc<crate::queue::LeaseCheck>);
    impl crate::graph::SendGate for Gate {
        fn may_send(&self) -> Result<(), String> {
            self.0.still_ours()
        }
    }
    Arc::new(Gate(lease.check()))
}

/// Whether a pass stopped because the lease refused one of its writes (it was taken over).
pub fn lease_refused(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::queue::QueueError>(),
            Some(crate::queue::QueueError::LeaseLost { .. })
        )
    })
}

/// The run named, or the latest one.
pub fn pick_run(queue: &Queue, id: Option<i64>) -> anyhow::Result<RunRecord> {
    match id {
        Some(id) => queue.run(id)?.ok_or_else(|| {
            ExitError::usage(format!("no run {id} in {}", queue.path().display())).into()
        }),
        None => queue.latest_run()?.ok_or_else(|| {
            ExitError::usage(format!("no runs in {}", queue.path().display())).into()
        }),
    }
}

/// Whether `e` is SQLite failing to write (a full disk, a quota, a file size limit), where the
/// advice is to make room before resuming.
fn storage_trouble(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
        )
    })
}

/// The live run named, or the latest live run: `track` and `export-links` have nothing to do
/// with a dry run, so a dry run made after the live one is never picked by default.
pub fn pick_live_run(queue: &Queue, id: Option<i64>) -> anyhow::Result<RunRecord> {
    match id {
        Some(id) => pick_run(queue, Some(id)),
        None => queue.latest_live_run()?.ok_or_else(|| {
            ExitError::usage(format!("no live run in {}", queue.path().display())).into()
        }),
    }
}

/// Endpoints for continuing a stored run: flags and environment win, else the run's own Graph URL.
pub fn endpoints_for(args: &crate::cli::EndpointArgs, run: &RunRecord) -> Endpoints {
    Endpoints::new(
        args.graph_url
            .clone()
            .unwrap_or_else(|| run.graph_url.clone()),
        args.login_url(),
    )
}

/// How a stored run is continued.
pub enum Continue<'a> {
    /// `resume`, with the send options given again (if any).
    Resume(&'a crate::cli::ResendOptions),
    /// `retry`: the failed items go back to pending, once the run's tenant is confirmed.
    Retry,
}

/// `resume` and `retry`: reconnect and go on with the stored run, under the lease the caller
/// took before changing anything. `resume`'s send options apply to the items not yet sent; the
/// change is recorded in the run's option history once the operator confirmed.
pub async fn continue_run(
    queue: Arc<Queue>,
    lease: &RunLease,
    mut run: RunRecord,
    exec: &ExecArgs,
    how: Continue<'_>,
) -> anyhow::Result<ExitStatus> {
    let before = run.options.clone();
    apply_exec(&mut run.options, exec)?;
    if let Continue::Resume(send) = how {
        apply_send(&mut run.options, send)?;
    }
    let only = read_only(exec.only.as_deref())?;
    run.options.only = only.as_ref().map(|names| names.len() as u64);
    require_consent_possible(run.mode, exec.yes)?;
    let credentials = Credentials::resolve(exec.sign_in.auth)?;
    let endpoints = endpoints_for(&exec.sign_in.endpoints, &run).with_timeouts(exec);
    let graph = connect_to_run(&endpoints, credentials, &queue, &run, run.mode).await?;
    let group = matches!(run.source, crate::item::SourceSpec::Group { .. });
    super::preflight::require_ready(
        &graph,
        &super::preflight::needs_of(run.mode, &run.options, group),
    )
    .await?;
    if let Continue::Retry = how {
        let n = queue.requeue_failed(run.id)?;
        println!("requeued {n} failed items");
    }
    if !run.ingest_complete {
        crate::source::ingest::ingest(&queue, &run, &graph, None).await?;
        let options = run.options.clone();
        run = queue.run(run.id)?.context("run vanished")?;
        run.options = options;
    }
    let scope = Scope::of(&queue, &graph, &run, only.as_deref()).await?;
    if run.mode == RunMode::Live && !exec.yes && scope.users > 0 && !confirm(&run, scope.users)? {
        return Err(declined());
    }
    let changed = send_option_changes(&before, &run.options);
    if changed.is_empty() {
        queue.update_run_options(run.id, &run.options)?;
    } else {
        queue.change_run_options(run.id, &before, &run.options, &changed.join(", "))?;
    }
    execute(queue, lease, run, graph, exec.report.as_deref(), scope).await
}

/// `resume --silent/--no-silent/--redirect-url/…`: the send options for items not yet sent.
pub fn apply_send(
    options: &mut RunOptions,
    send: &crate::cli::ResendOptions,
) -> anyhow::Result<()> {
    if send.silent {
        options.silent = true;
    }
    if send.no_silent {
        options.silent = false;
    }
    if let Some(url) = &send.redirect_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ExitError::usage("--redirect-url must be an http(s) URL").into());
        }
        options.redirect_url = url.clone();
    }
    if let Some(lang) = &send.message_language {
        options.message_language = Some(lang.clone());
    }
    if let Some(p) = &send.message_file {
        options.message_body = Some(
            std::fs::read_to_string(p)
                .map_err(|e| ExitError::usage(format!("--message-file {}: {e}", p.display())))?,
        );
    }
    if let Some(cc) = &send.cc {
        if let Some(problem) = crate::validate::email_syntax_error(cc) {
            return Err(ExitError::usage(format!("--cc {cc}: {problem}")).into());
        }
        options.cc = Some(cc.clone());
    }
    Ok(())
}

/// The send options that differ, in words, for the option history; empty when none does.
pub fn send_option_changes(before: &RunOptions, after: &RunOptions) -> Vec<String> {
    let mut changes = Vec::new();
    if before.silent != after.silent {
        changes.push(describe_email(after));
    }
    if before.redirect_url != after.redirect_url {
        changes.push(format!("redirect URL {}", after.redirect_url));
    }
    if before.message_language != after.message_language {
        changes.push(format!(
            "message language {}",
            after.message_language.as_deref().unwrap_or("default")
        ));
    }
    if before.message_body != after.message_body {
        changes.push("a new custom message".to_string());
    }
    if before.cc != after.cc {
        changes.push(format!("cc {}", after.cc.as_deref().unwrap_or("none")));
    }
    if before.rate != after.rate {
        changes.push(format!("rate {}/s", after.rate));
    }
    if before.concurrency != after.concurrency {
        changes.push(format!("concurrency {}", after.concurrency));
    }
    changes
}

/// How invitations go out under these options, for prompts and the option history.
pub fn describe_email(options: &RunOptions) -> String {
    if options.silent {
        "silent (no invitation email)".to_string()
    } else {
        "with Microsoft's invitation email".to_string()
    }
}

/// Opens the database and takes the lease of the run named (or the latest one) before anything
/// of it changes. A run another process works is refused here: exit 1, nothing changed.
pub fn lease_run(db: &Path, id: Option<i64>) -> anyhow::Result<(Arc<Queue>, RunLease, RunRecord)> {
    let queue = Arc::new(Queue::open_existing(db)?);
    let run = pick_run(&queue, id)?;
    let lease = queue.take_lease(run.id)?;
    // Read again under the lease: the holder we replaced may have moved it on.
    let run = pick_run(&queue, Some(run.id))?;
    Ok((queue, lease, run))
}

/// A usage error (exit 2) unless `run` is live: a dry run wrote to nobody, and `nothing` says
/// what there is then nothing to do ("nobody was converted, there is nothing to track").
pub fn require_live(run: &RunRecord, nothing: &str) -> anyhow::Result<()> {
    if run.mode != RunMode::Live {
        return Err(ExitError::usage(format!("run {} is a dry run: {nothing}", run.id)).into());
    }
    Ok(())
}

/// Opens the database and reads the run named, without its lease: for what writes nothing.
pub fn read_run(db: &Path, id: i64) -> anyhow::Result<(Arc<Queue>, RunRecord)> {
    let queue = Arc::new(Queue::open_existing(db)?);
    let run = pick_run(&queue, Some(id))?;
    Ok((queue, run))
}

/// The run a pass over its users works: a dry run reads it without the lease ([`read_run`]), a
/// live one takes the lease first ([`lease_run`]).
pub fn open_run(
    db: &Path,
    id: i64,
    dry_run: bool,
) -> anyhow::Result<(Arc<Queue>, Option<RunLease>, RunRecord)> {
    if dry_run {
        let (queue, run) = read_run(db, id)?;
        return Ok((queue, None, run));
    }
    let (queue, lease, run) = lease_run(db, Some(id))?;
    Ok((queue, Some(lease), run))
}

/// The exit status of a run that has ended, from its items alone.
pub fn finished_status(queue: &Queue, run_id: i64) -> anyhow::Result<ExitStatus> {
    Ok(if workers::needs_attention(queue, run_id)? {
        ExitStatus::NeedsAttention
    } else {
        ExitStatus::Success
    })
}

/// Signs in for work on `run` with a command's endpoint and sign-in flags (see
/// [`connect_to_run`]).
pub async fn sign_in(
    flags: &crate::cli::SignInArgs,
    queue: &Arc<Queue>,
    run: &RunRecord,
    mode: RunMode,
) -> anyhow::Result<GraphClient> {
    let credentials = Credentials::resolve(flags.auth)?;
    connect_to_run(
        &endpoints_for(&flags.endpoints, run),
        credentials,
        queue,
        run,
        mode,
    )
    .await
}

/// The error of a process whose run another process took over while this one was stalled.
pub fn taken_over(run_id: i64) -> anyhow::Error {
    anyhow::anyhow!(
        "run {run_id} was taken over by another process while this one was stalled; stopped"
    )
}

/// A pass over users this invocation works under the run's lease.
pub struct PassRun<'a> {
    pub queue: &'a Arc<Queue>,
    pub lease: &'a RunLease,
    pub run: &'a RunRecord,
    /// What the progress bar says the pass is doing ("re-inviting").
    pub label: &'static str,
    /// How many users this invocation will work: what the bar counts, never the pass's total.
    pub users: u64,
    /// How the pass is continued after a stop ("`resend` continues this pass").
    pub continues: String,
    pub scope: PassScope,
}

/// A command that works a pass over users (`resend`, `retire`).
pub struct PassCommand {
    /// Its name, and what the progress bar says it is doing ("re-inviting").
    pub name: &'static str,
    pub label: &'static str,
    /// What the pass's users are once done ("sent"), in the line of a continued pass.
    pub done: &'static str,
    /// What is said when the pass has nobody to work ("nobody to re-invite").
    pub nobody: &'static str,
    /// Who the pass's users are, in the error of an `--only` name that is none of them.
    pub who: &'static str,
}

/// An invocation of a pass command: `--only` (read), `--limit`, `--yes` and `--json`.
pub struct PassFlags<'a> {
    command: &'static PassCommand,
    only: Option<&'a OnlyList>,
    limit: Option<u64>,
    yes: bool,
    json: bool,
}

impl<'a> PassFlags<'a> {
    pub fn new(
        command: &'static PassCommand,
        only: Option<&'a OnlyList>,
        limit: Option<u64>,
        yes: bool,
        json: bool,
    ) -> Self {
        PassFlags {
            command,
            only,
            limit,
            yes,
            json,
        }
    }

    /// The run's `open` pass (`true`: continued), else a new one (`create`) over the
    /// `candidates` this invocation chooses, once the operator confirmed (`confirm`, given how
    /// many). `None` when there is nobody to work, said with `why`.
    pub fn open_pass<P>(
        &self,
        open: Option<P>,
        candidates: impl FnOnce() -> crate::queue::Result<Vec<PassUser>>,
        why: impl FnOnce() -> String,
        confirm: impl FnOnce(u64) -> anyhow::Result<bool>,
        create: impl FnOnce() -> crate::queue::Result<Option<P>>,
    ) -> anyhow::Result<Option<(P, bool)>> {
        if let Some(pass) = open {
            return Ok(Some((pass, true)));
        }
        let nobody = self.command.nobody;
        let chosen = choose(&candidates()?, self.only, self.limit, self.command.who)?;
        if chosen.is_empty() {
            say(self.json, format!("{nobody}: {}", why()));
            return Ok(None);
        }
        if !self.yes && !confirm(chosen.len() as u64)? {
            return Err(declined());
        }
        let pass = create()?;
        if pass.is_none() {
            say(self.json, nobody.into());
        }
        Ok(pass.map(|pass| (pass, false)))
    }

    /// The pass `pass` (its id and when it started) as this invocation works it: the users
    /// `--only` and `--limit` choose ([`scope_of_pass`]). A pass continued from an earlier
    /// invocation (`continued` counts how many of its users are done, how many left) is said
    /// first and, with users left to work and no `--yes`, confirmed again (`confirm`, given how
    /// many).
    pub fn pass_run<'r, S: PassTable>(
        &self,
        queue: &'r Arc<Queue>,
        lease: &'r RunLease,
        run: &'r RunRecord,
        (pass_id, started_at): (i64, &str),
        continued: Option<impl FnOnce() -> crate::queue::Result<(u64, u64)>>,
        confirm: impl FnOnce(u64) -> anyhow::Result<bool>,
    ) -> anyhow::Result<PassRun<'r>> {
        let command = self.command;
        let (scope, users) =
            scope_of_pass::<S>(queue, pass_id, run, self.only, self.limit, command.who)?;
        if let Some(counts) = continued {
            let (done, left) = counts()?;
            say(
                self.json,
                format!(
                    "continuing {} pass {pass_id} of run {} (started {started_at}): {done} {}, {left} left",
                    command.name, run.id, command.done
                ),
            );
            if !self.yes && users > 0 && !confirm(users)? {
                return Err(declined());
            }
        }
        Ok(PassRun {
            queue,
            lease,
            run,
            label: command.label,
            users,
            continues: format!("`{}` continues this pass", command.name),
            scope,
        })
    }
}

impl PassRun<'_> {
    /// Works the pass that `ops` builds from its context (the run's Graph client, its requests
    /// gated by the lease, and a progress bar): Ctrl-C and a lost lease stop it after the
    /// requests on the wire; the request log is on disk when it returns.
    pub async fn work<P: EntryWork>(
        self,
        graph: GraphClient,
        ops: impl FnOnce(PassContext) -> P,
    ) -> anyhow::Result<PassEnd> {
        let watch = StopWatch::start(self.lease, self.continues)?;
        let progress = Arc::new(Progress::new(self.label, self.users));
        let ops = ops(PassContext {
            queue: self.queue.clone(),
            graph: graph.with_gate(lease_gate(self.lease)),
            progress: progress.clone(),
        });
        let outcome = work_entries(Arc::new(ops), self.scope, watch.stop.clone()).await;
        drop(watch);
        progress.finish();
        self.queue.flush_request_log()?;
        if self.lease.is_lost() || outcome.as_ref().is_err_and(lease_refused) {
            return Err(taken_over(self.run.id));
        }
        outcome
    }
}

/// The exit status a pass's command ends with, and what it says of the end: `again` says how
/// the pass is continued ("`b2b-convert resend 3` continues this pass"), `say` prints a line
/// for people (not with `--json`), and `done` decides a pass that ran to its end.
pub fn pass_exit(
    end: PassEnd,
    run_id: i64,
    again: &str,
    say: impl Fn(String),
    done: impl FnOnce() -> ExitStatus,
) -> anyhow::Result<ExitStatus> {
    match end {
        PassEnd::Done => Ok(done()),
        PassEnd::Interrupted => {
            say(format!("interrupted: {again}"));
            Ok(ExitStatus::Interrupted)
        }
        PassEnd::Stopped(StopReason::TenantRefused(message)) => {
            eprintln!("error: the tenant refused to go on: {message}");
            say(format!("stopped: nothing more was sent; {again}"));
            Ok(ExitStatus::TenantRefused)
        }
        PassEnd::Stopped(StopReason::Unreachable(message)) => Err(anyhow::anyhow!(
            "Graph cannot be reached, nothing more was sent: {message}; {again}"
        )),
        PassEnd::Stopped(StopReason::LeaseLost) => Err(taken_over(run_id)),
        PassEnd::Stopped(StopReason::Error(message)) => Err(anyhow::anyhow!("{message}; {again}")),
    }
}

/// Reads a pass's `--only` file: unreadable or naming nobody is a usage error (exit 2).
pub fn read_only_list(path: Option<&Path>) -> anyhow::Result<Option<OnlyList>> {
    path.map(|p| OnlyList::read(p).map_err(|e| ExitError::usage(e.to_string()).into()))
        .transpose()
}

/// The users of `users` that `only` names (every one without it), in their order. A name that
/// is none of them is a usage error before anything is sent (exit 2): `who` says who the users
/// are ("not in this run").
pub fn named_by<'a, T>(
    users: &'a [T],
    only: Option<&OnlyList>,
    who: &str,
    names: impl Fn(&T) -> (Option<&str>, Option<&str>),
) -> anyhow::Result<Vec<&'a T>> {
    let Some(only) = only else {
        return Ok(users.iter().collect());
    };
    let missing: Vec<String> = only
        .keys
        .iter()
        .filter(|k| {
            let single = OnlyList {
                keys: vec![(*k).clone()],
            };
            !users.iter().any(|u| {
                let (id, upn) = names(u);
                single.names(id, upn)
            })
        })
        .map(|k| k.value().to_string())
        .collect();
    if !missing.is_empty() {
        return Err(ExitError::usage(format!(
            "--only names {} user(s) who are {who}: {}",
            missing.len(),
            missing.join(", ")
        ))
        .into());
    }
    Ok(users
        .iter()
        .filter(|u| {
            let (id, upn) = names(u);
            only.names(id, upn)
        })
        .collect())
}

/// The item ids `--only` and `--limit` choose among a pass's `users`, in item order (see
/// [`named_by`]).
pub fn choose(
    users: &[PassUser],
    only: Option<&OnlyList>,
    limit: Option<u64>,
    who: &str,
) -> anyhow::Result<Vec<i64>> {
    let cap = limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let named = named_by(users, only, who, |u| {
        (u.user_id.as_deref(), u.user_principal_name.as_deref())
    })?;
    Ok(named.into_iter().take(cap).map(|u| u.item_id).collect())
}

/// The users of `users` that `--only` and `--limit` choose ([`choose`]), in their order.
pub fn chosen<'u>(
    users: &'u [PassUser],
    only: Option<&OnlyList>,
    limit: Option<u64>,
    who: &str,
) -> anyhow::Result<Vec<&'u PassUser>> {
    let chosen: BTreeSet<i64> = choose(users, only, limit, who)?.into_iter().collect();
    Ok(users
        .iter()
        .filter(|u| chosen.contains(&u.item_id))
        .collect())
}

/// What this invocation works of pass `pass_id`: the entries of the pass's users `--only`
/// names (every one without it), at most `--limit` of them, `concurrency` at a time; and how
/// many users that is, for the prompt and the progress bar. `who` says who the pass's users
/// are, in the error of a name that is none of them.
fn scope_of_pass<S: PassTable>(
    queue: &Queue,
    pass_id: i64,
    run: &RunRecord,
    only: Option<&OnlyList>,
    limit: Option<u64>,
    who: &str,
) -> anyhow::Result<(PassScope, u64)> {
    let entries = queue.pass_users::<S>(pass_id)?;
    let users: Vec<PassUser> = entries.iter().map(|(user, _)| user.clone()).collect();
    let selected: Option<BTreeSet<i64>> = match only {
        Some(only) => Some(choose(&users, Some(only), None, who)?.into_iter().collect()),
        None => None,
    };
    let open = entries
        .iter()
        .filter(|(u, state)| {
            state.is_open() && selected.as_ref().is_none_or(|s| s.contains(&u.item_id))
        })
        .count() as u64;
    let scope = PassScope {
        concurrency: run.options.concurrency,
        limit,
        only: selected,
    };
    Ok((scope, limit.map_or(open, |l| l.min(open))))
}

/// A pass command's `--json` (when `json`): one object on stdout, the pass's own `figures`
/// with the run and pass they are of, whether this invocation continued the pass, and whether
/// the pass is finished.
pub fn print_pass_json(
    json: bool,
    run_id: i64,
    pass_id: Option<i64>,
    continued: bool,
    finished: bool,
    figures: impl FnOnce() -> serde_json::Value,
) {
    if !json {
        return;
    }
    let mut object = figures();
    object["runId"] = run_id.into();
    object["passId"] = pass_id.into();
    object["continued"] = continued.into();
    object["finished"] = finished.into();
    println!("{object}");
}

/// Prints a line for people, unless the command answers in `--json`.
pub fn say(json: bool, line: String) {
    if !json {
        println!("{line}");
    }
}

/// Asks on the terminal before a pass touches anyone: `prompt` says what is about to happen.
pub fn confirm_pass(prompt: &str) -> anyhow::Result<bool> {
    let mut err = std::io::stderr();
    writeln!(err, "{prompt}\nType `yes` to go on: ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim().eq_ignore_ascii_case("yes"))
}
