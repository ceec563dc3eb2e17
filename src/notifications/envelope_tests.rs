use serde_json::json;

use super::*;

fn sns(payload: serde_json::Value) -> String {
    json!({
        "Type": "Notification",
        "MessageId": "5f7c2a1e-0000-4000-8000-000000000001",
        "TopicArn": "arn:aws:sns:us-east-1:287250355862:aws-mp-subscription-notification-prodcode",
        "Message": payload.to_string(),
        "Timestamp": "2026-01-01T12:30:00.000Z",
        "SignatureVersion": "1",
        "Signature": "c2ln",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    })
    .to_string()
}

fn event(detail_type: &str, detail: serde_json::Value) -> String {
    json!({
        "version": "0",
        "id": "12345678-1234-1234-1234-123456789012",
        "detail-type": detail_type,
        "source": "aws.agreement-marketplace",
        "account": "123456789012",
        "time": "2026-01-01T12:30:00Z",
        "region": "us-east-1",
        "resources": ["arn:aws:aws-marketplace::aws:agreement:agmt-1"],
        "detail": detail,
    })
    .to_string()
}

fn legacy(action: &str) -> serde_json::Value {
    json!({"action": action, "customer-identifier": " X01EXAMPLEX", "product-code": "prod-a", "offer-identifier": "offer-1", "isFreeTrialTermPresent": "false"})
}

fn subscriber(customers: &[&str], product: Option<&str>, license: Option<&str>) -> Option<Subscriber> {
    Some(Subscriber {
        customers: customers.iter().map(|c| c.to_string()).collect(),
        product: product.map(String::from),
        license: license.map(String::from),
    })
}

#[test]
fn every_legacy_action_in_an_sns_envelope() {
    let cases = [
        ("subscribe-success", Change::Subscribed),
        ("unsubscribe-pending", Change::Ending),
        ("unsubscribe-success", Change::Ended),
    ];
    for (action, change) in cases {
        let notice = parse(&sns(legacy(action))).unwrap();
        assert_eq!(notice.change, change, "{action}");
        assert_eq!(notice.kind, action);
        assert_eq!(notice.ids, ["sns:5f7c2a1e-0000-4000-8000-000000000001"]);
        assert_eq!(notice.subscriber, subscriber(&["X01EXAMPLEX"], Some("prod-a"), None));
    }
    for action in ["subscribe-fail", "entitlement-updated"] {
        assert!(matches!(parse(&sns(legacy(action))).unwrap().change, Change::Ignored(_)), "{action}");
    }
}

#[test]
fn a_raw_payload_and_the_newer_fields() {
    let body = json!({
        "action": "unsubscribe-pending",
        "customer-identifier": "c-1",
        "customer-aws-account-id": "111122223333",
        "product-code": "prod-a",
        "licenseArn": "arn:aws:license-manager::123456789012:license:l-abc",
    });
    let notice = parse(&body.to_string()).unwrap();
    assert_eq!(notice.ids, Vec::<String>::new(), "a raw payload has only the SQS message id");
    assert_eq!(notice.change, Change::Ending);
    assert_eq!(
        notice.subscriber,
        subscriber(
            &["c-1", "111122223333"],
            Some("prod-a"),
            Some("arn:aws:license-manager::123456789012:license:l-abc")
        )
    );
    let capitalised =
        json!({"action": "subscribe-success", "CustomerIdentifier": "c-2", "ProductCode": "prod-b"});
    assert_eq!(
        parse(&capitalised.to_string()).unwrap().subscriber,
        subscriber(&["c-2"], Some("prod-b"), None)
    );
}

