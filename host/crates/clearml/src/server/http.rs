//! The wire side of the compatible server: any method, any `/vX.Y/` prefix
//! (or none), a JSON body even on GET, auth, and the meta/data envelope
//! around every answer, errors and unknown endpoints included.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::handlers::{ApiError, non_negative};
use super::store::{COMPANY_ID, COMPANY_NAME, USER_ID, USER_NAME, new_id, now_ms};
use super::{Shared, lock};
use crate::token;
use crate::wire::{self, codes};

pub async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (requested_version, endpoint) = split_path(uri.path());
    let reply = answer(&shared, &endpoint, &uri, &headers, &body, peer);
    envelope(&endpoint, requested_version.as_deref(), reply)
}

/// `/v2.23/queues.get_all` → (Some("2.23"), "queues.get_all"); `/auth.login` → (None, ..).
fn split_path(path: &str) -> (Option<String>, String) {
    let path = path.trim_matches('/');
    match path.split_once('/') {
        Some((version, rest)) if version.starts_with('v') && version[1..].parse::<f64>().is_ok() => {
            (Some(version[1..].to_string()), rest.to_string())
        }
        _ => (None, path.to_string()),
    }
}

pub(super) fn answer(
    shared: &Shared,
    endpoint: &str,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
) -> Result<Value, ApiError> {
    let mut request = parse_body(endpoint, body)?;
    merge_query(&mut request, uri.query());

    match endpoint {
        "auth.login" => return login(shared, headers, &request),
        "debug.ping" | "server.info" => {}
        _ => authenticate(shared, headers)?,
    }

    let Some(reply) = shared.run(endpoint, &request, peer.ip().to_string()) else {
        tracing::warn!(endpoint, "clearml server: unknown endpoint called; answering 404");
        lock(&shared.unknown_endpoints).insert(endpoint.to_string());
        return Err(ApiError::new(codes::UNKNOWN_ENDPOINT, format!("Unable to find endpoint for name {endpoint}")));
    };
    match &reply {
        Ok(_) => tracing::debug!(endpoint, "clearml server: ok"),
        Err(e) => tracing::debug!(endpoint, code = e.code, subcode = e.subcode, msg = %e.msg, "clearml server: error"),
    }
    reply
}

/// A JSON object, empty, or (for `events.add_batch`) newline-delimited JSON events.
fn parse_body(endpoint: &str, body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    if endpoint == "events.add_batch" {
        // One JSON event per line; the client checks that all were "added".
        let events = body.split(|b| *b == b'\n').filter(|line| !line.iter().all(u8::is_ascii_whitespace)).count();
        return Ok([("events".to_string(), json!(events))].into_iter().collect());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(codes::MALFORMED_FIELDS, "request body must be a JSON object")),
        Err(e) => Err(ApiError::new(codes::MALFORMED_FIELDS, format!("request body is not valid JSON: {e}"))),
    }
}

/// Query parameters count as body fields (`auth.login?expiration_sec=N`).
fn merge_query(request: &mut Map<String, Value>, query: Option<&str>) {
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        request.entry(key.to_string()).or_insert(value);
    }
}

fn login(shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Result<Value, ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(basic) = authorization.strip_prefix("Basic ") {
        let decoded = STANDARD.decode(basic.trim()).ok().and_then(|b| String::from_utf8(b).ok());
        let (key, secret) = decoded
            .as_deref()
            .and_then(|d| d.split_once(':'))
            .ok_or_else(|| ApiError::new(codes::INVALID_CREDENTIALS, "malformed basic authorization"))?;
        if !credentials_match(shared, key, secret) {
            return Err(ApiError::new(codes::INVALID_CREDENTIALS, "Invalid user credentials"));
        }
    } else {
        // A valid token may also log in again (the agent does this to get a task session).
        authenticate(shared, headers)?;
    }
    let lifetime = non_negative("expiration_sec", request.get("expiration_sec"))?
        .filter(|secs| *secs > 0)
        .map_or(shared.token_lifetime_secs, |asked| asked.min(shared.token_lifetime_secs));
    let now = now_ms() / 1000;
    let claims = json!({
        "identity": {
            "company": COMPANY_ID, "company_name": COMPANY_NAME,
            "user": USER_ID, "user_name": USER_NAME, "role": "admin",
        },
        "tenant": COMPANY_ID,
        "iat": now,
        "exp": now.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX)),
        "api_version": wire::API_VERSION,
        "server_version": wire::SERVER_VERSION,
        "server_build": "flockd",
        "feature_set": "basic",
        "env": "flockd",
    });
    Ok(json!({ "token": token::sign(&claims, &shared.signing_key()) }))
}

/// Both keys compared in constant time: a mismatch takes as long wherever
/// it is, and hashing first hides the lengths too.
fn credentials_match(shared: &Shared, key: &str, secret: &str) -> bool {
    let digest = |text: &str| Sha256::digest(text.as_bytes());
    let key_ok = digest(key).ct_eq(&digest(&shared.access_key));
    let secret_ok = digest(secret).ct_eq(&digest(shared.secret_key.expose()));
    (key_ok & secret_ok).into()
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(bearer) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
        return Err(ApiError::new(codes::MISSING_CREDENTIALS, "Unauthorized (missing credentials)"));
    };
    let claims = token::verify(bearer.trim(), &shared.signing_key())
        .ok_or_else(|| ApiError::new(codes::INVALID_TOKEN, "Invalid token"))?;
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp < now_ms() / 1000 {
        return Err(ApiError::new(codes::INVALID_TOKEN, "Token expired"));
    }
    Ok(())
}

fn envelope(endpoint: &str, requested_version: Option<&str>, reply: Result<Value, ApiError>) -> Response {
    let (status, subcode, msg, data) = match reply {
        Ok(data) => (200, 0, "OK".to_string(), data),
        Err(e) => (e.code, e.subcode, e.msg, json!({})),
    };
    let body = json!({
        "meta": {
            "id": new_id(),
            "trx": new_id(),
            "endpoint": {
                "name": endpoint,
                "requested_version": requested_version.unwrap_or(wire::API_VERSION),
                "actual_version": wire::API_VERSION,
            },
            "result_code": status,
            "result_subcode": subcode,
            "result_msg": msg,
            "error_stack": null,
            "error_data": {},
        },
        "data": data,
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefix_is_optional() {
        assert_eq!(split_path("/v2.23/queues.get_all"), (Some("2.23".into()), "queues.get_all".into()));
        assert_eq!(split_path("/v2.14/queues.get_next_task"), (Some("2.14".into()), "queues.get_next_task".into()));
        assert_eq!(split_path("/auth.login"), (None, "auth.login".into()));
        assert_eq!(split_path("/auth.login/"), (None, "auth.login".into()));
    }
}
