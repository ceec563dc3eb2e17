//! `meterd run`: wires the stages together, supervises them, and shuts them down in order.
//!
//! Start-up order ([`start`]): serve `/healthz` and `/readyz` (not ready yet) → open (and lock)
//! the outbox and read it back → bind the ingest socket (or take systemd's) and the admin socket
//! → replay the log into the open hours → start the commit thread, the submit loop, the
//! checkpoint ticker and the listeners. Then [`Running::serve`] registers usage where configured
//! and declares meterd ready (`/readyz`, `READY=1`) until a shutdown signal, a fatal failure, or
//! a task that ends on its own. With `aws.register_usage`, nothing is metered before RegisterUsage
//! has succeeded at this start: the submit loop sends nothing, and the ingest socket (bound, so
//! that clients' connections wait in its backlog) accepts no connection until then. Shutdown order ([`Running::shutdown`]): `STOPPING=1` → stop
//! accepting → answer every line already read → (fleet mode: seal every open record, whatever its
//! hour) → final checkpoint and fdatasync → stop submitting (fleet mode: ship every partial, then
//! deregister) → remove the sockets meterd bound, all within `shutdown.grace`. SIGHUP reloads what can
//! change while running (`reload.rs`).

mod fleet;
mod notifications;
mod reload;
mod supervise;
mod watchdog;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminServer};
use crate::aggregate::{Heartbeat, Rules};
use crate::clock::Clock;
use crate::commit::{self, CommitSettings, Committer};
use crate::config::{Config, ConfigError};
use crate::context::Context;
use crate::ingest::{EventParser, IngestServer, SharedParser};
use crate::model::{Mode, Scope};
use crate::outbox::{Outbox, Recovered};
use crate::submit::{Control, MeteringApi, RegisterRequest, RegistrationRefused, Settings, Submitter};
use crate::systemd::Notifier;
use crate::telemetry::health::RegistrationStatus;
use crate::telemetry::metrics;
use crate::unix::{SocketFile, Watched};
use fleet::{FleetRuntime, drain_submissions, flush_open_hours};
use supervise::{End, Supervisor};

pub use supervise::FAIL_TASK_ENV;

/// Submissions the commit queue holds before connections wait (and, past `overload_timeout`, refuse).
const COMMIT_QUEUE: usize = 4096;

/// Where a running daemon can be reached.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub socket: PathBuf,
    pub admin_socket: PathBuf,
    pub metrics: SocketAddr,
}

/// Reads the configuration again, for SIGHUP.
pub type Reloader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// What the host gives the daemon besides its configuration.
pub struct Host {
    /// The ingest socket systemd passed (socket activation), if any.
    pub activated_socket: Option<std::os::unix::net::UnixListener>,
    pub notifier: Notifier,
    /// How to read the configuration again on SIGHUP; `None` ignores SIGHUP.
    pub reload: Option<Reloader>,
    /// `meterd run --sandbox`: a few operator commands may do more (`flush` of every hour).
    pub sandbox: bool,
}

impl Host {
    /// No systemd, no reload: tests and embedders.
    pub fn plain() -> Self {
        Host { activated_socket: None, notifier: Notifier::disabled(), reload: None, sandbox: false }
    }
}

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

/// The commit stage's time rules.
fn rules(config: &Config) -> Rules {
    Rules {
        seal_delay: secs(config.submit.seal_delay),
        deadline: secs(config.deadline()),
        future_tolerance: secs(config.ingest.future_tolerance),
        late_events: config.submit.late_events,
        sealed_hours_are_frozen: config.fleet(),
    }
}

/// The submit stage's settings.
fn settings(config: &Config) -> Settings {
    Settings {
        deadline: secs(config.deadline()),
        max_requests_per_second: config.submit.max_requests_per_second,
        backoff_base: config.submit.backoff_base,
        backoff_max: config.submit.backoff_max,
        pause: config.submit.pause,
        subscription_recheck: config.submit.subscription_recheck,
        retention: secs(config.storage.retention),
        call_per_license: config.aws.single_product().is_none(),
    }
}

