//! The journal against its recovery table: every truncation of the last segment, every flipped
//! bit, zeroed tails, torn writes that were never synced, and segments rolled and trimmed.

use super::*;

const SEGMENT: u64 = MIN_SEGMENT_BYTES;

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|n| (seq as usize * 31 + n) as u8).collect()
}

/// Groups 1..=count, each synced before the next is written (as acknowledged one at a time).
fn written(dir: &Path, count: u64, sync_each: bool) -> Vec<Group> {
    let (journal, found) = Journal::open(dir, SEGMENT, 0).unwrap();
    let found = found.groups().unwrap();
    assert!(found.is_empty());
    let mut groups = Vec::new();
    for seq in 1..=count {
        let payloads = vec![payload(seq, 20 + seq as usize % 50)];
        journal.append(seq, &payloads).unwrap();
        if sync_each {
            journal.sync().unwrap();
        }
        groups.push(Group { seq, payloads });
    }
    journal.sync().unwrap();
    groups
}

fn segment_file(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:016x}.seg"))
}

/// Byte offsets where each group's record starts, and where the last one ends.
fn offsets(groups: &[Group]) -> Vec<u64> {
    let mut at = vec![frame::SEGMENT_HEADER as u64];
    for group in groups {
        let len: usize = group.payloads.iter().map(|p| frame::record_len(p.len())).sum();
        at.push(at.last().unwrap() + len as u64);
    }
    at
}

#[test]
fn groups_read_back_in_order_after_a_reopen_and_appending_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let groups = written(dir.path(), 40, false);
    let (journal, found) = Journal::open(dir.path(), SEGMENT, 0).unwrap();
    let found = found.groups().unwrap();
    assert_eq!(found, groups);
    journal.append(41, &[b"more".to_vec()]).unwrap();
    journal.sync().unwrap();
    drop(journal);
    let found = Journal::read(dir.path(), 0).unwrap().groups().unwrap();
    assert_eq!(found.len(), 41);
    assert_eq!(found[40], Group { seq: 41, payloads: vec![b"more".to_vec()] });
}

/// A journal dir holding only segment 0 with `bytes` (shorter than a segment: the rest reads as
/// zeros, as a truncated file does).
fn with_segment(bytes: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(segment_file(dir.path(), 0), bytes).unwrap();
    dir
}

#[test]
fn a_truncation_at_every_offset_of_the_last_segment_leaves_exactly_the_groups_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let groups = written(dir.path(), 12, true);
    let at = offsets(&groups);
    let bytes = std::fs::read(segment_file(dir.path(), 0)).unwrap();
    for cut in 0..=at[at.len() - 1] + 64 {
        let copy = with_segment(&bytes[..cut as usize]);
        // A record is whole without its padding.
        let whole = groups
            .iter()
            .zip(&at)
            .filter(|(group, start)| **start + (frame::RECORD_HEADER + group.payloads[0].len()) as u64 <= cut)
            .count();
        assert_eq!(Journal::read(copy.path(), 0).unwrap().groups().unwrap(), groups[..whole], "cut at {cut}");
        if cut % 11 != 0 {
            continue;
        }
        // Opening cuts the torn record off; what follows is appended and read back after it.
        let (journal, found) = Journal::open(copy.path(), SEGMENT, 0).unwrap();
        let found = found.groups().unwrap();
        assert_eq!(found, groups[..whole], "cut at {cut}");
        let next = whole as u64 + 1;
        journal.append(next, &[b"after".to_vec()]).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let found = Journal::read(copy.path(), 0).unwrap().groups().unwrap();
        assert_eq!(found.len(), whole + 1, "cut at {cut}");
        assert_eq!(found[whole].payloads, [b"after".to_vec()], "cut at {cut}");
    }
}

#[test]
fn a_flipped_bit_before_durable_records_is_refused_and_one_in_the_last_record_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let groups = written(dir.path(), 6, true);
    let at = offsets(&groups);
    let end = at[at.len() - 1];
    let bytes = std::fs::read(segment_file(dir.path(), 0)).unwrap()[..end as usize + 256].to_vec();
    for bit in 0..end * 8 {
        let mut flipped = bytes.clone();
        flipped[(bit / 8) as usize] ^= 1 << (bit % 8);
        let copy = with_segment(&flipped);
        let byte = bit / 8;
        match Journal::read(copy.path(), 0) {
            Err(JournalError::Corrupt { offset, .. }) => {
                let hit = at.iter().rposition(|&start| start <= byte).unwrap_or(0);
                assert!(hit < groups.len() - 1, "bit {bit}: only a record before durable ones is refused");
                assert_eq!(
                    offset,
                    if byte < frame::SEGMENT_HEADER as u64 { 0 } else { at[hit] },
                    "bit {bit}"
                );
            }
            Ok(found) => {
                assert!(
                    byte >= at[groups.len() - 1],
                    "bit {bit}: a damaged record before others was accepted"
                );
                assert_eq!(found.groups().unwrap(), groups[..groups.len() - 1], "bit {bit}");
            }
            Err(other) => panic!("bit {bit}: {other}"),
        }
    }
}

