//! A local AWS Marketplace Metering Service: `meterd emulator` and the sandbox of `meterd run
//! --sandbox`.
//!
//! It speaks awsJson1.1 on `POST /` (operation in `X-Amz-Target`) for BatchMeterUsage,
//! MeterUsage, RegisterUsage and ResolveCustomer, so the unmodified AWS SDKs and the AWS CLI work
//! against it given its URL as endpoint, and serves a JSON control API under `/_emulator/` on the
//! same listener (see `docs/emulator.md`).
//!
//! A request passes these steps in order; the first that fails answers it:
//!
//! | step | refusal |
//! |------|---------|
//! | body size | 413 `ValidationException` |
//! | `X-Amz-Target` | 400 `UnknownOperationException` |
//! | SigV4 scope (and signature, for configured keys) | 403 `MissingAuthenticationTokenException`, `InvalidSignatureException`, … |
//! | `latency_ms` fault | (delay only) |
//! | injected error, `throttle`, `http_500` faults | as injected |
//! | quota: token bucket per access key | 400 `ThrottlingException` |
//! | disabled API, IAM (`authorized_callers`) | 400 `DisabledApiException`, `AccessDeniedException` |
//! | JSON types, then shape constraints | 400 `SerializationException`, then `ValidationException` |
//! | catalogue, allocations, window | the modelled exceptions |
//! | apply; `drop_after_apply` fault | connection closed without an answer |

pub mod config;
mod control;
mod faults;
mod service;
mod sigv4;
mod wire;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tracing::{debug, warn};

pub use config::{Catalogue, ConfigError, Credential, EmulatorConfig, RegistrationToken, SubscriptionChange};
pub use faults::{Faults, InjectedError};
pub use service::{AcceptedRecord, RequestLog};

use service::{Answer, Operation, Sent, Service};
use wire::ApiError;

/// The emulated Marketplace Metering Service, ready to serve on any number of listeners.
#[derive(Clone)]
pub struct Emulator {
    service: Arc<Service>,
}

/// The response body type of every answer.
type Body = Full<Bytes>;

/// Returned by the request handler to make hyper close the connection without answering.
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped after applying the request (drop_after_apply fault)")
    }
}

impl std::error::Error for DropConnection {}

impl Emulator {
    pub fn new(config: EmulatorConfig) -> Self {
        Self { service: Arc::new(Service::new(config)) }
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` completes.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %err, "emulator failed to accept a connection");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let service = Arc::clone(&self.service);
            tokio::spawn(async move {
                let handler = service_fn(move |request| handle(Arc::clone(&service), request));
                if let Err(err) = http1::Builder::new().serve_connection(TokioIo::new(stream), handler).await
                {
                    debug!(error = %err, "emulator connection ended");
                }
            });
        }
    }

    /// Binds `addr` (port 0 picks a free port) and serves in a background task.
    pub async fn start(self, addr: SocketAddr) -> io::Result<RunningEmulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(err) = self
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
            {
                warn!(error = %err, "emulator stopped serving");
            }
        });
        Ok(RunningEmulator { addr, stop: Some(stop) })
    }
}

/// An emulator serving in the background; stops accepting when dropped.
pub struct RunningEmulator {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl RunningEmulator {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL to give an SDK as its endpoint.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn handle(service: Arc<Service>, request: Request<Incoming>) -> Result<Response<Body>, DropConnection> {
    let (parts, body) = request.into_parts();
    let limit = service.config().max_body_bytes;
    let declared = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            413,
            "ValidationException",
            format!("Request body must be smaller than {} bytes", limit + 1),
        )
    };
    if let Some(len) = declared.filter(|len| *len > limit as u64) {
        service.log(None, None, 413, "ValidationException".into(), None, Sent::unread(len as usize));
        return Ok(api_error_response(&too_large()));
    }
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            service.log(None, None, 413, "ValidationException".into(), None, Sent::unread(limit + 1));
            return Ok(api_error_response(&too_large()));
        }
        // The client went away mid-body; nothing to answer.
        Err(_) => return Err(DropConnection),
    };
    let path = parts.uri.path();
    if path == "/_emulator" || path.starts_with("/_emulator/") {
        return Ok(control::handle(&service, &parts.method, path, &body));
    }
    api(&service, &parts, &body).await
}

async fn api(
    service: &Service,
    parts: &hyper::http::request::Parts,
    body: &[u8],
) -> Result<Response<Body>, DropConnection> {
    let target = parts.headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let operation =
        match (parts.method == Method::POST && parts.uri.path() == "/", Operation::from_target(target)) {
            (true, Some(operation)) => operation,
            _ => {
                let err =
                    ApiError::client("UnknownOperationException", format!("Unknown operation {target:?}"));
                service.log(None, None, err.status, err.kind.to_string(), None, Sent::unread(body.len()));
                return Ok(api_error_response(&err));
            }
        };
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let caller = match sigv4::authenticate(
        parts.method.as_str(),
        path_and_query,
        &parts.headers,
        body,
        &service.config().region,
        &service.config().credentials,
        // Signing uses the caller's real clock; the offset only moves the service's notion of usage time.
        std::time::SystemTime::now(),
    ) {
        Ok(caller) => caller,
        Err(err) => {
            service.log(
                Some(operation),
                None,
                err.status,
                err.kind.to_string(),
                None,
                Sent::unread(body.len()),
            );
            return Ok(api_error_response(&err));
        }
    };
    let latency = service.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (answer, sent) = match wire::parse_body(body) {
        Ok(map) => (service.call(operation, &caller, &map), Sent::of(body.len(), &map)),
        Err(err) => (Answer::Reply(Err(err)), Sent::unread(body.len())),
    };
    match answer {
        Answer::Drop => {
            service.log(Some(operation), Some(&caller), 0, "dropped".into(), None, sent);
            Err(DropConnection)
        }
        Answer::Reply(Ok(value)) => {
            service.log(Some(operation), Some(&caller), 200, "ok".into(), Some(&value), sent);
            Ok(json_response(StatusCode::OK, "application/x-amz-json-1.1", &value, None))
        }
        Answer::Reply(Err(err)) => {
            service.log(Some(operation), Some(&caller), err.status, err.kind.to_string(), None, sent);
            Ok(api_error_response(&err))
        }
    }
}

fn api_error_response(err: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(status, "application/x-amz-json-1.1", &err.body(), Some(&err.kind))
}

fn json_response(
    status: StatusCode,
    content_type: &str,
    body: &Value,
    error_type: Option<&str>,
) -> Response<Body> {
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-amzn-requestid", uuid::Uuid::new_v4().to_string());
    if let Some(kind) = error_type {
        builder = builder.header("x-amzn-errortype", kind);
    }
    builder.body(Full::new(Bytes::from(body.to_string()))).expect("static headers are valid")
}
