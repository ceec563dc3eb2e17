//! What the commit stage answers for each event: counted (with the id it is acknowledged
//! under), a duplicate, refused, or not stored.

use super::sync::Delivery;
use crate::aggregate::{AdmitError, Admitted};

/// The id an acknowledgement names: the client's own, or one made up from the commit it was in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckId {
    Client(String),
    Generated { commit: u64, index: u32 },
}

/// What became of one event of a [`super::Submission`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durable and counted.
    Counted(AckId),
    /// Its id was accepted before: not counted again (the earlier event is durable).
    Duplicate(String),
    /// Refused by the aggregator's rules; nothing was counted.
    Refused { id: Option<String>, error: AdmitError },
    /// The outbox could not make it durable; nothing was counted.
    NotStored { id: Option<String> },
}

impl Outcome {
    /// Whether the client is told `ok`.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Counted(_) | Outcome::Duplicate(_))
    }
}

/// Moves the clients' ids of what was logged (in order, one per counted event) into their
/// acknowledgements, and empties `logged`: the ids are moved, never copied.
pub(super) fn take_logged_ids(logged: &mut Vec<Admitted>, deliveries: &mut [Delivery]) {
    let mut logged = logged.drain(..);
    for outcome in deliveries.iter_mut().flat_map(|delivery| delivery.outcomes.iter_mut()) {
        if let Outcome::Counted(ack) = outcome {
            let admitted = logged.next().expect("one logged event per counted outcome");
            if let (AckId::Client(id), Some(client)) = (ack, admitted.id) {
                *id = client.key.id;
            }
        }
    }
    debug_assert!(logged.next().is_none(), "one counted outcome per logged event");
}

/// Turns every `ok` outcome into `NotStored`: nothing of the group may be confirmed.
pub(super) fn refuse_acks(outcomes: &mut [Outcome]) {
    for outcome in outcomes.iter_mut() {
        let id = match outcome {
            Outcome::Counted(AckId::Client(id)) | Outcome::Duplicate(id) => Some(std::mem::take(id)),
            Outcome::Counted(AckId::Generated { .. }) => None,
            Outcome::Refused { .. } | Outcome::NotStored { .. } => continue,
        };
        *outcome = Outcome::NotStored { id };
    }
}
