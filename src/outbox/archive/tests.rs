use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::aggregate::{Allocation, SealedRecord};
use crate::model::{Customer, RecordKey, Scope};

/// 2026-12-07T00:00:00Z, a Monday.
const DAY0: i64 = 1_796_601_600;

fn receipt(customer: u32, dimension: &str, hour: i64, id: &str) -> StoredRecord {
    StoredRecord {
        record: SealedRecord {
            key: RecordKey {
                scope: Scope::ProductCode("prod-5ynnfmu6p7r2hd8gaz4iyk1ns".into()),
                customer: Customer::AwsAccountId(format!("{:012}", 111_122_220_000u64 + u64::from(customer))),
                dimension: dimension.into(),
                hour,
            },
            quantity: customer * 7 + 1,
            allocations: vec![Allocation { tags: Vec::new(), quantity: customer * 7 + 1 }],
        },
        sealed_at: hour + 3600 + 65,
        state: RecordState::Accepted { metering_record_id: id.into(), at: hour + 3600 + 71 },
        generation: 0,
    }
}

/// A MeteringRecordId as the service makes them: a random lowercase UUID.
fn uuid_id() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// An hour's receipts of `customers` customers × 4 dimensions.
fn hour_of_receipts(hour: i64, customers: u32) -> Vec<StoredRecord> {
    let dimensions = ["requests", "storage_gb", "seats", "api_calls"];
    (0..customers).flat_map(|c| dimensions.iter().map(move |d| receipt(c, d, hour, &uuid_id()))).collect()
}

fn everything(archive: &Archive) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    archive.visit(&archive.ends(), i64::MIN..i64::MAX, &mut |s| out.push(s)).unwrap();
    out
}

/// Appends and commits (as the outbox does once sled holds the mark); returns the mark.
fn commit(archive: &Archive, records: &[StoredRecord]) -> Mark {
    let staged = archive.append(records).unwrap();
    let mark = staged.mark.clone();
    archive.note(staged);
    mark
}

fn len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn records_round_trip_with_their_receipts_and_times() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(dir.path(), &Mark::default()).unwrap();
    let mut records = vec![
        receipt(1, "requests", DAY0, "a1b2c3d4-0000-4000-8000-0123456789ab"),
        // Not a UUID as the service writes them: kept as text, unchanged.
        receipt(2, "requests", DAY0, "A1B2C3D4-0000-4000-8000-0123456789AB"),
        receipt(3, "requests", DAY0, "receipt-7"),
    ];
    let mut shipped = receipt(4, "seats", DAY0 + 86_400, "");
    shipped.state = RecordState::Shipped { at: DAY0 + 86_400 + 4000 };
    records.push(shipped);
    let mark = commit(&archive, &records);
    assert_eq!(mark.seq, 1);
    assert_eq!(mark.ends.keys().copied().collect::<Vec<_>>(), vec![day_of(DAY0), day_of(DAY0) + 1]);
    assert!(dir.path().join("2026-12-07.rcpt").is_file() && dir.path().join("2026-12-08.rcpt").is_file());
    assert_eq!(everything(&archive), records);
    let totals = archive.totals();
    assert_eq!((totals.files, totals.accepted, totals.shipped), (2, 3, 1));
    assert_eq!(
        totals.bytes,
        len(&dir.path().join("2026-12-07.rcpt")) + len(&dir.path().join("2026-12-08.rcpt"))
    );

    // Read again from the mark alone, as an offline read does.
    let offline = Archive::open_read_only(dir.path(), &mark).unwrap();
    assert_eq!(offline.totals(), totals);
    assert_eq!(everything(&offline), records);
}

#[test]
fn a_read_takes_only_the_hours_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(dir.path(), &Mark::default()).unwrap();
    let records: Vec<StoredRecord> = (0..30).flat_map(|h| hour_of_receipts(DAY0 + h * 3600, 3)).collect();
    commit(&archive, &records);
    let mut got = Vec::new();
    archive.visit(&archive.ends(), DAY0 + 5 * 3600..DAY0 + 7 * 3600, &mut |s| got.push(s)).unwrap();
    let expected: Vec<StoredRecord> = records
        .iter()
        .filter(|s| (DAY0 + 5 * 3600..DAY0 + 7 * 3600).contains(&s.record.key.hour))
        .cloned()
        .collect();
    assert_eq!(got.len(), 24);
    assert_eq!(got, expected);
}

#[test]
fn a_receipt_takes_less_than_64_bytes_in_full_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(dir.path(), &Mark::default()).unwrap();
    // 850 customers × 4 dimensions: one hour of the seller.
    let records = hour_of_receipts(DAY0, 850);
    commit(&archive, &records);
    let bytes = archive.totals().bytes;
    assert_eq!(records.len(), 3400);
    assert!(bytes < 64 * 3400, "{bytes} bytes for 3400 receipts");
}

