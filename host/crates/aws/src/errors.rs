//! EC2 error codes to `ProviderError`. The class drives what flockd does
//! next (try another subnet, back off, alert a person), so it is decided
//! from the error code first and the HTTP status second: EC2 answers
//! InsufficientInstanceCapacity with a 500.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use flockd_core::ProviderError;
use flockd_core::text::printable_owned;

/// A failed EC2 call: its class, and the EC2 code when EC2 gave one.
#[derive(Debug)]
pub struct Ec2Failure {
    pub code: Option<String>,
    pub error: ProviderError,
}

pub fn classify<E>(operation: &str, err: SdkError<E, HttpResponse>) -> Ec2Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.code().map(str::to_owned);
    let Some(code_str) = code.as_deref() else {
        // No EC2 error body: the request never got an answer (DNS, connect,
        // timeout) or the answer was not EC2's.
        let detail = printable_owned(format!("{operation}: {}", DisplayErrorContext(&err)));
        let error = match status {
            Some(429) => ProviderError::Throttled(detail),
            Some(401 | 403) => ProviderError::Auth(detail),
            // No answer, a cut connection or a server error: EC2 may have
            // carried the call out.
            None | Some(500..=599) => ProviderError::OutcomeUnknown(detail),
            _ => ProviderError::Other(detail),
        };
        return Ec2Failure { code: None, error };
    };
    let message = err.message().unwrap_or("");
    // EC2's code and message are outside text: they must not forge a log line.
    let detail = printable_owned(match status {
        Some(status) => format!("{operation}: {code_str} (HTTP {status}): {message}"),
        None => format!("{operation}: {code_str}: {message}"),
    });
    Ec2Failure { error: class_of(code_str, status)(detail), code }
}

fn class_of(code: &str, status: Option<u16>) -> fn(String) -> ProviderError {
    match code {
        "InsufficientInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacityOnHost"
        | "InsufficientFreeAddressesInSubnet"
        | "SpotMaxPriceTooLow"
        | "Unsupported" => ProviderError::Capacity,
        "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "MaxSpotInstanceCountExceeded"
        | "ResourceLimitExceeded"
        | "VolumeLimitExceeded" => ProviderError::Quota,
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" | "RequestThrottled" => ProviderError::Throttled,
        "UnauthorizedOperation"
        | "AuthFailure"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "OptInRequired"
        | "Blocked"
        | "PendingVerification" => ProviderError::Auth,
        "InvalidInstanceID.NotFound" => ProviderError::NotFound,
        _ if code.starts_with("Invalid")
            || code.starts_with("Missing")
            || code == "IdempotentParameterMismatch"
            || code == "UnknownParameter" =>
        {
            ProviderError::InvalidRequest
        }
        _ if code.ends_with(".NotFound") => ProviderError::NotFound,
        _ => match status {
            Some(429) => ProviderError::Throttled,
            Some(401 | 403) => ProviderError::Auth,
            Some(500..=599) => ProviderError::OutcomeUnknown,
            _ => ProviderError::Other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: &str, status: u16) -> ProviderError {
        class_of(code, Some(status))(String::new())
    }

    #[test]
    fn codes_map_to_classes() {
        assert_eq!(class("InsufficientInstanceCapacity", 500), ProviderError::Capacity(String::new()));
        assert_eq!(class("SpotMaxPriceTooLow", 400), ProviderError::Capacity(String::new()));
        assert_eq!(class("Unsupported", 400), ProviderError::Capacity(String::new()));
        assert_eq!(class("VcpuLimitExceeded", 400), ProviderError::Quota(String::new()));
        assert_eq!(class("MaxSpotInstanceCountExceeded", 400), ProviderError::Quota(String::new()));
        assert_eq!(class("RequestLimitExceeded", 503), ProviderError::Throttled(String::new()));
        assert_eq!(class("SlowDown", 429), ProviderError::Throttled(String::new()));
        assert_eq!(class("UnauthorizedOperation", 403), ProviderError::Auth(String::new()));
        assert_eq!(class("AuthFailure", 401), ProviderError::Auth(String::new()));
        assert_eq!(class("InvalidAMIID.Malformed", 400), ProviderError::InvalidRequest(String::new()));
        assert_eq!(class("InvalidAMIID.NotFound", 400), ProviderError::InvalidRequest(String::new()));
        assert_eq!(class("InvalidParameterValue", 400), ProviderError::InvalidRequest(String::new()));
        assert_eq!(class("InvalidInstanceID.NotFound", 400), ProviderError::NotFound(String::new()));
        assert_eq!(class("InternalError", 500), ProviderError::OutcomeUnknown(String::new()));
        assert_eq!(class("Whatever", 400), ProviderError::Other(String::new()));
        assert_eq!(class("Whatever", 403), ProviderError::Auth(String::new()));
    }
}
