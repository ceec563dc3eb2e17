//! Logging, process signals and metrics shared by every command.

pub mod metrics;

use signal_hook::consts::{SIGINT, SIGTERM};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Logs to stderr, level from `RUST_LOG` (default `info`), so stdout stays free for output that
/// scripts read.
pub fn init_stderr() {
    init(LogFormat::Text, "info");
}

/// Logs to stderr in `format`; `RUST_LOG`, when set, overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second call (tests, `run` after `init_stderr`) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
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
