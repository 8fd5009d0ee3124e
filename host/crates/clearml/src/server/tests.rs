//! The server's guards against hostile or nonsense requests, driven through
//! the same `answer` the HTTP layer calls (no socket except where binding is
//! the point, and then only loopback or an address that cannot be bound).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Uri, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::handlers::{ApiError, TEST_PANIC};
use super::*;
use crate::secret::{Secret, SecretRef};
use crate::wire::codes;

pub const KEY: &str = "test-access-key";
pub const SECRET: &str = "test-secret-key";

pub fn shared_with(adjust: impl FnOnce(&mut ServerConfig)) -> Shared {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), KEY, Secret::new(SECRET));
    adjust(&mut config);
    Shared::new(&config, Store::default())
}

/// One request as the HTTP layer would pass it on, `query` appended to the path.
pub fn request(
    shared: &Shared,
    endpoint: &str,
    headers: &HeaderMap,
    query: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let uri: Uri = format!("/{endpoint}{query}").parse().unwrap_or_else(|_| Uri::from_static("/"));
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    http::answer(shared, endpoint, &uri, headers, body, peer)
}

pub fn basic(key: &str, secret: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let value = format!("Basic {}", STANDARD.encode(format!("{key}:{secret}")));
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
    headers
}

/// Logs in with the right keys; the bearer headers for later calls.
pub fn logged_in(shared: &Shared) -> HeaderMap {
    let data = request(shared, "auth.login", &basic(KEY, SECRET), "", b"").expect("login");
    let mut headers = HeaderMap::new();
    let bearer = format!("Bearer {}", data["token"].as_str().unwrap());
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&bearer).unwrap());
    headers
}

fn ok(shared: &Shared, headers: &HeaderMap, endpoint: &str, body: Value) -> Value {
    request(shared, endpoint, headers, "", body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{endpoint} {body}: {} {}", e.code, e.msg))
}

fn bad(shared: &Shared, headers: &HeaderMap, endpoint: &str, body: Value) -> ApiError {
    match request(shared, endpoint, headers, "", body.to_string().as_bytes()) {
        Ok(data) => panic!("{endpoint} {body} succeeded: {data}"),
        Err(e) => e,
    }
}

// --- 1. who may listen where ---

#[tokio::test]
async fn the_built_in_secret_is_refused_beyond_loopback_before_binding() {
    // 192.0.2.1 (TEST-NET-1) is never assigned here: without the guard the
    // bind itself fails, with a different message.
    let config = ServerConfig::new("192.0.2.1:0".parse().unwrap(), KEY, Secret::new(SECRET));
    let Err(err) = ClearmlServer::start(config).await else { panic!("started on 192.0.2.1") };
    let err = format!("{err:#}");
    assert!(err.contains("192.0.2.1:0"), "says where: {err}");
    assert!(err.contains("secret"), "says what: {err}");
    assert!(err.contains("env:") && err.contains("127.0.0.1"), "says what to do: {err}");
}

#[tokio::test]
async fn the_built_in_secret_still_serves_on_loopback_v4_and_v6() {
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let config = ServerConfig::new(listen.parse().unwrap(), KEY, Secret::new(SECRET));
        let server = ClearmlServer::start(config).await.unwrap_or_else(|e| panic!("{listen}: {e:#}"));
        assert!(server.addr().ip().is_loopback());
        server.shutdown().await.unwrap();
    }
}

#[test]
fn only_loopback_is_allowed_with_a_built_in_secret_and_any_address_with_a_reference() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "from-a-file\n").unwrap();
    let reference = SecretRef::File(dir.path().join("secret"));
    for listen in ["127.0.0.1:8008", "127.8.9.10:0", "[::1]:8008", "[::ffff:127.0.0.1]:8008"] {
        let config = ServerConfig::new(listen.parse().unwrap(), KEY, Secret::new(SECRET));
        config.check_listen().unwrap_or_else(|e| panic!("{listen}: {e}"));
    }
    for listen in ["0.0.0.0:8008", "[::]:8008", "10.1.2.3:8008", "[::ffff:10.1.2.3]:8008", "[2001:db8::1]:0"] {
        let config = ServerConfig::new(listen.parse().unwrap(), KEY, Secret::new(SECRET));
        let err = config.check_listen().expect_err(listen).to_string();
        assert!(err.contains(listen) && err.contains("--clearml-secret"), "{err}");
        let config = ServerConfig::with_secret_ref(listen.parse().unwrap(), KEY, reference.clone()).unwrap();
        assert_eq!(config.secret_key.expose(), "from-a-file");
        assert_eq!(config.secret_source, SecretSource::Reference(reference.clone()));
        config.check_listen().unwrap_or_else(|e| panic!("{listen} with a reference: {e}"));
    }
}

#[tokio::test]
async fn a_secret_by_reference_gets_as_far_as_binding_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "from-a-file").unwrap();
    let reference = SecretRef::File(dir.path().join("secret"));
    let config = ServerConfig::with_secret_ref("192.0.2.1:0".parse().unwrap(), KEY, reference).unwrap();
    let Err(err) = ClearmlServer::start(config).await else { panic!("bound 192.0.2.1") };
    assert!(format!("{err:#}").contains("cannot listen on 192.0.2.1:0"), "{err:#}");
}

// --- 2. credentials ---

#[test]
fn login_accepts_exactly_the_configured_pair() {
    let shared = shared_with(|_| {});
    let near_misses = [
        (KEY, "test-secret-ke"),
        (KEY, "test-secret-keY"),
        (KEY, "test-secret-key "),
        (KEY, ""),
        ("test-access-ke", SECRET),
        ("", SECRET),
        (SECRET, KEY),
        ("", ""),
    ];
    for (key, secret) in near_misses {
        let e = request(&shared, "auth.login", &basic(key, secret), "", b"").expect_err(secret);
        assert_eq!((e.code, e.subcode), codes::INVALID_CREDENTIALS, "{key}:{secret}");
    }
    request(&shared, "auth.login", &basic(KEY, SECRET), "", b"").expect("the right pair logs in");
}

