//! What every stage of a running meterd shares: the one clock, the metrics, health and readiness,
//! and the fatal token. It travels as one small value instead of four arguments.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;

/// The clock, metrics, health and fatal token of one running meterd. Cloning it is cheap.
#[derive(Clone)]
pub struct Context {
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Cancelled by a stage that can no longer keep meterd's promises (the outbox failed, a task
    /// ended): the daemon then shuts down and exits non-zero, and its supervisor restarts it.
    pub fatal: CancellationToken,
}

impl Context {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            metrics: Metrics::new(),
            health: Arc::new(Health::new()),
            fatal: CancellationToken::new(),
        }
    }

    /// Stops meterd after a failure the caller has already logged.
    pub fn fail(&self) {
        self.fatal.cancel();
    }

    pub fn failed(&self) -> bool {
        self.fatal.is_cancelled()
    }
}
