//! The notification consumer against a real SQS wire protocol (moto's server) and the real binary:
//! each effect, a duplicate, a crash between an effect and its delete, bad input, and an SQS that
//! cannot be reached. Skipped, saying so, when the venv lacks moto (scripts/setup.sh installs it).

mod common;

use std::time::{Duration, Instant};

use common::daemon::{Emu, Launch, Meterd, event, find};
use common::sqs::Sqs;
use common::{hour_start, now_secs, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const ENDING: &str = "111111111111";
const JOINER: &str = "222222222222";
const GONE: &str = "333333333333";

fn sns(message_id: &str, action: &str, customer: &str) -> String {
    let payload = json!({"action": action, "customer-identifier": format!("legacy-{customer}"),
        "customer-aws-account-id": customer, "product-code": common::daemon::PRODUCT});
    json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": "arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-prod-test",
        "Message": payload.to_string(),
        "Timestamp": "2026-01-01T00:00:00.000Z",
    })
    .to_string()
}

fn license_deprovisioned(id: &str, account: &str) -> String {
    json!({
        "version": "0", "id": id, "detail-type": "License Deprovisioned - Manufacturer",
        "source": "aws.agreement-marketplace", "account": "123456789012", "time": "2026-01-01T00:00:00Z",
        "region": "us-east-1", "resources": [],
        "detail": {"agreement": {"id": "agmt-1"}, "product": {"code": common::daemon::PRODUCT, "id": "prod-x"},
            "license": {"arn": "aws:license-manager:us-east-1:123456789012:l-1"}, "acceptor": {"accountId": account}},
    })
    .to_string()
}

fn launch<'a>(dir: &'a std::path::Path, emu: &Emu, sqs: &Sqs, queue: &str) -> Launch<'a> {
    Launch::new(dir, emu)
        .env("METERD_NOTIFICATIONS__QUEUE_URL", queue)
        .env("METERD_NOTIFICATIONS__ENDPOINT_URL", &sqs.url)
}

