//! Client idempotency ids as the aggregator sees them: what an event's id is checked against
//! ([`Ids`]: the id store's book, `crate::ids`), and the forms an older meterd kept.
//!
//! An id is scoped to the peer uid that sent it (two applications under different uids cannot
//! collide or answer for each other), and remembered with a digest of the event it came with: a
//! resend of the same event is a duplicate, a different event under a known id is refused
//! (`id_conflict`). Ids remembered before ids were scoped and digested (an outbox written by an
//! older meterd, sled's `i` keys) are *legacy*: they match any peer and any content, as they did
//! then, until they expire; they stay in memory and in sled. Scoped ids an older meterd kept in
//! sled (`j` keys) are carried into the id files at the first checkpoint.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::{IdBook, IdChanges, IdHash, Loaded, Run, Seen, short_digest};
use crate::model::{Event, IdPrint};

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

/// A stable 64-bit digest (FNV-1a) of what an event says: where, who, what, how much, when (as
/// sent) and its tags. It is stored, so it must never change between releases.
pub fn digest(event: &Event) -> u64 {
    let fields =
        (&event.scope, &event.customer, &event.dimension, event.quantity, event.timestamp, &event.tags);
    postcard::serialize_with_flavor(&fields, Fnv(0xcbf2_9ce4_8422_2325)).expect("an event always encodes")
}

/// The event's id's hash (scoped to its peer) and its digest, if it has an id.
pub fn id_print(event: &Event) -> Option<IdPrint> {
    let id = event.id.as_ref()?;
    Some(IdPrint { hash: IdHash::of(event.peer, id).0, digest: digest(event) })
}

/// FNV-1a over postcard's bytes as they are made: the digest without a buffer for them.
struct Fnv(u64);

impl postcard::ser_flavors::Flavor for Fnv {
    type Output = u64;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<u64> {
        Ok(self.0)
    }
}

/// The remembered ids: the id store's book (`crate::ids`), and ids an older meterd remembered.
#[derive(Debug)]
pub struct Ids {
    book: IdBook,
    /// Legacy ids and their expiry: from sled's `i` keys, or replayed from an older journal.
    legacy: HashMap<String, i64>,
    legacy_new: Vec<(String, i64)>,
    legacy_expired: Vec<String>,
    /// Ids sled's `j` keys held were carried into the book: the next checkpoint writes them to
    /// the id files and removes the keys.
    migrated: bool,
}

/// What a checkpoint writes for the ids: the id files' changes, and sled's.
#[derive(Debug, Default)]
pub struct IdDelta {
    pub files: IdChanges,
    pub legacy_new: Vec<(String, i64)>,
    pub legacy_expired: Vec<String>,
    /// Remove every `j` key: the files written with this checkpoint hold their ids.
    pub migrated: bool,
}

impl IdDelta {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
            && self.legacy_new.is_empty()
            && self.legacy_expired.is_empty()
            && !self.migrated
    }
}

impl Default for Ids {
    fn default() -> Self {
        Self::restore(Vec::new(), Loaded::default()).expect("nothing to read")
    }
}

impl Ids {
    /// The ids the id files hold, with those an older meterd kept in sled (`sled_ids`): scoped
    /// ones go into the book, oldest first, and are frozen at once, so the next checkpoint writes
    /// them as runs.
    pub fn restore(mut sled_ids: Vec<(IdKey, IdEntry)>, loaded: Loaded) -> std::io::Result<Self> {
        let mut this = Self {
            book: IdBook::restore(loaded, ID_TTL_SECS),
            legacy: HashMap::new(),
            legacy_new: Vec::new(),
            legacy_expired: Vec::new(),
            migrated: false,
        };
        sled_ids.sort_by_key(|(_, entry)| entry.expiry);
        for (key, entry) in sled_ids {
            match key.peer {
                None => drop(this.legacy.insert(key.id, entry.expiry)),
                Some(peer) => {
                    let digest = short_digest(entry.digest.unwrap_or_default());
                    this.book.remember_if_new(
                        IdHash::of(peer, &key.id),
                        digest,
                        entry.expiry - ID_TTL_SECS,
                    )?;
                    this.migrated = true;
                }
            }
        }
        if this.migrated {
            this.book.freeze();
        }
        Ok(this)
    }

    /// Whether an event (its id `id` and that id's `hash` with its peer, with `digest`) repeats,
    /// conflicts with, or is new to the remembered ids; the hash, to remember it by.
    pub fn check(&self, hash: IdHash, id: &str, digest: u64) -> std::io::Result<(Seen, IdHash)> {
        let seen = match self.book.check(&hash, short_digest(digest))? {
            Seen::New if self.legacy.contains_key(id) => Seen::Same,
            seen => seen,
        };
        Ok((seen, hash))
    }

