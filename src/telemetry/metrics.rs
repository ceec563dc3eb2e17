//! Every metric meterd exports, in one place (docs/architecture.md lists them), and the
//! `/metrics` endpoint. Labels are bounded sets; no customer id is ever a label.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::health::Health;
use crate::listen::{Backoff, Cap, Slot};

/// Values of the `operation` label: the Metering Service calls meterd makes.
pub const OPERATIONS: [&str; 3] = ["BatchMeterUsage", "MeterUsage", "RegisterUsage"];

/// Where the metrics listener answers liveness and readiness (the probes in deploy/ name them).
pub const HEALTHZ_PATH: &str = "/healthz";
pub const READYZ_PATH: &str = "/readyz";
pub const METRICS_PATH: &str = "/metrics";

/// Values of `meterd_records{state}`.
pub const RECORD_STATES: [&str; 5] = ["open", "pending", "in_flight", "accepted", "dead_letter"];

/// Values of the `listener` label.
pub const LISTENERS: [&str; 4] = ["ingest", "admin", "metrics", "http"];

/// Values of `meterd_http_requests_total{code}`: every status HTTP ingest answers.
pub const HTTP_CODES: [&str; 7] = ["200", "400", "404", "405", "408", "413", "415"];

pub struct Metrics {
    pub registry: Registry,
    pub events_accepted: IntCounter,
    pub events_rejected: IntCounterVec,
    pub events_duplicate: IntCounter,
    /// Durability barriers (`fdatasync` of the journal), by the thread that ran them: `connection`
    /// (a lone event committed inline), `commit` or `sync`.
    pub barriers: IntCounterVec,
    pub ack_latency: Histogram,
    pub records: IntGaugeVec,
    pub oldest_unsubmitted_age: IntGauge,
    pub records_submitted: IntCounterVec,
    pub records_submitted_by_product: IntCounterVec,
    pub api_requests: IntCounterVec,
    pub api_duration: HistogramVec,
    pub dead_letters: IntGaugeVec,
    pub late_events: IntCounterVec,
    pub connections_refused: IntCounter,
    pub connections: IntGaugeVec,
    pub connections_over_limit: IntCounterVec,
    pub accept_errors: IntCounterVec,
    pub ingest_reads_paused: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_request_duration: Histogram,
    pub config_reloads: IntCounterVec,
    pub outbox_bytes: IntGauge,
    pub receipts_archive_bytes: IntGauge,
    pub remembered_ids: IntGauge,
    pub id_files_bytes: IntGauge,
    pub submission_paused: IntGauge,
    pub records_awaiting_subscription: IntGauge,
    pub fleet: FleetMetrics,
    pub notifications: NotificationMetrics,
    pub customer: CustomerMetrics,
}

/// `meterd_ack_latency_seconds` buckets: a group commit is one device flush, so sub-millisecond.
const ACK_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];
/// `meterd_api_request_duration_seconds` buckets: up to the longest request timeout.
const API_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// `meterd_http_request_duration_seconds` buckets: a group commit, up to a body that waited for
/// room in the commit queue (`ingest.overload_timeout`).
const HTTP_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 10.0];

/// The per-record statuses of `meterd_records_submitted_total`.
const SUBMIT_STATUSES: [&str; 4] = ["success", "customer_not_subscribed", "duplicate_record", "unprocessed"];

/// The `product` of records billed by license ARN (`Scope::product_label`).
const LICENSE_PRODUCT: &str = "(license)";

/// Registers collectors in one registry.
struct Registrar(Registry);

