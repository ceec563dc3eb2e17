//! The systemd watchdog: pings only while the commit thread keeps turning.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::systemd::Notifier;
use crate::telemetry::health::Health;

/// Sends `WATCHDOG=1` every `every` while the commit thread keeps turning (it turns at least
/// once per checkpoint interval); a wedged commit thread stops the pings and systemd restarts us.
pub(super) async fn watchdog(
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