    /// Reads where [`Ids::check`] will look for `hash`; returns a sum of what it read.
    pub fn read_ahead(&self, hash: &IdHash) -> u64 {
        self.book.read_ahead(hash)
    }

    /// Remembers an id [`Ids::check`] found new, accepted at `at`.
    pub fn remember(&mut self, hash: IdHash, digest: u64, at: i64) {
        self.book.remember(hash, short_digest(digest), at);
    }

    /// Remembers a replayed event's id, unless known already.
    pub fn replay(&mut self, id: &ClientId, at: i64) -> std::io::Result<()> {
        match id.key.peer {
            None => {
                let expiry = at + ID_TTL_SECS;
                self.legacy.insert(id.key.id.clone(), expiry);
                self.legacy_new.push((id.key.id.clone(), expiry));
                Ok(())
            }
            Some(peer) => {
                let digest = short_digest(id.digest.unwrap_or_default());
                self.book.remember_if_new(IdHash::of(peer, &id.key.id), digest, at)
            }
        }
    }

    /// Forgets the ids that expired by `now`.
    pub fn expire(&mut self, now: i64) {
        self.book.expire(now);
        let expired = &mut self.legacy_expired;
        self.legacy.retain(|id, expiry| {
            let keep = *expiry > now;
            if !keep {
                expired.push(id.clone());
            }
            keep
        });
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> IdDelta {
        IdDelta {
            files: self.book.take_changes(),
            legacy_new: std::mem::take(&mut self.legacy_new),
            legacy_expired: std::mem::take(&mut self.legacy_expired),
            migrated: std::mem::take(&mut self.migrated),
        }
    }

    /// Takes the runs a checkpoint wrote.
    pub fn install(&mut self, runs: Vec<Run>) {
        self.book.install(runs);
    }

    /// Whether frozen segments wait for a checkpoint to write them.
    pub fn has_frozen(&self) -> bool {
        self.book.has_frozen()
    }

    /// Ids remembered, legacy ones included.
    pub fn len(&self) -> usize {
        self.book.len() + self.legacy.len()
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
            id_print: None,
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
        let mut ids = Ids::default();
        let (seen, hash) = ids.check(IdHash::of(1000, "x"), "x", 7).unwrap();
        assert_eq!(seen, Seen::New);
        ids.remember(hash, 7, 100);
        assert_eq!(ids.check(IdHash::of(1000, "x"), "x", 7).unwrap().0, Seen::Same);
        assert_eq!(ids.check(IdHash::of(1000, "x"), "x", 8 << 48).unwrap().0, Seen::Conflict);
        assert_eq!(
            ids.check(IdHash::of(1001, "x"), "x", 8).unwrap().0,
            Seen::New,
            "another uid's ids are its own"
        );
        let legacy = ClientId { key: IdKey { peer: None, id: "old".into() }, digest: None };
        ids.replay(&legacy, 100).unwrap();
        assert_eq!(ids.check(IdHash::of(1001, "old"), "old", 9).unwrap().0, Seen::Same);
        ids.expire(100 + ID_TTL_SECS);
        assert_eq!(ids.check(IdHash::of(1001, "old"), "old", 9).unwrap().0, Seen::New);
        let changes = ids.take_changes();
        assert_eq!(changes.legacy_new, vec![("old".to_string(), 100 + ID_TTL_SECS)]);
        assert_eq!(changes.legacy_expired, vec!["old".to_string()]);
        assert!(changes.files.freeze.is_empty(), "expired before it was written: never written");
        assert_eq!(changes.files.expired, vec![1]);
    }

    #[test]
    fn ids_an_older_meterd_kept_in_sled_are_carried_into_the_book_and_frozen() {
        let sled_ids = vec![
            (
                IdKey { peer: Some(5), id: "b".into() },
                IdEntry { expiry: 9 * 3600 + ID_TTL_SECS, digest: Some(3) },
            ),
            (
                IdKey { peer: Some(5), id: "a".into() },
                IdEntry { expiry: 8 * 3600 + ID_TTL_SECS, digest: Some(2) },
            ),
            (IdKey { peer: None, id: "c".into() }, IdEntry { expiry: 10 * 3600, digest: None }),
        ];
        let mut ids = Ids::restore(sled_ids, Loaded::default()).unwrap();
        assert_eq!(ids.check(IdHash::of(5, "a"), "a", 2).unwrap().0, Seen::Same);
        assert_eq!(ids.check(IdHash::of(5, "b"), "b", 3).unwrap().0, Seen::Same);
        assert_eq!(ids.check(IdHash::of(6, "c"), "c", 0).unwrap().0, Seen::Same);
        let changes = ids.take_changes();
        assert!(changes.migrated);
        assert_eq!(changes.files.freeze.len(), 2, "one segment per hour of acceptance");
        assert!(changes.legacy_new.is_empty(), "sled holds the legacy ids already");
    }
}
