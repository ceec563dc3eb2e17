//! Several products in one meterd (`aws.products`): events name their product, each product's
//! records go out in calls of that product only (checked in the emulator's request log), the
//! refusals name what is wrong, and ids survive kill -9 bound to their product.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd};
use common::hour_start;
use serde_json::{Value, json};

const PRODUCTS: &str = r#"[{ code = "prod-a", dimensions = ["requests", "gb"] }, { code = "prod-b", dimensions = ["requests"] }]"#;
const LICENSE_A: &str = "arn:aws:license-manager::111111111111:license:l-a";
const LICENSE_B: &str = "arn:aws:license-manager::111111111111:license:l-b";
const LICENSE_B2: &str = "arn:aws:license-manager::111111111111:license:l-b2";
const CUSTOMERS: [&str; 2] = ["111111111111", "222222222222"];

/// An emulator that knows both products and which product each license belongs to.
fn emulator() -> Emu {
    Emu::start(|config| {
        config.catalogue.product_codes = Some(vec!["prod-a".into(), "prod-b".into()]);
        config.catalogue.licenses = Some(
            [(LICENSE_A, "prod-a"), (LICENSE_B, "prod-b"), (LICENSE_B2, "prod-b")]
                .map(|(arn, product)| (arn.to_string(), product.to_string()))
                .into(),
        );
    })
}

fn launch<'a>(dir: &'a std::path::Path, emu: &Emu) -> Launch<'a> {
    Launch::new(dir, emu).env("METERD_AWS__PRODUCT_CODE", "").env("METERD_AWS__PRODUCTS", PRODUCTS)
}

fn usage(product: &str, customer: &str, dimension: &str, quantity: u64, id: &str) -> Value {
    json!({ "product_code": product, "customer_aws_account_id": customer, "dimension": dimension,
            "quantity": quantity, "id": id })
}

fn licensed(product: &str, license: &str, customer: &str, quantity: u64, id: &str) -> Value {
    json!({ "product_code": product, "license_arn": license, "customer_aws_account_id": customer,
            "dimension": "requests", "quantity": quantity, "id": id })
}

/// The same customers and dimension names under both products, and license events of both.
fn mixed_events() -> Vec<Value> {
    let mut events = Vec::new();
    for (n, customer) in CUSTOMERS.iter().enumerate() {
        let n = n as u64;
        events.push(usage("prod-a", customer, "requests", 10 + n, &format!("a-r-{customer}")));
        events.push(usage("prod-a", customer, "gb", 20 + n, &format!("a-g-{customer}")));
        events.push(usage("prod-b", customer, "requests", 30 + n, &format!("b-r-{customer}")));
    }
    events.push(licensed("prod-a", LICENSE_A, "333333333333", 40, "l-a"));
    events.push(licensed("prod-b", LICENSE_B, "444444444444", 50, "l-b"));
    events.push(licensed("prod-b", LICENSE_B2, "555555555555", 60, "l-b2"));
    events
}

/// Every record the emulator billed: (product code or license ARN, customer, dimension) → quantity.
fn billed(records: &[Value]) -> BTreeMap<(String, String, String), u64> {
    let scope = |r: &Value| r["product_code"].as_str().or(r["license_arn"].as_str()).unwrap().to_string();
    records
        .iter()
        .map(|r| {
            let key = (
                scope(r),
                r["customer_aws_account_id"].as_str().unwrap().to_string(),
                r["dimension"].as_str().unwrap().to_string(),
            );
            (key, r["quantity"].as_u64().unwrap())
        })
        .collect()
}

fn expected() -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    let mut put = |scope: &str, customer: &str, dimension: &str, quantity: u64| {
        out.insert((scope.to_string(), customer.to_string(), dimension.to_string()), quantity);
    };
    for (n, customer) in CUSTOMERS.iter().enumerate() {
        let n = n as u64;
        put("prod-a", customer, "requests", 10 + n);
        put("prod-a", customer, "gb", 20 + n);
        put("prod-b", customer, "requests", 30 + n);
    }
    put(LICENSE_A, "333333333333", "requests", 40);
    put(LICENSE_B, "444444444444", "requests", 50);
    put(LICENSE_B2, "555555555555", "requests", 60);
    out
}

