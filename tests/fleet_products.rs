//! Fleet mode with several products: three hosts ship partials of two products that share
//! customers and dimension names; the fleet sums each product's apart and submits each in calls
//! of that product only, through a kill -9 and a resend by id.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::daemon::{Emu, Launch, Meterd};
use common::fleet::{H, fleet, one_record_per_key, send_killing_host_b, wait_until};
use common::hour_start;
use common::pg::Pg;
use serde_json::{Value, json};

const PRODUCTS: &str = r#"[{ code = "prod-a", dimensions = ["requests", "gb"] }, { code = "prod-b", dimensions = ["requests"] }]"#;
const HOSTS: [&str; 3] = ["host-a", "host-b", "host-c"];

/// A fleet host billing both products, waiting for every host (hours close once all shipped).
fn host<'a>(dir: &'a std::path::Path, emu: &Emu, pg: &Pg, host: &str) -> Launch<'a> {
    fleet(dir, emu, pg, host)
        .env("METERD_AWS__PRODUCT_CODE", "")
        .env("METERD_AWS__PRODUCTS", PRODUCTS)
        .env("METERD_FLEET__HOST_TIMEOUT", "6h")
        .env("METERD_FLEET__CLOSE_AFTER", "6h")
}

/// (product, customer, dimension, hour) → quantity.
type Billing = BTreeMap<(String, String, String, i64), u64>;

fn billed(emu: &Emu) -> Billing {
    one_record_per_key(emu, |r| {
        (
            r["product_code"].as_str().unwrap().to_string(),
            r["customer_aws_account_id"].as_str().unwrap().to_string(),
            r["dimension"].as_str().unwrap().to_string(),
            r["hour"].as_i64().unwrap(),
        )
    })
}

#[test]
fn three_hosts_sum_each_product_apart_and_bill_it_in_its_own_calls() {
    let pg = Pg::start();
    let emu =
        Emu::start(|config| config.catalogue.product_codes = Some(vec!["prod-a".into(), "prod-b".into()]));
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |i: usize, offset: i64| host(dirs[i].path(), &emu, &pg, HOSTS[i]).offset(offset).start();
    let mut meterds: Vec<Option<Meterd>> = (0..3).map(|i| Some(start(i, 0))).collect();

    // The same customers, dimension names and hours under both products, on every host.
    let mut expected = Billing::new();
    let mut sent: Vec<Vec<Value>> = vec![Vec::new(); 3];
    for n in 0..48u64 {
        let product = if n % 3 == 0 { "prod-b" } else { "prod-a" };
        let dimension = if product == "prod-a" && n % 2 == 0 { "gb" } else { "requests" };
        let customer = format!("{}", 100_000_000_000u64 + n % 2);
        let hours_ago = (n % 4 / 2) as i64;
        let event = json!({ "product_code": product, "customer_aws_account_id": customer,
            "dimension": dimension, "quantity": n + 1, "timestamp": hour_start(hours_ago) + 60,
            "id": format!("e-{n}") });
        *expected.entry((product.into(), customer, dimension.into(), hour_start(hours_ago))).or_default() +=
            n + 1;
        sent[(n % 3) as usize].push(event);
    }
    // host-b is killed mid-stream, restarted, and its client resends everything by id.
    send_killing_host_b(&mut meterds, &sent, || start(1, 0));
    let refused = meterds[0].as_ref().unwrap().send(&[json!({ "customer_aws_account_id": "100000000000",
        "dimension": "requests", "quantity": 1, "id": "x" })]);
    assert_eq!(refused[0]["error"], "missing_field", "{refused:?}");

    // Every host stops (sealing and shipping its hours); four hours later they close and submit.
    for meterd in meterds.iter_mut() {
        assert!(meterd.take().unwrap().signal("TERM").success());
    }
    emu.set_clock_offset(4 * H);
    let _meterds: Vec<Meterd> = (0..3).map(|i| start(i, 4 * H)).collect();
    wait_until("every record billed", Duration::from_secs(60), || billed(&emu).len() == expected.len());
    assert_eq!(billed(&emu), expected, "one record per product and key, with every host's sum");

    let mut per_product: BTreeMap<String, u64> = BTreeMap::new();
    for request in emu.requests() {
        assert_eq!((&request["operation"], &request["outcome"]), (&json!("BatchMeterUsage"), &json!("ok")));
        *per_product.entry(request["product_code"].as_str().unwrap().to_string()).or_default() +=
            request["records"].as_u64().unwrap();
    }
    let mut records_of = BTreeMap::<String, u64>::new();
    for (product, ..) in expected.keys() {
        *records_of.entry(product.clone()).or_default() += 1;
    }
    assert_eq!(per_product, records_of, "each call carried records of its ProductCode only");
    wait_until("every fleet record accepted", Duration::from_secs(30), || {
        pg.query("SELECT count(*) FROM meterd.records WHERE state <> 'accepted'")[0][0] == "0"
    });
    let products = pg.query("SELECT DISTINCT scope FROM meterd.records ORDER BY scope");
    assert_eq!(products, [["prod-a"], ["prod-b"]]);
}
