//! A run: a frozen segment written once, sorted by hash, behind a slot directory and a filter.
//! The filter (kept beside the other runs' in [`super::filter::Filters`]) and the directory stay in
//! memory, about 1.5 bytes an id of a full run; the entries stay on disk and a lookup the filter
//! lets through reads one slot of them (some 16 entries, 200 bytes).
//!
//! | offset | bytes | what |
//! |---|---|---|
//! | 0 | 6 | `MIDRUN` |
//! | 6 | 1 | format version, [`RUN_VERSION`] |
//! | 7 | 1 | `p`: the slot width; slot = the hash's top `p` bits |
//! | 8 | 8 | entries, u64 LE |
//! | 16 | 16 | when the first and last of its ids were accepted, i64 LE epoch seconds |
//! | 32 | 4 × (2^p + 1) | the directory: the first entry of each slot, u32 LE, then the count |
//! | … | 12 × entries | each: the 64 hash bits after the slot (u64 LE), the event's short digest (u32 LE), in hash order |
//! | … | 4 | CRC32C of everything before it, u32 LE |
//!
//! A run knows `64 + p` bits of each hash (`p` grows with the run: about 16 entries a slot), so
//! two ids are taken for one only when those bits agree: for a run of a million ids, one chance
//! in 2^80 per lookup.

use std::io;

use super::filter::Filter;
use super::hash::IdHash;
use super::segment::Entry;

pub const RUN_VERSION: u8 = 1;
const MAGIC: &[u8; 6] = b"MIDRUN";
const HEADER: usize = 32;
const ENTRY: usize = 12;
/// Widest slot directory: 2^24 slots, for runs of up to 268 million ids.
const MAX_P: u8 = 24;

/// Where a run's bytes are read from: its file, or memory in tests.
pub trait RunBytes: Send + Sync + std::fmt::Debug {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Lets go of what it holds open (a file descriptor), to be opened again when read.
    fn release(&self) {}
}

impl RunBytes for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl RunBytes for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let bytes = self.get(start..start + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Why a run file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug)]
pub struct Run {
    pub number: u64,
    p: u8,
    count: usize,
    pub first_at: i64,
    pub last_at: i64,
    directory: Vec<u32>,
    /// Its filter, until the book takes it ([`Run::take_filter`]).
    filter: Option<Filter>,
    source: Box<dyn RunBytes>,
}

/// The slot width for `ids` ids: about 16 entries a slot.
fn width(ids: usize) -> u8 {
    (ids.div_ceil(16).next_power_of_two().trailing_zeros() as u8).min(MAX_P)
}

fn entries_at(p: u8) -> usize {
    HEADER + 4 * ((1 << p) + 1)
}

/// `entries` in hash order: each put in its slot (the hash's top `p` bits, where `directory`
/// says the slot starts), then each slot's few entries sorted. Linear where a comparison sort of
/// the whole segment is not, and it takes a checkpoint's time with every id.
fn sorted_by_slot(entries: &[Entry], p: u8, directory: &[u32]) -> Vec<Entry> {
    let mut next: Vec<u32> = directory[..directory.len() - 1].to_vec();
    let mut sorted = vec![Entry { hash: IdHash::default(), digest: 0 }; entries.len()];
    for entry in entries {
        let at = &mut next[entry.hash.slot(p)];
        sorted[*at as usize] = *entry;
        *at += 1;
    }
    for slot in directory.windows(2) {
        sorted[slot[0] as usize..slot[1] as usize].sort_unstable_by_key(|entry| entry.hash);
    }
    sorted
}

/// A run made in memory: its file's bytes, and the run to use once they are written.
pub struct Image {
    pub bytes: Vec<u8>,
    run: Run,
}

impl Image {
    /// The run, reading from `source` (which holds [`Image::bytes`]).
    pub fn into_run(self, source: Box<dyn RunBytes>) -> Run {
        Run { source, ..self.run }
    }
}

