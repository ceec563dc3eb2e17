//! The one place the daemon's tasks are spawned. Every task has a name; the daemon watches for
//! any of them to end, and a task that ends or panics before shutdown began is an ERROR that
//! stops meterd with a non-zero exit: a submit loop that died would otherwise leave meterd
//! acknowledging events it never bills. systemd, ECS and Kubernetes restart the process, and
//! replay makes the restart safe.
//!
//! Test fault point: `METERD_TEST_FAIL_TASK=<task>` makes that task panic (`<task>:return`: end
//! quietly) [`FAIL_AFTER_ENV`] milliseconds (default 200) after it starts, so that tests can prove
//! the above.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use tokio::task::{Id, JoinSet};

/// Environment variable of the fault point.
pub const FAIL_TASK_ENV: &str = "METERD_TEST_FAIL_TASK";
/// When the fault point fires, in milliseconds after the task starts.
pub const FAIL_AFTER_ENV: &str = "METERD_TEST_FAIL_AFTER_MS";

/// How a supervised task ended.
#[derive(Debug)]
pub enum End {
    Returned,
    Failed(anyhow::Error),
    Panicked(String),
    /// Aborted by the supervisor (it outlived the shutdown grace).
    Cancelled,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Returned => f.write_str("returned"),
            End::Failed(err) => write!(f, "failed: {err:#}"),
            End::Panicked(message) => write!(f, "panicked: {message}"),
            End::Cancelled => f.write_str("was cancelled"),
        }
    }
}

/// The daemon's tasks.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
    /// Tasks that ended and were reported, by name.
    ended: HashSet<&'static str>,
    fault: Option<Fault>,
}

/// The test fault point's setting.
#[derive(Debug, Clone)]
struct Fault {
    task: String,
    panics: bool,
    after: Duration,
}

impl Supervisor {
    pub fn new() -> Self {
        let after = std::env::var(FAIL_AFTER_ENV).ok().and_then(|ms| ms.parse().ok()).unwrap_or(200);
        let fault = std::env::var(FAIL_TASK_ENV).ok().map(|value| {
            let (task, panics) = match value.split_once(':') {
                Some((task, "return")) => (task.to_string(), false),
                _ => (value, true),
            };
            tracing::warn!(task, "{FAIL_TASK_ENV} is set: this task will fail on purpose (tests only)");
            Fault { task, panics, after: Duration::from_millis(after) }
        });
        Self { fault, ..Self::default() }
    }

    /// Spawns `task` under `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let handle = match self.fault.as_ref().filter(|fault| fault.task == name) {
            Some(fault) => self.tasks.spawn(faulty(name, fault.clone(), task)),
            None => self.tasks.spawn(task),
        };
        self.names.insert(handle.id(), name);
    }

    /// Spawns `task`, which has no result of its own, under `name`.
    pub fn spawn_unit<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, async move {
            task.await;
            Ok(())
        });
    }

    /// Whether a task of this name is running or ran.
    pub fn has(&self, name: &str) -> bool {
        self.names.values().any(|n| *n == name)
    }

    /// The next task to end, and how; pending forever when none is left.
    pub async fn next_end(&mut self) -> (&'static str, End) {
        loop {
            let Some(joined) = self.tasks.join_next_with_id().await else {
                return std::future::pending().await;
            };
            let (id, end) = match joined {
                Ok((id, Ok(()))) => (id, End::Returned),
                Ok((id, Err(err))) => (id, End::Failed(err)),
                Err(err) if err.is_panic() => (err.id(), End::Panicked(panic_message(err.into_panic()))),
                Err(err) => (err.id(), End::Cancelled),
            };
            if let Some(name) = self.names.get(&id).copied() {
                self.ended.insert(name);
                return (name, end);
            }
        }
    }

    /// Waits until every task in `names` has ended; returns each one that did not simply return.
    pub async fn wait_for(&mut self, names: &[&'static str]) -> Vec<(&'static str, End)> {
        let mut trouble = Vec::new();
        while names.iter().any(|n| self.has(n) && !self.ended.contains(n)) {
            match self.next_end().await {
                (_, End::Returned) => {}
                (name, end) => trouble.push((name, end)),
            }
        }
        trouble
    }

    /// Aborts whatever is still running.
    pub fn abort_all(&mut self) {
        self.tasks.abort_all();
    }
}

/// `task`, made to fail shortly after it starts (the test fault point).
async fn faulty<F>(name: &'static str, fault: Fault, task: F) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::select! {
        result = task => result,
        () = tokio::time::sleep(fault.after) => {
            if fault.panics {
                panic!("{FAIL_TASK_ENV} made the {name} task panic");
            }
            Ok(())
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map_or("(no message)", |s| s).to_string(),
    }
}
