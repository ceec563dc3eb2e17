//! Receipts archive figures for docs/performance.md: writes `--days` (35) days of `--per-hour`
//! (10,000) receipts an hour into a fresh data dir the way the submit loop does (each receipt
//! settled in sled, each hour's moved to the archive at once), then reads them back as
//! `meterd receipts export` does with the daemon stopped, CSV rows into a sink. Prints bytes per
//! receipt on disk and the time each step took; asserts nothing.
//!
//! `cargo run --release --example receipts_bench -- --dir /tmp/receipts-bench` leaves the data
//! dir behind, so that the real command can be timed on it too:
//! `METERD_STORAGE__DATA_DIR=/tmp/receipts-bench target/release/meterd receipts export --since 0 > /dev/null`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use meterd::admin::RecordView;
use meterd::aggregate::{Allocation, SealedRecord};
use meterd::model::{Customer, RecordKey, Scope};
use meterd::outbox::{Limits, Outbox, RecordState, StoredRecord};

fn arg(args: &[String], name: &str, default: &str) -> String {
    let at = args.iter().position(|a| a == name);
    at.and_then(|i| args.get(i + 1)).cloned().unwrap_or(default.into())
}

/// The record of customer `n` (of `customers`, 4 dimensions each) in `hour`, accepted.
fn receipt(n: u64, hour: i64) -> StoredRecord {
    let dimensions = ["requests", "storage_gb", "seats", "api_calls"];
    let quantity = (n * 7919 % 5000) as u32 + 1;
    StoredRecord {
        record: SealedRecord {
            key: RecordKey {
                scope: Scope::ProductCode("prod-5ynnfmu6p7r2hd8gaz4iyk1ns".into()),
                customer: Customer::AwsAccountId(format!("{:012}", 310_000_000_000 + n / 4)),
                dimension: dimensions[(n % 4) as usize].into(),
                hour,
            },
            quantity,
            allocations: vec![Allocation { tags: Vec::new(), quantity }],
        },
        sealed_at: hour + 3 * 3600 + 5 + (n % 60) as i64,
        state: RecordState::Accepted {
            metering_record_id: uuid::Uuid::new_v4().hyphenated().to_string(),
            at: hour + 3 * 3600 + 70 + (n / 25) as i64,
        },
        generation: 0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let days: i64 = arg(&args, "--days", "35").parse().expect("--days N");
    let per_hour: u64 = arg(&args, "--per-hour", "10000").parse().expect("--per-hour N");
    let temp = tempfile::tempdir().expect("a temp dir");
    let dir = args
        .iter()
        .position(|a| a == "--dir")
        .map_or(temp.path().to_path_buf(), |i| PathBuf::from(&args[i + 1]));
    let first_hour = 1_796_601_600; // 2026-12-07T00:00:00Z

    let started = Instant::now();
    {
        let (outbox, _) = Outbox::open(&dir, Limits::default()).expect("the outbox opens");
        for hour_index in 0..days * 24 {
            let hour = first_hour + hour_index * 3600;
            for n in 0..per_hour {
                outbox.settle(&receipt(n, hour)).expect("settled");
            }
            // The submit loop moves an hour's receipts once the hour is past the deadline.
            outbox.archive_settled(i64::MAX).expect("moved");
        }
    }
    let wrote = started.elapsed();
    let receipts = days as u64 * 24 * per_hour;

    let started = Instant::now();
    let (outbox, _, _) = Outbox::open_read_only(&dir).expect("an offline open");
    let opened = started.elapsed();
    let totals = outbox.archive_totals();
    let mut sink = std::io::BufWriter::with_capacity(256 * 1024, std::io::sink());
    let mut exported = 0u64;
    outbox
        .receipts(i64::MIN..i64::MAX, &mut |stored| {
            exported += 1;
            let _ = writeln!(sink, "{}", RecordView::new(&stored).csv_row());
        })
        .expect("the export reads");
    let export = started.elapsed();
    let started = Instant::now();
    let mut decoded = 0u64;
    outbox.receipts(i64::MIN..i64::MAX, &mut |_| decoded += 1).expect("the archive reads");
    let read = started.elapsed();

    println!(
        "receipts written: {receipts} ({days} days x 24 hours x {per_hour}) in {:.1} s",
        wrote.as_secs_f64()
    );
    println!(
        "archive: {} files, {} bytes, {:.1} bytes per receipt",
        totals.files,
        totals.bytes,
        totals.bytes as f64 / receipts as f64
    );
    println!("offline open: {:.2} s", opened.as_secs_f64());
    println!("export to CSV rows (open included): {exported} receipts in {:.2} s", export.as_secs_f64());
    println!("archive read and decode alone: {decoded} receipts in {:.2} s", read.as_secs_f64());
    println!("data dir: {}", dir.display());
}