impl Run {
    /// Sorts a frozen segment's entries into a run.
    pub fn build(number: u64, entries: &[Entry], first_at: i64, last_at: i64) -> Image {
        let p = width(entries.len());
        let mut directory = vec![0u32; (1 << p) + 1];
        let mut filter = Filter::default();
        for entry in entries {
            directory[entry.hash.slot(p) + 1] += 1;
            filter.insert(&entry.hash);
        }
        for slot in 1..directory.len() {
            directory[slot] += directory[slot - 1];
        }
        let sorted = sorted_by_slot(entries, p, &directory);
        let mut bytes = Vec::with_capacity(entries_at(p) + ENTRY * sorted.len() + 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&[RUN_VERSION, p]);
        bytes.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&first_at.to_le_bytes());
        bytes.extend_from_slice(&last_at.to_le_bytes());
        directory.iter().for_each(|n| bytes.extend_from_slice(&n.to_le_bytes()));
        for entry in &sorted {
            bytes.extend_from_slice(&entry.hash.remainder(p).to_le_bytes());
            bytes.extend_from_slice(&entry.digest.to_le_bytes());
        }
        bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        let run = Run {
            number,
            p,
            count: sorted.len(),
            first_at,
            last_at,
            directory,
            filter: Some(filter),
            source: Box::new(Vec::new()),
        };
        Image { bytes, run }
    }

    /// A run of these entries kept in memory, as if written: for the aggregator's tests and its
    /// property test, which have no data dir.
    pub fn in_memory(number: u64, entries: &[Entry], first_at: i64, last_at: i64) -> Run {
        let image = Run::build(number, entries, first_at, last_at);
        let bytes = image.bytes.clone();
        image.into_run(Box::new(bytes))
    }

    /// Reads a run of `len` bytes from `source`: the directory, and the entries once, a chunk at
    /// a time, to build the filter and check the CRC.
    pub fn load(number: u64, source: Box<dyn RunBytes>, len: u64) -> Result<Run, RunError> {
        let corrupt = |what: &str| RunError::Corrupt(format!("run {number:016x}: {what}"));
        let mut header = [0u8; HEADER];
        source.read_exact_at(&mut header, 0).map_err(|_| corrupt("shorter than its header"))?;
        if &header[..6] != MAGIC || header[6] != RUN_VERSION || header[7] > MAX_P {
            return Err(corrupt("not a run of this format"));
        }
        let p = header[7];
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let count = usize::try_from(word(8)).ok().filter(|&n| n <= u32::MAX as usize);
        let count = count.ok_or_else(|| corrupt("count too large"))?;
        let expected = (entries_at(p) + count * ENTRY + 4) as u64;
        if len != expected {
            return Err(corrupt(&format!("{len} bytes where its header says {expected}")));
        }
        let mut crc = crc32c::crc32c(&header);
        let mut raw = vec![0u8; entries_at(p) - HEADER];
        source.read_exact_at(&mut raw, HEADER as u64)?;
        crc = crc32c::crc32c_append(crc, &raw);
        let directory: Vec<u32> =
            raw.chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        drop(raw);
        if directory.last() != Some(&(count as u32)) || directory.windows(2).any(|w| w[0] > w[1]) {
            return Err(corrupt("its directory does not count its entries"));
        }
        let mut filter = Filter::default();
        let mut chunk = vec![0u8; ENTRY * 5_461];
        let mut slot = 0;
        let mut index = 0usize;
        while index < count {
            let n = (count - index).min(chunk.len() / ENTRY);
            let bytes = &mut chunk[..n * ENTRY];
            source.read_exact_at(bytes, (entries_at(p) + index * ENTRY) as u64)?;
            crc = crc32c::crc32c_append(crc, bytes);
            for entry in bytes.chunks_exact(ENTRY) {
                while directory[slot + 1] as usize <= index {
                    slot += 1;
                }
                let remainder = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
                filter.insert(&IdHash::from_parts(slot, remainder, p));
                index += 1;
            }
        }
        let mut stored = [0u8; 4];
        source.read_exact_at(&mut stored, expected - 4)?;
        if u32::from_le_bytes(stored) != crc {
            return Err(corrupt("its checksum does not match"));
        }
        let time = |at: usize| i64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let (first_at, last_at) = (time(16), time(24));
        Ok(Run { number, p, count, first_at, last_at, directory, filter: Some(filter), source })
    }

    /// Its filter, for the book to keep beside the others'.
    pub fn take_filter(&mut self) -> Filter {
        self.filter.take().expect("a run's filter is taken once")
    }

    /// The short digest remembered for `hash`, if this run holds it: reads the slot `hash` falls
    /// in (the caller asked the filter first).
    pub fn find(&self, hash: &IdHash) -> io::Result<Option<u32>> {
        let slot = hash.slot(self.p);
        let (start, end) = (self.directory[slot] as usize, self.directory[slot + 1] as usize);
        if start == end {
            return Ok(None);
        }
        let mut small = [0u8; ENTRY * 64];
        let mut large = Vec::new();
        let buf = if end - start <= 64 {
            &mut small[..(end - start) * ENTRY]
        } else {
            large.resize((end - start) * ENTRY, 0);
            &mut large[..]
        };
        self.source.read_exact_at(buf, (entries_at(self.p) + start * ENTRY) as u64)?;
        let remainder = hash.remainder(self.p);
        Ok(buf.chunks_exact(ENTRY).find_map(|entry| {
            (u64::from_le_bytes(entry[..8].try_into().expect("8 bytes")) == remainder)
                .then(|| u32::from_le_bytes(entry[8..12].try_into().expect("4 bytes")))
        }))
    }

    /// See [`RunBytes::release`].
    pub fn release(&self) {
        self.source.release();
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held in memory.
    pub fn bytes(&self) -> usize {
        self.directory.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64) -> Vec<Entry> {
        (0..n).map(|i| Entry { hash: IdHash::of(1, &format!("id-{i}")), digest: i as u32 }).collect()
    }

    fn round_trip(entries: &[Entry]) -> Run {
        let image = Run::build(5, entries, 100, 200);
        let bytes = image.bytes.clone();
        let len = bytes.len() as u64;
        let built = image.into_run(Box::new(bytes.clone()));
        let loaded = Run::load(5, Box::new(bytes), len).unwrap();
        assert_eq!(
            (loaded.p, loaded.count, loaded.first_at, loaded.last_at),
            (built.p, built.count, 100, 200)
        );
        assert_eq!(loaded.directory, built.directory);
        loaded
    }

    #[test]
    fn a_run_finds_every_id_it_holds_with_its_digest_and_no_other() {
        for n in [0, 1, 16, 17, 5_000] {
            let all = entries(n + 1_000);
            let run = round_trip(&all[..n as usize]);
            for (i, entry) in all.iter().enumerate() {
                let want = (i < n as usize).then_some(entry.digest);
                assert_eq!(run.find(&entry.hash).unwrap(), want, "n {n}, id {i}");
            }
        }
    }

    #[test]
    fn entries_are_put_in_hash_order_slot_by_slot() {
        // Hashes that share their slot and differ only further on, besides ordinary ones.
        let mut all = entries(3_000);
        all.extend((0..40u64).map(|i| Entry { hash: IdHash([(7 << 60) | (i % 3), 40 - i]), digest: 0 }));
        let p = width(all.len());
        let mut directory = vec![0u32; (1 << p) + 1];
        all.iter().for_each(|entry| directory[entry.hash.slot(p) + 1] += 1);
        (1..directory.len()).for_each(|slot| directory[slot] += directory[slot - 1]);
        let mut want = all.clone();
        want.sort_unstable_by_key(|entry| entry.hash);
        assert_eq!(sorted_by_slot(&all, p, &directory), want);
    }

    #[test]
    fn a_damaged_or_cut_run_is_refused_with_its_reason() {
        let image = Run::build(9, &entries(100), 0, 0);
        let mut bytes = image.bytes;
        let len = bytes.len() as u64;
        let err = |bytes: Vec<u8>, len| Run::load(9, Box::new(bytes), len).unwrap_err().to_string();
        assert!(err(bytes[..50].to_vec(), 50).contains("bytes where its header says"));
        bytes[len as usize - 20] ^= 1;
        assert_eq!(err(bytes.clone(), len), "run 0000000000000009: its checksum does not match");
        bytes[0] = b'X';
        assert_eq!(err(bytes, len), "run 0000000000000009: not a run of this format");
    }
}
