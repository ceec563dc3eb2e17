//! The submit loop in virtual time: a scripted service ([`ScriptedApi`]), a store in memory
//! ([`MemoryStore`]), tokio's paused clock and meterd's clock driven by it. Each test asserts
//! which records were sent together, when, and what became of each.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::RecordOutcome;
use super::scripted::{Answer, MemoryStore, ScriptedApi, service};
use super::submitter::{Settings, Submitter};
use crate::aggregate::SealedRecord;
use crate::clock::Clock;
use crate::context::Context;
use crate::model::{Customer, DeadReason, RecordKey, Scope};
use crate::outbox::{RecordState, StoredRecord};

/// 2026-11-10 12:00 UTC: mid-month, so that no deadline is cut by a month's close.
const NOW: i64 = 1_794_312_000;
const SECOND: Duration = Duration::from_secs(1);

fn settings() -> Settings {
    Settings {
        deadline: 6 * 3600,
        max_requests_per_second: 10.0,
        backoff_base: SECOND,
        backoff_max: 60 * SECOND,
        pause: 300 * SECOND,
        subscription_recheck: 600 * SECOND,
        retention: 35 * 86_400,
        call_per_license: false,
    }
}

/// A pending record of `customer` for the hour before [`NOW`], of prod-test; `customer@product`
/// names another product, `customer#license` a license ARN.
fn pending(customer: &str) -> StoredRecord {
    let (customer, scope) = match (customer.split_once('@'), customer.split_once('#')) {
        (Some((customer, product)), _) => (customer, Scope::ProductCode(product.into())),
        (_, Some((customer, license))) => (customer, Scope::LicenseArn(license.into())),
        _ => (customer, Scope::ProductCode("prod-test".into())),
    };
    let key = RecordKey {
        scope,
        customer: Customer::AwsAccountId(customer.into()),
        dimension: "requests".into(),
        hour: NOW - 3600,
    };
    StoredRecord {
        record: SealedRecord { key, quantity: 1, allocations: Vec::new() },
        sealed_at: NOW,
        state: RecordState::Pending,
        generation: 0,
    }
}

/// A submit loop running on `records` against `api`.
struct Loop {
    api: ScriptedApi,
    store: Arc<MemoryStore>,
    sealed: Option<mpsc::UnboundedSender<Vec<StoredRecord>>>,
    controls: mpsc::Sender<super::Control>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    start: Instant,
}

impl Loop {
    fn start(api: ScriptedApi, records: &[&str]) -> Loop {
        Self::start_with(api, records, settings())
    }

    fn start_with(api: ScriptedApi, records: &[&str], settings: Settings) -> Loop {
        let ctx = Context::new(Clock::driven(NOW));
        let store = Arc::new(MemoryStore::default());
        let records: Vec<StoredRecord> = records.iter().map(|c| pending(c)).collect();
        // The store holds them, pending, as the outbox does when the loop starts.
        records.iter().for_each(|r| super::Store::settle(&*store, r).unwrap());
        let submitter = Submitter::new(ctx, api.clone(), store.clone(), records, settings);
        let (sealed, sealed_rx) = mpsc::unbounded_channel();
        let (controls, controls_rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task =
            tokio::spawn(submitter.run(sealed_rx, controls_rx, std::future::ready(()), cancel.clone()));
        Loop { api, store, sealed: Some(sealed), controls, cancel, task, start: Instant::now() }
    }

    /// The calls so far: seconds after the start (whole), and the customers of each.
    fn calls(&self) -> Vec<(u64, Vec<String>)> {
        self.api.calls(self.start).into_iter().map(|(at, customers)| (at.as_secs(), customers)).collect()
    }

    /// Each record's state, by customer.
    fn states(&self) -> Vec<RecordState> {
        self.store.states().into_iter().map(|(_, state)| state).collect()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.unwrap();
    }
}

fn accepted(id: &str) -> RecordState {
    RecordState::Accepted { metering_record_id: id.into(), at: 0 }
}

/// States with their times zeroed (the clock's reading is not what these tests are about).
fn untimed(states: Vec<RecordState>) -> Vec<RecordState> {
    states
        .into_iter()
        .map(|state| match state {
            RecordState::Accepted { metering_record_id, .. } => {
                RecordState::Accepted { metering_record_id, at: 0 }
            }
            RecordState::DeadLetter { reason, message, .. } => {
                RecordState::DeadLetter { reason, message, at: 0 }
            }
            other => other,
        })
        .collect()
}

fn customers(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn the_loop_rests_while_records_wait_after_the_sealed_channel_closed() {
    // A loop that turns without end never lets the test's task run again: run the test on a
    // thread of its own and fail after a minute of real time instead of hanging.
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build();
        runtime.unwrap().block_on(rests_after_the_sealed_channel_closed());
        done.send(()).unwrap();
    });
    finished.recv_timeout(Duration::from_secs(60)).expect("the loop turned without end (or the test failed)");
}

