//! SIGHUP: read the configuration again and apply the settings that may change while running.
//! Which ones those are is declared with each key in `config/mod.rs`; a change to any other key is
//! logged and waits for a restart.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Reloader, parser, rules, settings};
use crate::commit::Command;
use crate::config::Config;
use crate::ingest::SharedParser;
use crate::submit::Control;
use crate::telemetry::metrics::Metrics;

/// The running settings a reload can change, and where to send the changes.
pub(super) struct Live {
    pub config: Config,
    pub parser: SharedParser,
    pub commands: mpsc::Sender<Command>,
    pub controls: mpsc::Sender<Control>,
    pub metrics: Arc<Metrics>,
}

/// Applies the configuration again on every SIGHUP, until `cancel`.
pub(super) async fn reload_on_hangup(
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
    /// Takes the reloadable keys of `file` and hands every stage its settings anew. Every other
    /// key keeps its running value, so what runs and the next reload's comparison agree.
    async fn apply(&mut self, file: Config) {
        // The file is valid; what would run (its reloadable keys over the running others) must
        // be too: `aws.products` in the file while `aws.product_code` runs, or the file's
        // `aws.product_code` (which waits for a restart) in place of the running `aws.products`.
        let mut next = self.config.clone();
        let applied = next.apply_reloadable(&file);
        if let Err(err) = next.validate().and_then(|()| next.clone().check_billing().map(drop)) {
            self.metrics.config_reloads.with_label_values(&["invalid"]).inc();
            tracing::error!(
                "reload refused, the running settings stay: the keys a reload applies do not fit the ones that need a restart: {err}"
            );
            return;
        }
        self.config = next;
        let restart = self.config.changed_keys(&file);
        if !applied.is_empty() {
            let new = &self.config;
            *self.parser.write().expect("parser lock") = Arc::new(parser(new));
            self.metrics.export_products(new.aws.products().iter().map(|p| p.code.as_str()));
            let _ = self.commands.send(Command::Reconfigure(rules(new))).await;
            let _ = self.controls.send(Control::Reconfigure(settings(new))).await;
            crate::telemetry::set_level(&new.log.level);
        }
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        tracing::info!(applied = ?applied, "configuration reloaded");
        if !restart.is_empty() {
            tracing::warn!(keys = ?restart, "these settings changed but take effect only after a restart");
        }
    }
}
