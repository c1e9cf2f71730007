//! The binary against Graph endpoints that misbehave at the transport level, on loopback:
//! every timeout message names what timed out, and `--http-timeout` reaches the client.

use crate::common;

use std::process::Stdio;

use common::{BIN, COMMAND_TIMEOUT};
use tokio::io::AsyncReadExt;

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
    let child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("B2B_ACCESS_TOKEN", "not-a-real-token")
        .env("B2B_GRAPH_URL", &url)
        .env("B2B_LOGIN_URL", &url)
        .arg("--db")
        .arg(dir.path().join("runs.db"))
        .args(["run", "--csv", csv.to_str().unwrap(), "--dry-run"])
        // No HTTP retries: one timed-out request is enough for the message under test.
        .args([
            "--http-timeout",
            "1",
            "--max-attempts",
            "1",
            "--http-retries",
            "0",
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child)
        .await
        .expect("the run ends instead of hanging")
        .unwrap();
    server.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
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
        let out = tokio::process::Command::new(BIN)
            .env_clear()
            .arg("--db")
            .arg(dir.path().join("runs.db"))
            .args(["run", "--csv", "x.csv", "--dry-run", "--http-timeout", bad])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--http-timeout {bad}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--http-timeout"),
            "{bad}"
        );
    }
}
