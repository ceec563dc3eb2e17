//! Checks the SigV4 `Authorization` header of each API request the way the service does: the
//! credential scope must name service `aws-marketplace` and the emulator's region; when the access
//! key is one the emulator was given, the signature itself is recomputed and compared.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use hyper::HeaderMap;
use sha2::{Digest, Sha256};

use super::config::Credential;
use super::wire::ApiError;

/// The signing name of the Marketplace Metering Service.
pub const SERVICE: &str = "aws-marketplace";

/// How far a request's `X-Amz-Date` may be from the emulator's clock (as in AWS).
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);

/// Who sent a request, as its credential scope tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub access_key_id: String,
    pub region: String,
}

struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn auth_error(kind: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(403, kind, message)
}

fn parse_authorization(header: &str) -> Result<Authorization<'_>, ApiError> {
    let incomplete = |what: &str| {
        auth_error(
            "IncompleteSignatureException",
            format!("Authorization header requires '{what}' parameter. Authorization={header}"),
        )
    };
    let Some(params) = header.strip_prefix("AWS4-HMAC-SHA256") else {
        return Err(auth_error(
            "IncompleteSignatureException",
            format!("Unsupported Authorization Type, expected AWS4-HMAC-SHA256. Authorization={header}"),
        ));
    };
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for param in params.split(',') {
        let param = param.trim();
        if let Some(v) = param.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = param.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = param.strip_prefix("Signature=") {
            signature = Some(v);
        }
    }
    let credential = credential.ok_or_else(|| incomplete("Credential"))?;
    let signed = signed.ok_or_else(|| incomplete("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| incomplete("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, terminator] = scope[..] else {
        return Err(auth_error(
            "IncompleteSignatureException",
            format!(
                "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term, got '{credential}'"
            ),
        ));
    };
    if terminator != "aws4_request" {
        return Err(auth_error(
            "InvalidSignatureException",
            format!(
                "Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'."
            ),
        ));
    }
    Ok(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

/// Checks a request's signature; returns the caller named by its credential scope.
pub fn authenticate(
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    region: &str,
    credentials: &[Credential],
    now: SystemTime,
) -> Result<Caller, ApiError> {
    let Some(header) = headers.get(hyper::header::AUTHORIZATION) else {
        return Err(auth_error("MissingAuthenticationTokenException", "Missing Authentication Token"));
    };
    let header = header
        .to_str()
        .map_err(|_| auth_error("IncompleteSignatureException", "Authorization header is not ASCII"))?;
    let auth = parse_authorization(header)?;
    if auth.service != SERVICE {
        return Err(auth_error(
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: '{SERVICE}'. "),
        ));
    }
    if auth.region != region {
        return Err(auth_error(
            "InvalidSignatureException",
            format!("Credential should be scoped to a valid region, not '{}'. ", auth.region),
        ));
    }
    let caller = Caller { access_key_id: auth.access_key_id.to_string(), region: auth.region.to_string() };
    if credentials.is_empty() {
        return Ok(caller);
    }
    let Some(credential) = credentials.iter().find(|c| c.access_key_id == auth.access_key_id) else {
        return Err(auth_error(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    };
    verify_signature(method, path_and_query, headers, body, &auth, &credential.secret_access_key, now)?;
    Ok(caller)
}

fn verify_signature(
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    auth: &Authorization<'_>,
    secret: &str,
    now: SystemTime,
) -> Result<(), ApiError> {
    let amz_date = signed_date(headers, auth, now)?;
    if !auth.signed_headers.contains(&"host") {
        return Err(auth_error(
            "InvalidSignatureException",
            "'Host' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let canonical = canonical_request(method, path_and_query, headers, body, &auth.signed_headers);
    let scope = format!("{}/{}/{}/aws4_request", auth.date, auth.region, auth.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), auth.date.as_bytes());
    for part in [auth.region, auth.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let expected = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    if expected != auth.signature {
        return Err(auth_error(
            "InvalidSignatureException",
            format!(
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.\n\nThe Canonical String for this request should have been\n'{canonical}'\n\nThe String-to-Sign should have been\n'{string_to_sign}'\n"
            ),
        ));
    }
    Ok(())
}

/// The request's `X-Amz-Date`, once it is known to lie within [`MAX_SKEW`] of `now` and to fall on
/// the date of the credential scope.
fn signed_date<'h>(
    headers: &'h HeaderMap,
    auth: &Authorization<'_>,
    now: SystemTime,
) -> Result<&'h str, ApiError> {
    let amz_date = headers.get("x-amz-date").and_then(|v| v.to_str().ok()).ok_or_else(|| {
        auth_error(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    })?;
    let signed_at = parse_amz_date(amz_date).ok_or_else(|| {
        auth_error(
            "IncompleteSignatureException",
            format!("Date must be in ISO-8601 'basic format', got '{amz_date}'."),
        )
    })?;
    let skew = now.duration_since(signed_at).unwrap_or_else(|e| e.duration());
    if skew > MAX_SKEW {
        return Err(auth_error(
            "InvalidSignatureException",
            format!("Signature expired: {amz_date} is now outside the allowed 15 minute window."),
        ));
    }
    if !amz_date.starts_with(auth.date) {
        return Err(auth_error(
            "InvalidSignatureException",
            format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
                auth.date,
                &amz_date[..8.min(amz_date.len())]
            ),
        ));
    }
    Ok(amz_date)
}

/// The canonical request SigV4 signs: method, path, sorted query, each signed header with its
/// values (whitespace folded), the signed header names and the payload's hash.
fn canonical_request(
    method: &str,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
    signed_headers: &[&str],
) -> String {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let mut query_pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    query_pairs.sort_unstable();
    let mut canonical = format!("{method}\n{path}\n{}\n", query_pairs.join("&"));
    for name in signed_headers {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| v.to_str().unwrap_or_default().split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload_hash = match headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()) {
        Some("UNSIGNED-PAYLOAD") => "UNSIGNED-PAYLOAD".to_string(),
        _ => hex::encode(Sha256::digest(body)),
    };
    canonical.push_str(&format!("\n{}\n{payload_hash}", signed_headers.join(";")));
    canonical
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Reads `20261122T061500Z`.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let parsed = time::PrimitiveDateTime::parse(text, &format).ok()?.assume_utc();
    let secs = u64::try_from(parsed.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of the SigV4 documentation (IAM ListUsers, `us-east-1`, `iam`), with the
    /// service and region checks bypassed by asking for that scope.
    #[test]
    fn verifies_the_documented_example_signature() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/x-www-form-urlencoded; charset=utf-8".parse().unwrap());
        headers.insert("host", "iam.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let auth = Authorization {
            access_key_id: "AKIDEXAMPLE",
            date: "20150830",
            region: "us-east-1",
            service: "iam",
            signed_headers: vec!["content-type", "host", "x-amz-date"],
            signature: "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        };
        let now = parse_amz_date("20150830T123600Z").unwrap();
        verify_signature(
            "GET",
            "/?Action=ListUsers&Version=2010-05-08",
            &headers,
            b"",
            &auth,
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            now,
        )
        .unwrap();
        let wrong = verify_signature(
            "GET",
            "/?Action=ListUsers&Version=2010-05-08",
            &headers,
            b"",
            &auth,
            "other",
            now,
        )
        .unwrap_err();
        assert_eq!(wrong.kind, "InvalidSignatureException");
    }

    #[test]
    fn scope_must_name_the_service_and_region() {
        let mut headers = HeaderMap::new();
        let sign = |scope: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential=AKID/20261122/{scope}/aws4_request, SignedHeaders=host, Signature=00"
            )
        };
        let now = SystemTime::now();
        let run = |headers: &HeaderMap| authenticate("POST", "/", headers, b"{}", "us-east-1", &[], now);
        assert_eq!(run(&headers).unwrap_err().kind, "MissingAuthenticationTokenException");
        headers.insert("authorization", sign("us-east-1/dynamodb").parse().unwrap());
        assert!(run(&headers).unwrap_err().message.contains("scoped to correct service: 'aws-marketplace'"));
        headers.insert("authorization", sign("eu-west-1/aws-marketplace").parse().unwrap());
        assert!(run(&headers).unwrap_err().message.contains("valid region, not 'eu-west-1'"));
        headers.insert("authorization", sign("us-east-1/aws-marketplace").parse().unwrap());
        assert_eq!(
            run(&headers).unwrap(),
            Caller { access_key_id: "AKID".into(), region: "us-east-1".into() }
        );
        headers.insert("authorization", "Bearer token".parse().unwrap());
        assert_eq!(run(&headers).unwrap_err().kind, "IncompleteSignatureException");
    }
}
