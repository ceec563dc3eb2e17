//! Logging, process signals and metrics shared by every command.

pub mod health;
pub mod metrics;

use signal_hook::consts::{SIGINT, SIGTERM};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Logs to stderr, level from `RUST_LOG` (default `info`), so stdout stays free for output that
/// scripts read.
pub fn init_stderr() {
    init(LogFormat::Text, "info");
}

type FilterHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

static FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

/// Logs to stderr in `format`; `RUST_LOG`, when set, overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // Colour only for a person at a terminal: journald, files and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    // A second call (tests, `run` after `init_stderr`) keeps the first subscriber.
    let installed = match format {
        LogFormat::Text => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set(handle);
    }
}

/// Applies a new `log.level` (after a reload); `RUST_LOG`, when set, still wins.
pub fn set_level(level: &str) {
    if std::env::var_os("RUST_LOG").is_some() {
        return;
    }
    if let (Some(handle), Ok(filter)) = (FILTER.get(), EnvFilter::try_new(level)) {
        let _ = handle.reload(filter);
    }
}

/// Yields once per SIGHUP, from signal-hook's thread.
pub fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(mut signals) => {
            let spawned = std::thread::Builder::new().name("meterd-sighup".into()).spawn(move || {
                for _ in signals.forever() {
                    // A reload already queued covers this one too.
                    let _ = tx.try_send(());
                }
            });
            if let Err(err) = spawned {
                tracing::error!(%err, "cannot watch SIGHUP; reload needs a restart");
            }
        }
        Err(err) => tracing::error!(%err, "cannot install the SIGHUP handler; reload needs a restart"),
    }
    rx
}

/// Completes on the first SIGTERM or SIGINT. signal-hook's iterator runs on its own thread, so a
/// signal is seen even while every runtime worker is busy.
pub async fn shutdown_signal() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            std::thread::Builder::new()
                .name("meterd-signals".into())
                .spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        let _ = tx.send(signal);
                    }
                })
                .expect("spawning the signal thread");
            if let Ok(signal) = rx.await {
                tracing::info!(signal, "shutdown requested");
            }
        }
        Err(err) => {
            tracing::error!(%err, "cannot install signal handlers; meterd stops only when killed");
            std::future::pending::<()>().await;
        }
    }
}