#[test]
fn a_torn_write_before_records_never_synced_is_cut_off_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let groups = written(dir.path(), 10, false);
    let at = offsets(&groups);
    let path = segment_file(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    // Group 4's record lost a block in a power cut; 5..10 reached the disk, none was synced alone.
    bytes[at[3] as usize + 40] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (journal, found) = Journal::open(dir.path(), SEGMENT, 0).unwrap();
    let found = found.groups().unwrap();
    assert_eq!(found, groups[..3]);
    journal.append(4, &[b"again".to_vec()]).unwrap();
    journal.sync().unwrap();
    drop(journal);
    assert_eq!(
        Journal::read(dir.path(), 0).unwrap().groups().unwrap().len(),
        4,
        "the cut-off records are gone for good"
    );
}

#[test]
fn a_zero_filled_tail_reads_as_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let groups = written(dir.path(), 8, true);
    let at = offsets(&groups);
    let path = segment_file(dir.path(), 0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at[5] as usize..].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(Journal::read(dir.path(), 0).unwrap().groups().unwrap(), groups[..5]);
}

#[test]
fn large_groups_span_records_and_segments_and_trimmed_segments_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), SEGMENT, 0).unwrap();
    let mut groups = Vec::new();
    for seq in 1..=9u64 {
        let payloads: Vec<Vec<u8>> = (0..3).map(|n| payload(seq + n, MAX_PAYLOAD / 2)).collect();
        journal.append(seq, &payloads).unwrap();
        groups.push(Group { seq, payloads });
    }
    journal.sync().unwrap();
    let segments = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    assert!(segments().len() >= 7, "{:?}", segments());
    drop(journal);
    let (journal, found) = Journal::open(dir.path(), SEGMENT, 0).unwrap();
    let found = found.groups().unwrap();
    assert_eq!(found, groups);
    assert!(journal.trimmable(5));
    let removed = journal.trim(5).unwrap();
    assert!(removed >= 3, "{removed}");
    drop(journal);
    let found = Journal::read(dir.path(), 5).unwrap().groups().unwrap();
    assert!(
        found.iter().all(|g| g.seq > 4) && found.last().unwrap().seq == 9,
        "{:?}",
        found.iter().map(|g| g.seq).collect::<Vec<_>>()
    );
    // A group cut in the middle of its records is dropped whole.
    // Each group fills a segment of its own: group 9 is in segment 8.
    let file = std::fs::OpenOptions::new().write(true).open(segment_file(dir.path(), 8)).unwrap();
    file.set_len(frame::SEGMENT_HEADER as u64 + 100).unwrap();
    let found = Journal::read(dir.path(), 5).unwrap().groups().unwrap();
    assert_eq!(found.last().unwrap().seq, 8);
}

/// Each group here spans two segments, so a segment ends holding the first records of a group
/// whose last record is in the next. A checkpoint through a group written before (the commit
/// thread appends while a checkpoint is written beside it) must not remove that segment: every
/// later group reads back whole after each trim.
#[test]
fn trimming_keeps_a_segment_that_holds_the_start_of_a_later_group() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), SEGMENT, 0).unwrap();
    let mut groups = Vec::new();
    for seq in 1..=6u64 {
        let payloads: Vec<Vec<u8>> = (0..3).map(|n| payload(seq * 3 + n, MAX_PAYLOAD * 7 / 10)).collect();
        journal.append(seq, &payloads).unwrap();
        groups.push(Group { seq, payloads });
    }
    journal.sync().unwrap();
    // Each group as its sequence and the lengths of its payloads, so that a failure prints short.
    let shape = |groups: &[Group]| -> Vec<(u64, Vec<usize>)> {
        groups.iter().map(|g| (g.seq, g.payloads.iter().map(Vec::len).collect())).collect()
    };
    let mut removed = 0;
    for through in 1..=5u64 {
        removed += journal.trim(through).unwrap();
        // What a restart replays: the groups after the checkpoint's.
        let after: Vec<Group> = Journal::read(dir.path(), through)
            .unwrap()
            .groups()
            .unwrap()
            .into_iter()
            .filter(|g| g.seq > through)
            .collect();
        assert_eq!(shape(&after), shape(&groups[through as usize..]), "through {through}");
        assert_eq!(after, groups[through as usize..], "through {through}");
    }
    assert!(removed >= 4, "segments wholly at or below 5 go: {removed}");
}

/// After one failed `fdatasync` of the journal (here on a pipe, which cannot be synced; in life
/// an I/O error on any thread, the checkpoint's roll included), no later sync succeeds, although
/// the segment itself could still be synced: the kernel may have dropped pages it never wrote.
#[test]
fn a_failed_sync_fails_every_later_one() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path(), SEGMENT, 0).unwrap();
    journal.append(1, &[payload(1, 40)]).unwrap();
    journal.sync().unwrap();
    let (_read, write) = std::io::pipe().unwrap();
    let pipe = File::from(std::os::fd::OwnedFd::from(write));
    assert!(journal.sync_file(&pipe).is_err(), "a pipe cannot be synced");
    journal.append(2, &[payload(2, 40)]).unwrap();
    let err = journal.sync().unwrap_err().to_string();
    assert!(err.contains("an earlier fdatasync of the journal failed"), "{err}");
}
