//! `meterd run`: wires the stages together and runs them until shutdown.
//!
//! Start-up order: serve `/healthz` and `/readyz` (not ready yet) → open (and lock) the outbox and
//! read it back → bind the ingest socket (or take systemd's) and the admin socket → replay the log
//! into the open hours → start the commit thread, the submit loop, the checkpoint ticker and the
//! listeners → ready (`/readyz`, `READY=1`). Shutdown order: `STOPPING=1` → stop accepting →
//! answer every line already read → final checkpoint and fdatasync → remove the sockets meterd
//! bound, all within `shutdown.grace`. SIGHUP reloads what can change while running.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminServer};
use crate::aggregate::{Heartbeat, Rules, Scope};
use crate::clock::Clock;
use crate::commit::{self, Command, Committer};
use crate::config::{Config, ConfigError, Mode};
use crate::ingest::{EventParser, IngestServer, SharedParser, bind_socket, resolve_group};
use crate::outbox::Outbox;
use crate::submit::{Control, MeteringApi, RegisterRequest, Settings, Submitter};
use crate::systemd::Notifier;
use crate::telemetry::health::{Health, RegistrationStatus};
use crate::telemetry::metrics::{self, Metrics};

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
}

impl Host {
    /// No systemd, no reload: tests and embedders.
    pub fn plain() -> Self {
        Host { activated_socket: None, notifier: Notifier::disabled(), reload: None }
    }
}

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

fn rules(config: &Config) -> Rules {
    Rules {
        seal_delay: secs(config.submit.seal_delay),
        deadline: secs(config.submit.deadline),
        future_tolerance: secs(config.ingest.future_tolerance),
        late_events: config.submit.late_events,
    }
}

fn settings(config: &Config) -> Settings {
    Settings {
        deadline: secs(config.submit.deadline),
        max_requests_per_second: config.submit.max_requests_per_second,
        backoff_base: config.submit.backoff_base,
        backoff_max: config.submit.backoff_max,
        pause: config.submit.pause,
        retention: secs(config.storage.retention),
    }
}

/// The heartbeat of `submit.heartbeat_dimensions`.
fn heartbeat(config: &Config) -> Option<Heartbeat> {
    let dimensions = &config.submit.heartbeat_dimensions;
    (config.aws.mode == Mode::MeterUsage && !dimensions.is_empty()).then(|| Heartbeat {
        scope: Scope::ProductCode(config.aws.product_code.clone()),
        dimensions: dimensions.clone(),
    })
}

