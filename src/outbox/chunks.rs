//! Values cut into chunks: journal payloads of a group's events, and the open hours' checkpoint
//! chunks. Each chunk is a version byte, then the postcard encoding of a `Vec` of items (its
//! length, then the items), cut by encoded size.

use serde::Serialize;

use super::layout::{FORMAT_VERSION, LOG_FORMAT_VERSION, MAX_OPEN_CHUNK_BYTES};
use super::{OutboxError, decode};
use crate::aggregate::{Admitted, SealedRecord};

/// Encodes items into chunks of about `max` bytes at most (an item larger than that alone).
pub struct Chunker {
    version: u8,
    max: usize,
    body: Vec<u8>,
    count: usize,
    chunks: Vec<Vec<u8>>,
    bytes: usize,
}

impl Chunker {
    pub fn new(version: u8, max: usize) -> Self {
        Chunker { version, max, body: Vec::new(), count: 0, chunks: Vec::new(), bytes: 0 }
    }

    /// Chunks for the open hours' checkpoint.
    pub fn open_hours() -> Self {
        Self::new(FORMAT_VERSION, MAX_OPEN_CHUNK_BYTES)
    }

    pub fn push<T: Serialize>(&mut self, item: &T) {
        self.push_encoded(|body| {
            *body =
                postcard::to_extend(item, std::mem::take(body)).expect("postcard encodes every outbox type");
        });
    }

    /// Adds an item that `encode` appends, in postcard's encoding, to the buffer it is given.
    pub fn push_encoded(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let before = self.body.len();
        encode(&mut self.body);
        // The version byte and the count (a varint of at most 5 bytes for a chunk) come on top.
        if self.body.len() + 6 > self.max && self.count > 0 {
            let tail = self.body.split_off(before);
            self.seal();
            self.body = tail;
        }
        self.count += 1;
    }

    fn seal(&mut self) {
        let mut value = Vec::with_capacity(self.body.len() + 6);
        value.push(self.version);
        value = postcard::to_extend(&self.count, value).expect("a length always encodes");
        value.extend_from_slice(&self.body);
        self.bytes += value.len();
        self.chunks.push(value);
        self.body.clear();
        self.count = 0;
    }

    /// Takes the chunks completed so far (to write them while more items come).
    pub fn take_chunks(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.chunks)
    }

    /// The chunks, and their bytes in all.
    pub fn finish(mut self) -> (Vec<Vec<u8>>, usize) {
        if self.count > 0 {
            self.seal();
        }
        (self.chunks, self.bytes)
    }
}

/// A group commit's events as journal payloads, none past [`crate::journal::MAX_PAYLOAD`].
#[cfg(test)]
pub fn encode_log(events: &[Admitted]) -> Vec<Vec<u8>> {
    let mut encoder = LogEncoder::default();
    encoder.encode(events).into_iter().map(<[u8]>::to_vec).collect()
}

/// Encodes group commits' events as journal payloads, chunked as [`Chunker`] does, in buffers
/// kept from one group to the next: the commit thread encodes a group per turn, and growing and
/// copying fresh buffers each time cost it more than the encoding.
#[derive(Debug, Default)]
pub struct LogEncoder {
    /// The events' encodings, one after another.
    body: Vec<u8>,
    /// The payloads, one after another, and where each ends.
    out: Vec<u8>,
    ends: Vec<usize>,
}

impl LogEncoder {
    /// `events` as payloads (borrowed until the next call).
    pub fn encode(&mut self, events: &[Admitted]) -> Vec<&[u8]> {
        let max = crate::journal::MAX_PAYLOAD;
        self.body.clear();
        self.out.clear();
        self.ends.clear();
        let (mut start, mut count) = (0, 0usize);
        for event in events {
            let before = self.body.len();
            self.body = postcard::to_extend(event, std::mem::take(&mut self.body))
                .expect("postcard encodes every outbox type");
            // The version byte and the count (a varint of at most 5 bytes) come on top.
            if self.body.len() - start + 6 > max && count > 0 {
                self.seal(start..before, count);
                (start, count) = (before, 0);
            }
            count += 1;
        }
        if count > 0 {
            self.seal(start..self.body.len(), count);
        }
        let mut from = 0;
        self.ends
            .iter()
            .map(|&end| {
                let payload = &self.out[from..end];
                from = end;
                payload
            })
            .collect()
    }

    fn seal(&mut self, items: std::ops::Range<usize>, count: usize) {
        self.out.push(LOG_FORMAT_VERSION);
        self.out =
            postcard::to_extend(&count, std::mem::take(&mut self.out)).expect("a length always encodes");
        self.out.extend_from_slice(&self.body[items]);
        self.ends.push(self.out.len());
    }
}

/// The totals one open-hours checkpoint chunk holds.
pub fn decode_open_chunk(value: &[u8]) -> Result<Vec<SealedRecord>, OutboxError> {
    decode(b"c(open hours chunk)", value)
}

/// The open hours' checkpoint files: which generations are live, and how many bytes the last
/// full write (the base) and the changes since take, to know when a full write is due.
#[derive(Debug, Default)]
pub struct OpenState {
    pub base: u64,
    pub last: u64,
    pub base_bytes: u64,
    pub delta_bytes: u64,
    /// `o` keys of an older meterd are still in sled: the next checkpoint writes everything.
    pub legacy: bool,
}

impl OpenState {
    /// Whether the next checkpoint should write every open hour and drop older files: when the
    /// changes written since the last full write outgrow it (so that replay and space stay
    /// bounded by what is open), or older keys are to go.
    pub fn wants_base(&self) -> bool {
        self.legacy || self.delta_bytes > 2 * self.base_bytes + (4 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Customer, RecordKey, Scope};

    fn event(n: usize, tag_bytes: usize) -> Admitted {
        Admitted {
            key: RecordKey {
                scope: Scope::ProductCode("prod-1".into()),
                customer: Customer::AwsAccountId(format!("{n:012}")),
                dimension: "requests".into(),
                hour: 3600,
            },
            tags: vec![("k".into(), "v".repeat(tag_bytes))],
            quantity: 1,
            id: None,
            at: 3600,
        }
    }

    /// The payloads [`Chunker`] makes of `events`, the reference.
    fn chunked(events: &[Admitted]) -> Vec<Vec<u8>> {
        let mut chunker = Chunker::new(LOG_FORMAT_VERSION, crate::journal::MAX_PAYLOAD);
        for event in events {
            chunker.push(event);
        }
        chunker.finish().0
    }

    #[test]
    fn the_log_encoder_cuts_payloads_as_the_chunker_does_and_reuses_its_buffers() {
        let mut encoder = LogEncoder::default();
        // About 2.5 MiB of events: three payloads, the first two near the limit.
        let large: Vec<Admitted> = (0..2_500).map(|n| event(n, 1_000)).collect();
        let payloads = encoder.encode(&large);
        assert_eq!(payloads.len(), 3);
        assert!(payloads.iter().all(|p| p.len() <= crate::journal::MAX_PAYLOAD));
        assert_eq!(payloads, chunked(&large));
        // Then a small group, and none: nothing of the large one is left over.
        let small = [event(7, 3), event(8, 3)];
        assert_eq!(encoder.encode(&small), chunked(&small));
        assert_eq!(encoder.encode(&[]), Vec::<&[u8]>::new());
        // The payloads decode back to the events, in order.
        let decoded: Vec<Admitted> = encoder
            .encode(&large)
            .iter()
            .flat_map(|p| postcard::from_bytes::<Vec<Admitted>>(&p[1..]).unwrap())
            .collect();
        assert_eq!(decoded, large);
    }
}
