//! Load generator for docs/performance.md: N connections, each keeping D events in flight (a reply
//! makes room for the next event), for a fixed time or a fixed number of events; prints durable
//! events/s, per-event ack latency p50/p99/p99.9 and, with `--pid`, the daemon's peak RSS and CPU.
//!
//! The same event stream goes either to meterd's socket (`--socket`) or, as
//! `HINCRBY usage:<customer>:<dimension>:<hour> <tagset> <quantity>`, to a Redis server running
//! with `appendfsync always` (`--redis HOST:PORT`). Events cycle through C customers × K dimensions
//! × T tag sets (`--customers`, `--dimensions`, `--tag-sets`), and with `--products N` each names
//! one of N products (`prod-bench-0`…).
//!
//! `--ids` puts an idempotency id on every event, as the client libraries (clients/python, go,
//! node) add one when the application gives none: 16 bytes as 32 lowercase hex digits. Ids are
//! numbered from `--id-base N` (default 0) and id number n always names the same event (the same
//! line of the mix), so successive runs with `--id-base` set to the previous run's `id_next` send
//! ids meterd has not seen, and a run with an earlier base resends remembered ids, which meterd
//! must answer `"duplicate":true` (`--resend`: the same as `--ids`, named for the intent). With
//! `--events N`, exactly N ids are sent (N + base is the next run's base). The line then adds
//! `ids=fresh|resend id_base id_next duplicates wrong_id` (replies that did not echo the event's
//! id); a refusal's reply is printed to stderr once.
//!
//! `--fsync-probe DIR` instead measures the raw rate of 4 KiB append + fdatasync on DIR's
//! filesystem, the floor for one-at-a-time acks. `bash scripts/bench.sh` runs everything.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

struct Args(Vec<String>);

impl Args {
    fn value(&self, name: &str, default: &str) -> String {
        let at = self.0.iter().position(|a| a == name);
        at.and_then(|i| self.0.get(i + 1)).cloned().unwrap_or(default.into())
    }

    fn number(&self, name: &str, default: u64) -> u64 {
        self.value(name, &default.to_string()).parse().unwrap_or_else(|_| panic!("{name} takes a number"))
    }
}

/// Where the events go.
#[derive(Clone)]
enum Target {
    Meterd(PathBuf),
    Redis(String),
}

