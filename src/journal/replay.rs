//! The groups after the checkpoint, read again once the scan (`recover.rs`) has checked them: a
//! segment at a time through one window, so that a restart never holds the journal in memory,
//! however long the checkpoint interval let it grow.

use std::path::PathBuf;

use super::JournalError;
use super::frame::{self, Frame, SEGMENT_HEADER};
use super::recover::{Scan, SegmentReader};

/// A group commit read back: its sequence and its payloads, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub seq: u64,
    pub payloads: Vec<Vec<u8>>,
}

/// Where the groups after the checkpoint are: each segment that holds some, from where they start
/// to where its records end.
#[derive(Debug, Default)]
pub struct Replay {
    parts: Vec<Part>,
    floor: u64,
    last_seq: u64,
}

#[derive(Debug)]
struct Part {
    path: PathBuf,
    from: u64,
    end: u64,
}

impl Replay {
    /// Nothing to replay: a journal at `floor`.
    pub(super) fn empty(floor: u64) -> Self {
        Self { parts: Vec::new(), floor, last_seq: floor }
    }

    pub(super) fn new(scan: &Scan, floor: u64) -> Self {
        let mut replay = Self::empty(floor);
        replay.last_seq = scan.last_seq.unwrap_or(floor).max(floor);
        if let Some(from) = scan.replay_from {
            replay.parts = scan.segments[from.segment..]
                .iter()
                .enumerate()
                .map(|(n, segment)| Part {
                    path: segment.path.clone(),
                    from: if n == 0 { from.offset } else { SEGMENT_HEADER as u64 },
                    end: segment.end,
                })
                .filter(|part| part.from < part.end)
                .collect();
        }
        replay
    }

    /// The sequence of the last complete group (the checkpoint's when there is none after it).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Bytes of records to read again, headers included.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|part| part.end - part.from).sum()
    }

    /// Calls `each` with every payload of the groups after the checkpoint, in commit order, with
    /// its group's sequence. The first error `each` returns ends the walk.
    pub fn for_each<E: From<JournalError>>(
        &self,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        for part in &self.parts {
            let io = |source| JournalError::Io { path: part.path.clone(), source };
            let mut reader = SegmentReader::open(&part.path).map_err(io)?;
            let mut offset = part.from;
            while offset < part.end {
                let record = match frame::read_record(reader.at(offset).map_err(io)?) {
                    Frame::Record(record) => record,
                    // Checked a moment ago, and written only past `end` since.
                    Frame::End | Frame::Bad(_) => {
                        return Err(JournalError::Corrupt {
                            path: part.path.clone(),
                            offset,
                            reason: "it changed between the check and the replay".into(),
                        }
                        .into());
                    }
                };
                if record.seq > self.floor {
                    each(record.seq, record.payload)?;
                }
                offset += frame::record_len(record.payload.len()) as u64;
            }
        }
        Ok(())
    }

    /// Every group after the checkpoint, whole: for tests and small journals only.
    pub fn groups(&self) -> Result<Vec<Group>, JournalError> {
        let mut groups: Vec<Group> = Vec::new();
        self.for_each(|seq, payload| {
            match groups.last_mut() {
                Some(group) if group.seq == seq => group.payloads.push(payload.to_vec()),
                _ => groups.push(Group { seq, payloads: vec![payload.to_vec()] }),
            }
            Ok::<_, JournalError>(())
        })?;
        Ok(groups)
    }
}
