//! `meterd run`: wires the stages together and runs them until shutdown.
//!
//! Start-up order: open (and lock) the outbox and read it back → bind the metrics listener and the
//! ingest socket → replay the log into the open hours → start the commit thread, the submit loop,
//! the checkpoint ticker and the listeners. Shutdown order: stop accepting → answer every line
//! already read → final checkpoint and fdatasync → remove the socket, all within `shutdown.grace`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::aggregate::Rules;
use crate::clock::Clock;
use crate::commit::{self, Committer};
use crate::config::Config;
use crate::ingest::{EventParser, IngestServer, bind_socket};
use crate::outbox::Outbox;
use crate::submit::{MeteringApi, Settings, Submitter};
use crate::telemetry::metrics::{self, Metrics};

/// Submissions the commit queue holds before connections wait (and, past `overload_timeout`, refuse).
const COMMIT_QUEUE: usize = 4096;

/// Where a running daemon can be reached.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub socket: PathBuf,
    pub metrics: SocketAddr,
}

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

/// Runs meterd until `shutdown` completes (or a stage fails), then shuts down in order.
/// `ready` is told where the daemon listens once it accepts events.
pub async fn run<A: MeteringApi + 'static>(
    config: Config,
    clock: Clock,
    api: A,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&Endpoints),
) -> anyhow::Result<()> {
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

    let metrics = Metrics::new();
    let metrics_listener = metrics::bind(config.metrics.listen)
        .await
        .with_context(|| format!("failed to listen for metrics on {}", config.metrics.listen))?;
    let socket = config.ingest.socket.clone();
    let listener = bind_socket(&socket, config.socket_mode()).map_err(anyhow::Error::msg)?;

    let fatal = CancellationToken::new();
    let rules = Rules {
        seal_delay: secs(config.submit.seal_delay),
        deadline: secs(config.submit.deadline),
        future_tolerance: secs(config.ingest.future_tolerance),
        late_events: config.submit.late_events,
    };
    let (sealed_tx, sealed_rx) = mpsc::unbounded_channel();
    let committer = Committer::recover(
        outbox.clone(),
        &mut recovered,
        rules,
        clock,
        metrics.clone(),
        sealed_tx,
        fatal.clone(),
    );
    let (commands, command_rx) = mpsc::channel(COMMIT_QUEUE);
    let (commit_done, commit_result) = oneshot::channel();
    std::thread::Builder::new()
        .name("meterd-commit".into())
        .spawn(move || {
            let _ = commit_done.send(committer.run(command_rx));
        })
        .context("failed to start the commit thread")?;

    let settings = Settings {
        deadline: secs(config.submit.deadline),
        max_requests_per_second: config.submit.max_requests_per_second,
        backoff_base: config.submit.backoff_base,
        backoff_max: config.submit.backoff_max,
        pause: config.submit.pause,
    };
    let records = std::mem::take(&mut recovered.records);
    let submitter =
        Submitter::new(api, outbox.clone(), records, clock, metrics.clone(), settings, fatal.clone());
    let stop_submit = CancellationToken::new();
    let submit_task = tokio::spawn(submitter.run(sealed_rx, stop_submit.clone()));

    let stop_ingest = CancellationToken::new();
    let ticker =
        tokio::spawn(commit::tick(commands.clone(), config.storage.checkpoint_interval, stop_ingest.clone()));
    let server = IngestServer {
        parser: EventParser::new(&config.aws.product_code, &config.aws.dimensions),
        commands,
        metrics: metrics.clone(),
        max_line_bytes: config.ingest.max_line_bytes,
        overload_timeout: config.ingest.overload_timeout,
    };
    let ingest_task = tokio::spawn(server.serve(listener, socket.clone(), stop_ingest.clone()));
    let stop_metrics = CancellationToken::new();
    let metrics_addr = metrics_listener.local_addr()?;
    let metrics_task = tokio::spawn(metrics::serve(metrics_listener, metrics.clone(), stop_metrics.clone()));

    let endpoints = Endpoints { socket: socket.clone(), metrics: metrics_addr };
    tracing::info!(socket = %socket.display(), metrics = %metrics_addr, "meterd ready");
    ready(&endpoints);

    tokio::select! {
        _ = shutdown => {}
        _ = fatal.cancelled() => tracing::error!("a stage failed; shutting down"),
    }

    let grace = config.shutdown.grace;
    let drained = tokio::time::timeout(grace, async {
        stop_ingest.cancel();
        let _ = ingest_task.await;
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