fn main() {
    let args = Args(std::env::args().skip(1).collect());
    if args.0.iter().any(|a| a == "--fsync-probe") {
        return fsync_probe(PathBuf::from(args.value("--fsync-probe", ".")), args.number("--seconds", 3));
    }
    let target = match args.value("--redis", "").as_str() {
        "" => Target::Meterd(PathBuf::from(args.value("--socket", "meterd-sandbox/meterd.sock"))),
        addr => Target::Redis(addr.to_string()),
    };
    let connections = args.number("--connections", 32) as usize;
    let depth = args.number("--depth", 64) as usize;
    let seconds = args.number("--seconds", 5);
    let limit = args.number("--events", u64::MAX);
    let mix = Mix {
        customers: args.number("--customers", 1000),
        dimensions: args.number("--dimensions", 4),
        tag_sets: args.number("--tag-sets", 8),
        products: args.number("--products", 0),
    };
    let pid = args.value("--pid", "");
    let resend = args.0.iter().any(|a| a == "--resend");
    let ids = (resend || args.0.iter().any(|a| a == "--ids")).then(|| {
        assert!(matches!(target, Target::Meterd(_)), "--ids and --resend are for meterd's socket");
        let base = args.number("--id-base", 0);
        Arc::new(Ids { next: AtomicU64::new(base), base, end: base.saturating_add(limit), resend })
    });
    let lines = Arc::new(mix.lines(&target));
    let daemon = (!pid.is_empty()).then(|| Daemon::start(&pid));

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    // One thread drives every connection, so that the generator's own wake-ups stay few.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut latencies, elapsed) = runtime.block_on(async {
        let start = Instant::now();
        let workers: Vec<_> = (0..connections)
            .map(|c| {
                let (target, lines, ids) = (target.clone(), lines.clone(), ids.clone());
                let (stop, counts) = (stop.clone(), counts.clone());
                let offset = (c * lines.len() / connections.max(1)) as u64;
                tokio::spawn(async move {
                    let load = Load {
                        lines: &lines,
                        offset,
                        depth,
                        limit,
                        ids: ids.as_deref(),
                        stop: &stop,
                        counts: &counts,
                    };
                    match &target {
                        Target::Meterd(socket) => {
                            let stream =
                                tokio::net::UnixStream::connect(socket).await.expect("connect to meterd");
                            load.run(stream).await
                        }
                        Target::Redis(addr) => {
                            let stream =
                                tokio::net::TcpStream::connect(addr).await.expect("connect to redis");
                            stream.set_nodelay(true).unwrap();
                            load.run(stream).await
                        }
                    }
                })
            })
            .collect();
        let deadline = tokio::time::sleep(Duration::from_secs(seconds));
        tokio::pin!(deadline);
        while !deadline.is_elapsed() && counts.answered() < limit {
            tokio::select! {
                _ = &mut deadline => {}
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
            }
        }
        stop.store(true, Ordering::SeqCst);
        let elapsed = start.elapsed().as_secs_f64();
        let mut latencies: Vec<u32> = Vec::new();
        for worker in workers {
            latencies.extend(worker.await.unwrap());
        }
        (latencies, elapsed)
    });
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let acked = counts.acked.load(Ordering::SeqCst);
    let name = match target {
        Target::Meterd(_) => "meterd",
        Target::Redis(_) => "redis",
    };
    let mut line = format!(
        "target={name} connections={connections} depth={depth} seconds={elapsed:.1} acked={acked} refused={} \
         events_per_sec={:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3}",
        counts.refused.load(Ordering::SeqCst),
        acked as f64 / elapsed,
        pct(0.5),
        pct(0.99),
        pct(0.999),
    );
    if let Some(ids) = &ids {
        line.push_str(&format!(
            " ids={} id_base={} id_next={} duplicates={} wrong_id={}",
            if ids.resend { "resend" } else { "fresh" },
            ids.base,
            ids.next.load(Ordering::SeqCst).min(ids.end),
            counts.duplicates.load(Ordering::SeqCst),
            counts.wrong_id.load(Ordering::SeqCst),
        ));
    }
    if let Some(reply) = counts.first_refusal.get() {
        eprintln!("loadgen: first refusal: {}", reply.trim_end());
    }
    if let Some(daemon) = daemon {
        let (peak_rss_mib, cpu) = daemon.finish(elapsed);
        line.push_str(&format!(" peak_rss_mib={peak_rss_mib:.1} cpu_pct={cpu:.0}"));
    }
    println!("{line}");
    let out = args.value("--latency-out", "");
    if !out.is_empty() {
        // Every 10th sample of the sorted latencies, in microseconds: enough for a distribution plot.
        let text: String = latencies.iter().step_by(10).map(|us| format!("{us}\n")).collect();
        std::fs::write(&out, text).unwrap();
    }
}

/// The event stream: customer, dimension, tag set and product cycle independently.
struct Mix {
    customers: u64,
    dimensions: u64,
    tag_sets: u64,
    /// With N > 0, each event names `product_code` `prod-bench-0` … `prod-bench-{N-1}`.
    products: u64,
}

