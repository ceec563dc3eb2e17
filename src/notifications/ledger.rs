//! What the consumer remembers across restarts: the message ids it has seen (at least 25 hours,
//! so that a message delivered twice has no second effect) and each customer's lifecycle state.
//!
//! One file, `<data_dir>/notifications/ledger`: JSON lines, each appended and `fdatasync`ed before
//! the consumer goes on (the message is deleted only after that). A torn last line (a crash
//! mid-write) is ignored; an unreadable line elsewhere is skipped with an ERROR.
//!
//! | line | written when | means |
//! |---|---|---|
//! | `{"t":"seen","at":…,"ids":[…],"change":null}` | a message was ignored | its ids were seen |
//! | `{"t":"seen","at":…,"ids":[…],"change":{…}}` | before a message's effect | its ids were seen, and the customer's state is now `change` (not yet applied) |
//! | `{"t":"applied","id":…}` | after the effect is durable | the change made by message `id` was applied |
//! | `{"t":"state","state":{…}}` | by compaction | a customer's state, as it stood |
//!
//! A change written but not applied (a crash, a failed effect) is applied at the next start, or
//! when its message comes again: the state is what counts, so the change happens once. At start,
//! and once an hour, the file is rewritten without ids older than [`REMEMBER_SECS`].

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Subscriber;

/// How long a message id is remembered: more than the 25 hours asked for, as ids are dropped
/// only when the file is compacted.
pub const REMEMBER_SECS: i64 = 26 * 3600;

/// A customer's subscription state, as notifications last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Subscribed,
    Ending,
    Ended,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Subscribed => "subscribed",
            State::Ending => "ending",
            State::Ended => "ended",
        }
    }
}

/// One lifecycle change: who, to which state, because of which message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub subscriber: Subscriber,
    pub state: State,
    /// The notification's action or detail type.
    pub kind: String,
    /// The message's first id (`sns:…`, `eventbridge:…` or `sqs:…`).
    pub message: String,
    /// When meterd took it (epoch seconds, meterd's clock).
    pub at: i64,
}

/// A customer's current state and the changes that led to it (the last [`HISTORY`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerState {
    pub current: Transition,
    /// Whether `current`'s effect was applied (durable).
    pub applied: bool,
    pub history: Vec<Transition>,
}

/// Changes kept per customer for `meterd customer`.
const HISTORY: usize = 8;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Line {
    Seen { at: i64, ids: Vec<String>, change: Option<Transition> },
    Applied { id: String },
    State { state: CustomerState },
}

/// A failure to read or write the ledger.
#[derive(Debug, thiserror::Error)]
#[error("notification ledger {path}: {source}")]
pub struct LedgerError {
    path: String,
    source: std::io::Error,
}

/// The seen ids and the customers' states, in memory and in their file.
pub struct Ledger {
    path: PathBuf,
    file: File,
    seen: HashMap<String, i64>,
    customers: BTreeMap<Subscriber, CustomerState>,
}

impl Ledger {
    /// Reads `<dir>/ledger` (creating `dir`), then rewrites it without ids older than
    /// [`REMEMBER_SECS`].
    pub fn open(dir: &Path, now: i64) -> Result<Self, LedgerError> {
        let path = dir.join("ledger");
        let fail = |source| LedgerError { path: path.display().to_string(), source };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let file = OpenOptions::new().create(true).append(true).read(true).open(&path).map_err(fail)?;
        let mut ledger =
            Ledger { path: path.clone(), file, seen: HashMap::new(), customers: BTreeMap::new() };
        let lines: Vec<String> = BufReader::new(File::open(&path).map_err(fail)?)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let last = lines.len().saturating_sub(1);
        for (n, line) in lines.iter().enumerate() {
            match serde_json::from_str::<Line>(line) {
                Ok(line) => ledger.apply(line),
                // A torn last line is a write a crash cut short: its message was not deleted.
                Err(_) if n == last => {
                    tracing::warn!(path = %path.display(), "the notification ledger's last line is torn; ignored")
                }
                Err(err) => {
                    tracing::error!(path = %path.display(), line = n + 1, %err, "an unreadable notification ledger line; skipped")
                }
            }
        }
        ledger.compact(now)?;
        Ok(ledger)
    }

    fn apply(&mut self, line: Line) {
        match line {
            Line::Seen { at, ids, change } => {
                for id in ids {
                    self.seen.insert(id, at);
                }
                if let Some(change) = change {
                    self.change(change);
                }
            }
            Line::Applied { id } => {
                self.customers
                    .values_mut()
                    .filter(|c| c.current.message == id)
                    .for_each(|c| c.applied = true);
            }
            Line::State { state } => {
                self.customers.insert(state.current.subscriber.clone(), state);
            }
        }
    }

    fn change(&mut self, change: Transition) {
        let entry = self.customers.entry(change.subscriber.clone()).or_insert_with(|| CustomerState {
            current: change.clone(),
            applied: false,
            history: Vec::new(),
        });
        entry.current = change.clone();
        entry.applied = false;
        entry.history.push(change);
        if entry.history.len() > HISTORY {
            entry.history.remove(0);
        }
    }