/// RegisterUsage's arguments when `aws.register_usage` is on.
fn registration(config: &Config) -> Option<RegisterRequest> {
    config.aws.register_usage.then(|| RegisterRequest {
        product_code: config.aws.product_code.clone(),
        public_key_version: config.aws.public_key_version,
        nonce: (!config.aws.nonce.is_empty()).then(|| config.aws.nonce.clone()),
        backoff_base: config.submit.backoff_base,
        backoff_max: config.submit.backoff_max,
    })
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
    let Host { activated_socket, notifier, reload } = host;
    tokio::pin!(shutdown);
    let notifier = Arc::new(notifier);
    let metrics = Metrics::new();
    let health = Arc::new(Health::new());
    if let Some(request) = registration(&config) {
        health.set_registration(RegistrationStatus::pending(request.public_key_version));
    }
    let metrics_listener = metrics::bind(config.metrics.listen)
        .await
        .with_context(|| format!("failed to listen for metrics on {}", config.metrics.listen))?;
    let metrics_addr = metrics_listener.local_addr()?;
    tracing::info!(metrics = %metrics_addr, "serving metrics, /healthz and /readyz");
    let stop_metrics = CancellationToken::new();
    let metrics_task =
        tokio::spawn(metrics::serve(metrics_listener, metrics.clone(), health.clone(), stop_metrics.clone()));

    let data_dir = config.storage.data_dir.clone();
    let (outbox, mut recovered) = tokio::task::spawn_blocking(move || Outbox::open(&data_dir))
        .await
        .context("outbox task panicked")??;
    let outbox = Arc::new(outbox);
    tracing::info!(
        outbox = %outbox.dir().display(),
        log_events = recovered.log.len(),
        sealed_records = recovered.records.len(),
        "outbox opened"
    );

    let socket = config.ingest.socket.clone();
    let owns_socket = activated_socket.is_none();
    let listener = match activated_socket {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            tracing::info!("serving the ingest socket systemd passed (socket activation)");
            tokio::net::UnixListener::from_std(listener)?
        }
        None => {
            let group = match config.ingest.socket_group.as_str() {
                "" => None,
                name => Some(resolve_group(name).map_err(anyhow::Error::msg)?),
            };
            bind_socket(&socket, config.socket_mode(), group).map_err(anyhow::Error::msg)?
        }
    };
    let admin_socket = config.admin.socket.clone();
    let admin_listener =
        bind_socket(&admin_socket, config.admin_socket_mode(), None).map_err(anyhow::Error::msg)?;

    let fatal = CancellationToken::new();
    let (sealed_tx, sealed_rx) = mpsc::unbounded_channel();
    let committer = Committer::recover(
        outbox.clone(),
        &mut recovered,
        rules(&config),
        clock,
        metrics.clone(),
        sealed_tx,
        fatal.clone(),
        health.clone(),
        config.storage.max_bytes,
    )
    .with_heartbeat(heartbeat(&config));
    let (commands, command_rx) = mpsc::channel(COMMIT_QUEUE);
    let (commit_done, commit_result) = oneshot::channel();
    std::thread::Builder::new()
        .name("meterd-commit".into())
        .spawn(move || {
            let _ = commit_done.send(committer.run(command_rx));
        })
        .context("failed to start the commit thread")?;

    let records = std::mem::take(&mut recovered.records);
    let submitter = Submitter::new(
        api.clone(),
        outbox.clone(),
        records,
        clock,
        metrics.clone(),
        health.clone(),
        settings(&config),
        fatal.clone(),
    );
    let (controls, control_rx) = mpsc::channel(16);
    let stop_submit = CancellationToken::new();
    let submit_task = tokio::spawn(submitter.run(sealed_rx, control_rx, stop_submit.clone()));

    let stop_ingest = CancellationToken::new();
    let ticker =
        tokio::spawn(commit::tick(commands.clone(), config.storage.checkpoint_interval, stop_ingest.clone()));
    let parser: SharedParser = Arc::new(RwLock::new(Arc::new(EventParser::new(
        &config.aws.product_code,
        &config.aws.dimensions,
        config.aws.mode,
    ))));
    let server = IngestServer {
        parser: parser.clone(),
        commands: commands.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        max_line_bytes: config.ingest.max_line_bytes,
        overload_timeout: config.ingest.overload_timeout,
        allowed_uids: config.ingest.allowed_uids.clone(),
        owns_socket,
    };
    let ingest_task = tokio::spawn(server.serve(listener, socket.clone(), stop_ingest.clone()));
    let admin = AdminServer {
        outbox: outbox.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        controls: controls.clone(),
        clock,
        data_dir: config.storage.data_dir.display().to_string(),
        deadline: secs(config.submit.deadline),
    };
    let admin_task =
        tokio::spawn(admin::serve(admin, admin_listener, admin_socket.clone(), stop_ingest.clone()));
    let reload_task = reload.map(|reload| {
        // Installed before READY=1: an early `systemctl reload` must not meet SIGHUP's default
        // action, which ends the process.
        let hangups = crate::telemetry::hangups();
        let live = Live { config: config.clone(), parser, commands, controls, metrics: metrics.clone() };
        tokio::spawn(reload_on_hangup(live, reload, hangups, stop_ingest.clone()))
    });
    let watchdog_task = crate::systemd::watchdog_interval().map(|every| {
        let notifier = notifier.clone();
        tokio::spawn(watchdog(
            notifier,
            every,
            health.clone(),
            config.storage.checkpoint_interval,
            stop_ingest.clone(),
        ))
    });

    // A paid container product must not run unregistered: until RegisterUsage succeeds meterd is
    // not ready, and a refusal ends it.
    let registered = match registration(&config) {
        None => Ok(true),
        Some(request) => {
            notifier.notify("STATUS=registering usage with AWS Marketplace");
            tokio::select! {
                result = crate::submit::register(&api, &request, &health, &metrics, || clock.now()) => result.map(|_| true),
                _ = &mut shutdown => Ok(false),
                _ = fatal.cancelled() => Ok(false),
            }
        }
    };
    // `Ok(false)`: stopped (or a stage failed) while registering.
    let refused = match registered {
        Ok(true) => {
            let endpoints = Endpoints { socket: socket.clone(), admin_socket, metrics: metrics_addr };
            health.set_serving();
            tracing::info!(socket = %socket.display(), metrics = %metrics_addr, "meterd ready");
            notifier.notify("READY=1\nSTATUS=accepting events");
            ready(&endpoints);
            tokio::select! {
                _ = &mut shutdown => {}
                _ = fatal.cancelled() => {}
            }
            None
        }
        Ok(false) => None,
        Err(refused) => Some(refused),
    };
    if fatal.is_cancelled() {
        tracing::error!("a stage failed; shutting down");
    }
    notifier.notify("STOPPING=1\nSTATUS=stopping");
    health.set_stopping();

    let grace = config.shutdown.grace;
    let drained = tokio::time::timeout(grace, async {
        stop_ingest.cancel();
        let _ = ingest_task.await;
        let _ = admin_task.await;
        if let Some(task) = reload_task {
            let _ = task.await;
        }
        if let Some(task) = watchdog_task {
            let _ = task.await;
        }
        let _ = ticker.await;
        // Every sender of the commit queue is gone now: the commit thread checkpoints and ends.
        let committed = commit_result.await;
        stop_submit.cancel();
        let _ = submit_task.await;
        committed
    })
    .await;
    stop_metrics.cancel();
    let _ = metrics_task.await;
    if let Some(refused) = refused {
        return Err(refused.into());
    }
    match drained {
        Err(_) => anyhow::bail!(
            "shutdown did not finish within {}; the log replays what was acknowledged",
            crate::duration::format(grace)
        ),
        Ok(Err(_)) => anyhow::bail!("the commit thread ended without a result"),
        Ok(Ok(Err(err))) => {
            Err(err).context("final checkpoint failed; the log replays what was acknowledged")
        }
        Ok(Ok(Ok(()))) if fatal.is_cancelled() => anyhow::bail!("stopped after a storage failure"),
        Ok(Ok(Ok(()))) => {
            tracing::info!("meterd stopped");
            Ok(())
        }
    }
}