impl Registrar {
    /// What the data dir takes: the outbox, which `storage.max_bytes` bounds, and the receipts
    /// archive and the remembered ids beside it.
    fn storage(&self) -> (IntGauge, IntGauge, IntGauge, IntGauge) {
        (
            self.gauge(
                "meterd_outbox_bytes",
                "The outbox's size on disk, without the receipts archive and the id files: what storage.max_bytes bounds.",
            ),
            self.gauge(
                "meterd_receipts_archive_bytes",
                "The receipts archive's size on disk (settled records kept for storage.retention; not counted against storage.max_bytes).",
            ),
            self.gauge(
                "meterd_remembered_ids",
                "Client ids remembered (for 25 to 26 hours) so that a resend is answered duplicate.",
            ),
            self.gauge(
                "meterd_id_files_bytes",
                "The remembered ids' files on disk (not counted against storage.max_bytes).",
            ),
        )
    }

    /// Per-record results of the service, in all and by product.
    fn submitted(&self) -> (IntCounterVec, IntCounterVec) {
        (
            self.counter_vec(
                "meterd_records_submitted_total",
                "Per-record results of BatchMeterUsage and MeterUsage.",
                &["status"],
            ),
            self.counter_vec(
                "meterd_records_submitted_by_product_total",
                "Per-record results of BatchMeterUsage and MeterUsage, by product code ((license) for records billed by license ARN).",
                &["product", "status"],
            ),
        )
    }

    /// Per-listener connection metrics: open, closed over the cap, failed accepts.
    fn listeners(&self) -> (IntGaugeVec, IntCounterVec, IntCounterVec) {
        (
            self.gauge_vec("meterd_connections", "Connections open, by listener.", &["listener"]),
            self.counter_vec(
                "meterd_connections_over_limit_total",
                "Connections closed at once because their listener had max_connections open, by listener.",
                &["listener"],
            ),
            self.counter_vec(
                "meterd_accept_errors_total",
                "Failed accepts (such as EMFILE), by listener; each is followed by a pause of 10ms to 1s.",
                &["listener"],
            ),
        )
    }

    fn reg<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("metric names are unique");
        c
    }
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.reg(IntCounter::new(name, help).expect("valid"))
    }
    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.reg(IntCounterVec::new(Opts::new(name, help), labels).expect("valid"))
    }
    fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.reg(IntGauge::new(name, help).expect("valid"))
    }
    fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.reg(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"))
    }
    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        self.reg(
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid"),
        )
    }
    fn histogram_vec(&self, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.reg(HistogramVec::new(opts, labels).expect("valid"))
    }
}

impl Registrar {
    /// HTTP ingest's request count and latency.
    fn http(&self) -> (IntCounterVec, Histogram) {
        let requests = self.counter_vec(
            "meterd_http_requests_total",
            "HTTP ingest requests (ingest.http_listen), by status code.",
            &["code"],
        );
        let duration = self.histogram(
            "meterd_http_request_duration_seconds",
            "HTTP ingest requests, from their start to their answer (every event durable or refused).",
            &HTTP_BUCKETS,
        );
        (requests, duration)
    }
}

/// Fleet mode's metrics (`meterd_fleet_*`).
pub struct FleetMetrics {
    pub partials_shipped: IntCounter,
    pub ship_errors: IntCounter,
    pub backlog: IntGauge,
    pub lease_held: IntGauge,
    pub hours_closed: IntCounter,
    pub late_partials: IntCounterVec,
}

impl FleetMetrics {
    fn new(r: &Registrar) -> Self {
        Self {
            partials_shipped: r.counter(
                "meterd_fleet_partials_shipped_total",
                "Fleet mode: this host's partials committed to the fleet database.",
            ),
            ship_errors: r.counter(
                "meterd_fleet_ship_errors_total",
                "Fleet mode: failed attempts to ship partials (the database unreachable or refusing).",
            ),
            backlog: r.gauge("meterd_fleet_backlog", "Fleet mode: this host's partials waiting to be shipped."),
            lease_held: r.gauge("meterd_fleet_lease_held", "Fleet mode: 1 while this host holds the submitter lease."),
            hours_closed: r.counter(
                "meterd_fleet_hour_closes_total",
                "Fleet mode: hours this host closed (summed into fleet records) as lease holder.",
            ),
            late_partials: r.counter_vec(
                "meterd_fleet_late_partials_total",
                "Fleet mode: partials that arrived after their hour closed, by outcome (carried, dead_letter).",
                &["outcome"],
            ),
        }
    }
}

