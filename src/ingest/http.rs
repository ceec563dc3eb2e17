//! HTTP ingest for sidecars (`ingest.http_listen`): `POST /v1/events` with an NDJSON body answers
//! `200` with one reply line per event, in order, once every event is durable or refused. Lines
//! are parsed, submitted and answered exactly as on the socket ([`IngestServer::replies`]).
//!
//! | answer | when |
//! |---|---|
//! | `200`, `application/x-ndjson` | one reply line per event (`ok`, or an error code as on the socket) |
//! | `404` / `405` | another path / another method than `POST` |
//! | `415` | a `Content-Type` other than `application/x-ndjson`, `application/jsonl` or `application/json` |
//! | `413` | a body over `ingest.http_max_body_bytes` (nothing of it is counted) |
//! | `408` | a body that stalled for `ingest.http_idle_timeout` (nothing of it is counted) |
//! | `400` | a body that could not be read |
//!
//! Errors of the request (not of an event) are one JSON object with `error` and `message`.
//!
//! Ids. On the socket an id is remembered per peer uid; HTTP has no uid, so every HTTP client
//! shares one scope, [`HTTP_PEER`], which no real uid has. An id sent over HTTP and the same id sent
//! over the socket are different ids.
//!
//! Limits, as the metrics listener's: at most `ingest.http_max_connections` connections (one more
//! is accepted and closed at once), and a connection with no request in progress for
//! `ingest.http_idle_timeout` is closed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::server::IngestServer;
use crate::config::IngestConfig;
use crate::listen::{Backoff, Cap, Slot};

/// Where events are posted.
pub const EVENTS_PATH: &str = "/v1/events";

/// The id scope of every HTTP client: `u32::MAX - 1`, a uid no account has (`u32::MAX` is the
/// socket's scope for a peer whose credentials are unreadable).
pub const HTTP_PEER: u32 = u32::MAX - 1;

/// The listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("failed to listen for HTTP ingest on {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds the HTTP ingest listener when `addr` is set (`ingest.http_listen`).
pub async fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, BindError> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.map_err(|source| BindError { addr, source })?;
    let local = listener.local_addr().map_err(|source| BindError { addr, source })?;
    tracing::info!(http = %local, path = EVENTS_PATH, "serving HTTP ingest");
    Ok(Some(listener))
}

/// HTTP ingest: the socket's server and the HTTP limits.
pub struct HttpIngest {
    server: IngestServer,
    max_body_bytes: usize,
    max_connections: usize,
    idle_timeout: Duration,
}

/// Requests in progress on one connection, so that one waiting for its commit is never idle.
#[derive(Default)]
struct Activity {
    in_progress: AtomicUsize,
    changed: Notify,
}

