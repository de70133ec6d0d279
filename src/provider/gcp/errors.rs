//! GCP errors in the provider's classes: rate limits (429), 5xx, timeouts, connection failures and the
//! reasons that name a passing condition are retryable (the agent tries again with backoff); anything
//! else (invalid requests, missing resources, permissions, quota) is refused with GCP's reason and
//! message. Long-running operations that end with an error are classed the same way; `done`, `created`
//! and `deleted` poll one to DONE and read its outcome (an insert of what exists, a delete of what is
//! gone: success).

use crate::provider::cloud::{refused, retryable, retryable_status};
use crate::provider::ProviderError;
use google_cloud_compute_v1::model::Operation;
use google_cloud_gax::error::rpc::StatusDetails;
use google_cloud_gax::error::Error;
use google_cloud_lro::Poller;

/// Reasons (the API's `errors[].reason`, the operation's `error.errors[].code`, `ErrorInfo.reason`) that
/// name a passing condition: retryable whatever the HTTP status.
const TRANSIENT: &[&str] = &[
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "RATE_LIMIT_EXCEEDED",
    "backendError",
    "internalError",
    "INTERNAL_ERROR",
    "resourceNotReady",
    "RESOURCE_NOT_READY",
    "conditionNotMet",
    "CONDITION_NOT_MET",
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "REGION_RESOURCE_POOL_EXHAUSTED",
];

/// The class of an error from its parts: `status` the HTTP status, `reason` GCP's reason or code.
pub fn class(op: &str, status: Option<u16>, reason: &str, message: &str) -> ProviderError {
    let what = match (reason.is_empty(), status) {
        (false, _) => reason.to_owned(),
        (true, Some(s)) => format!("HTTP {s}"),
        (true, None) => "error".to_owned(),
    };
    let text = format!("gcp {op}: {what}: {message}");
    if status.is_some_and(retryable_status) || TRANSIENT.contains(&reason) {
        retryable(text)
    } else {
        refused(text)
    }
}

/// GCP's reason of a service error: `ErrorInfo.reason`, else the first `errors[].reason` of the JSON
/// body, else the status code's name.
fn reason(err: &Error) -> String {
    if let Some(status) = err.status() {
        for d in &status.details {
            if let StatusDetails::ErrorInfo(info) = d {
                if !info.reason.is_empty() {
                    return info.reason.clone();
                }
            }
        }
    }
    if let Some(body) = err.http_payload() {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            if let Some(r) = v["error"]["errors"][0]["reason"].as_str() {
                return r.to_owned();
            }
        }
    }
    err.status().map(|s| format!("{:?}", s.code)).unwrap_or_default()
}

/// Turns an SDK error of operation `op` into the provider's error classes.
pub fn classify(op: &str, err: Error) -> ProviderError {
    if err.is_authentication() {
        // Credentials that could not be loaded or refreshed yet (the metadata server restarting, a token
        // endpoint busy): nothing a human must fix first; a wrong account shows as 403 below.
        return retryable(format!("gcp {op}: credentials: {err}"));
    }
    if err.status().is_none() && err.http_status_code().is_none() {
        // A request the SDK could not build, or an answer it could not read: a mismatch of this binding
        // and the API, for a human. Anything else without an answer from GCP (timeouts, connections
        // refused or reset, retries exhausted on those) is passing.
        if err.is_binding() || err.is_serialization() || err.is_deserialization() {
            return refused(format!("gcp {op}: {err}"));
        }
        return retryable(format!("gcp {op}: {err}"));
    }
    let status = err.http_status_code();
    let message = err.status().map(|s| s.message.clone()).unwrap_or_else(|| err.to_string());
    class(op, status, &reason(&err), &message)
}

/// HTTP 404.
pub fn is_not_found(err: &Error) -> bool {
    err.http_status_code() == Some(404)
}

/// HTTP 409 (`alreadyExists`).
pub fn is_already_exists(err: &Error) -> bool {
    err.http_status_code() == Some(409)
}

