//! The binary against Graph endpoints that misbehave at the transport level, on loopback:
//! every timeout message names what timed out, `--http-timeout` reaches the client, and a Graph
//! or token endpoint that goes silent mid-run stops the run resumable instead of keeping it
//! going without progress.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use b2b_convert::emulator::Emulator;
use b2b_convert::item::ItemState;
use common::{
    command, command_with_env, count, invitations_per_user, items, output_of, run, run_args,
    run_command, run_plain, wait_for_invitations, Generated,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A loopback "Graph" that accepts connections, reads the requests and never answers.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: the test sends a handful of requests at most.
        for _ in 0..64 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            held.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while socket.read(&mut buf).await.unwrap_or(0) > 0 {}
            }));
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_silent_graph_times_out_after_http_timeout_with_a_message_naming_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, "id,externalEmail\nu1,ann@fabrikam.com\n").unwrap();
    let (url, server) = silent_server().await;
    let env = [
        ("B2B_ACCESS_TOKEN", "not-a-real-token"),
        ("B2B_GRAPH_URL", &url),
        ("B2B_LOGIN_URL", &url),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let args = [
        "run",
        "--csv",
        csv.to_str().unwrap(),
        "--dry-run",
        // No HTTP retries: one timed-out request is enough for the message under test.
        "--http-timeout",
        "1",
        "--max-attempts",
        "1",
        "--http-retries",
        "0",
    ];
    // The run ends instead of hanging.
    let out = run_command(command_with_env(&env, &dir.path().join("runs.db"), &args)).await;
    server.abort();
    out.assert_exit(1);
    let stderr = &out.stderr;
    assert!(
        stderr.contains("waiting for Graph's answer to GET /v1.0/")
            && stderr.contains("timed out after 1 s"),
        "{stderr}"
    );
}

#[tokio::test]
async fn http_timeout_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["0", "abc", "100000"] {
        let args = ["run", "--csv", "x.csv", "--dry-run", "--http-timeout", bad];
        let out = run_plain(&dir.path().join("runs.db"), &args).await;
        assert_eq!(out.code, 2, "--http-timeout {bad}");
        assert!(out.stderr.contains("--http-timeout"), "{bad}");
    }
}

/// A loopback proxy in front of the emulator's token endpoint that can turn into a black hole:
/// while `quiet` is set it still accepts connections and reads requests, but forwards nothing
/// either way and never closes, on new connections and on pooled ones alike. (Graph itself is
/// silenced with `Emulator::set_silent`, whose paging links keep pointing at itself.)
struct Hole {
    url: String,
    quiet: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Hole {
    async fn before(target: SocketAddr) -> Hole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let quiet = Arc::new(AtomicBool::new(false));
        let q = quiet.clone();
        let task = tokio::spawn(async move {
            // Bounded: a run opens a few connections per worker.
            for _ in 0..2_000 {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(relay(socket, target, q.clone()));
            }
        });
        Hole { url, quiet, task }
    }

    fn go_quiet(&self, quiet: bool) {
        self.quiet.store(quiet, Ordering::SeqCst);
    }
}

async fn relay(client: TcpStream, target: SocketAddr, quiet: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    if quiet.load(Ordering::SeqCst) {
        let mut buf = vec![0u8; 16 * 1024];
        while client_read.read(&mut buf).await.unwrap_or(0) > 0 {}
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let (mut up_read, mut up_write) = upstream.into_split();
    let up = forward(&mut client_read, &mut up_write, &quiet);
    let down = async {
        if forward(&mut up_read, &mut client_write, &quiet).await && quiet.load(Ordering::SeqCst) {
            // A black hole never closes: hold the client's side open until the test ends.
            std::future::pending::<()>().await;
        }
    };
    tokio::join!(up, down);
}

/// Copies `from` to `to` until `from` closes (true) or a write fails (false), dropping what
/// arrives while `quiet` is set.
async fn forward(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    quiet: &AtomicBool,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return true;
        }
        if !quiet.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
    }
}

/// The live-run flags of the silence tests: a short `--http-timeout` and a short hidden
/// `--unreachable-after` (the silence window, 45 s by default) so nothing waits for long.
fn live_args(csv: &str) -> Vec<String> {
    [
        "run",
        "--csv",
        csv,
        "--yes",
        "--rate",
        "40",
        "--concurrency",
        "8",
        "--http-timeout",
        "1",
        "--unreachable-after",
        "2",
    ]
    .map(String::from)
    .to_vec()
}

/// `resume 1 --yes extra…` against an answering Graph finishes the run exactly once: nothing
/// pending or in flight, no user invited twice, every invitation Graph accepted recorded.
async fn resume_finishes_exactly_once(emu: &Emulator, db: &Path, extra: &[&str]) {
    let mut args = vec!["resume", "1", "--yes"];
    args.extend_from_slice(extra);
    run(emu, db, &args).await.assert_finished();
    let its = items(db, 1);
    assert_eq!(count(&its, ItemState::Pending), 0);
    assert_eq!(count(&its, ItemState::InFlight), 0);
    let per_user = invitations_per_user(emu);
    assert!(per_user.values().all(|n| *n == 1), "no user invited twice");
    assert_eq!(
        per_user.len(),
        count(&its, ItemState::Converted),
        "every invitation Graph accepted is recorded, none missing"
    );
}