/// The event parser of the configured products.
fn parser(config: &Config) -> EventParser {
    let products = config.aws.products();
    let rules: Vec<(&str, &[String])> =
        products.iter().map(|p| (p.code.as_str(), p.dimensions.as_slice())).collect();
    EventParser::with_products(&rules, config.aws.mode)
}

/// The heartbeat of `submit.heartbeat_dimensions`.
fn heartbeat(config: &Config) -> Option<Heartbeat> {
    let dimensions = &config.submit.heartbeat_dimensions;
    (config.aws.mode == Mode::MeterUsage && !dimensions.is_empty()).then(|| Heartbeat {
        scope: Scope::ProductCode(config.aws.single_product().expect("meter_usage mode has one product")),
        dimensions: dimensions.clone(),
    })
}

/// RegisterUsage's arguments when `aws.register_usage` is on.
fn registration(config: &Config) -> Option<RegisterRequest> {
    config.aws.register_usage.then(|| RegisterRequest {
        product_code: config.aws.single_product().expect("register_usage has one product"),
        public_key_version: config.aws.public_key_version,
        nonce: (!config.aws.nonce.is_empty()).then(|| config.aws.nonce.clone()),
        backoff_base: config.submit.backoff_base,
        backoff_max: config.submit.backoff_max,
    })
}

/// Cancellation of each group of tasks, in shutdown order.
struct Stops {
    /// Ingest, admin, reload, watchdog and the ticker: everything that feeds the commit stage.
    intake: CancellationToken,
    submit: CancellationToken,
    metrics: CancellationToken,
    /// When the shutdown must be over, set as it begins (a fleet host's last shipment retries
    /// until shortly before).
    shutdown_by: watch::Sender<Option<tokio::time::Instant>>,
}

/// A started daemon: every stage runs under the supervisor.
pub struct Running<A> {
    ctx: Context,
    api: A,
    config: Config,
    endpoints: Endpoints,
    notifier: Arc<Notifier>,
    supervisor: Supervisor,
    stops: Stops,
    /// Whether this start may meter: true once RegisterUsage succeeded, or when it is off.
    registered: watch::Sender<bool>,
    /// Fleet mode's database and settings.
    fleet: Option<FleetRuntime>,
    /// Where the shutdown sends a flush of every open hour (fleet mode: partials are summed, so a
    /// host that stops seals its hours now and ships them).
    flush_on_stop: Option<mpsc::Sender<commit::Command>>,
    /// The notification consumer's ledger and state, when `notifications.queue_url` is set.
    notifications: Option<Arc<crate::notifications::Shared>>,
}

/// Completes once `registered` turns true; never if it cannot any more.
async fn cleared(mut registered: watch::Receiver<bool>) {
    if registered.wait_for(|registered| *registered).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs meterd until `shutdown` completes (or a stage fails), then shuts down in order.
/// `ready` is told where the daemon listens once it accepts events.
pub async fn run<A: MeteringApi + Clone + 'static>(
    config: Config,
    clock: Clock,
    api: A,
    host: Host,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&Endpoints),
) -> anyhow::Result<()> {
    start(config, clock, api, host).await?.serve(shutdown, ready).await
}