/// The running settings a reload can change, and where to send the changes.
struct Live {
    config: Config,
    parser: SharedParser,
    commands: mpsc::Sender<Command>,
    controls: mpsc::Sender<Control>,
    metrics: Arc<Metrics>,
}

/// Settings that a reload applies; a change to any other key waits for a restart.
const RELOADABLE: [&str; 4] =
    ["aws.dimensions", "submit.max_requests_per_second", "submit.seal_delay", "log.level"];

async fn reload_on_hangup(
    mut live: Live,
    reload: Reloader,
    mut hangups: mpsc::Receiver<()>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            Some(()) = hangups.recv() => {}
            _ = cancel.cancelled() => return,
        }
        // Reading and checking one small file; quick enough for the runtime thread.
        match reload() {
            Ok(new) => live.apply(new).await,
            Err(err) => {
                live.metrics.config_reloads.with_label_values(&["invalid"]).inc();
                tracing::error!("reload refused, the running settings stay: {err}");
            }
        }
    }
}

impl Live {
    async fn apply(&mut self, file: Config) {
        let restart: Vec<String> = changed_keys(&self.config, &file)
            .into_iter()
            .filter(|k| !RELOADABLE.contains(&k.as_str()))
            .collect();
        // Only the reloadable keys change what runs; every other key keeps its running value, so
        // the rules and settings sent below, and the next reload's comparison, match what runs.
        let old = self.config.clone();
        self.config.aws.dimensions = file.aws.dimensions;
        self.config.submit.seal_delay = file.submit.seal_delay;
        self.config.submit.max_requests_per_second = file.submit.max_requests_per_second;
        self.config.log.level = file.log.level;
        let new = &self.config;
        let mut applied = Vec::new();
        if new.aws.dimensions != old.aws.dimensions {
            let parser = EventParser::new(&new.aws.product_code, &new.aws.dimensions, new.aws.mode);
            *self.parser.write().expect("parser lock") = Arc::new(parser);
            applied.push("aws.dimensions");
        }
        if new.submit.seal_delay != old.submit.seal_delay {
            let _ = self.commands.send(Command::Reconfigure(rules(new))).await;
            applied.push("submit.seal_delay");
        }
        if new.submit.max_requests_per_second != old.submit.max_requests_per_second {
            let _ = self.controls.send(Control::Reconfigure(settings(new))).await;
            applied.push("submit.max_requests_per_second");
        }
        if new.log.level != old.log.level {
            crate::telemetry::set_level(&new.log.level);
            applied.push("log.level");
        }
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        tracing::info!(applied = ?applied, "configuration reloaded");
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "these settings changed but take effect only after a restart");
        }
    }
}

/// `section.key` names whose values differ.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) =
        (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default());
    let mut out = Vec::new();
    if let (Some(old), Some(new)) = (old.as_object(), new.as_object()) {
        for (section, values) in new {
            let Some(values) = values.as_object() else { continue };
            for (key, value) in values {
                if old.get(section).and_then(|s| s.get(key)) != Some(value) {
                    out.push(format!("{section}.{key}"));
                }
            }
        }
    }
    out
}

/// Sends `WATCHDOG=1` every `every` while the commit thread keeps turning (it turns at least
/// once per checkpoint interval); a wedged commit thread stops the pings and systemd restarts us.
async fn watchdog(
    notifier: Arc<Notifier>,
    every: Duration,
    health: Arc<Health>,
    checkpoint: Duration,
    cancel: CancellationToken,
) {
    let stale = (checkpoint * 3).max(every * 2);
    let mut interval = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let since = health.since_commit_turn();
        if since <= stale {
            notifier.notify("WATCHDOG=1");
        } else {
            tracing::error!(
                since_ms = since.as_millis() as u64,
                "commit thread not turning; withholding the watchdog ping"
            );
        }
    }
}