fn flush_all(launch: &Launch) -> usize {
    let mut sealed = 0;
    for customer in CUSTOMERS.iter().chain(&["333333333333", "444444444444", "555555555555"]) {
        let (code, stdout, stderr) = Meterd::cli(launch, &["flush", "--customer", customer]);
        assert_eq!(code, 0, "{stderr}");
        sealed += stdout.split(' ').nth(1).unwrap().parse::<usize>().unwrap();
    }
    sealed
}

/// Every BatchMeterUsage call was answered, and each named one product: by its `ProductCode`,
/// or (license records, no `ProductCode`) by one license (the emulator refuses licenses of two
/// products in one call). Returns the records sent per product code.
fn calls_per_product(emu: &Emu) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for request in emu.requests() {
        assert_eq!(request["operation"], "BatchMeterUsage", "{request}");
        assert_eq!(request["outcome"], "ok", "{request}");
        let product = request["product_code"].as_str().unwrap_or("(license)").to_string();
        if product == "(license)" {
            assert_eq!(request["records"], 1, "one license per call with several products: {request}");
        }
        *out.entry(product).or_default() += request["records"].as_u64().unwrap();
    }
    out
}

#[test]
fn two_products_with_shared_customers_and_dimensions_are_billed_in_calls_of_their_own() {
    let emu = emulator();
    let dir = tempfile::tempdir().unwrap();
    let meterd = launch(dir.path(), &emu).start();
    let replies = meterd.send(&mixed_events());
    assert!(replies.iter().all(|r| r["ok"] == true), "{replies:?}");

    // Refused, each with its own code and message.
    let refusals = meterd.send(&[
        json!({ "customer_aws_account_id": "111111111111", "dimension": "requests", "quantity": 1, "id": "none" }),
        usage("prod-c", "111111111111", "requests", 1, "other"),
        usage("prod-b", "111111111111", "gb", 1, "b-gb"),
    ]);
    let answers: Vec<(&str, &str, &str)> = refusals
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["error"].as_str().unwrap(), r["message"].as_str().unwrap()))
        .collect();
    assert_eq!(
        answers,
        [
            (
                "none",
                "missing_field",
                "`product_code` is required: several products are configured (aws.products)"
            ),
            (
                "other",
                "unknown_product",
                r#"`product_code` "prod-c" is not a configured product (configured: "prod-a", "prod-b")"#
            ),
            (
                "b-gb",
                "unknown_dimension",
                r#"dimension "gb" is not in the dimensions of product "prod-b" (aws.products)"#
            ),
        ]
    );
    assert_eq!(meterd.metric("meterd_events_rejected_total{reason=\"unknown_product\"}"), 1.0);

    // One product of one customer first: its other product stays open.
    let (code, stdout, stderr) = Meterd::cli(
        &launch(dir.path(), &emu),
        &["flush", "--customer", "111111111111", "--product-code", "prod-a"],
    );
    assert_eq!((code, stdout.as_str()), (0, "sealed 2 record(s); they are submitted now\n"), "{stderr}");
    assert_eq!(emu.wait_records(2, Duration::from_secs(20)).len(), 2);
    meterd.wait_metric("meterd_records{state=\"open\"}", 7.0, Duration::from_secs(10));
    // A product that is not configured is refused, not answered "sealed 0".
    let (code, _, stderr) = Meterd::cli(
        &launch(dir.path(), &emu),
        &["flush", "--customer", "111111111111", "--product-code", "prod-c"],
    );
    assert_eq!(
        (code, stderr.as_str()),
        (
            1,
            "meterd: --product-code \"prod-c\" is not a configured product (configured: \"prod-a\", \"prod-b\")\n"
        )
    );

    assert_eq!(flush_all(&launch(dir.path(), &emu)), 7);
    let records = emu.wait_records(9, Duration::from_secs(20));
    assert_eq!(billed(&records), expected());
    assert!(records.iter().all(|r| r["hour"] == hour_start(0) || r["hour"] == hour_start(0) - 3600));
    assert_eq!(
        calls_per_product(&emu),
        BTreeMap::from([("(license)".to_string(), 3), ("prod-a".to_string(), 4), ("prod-b".to_string(), 2)])
    );
    meterd.wait_metric(
        "meterd_records_submitted_by_product_total{product=\"prod-a\",status=\"success\"}",
        4.0,
        Duration::from_secs(5),
    );
    assert_eq!(
        meterd.metric("meterd_records_submitted_by_product_total{product=\"prod-b\",status=\"success\"}"),
        2.0
    );
    assert_eq!(
        meterd.metric("meterd_records_submitted_by_product_total{product=\"(license)\",status=\"success\"}"),
        3.0
    );
}

