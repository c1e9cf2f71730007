//! The connection loop. Not `axum::serve`: each connection gets a kill switch in its request
//! extensions, so a handler can carry out a write and then have the connection dropped before the
//! answer is written (a "lost response").

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use super::routes::{percent_decode, Call, InFlight, Reply, Shared};

/// Fired by a handler to drop its connection without answering.
#[derive(Clone, Default)]
struct KillSwitch(Arc<Notify>);

/// Largest request body read: Graph refuses request bodies above 4 MB with 413
/// `RequestEntityTooLarge`, and the emulator never buffers more than Graph would accept.
pub const BODY_LIMIT: usize = 4 * 1024 * 1024;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(entry).with_state(shared)
}

async fn entry(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let kill = parts.extensions.get::<KillSwitch>().cloned();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b.to_vec(),
        Err(_) => {
            return to_response(Reply::json(
                413,
                serde_json::json!({"error": {
                    "code": "RequestEntityTooLarge",
                    "message": format!("The request body exceeds the maximum of {BODY_LIMIT} bytes."),
                }}),
            ))
        }
    };
    let call = Call {
        method: parts.method.as_str().to_ascii_uppercase(),
        path: percent_decode(parts.uri.path()),
        query: url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().ok()?.to_string(),
                ))
            })
            .collect(),
        body,
    };
    if call.path.starts_with("/_emulator/") {
        return to_response(shared.inspect(&call));
    }
    hold_if_silent(&shared).await;
    let _answering = InFlight::enter(&shared);
    let worker = Arc::clone(&shared);
    let reply = match tokio::task::spawn_blocking(move || worker.handle(&call)).await {
        Ok(r) => r,
        Err(_) => Reply::json(
            500,
            serde_json::json!({"error": {"code": "InternalServerError", "message": "The emulator failed on this request."}}),
        ),
    };
    if !shared.config.latency.is_zero() {
        tokio::time::sleep(shared.config.latency).await;
    }
    hold_if_silent(&shared).await;
    if reply.lost {
        if let Some(k) = kill {
            tracing::debug!("dropping the connection instead of answering (lost response)");
            k.0.notify_one();
            std::future::pending::<()>().await;
        }
    }
    to_response(reply)
}

/// While the emulator is a black hole, a request is never answered: the connection stays open
/// until the client gives up or the emulator stops.
async fn hold_if_silent(shared: &Shared) {
    if shared.silent.load(std::sync::atomic::Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

fn to_response(reply: Reply) -> Response {
    let mut builder = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let body = match reply.body {
        Some(v) => Body::from(serde_json::to_vec(&v).unwrap_or_default()),
        None => Body::empty(),
    };
    builder
        .body(body)
        .unwrap_or_else(|_| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "").into_response())
}

/// How the emulator stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Still serving.
    No,
    /// Stop accepting and drop every connection, answers in progress included.
    Now,
    /// Stop accepting, finish the answers in progress, then close every connection.
    Drain,
}

/// Longest a draining connection may take to finish its answer (latency included).
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accept connections until `shutdown` leaves [`Stop::No`].
pub async fn serve(listener: TcpListener, router: Router, mut shutdown: watch::Receiver<Stop>) {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let kill = KillSwitch::default();
            let k = kill.clone();
            let svc = tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(k.clone());
                let mut router = router.clone();
                async move {
                    use tower::Service;
                    router.call(req.map(Body::new)).await
                }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(svc),
            );
            tokio::pin!(conn);
            let drain = tokio::select! {
                biased;
                _ = kill.0.notified() => false,
                _ = conn_shutdown.changed() => *conn_shutdown.borrow() == Stop::Drain,
                _ = conn.as_mut() => false,
            };
            if drain {
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    biased;
                    _ = kill.0.notified() => {}
                    _ = tokio::time::sleep(DRAIN_LIMIT) => {}
                    _ = conn.as_mut() => {}
                }
            }
        });
    }
}