/// Values of `meterd_notifications_messages_total{outcome}`.
pub const NOTIFICATION_OUTCOMES: [&str; 4] = ["applied", "duplicate", "ignored", "invalid"];
/// Values of `meterd_notifications_effects_total{effect}` and `meterd_customer_lifecycle{state}`.
pub const LIFECYCLE_STATES: [&str; 3] = ["subscribed", "ending", "ended"];
/// Values of `meterd_notifications_errors_total{operation}`.
pub const NOTIFICATION_ERRORS: [&str; 3] = ["receive", "delete", "effect"];

/// The notification consumer's metrics (`meterd_notifications_*`, docs/notifications.md).
pub struct NotificationMetrics {
    pub messages: IntCounterVec,
    pub effects: IntCounterVec,
    pub errors: IntCounterVec,
    pub enabled: IntGauge,
    pub receiving: IntGauge,
    pub last_message: IntGauge,
    pub lag: IntGauge,
}

/// Customers' subscription lifecycles as notifications report them (`meterd_customer_*`); counts
/// only, never a customer id.
pub struct CustomerMetrics {
    pub lifecycle: IntGaugeVec,
    pub final_records: IntCounter,
    pub ended_dead_letters: IntCounter,
}

impl NotificationMetrics {
    fn new(r: &Registrar) -> Self {
        Self {
            messages: r.counter_vec(
                "meterd_notifications_messages_total",
                "Subscription and agreement notifications read from SQS, by outcome (applied, duplicate, ignored, invalid).",
                &["outcome"],
            ),
            effects: r.counter_vec(
                "meterd_notifications_effects_total",
                "Lifecycle changes notifications made, by the state they led to (subscribed, ending, ended).",
                &["effect"],
            ),
            errors: r.counter_vec(
                "meterd_notifications_errors_total",
                "Failed SQS calls and effects of the notification consumer, by operation (receive, delete, effect).",
                &["operation"],
            ),
            enabled: r.gauge("meterd_notifications_enabled", "1 when notifications.queue_url is set."),
            receiving: r.gauge(
                "meterd_notifications_receiving",
                "1 while the consumer's last ReceiveMessage succeeded; 0 while SQS is unreachable or refuses it (or the consumer is off).",
            ),
            last_message: r.gauge(
                "meterd_notifications_last_message_timestamp_seconds",
                "When the consumer last received a message (epoch seconds; 0: none since start).",
            ),
            lag: r.gauge(
                "meterd_notifications_lag_seconds",
                "For the last message received: seconds from SQS taking it (SentTimestamp) to meterd receiving it.",
            ),
        }
    }
}