/// The error a finished operation carries, if any, classed; `op` names the call that started it.
pub fn operation_error(op: &str, operation: &Operation) -> Option<ProviderError> {
    let first = operation.error.as_ref().and_then(|e| e.errors.first());
    let status = operation.http_error_status_code.and_then(|s| u16::try_from(s).ok()).filter(|s| *s >= 400);
    if first.is_none() && status.is_none() {
        return None;
    }
    let reason = first.and_then(|e| e.code.clone()).unwrap_or_default();
    let message =
        first.and_then(|e| e.message.clone()).or_else(|| operation.http_error_message.clone()).unwrap_or_default();
    Some(class(op, status, &reason, &message))
}

/// Whether a finished operation failed only because the resource exists already (an insert retried
/// after a lost answer) or is gone already (a delete retried).
pub fn operation_reason(operation: &Operation) -> Option<String> {
    operation.error.as_ref().and_then(|e| e.errors.first()).and_then(|e| e.code.clone())
}

/// Runs a long-running operation's poller to DONE and classes its error.
pub(super) async fn done<P: Poller<Operation, Operation>>(op: &str, poller: P) -> Result<Operation, ProviderError> {
    let operation = poller.until_done().await.map_err(|e| classify(op, e))?;
    match operation_error(op, &operation) {
        Some(e) => Err(e),
        None => Ok(operation),
    }
}

/// As `done`, where "already exists" (an insert retried after a lost answer) is success.
pub(super) async fn created<P: Poller<Operation, Operation>>(op: &str, poller: P) -> Result<bool, ProviderError> {
    match poller.until_done().await {
        Err(e) if is_already_exists(&e) => Ok(false),
        Err(e) => Err(classify(op, e)),
        Ok(o) if operation_reason(&o).as_deref() == Some("RESOURCE_ALREADY_EXISTS") => Ok(false),
        Ok(o) => operation_error(op, &o).map_or(Ok(true), Err),
    }
}

/// As `done`, where "not found" (a delete retried, or of something gone already) is success.
pub(super) async fn deleted<P: Poller<Operation, Operation>>(op: &str, poller: P) -> Result<(), ProviderError> {
    match poller.until_done().await {
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(classify(op, e)),
        Ok(o) if operation_reason(&o).as_deref() == Some("RESOURCE_NOT_FOUND") => Ok(()),
        Ok(o) => operation_error(op, &o).map_or(Ok(()), Err),
    }
}

pub(super) fn not_found_is_none<T>(op: &str, r: Result<T, Error>) -> Result<Option<T>, ProviderError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(classify(op, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_and_5xx_are_retried_the_rest_stalls_with_the_reason() {
        assert!(class("resize", Some(429), "rateLimitExceeded", "slow down").is_retryable());
        assert!(class("resize", Some(503), "", "unavailable").is_retryable());
        assert!(class("resize", Some(500), "backendError", "x").is_retryable());
        assert!(class("insert", Some(400), "resourceNotReady", "busy").is_retryable());
        assert!(class("insert", None, "ZONE_RESOURCE_POOL_EXHAUSTED", "no capacity").is_retryable());
        for (status, reason) in [(403, "forbidden"), (404, "notFound"), (400, "invalid"), (403, "QUOTA_EXCEEDED")] {
            let e = class("images.get", Some(status), reason, "the message");
            assert!(!e.is_retryable(), "{status} {reason}");
            let text = e.to_string();
            assert!(text.contains(reason) && text.contains("the message") && text.contains("images.get"), "{text}");
        }
        assert_eq!(class("x", Some(418), "", "m").to_string(), "gcp x: HTTP 418: m");
    }

    #[test]
    fn finished_operations_carry_their_errors() {
        let mut op = Operation::default();
        assert!(operation_error("insert", &op).is_none(), "no error: done");
        let mut e = google_cloud_compute_v1::model::operation::Error::default();
        let mut item = google_cloud_compute_v1::model::operation::error::Errors::default();
        item.code = Some("RESOURCE_ALREADY_EXISTS".into());
        item.message = Some("exists".into());
        e.errors.push(item);
        op.error = Some(e);
        let err = operation_error("insert", &op).unwrap();
        assert!(!err.is_retryable() && err.to_string().contains("RESOURCE_ALREADY_EXISTS"), "{err}");
        assert_eq!(operation_reason(&op).as_deref(), Some("RESOURCE_ALREADY_EXISTS"));
        op.http_error_status_code = Some(503);
        assert!(operation_error("insert", &op).unwrap().is_retryable());
    }
}
