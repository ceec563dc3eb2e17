//! The commit thread on a real outbox in a temp dir, fed commands that were queued before it
//! ran: their order is what it must keep.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use super::{Command, CommitSettings, Committer, Outcome, Submission, run};
use crate::aggregate::Rules;
use crate::clock::{Clock, hour_of};
use crate::context::Context;
use crate::model::{Customer, Event, LateEvents, Scope};
use crate::outbox::{Limits, Outbox, StoredRecord};

fn event(customer: &str, quantity: u32) -> Event {
    Event {
        scope: Scope::ProductCode("prod-test".into()),
        customer: Customer::AwsAccountId(customer.into()),
        dimension: "requests".into(),
        quantity,
        timestamp: None,
        tags: Vec::new(),
        id: None,
        peer: 0,
        id_print: None,
    }
}

fn rules(future_tolerance: i64) -> Rules {
    Rules {
        seal_delay: 300,
        deadline: 6 * 3600,
        future_tolerance,
        late_events: LateEvents::CarryForward,
        sealed_hours_are_frozen: false,
    }
}

/// Runs the commit thread on `commands` (all queued before it starts) until they are done;
/// returns what it sealed.
fn run_queued(dir: &std::path::Path, commands: Vec<Command>) -> Vec<StoredRecord> {
    let (outbox, mut recovered) = Outbox::open(dir, Limits::default()).unwrap();
    let (sealed_tx, mut sealed_rx) = mpsc::unbounded_channel();
    let settings = CommitSettings {
        rules: rules(300),
        max_bytes: u64::MAX,
        heartbeat: None,
        sealed_through: watch::channel(None).0,
    };
    let committer = Committer::recover(
        Context::new(Clock::default()),
        Arc::new(outbox),
        &mut recovered,
        settings,
        sealed_tx,
    )
    .unwrap();
    let (queue, receiver) = mpsc::channel(commands.len() + 1);
    commands.into_iter().for_each(|command| queue.try_send(command).unwrap());
    let (_, shared) = committer.share(queue, false);
    run(shared, receiver).unwrap();
    std::iter::from_fn(|| sealed_rx.try_recv().ok()).flatten().collect()
}

fn submit(events: Vec<Event>) -> (Command, oneshot::Receiver<Vec<Outcome>>) {
    let (reply, answer) = oneshot::channel();
    (Command::Submit(Submission { events, received: Instant::now(), reply }), answer)
}

#[test]
fn a_flush_seals_the_events_queued_before_it_and_a_reload_applies_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let (before, counted) = submit(vec![event("111111111111", 5)]);
    let (flushed, sealed) = oneshot::channel();
    let flush = Command::Flush {
        customer: Some("111111111111".into()),
        product: None,
        every_hour: false,
        reply: flushed,
    };
    // A reload that takes away every second of future tolerance: the event before it, stamped a
    // minute ahead, was sent under the old rules and must be counted under them.
    let ahead = Event { timestamp: Some(Clock::default().now() + 60), ..event("222222222222", 7) };
    let (early, early_counted) = submit(vec![ahead]);
    let hour = hour_of(Clock::default().now());
    let records = run_queued(dir.path(), vec![before, flush, early, Command::Reconfigure(rules(0))]);
    assert!(matches!(counted.blocking_recv().unwrap()[..], [Outcome::Counted(_)]));
    assert_eq!(sealed.blocking_recv().unwrap(), 1, "the flush sealed the event sent before it");
    let flushed: Vec<_> =
        records.iter().map(|r| (r.record.key.customer.clone(), r.record.quantity)).collect();
    assert_eq!(flushed, [(Customer::AwsAccountId("111111111111".into()), 5)]);
    // Its own hour (the one the test began in, or the next if it ran across the boundary).
    assert!([hour, hour_of(Clock::default().now())].contains(&records[0].record.key.hour));
    assert!(
        matches!(early_counted.blocking_recv().unwrap()[..], [Outcome::Counted(_)]),
        "refused by the later reload"
    );
}