impl CustomerMetrics {
    fn new(r: &Registrar) -> Self {
        Self {
            lifecycle: r.gauge_vec(
                "meterd_customer_lifecycle",
                "Subscriptions meterd was told about, by state (subscribed, ending, ended).",
                &["state"],
            ),
            final_records: r.counter(
                "meterd_customer_final_records_sealed_total",
                "Records sealed before their hour ended because their customer's subscription is ending.",
            ),
            ended_dead_letters: r.counter(
                "meterd_customer_ended_dead_letters_total",
                "Records refused CustomerNotSubscribed that became dead letters at once because their subscription ended.",
            ),
        }
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let r = Registrar(Registry::new());
        let (http_requests, http_request_duration) = r.http();
        let (connections, connections_over_limit, accept_errors) = r.listeners();
        let (outbox_bytes, receipts_archive_bytes, remembered_ids, id_files_bytes) = r.storage();
        let (records_submitted, records_submitted_by_product) = r.submitted();
        let metrics = Self {
            events_accepted: r.counter("meterd_events_accepted_total", "Events durably accepted and counted."),
            events_rejected: r.counter_vec("meterd_events_rejected_total", "Lines refused, by error code.", &["reason"]),
            events_duplicate: r.counter(
                "meterd_events_duplicate_total",
                "Events whose id was accepted before (answered ok, not counted again).",
            ),
            barriers: r.counter_vec("meterd_barriers_total", "Journal fdatasyncs, by the thread that ran them.", &["by"]),
            ack_latency: r.histogram(
                "meterd_ack_latency_seconds",
                "From reading an event to sending its reply, for events that were committed.",
                &ACK_BUCKETS,
            ),
            records: r.gauge_vec("meterd_records", "Records in the outbox, by state.", &["state"]),
            oldest_unsubmitted_age: r.gauge(
                "meterd_oldest_unsubmitted_record_age_seconds",
                "Seconds since the hour start of the oldest sealed record not yet settled (0 if none).",
            ),
            records_submitted,
            records_submitted_by_product,
            api_requests: r.counter_vec("meterd_api_requests_total", "Metering Service calls.", &["operation", "outcome"]),
            api_duration: r.histogram_vec(
                "meterd_api_request_duration_seconds",
                "Metering Service call duration.",
                &API_BUCKETS,
                &["operation"],
            ),
            dead_letters: r.gauge_vec("meterd_dead_letters", "Dead letters in the outbox, by reason.", &["reason"]),
            late_events: r.counter_vec(
                "meterd_late_events_total",
                "Events for an hour already sealed, by the late_events policy applied.",
                &["policy"],
            ),
            connections_refused: r.counter(
                "meterd_connections_refused_total",
                "Ingest connections refused because the peer's uid is not in ingest.allowed_uids.",
            ),
            connections,
            connections_over_limit,
            accept_errors,
            ingest_reads_paused: r.counter(
                "meterd_ingest_reads_paused_total",
                "Times an ingest connection stopped reading because its unread replies reached ingest.max_pending_reply_bytes.",
            ),
            http_requests,
            http_request_duration,
            config_reloads: r.counter_vec(
                "meterd_config_reloads_total",
                "SIGHUP reloads, by result (ok, or invalid: the old settings stay).",
                &["result"],
            ),
            outbox_bytes,
            receipts_archive_bytes,
            remembered_ids,
            id_files_bytes,
            submission_paused: r.gauge(
                "meterd_submission_paused",
                "1 while submission is paused because the service refuses meterd's configuration or credentials.",
            ),
            records_awaiting_subscription: r.gauge(
                "meterd_records_awaiting_subscription",
                "Pending records whose customer was not subscribed at the last answer; offered again every submit.subscription_recheck until their deadline.",
            ),
            fleet: FleetMetrics::new(&r),
            notifications: NotificationMetrics::new(&r),
            customer: CustomerMetrics::new(&r),
            registry: r.0,
        };
        metrics.prime();
        Arc::new(metrics)
    }