#[test]
fn bytes_past_the_committed_length_are_invisible_and_cut_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(dir.path(), &Mark::default()).unwrap();
    let first = hour_of_receipts(DAY0, 2);
    let mark = commit(&archive, &first);
    let day_file = dir.path().join("2026-12-07.rcpt");
    let committed = len(&day_file);
    // A second move whose sled commit never happened: a whole block, then a torn one, and a file
    // of a new day.
    archive.append(&hour_of_receipts(DAY0 + 3600, 2)).unwrap();
    archive.append(&hour_of_receipts(DAY0 + 86_400, 2)).unwrap();
    let mut torn = hour_of_receipts(DAY0 + 7200, 2);
    torn.truncate(3);
    let mut bytes = Vec::new();
    encode_block(3, &torn.iter().collect::<Vec<_>>(), &mut bytes);
    let mut file = OpenOptions::new().append(true).open(&day_file).unwrap();
    file.write_all(&bytes[..bytes.len() / 2]).unwrap();
    let written = len(&day_file);
    assert!(written > committed);

    let offline = Archive::open_read_only(dir.path(), &mark).unwrap();
    assert_eq!(everything(&offline), first);
    assert_eq!(len(&day_file), written, "an offline read writes nothing");

    let reopened = Archive::open(dir.path(), &mark).unwrap();
    assert_eq!(len(&day_file), committed);
    assert!(!dir.path().join("2026-12-08.rcpt").exists(), "a file the mark does not name is removed");
    assert_eq!(everything(&reopened), first);
    // The next move takes the sequence the lost one had, and appends right after the first.
    let second = hour_of_receipts(DAY0 + 3600, 1);
    let mark = commit(&reopened, &second);
    assert_eq!(mark.seq, 2);
    assert_eq!(everything(&reopened), [first, second].concat());
}

#[test]
fn a_checksum_failure_names_the_file_the_offset_and_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(dir.path(), &Mark::default()).unwrap();
    commit(&archive, &hour_of_receipts(DAY0, 2));
    let day_file = dir.path().join("2026-12-07.rcpt");
    let second_block = len(&day_file);
    let mark = commit(&archive, &hour_of_receipts(DAY0 + 3600, 2));
    let mut bytes = std::fs::read(&day_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&day_file, &bytes).unwrap();

    let offline = Archive::open_read_only(dir.path(), &mark).unwrap();
    let err = offline.visit(&offline.ends(), i64::MIN..i64::MAX, &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "receipts archive {} is damaged at byte {second_block}: block 2 fails its checksum; see \
             \"A damaged receipts archive\" in docs/operations.md",
            day_file.display()
        )
    );
}

#[test]
fn a_file_shorter_than_committed_is_damage_and_the_daemon_moves_it_aside() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(dir.path(), &Mark::default()).unwrap();
    let mark = commit(&archive, &hour_of_receipts(DAY0, 2));
    let day_file = dir.path().join("2026-12-07.rcpt");
    let committed = len(&day_file);
    OpenOptions::new().write(true).open(&day_file).unwrap().set_len(committed - 5).unwrap();

    let offline = Archive::open_read_only(dir.path(), &mark).unwrap();
    let err = offline.visit(&offline.ends(), i64::MIN..i64::MAX, &mut |_| {}).unwrap_err();
    assert!(
        matches!(&err, ArchiveError::Damaged { path, offset, reason }
            if path == &day_file && *offset == committed - 5
                && *reason == format!("the file ends before its committed length {committed}")),
        "{err}"
    );
    let reopened = Archive::open(dir.path(), &mark).unwrap();
    assert_eq!(reopened.totals(), ArchiveTotals::default());
    assert!(!day_file.exists());
    assert_eq!(len(&dir.path().join("2026-12-07.rcpt.damaged")), committed - 5);
}

#[test]
fn whole_days_expire_once_the_whole_day_is_past_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(dir.path(), &Mark::default()).unwrap();
    // Hours 00:00..=22:00 settle on 12-07; 23:00's settle at 00:01:11 on 12-08.
    let records: Vec<StoredRecord> = (0..24).flat_map(|h| hour_of_receipts(DAY0 + h * 3600, 1)).collect();
    let mark = commit(&archive, &records);
    let days: Vec<i64> = mark.ends.keys().copied().collect();
    assert_eq!(days, vec![day_of(DAY0), day_of(DAY0) + 1]);
    let first_day_end = DAY0 + 86_400;
    // A second before the first day's end is past: nothing goes.
    assert_eq!(archive.expire(first_day_end - 1).unwrap(), ArchiveTotals::default());
    let expired = archive.expire(first_day_end).unwrap();
    assert_eq!((expired.files, expired.accepted, expired.shipped), (1, 92, 0));
    assert!(!dir.path().join("2026-12-07.rcpt").exists());
    assert!(dir.path().join("2026-12-08.rcpt").exists());
    assert_eq!(archive.totals().accepted, 4);
    // A reader with the old mark skips the file that is gone.
    let remaining: Vec<StoredRecord> =
        records.iter().filter(|s| s.record.key.hour == DAY0 + 23 * 3600).cloned().collect();
    let mut got = Vec::new();
    archive.visit(&mark.ends, i64::MIN..i64::MAX, &mut |s| got.push(s)).unwrap();
    assert_eq!(got, remaining);
    let mut ends = BTreeMap::new();
    ends.insert(day_of(DAY0) + 1, len(&dir.path().join("2026-12-08.rcpt")));
    assert_eq!(archive.ends(), ends);
}

#[test]
fn day_file_names_round_trip() {
    for day in [0, day_of(DAY0), day_of(DAY0) + 366] {
        assert_eq!(parse_name(&file_name(day)), Some(day));
    }
    assert_eq!(file_name(day_of(DAY0)), "2026-12-07.rcpt");
    assert_eq!(parse_name("2026-12-07.rcpt.damaged"), None);
    assert_eq!(parse_name("2026-2-07.rcpt"), None);
}