#[test]
fn after_kill_9_a_resend_by_id_is_a_duplicate_in_each_product_and_ids_are_bound_to_their_product() {
    let emu = emulator();
    let dir = tempfile::tempdir().unwrap();
    let meterd = launch(dir.path(), &emu).start();
    let replies = meterd.send(&mixed_events());
    assert!(replies.iter().all(|r| r["ok"] == true && r.get("duplicate").is_none()), "{replies:?}");
    meterd.kill9();

    let meterd = launch(dir.path(), &emu).start();
    let again = meterd.send(&mixed_events());
    assert!(again.iter().all(|r| r["ok"] == true && r["duplicate"] == true), "{again:?}");
    // The same id for the same usage of the other product is another event.
    let moved = meterd.send(&[usage("prod-b", "111111111111", "requests", 10, "a-r-111111111111")]);
    assert_eq!(moved[0]["error"], "id_conflict", "{moved:?}");

    assert_eq!(flush_all(&launch(dir.path(), &emu)), 9);
    let records = emu.wait_records(9, Duration::from_secs(20));
    assert_eq!(billed(&records), expected(), "each event billed once, in its own product");
    calls_per_product(&emu);
}

#[test]
fn check_config_refuses_both_forms_and_checks_every_product() {
    let emu = emulator();
    let dir = tempfile::tempdir().unwrap();
    let both = Launch::new(dir.path(), &emu).env("METERD_AWS__PRODUCTS", PRODUCTS);
    let (code, _, stderr) = Meterd::cli(&both, &["check-config"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("aws.products and aws.product_code/aws.dimensions are both set: aws.product_code with aws.dimensions is the one-product form of aws.products; set one form only"),
        "{stderr}"
    );
    let bad = launch(dir.path(), &emu)
        .env("METERD_AWS__PRODUCTS", r#"[{ code = "prod-a" }, { code = "no spaces" }]"#)
        .env("METERD_AWS__MODE", "meter_usage");
    let (code, _, stderr) = Meterd::cli(&bad, &["check-config"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains(r#"aws.products[1].code "no spaces" does not match"#), "{stderr}");
    assert!(stderr.contains("aws.mode = \"meter_usage\" bills one product"), "{stderr}");
    let (status, _) = Meterd::run_to_end(bad);
    assert_eq!(status.code(), Some(64));
    let (code, stdout, stderr) = Meterd::cli(&launch(dir.path(), &emu), &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("product code: \"prod-a\" (dimensions: requests, gb)\n  product code: \"prod-b\" (dimensions: requests)"), "{stdout}");
}

#[test]
fn a_reload_adds_a_product() {
    let emu = emulator();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meterd.toml");
    std::fs::write(&file, "[aws]\nproducts = [{ code = \"prod-a\" }]\n").unwrap();
    let meterd = Launch::new(dir.path(), &emu)
        .env("METERD_AWS__PRODUCT_CODE", "")
        .arg("--config")
        .arg(file.to_str().unwrap())
        .start();
    let b = usage("prod-b", "111111111111", "requests", 1, "b-1");
    assert_eq!(meterd.send(std::slice::from_ref(&b))[0]["error"], "unknown_product");
    // A second product: its events are taken, and now every event names its product.
    std::fs::write(&file, "[aws]\nproducts = [{ code = \"prod-a\" }, { code = \"prod-b\" }]\n").unwrap();
    meterd.signal_only("HUP");
    let reloaded = meterd.wait_log("configuration reloaded", Duration::from_secs(10));
    assert_eq!(reloaded["applied"], "[\"aws.products\"]");
    assert_eq!(meterd.send(std::slice::from_ref(&b))[0]["ok"], true);
    let unnamed = json!({ "customer_aws_account_id": "1", "dimension": "requests", "quantity": 1 });
    assert_eq!(meterd.send(&[unnamed])[0]["error"], "missing_field");
}
