//! The control and inspection API under `/_emulator/`: plain JSON over HTTP, unsigned, never
//! throttled or faulted. Documented with curl examples in `docs/emulator.md`.

use hyper::{Method, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::config::Catalogue;
use super::service::{FaultsUpdate, Service};
use super::{json_response, Body};

const ENDPOINTS: &[&str] = &[
    "GET /_emulator/records",
    "GET /_emulator/requests",
    "POST /_emulator/reset",
    "GET|PUT /_emulator/catalogue",
    "GET|POST|DELETE /_emulator/faults",
    "GET|POST /_emulator/clock",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockUpdate {
    offset_seconds: Option<i64>,
    now: Option<i64>,
}

fn ok(body: Value) -> Response<Body> {
    json_response(StatusCode::OK, "application/json", &body, None)
}

fn bad_request(message: String) -> Response<Body> {
    json_response(StatusCode::BAD_REQUEST, "application/json", &json!({ "error": message }), None)
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Response<Body>> {
    serde_json::from_slice(body).map_err(|err| bad_request(format!("invalid JSON body: {err}")))
}

fn clock(service: &Service) -> Value {
    let now = service.now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({ "now": now, "offset_seconds": service.clock_offset() })
}

pub(super) fn handle(service: &Service, method: &Method, path: &str, body: &[u8]) -> Response<Body> {
    let result = match (method, path.trim_end_matches('/')) {
        (&Method::GET, "/_emulator/records") => Ok(ok(json!({ "records": service.records() }))),
        (&Method::GET, "/_emulator/requests") => Ok(ok(json!({ "requests": service.requests() }))),
        (&Method::POST, "/_emulator/reset") => {
            service.reset();
            Ok(ok(json!({ "reset": true })))
        }
        (&Method::GET, "/_emulator/catalogue") => Ok(ok(json!(service.catalogue()))),
        (&Method::PUT, "/_emulator/catalogue") => parse::<Catalogue>(body).map(|catalogue| {
            service.set_catalogue(catalogue);
            ok(json!(service.catalogue()))
        }),
        (&Method::GET, "/_emulator/faults") => Ok(ok(json!(service.faults()))),
        (&Method::POST, "/_emulator/faults") => parse::<FaultsUpdate>(body)
            .and_then(|update| service.update_faults(update).map_err(bad_request))
            .map(|faults| ok(json!(faults))),
        (&Method::DELETE, "/_emulator/faults") => {
            service.clear_faults();
            Ok(ok(json!(service.faults())))
        }
        (&Method::GET, "/_emulator/clock") => Ok(ok(clock(service))),
        (&Method::POST, "/_emulator/clock") => parse::<ClockUpdate>(body).and_then(|update| {
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
            Ok(ok(clock(service)))
        }),
        _ => Err(json_response(
            StatusCode::NOT_FOUND,
            "application/json",
            &json!({ "error": format!("no endpoint {method} {path}"), "endpoints": ENDPOINTS }),
            None,
        )),
    };
    result.unwrap_or_else(|response| response)
}
