//! Load generator for the ingest socket: N connections, each keeping `depth` events in flight,
//! for a fixed time; prints events/s and reply latency. `--fsync-probe DIR` instead measures the
//! raw rate of 4 KiB append + fdatasync on DIR's filesystem, the floor for one-at-a-time acks.
//!
//! `bash scripts/bench.sh` runs the scenarios of docs/performance.md.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str, default: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or(default.into())
    };
    if let Some(i) = args.iter().position(|a| a == "--fsync-probe") {
        return fsync_probe(PathBuf::from(&args[i + 1]), value("--seconds", "3").parse().unwrap());
    }
    let socket = PathBuf::from(value("--socket", "meterd-sandbox/meterd.sock"));
    let connections: usize = value("--connections", "32").parse().unwrap();
    let depth: usize = value("--depth", "64").parse().unwrap();
    let seconds: u64 = value("--seconds", "5").parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            let (socket, stop, acked, refused) =
                (socket.clone(), stop.clone(), acked.clone(), refused.clone());
            std::thread::spawn(move || connection(c, &socket, depth, &stop, &acked, &refused))
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::SeqCst);
    let mut latencies: Vec<Duration> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
    };
    println!(
        "connections={connections} depth={depth} seconds={elapsed:.1} acked={} refused={} events_per_sec={:.0} p50_ms={:.3} p99_ms={:.3}",
        acked.load(Ordering::SeqCst),
        refused.load(Ordering::SeqCst),
        acked.load(Ordering::SeqCst) as f64 / elapsed,
        pct(0.5).map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        pct(0.99).map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    );
}

/// Keeps `depth` events in flight; every reply makes room for one more. Returns one latency
/// sample per window of `depth` events.
fn connection(
    c: usize,
    socket: &PathBuf,
    depth: usize,
    stop: &AtomicBool,
    acked: &AtomicU64,
    refused: &AtomicU64,
) -> Vec<Duration> {
    let stream = UnixStream::connect(socket).expect("connect to meterd");
    let mut writer = std::io::BufWriter::new(stream.try_clone().unwrap());
    let mut reader = BufReader::new(stream);
    let line = format!(
        "{{\"customer_aws_account_id\":\"{}\",\"dimension\":\"requests\",\"quantity\":1,\"tags\":{{\"conn\":\"c{}\"}}}}\n",
        100_000_000_000u64 + (c % 50) as u64,
        c % 4
    );
    let mut samples = Vec::new();
    let mut reply = String::new();
    while !stop.load(Ordering::Relaxed) {
        let sent_at = Instant::now();
        for _ in 0..depth {
            writer.write_all(line.as_bytes()).unwrap();
        }
        writer.flush().unwrap();
        for _ in 0..depth {
            reply.clear();
            if reader.read_line(&mut reply).unwrap_or(0) == 0 {
                return samples;
            }
            if reply.starts_with("{\"ok\":true") {
                acked.fetch_add(1, Ordering::Relaxed);
            } else {
                refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        samples.push(sent_at.elapsed());
    }
    samples
}

fn fsync_probe(dir: PathBuf, seconds: u64) {
    let path = dir.join("meterd-fsync-probe");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    let _ = std::fs::remove_file(&path);
    println!("fdatasync_per_sec={:.0} dir={}", n as f64 / start.elapsed().as_secs_f64(), dir.display());
}