/// Graph starts accepting connections and never answering in the middle of a live run: the run
/// stops itself (exit 1, the URL named, nothing failed, only requests that were on the wire left
/// `in_flight`), and `resume` against the answering Graph reconciles and finishes it with one
/// invitation per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_graph_stops_the_run_resumable_and_resume_finishes_it_exactly_once() {
    let Generated { dir, csv, emu, .. } = Generated::start(300, 29, |_| {}).await;
    let db = dir.path().join("live.db");
    let args = live_args(csv.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = command(&emu, &db, &args).spawn().unwrap();
    wait_for_invitations(&emu, 20).await;
    emu.set_silent(true);
    let out = output_of(child).await;
    out.assert_exit(1);
    let stderr = &out.stderr;
    assert!(stderr.contains(&emu.base_url()), "names the URL: {stderr}");
    assert!(stderr.contains("no answer"), "says why: {stderr}");
    assert!(stderr.contains("resume"), "says how to go on: {stderr}");
    let its = items(&db, 1);
    assert_eq!(
        count(&its, ItemState::Failed),
        0,
        "no user charged for an outage"
    );
    assert!(
        count(&its, ItemState::InFlight) <= 8,
        "only requests on the wire wait for reconciliation: {}",
        count(&its, ItemState::InFlight)
    );
    assert!(
        count(&its, ItemState::Pending) > 0,
        "the rest waits for resume"
    );

    emu.set_silent(false);
    resume_finishes_exactly_once(&emu, &db, &[]).await;
}

/// The token endpoint stops answering mid-run while Graph still answers: once the token runs
/// out no Graph request can leave, so the run stops (exit 1, the token endpoint named) with
/// nothing `in_flight`, instead of marking users "cannot re-read" one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_gone_silent_mid_run_stops_the_run_with_nothing_in_flight() {
    let Generated { dir, csv, emu, .. } = Generated::start(400, 31, |c| {
        // Short-lived tokens, so the run must renew after the token endpoint went quiet.
        c.token_lifetime = Duration::from_secs(3);
    })
    .await;
    let hole = Hole::before(emu.addr()).await;
    let db = dir.path().join("live.db");
    let args = live_args(csv.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = command(&emu, &db, &args)
        .env("B2B_LOGIN_URL", &hole.url)
        .spawn()
        .unwrap();
    wait_for_invitations(&emu, 10).await;
    hole.go_quiet(true);
    let out = output_of(child).await;
    out.assert_exit(1);
    // Names the token endpoint and its URL.
    out.assert_stderr_has("token");
    out.assert_stderr_has(&hole.url);
    let its = items(&db, 1);
    assert_eq!(
        count(&its, ItemState::InFlight),
        0,
        "nothing left in flight"
    );
    assert_eq!(
        count(&its, ItemState::Failed),
        0,
        "no user charged for an outage"
    );
    assert!(
        count(&its, ItemState::Pending) > 0,
        "the rest waits for resume"
    );
    let per_user = invitations_per_user(&emu);
    assert_eq!(per_user.len(), count(&its, ItemState::Converted));
    hole.task.abort();
}

/// The disk fills mid-run (a file size limit on the process, `ulimit -f`, which an unprivileged
/// test can set where a tiny filesystem is not available): the run stops on its own with exit 1
/// and the resume advice instead of being killed by SIGXFSZ or hanging, and `resume` with room
/// again converts everyone exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_run_resumable_and_resume_finishes_it_exactly_once() {
    let Generated { dir, csv, emu, .. } = Generated::scaled(3_000, 37, 1_000.0, |_| {}).await;
    let db = dir.path().join("live.db");
    let args = run_args(&csv, "--yes --rate 1000 --concurrency 8");
    let mut cmd = command(&emu, &db, &args);
    // 3.5 MB: past ingestion, well before the last of 3,000 users is recorded.
    const LIMIT: libc::rlim_t = 3_500 * 1024;
    // SAFETY: pre_exec runs in the forked child before exec; setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: LIMIT,
                rlim_max: LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Exit 1, not killed, no hang.
    let out = run_command(cmd).await;
    out.assert_exit(1);
    let stderr = &out.stderr;
    assert!(stderr.contains("resume 1"), "{stderr}");
    assert!(stderr.contains("disk"), "{stderr}");
    let its = items(&db, 1);
    assert!(
        count(&its, ItemState::Pending) > 0,
        "stopped before the end"
    );
    assert_eq!(count(&its, ItemState::Failed), 0);

    resume_finishes_exactly_once(&emu, &db, &["--rate", "1000"]).await;
}
