//! Remembered ids cost bounded memory: the real daemon (the built binary, the built-in emulator) is
//! sent a million events, each with its own id in the client libraries' form (16 random bytes as
//! 32 lowercase hex digits), pipelined over the socket in large writes. Every reply must be `ok`
//! and echo its event's id; a resend of a sample must be answered `duplicate`; and meterd's own
//! accounting (`VmRSS` and `VmHWM` in `/proc/<pid>/status`) must stay within a wide bound. The
//! exact figures belong to the benchmark (`BENCH_ONLY=ids bash scripts/bench.sh`).
//!
//! `METERD_ID_MEMORY_IDS` sets the number of ids (default 1,000,000), to measure a smaller run.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{Emu, Launch, Meterd};

const MIB: f64 = 1024.0 * 1024.0;

/// meterd's resident set after a million ids, and its peak: room for the runtime, sled's cache and
/// the open hours, and for the ids at a few dozen bytes each.
const BOUND_MIB: f64 = 256.0;

/// Connections sending at once, each its own share of the ids.
const CONNECTIONS: u64 = 4;

/// Events per write.
const WRITE_EVENTS: u64 = 4096;

/// Ids per round; meterd's memory is checked after each.
const ROUND: u64 = 100_000;

/// Id number `n` as a client library would make it: 32 lowercase hex digits, the first 16 a
/// bijection of `n` (splitmix64's finaliser), so no two numbers share an id.
fn id(n: u64) -> String {
    fn mix(n: u64) -> u64 {
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    format!("{:016x}{:016x}", mix(n), mix(n ^ 0x5851_f42d_4c95_7f2d))
}

/// Event number `n`: one of 1,000 customers × 4 dimensions, with id number `n`. The same `n`
/// always gives the same event, so a resend is a duplicate and not a conflict.
fn line(n: u64, out: &mut Vec<u8>) {
    let customer = 100_000_000_000 + n % 1000;
    let dimension = n / 1000 % 4;
    let quantity = 1 + n % 3;
    writeln!(
        out,
        r#"{{"customer_aws_account_id":"{customer}","dimension":"dim{dimension}","quantity":{quantity},"tags":{{"set":"t{}"}},"id":"{}"}}"#,
        n % 8,
        id(n)
    )
    .unwrap();
}

/// Sends events `numbers` on one connection, writing `WRITE_EVENTS` at a time from a thread while
/// this one reads, and checks that reply i is `ok` for event i's id (and `duplicate` when
/// `duplicate`). Returns the number of replies.
fn pipeline(socket: &Path, numbers: Vec<u64>, duplicate: bool) -> u64 {
    let stream = UnixStream::connect(socket).expect("connect to the ingest socket");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let sent = numbers.clone();
    let writing = std::thread::spawn(move || {
        let mut out = Vec::with_capacity(WRITE_EVENTS as usize * 160);
        for chunk in sent.chunks(WRITE_EVENTS as usize) {
            out.clear();
            for &n in chunk {
                line(n, &mut out);
            }
            writer.write_all(&out).expect("write events");
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut reply = String::new();
    let mut answered = 0;
    for n in numbers {
        reply.clear();
        let read = reader.read_line(&mut reply).expect("a reply within 60 s");
        assert!(read > 0, "meterd closed the connection after {answered} replies");
        let expected = if duplicate {
            format!("{{\"ok\":true,\"id\":\"{}\",\"duplicate\":true}}\n", id(n))
        } else {
            format!("{{\"ok\":true,\"id\":\"{}\"}}\n", id(n))
        };
        assert_eq!(reply, expected, "reply {answered} of this connection (event {n})");
        answered += 1;
    }
    reply.clear();
    assert_eq!(reader.read_line(&mut reply).unwrap(), 0, "a reply too many: {reply}");
    writing.join().unwrap();
    answered
}

/// `numbers` split over [`CONNECTIONS`] connections at once; returns the replies.
fn send_all(socket: &Path, numbers: &[u64], duplicate: bool) -> u64 {
    let share = numbers.len().div_ceil(CONNECTIONS as usize);
    std::thread::scope(|scope| {
        let senders: Vec<_> = numbers
            .chunks(share)
            .map(|part| scope.spawn(move || pipeline(socket, part.to_vec(), duplicate)))
            .collect();
        senders.into_iter().map(|s| s.join().unwrap()).sum()
    })
}

#[test]
fn a_million_remembered_ids_stay_within_bounded_memory() {
    let ids: u64 = std::env::var("METERD_ID_MEMORY_IDS").map_or(1_000_000, |v| v.parse().unwrap());
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let (idle, _) = meterd.memory();

    // In rounds, each checked against the bound, so that a store that grows per id fails early
    // rather than after using gigabytes.
    let start = Instant::now();
    let mut sent = 0;
    while sent < ids {
        let round: Vec<u64> = (sent..ids.min(sent + ROUND)).collect();
        assert_eq!(send_all(&meterd.socket, &round, false), round.len() as u64);
        sent += round.len() as u64;
        within_bound(&meterd, idle, sent);
    }
    let sending = start.elapsed();
    assert_eq!(meterd.metric("meterd_events_accepted_total"), ids as f64);

    // Every 100th id again, the same events: remembered, so answered duplicate and not counted.
    let sample: Vec<u64> = (0..ids).step_by(100).collect();
    assert_eq!(send_all(&meterd.socket, &sample, true), sample.len() as u64);
    assert_eq!(meterd.metric("meterd_events_duplicate_total"), sample.len() as f64);
    assert_eq!(meterd.metric("meterd_events_accepted_total"), ids as f64);

    // A few checkpoints (every 100 ms here) after the last event, then meterd's own accounting.
    std::thread::sleep(Duration::from_secs(1));
    let (rss, hwm) = within_bound(&meterd, idle, ids);
    println!(
        "ids={ids} sent_in_s={:.1} idle_rss_mib={:.1} rss_mib={:.1} hwm_mib={:.1} rss_bytes_per_id={:.0}",
        sending.as_secs_f64(),
        idle / MIB,
        rss / MIB,
        hwm / MIB,
        (rss - idle) / ids as f64,
    );
}

/// meterd's RSS and peak RSS, both asserted within [`BOUND_MIB`], `ids` ids after it was `idle`.
fn within_bound(meterd: &Meterd, idle: f64, ids: u64) -> (f64, f64) {
    let (rss, hwm) = meterd.memory();
    let per_id = (rss - idle) / ids as f64;
    assert!(
        rss / MIB <= BOUND_MIB,
        "meterd's RSS is {:.1} MiB after {ids} ids ({per_id:.0} bytes per id over the idle {:.1} MiB); \
         the bound is {BOUND_MIB} MiB",
        rss / MIB,
        idle / MIB,
    );
    assert!(
        hwm / MIB <= BOUND_MIB,
        "meterd's peak RSS (VmHWM) is {:.1} MiB after {ids} ids; the bound is {BOUND_MIB} MiB",
        hwm / MIB
    );
    (rss, hwm)
}
