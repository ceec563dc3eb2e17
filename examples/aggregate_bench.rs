//! The commit thread's aggregation work alone, without sockets or disks: events go through
//! [`Aggregator::admit_prepared`] in groups of 512 (each group's keys prepared and read ahead
//! first, as the commit thread does), and every `--checkpoint-every` events the changed open records are encoded as a
//! checkpoint would encode them. Prints nanoseconds per event for each key count, in rounds that
//! take turns, so that the figures of one run compare like with like.
//!
//! `cargo run --release --example aggregate_bench -- --keys 1000,1000000 --events 2000000 --rounds 3`

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use meterd::aggregate::{Admission, Aggregator, Rules};
use meterd::model::{Customer, Event, LateEvents, Scope};
use meterd::outbox::Chunker;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str, default: &str| {
        args.iter().position(|a| a == name).map_or(default.to_string(), |at| args[at + 1].clone())
    };
    let keys: Vec<u64> = value("--keys", "1000,1000000").split(',').map(|k| k.parse().unwrap()).collect();
    let events: u64 = value("--events", "2000000").parse().unwrap();
    let rounds: u32 = value("--rounds", "3").parse().unwrap();
    let every: u64 = value("--checkpoint-every", "500000").parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    for round in 1..=rounds {
        for &k in &keys {
            let (nanos, records) = run(k, events, every, now);
            println!("round={round} keys={k} events={events} open_records={records} ns_per_event={nanos:.0}");
        }
    }
}

/// Builds the events first (as the ingest threads would), then times only the aggregation.
fn run(keys: u64, events: u64, every: u64, now: i64) -> (f64, usize) {
    let customers = (keys / 4).max(1);
    let batch: Vec<Event> = (0..events)
        .map(|i| Event {
            scope: Scope::ProductCode("prod-bench".into()),
            customer: Customer::AwsAccountId((100_000_000_000 + i % customers).to_string()),
            dimension: format!("dim{}", i / customers % 4),
            quantity: 1 + (i % 3) as u32,
            timestamp: None,
            tags: vec![("set".into(), "t0".into())],
            id: None,
            peer: 0,
            id_print: None,
        })
        .collect();
    let mut aggregator = Aggregator::new(Rules {
        seal_delay: 300,
        deadline: 6 * 3600,
        future_tolerance: 300,
        late_events: LateEvents::CarryForward,
        sealed_hours_are_frozen: false,
    });
    let started = Instant::now();
    let mut logged = Vec::with_capacity(512);
    let mut since = 0;
    let mut group = Vec::with_capacity(512);
    let mut keys = Vec::with_capacity(512);
    let total = batch.len().max(1) as f64;
    let mut events = batch.into_iter();
    loop {
        group.extend(events.by_ref().take(512));
        if group.is_empty() {
            break;
        }
        std::hint::black_box(aggregator.prepare(group.iter(), now, &mut keys));
        for (event, key) in group.drain(..).zip(keys.iter().copied()) {
            if let Ok(Admission::Counted { admitted, .. }) = aggregator.admit_prepared(event, now, key) {
                logged.push(admitted);
            }
        }
        since += logged.len() as u64;
        logged.clear();
        if since >= every {
            since = 0;
            let mut chunker = Chunker::open_hours();
            aggregator.visit_open(false, |totals| chunker.push_encoded(|body| totals.encode(body)));
            std::hint::black_box(chunker.finish());
        }
    }
    let nanos = started.elapsed().as_nanos() as f64 / total;
    (nanos, aggregator.open_records())
}