async fn rests_after_the_sealed_channel_closed() {
    let not_subscribed = || Answer::Each(Box::new(|_| RecordOutcome::CustomerNotSubscribed));
    let mut run = Loop::start(ScriptedApi::new([not_subscribed()]), &["a"]);
    tokio::time::sleep(SECOND).await;
    assert_eq!(run.calls(), [(0, customers(&["a"]))]);
    // The commit stage stops: no more sealed records. The record waits for its re-check, and
    // the loop must wait with it, not turn without end on the closed channel.
    drop(run.sealed.take());
    let turns = run.store.turns.load(Ordering::SeqCst);
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(run.store.turns.load(Ordering::SeqCst) <= turns + 1, "the loop turned while nothing was due");
    // The re-check comes; the record is billed, and with nothing queued the loop ends.
    tokio::time::timeout(Duration::from_secs(3600), &mut run.task).await.expect("the loop ends").unwrap();
    assert_eq!(run.calls(), [(0, customers(&["a"])), (600, customers(&["a"]))]);
    assert_eq!(untimed(run.states()), [accepted("mr-2-0")]);
}

#[tokio::test(start_paused = true)]
async fn a_call_holds_one_product_and_with_several_products_one_license() {
    let records = ["a", "b@prod-b", "c#l-1", "d", "e#l-2", "f@prod-b", "g#l-1"];
    let calls = |per_license| async move {
        let run = Loop::start_with(
            ScriptedApi::new([]),
            &records,
            Settings { call_per_license: per_license, ..settings() },
        );
        tokio::time::sleep(10 * SECOND).await;
        let mut calls: Vec<Vec<String>> = run.calls().into_iter().map(|(_, c)| c).collect();
        calls.sort();
        run.stop().await;
        calls
    };
    // One product: its records share a call, and so do license records (all of that product).
    assert_eq!(
        calls(false).await,
        [customers(&["a", "d"]), customers(&["b", "f"]), customers(&["c", "g", "e"])]
    );
    // Several: a license's product is not known, so each license has calls of its own.
    assert_eq!(
        calls(true).await,
        [customers(&["a", "d"]), customers(&["b", "f"]), customers(&["c", "g"]), customers(&["e"])]
    );
}