// --- 3. arithmetic on request numbers ---

#[test]
fn paging_far_past_the_end_is_an_empty_page_not_an_overflow() {
    let shared = shared_with(|_| {});
    let headers = logged_in(&shared);
    ok(&shared, &headers, "queues.create", json!({"name": "cpu"}));
    ok(&shared, &headers, "tasks.create", json!({"name": "t"}));
    for endpoint in ["queues.get_all", "tasks.get_all"] {
        for page in [json!(u64::MAX), json!(i64::MAX), json!(1u64 << 62), json!("18446744073709551615")] {
            let data = ok(&shared, &headers, endpoint, json!({"page": page, "page_size": 500}));
            let list = data.as_object().unwrap().values().next().unwrap();
            assert_eq!(list, &json!([]), "{endpoint} page {page}");
        }
        let data = ok(&shared, &headers, endpoint, json!({"page": 0, "page_size": u64::MAX}));
        assert_eq!(data.as_object().unwrap().values().next().unwrap().as_array().unwrap().len(), 1);
    }
}

#[test]
fn huge_worker_timeouts_and_windows_saturate_instead_of_wrapping() {
    let shared = shared_with(|_| {});
    let headers = logged_in(&shared);
    // 2^63 s wrapped to a negative i64 dropped the worker at once.
    ok(&shared, &headers, "workers.register", json!({"worker": "w-huge", "timeout": 1u64 << 63}));
    ok(&shared, &headers, "workers.register", json!({"worker": "w-max", "timeout": u64::MAX}));
    for body in [json!({}), json!({"last_seen": 100_000_000_000_000_000u64}), json!({"last_seen": u64::MAX})] {
        let data = ok(&shared, &headers, "workers.get_all", body.clone());
        let ids: Vec<&str> = data["workers"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["w-huge", "w-max"], "workers.get_all {body}");
    }
}

#[test]
fn nonsense_numbers_are_a_400_naming_the_field() {
    let shared = shared_with(|_| {});
    let headers = logged_in(&shared);
    let cases = [
        ("queues.get_all", json!({"page_size": -1}), "page_size"),
        ("queues.get_all", json!({"page_size": 10, "page": -3}), "page"),
        ("queues.get_all", json!({"page_size": "many"}), "page_size"),
        ("tasks.get_all", json!({"page_size": [10]}), "page_size"),
        ("queues.get_all", json!({"max_task_entries": -1}), "max_task_entries"),
        ("workers.get_all", json!({"last_seen": -5}), "last_seen"),
        ("workers.get_all", json!({"last_seen": {"s": 5}}), "last_seen"),
        ("workers.register", json!({"worker": "w", "timeout": "soon"}), "timeout"),
        ("workers.register", json!({"worker": "w", "timeout": -600}), "timeout"),
        ("auth.login", json!({"expiration_sec": -1}), "expiration_sec"),
    ];
    for (endpoint, body, field) in cases {
        let e = bad(&shared, &headers, endpoint, body.clone());
        assert_eq!(e.code, 400, "{endpoint} {body}: {}", e.msg);
        assert!(e.msg.contains(field), "{endpoint} {body}: {}", e.msg);
    }
}

#[test]
fn a_huge_token_lifetime_saturates_instead_of_expiring_or_overflowing() {
    for lifetime in [u64::MAX, i64::MAX as u64, 1 << 63] {
        let shared = shared_with(|c| c.token_lifetime_secs = lifetime);
        let headers = logged_in(&shared);
        ok(&shared, &headers, "queues.get_all", json!({}));
    }
}

// --- 4. a panicking handler ---

#[test]
fn a_panicking_handler_answers_500_and_the_next_request_still_works() {
    let shared = shared_with(|_| {});
    let headers = logged_in(&shared);
    let e = bad(&shared, &headers, TEST_PANIC, json!({}));
    assert_eq!(e.code, 500);
    assert!(e.msg.contains(TEST_PANIC) && e.msg.contains("bug"), "{}", e.msg);
    ok(&shared, &headers, "queues.create", json!({"name": "after"}));
    assert_eq!(ok(&shared, &headers, "queues.get_all", json!({}))["queues"][0]["name"], "after");

    // The in-process API runs handlers through the same guard.
    let shared = Arc::new(shared);
    let handle = ServerHandle { shared: shared.clone() };
    let err = handle.call(TEST_PANIC, json!({})).unwrap_err().to_string();
    assert!(err.contains("500") && err.contains("bug"), "{err}");
    assert!(!shared.store.is_poisoned());
    assert_eq!(handle.create_queue("after-too").map(|id| id.len()).unwrap(), 32);
}

#[test]
fn a_poisoned_store_lock_does_not_fail_every_later_request() {
    let shared = Arc::new(shared_with(|_| {}));
    let headers = logged_in(&shared);
    let poisoner = shared.clone();
    let _ = std::thread::spawn(move || {
        let _store = poisoner.store.lock().unwrap();
        panic!("poisoning the store lock on purpose");
    })
    .join();
    assert!(shared.store.is_poisoned());
    ok(&shared, &headers, "queues.create", json!({"name": "after"}));
    let handle = ServerHandle { shared: shared.clone() };
    assert_eq!(handle.queue_depth("after"), Some(0));
    assert_eq!(handle.tasks(), []);
    assert_eq!(handle.workers(), []);
}