/// Opens the outbox, binds the sockets and starts every stage (see the module header).
pub async fn start<A: MeteringApi + Clone + 'static>(
    config: Config,
    clock: Clock,
    api: A,
    host: Host,
) -> anyhow::Result<Running<A>> {
    let Host { activated_socket, notifier, reload, sandbox } = host;
    let ctx = Context::new(clock);
    ctx.metrics.export_products(config.aws.products().iter().map(|p| p.code.as_str()));
    let fds = crate::listen::reserve_fds(config.connection_caps() as u64).map_err(anyhow::Error::msg)?;
    tracing::debug!(fds, "open-file limit");
    if let Some(request) = registration(&config) {
        ctx.health.set_registration(RegistrationStatus::pending(request.public_key_version));
    }
    let metrics_listener = metrics::bind(config.metrics.listen)
        .await
        .with_context(|| format!("failed to listen for metrics on {}", config.metrics.listen))?;
    let metrics_addr = metrics_listener.local_addr()?;
    tracing::info!(metrics = %metrics_addr, "serving metrics, /healthz and /readyz");
    let endpoints = Endpoints {
        socket: config.ingest.socket.clone(),
        admin_socket: config.admin.socket.clone(),
        metrics: metrics_addr,
    };
    let stops = Stops {
        intake: CancellationToken::new(),
        submit: CancellationToken::new(),
        metrics: CancellationToken::new(),
        shutdown_by: watch::channel(None).0,
    };
    let (supervisor, notifier) = (Supervisor::new(), Arc::new(notifier));
    let (registered, _) = watch::channel(registration(&config).is_none());
    let fleet = if config.fleet() { Some(FleetRuntime::new(&config).await?) } else { None };
    let mut running = Running {
        ctx,
        api,
        config,
        endpoints,
        notifier,
        supervisor,
        stops,
        registered,
        fleet,
        flush_on_stop: None,
        notifications: None,
    };
    let (metrics, health) = (running.ctx.metrics.clone(), running.ctx.health.clone());
    let limits = metrics::HttpLimits {
        max_connections: running.config.metrics.max_connections,
        idle_timeout: running.config.metrics.idle_timeout,
    };
    let serve_metrics =
        metrics::serve(metrics_listener, metrics, health, limits, running.stops.metrics.clone());
    running.supervisor.spawn_unit("metrics", serve_metrics);

    let config = &running.config;
    let (outbox, mut recovered) = open_outbox(config).await?;
    let listener = bind_ingest(config, activated_socket)?;
    let (admin_listener, admin_file) =
        SocketFile::bind(&config.admin.socket, config.admin_socket_mode(), None)
            .map_err(anyhow::Error::msg)?;
    let admin_listener = Watched::new(admin_listener, admin_file, "admin");
    let http = crate::ingest::http::bind(config.http_listen()).await?;
    let pipeline = running.spawn_pipeline(&outbox, &mut recovered)?;
    running.spawn_front(pipeline, Front { outbox, listener, admin_listener, reload, sandbox, http });
    Ok(running)
}

/// Where the listeners hand their work: the commit queue and the submit loop's controls.
struct Pipeline {
    commands: mpsc::Sender<commit::Command>,
    /// Where connections hand their events (inline or to `commands`).
    submissions: commit::Intake,
    controls: mpsc::Sender<Control>,
}

/// What the listeners are started with.
struct Front {
    outbox: Arc<Outbox>,
    listener: Watched,
    admin_listener: Watched,
    reload: Option<Reloader>,
    sandbox: bool,
    http: Option<tokio::net::TcpListener>,
}

