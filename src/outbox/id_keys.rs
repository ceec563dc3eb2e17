//! The outbox's side of the remembered ids: sled's legacy and migrated id keys, and the size of
//! the id files (`crate::ids`).

use super::{Delta, IdFiles, IdKey, Outbox, OutboxError, encode, layout};

impl Outbox {
    /// Sled's part of a checkpoint's ids: legacy ids remembered (replayed from an older journal)
    /// and expired, and, once the id files hold them, the `j` keys an older meterd wrote.
    pub(super) fn note_ids(&self, batch: &mut sled::Batch, delta: &Delta) -> Result<(), OutboxError> {
        for (id, expiry) in &delta.ids.legacy_new {
            batch.insert(layout::id_key(&IdKey { peer: None, id: id.clone() }), encode(expiry));
        }
        for id in &delta.ids.legacy_expired {
            batch.remove(layout::id_key(&IdKey { peer: None, id: id.clone() }));
        }
        if delta.ids.migrated {
            for item in self.db.scan_prefix([layout::SCOPED_ID]) {
                batch.remove(item?.0);
            }
        }
        Ok(())
    }

    /// Bytes the remembered ids' files take. They are not part of [`Outbox::size_on_disk`], the
    /// size `storage.max_bytes` limits: they cannot pile up (they expire 25 to 26 hours after
    /// their events, whatever becomes of submission), so a steady rate of id-bearing events must
    /// never be what refuses new ones.
    pub fn id_bytes(&self) -> u64 {
        self.ids.as_ref().map_or(0, IdFiles::bytes)
    }
}