impl Mix {
    /// Up to 2^20 distinct request lines, ready to write.
    fn lines(&self, target: &Target) -> Vec<Vec<u8>> {
        let hour = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / 3600 * 3600;
        let combos = self.customers * self.dimensions * self.tag_sets;
        let distinct = (combos * self.products.max(1)).clamp(1, 1 << 20);
        (0..distinct)
            .map(|i| {
                let customer = 100_000_000_000 + i % self.customers;
                let dimension = format!("dim{}", i / self.customers % self.dimensions);
                let tags = format!("t{}", i / (self.customers * self.dimensions) % self.tag_sets);
                let quantity = 1 + i % 3;
                let product = match self.products {
                    0 => String::new(),
                    n => format!("\"product_code\":\"prod-bench-{}\",", i / combos % n),
                };
                match target {
                    Target::Meterd(_) => format!(
                        "{{{product}\"customer_aws_account_id\":\"{customer}\",\"dimension\":\"{dimension}\",\"quantity\":{quantity},\"tags\":{{\"set\":\"{tags}\"}}}}\n"
                    )
                    .into_bytes(),
                    Target::Redis(_) => {
                        let key = format!("usage:{customer}:{dimension}:{hour}");
                        let field = format!("set={tags}");
                        let quantity = quantity.to_string();
                        let mut resp = format!("*4\r\n$7\r\nHINCRBY\r\n${}\r\n{key}\r\n", key.len());
                        resp.push_str(&format!("${}\r\n{field}\r\n${}\r\n{quantity}\r\n", field.len(), quantity.len()));
                        resp.into_bytes()
                    }
                }
            })
            .collect()
    }
}

/// Idempotency ids shared by every connection: each takes the next numbers, up to `end`.
struct Ids {
    next: AtomicU64,
    base: u64,
    end: u64,
    /// The ids were sent before: every reply should say `duplicate`.
    resend: bool,
}

impl Ids {
    /// The next `n` id numbers (fewer, or none, near `end`).
    fn take(&self, n: u64) -> Range<u64> {
        let start = self.next.fetch_add(n, Ordering::Relaxed).min(self.end);
        start..start.saturating_add(n).min(self.end)
    }
}

/// Id number `n` as the client libraries' ids look: 16 random-looking bytes in lowercase hex. The
/// first 8 bytes are a bijection of `n` (splitmix64's finaliser), so ids never collide.
fn id_hex(n: u64) -> [u8; 32] {
    fn mix(n: u64) -> u64 {
        let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (half, word) in [mix(n), mix(n ^ 0x5851_f42d_4c95_7f2d)].into_iter().enumerate() {
        for (i, digit) in out[half * 16..][..16].iter_mut().enumerate() {
            *digit = HEX[(word >> ((15 - i) * 4)) as usize & 15];
        }
    }
    out
}

/// The replies of every connection.
#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    refused: AtomicU64,
    /// `ok` replies that said `"duplicate":true`.
    duplicates: AtomicU64,
    /// `ok` replies that did not echo the event's id.
    wrong_id: AtomicU64,
    first_refusal: OnceLock<String>,
}

impl Counts {
    fn answered(&self) -> u64 {
        self.acked.load(Ordering::Relaxed) + self.refused.load(Ordering::Relaxed)
    }