impl<A: MeteringApi + Clone + 'static> Running<A> {
    /// The commit thread (after replaying the log into the open hours), the submit loop and the
    /// checkpoint ticker.
    fn spawn_pipeline(
        &mut self,
        outbox: &Arc<Outbox>,
        recovered: &mut Recovered,
    ) -> anyhow::Result<Pipeline> {
        let (ctx, config) = (&self.ctx, &self.config);
        let (sealed_tx, sealed_rx) = mpsc::unbounded_channel();
        let (sealed_through, sealed_through_rx) = watch::channel(None);
        let commit_settings = CommitSettings {
            rules: rules(config),
            max_bytes: config.storage.max_bytes,
            heartbeat: heartbeat(config),
            sealed_through,
        };
        let committer =
            Committer::recover(ctx.clone(), outbox.clone(), recovered, commit_settings, sealed_tx)?;
        let (commands, command_rx) = mpsc::channel(COMMIT_QUEUE);
        // A connection may commit on its own worker only when another worker stays free.
        let inline = tokio::runtime::Handle::current().metrics().num_workers() > 1;
        let (intake, shared) = committer.share(commands.clone(), inline);
        spawn_commit_thread(&mut self.supervisor, shared, command_rx)?;

        let records = std::mem::take(&mut recovered.records);
        let (controls, control_rx) = mpsc::channel(16);
        if let Some(fleet) = self.fleet.clone() {
            self.spawn_fleet(fleet, outbox, records, sealed_rx, sealed_through_rx);
            // In fleet mode a host submits nothing of its own: the shutdown flush seals its open
            // hours as partials, and dead-letter retries are the fleet's (docs/fleet.md).
            self.flush_on_stop = Some(commands.clone());
        } else {
            let submitter =
                Submitter::new(ctx.clone(), self.api.clone(), outbox.clone(), records, settings(config));
            let submit = submitter.run(
                sealed_rx,
                control_rx,
                cleared(self.registered.subscribe()),
                self.stops.submit.clone(),
            );
            self.supervisor.spawn_unit("submit", submit);
            if self.config.notifications() {
                self.spawn_notifications(commands.clone(), controls.clone())?;
            }
            if self.config.aws.mode == Mode::MeterUsage {
                // Each instance, task or pod is its own customer: a stopping one reports its
                // current hour now instead of losing it at scale-in.
                self.flush_on_stop = Some(commands.clone());
            }
        }
        let config = &self.config;
        let every = config.storage.checkpoint_interval;
        self.supervisor
            .spawn_unit("ticker", commit::tick(commands.clone(), every, self.stops.intake.clone()));
        Ok(Pipeline { commands, submissions: intake, controls })
    }

    /// The ingest and admin listeners, SIGHUP reload and the systemd watchdog.
    fn spawn_front(&mut self, pipeline: Pipeline, front: Front) {
        let (ctx, config, intake) = (&self.ctx, &self.config, &self.stops.intake);
        let Pipeline { commands, submissions, controls } = pipeline;
        let parser: SharedParser = Arc::new(RwLock::new(Arc::new(parser(config))));
        let server = IngestServer {
            parser: parser.clone(),
            intake: submissions,
            ctx: ctx.clone(),
            max_line_bytes: config.ingest.max_line_bytes,
            overload_timeout: config.ingest.overload_timeout,
            allowed_uids: config.ingest.allowed_uids.clone(),
            max_connections: config.ingest.max_connections,
            max_pending_reply_bytes: config.ingest.max_pending_reply_bytes,
        };
        if let Some(listener) = front.http {
            let http = crate::ingest::http::HttpIngest::new(server.clone(), &config.ingest);
            let serve = http.serve(listener, cleared(self.registered.subscribe()), intake.clone());
            self.supervisor.spawn_unit("http", serve);
        }
        let (listener, registered, intake_stop) =
            (front.listener, self.registered.subscribe(), intake.clone());
        self.supervisor.spawn_unit("ingest", async move {
            tokio::select! {
                () = cleared(registered) => server.serve(listener, intake_stop).await,
                () = intake_stop.cancelled() => listener.close(),
            }
        });
        let admin = AdminServer {
            ctx: ctx.clone(),
            outbox: front.outbox,
            controls: controls.clone(),
            commands: commands.clone(),
            sandbox: front.sandbox,
            data_dir: config.storage.data_dir.display().to_string(),
            deadline: secs(config.deadline()),
            max_connections: config.admin.max_connections,
            fleet: self.fleet.as_ref().map(|f| (f.settings.host_id.clone(), f.target.clone())),
            notifications: self.notifications.clone(),
        };
        self.supervisor.spawn_unit("admin", admin::serve(admin, front.admin_listener, intake.clone()));
        if let Some(reload) = front.reload {
            // Installed before READY=1: an early `systemctl reload` must not meet SIGHUP's default
            // action, which ends the process.
            let hangups = crate::telemetry::hangups();
            let metrics = ctx.metrics.clone();
            let live = reload::Live { config: config.clone(), parser, commands, controls, metrics };
            self.supervisor
                .spawn_unit("reload", reload::reload_on_hangup(live, reload, hangups, intake.clone()));
        }
    }

    /// Starts the systemd watchdog's pings, once READY=1 is sent: systemd arms the watchdog when
    /// start-up completes, and a ping before READY=1 would only be noise.
    fn spawn_watchdog(&mut self) {
        if let Some(every) = crate::systemd::watchdog_interval() {
            let (health, checkpoint) = (self.ctx.health.clone(), self.config.storage.checkpoint_interval);
            let intake = self.stops.intake.clone();
            let pings = watchdog::watchdog(self.notifier.clone(), every, health, checkpoint, intake);
            self.supervisor.spawn_unit("watchdog", pings);
        }
    }
}

