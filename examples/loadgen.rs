//! Load generator for the ingest socket: N connections, each keeping `depth` events in flight,
//! for a fixed time; prints events/s and reply latency. `--fsync-probe DIR` instead measures the
//! raw rate of 4 KiB append + fdatasync on DIR's filesystem, the floor for one-at-a-time acks.
//!
//! `bash scripts/bench.sh` runs the scenarios of docs/performance.md.

use std::io::Write;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

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
    // One thread drives every connection, so that the generator's own wake-ups stay few and the
    // figures measure meterd rather than the scheduler.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (latencies, elapsed) = runtime.block_on(async {
        let workers: Vec<_> = (0..connections)
            .map(|c| {
                let (socket, stop, acked, refused) =
                    (socket.clone(), stop.clone(), acked.clone(), refused.clone());
                tokio::spawn(async move { connection(c, &socket, depth, &stop, &acked, &refused).await })
            })
            .collect();
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::SeqCst);
        let mut latencies: Vec<Duration> = Vec::new();
        for worker in workers {
            latencies.extend(worker.await.unwrap());
        }
        (latencies, start.elapsed().as_secs_f64())
    });
    let mut latencies = latencies;
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
async fn connection(
    c: usize,
    socket: &PathBuf,
    depth: usize,
    stop: &AtomicBool,
    acked: &AtomicU64,
    refused: &AtomicU64,
) -> Vec<Duration> {
    let stream = tokio::net::UnixStream::connect(socket).await.expect("connect to meterd");
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let line = format!(
        "{{\"customer_aws_account_id\":\"{}\",\"dimension\":\"requests\",\"quantity\":1,\"tags\":{{\"conn\":\"c{}\"}}}}\n",
        100_000_000_000u64 + (c % 50) as u64,
        c % 4
    );
    let window = line.repeat(depth);
    let mut samples = Vec::new();
    let mut reply = String::new();
    while !stop.load(Ordering::Relaxed) {
        let sent_at = Instant::now();
        write.write_all(window.as_bytes()).await.unwrap();
        for _ in 0..depth {
            reply.clear();
            if reader.read_line(&mut reply).await.unwrap_or(0) == 0 {
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
