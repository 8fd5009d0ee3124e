//! flockd's client against flockd's compatible server, over real HTTP on
//! loopback: the queue-source contract, auth, retries, the wire rules and
//! persistence.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{ACCESS_KEY, SECRET_KEY, client_for, poll_until, start_server, start_server_with};
use flockd_clearml::ClearmlError;
use flockd_clearml::secret::SecretRef;
use flockd_clearml::{ClearmlClient, ClearmlConfig};
use flockd_core::{QueueSource, SourceError};
use serde_json::{Value, json};

#[tokio::test]
async fn observe_reports_depth_and_oldest_wait_and_counts_a_missing_queue_as_empty() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&server.url(), dir.path());
    let names: Vec<String> = vec!["gpu.large".into(), "cpu(x)".into(), "empty".into()];

    let err = client.ensure_queues(&names, false).await.unwrap_err();
    assert!(matches!(&err, ClearmlError::MissingQueues(m) if m.len() == 3), "{err}");
    assert_eq!(client.ensure_queues(&names, true).await.unwrap().len(), 3);
    assert!(client.ensure_queues(&names, false).await.unwrap().is_empty());
    // A look-alike name must not count toward "gpu.large" (the name is a regex on the wire).
    server.handle().create_queue("gpuXlarge").unwrap();

    for (i, queue) in ["gpu.large", "gpu.large", "cpu(x)", "gpuXlarge"].iter().enumerate() {
        let task = client.create_task(&format!("t{i}"), "training").await.unwrap();
        client.enqueue_task(&task, queue).await.unwrap();
    }
    let observation = client.observe(&names).await.unwrap();
    let depth: Vec<(&str, u32)> = observation.queues.iter().map(|q| (q.name.as_str(), q.pending)).collect();
    assert_eq!(depth, [("gpu.large", 2), ("cpu(x)", 1), ("empty", 0)]);
    let empty = &observation.queues[2];
    assert_eq!(empty.oldest_wait_ms, 0);
    poll_until("the oldest entry to age", Duration::from_secs(5), || async {
        let o = client.observe(&names[..1]).await.unwrap();
        if o.queues[0].oldest_wait_ms >= 20 { Ok(()) } else { Err(o.queues[0].oldest_wait_ms) }
    })
    .await;

    // A queue deleted on the server is empty, not a failed observation that
    // would stop every other queue's scale-down.
    let missing = client.observe(&["gpu.large".into(), "nope".into()]).await.unwrap();
    let depth: Vec<(&str, u32)> = missing.queues.iter().map(|q| (q.name.as_str(), q.pending)).collect();
    assert_eq!(depth, [("gpu.large", 2), ("nope", 0)]);
    // None of them there: a wiped or wrong server, and the observation fails.
    let none = client.observe(&["nope".into(), "nada".into()]).await.unwrap_err();
    assert!(matches!(&none, SourceError::NoSuchQueue(n) if n == "nope, nada"), "{none}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn workers_show_busy_then_idle_and_unregister_is_idempotent() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let client = client_for(&server.url(), dir.path());
    let handle = server.handle();
    let queue = handle.create_queue("cpu").unwrap();
    let task = handle.create_task("job").unwrap();
    handle.call("workers.register", json!({"worker": "flockd:c:cpu:i-1", "queues": [queue]})).unwrap();
    handle
        .call(
            "workers.status_report",
            json!({"worker": "flockd:c:cpu:i-1", "task": task, "queue": queue, "timestamp": 1}),
        )
        .unwrap();

    let workers = QueueSource::workers(&client).await.unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].id, "flockd:c:cpu:i-1");
    assert_eq!(workers[0].queues, ["cpu"]);
    assert_eq!(workers[0].task.as_deref(), Some(task.as_str()));
    assert!(workers[0].registered_at.is_some());

    handle.call("workers.status_report", json!({"worker": "flockd:c:cpu:i-1", "timestamp": 2})).unwrap();
    assert_eq!(client.observe(&["cpu".into()]).await.unwrap().workers[0].task, None);

    QueueSource::unregister_worker(&client, "flockd:c:cpu:i-1").await.unwrap();
    assert!(QueueSource::workers(&client).await.unwrap().is_empty());
    QueueSource::unregister_worker(&client, "flockd:c:cpu:i-1").await.expect("unregistering a gone worker is Ok");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn silent_workers_are_dropped_after_register_timeout() {
    let server = start_server_with(|c| c.register_timeout_secs = 1).await;
    let handle = server.handle();
    handle.call("workers.register", json!({"worker": "w1", "queues": []})).unwrap();
    handle.call("workers.register", json!({"worker": "w-long", "queues": [], "timeout": 600})).unwrap();
    assert_eq!(handle.workers().len(), 2);
    poll_until("w1 to be swept", Duration::from_secs(10), || async {
        let ids: Vec<String> = handle.workers().into_iter().map(|w| w.id).collect();
        if ids == ["w-long"] { Ok(()) } else { Err(ids) }
    })
    .await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_credentials_are_an_auth_error_and_revoked_tokens_are_renewed_once() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wrong"), "not-the-secret").unwrap();
    std::fs::write(dir.path().join("key"), ACCESS_KEY).unwrap();
    let config = ClearmlConfig::new(
        server.url(),
        SecretRef::File(dir.path().join("key")),
        SecretRef::File(dir.path().join("wrong")),
    );
    let wrong = ClearmlClient::new(&config).unwrap();
    let err = QueueSource::workers(&wrong).await.unwrap_err();
    assert!(matches!(err, SourceError::Auth(_)), "{err}");
    assert!(!err.to_string().contains("not-the-secret"));
    assert!(!format!("{wrong:?}").contains("not-the-secret"));

    let client = client_for(&server.url(), dir.path());
    server.handle().create_queue("q").unwrap();
    client.observe(&["q".into()]).await.unwrap();
    server.handle().revoke_tokens();
    client.observe(&["q".into()]).await.expect("a 401 makes the client log in again and retry");
    server.shutdown().await.unwrap();
}