/// Opens (and locks) the outbox and reads it back.
async fn open_outbox(config: &Config) -> anyhow::Result<(Arc<Outbox>, Recovered)> {
    let data_dir = config.storage.data_dir.clone();
    let limits = crate::outbox::Limits {
        min_free_bytes: config.storage.min_free_bytes,
        journal_segment_bytes: config.storage.journal_segment_size,
    };
    let (outbox, recovered) = tokio::task::spawn_blocking(move || Outbox::open(&data_dir, limits))
        .await
        .context("outbox task panicked")??;
    let outbox = Arc::new(outbox);
    tracing::info!(
        outbox = %outbox.dir().display(),
        journal_bytes_to_replay = recovered.journal_bytes(),
        sealed_records = recovered.records.len(),
        "outbox opened"
    );
    Ok((outbox, recovered))
}

/// The ingest listener: systemd's (its file watched, never removed), or one meterd binds.
fn bind_ingest(
    config: &Config,
    activated: Option<std::os::unix::net::UnixListener>,
) -> anyhow::Result<Watched> {
    if let Some(listener) = activated {
        listener.set_nonblocking(true)?;
        tracing::info!("serving the ingest socket systemd passed (socket activation)");
        let file = SocketFile::passed(&listener);
        return Ok(Watched::new(tokio::net::UnixListener::from_std(listener)?, file, "ingest"));
    }
    let group = match config.ingest.socket_group.as_str() {
        "" => None,
        name => Some(crate::unix::resolve_group(name).map_err(anyhow::Error::msg)?),
    };
    let (listener, file) =
        SocketFile::bind(&config.ingest.socket, config.socket_mode(), group).map_err(anyhow::Error::msg)?;
    Ok(Watched::new(listener, file, "ingest"))
}

/// The commit stage runs on its own thread; a supervised task waits for its result, so that the
/// thread's end (or panic) is seen like any task's.
fn spawn_commit_thread(
    supervisor: &mut Supervisor,
    shared: Arc<commit::Shared>,
    commands: mpsc::Receiver<commit::Command>,
) -> anyhow::Result<()> {
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name("meterd-commit".into())
        .spawn(move || {
            let _ = done.send(commit::run(shared, commands));
        })
        .context("failed to start the commit thread")?;
    supervisor.spawn("commit", async move {
        match result.await {
            Ok(result) => result.context("final checkpoint failed; the log replays what was acknowledged"),
            Err(_) => anyhow::bail!("the commit thread ended without a result (it panicked)"),
        }
    });
    Ok(())
}