#[test]
fn every_agreement_event_type() {
    let account = json!({"accountId": "845735284135"});
    let created = |intent: &str| json!({"agreement": {"id": "agmt-1", "intent": intent, "status": "ACTIVE"}, "acceptor": account});
    let ended = |status: &str| json!({"agreement": {"id": "agmt-1", "status": status}, "acceptor": account});
    let license = json!({"agreement": {"id": "agmt-1"}, "product": {"code": "prod-a", "id": "prod-x"},
        "license": {"arn": "aws:license-manager:us-east-1:123456789012:l-e52c"}, "acceptor": account});
    let cases = [
        ("Purchase Agreement Created - Manufacturer", created("NEW"), Some(Change::Subscribed)),
        ("Purchase Agreement Created - Proposer", created("RENEW"), Some(Change::Subscribed)),
        ("Purchase Agreement Created - Manufacturer", created("REPLACE"), Some(Change::Subscribed)),
        ("Purchase Agreement Ended - Manufacturer", ended("CANCELLED"), Some(Change::Ending)),
        ("Purchase Agreement Ended - Proposer", ended("EXPIRED"), Some(Change::Ending)),
        ("Purchase Agreement Ended - Manufacturer", ended("RENEWED"), None),
        ("Purchase Agreement Ended - Manufacturer", ended("REPLACED"), None),
        ("Purchase Agreement Amended - Manufacturer", created("AMEND"), None),
        ("License Updated - Manufacturer", license.clone(), None),
        ("License Deprovisioned - Manufacturer", license.clone(), Some(Change::Ending)),
    ];
    for (kind, detail, change) in cases {
        let notice = parse(&event(kind, detail)).unwrap();
        assert_eq!(notice.ids, ["eventbridge:12345678-1234-1234-1234-123456789012"]);
        match change {
            Some(change) => assert_eq!(notice.change, change, "{kind}"),
            None => assert!(matches!(notice.change, Change::Ignored(_)), "{kind}: {:?}", notice.change),
        }
    }
    let notice = parse(&event("License Deprovisioned - Manufacturer", license)).unwrap();
    assert_eq!(
        notice.subscriber,
        subscriber(
            &["845735284135"],
            Some("prod-a"),
            Some("aws:license-manager:us-east-1:123456789012:l-e52c")
        )
    );
    let notice = parse(&event("Purchase Agreement Ended - Manufacturer", ended("CANCELLED"))).unwrap();
    assert_eq!(notice.subscriber, subscriber(&["845735284135"], None, None), "an agreement names no product");
}

#[test]
fn bad_input_is_named() {
    assert!(matches!(parse("not json"), Err(Invalid::NotJson(_))));
    assert_eq!(parse("[1, 2]"), Err(Invalid::UnknownEnvelope));
    assert_eq!(parse(r#"{"hello": "world"}"#), Err(Invalid::UnknownEnvelope));
    let broken = json!({"Type": "Notification", "MessageId": "m", "Message": "{not json"}).to_string();
    assert!(matches!(parse(&broken), Err(Invalid::NotJson(_))));
    assert_eq!(parse(&sns(legacy("subscribe-maybe"))), Err(Invalid::UnknownAction("subscribe-maybe".into())));
    let nobody = json!({"action": "unsubscribe-pending", "product-code": "prod-a"});
    assert_eq!(parse(&nobody.to_string()), Err(Invalid::NoCustomer("unsubscribe-pending".into())));
    assert_eq!(
        parse(&event("Something Else Happened", json!({}))),
        Err(Invalid::UnknownAction("Something Else Happened".into()))
    );
    let no_acceptor =
        event("Purchase Agreement Ended - Manufacturer", json!({"agreement": {"status": "CANCELLED"}}));
    assert!(matches!(parse(&no_acceptor), Err(Invalid::NoCustomer(_))));
}

#[test]
fn confirmations_and_other_sources_are_ignored_not_invalid() {
    let confirmation = json!({"Type": "SubscriptionConfirmation", "MessageId": "m-1", "Message": "You have chosen to subscribe", "SubscribeURL": "https://sns"}).to_string();
    let notice = parse(&confirmation).unwrap();
    assert!(matches!(notice.change, Change::Ignored(_)));
    assert_eq!(notice.ids, ["sns:m-1"]);
    let other = json!({"id": "e-1", "source": "aws.marketplacecatalog", "detail-type": "Offer Released", "detail": {}});
    assert!(matches!(parse(&other.to_string()).unwrap().change, Change::Ignored(_)));
}