/// A proxy that answers 503 to the first `failures` requests, then forwards.
async fn flaky_proxy(upstream: String, failures: u32) -> (String, Arc<AtomicU32>) {
    use axum::http::{HeaderMap, StatusCode, Uri};
    let hits = Arc::new(AtomicU32::new(0));
    let counter = hits.clone();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: axum::body::Bytes| {
        let (counter, http, upstream) = (counter.clone(), http.clone(), upstream.clone());
        async move {
            if counter.fetch_add(1, Ordering::SeqCst) < failures {
                return (StatusCode::SERVICE_UNAVAILABLE, axum::body::Bytes::from_static(b"busy"));
            }
            let mut request = http.post(format!("{upstream}{}", uri.path())).body(body);
            if let Some(auth) = headers.get("authorization") {
                request = request.header("authorization", auth.to_str().unwrap());
            }
            let response = request.send().await.unwrap();
            (StatusCode::from_u16(response.status().as_u16()).unwrap(), response.bytes().await.unwrap())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, hits)
}

#[tokio::test]
async fn retries_on_503_are_bounded() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();

    // Two 503s then success: the login gets through on the third attempt (max_attempts = 3).
    let (url, hits) = flaky_proxy(server.url(), 2).await;
    let client = client_for(&url, dir.path());
    let _: Value = client.call("debug.ping", &json!({})).await.expect("third attempt succeeds");
    assert_eq!(hits.load(Ordering::SeqCst), 4, "3 login attempts + 1 ping");

    // Always 503: gives up after max_attempts with the endpoint in the error.
    let (url, hits) = flaky_proxy(server.url(), u32::MAX).await;
    let client = client_for(&url, dir.path());
    let err = client.call::<Value>("queues.get_all", &json!({})).await.unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(matches!(&err, ClearmlError::Transport { attempts: 3, .. }), "{err}");
    assert!(err.to_string().contains("auth.login") && err.to_string().contains("503"), "{err}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_token_about_to_expire_is_renewed_before_the_call() {
    let dir = tempfile::tempdir().unwrap();
    // Long-lived tokens: one login serves both calls.
    let server = start_server().await;
    let (url, hits) = flaky_proxy(server.url(), 0).await;
    let client = client_for(&url, dir.path());
    for _ in 0..2 {
        let _: Value = client.call("debug.ping", &json!({})).await.unwrap();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 3, "1 login + 2 calls");

    // Tokens with under a minute left: every call logs in first.
    let server = start_server_with(|c| c.token_lifetime_secs = 59).await;
    let (url, hits) = flaky_proxy(server.url(), 0).await;
    let client = client_for(&url, dir.path());
    for _ in 0..2 {
        let _: Value = client.call("debug.ping", &json!({})).await.unwrap();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 4, "(login + call) x 2");
}

#[tokio::test]
async fn wire_rules_get_with_body_any_version_prefix_and_enveloped_errors() {
    let server = start_server().await;
    let http = reqwest::Client::new();
    let login: Value = http
        .get(format!("{}/auth.login", server.url()))
        .basic_auth(ACCESS_KEY, Some(SECRET_KEY))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(login["meta"]["result_code"], 200);
    let token = login["data"]["token"].as_str().unwrap().to_string();
    let claims = flockd_clearml::token::decode_unverified(&token).unwrap();
    assert_eq!(claims["api_version"], "2.23");
    assert_eq!(claims["feature_set"], "basic");
    assert!(claims["identity"]["user"].is_string());
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());

    server.handle().create_queue("q1").unwrap();
    for prefix in ["/v2.23", "/v2.14", "/v1.0", ""] {
        let reply: Value = http
            .get(format!("{}{prefix}/queues.get_all", server.url()))
            .bearer_auth(&token)
            .body(r#"{"name": "^q1$", "method": "get", "only_fields": ["name"]}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(reply["data"]["queues"][0]["name"], "q1", "prefix {prefix:?}: {reply}");
        assert!(reply["meta"]["id"].is_string());
    }

    let cases = [
        ("queues.get_by_id", json!({"queue": "nope"}), 400, 701),
        ("queues.create", json!({"name": "q1"}), 400, 801),
        ("workers.unregister", json!({"worker": "ghost"}), 400, 1001),
        ("frobnicate.now", json!({}), 404, 0),
    ];
    for (endpoint, body, code, subcode) in cases {
        let response = http
            .post(format!("{}/v2.23/{endpoint}", server.url()))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), code, "{endpoint}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(
            (reply["meta"]["result_code"].as_u64(), reply["meta"]["result_subcode"].as_u64()),
            (Some(code as u64), Some(subcode)),
            "{endpoint}: {reply}"
        );
        assert_eq!(reply["meta"]["endpoint"]["name"], endpoint);
    }

    assert_eq!(server.handle().unknown_endpoints(), ["frobnicate.now"]);

    let no_token = http.post(format!("{}/queues.get_all", server.url())).send().await.unwrap();
    assert_eq!(no_token.status().as_u16(), 401);
    let bad_token = http.post(format!("{}/queues.get_all", server.url())).bearer_auth("x.y.z").send().await.unwrap();
    let reply: Value = bad_token.json().await.unwrap();
    assert_eq!(
        (reply["meta"]["result_code"].as_u64(), reply["meta"]["result_subcode"].as_u64()),
        (Some(401), Some(30))
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn hidden_queues_show_only_when_asked_for() {
    let server = start_server().await;
    let handle = server.handle();
    handle.create_queue("visible").unwrap();
    handle.call("queues.create", json!({"name": "glue", "system_tags": ["k8s-glue"]})).unwrap();
    let names = |reply: Value| -> Vec<String> {
        let mut names: Vec<String> =
            reply["queues"].as_array().unwrap().iter().map(|q| q["name"].as_str().unwrap().to_string()).collect();
        names.sort();
        names
    };
    assert_eq!(names(handle.call("queues.get_all", json!({})).unwrap()), ["visible"]);
    assert_eq!(names(handle.call("queues.get_all", json!({"search_hidden": true})).unwrap()), ["glue", "visible"]);
    assert_eq!(names(handle.call("queues.get_all", json!({"name": "glue"})).unwrap()), ["glue"]);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restarted_server_keeps_queues_and_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let server = start_server_with(|c| c.persist_path = Some(state.clone())).await;
    let handle = server.handle();
    let task = handle.create_task("keep me").unwrap();
    handle.enqueue(&task, "persisted").unwrap();
    server.shutdown().await.unwrap();

    let server = start_server_with(|c| c.persist_path = Some(state.clone())).await;
    let handle = server.handle();
    assert_eq!(handle.queue_depth("persisted"), Some(1));
    let restored = handle.task(&task).expect("task survived the restart");
    assert_eq!((restored.name.as_str(), restored.status.as_str()), ("keep me", "queued"));
    // A client logged in before the restart would still be accepted; a new one certainly is.
    let client = client_for(&server.url(), dir.path());
    assert_eq!(client.observe(&["persisted".into()]).await.unwrap().queues[0].pending, 1);
    server.shutdown().await.unwrap();
    assert!(!dir.path().join("state.json.tmp").exists(), "temp file left behind");
}

#[tokio::test]
async fn observing_a_thousand_queues_takes_two_calls() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = server.handle();
    let names: Vec<String> = (0..1000).map(|i| format!("team-{i}.gpu[{}]", i % 7)).collect();
    for name in &names {
        handle.create_queue(name).unwrap();
    }
    for name in names.iter().step_by(10) {
        let task = handle.create_task("t").unwrap();
        handle.enqueue(&task, name).unwrap();
    }
    let (url, hits) = flaky_proxy(server.url(), 0).await;
    let client = client_for(&url, dir.path());
    let observation = client.observe(&names).await.unwrap();
    assert_eq!(observation.queues.len(), 1000);
    assert_eq!(observation.queues.iter().map(|q| q.pending).sum::<u32>(), 100);
    assert_eq!(observation.queues[10].pending, 1);
    assert_eq!(observation.queues[11].pending, 0);
    assert_eq!(hits.load(Ordering::SeqCst), 3, "1 login + queues.get_all + workers.get_all");
    server.shutdown().await.unwrap();
}
