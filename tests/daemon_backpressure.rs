//! A client that writes without reading its replies: meterd stops reading from it once the replies
//! it has not read reach `ingest.max_pending_reply_bytes` (1 MiB by default), so its memory stays
//! flat, and every line is still answered, in order, once the client reads. Nor can such a client
//! hold up shutdown.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::daemon::{Emu, Launch};

/// The daemon's resident set, from /proc.
fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

/// Writes `1\n` lines (each answered `invalid_json`) without reading, until meterd has not taken
/// a byte for a second; gives up after `limit` bytes. Returns how many bytes it wrote.
fn write_until_meterd_stops_reading(stream: &mut UnixStream, limit: usize) -> usize {
    stream.set_nonblocking(true).unwrap();
    let chunk = b"1\n".repeat(32 * 1024);
    let mut written = 0;
    let mut blocked_since: Option<Instant> = None;
    while written < limit {
        let at = written % chunk.len();
        match stream.write(&chunk[at..]) {
            Ok(n) => {
                written += n;
                blocked_since = None;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("write failed: {err}"),
        }
    }
    stream.set_nonblocking(false).unwrap();
    written
}

#[test]
fn a_client_that_never_reads_is_not_read_from_and_costs_bounded_memory() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let meterd = Launch::new(dir.path(), &emu).start();
    let before = rss_bytes(meterd.pid());

    // Two such clients at once; each would be offered up to 64 MiB of lines.
    let mut clients: Vec<UnixStream> = (0..2).map(|_| UnixStream::connect(&meterd.socket).unwrap()).collect();
    let written: Vec<usize> =
        clients.iter_mut().map(|c| write_until_meterd_stops_reading(c, 64 << 20)).collect();
    for &n in &written {
        // The 1 MiB of unread replies is about 13,000 lines (26 KB); the rest is the socket's
        // buffers and one read.
        assert!(n < 2 << 20, "meterd kept reading from a client that does not read: {n} bytes taken");
    }
    let grown = rss_bytes(meterd.pid()).saturating_sub(before);
    assert!(grown < 32 << 20, "meterd grew by {grown} bytes for two clients that do not read");

    // Once a client reads, every line is answered, in order, and nothing else.
    for (mut client, n) in clients.into_iter().zip(written.iter().copied()) {
        let writer = {
            let mut client = client.try_clone().unwrap();
            std::thread::spawn(move || {
                if n % 2 == 1 {
                    client.write_all(b"\n").unwrap();
                }
                client.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        client.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut replies = String::new();
        client.read_to_string(&mut replies).unwrap();
        writer.join().unwrap();
        let lines: Vec<&str> = replies.lines().collect();
        assert_eq!(lines.len(), n.div_ceil(2), "one reply per line");
        assert!(lines.iter().all(|l| l.contains("\"error\":\"invalid_json\"")), "{:?}", lines.first());
    }
    let refused = meterd.metric("meterd_events_rejected_total{reason=\"invalid_json\"}");
    assert_eq!(refused, written.iter().map(|n| n.div_ceil(2)).sum::<usize>() as f64);
    assert!(meterd.metric("meterd_ingest_reads_paused_total") >= 2.0);

    // A client that still does not read when meterd stops does not hold up its shutdown.
    let mut stalled = UnixStream::connect(&meterd.socket).unwrap();
    write_until_meterd_stops_reading(&mut stalled, 64 << 20);
    // Exit code 0: everything stopped within shutdown.grace.
    let status = meterd.signal("TERM");
    assert!(status.success(), "{status:?}");
    drop(stalled);
}
