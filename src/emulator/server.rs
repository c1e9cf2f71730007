//! The connection loop. Not `axum::serve`: each connection gets a kill switch in its request
//! extensions, so a handler can carry out a write and then have the connection dropped before the
//! answer is written (a "lost response"). With `--tls` each connection first completes a TLS
//! handshake (`tls.rs`) and is then served the same way.
//!
//! Links in answers (`@odata.nextLink`, `@odata.deltaLink`) name the origin the client called —
//! the scheme served and the request's `Host` — as Graph's do: handlers build them on the
//! emulator's own base URL and [`rebase_links`] moves them here, in one place, for every answer
//! and every `$batch` sub-answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

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
    let origin = origin_called(&shared, parts.headers.get("host"));
    let call = Call {
        origin: origin.clone(),
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
        Ok(mut r) => {
            if let Some(body) = r.body.as_mut() {
                rebase_links(body, &shared.base_url, &origin);
            }
            r
        }
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

/// `scheme://host` as the client called it: the `Host` header when it is a plain host (and
/// port), else the emulator's own address.
fn origin_called(shared: &Shared, host: Option<&axum::http::HeaderValue>) -> String {
    let plain = |h: &&str| {
        !h.is_empty()
            && h.len() <= 255
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    };
    match host.and_then(|h| h.to_str().ok()).filter(plain) {
        Some(h) => format!("{}://{h}", shared.scheme),
        None => shared.base_url.clone(),
    }
}

/// Moves every absolute link the handlers built on `base` (values of keys ending in `Link`, at
/// any depth: `$batch` sub-answers carry their own) onto `origin`.
pub(super) fn rebase_links(body: &mut Value, base: &str, origin: &str) {
    if base == origin {
        return;
    }
    match body {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(link) if key.ends_with("Link") => {
                        if let Some(rest) = link.strip_prefix(base) {
                            if rest.is_empty() || rest.starts_with('/') {
                                *link = format!("{origin}{rest}");
                            }
                        }
                    }
                    other => rebase_links(other, base, origin),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rebase_links(item, base, origin);
            }
        }
        _ => {}
    }
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

/// Longest a TLS handshake may take before the connection is dropped.
const HANDSHAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accept connections until `shutdown` leaves [`Stop::No`]; with `tls`, each one is served over
/// TLS once its handshake completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<Stop>,
) {
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
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(acceptor) = tls else {
                return serve_connection(stream, router, conn_shutdown).await;
            };
            let handshake = tokio::select! {
                r = tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)) => r,
                _ = conn_shutdown.changed() => return,
            };
            match handshake {
                Ok(Ok(stream)) => serve_connection(stream, router, conn_shutdown).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
}

/// Serve one connection until it ends, its kill switch fires, or the emulator stops.
async fn serve_connection<S>(stream: S, router: Router, mut conn_shutdown: watch::Receiver<Stop>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
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
}

#[cfg(test)]
mod tests {
    use super::rebase_links;
    use serde_json::json;

    #[test]
    fn links_move_to_the_origin_called_at_any_depth_and_nothing_else_does() {
        let base = "http://127.0.0.1:5000";
        let mut body = json!({
            "@odata.nextLink": "http://127.0.0.1:5000/v1.0/users?$skiptoken=x",
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users",
            "mail": "http://127.0.0.1:5000/not-a-link",
            "responses": [{"body": {"@odata.deltaLink": "http://127.0.0.1:5000/v1.0/users/delta?$deltatoken=y"}}],
            "otherLink": "http://127.0.0.1:50001/v1.0/users",
        });
        rebase_links(&mut body, base, "https://localhost:5000");
        assert_eq!(
            body["@odata.nextLink"],
            "https://localhost:5000/v1.0/users?$skiptoken=x"
        );
        assert_eq!(
            body["responses"][0]["body"]["@odata.deltaLink"],
            "https://localhost:5000/v1.0/users/delta?$deltatoken=y"
        );
        assert_eq!(body["mail"], "http://127.0.0.1:5000/not-a-link");
        assert_eq!(
            body["@odata.context"],
            "https://graph.microsoft.com/v1.0/$metadata#users"
        );
        assert_eq!(
            body["otherLink"], "http://127.0.0.1:50001/v1.0/users",
            "another port is another origin"
        );
    }
}