    /// Exports every bounded label value from the start, so dashboards and alerts see zeros.
    fn prime(&self) {
        for state in RECORD_STATES {
            self.records.with_label_values(&[state]).set(0);
        }
        for code in crate::model::ErrorCode::ALL {
            self.events_rejected.with_label_values(&[code.as_str()]);
        }
        for reason in crate::model::DeadReason::ALL {
            self.dead_letters.with_label_values(&[reason.as_str()]).set(0);
        }
        for policy in ["carry_forward", "reject"] {
            self.late_events.with_label_values(&[policy]);
        }
        for listener in LISTENERS {
            self.connections.with_label_values(&[listener]).set(0);
            self.connections_over_limit.with_label_values(&[listener]);
            self.accept_errors.with_label_values(&[listener]);
        }
        for code in HTTP_CODES {
            self.http_requests.with_label_values(&[code]);
        }
        for outcome in ["carried", "dead_letter"] {
            self.fleet.late_partials.with_label_values(&[outcome]);
        }
        for result in ["ok", "invalid"] {
            self.config_reloads.with_label_values(&[result]);
        }
        for outcome in NOTIFICATION_OUTCOMES {
            self.notifications.messages.with_label_values(&[outcome]);
        }
        for state in LIFECYCLE_STATES {
            self.notifications.effects.with_label_values(&[state]);
            self.customer.lifecycle.with_label_values(&[state]).set(0);
        }
        for operation in NOTIFICATION_ERRORS {
            self.notifications.errors.with_label_values(&[operation]);
        }
        for status in SUBMIT_STATUSES {
            self.records_submitted.with_label_values(&[status]);
        }
        self.export_products([LICENSE_PRODUCT]);
        for operation in OPERATIONS {
            for outcome in
                ["success", "throttled", "server_error", "client_error", "timeout", "connection", "local"]
            {
                self.api_requests.with_label_values(&[operation, outcome]);
            }
            self.api_duration.with_label_values(&[operation]);
        }
    }

    /// Exports (as 0) the per-product series of these configured product codes, so that a
    /// product's series exist before its first record is submitted; the label stays bounded by
    /// the configuration.
    pub fn export_products<'a>(&self, codes: impl IntoIterator<Item = &'a str>) {
        for code in codes.into_iter().filter(|code| !code.is_empty()) {
            for status in SUBMIT_STATUSES {
                self.records_submitted_by_product.with_label_values(&[code, status]);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding metrics to a Vec");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// How many connections the metrics listener keeps, and for how long without a request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// A connection on which no request starts for this long is closed: an idle keep-alive
    /// connection, and one that sends its request too slowly.
    pub idle_timeout: Duration,
}

/// Serves `GET /metrics`, `/healthz` and `/readyz` until `cancel`. A connection over
/// `limits.max_connections` is accepted and closed at once.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: HttpLimits,
    cancel: CancellationToken,
) {
    let label = ["metrics"];
    let cap = Cap::new(
        limits.max_connections,
        metrics.connections.with_label_values(&label),
        metrics.connections_over_limit.with_label_values(&label),
    );
    let mut backoff = Backoff::new("metrics", metrics.accept_errors.with_label_values(&label));
    while let Some((stream, slot)) =
        crate::listen::next_admitted(&listener, &cap, &mut backoff, &cancel).await
    {
        tokio::spawn(connection(stream, slot, metrics.clone(), health.clone(), limits.idle_timeout));
    }
}

/// One HTTP/1.1 connection, closed once no request has started for `idle_timeout`.
async fn connection(
    stream: TcpStream,
    slot: Slot,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    idle_timeout: Duration,
) {
    let requests = Arc::new(Notify::new());
    let started = requests.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        started.notify_one();
        let response = respond(&req, &metrics, &health);
        async move { Ok::<_, Infallible>(response) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    let served = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    let idle = async { while tokio::time::timeout(idle_timeout, requests.notified()).await.is_ok() {} };
    // Dropping the connection closes its socket.
    tokio::select! {
        _ = served => {}
        _ = idle => {}
    }
    drop(slot);
}

fn respond(
    req: &Request<hyper::body::Incoming>,
    metrics: &Metrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        METRICS_PATH => (StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
        // Alive: the runtime answers. A wedged commit thread is the watchdog's business.
        HEALTHZ_PATH => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        READYZ_PATH => {
            let snapshot = health.snapshot();
            if snapshot.not_ready.is_empty() {
                (StatusCode::OK, "text/plain", "ready\n".to_string())
            } else {
                let reasons: String =
                    snapshot.not_ready.iter().map(|r| format!("not ready: {r}\n")).collect();
                (StatusCode::SERVICE_UNAVAILABLE, "text/plain", reasons)
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
