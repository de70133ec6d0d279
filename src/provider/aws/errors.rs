//! AWS errors in the provider's classes: throttling, 5xx, timeouts and dispatch failures are retryable
//! (the SDK has already retried them with backoff); any other service error (validation, missing
//! resources, permissions) is refused with AWS's code and message.

use crate::provider::cloud::{refused, retryable, retryable_status};
use crate::provider::ProviderError;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Error codes AWS uses for throttling; these (and 5xx, timeouts, dispatch failures) are retryable.
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "SlowDown",
    "BandwidthLimitExceeded",
    "EC2ThrottledException",
    "PriorRequestNotComplete",
];

/// Error codes that name a passing condition rather than a mistake: retryable as well.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "ScalingActivityInProgress",
    "ResourceContention",
    "IdempotentParameterMismatch",
];

/// Turns an SDK error of operation `op` into the provider's error classes.
pub(super) fn classify<E>(op: &str, err: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match &err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("").to_owned();
            let message = err.message().unwrap_or("").to_owned();
            let what = if code.is_empty() { format!("HTTP {}", status.unwrap_or(0)) } else { code.clone() };
            let text = format!("aws {op}: {what}: {message}");
            if THROTTLING.contains(&code.as_str())
                || TRANSIENT.contains(&code.as_str())
                || status.is_some_and(retryable_status)
            {
                retryable(text)
            } else {
                refused(text)
            }
        }
        // Timeouts, connection failures, unparseable responses and requests that could not be built
        // (credentials that could not be loaded yet): nothing a human must fix first.
        _ => retryable(format!("aws {op}: {}", DisplayErrorContext(&err))),
    }
}

/// The AWS error code of a failed call, if it was a service error.
pub(super) fn error_code<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    match err {
        SdkError::ServiceError(_) => err.code().map(str::to_owned),
        _ => None,
    }
}