/// One request's place in its connection's [`Activity`].
struct InProgress(Arc<Activity>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

impl HttpIngest {
    pub fn new(server: IngestServer, config: &IngestConfig) -> Self {
        Self {
            server,
            max_body_bytes: config.http_max_body_bytes,
            max_connections: config.http_max_connections,
            idle_timeout: config.http_idle_timeout,
        }
    }

    /// Accepts connections once `cleared` completes (RegisterUsage, like the socket) until
    /// `cancel`; then lets every request in progress be answered and closes the connections.
    pub async fn serve(
        self,
        listener: TcpListener,
        cleared: impl Future<Output = ()>,
        cancel: CancellationToken,
    ) {
        tokio::select! {
            () = cleared => {}
            () = cancel.cancelled() => return,
        }
        let this = Arc::new(self);
        let metrics = this.server.ctx.metrics.clone();
        let label = ["http"];
        let cap = Cap::new(
            this.max_connections,
            metrics.connections.with_label_values(&label),
            metrics.connections_over_limit.with_label_values(&label),
        );
        let mut backoff = Backoff::new("http", metrics.accept_errors.with_label_values(&label));
        let tracker = TaskTracker::new();
        while let Some((stream, slot)) =
            crate::listen::next_admitted(&listener, &cap, &mut backoff, &cancel).await
        {
            tracker.spawn(this.clone().connection(stream, slot, cancel.clone()));
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
    }

    /// One HTTP/1.1 connection, closed once no request has been in progress for the idle timeout,
    /// or (after its request in progress is answered) once meterd stops.
    async fn connection(self: Arc<Self>, stream: TcpStream, slot: Slot, cancel: CancellationToken) {
        let activity = Arc::new(Activity::default());
        let (this, requests) = (self.clone(), activity.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            requests.in_progress.fetch_add(1, Ordering::SeqCst);
            requests.changed.notify_one();
            let (this, in_progress) = (this.clone(), InProgress(requests.clone()));
            async move {
                let response = this.respond(req).await;
                drop(in_progress);
                Ok::<_, Infallible>(response)
            }
        });
        let io = hyper_util::rt::TokioIo::new(stream);
        let served = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
        tokio::pin!(served);
        let idle = async {
            loop {
                let quiet =
                    tokio::time::timeout(self.idle_timeout, activity.changed.notified()).await.is_err();
                if quiet && activity.in_progress.load(Ordering::SeqCst) == 0 {
                    break;
                }
            }
        };
        // Dropping the connection closes its socket.
        tokio::select! {
            _ = served.as_mut() => {}
            _ = idle => {}
            _ = cancel.cancelled() => {
                served.as_mut().graceful_shutdown();
                let _ = served.await;
            }
        }
        drop(slot);
    }

    /// Answers one request and counts it.
    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let response = self.answer(req).await;
        let metrics = &self.server.ctx.metrics;
        metrics.http_requests.with_label_values(&[response.status().as_str()]).inc();
        metrics.http_request_duration.observe(started.elapsed().as_secs_f64());
        response
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != EVENTS_PATH {
            let message = format!("not found; POST newline-delimited JSON events to {EVENTS_PATH}");
            return refusal(StatusCode::NOT_FOUND, "not_found", &message);
        }
        if req.method() != Method::POST {
            let mut response =
                refusal(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "events are sent with POST");
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        if !ndjson(req.headers().get(CONTENT_TYPE)) {
            let message = "Content-Type must be application/x-ndjson (or application/jsonl, application/json): one JSON event per line";
            return refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message);
        }
        let too_large = || {
            let message = format!(
                "the body is larger than ingest.http_max_body_bytes ({}); nothing was counted: send fewer events per request",
                self.max_body_bytes
            );
            closing(refusal(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &message))
        };
        let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes as u64) {
            return too_large();
        }
        let body = Limited::new(req.into_body(), self.max_body_bytes).collect();
        let body = match tokio::time::timeout(self.idle_timeout, body).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
            Ok(Err(err)) => {
                let message = format!("the body could not be read ({err}); nothing was counted");
                return closing(refusal(StatusCode::BAD_REQUEST, "bad_request", &message));
            }
            Err(_) => {
                let message = format!(
                    "the body stalled for ingest.http_idle_timeout ({}); nothing was counted",
                    crate::duration::format(self.idle_timeout)
                );
                return closing(refusal(StatusCode::REQUEST_TIMEOUT, "request_timeout", &message));
            }
        };
        let replies = self.server.replies(&body, HTTP_PEER).await;
        Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(Bytes::from(replies)))
            .expect("a valid response")
    }
}

/// Whether a `Content-Type` names newline-delimited JSON (parameters such as `charset` aside).
fn ndjson(value: Option<&HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    matches!(essence.as_str(), "application/x-ndjson" | "application/jsonl" | "application/json")
}

/// A refused request: one JSON object, shaped like a refused line.
fn refusal(status: StatusCode, error: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "ok": false, "error": error, "message": message });
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(format!("{body}\n"))))
        .expect("a valid response")
}

/// Closes the connection after `response`: the rest of its body is not worth reading.
fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_of_ndjson_are_accepted_with_their_parameters() {
        let accepted = |text: &'static str| ndjson(Some(&HeaderValue::from_static(text)));
        assert!(accepted("application/x-ndjson"));
        assert!(accepted("Application/X-NDJSON; charset=utf-8"));
        assert!(accepted("application/json"));
        assert!(accepted("application/jsonl"));
        assert!(!accepted("text/plain"));
        assert!(!accepted("application/x-www-form-urlencoded"));
        assert!(!ndjson(None));
    }
}