    /// Counts one reply (meterd's JSON, or Redis's `:n`) to the event with id number `n`.
    fn tally(&self, reply: &str, n: Option<u64>) {
        if !(reply.starts_with("{\"ok\":true") || reply.starts_with(':')) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let _ = self.first_refusal.set(reply.to_string());
            return;
        }
        self.acked.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = n {
            // `{"ok":true,"id":"<32 hex digits>"` then `,"duplicate":true` or not.
            if reply.as_bytes().get(17..49) != Some(&id_hex(n)[..]) || reply.as_bytes().get(49) != Some(&b'"')
            {
                self.wrong_id.fetch_add(1, Ordering::Relaxed);
            }
            if reply.as_bytes().get(49..).is_some_and(|rest| rest.starts_with(b"\",\"duplicate\":true")) {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One connection's share of the load.
struct Load<'a> {
    lines: &'a [Vec<u8>],
    offset: u64,
    depth: usize,
    limit: u64,
    ids: Option<&'a Ids>,
    stop: &'a AtomicBool,
    counts: &'a Counts,
}

impl Load<'_> {
    /// Keeps `depth` requests in flight; each reply (one line: meterd's JSON, Redis's `:n`) lets
    /// the next request go. Returns every ack's latency in microseconds.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&self, stream: S) -> Vec<u32> {
        let (read, mut write) = tokio::io::split(stream);
        let mut reader = BufReader::with_capacity(64 * 1024, read);
        let mut next = self.offset;
        // Each request's send time and number (its line, and with ids its id).
        let mut in_flight: VecDeque<(Instant, u64)> = VecDeque::with_capacity(self.depth);
        let mut out = Vec::with_capacity(self.depth * 256);
        let mut samples = Vec::new();
        let mut reply = String::new();
        let lines = self.lines.len() as u64;
        let mut send = |n: usize, out: &mut Vec<u8>, in_flight: &mut VecDeque<(Instant, u64)>| {
            out.clear();
            let now = Instant::now();
            let numbers = match self.ids {
                Some(ids) => ids.take(n as u64),
                None => {
                    next += n as u64;
                    next - n as u64..next
                }
            };
            for number in numbers {
                let line = &self.lines[(number % lines) as usize];
                if self.ids.is_some() {
                    // The line's closing `}` and newline, after the id.
                    out.extend_from_slice(&line[..line.len() - 2]);
                    out.extend_from_slice(b",\"id\":\"");
                    out.extend_from_slice(&id_hex(number));
                    out.extend_from_slice(b"\"}\n");
                } else {
                    out.extend_from_slice(line);
                }
                in_flight.push_back((now, number));
            }
        };
        let id_of = |number: u64| self.ids.map(|_| number);
        send(self.depth, &mut out, &mut in_flight);
        write.write_all(&out).await.unwrap();
        loop {
            // Every reply already received, then as many new requests.
            let mut answered = 0;
            loop {
                if in_flight.is_empty() {
                    // Every id this run may send was sent and answered.
                    return samples;
                }
                reply.clear();
                if reader.read_line(&mut reply).await.unwrap_or(0) == 0 {
                    return samples;
                }
                let (sent, number) = in_flight.pop_front().expect("a reply answers a request");
                samples.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                self.counts.tally(&reply, id_of(number));
                answered += 1;
                if !reader.buffer().contains(&b'\n') {
                    break;
                }
            }
            let reached = self.ids.is_none() && self.counts.acked.load(Ordering::Relaxed) >= self.limit;
            if self.stop.load(Ordering::Relaxed) || reached {
                // Collect what is still in flight so that nothing is left half-answered.
                while let Some((_, number)) = in_flight.pop_front() {
                    reply.clear();
                    if reader.read_line(&mut reply).await.unwrap_or(0) == 0 {
                        break;
                    }
                    self.counts.tally(&reply, id_of(number));
                }
                return samples;
            }
            send(answered, &mut out, &mut in_flight);
            if !out.is_empty() {
                write.write_all(&out).await.unwrap();
            }
        }
    }
}

/// The daemon's CPU time and peak RSS over one run, from /proc.
struct Daemon {
    pid: String,
    ticks: u64,
}

impl Daemon {
    fn start(pid: &str) -> Self {
        // "5" resets the peak RSS (VmHWM) to the current RSS, so the peak is this run's.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        Daemon { pid: pid.to_string(), ticks: cpu_ticks(pid) }
    }

    /// Peak RSS in MiB and CPU use in percent of one core.
    fn finish(self, elapsed: f64) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let hwm_kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let ticks = cpu_ticks(&self.pid) - self.ticks;
        // USER_HZ is 100 on Linux.
        (hwm_kib / 1024.0, ticks as f64 / elapsed)
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").map_or("", |(_, rest)| rest).split(' ').collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
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
