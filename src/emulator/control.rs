//! The control and inspection API under `/_emulator/`: plain JSON over HTTP, unsigned, never
//! throttled or faulted. Documented with curl examples in `docs/emulator.md`.

use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::config::{Catalogue, SubscriptionChange};
use super::faults::FaultsUpdate;
use super::service::Service;
use super::{Body, json_response};

const ENDPOINTS: &[&str] = &[
    "GET /_emulator/records",
    "GET /_emulator/requests",
    "POST /_emulator/reset",
    "GET|PUT /_emulator/catalogue",
    "GET|POST|DELETE /_emulator/faults",
    "GET|POST /_emulator/clock",
    "GET|POST /_emulator/subscriptions",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockUpdate {
    offset_seconds: Option<i64>,
    now: Option<i64>,
}

/// `POST /_emulator/subscriptions`: a customer's subscription starts or ends at `at` (the
/// emulator's clock; absent: now).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionUpdate {
    customer: String,
    subscribed: bool,
    at: Option<i64>,
}

/// A refused control call: its status and JSON body.
type Refusal = (StatusCode, Value);

fn bad_request(message: String) -> Refusal {
    (StatusCode::BAD_REQUEST, json!({ "error": message }))
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|err| bad_request(format!("invalid JSON body: {err}")))
}

fn clock(service: &Service) -> Value {
    let now = service.now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({ "now": now, "offset_seconds": service.clock_offset() })
}

pub(super) fn handle(service: &Service, method: &Method, path: &str, body: &[u8]) -> Response<Body> {
    match route(service, method, path, body) {
        Ok(value) => json_response(StatusCode::OK, "application/json", &value, None),
        Err((status, value)) => json_response(status, "application/json", &value, None),
    }
}

fn route(service: &Service, method: &Method, path: &str, body: &[u8]) -> Result<Value, Refusal> {
    match (method, path.trim_end_matches('/')) {
        (&Method::GET, "/_emulator/records") => Ok(json!({ "records": service.records() })),
        (&Method::GET, "/_emulator/requests") => Ok(json!({ "requests": service.requests() })),
        (&Method::POST, "/_emulator/reset") => {
            service.reset();
            Ok(json!({ "reset": true }))
        }
        (&Method::GET, "/_emulator/catalogue") => Ok(json!(service.catalogue())),
        (&Method::PUT, "/_emulator/catalogue") => {
            service.set_catalogue(parse::<Catalogue>(body)?);
            Ok(json!(service.catalogue()))
        }
        (&Method::GET, "/_emulator/faults") => Ok(json!(service.faults())),
        (&Method::POST, "/_emulator/faults") => {
            let faults = service.update_faults(parse::<FaultsUpdate>(body)?).map_err(bad_request)?;
            Ok(json!(faults))
        }
        (&Method::DELETE, "/_emulator/faults") => {
            service.clear_faults();
            Ok(json!(service.faults()))
        }
        (&Method::GET, "/_emulator/subscriptions") => Ok(json!(service.catalogue().subscription_changes)),
        (&Method::POST, "/_emulator/subscriptions") => {
            let update = parse::<SubscriptionUpdate>(body)?;
            let now = service.now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            let change = SubscriptionChange { at: update.at.unwrap_or(now), subscribed: update.subscribed };
            let mut catalogue = service.catalogue();
            catalogue.subscription_changes.entry(update.customer).or_default().push(change);
            service.set_catalogue(catalogue);
            Ok(json!(service.catalogue().subscription_changes))
        }
        (&Method::GET, "/_emulator/clock") => Ok(clock(service)),
        (&Method::POST, "/_emulator/clock") => {
            let update = parse::<ClockUpdate>(body)?;
            let offset = match (update.offset_seconds, update.now) {
                (Some(offset), None) => offset,
                (None, Some(now)) => {
                    let host = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    now - host
                }
                _ => return Err(bad_request("give exactly one of offset_seconds and now".into())),
            };
            service.set_clock_offset(offset);
            Ok(clock(service))
        }
        _ => Err((
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no endpoint {method} {path}"), "endpoints": ENDPOINTS }),
        )),
    }
}