fn customer(launch: &Launch, id: &str) -> Value {
    let (code, stdout, stderr) = Meterd::cli(launch, &["customer", id, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

/// Records the emulator accepted for `customer`.
fn billed(emu: &Emu, customer: &str) -> usize {
    emu.records().iter().filter(|r| r["customer_aws_account_id"] == customer).count()
}

#[test]
fn each_effect_a_duplicate_and_poison_that_blocks_nothing() {
    let Some(sqs) = Sqs::start() else { return };
    let queue = sqs.queue("effects");
    let emu = Emu::start(|config| config.catalogue.subscribed_customers = Some(vec![ENDING.into()]));
    let dir = tempfile::tempdir().unwrap();
    let meterd = launch(dir.path(), &emu, &sqs, &queue).start();
    let hour = hour_start(0);

    // Poison first: it must block nothing behind it.
    for body in ["not json", r#"{"hello":"world"}"#, &sns("m-poison", "subscribe-maybe", "x")] {
        sqs.send(&queue, body);
    }
    sqs.send(&queue, &json!({"action": "unsubscribe-pending", "product-code": "prod-test"}).to_string());

    // Ending: the customer's current hour is sealed and billed now, long before the hour ends,
    // while the emulator refuses this customer from one hour after the notification on.
    assert!(meterd.send(&[event(ENDING, "requests", 5)])[0]["ok"] == true);
    let end = now_secs() + 3600;
    emu.control(
        "POST",
        "/_emulator/subscriptions",
        json!({"customer": ENDING, "subscribed": false, "at": end}),
    );
    let sent = Instant::now();
    let notice = sns("m-ending", "unsubscribe-pending", ENDING);
    sqs.send(&queue, &notice);
    wait_until("the ending customer's final hour is billed", WAIT, || billed(&emu, ENDING) == 1);
    let took = sent.elapsed();
    println!(
        "final hour accepted {:.2}s after unsubscribe-pending was sent (target: 60s; the emulator refuses the customer {}s after it)",
        took.as_secs_f64(),
        end - now_secs()
    );
    let records = emu.records();
    let record = find(&records, ENDING, "requests", hour).expect("the current hour, sealed early");
    assert_eq!(record["quantity"], 5);
    assert!(record["accepted_at"].as_i64().unwrap() < end);

    // The same notification again (SNS delivered it twice): no second effect.
    sqs.send(&queue, &notice);
    meterd.wait_metric("meterd_notifications_messages_total{outcome=\"duplicate\"}", 1.0, WAIT);
    assert_eq!(meterd.metric("meterd_notifications_effects_total{effect=\"ending\"}"), 1.0);

    // Not subscribed, waiting for its re-check (every 10 minutes): subscribe-success sends it now.
    assert!(meterd.send(&[event(JOINER, "requests", 3)])[0]["ok"] == true);
    flush(dir.path(), &emu, JOINER);
    meterd.wait_metric("meterd_records_awaiting_subscription", 1.0, WAIT);
    emu.control("POST", "/_emulator/subscriptions", json!({"customer": JOINER, "subscribed": true}));
    sqs.send(&queue, &json!({"action": "subscribe-success", "customer-aws-account-id": JOINER, "product-code": "prod-test"}).to_string());
    wait_until("the waiting record is sent after subscribe-success", WAIT, || billed(&emu, JOINER) == 1);

    // Ended: a refused record is a dead letter at once, naming the notification, and so is a late one.
    assert!(meterd.send(&[event(GONE, "requests", 2)])[0]["ok"] == true);
    flush(dir.path(), &emu, GONE);
    meterd.wait_metric("meterd_records_awaiting_subscription", 1.0, WAIT);
    sqs.send(&queue, &sns("m-gone", "unsubscribe-success", GONE));
    meterd.wait_metric("meterd_dead_letters{reason=\"customer_not_subscribed\"}", 1.0, WAIT);
    assert_eq!(meterd.metric("meterd_records_awaiting_subscription"), 0.0);
    assert!(meterd.send(&[event(GONE, "storage", 1)])[0]["ok"] == true);
    flush(dir.path(), &emu, GONE);
    meterd.wait_metric("meterd_dead_letters{reason=\"customer_not_subscribed\"}", 2.0, WAIT);
    let (_, dlq, _) = Meterd::cli(&launch(dir.path(), &emu, &sqs, &queue), &["dlq", "list"]);
    assert!(dlq.contains("unsubscribe-success notification sns:m-gone"), "{dlq}");

    // The poison was counted, never deleted, and blocked nothing.
    assert!(meterd.metric("meterd_notifications_messages_total{outcome=\"invalid\"}") >= 4.0);
    assert_eq!(meterd.metric("meterd_notifications_messages_total{outcome=\"applied\"}"), 3.0);
    let (visible, in_flight) = sqs.depth(&queue);
    assert_eq!(visible + in_flight, 4, "only the poison is left, for the queue's redrive policy");
    let l = launch(dir.path(), &emu, &sqs, &queue);
    let view = customer(&l, GONE);
    assert_eq!(view["lifecycle"][0]["state"], "ended");
    assert_eq!(view["records"]["dead_letter"], 2);
    let (_, status, _) = Meterd::cli(&l, &["status"]);
    assert!(status.contains("notifications: receiving"), "{status}");
    assert!(status.contains("customers: ended 1, ending 1, subscribed 1"), "{status}");
}

/// `meterd flush --customer` for a customer whose record must reach the emulator now.
fn flush(dir: &std::path::Path, emu: &Emu, customer: &str) {
    let (code, stdout, stderr) = Meterd::cli(&Launch::new(dir, emu), &["flush", "--customer", customer]);
    assert_eq!((code, stdout.as_str()), (0, "sealed 1 record(s); they are submitted now\n"), "{stderr}");
}

#[test]
fn a_crash_between_an_effect_and_its_delete_has_one_effect() {
    let Some(sqs) = Sqs::start() else { return };
    let queue = sqs.queue("crash");
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let held = launch(dir.path(), &emu, &sqs, &queue)
        .env("METERD_NOTIFICATIONS__VISIBILITY_TIMEOUT", "10s")
        .env("METERD_TEST_NOTIFICATIONS_HOLD_DELETE", "1");
    let meterd = held.start();
    assert!(meterd.send(&[event("111122223333", "requests", 4)])[0]["ok"] == true);
    sqs.send(&queue, &license_deprovisioned("eb-1", "111122223333"));
    meterd.wait_log("holding before the delete", WAIT);
    assert_eq!(meterd.metric("meterd_notifications_effects_total{effect=\"ending\"}"), 1.0);
    wait_until("the final hour is billed", WAIT, || emu.records().len() == 1);
    meterd.kill9();

    let l = || launch(dir.path(), &emu, &sqs, &queue).env("METERD_NOTIFICATIONS__VISIBILITY_TIMEOUT", "10s");
    let meterd = l().start();
    // The message comes back once its visibility timeout passes: seen, deleted, no effect.
    meterd.wait_metric("meterd_notifications_messages_total{outcome=\"duplicate\"}", 1.0, WAIT);
    assert_eq!(meterd.metric("meterd_notifications_effects_total{effect=\"ending\"}"), 0.0);
    wait_until("the queue is empty", WAIT, || sqs.depth(&queue) == (0, 0));
    let view = customer(&l(), "111122223333");
    let lifecycle = &view["lifecycle"][0];
    assert_eq!((lifecycle["state"].as_str(), lifecycle["applied"].as_bool()), (Some("ending"), Some(true)));
    assert_eq!(lifecycle["history"].as_array().unwrap().len(), 1, "one change: {view}");
    assert_eq!(emu.records().len(), 1);
}

#[test]
fn an_unreachable_queue_leaves_metering_alone_and_says_so() {
    let emu = Emu::start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (queue, endpoint) = (format!("http://{closed}/123456789012/q"), format!("http://{closed}"));
    let l = || {
        Launch::new(dir.path(), &emu)
            .env("METERD_NOTIFICATIONS__QUEUE_URL", &queue)
            .env("METERD_NOTIFICATIONS__ENDPOINT_URL", &endpoint)
    };
    let meterd = l().start();
    wait_until("a receive fails", WAIT, || {
        meterd.metric("meterd_notifications_errors_total{operation=\"receive\"}") >= 1.0
    });
    assert_eq!(meterd.metric("meterd_notifications_receiving"), 0.0);
    assert_eq!(meterd.get("/readyz").0, 200);
    assert!(meterd.send(&[event("111122223333", "requests", 1)])[0]["ok"] == true);
    let (_, status, _) = Meterd::cli(&l(), &["status"]);
    assert!(status.contains("notifications: FAILING"), "{status}");
}
