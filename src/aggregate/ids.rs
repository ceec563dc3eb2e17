//! Client idempotency ids: which ids were accepted in the last [`ID_TTL_SECS`], for which event.
//!
//! An id is scoped to the peer uid that sent it (two applications under different uids cannot
//! collide or answer for each other), and remembered with a digest of the event it came with: a
//! resend of the same event is a duplicate, a different event under a known id is refused
//! (`id_conflict`). Ids remembered before ids were scoped and digested (an outbox written by an
//! older meterd) are *legacy*: they match any peer and any content, as they did then, until they
//! expire.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::Event;

/// How long a client id is remembered after its event was accepted.
pub const ID_TTL_SECS: i64 = 25 * 3600;

/// Where an id is remembered: the peer that sent it, or `None` for a legacy id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdKey {
    pub peer: Option<u32>,
    pub id: String,
}

/// What is remembered of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdEntry {
    /// Epoch seconds after which the id is forgotten.
    pub expiry: i64,
    /// [`digest`] of the event it came with; `None` for a legacy id.
    pub digest: Option<u64>,
}

/// The id of an accepted event, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientId {
    pub key: IdKey,
    pub digest: Option<u64>,
}

/// What a known id says about an event that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not known: a new event.
    New,
    /// The same event again.
    Same,
    /// A different event under an id already used.
    Conflict,
}

/// A stable 64-bit digest (FNV-1a) of what an event says: where, who, what, how much, when (as
/// sent) and its tags. It is stored, so it must never change between releases.
pub fn digest(event: &Event) -> u64 {
    let encoded = postcard::to_allocvec(&(
        &event.scope,
        &event.customer,
        &event.dimension,
        event.quantity,
        event.timestamp,
        &event.tags,
    ))
    .expect("an event always encodes");
    encoded
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// The remembered ids.
#[derive(Debug, Default)]
pub struct IdBook {
    ids: HashMap<IdKey, IdEntry>,
    new: Vec<(IdKey, IdEntry)>,
    expired: Vec<IdKey>,
}

impl IdBook {
    /// The ids a checkpoint saved.
    pub fn restore(ids: Vec<(IdKey, IdEntry)>) -> Self {
        Self { ids: ids.into_iter().collect(), ..Self::default() }
    }

    /// Whether `event` (from `peer`) repeats, conflicts with, or is new to the remembered ids.
    pub fn check(&self, peer: u32, id: &str, digest: u64) -> Seen {
        let scoped = IdKey { peer: Some(peer), id: id.to_string() };
        if let Some(entry) = self.ids.get(&scoped) {
            return if entry.digest == Some(digest) { Seen::Same } else { Seen::Conflict };
        }
        let legacy = IdKey { peer: None, id: scoped.id };
        if self.ids.contains_key(&legacy) { Seen::Same } else { Seen::New }
    }

    /// Remembers the id of an event accepted at `at`.
    pub fn remember(&mut self, id: &ClientId, at: i64) {
        let entry = IdEntry { expiry: at + ID_TTL_SECS, digest: id.digest };
        self.ids.insert(id.key.clone(), entry);
        self.new.push((id.key.clone(), entry));
    }

    /// Forgets the ids that expired by `now`.
    pub fn expire(&mut self, now: i64) {
        let expired: Vec<IdKey> =
            self.ids.iter().filter(|(_, entry)| entry.expiry <= now).map(|(key, _)| key.clone()).collect();
        for key in &expired {
            self.ids.remove(key);
        }
        self.expired.extend(expired);
    }

    /// What changed since the last call: ids to write, ids to delete.
    pub fn take_changes(&mut self) -> (Vec<(IdKey, IdEntry)>, Vec<IdKey>) {
        (std::mem::take(&mut self.new), std::mem::take(&mut self.expired))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Customer, Scope};

    fn event(quantity: u32) -> Event {
        Event {
            scope: Scope::ProductCode("p".into()),
            customer: Customer::AwsAccountId("1".into()),
            dimension: "d".into(),
            quantity,
            timestamp: None,
            tags: Vec::new(),
            id: Some("x".into()),
            peer: 1000,
        }
    }

    #[test]
    fn the_digest_is_stable_and_covers_the_content_not_the_id_or_peer() {
        assert_eq!(digest(&event(5)), 0x67d0_811b_45a4_c5c0, "stored digests must never change");
        let mut other = event(5);
        other.id = Some("y".into());
        other.peer = 0;
        assert_eq!(digest(&other), digest(&event(5)));
        assert_ne!(digest(&event(6)), digest(&event(5)));
    }

    #[test]
    fn ids_are_per_peer_bound_to_their_event_and_legacy_ids_match_anything() {
        let mut book = IdBook::default();
        let id = ClientId { key: IdKey { peer: Some(1000), id: "x".into() }, digest: Some(7) };
        book.remember(&id, 100);
        assert_eq!(book.check(1000, "x", 7), Seen::Same);
        assert_eq!(book.check(1000, "x", 8), Seen::Conflict);
        assert_eq!(book.check(1001, "x", 8), Seen::New, "another uid's ids are its own");
        let legacy = ClientId { key: IdKey { peer: None, id: "old".into() }, digest: None };
        book.remember(&legacy, 100);
        assert_eq!(book.check(1001, "old", 9), Seen::Same);
        book.expire(100 + ID_TTL_SECS);
        assert_eq!(book.check(1000, "x", 7), Seen::New);
        let (new, expired) = book.take_changes();
        assert_eq!(new.len(), 2);
        assert_eq!(expired.len(), 2);
    }
}