    fn write(&mut self, line: &Line) -> Result<(), LedgerError> {
        let mut text = serde_json::to_string(line).expect("ledger lines always encode");
        text.push('\n');
        let fail = |source| LedgerError { path: self.path.display().to_string(), source };
        self.file.write_all(text.as_bytes()).map_err(fail)?;
        self.file.sync_data().map_err(fail)
    }

    /// Whether any of `ids` was seen.
    pub fn seen(&self, ids: &[String]) -> bool {
        ids.iter().any(|id| self.seen.contains_key(id))
    }

    /// The change one of `ids` made that is not applied yet.
    pub fn pending(&self, ids: &[String]) -> Option<Transition> {
        self.customers
            .values()
            .find(|c| !c.applied && ids.contains(&c.current.message))
            .map(|c| c.current.clone())
    }

    /// Remembers `ids`, and `change` as the customer's state (not yet applied); durable on return.
    pub fn record(&mut self, ids: &[String], change: Option<Transition>, at: i64) -> Result<(), LedgerError> {
        let line = Line::Seen { at, ids: ids.to_vec(), change };
        self.write(&line)?;
        self.apply(line);
        Ok(())
    }

    /// Marks the change made by message `id` applied; durable on return.
    pub fn applied(&mut self, id: &str) -> Result<(), LedgerError> {
        let line = Line::Applied { id: id.to_string() };
        self.write(&line)?;
        self.apply(line);
        Ok(())
    }

    /// Every customer's state.
    pub fn customers(&self) -> impl Iterator<Item = &CustomerState> {
        self.customers.values()
    }

    /// Customers per state: subscribed, ending, ended.
    pub fn counts(&self) -> [(State, usize); 3] {
        [State::Subscribed, State::Ending, State::Ended]
            .map(|state| (state, self.customers.values().filter(|c| c.current.state == state).count()))
    }

    /// Rewrites the file with the ids seen since `now - REMEMBER_SECS` and every customer's
    /// state: a new file, synced, renamed over the old one, its directory synced.
    pub fn compact(&mut self, now: i64) -> Result<(), LedgerError> {
        self.seen.retain(|_, at| *at > now - REMEMBER_SECS);
        let fail = |source| LedgerError { path: self.path.display().to_string(), source };
        let temporary = self.path.with_extension("new");
        let mut out = String::new();
        let mut by_time: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        self.seen.iter().for_each(|(id, at)| by_time.entry(*at).or_default().push(id.clone()));
        for (at, ids) in by_time {
            out.push_str(&serde_json::to_string(&Line::Seen { at, ids, change: None }).expect("encodes"));
            out.push('\n');
        }
        for state in self.customers.values() {
            out.push_str(&serde_json::to_string(&Line::State { state: state.clone() }).expect("encodes"));
            out.push('\n');
        }
        let mut file = File::create(&temporary).map_err(fail)?;
        file.write_all(out.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&temporary, &self.path).map_err(fail)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path).map_err(fail)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(state: State, message: &str, at: i64) -> Transition {
        let subscriber = Subscriber { customers: vec!["c".into()], product: Some("p".into()), license: None };
        Transition { subscriber, state, kind: "unsubscribe-pending".into(), message: message.into(), at }
    }

    #[test]
    fn ids_and_states_survive_a_restart_and_old_ids_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path(), 1000).unwrap();
        let ids = vec!["sqs:1".to_string(), "sns:a".to_string()];
        ledger.record(&ids, Some(transition(State::Ending, "sns:a", 1000)), 1000).unwrap();
        assert_eq!(ledger.pending(&ids).map(|t| t.state), Some(State::Ending));
        ledger.applied("sns:a").unwrap();
        ledger.record(&["sqs:2".to_string()], None, 2000).unwrap();
        drop(ledger);

        let ledger = Ledger::open(dir.path(), 3000).unwrap();
        assert!(ledger.seen(&["sns:a".to_string()]) && ledger.seen(&["sqs:2".to_string()]));
        assert_eq!(ledger.pending(&ids), None, "applied before the restart");
        assert_eq!(ledger.counts()[1], (State::Ending, 1));
        drop(ledger);
        let ledger = Ledger::open(dir.path(), 1000 + REMEMBER_SECS + 1).unwrap();
        assert!(!ledger.seen(&ids), "ids older than REMEMBER_SECS are forgotten");
        assert!(ledger.seen(&["sqs:2".to_string()]));
        assert_eq!(ledger.customers().next().unwrap().current.state, State::Ending, "states stay");
    }

    #[test]
    fn a_change_not_applied_is_still_pending_after_a_restart_and_a_torn_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = Ledger::open(dir.path(), 0).unwrap();
        ledger.record(&["sqs:1".into()], Some(transition(State::Ended, "sqs:1", 5)), 5).unwrap();
        drop(ledger);
        let mut file = OpenOptions::new().append(true).open(dir.path().join("ledger")).unwrap();
        file.write_all(b"{\"t\":\"applied\",\"id\":\"sq").unwrap();
        let ledger = Ledger::open(dir.path(), 10).unwrap();
        assert_eq!(ledger.pending(&["sqs:1".into()]).map(|t| t.state), Some(State::Ended));
    }
}