#[tokio::test(start_paused = true)]
async fn throttled_calls_are_retried_unchanged_within_the_backoff() {
    // The first call takes 2 s to be answered (throttled); so does the next, at once.
    let api = ScriptedApi::new([
        Answer::Delay(2 * SECOND),
        service(400, "ThrottlingException"),
        service(400, "ThrottlingException"),
    ]);
    let run = Loop::start(api, &["a"]);
    tokio::time::sleep(10 * SECOND).await;
    let calls = run.api.calls(run.start);
    assert_eq!(calls.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(), vec![customers(&["a"]); 3]);
    // After the answer, full jitter under a ceiling of 1 s, then 2 s; never closer than the
    // rate limit's 100 ms.
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps[0] >= 2 * SECOND && gaps[0] <= 3 * SECOND, "{gaps:?}");
    assert!(gaps[1] >= SECOND / 10 && gaps[1] <= 2 * SECOND, "{gaps:?}");
    assert_eq!(untimed(run.states()), [accepted("mr-3-0")]);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_batch_refused_for_one_record_is_split_until_that_record_is_alone() {
    let api = ScriptedApi::with_rule(|records| {
        let bad = records.iter().any(|r| r.key.customer == Customer::AwsAccountId("c".into()));
        bad.then(|| service(400, "InvalidCustomerIdentifierException"))
    });
    let run = Loop::start(api, &["a", "b", "c", "d"]);
    tokio::time::sleep(10 * SECOND).await;
    let sent: Vec<Vec<String>> = run.calls().into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        sent,
        [
            customers(&["a", "b", "c", "d"]),
            customers(&["a", "b"]),
            customers(&["c", "d"]),
            customers(&["c"]),
            customers(&["d"])
        ]
    );
    let states = untimed(run.states());
    assert_eq!(states[..2], [accepted("mr-2-0"), accepted("mr-2-1")]);
    assert!(
        matches!(&states[2], RecordState::DeadLetter { reason: DeadReason::Invalid, message, .. }
            if message.starts_with("InvalidCustomerIdentifierException")),
        "{:?}",
        states[2]
    );
    assert_eq!(states[3], accepted("mr-5-0"));
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn every_record_refused_alone_with_one_error_pauses_submission_and_keeps_them() {
    let api = ScriptedApi::with_rule(|_| Some(service(400, "TimestampOutOfBoundsException")));
    let run = Loop::start(api, &["a", "b"]);
    tokio::time::sleep(10 * SECOND).await;
    let sent = |calls: Vec<(u64, Vec<String>)>| calls.into_iter().map(|(_, c)| c).collect::<Vec<_>>();
    assert_eq!(sent(run.calls()), [customers(&["a", "b"]), customers(&["a"]), customers(&["b"])]);
    assert_eq!(run.states(), [RecordState::Pending, RecordState::Pending], "kept, not dead letters");
    // Tried again after `submit.pause` (300 s), and paused again at once.
    tokio::time::sleep(300 * SECOND).await;
    let calls = run.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_eq!(calls[3], (300, customers(&["a", "b"])));
    assert_eq!(run.states(), [RecordState::Pending, RecordState::Pending]);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_record_the_service_never_takes_is_an_expired_dead_letter_at_its_deadline() {
    // The record's hour began an hour ago: its deadline (6 h) is 5 h away.
    let api = ScriptedApi::with_rule(|_| Some(service(503, "ServiceUnavailableException")));
    let run = Loop::start(api, &["a"]);
    tokio::time::sleep(5 * 3600 * SECOND - 120 * SECOND).await;
    assert_eq!(run.states(), [RecordState::Pending]);
    tokio::time::sleep(240 * SECOND).await;
    let states = untimed(run.states());
    assert!(
        matches!(&states[0], RecordState::DeadLetter { reason: DeadReason::Expired, message, .. }
            if message.contains("last error: ServiceUnavailableException")),
        "{states:?}"
    );
    // Retried all along, at most a minute apart (the backoff's ceiling).
    let calls = run.calls();
    assert!(calls.windows(2).all(|w| w[1].0 - w[0].0 <= 61), "{calls:?}");
    assert!(calls.len() > 5 * 60 - 10, "{} calls", calls.len());
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_customer_not_subscribed_yet_is_checked_again_at_each_recheck_alone_until_billed() {
    // Customer "b" subscribes 25 minutes in; "a" and "c" are billed in the first call.
    let subscribed_at = Instant::now() + 1500 * SECOND;
    let api = ScriptedApi::with_rule(move |_| {
        let waiting = Instant::now() < subscribed_at;
        Some(Answer::Each(Box::new(move |record| {
            if waiting && record.key.customer == Customer::AwsAccountId("b".into()) {
                RecordOutcome::CustomerNotSubscribed
            } else {
                RecordOutcome::Accepted { metering_record_id: format!("mr-{}", record.quantity) }
            }
        })))
    });
    let run = Loop::start(api, &["a", "b", "c"]);
    tokio::time::sleep(3600 * SECOND).await;
    // Every `submit.subscription_recheck` (600 s), "b" alone: never at the pace of retries, and
    // never with records already billed.
    assert_eq!(
        run.calls(),
        [
            (0, customers(&["a", "b", "c"])),
            (600, customers(&["b"])),
            (1200, customers(&["b"])),
            (1800, customers(&["b"])),
        ]
    );
    assert_eq!(untimed(run.states()), [accepted("mr-1"), accepted("mr-1"), accepted("mr-1")]);
    run.stop().await;
}

fn subscriber(customer: &str) -> crate::model::Subscriber {
    crate::model::Subscriber {
        customers: customers(&[customer]),
        product: Some("prod-test".into()),
        license: None,
    }
}

impl Loop {
    /// Sends a lifecycle change and waits for its answer.
    async fn lifecycle<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> super::Lifecycle,
    ) -> T {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.controls.send(super::Control::Lifecycle(make(reply))).await.unwrap();
        answer.await.unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn an_ending_subscriptions_records_go_ahead_of_the_backlog() {
    let backlog: Vec<String> = (0..30).map(|n| format!("b{n:02}")).collect();
    let mut names: Vec<&str> = backlog.iter().map(String::as_str).collect();
    names.push("zz");
    let run = Loop::start(ScriptedApi::new([]), &names);
    let until = NOW + 3600;
    run.lifecycle(|reply| super::Lifecycle::Hasten { subscriber: subscriber("zz"), until, reply }).await;
    tokio::time::sleep(10 * SECOND).await;
    let calls = run.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].1[0], "zz", "the ending customer's record leads the first call: {calls:?}");
    assert_eq!(calls[0].1.len(), 25);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_ended_subscriptions_refused_records_are_dead_letters_at_once() {
    let not_subscribed = || Answer::Each(Box::new(|_| RecordOutcome::CustomerNotSubscribed));
    let mut run = Loop::start(ScriptedApi::new([not_subscribed(), not_subscribed()]), &["a"]);
    tokio::time::sleep(SECOND).await;
    assert_eq!(run.store.states().len(), 1);
    let note = "the subscription ended (unsubscribe-success notification sns:1)".to_string();
    let dead =
        run.lifecycle(|reply| super::Lifecycle::Ended { subscriber: subscriber("a"), note, reply }).await;
    assert_eq!(dead, 1);
    // A record sealed later for the same customer is refused once, and is a dead letter at once.
    let mut later = pending("a");
    later.record.key.hour = NOW;
    run.sealed.as_ref().unwrap().send(vec![later]).unwrap();
    tokio::time::sleep(10 * SECOND).await;
    assert_eq!(run.calls(), [(0, customers(&["a"])), (1, customers(&["a"]))]);
    let message = "CustomerNotSubscribed: the customer has no subscription to the product; the subscription ended (unsubscribe-success notification sns:1)";
    let dead_letter =
        RecordState::DeadLetter { reason: DeadReason::CustomerNotSubscribed, message: message.into(), at: 0 };
    assert_eq!(untimed(run.states()), [dead_letter.clone(), dead_letter]);
    drop(run.sealed.take());
    tokio::time::timeout(SECOND, &mut run.task).await.expect("nothing is left to re-check").unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_subscribed_customers_waiting_records_are_sent_now() {
    let not_subscribed = || Answer::Each(Box::new(|_| RecordOutcome::CustomerNotSubscribed));
    let run = Loop::start(ScriptedApi::new([not_subscribed(), not_subscribed()]), &["a", "b@prod-b"]);
    tokio::time::sleep(5 * SECOND).await;
    let offered =
        run.lifecycle(|reply| super::Lifecycle::Subscribed { subscriber: subscriber("a"), reply }).await;
    assert_eq!(offered, 1, "only the waiting record of that customer and product");
    tokio::time::sleep(SECOND).await;
    let calls = run.calls();
    assert_eq!(
        calls[calls.len() - 1],
        (5, customers(&["a"])),
        "sent at once, not after the 600 s re-check: {calls:?}"
    );
    run.stop().await;
}
