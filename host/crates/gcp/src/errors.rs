//! Compute Engine errors to `ProviderError`. GCE reports a failure either
//! at once (an HTTP error with `error.errors[].reason`) or later, in the
//! finished operation (`error.errors[].code`, e.g.
//! ZONE_RESOURCE_POOL_EXHAUSTED): both are classified from their codes first
//! and the HTTP status second.

use flockd_core::ProviderError;
use flockd_core::text::printable_owned;
use google_cloud_compute_v1::model::Operation;
use google_cloud_gax::error::Error as GaxError;

pub fn classify(operation: &str, err: &GaxError) -> ProviderError {
    let status = err.http_status_code();
    let mut reasons = Vec::new();
    let mut message = err.status().map(|s| s.message.clone()).unwrap_or_default();
    if let Some(payload) = err.http_payload()
        && let Ok(body) = serde_json::from_slice::<serde_json::Value>(payload)
    {
        let error = &body["error"];
        if let Some(errors) = error["errors"].as_array() {
            reasons.extend(errors.iter().filter_map(|e| e["reason"].as_str()).map(str::to_owned));
        }
        if message.is_empty() {
            message = error["message"].as_str().unwrap_or_default().to_owned();
        }
    }
    let detail = if status.is_none() && reasons.is_empty() && message.is_empty() {
        // Never reached GCE (connect, timeout, credentials).
        format!("{operation}: {err}")
    } else {
        format!(
            "{operation}: HTTP {} {}: {message}",
            status.map_or("-".to_owned(), |s| s.to_string()),
            reasons.join(",")
        )
    };
    // GCE's message is outside text: it must not forge a log line.
    let detail = printable_owned(detail);
    if err.is_authentication() {
        return ProviderError::Auth(detail);
    }
    class_of(status, &reasons, &message)(detail)
}

/// The failure a finished operation reports, if any.
pub fn operation_failure(operation: &str, op: &Operation) -> Option<ProviderError> {
    let errors = op.error.as_ref().map(|e| e.errors.as_slice()).unwrap_or_default();
    if errors.is_empty() && op.http_error_status_code.is_none() {
        return None;
    }
    let codes: Vec<String> = errors.iter().filter_map(|e| e.code.clone()).collect();
    let mut message: Vec<String> = errors.iter().filter_map(|e| e.message.clone()).collect();
    if message.is_empty() {
        message.extend(op.http_error_message.clone());
    }
    let message = message.join("; ");
    let status = op.http_error_status_code.and_then(|s| u16::try_from(s).ok());
    let detail = printable_owned(format!("{operation}: {}: {message}", codes.join(",")));
    Some(class_of(status, &codes, &message)(detail))
}

fn class_of(status: Option<u16>, codes: &[String], message: &str) -> fn(String) -> ProviderError {
    let has = |wanted: &[&str]| codes.iter().any(|c| wanted.iter().any(|w| c.eq_ignore_ascii_case(w)));
    if has(&[
        "ZONE_RESOURCE_POOL_EXHAUSTED",
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        "resourcePoolExhausted",
        "STOCKOUT",
    ]) || message.contains("does not have enough resources available")
    {
        return ProviderError::Capacity;
    }
    if has(&["QUOTA_EXCEEDED", "quotaExceeded"]) {
        return ProviderError::Quota;
    }
    if has(&["rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"]) {
        return ProviderError::Throttled;
    }
    match status {
        Some(429) => ProviderError::Throttled,
        Some(401 | 403) => ProviderError::Auth,
        Some(404) => ProviderError::NotFound,
        Some(400 | 409 | 412) => ProviderError::InvalidRequest,
        _ if has(&["PERMISSIONS_ERROR", "FORBIDDEN", "forbidden"]) => ProviderError::Auth,
        _ if has(&["RESOURCE_NOT_FOUND", "INVALID_FIELD_VALUE", "BAD_REQUEST", "invalid", "badRequest"]) => {
            ProviderError::InvalidRequest
        }
        // A server error says nothing of whether the call was carried out.
        Some(500..=599) => ProviderError::OutcomeUnknown,
        _ => ProviderError::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(status: Option<u16>, code: &str) -> ProviderError {
        class_of(status, &[code.to_owned()], "")(String::new())
    }

    #[test]
    fn codes_map_to_classes() {
        assert_eq!(class(None, "ZONE_RESOURCE_POOL_EXHAUSTED"), ProviderError::Capacity(String::new()));
        assert_eq!(
            class(Some(503), "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"),
            ProviderError::Capacity(String::new())
        );
        assert_eq!(class(Some(403), "QUOTA_EXCEEDED"), ProviderError::Quota(String::new()));
        assert_eq!(class(Some(403), "quotaExceeded"), ProviderError::Quota(String::new()));
        assert_eq!(class(Some(403), "rateLimitExceeded"), ProviderError::Throttled(String::new()));
        assert_eq!(class(Some(429), ""), ProviderError::Throttled(String::new()));
        assert_eq!(class(Some(403), "forbidden"), ProviderError::Auth(String::new()));
        assert_eq!(class(Some(401), ""), ProviderError::Auth(String::new()));
        assert_eq!(class(Some(400), "invalid"), ProviderError::InvalidRequest(String::new()));
        assert_eq!(class(None, "RESOURCE_NOT_FOUND"), ProviderError::InvalidRequest(String::new()));
        assert_eq!(class(Some(404), "notFound"), ProviderError::NotFound(String::new()));
        assert_eq!(class(Some(500), "backendError"), ProviderError::OutcomeUnknown(String::new()));
    }
}