impl<A: MeteringApi + Clone + 'static> Running<A> {
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// Registers usage where configured, declares meterd ready, and runs until `shutdown`, a
    /// fatal failure, or a task that ends on its own; then shuts down within `shutdown.grace`.
    pub async fn serve(
        mut self,
        shutdown: impl Future<Output = ()>,
        ready: impl FnOnce(&Endpoints),
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut failure: Option<anyhow::Error> = None;
        let serving = match self.register(&mut shutdown).await {
            Ok(serving) => serving,
            Err(refused) => {
                failure = Some(refused.into());
                false
            }
        };
        if serving {
            self.ctx.health.set_serving();
            tracing::info!(socket = %self.endpoints.socket.display(), metrics = %self.endpoints.metrics, "meterd ready");
            self.notifier.notify("READY=1\nSTATUS=accepting events");
            self.spawn_watchdog();
            ready(&self.endpoints);
            tokio::select! {
                _ = &mut shutdown => {}
                _ = self.ctx.fatal.cancelled() => {}
                (task, end) = self.supervisor.next_end() => {
                    tracing::error!(task, "the {task} task {end} while meterd was running; stopping so that a restart replays the outbox");
                    failure = Some(anyhow::anyhow!("the {task} task {end}"));
                }
            }
        }
        let grace = self.config.shutdown.grace;
        let stopped = self.shutdown(grace).await;
        match failure {
            Some(failure) => Err(failure),
            None => stopped,
        }
    }

    /// RegisterUsage (`aws.register_usage`): a paid container product must not run unregistered,
    /// so meterd is not ready until it succeeds, and a refusal ends it. `Ok(false)`: stopped (or
    /// a stage failed) while registering.
    async fn register(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, RegistrationRefused> {
        let Some(request) = registration(&self.config) else { return Ok(true) };
        self.notifier.notify("STATUS=registering usage with AWS Marketplace");
        tokio::select! {
            result = crate::submit::register(&self.api, &request, &self.ctx) => {
                result?;
                self.registered.send_replace(true);
                Ok(true)
            }
            _ = shutdown.as_mut() => Ok(false),
            _ = self.ctx.fatal.cancelled() => Ok(false),
            (task, end) = self.supervisor.next_end() => {
                tracing::error!(task, "the {task} task {end} while meterd was registering; stopping");
                Ok(false)
            }
        }
    }

    /// Stops every stage in order within `grace` (see the module header).
    pub async fn shutdown(mut self, grace: Duration) -> anyhow::Result<()> {
        if self.ctx.failed() {
            tracing::error!("a stage failed; shutting down");
        }
        self.notifier.notify("STOPPING=1\nSTATUS=stopping");
        self.ctx.health.set_stopping();
        let mut trouble = Vec::new();
        let started = std::time::Instant::now();
        self.stops.shutdown_by.send_replace(Some(tokio::time::Instant::now() + grace));
        let drained = tokio::time::timeout(grace, async {
            self.stops.intake.cancel();
            trouble.extend(
                self.supervisor
                    .wait_for(&["ingest", "http", "admin", "reload", "watchdog", "ticker", "notifications"])
                    .await,
            );
            if let Some(commands) = self.flush_on_stop.take() {
                flush_open_hours(commands, self.fleet.is_some()).await;
            }
            // Every sender of the commit queue is gone now: the commit thread checkpoints and ends.
            trouble.extend(self.supervisor.wait_for(&["commit"]).await);
            if self.config.aws.mode == Mode::MeterUsage && self.fleet.is_none() {
                drain_submissions(
                    &self.ctx,
                    grace.saturating_sub(started.elapsed() + Duration::from_millis(500)),
                )
                .await;
            }
            self.stops.submit.cancel();
            trouble.extend(self.supervisor.wait_for(&["submit", "ship", "fleet"]).await);
        })
        .await;
        self.stops.metrics.cancel();
        trouble.extend(self.supervisor.wait_for(&["metrics"]).await);
        self.supervisor.abort_all();
        if drained.is_err() {
            anyhow::bail!(
                "shutdown did not finish within {}; the log replays what was acknowledged",
                crate::duration::format(grace)
            );
        }
        if let Some((task, end)) = trouble.into_iter().find(|(_, end)| !matches!(end, End::Returned)) {
            tracing::error!(task, "the {task} task {end} during shutdown");
            return match end {
                End::Failed(err) => Err(err),
                end => Err(anyhow::anyhow!("the {task} task {end} during shutdown")),
            };
        }
        if self.ctx.failed() {
            anyhow::bail!("stopped after a storage failure");
        }
        tracing::info!("meterd stopped");
        Ok(())
    }
}
