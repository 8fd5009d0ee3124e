//! The HTTP surface over a real controller: probes, status, decisions,
//! metrics, the token, and the refusal to listen off loopback without one.

mod http_harness;

use std::time::Duration;

use http_harness::{Flockd, until};
use serde_json::Value;

/// Every object key holding an underscore, at any depth.
fn snake_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if k.contains('_') {
                    out.push(k.clone());
                }
                snake_keys(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| snake_keys(v, out)),
        _ => {}
    }
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_decisions_and_metrics_follow_the_fleet() {
    let flockd = Flockd::start("").await;
    let url = flockd.url.clone();

    assert_eq!(get(&format!("{url}/healthz")).await.status(), 200);
    until(Duration::from_secs(20), "readyz to turn 200", || async {
        (get(&format!("{url}/readyz")).await.status() == 200).then_some(())
    })
    .await;

    let task = flockd.enqueue("cpu");
    let status: Value = until(Duration::from_secs(20), "a booting instance in the status", || async {
        let s: Value = get(&format!("{url}/api/v1/status")).await.json().await.unwrap();
        s["fleet"].as_array().is_some_and(|f| f.iter().any(|i| i["activity"] == "booting")).then_some(s)
    })
    .await;
    let instance = status["fleet"][0].clone();
    let id = instance["id"].as_str().unwrap().to_string();
    assert_eq!(instance["resource"], "cpu");
    assert!(instance["age_secs"].as_f64().unwrap() >= 0.0);
    assert_eq!(status["cluster"], "web");
    assert_eq!(status["ready"], true);
    assert_eq!(status["limits"]["max_instances"], 4);
    assert_eq!(status["cost_per_hour"], 0.5);
    assert_eq!(status["resources"][0]["booting"], 1);
    let queue = &status["queues"][0];
    assert_eq!(queue["name"], "cpu");
    let policies: Vec<&str> =
        status["policies"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(policies, ["scale-up", "spin-up-timeout", "idle", "budget"], "the built-in chain in order");
    let scale_up = &status["policies"][0];
    assert!(scale_up["calls"].as_u64().unwrap() >= 1, "{scale_up}");
    assert_eq!(scale_up["origin"], "built-in scale-up");
    assert_eq!(scale_up["version"].as_str().unwrap().len(), 24);
    assert_eq!(status["last_tick"]["outcome"], "ok");

    // The journal answers "why is this machine up?".
    let why: Value = get(&format!("{url}/api/v1/decisions?instance={id}")).await.json().await.unwrap();
    let why = why.as_array().unwrap();
    assert_eq!(why.len(), 1, "exactly the tick that launched it: {why:?}");
    let launch = &why[0]["actions"][0];
    assert_eq!(launch["kind"], "launch");
    assert_eq!(launch["instance"], id.as_str());
    assert_eq!(launch["outcome"]["status"], "done");
    assert!(!launch["reason"].as_str().unwrap().is_empty(), "every action has a reason: {launch}");
    let recent: Value = get(&format!("{url}/api/v1/decisions?limit=3")).await.json().await.unwrap();
    let ticks: Vec<u64> = recent.as_array().unwrap().iter().map(|r| r["tick"].as_u64().unwrap()).collect();
    assert_eq!(ticks.len(), 3);
    assert!(ticks.windows(2).all(|w| w[0] > w[1]), "newest first: {ticks:?}");
    let acted: Value = get(&format!("{url}/api/v1/decisions?acted=true")).await.json().await.unwrap();
    assert!(acted.as_array().unwrap().iter().all(|r| !r["actions"].as_array().unwrap().is_empty()));

    let metrics = until(Duration::from_secs(10), "metrics to count the launch", || async {
        let m = get(&format!("{url}/metrics")).await.text().await.unwrap();
        m.contains(r#"flockd_instances{resource="cpu",state="booting"} 1"#).then_some(m)
    })
    .await;
    for expected in [
        r#"flockd_launches_total{outcome="done",resource="cpu"} 1"#,
        r#"flockd_instances{resource="cpu",state="running_idle"} 0"#,
        "flockd_cost_per_hour 0.5",
        "flockd_cost_cap_per_hour 10",
        "flockd_instances_cap 4",
        "flockd_ready 1",
        "# TYPE flockd_tick_duration_seconds histogram",
        r#"flockd_ticks_total{result="ok"}"#,
        r#"flockd_policy_call_duration_seconds_count{policy="scale-up"}"#,
        r#"flockd_policy_calls_total{policy="budget"}"#,
        r#"flockd_queue_pending{queue="cpu"}"#,
        r#"flockd_queue_oldest_wait_seconds{queue="cpu"}"#,
        r#"flockd_provider_call_duration_seconds_count{call="launch",provider="sim"}"#,
        r#"flockd_provider_call_duration_seconds_count{call="list",provider="sim"}"#,
    ] {
        assert!(metrics.contains(expected), "/metrics lacks {expected:?}:\n{metrics}");
    }
    // What Prometheus itself would read: every line parses, typed families
    // come out with their labels.
    let scrape = prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text format: {e}\n{metrics}"));
    let booting = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "flockd_instances"
                && s.labels.get("resource") == Some("cpu")
                && s.labels.get("state") == Some("booting")
        })
        .expect("flockd_instances{resource=cpu,state=booting} parsed");
    assert!(matches!(booting.value, prometheus_parse::Value::Gauge(v) if v == 1.0), "{:?}", booting.value);
    assert!(
        scrape.samples.iter().any(|s| s.metric == "flockd_tick_duration_seconds"
            && matches!(s.value, prometheus_parse::Value::Histogram(ref buckets) if !buckets.is_empty())),
        "the tick duration histogram parses with its buckets"
    );

    let history: Value = get(&format!("{url}/api/v1/history")).await.json().await.unwrap();
    assert!(history.as_array().unwrap().iter().any(|s| s["booting"] == 1), "charts see the booting machine");
    assert!(history[0]["pending"]["cpu"].is_u64(), "v1 keeps its shape for one release: {}", history[0]);

    // Issue 16, item 10: /api/v2 answers with the config's kebab-case keys.
    for path in ["status", "decisions", "history", "logs"] {
        let v2: Value = get(&format!("{url}/api/v2/{path}")).await.json().await.unwrap();
        let mut snake = Vec::new();
        snake_keys(&v2, &mut snake);
        assert!(snake.is_empty(), "/api/v2/{path} has snake_case keys {snake:?}");
    }
    let v2: Value = get(&format!("{url}/api/v2/status")).await.json().await.unwrap();
    assert_eq!(v2["limits"]["max-instances"], 4, "{v2}");
    assert_eq!(v2["cost-per-hour"], 0.5, "{v2}");
    let v2: Value = get(&format!("{url}/api/v2/history")).await.json().await.unwrap();
    assert_eq!(v2[0]["queues"][0]["name"], "cpu", "names are values, not keys: {}", v2[0]);
    assert!(v2[0]["queues"][0]["oldest-wait-secs"].is_number(), "{}", v2[0]);

    let page = get(&format!("{url}/")).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("/assets/app.js") && !html.contains("http://") && !html.contains("https://"),
        "no CDN: {html}"
    );
    assert_eq!(get(&format!("{url}/assets/app.js")).await.status(), 200);
    drop(task);
    flockd.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_everything_but_healthz() {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, "tok-7f3a9c\n").unwrap();
    let flockd = Flockd::start(&format!("token = \"file:{}\"\n", token_file.display())).await;
    let url = flockd.url.clone();
    let client = reqwest::Client::new();

    for path in ["/", "/metrics", "/api/v1/status", "/api/v1/decisions", "/api/v1/logs", "/assets/app.js"] {
        let bare = client.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(bare.status(), 401, "{path} without a token");
        let challenges: Vec<_> =
            bare.headers().get_all("www-authenticate").iter().map(|v| v.to_str().unwrap().to_string()).collect();
        assert!(challenges.iter().any(|c| c.starts_with("Bearer")), "{challenges:?}");
        let body = bare.text().await.unwrap();
        assert!(!body.contains("tok-7f3a9c"));
        let wrong = client.get(format!("{url}{path}")).bearer_auth("tok-7f3a9").send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let good = client.get(format!("{url}{path}")).bearer_auth("tok-7f3a9c").send().await.unwrap();
        assert_eq!(good.status(), 200, "{path}");
    }
    // The probes reveal nothing, and a kubelet or load balancer has no token.
    assert_eq!(client.get(format!("{url}/healthz")).send().await.unwrap().status(), 200);
    let ready = client.get(format!("{url}/readyz")).send().await.unwrap().status();
    assert!(ready == 200 || ready == 503, "readyz without a token: {ready}");
    let basic =
        client.get(format!("{url}/api/v1/status")).basic_auth("browser", Some("tok-7f3a9c")).send().await.unwrap();
    assert_eq!(basic.status(), 200, "a browser's Basic credentials carry the token as password");
    assert_eq!(client.get(format!("{url}/healthz")).send().await.unwrap().status(), 200, "healthz is open");
    flockd.stop().await;
}

/// Guard: without a token, only requests addressed to a loopback name are
/// answered (`auth::guard`). A web page whose name an attacker rebinds to
/// 127.0.0.1 sends its own name as Host: it must not read the fleet, the
/// journal or the log tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_request_for_another_host_name_is_refused() {
    let flockd = Flockd::start("").await;
    let url = flockd.url.clone();
    let port = flockd.http.as_ref().unwrap().addr().port();
    let client = reqwest::Client::new();
    for path in ["/", "/metrics", "/api/v1/status", "/api/v1/decisions", "/api/v1/logs"] {
        for host in ["rebound.example", "rebound.example:80", &format!("evil.test:{port}"), "127.0.0.1.nip.io"] {
            let response = client.get(format!("{url}{path}")).header("host", host).send().await.unwrap();
            assert_eq!(response.status(), 403, "{path} for Host {host}");
            let body = response.text().await.unwrap();
            assert!(body.contains("token"), "the refusal says what to do: {body}");
        }
        for host in
            [format!("127.0.0.1:{port}"), format!("localhost:{port}"), "localhost".into(), format!("[::1]:{port}")]
        {
            let response = client.get(format!("{url}{path}")).header("host", &host).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path} for Host {host}");
        }
    }
    flockd.stop().await;
}

#[tokio::test]
async fn refuses_to_listen_off_loopback_without_a_token() {
    let section = flockd::config::HttpSection { listen: "0.0.0.0:0".into(), token: None, enabled: true };
    let err = match flockd::http::Listen::resolve(&section).await {
        Ok(_) => panic!("listening on 0.0.0.0 without a token must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("token") && err.contains("0.0.0.0:0"), "{err}");
    // A token written inline is refused when the config is read, unechoed.
    let text = "cluster = \"c\"\n[limits]\nmax-instances = 1\nmax-cost-per-hour = 1.0\n[http]\ntoken = \"hunter2-inline-token\"\n";
    let err = match flockd::config::Config::parse(text, std::path::Path::new("flockd.toml")) {
        Ok(_) => panic!("an inline token must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("env:") && !err.contains("hunter2-inline"), "{err}");
}

/// Issue 16, item 11: what the dashboard answers from the status API: which
/// ClearML task each busy machine runs, linked to the ClearML web UI when
/// its address is known; spend so far today; the failures panel's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_machine_names_its_task_linked_to_the_web_ui_and_spend_counts() {
    let extra = "[agent]\nweb-host = \"https://app.clear.example/\"\n\n[[policy]]\nname = \"idle\"\nsettings = { max-idle-secs = 120 }\n";
    let flockd = Flockd::start_booting_in(extra, 0.3).await;
    let url = flockd.url.clone();
    let task = flockd.enqueue("cpu");
    let status: Value = until(Duration::from_secs(30), "a busy machine with its task", || async {
        let s: Value = get(&format!("{url}/api/v2/status")).await.json().await.unwrap();
        s["fleet"]
            .as_array()
            .is_some_and(|f| f.iter().any(|i| i["activity"] == "busy" && i["task"].is_string()))
            .then_some(s)
    })
    .await;
    let busy = status["fleet"].as_array().unwrap().iter().find(|i| i["activity"] == "busy").unwrap();
    assert_eq!(busy["task"], task.as_str(), "{busy}");
    assert_eq!(
        busy["task-url"],
        format!("https://app.clear.example/projects/*/experiments/{task}/output/log").as_str(),
        "{busy}"
    );
    assert_eq!(status["clearml-web"], "https://app.clear.example/", "{status}");
    assert!(status["failures"].is_array(), "{status}");
    // The rules in force: the idle policy's max idle time as configured.
    let idle = status["policies"].as_array().unwrap().iter().find(|p| p["name"] == "idle").unwrap();
    assert_eq!(idle["settings"]["max-idle-secs"], 120, "{idle}");
    // What it has cost so far: its age at the resource's 0.5 an hour.
    let expected = 0.5 * busy["age-secs"].as_f64().unwrap() / 3600.0;
    assert!((busy["cost-so-far"].as_f64().unwrap() - expected).abs() < 1e-9, "{busy}");
    let spent = until(Duration::from_secs(10), "spend to count the machine's time", || async {
        let s: Value = get(&format!("{url}/api/v2/status")).await.json().await.unwrap();
        let today = s["spend"]["today"].as_f64().unwrap();
        (today > 0.0).then_some(s["spend"].clone())
    })
    .await;
    assert!(spent["this-month"].as_f64().unwrap() >= spent["today"].as_f64().unwrap(), "{spent}");
    flockd.stop().await;
}

/// Guards of `http::actions::admitted`: actions are off without a token;
/// with one, a browser's Basic credentials act only from the dashboard's own
/// origin, a form's content type is refused, and a bearer token acts; a
/// terminate of a machine that is not there is a 404. Each was seen failing
/// with its check taken out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_a_token_and_refuse_what_another_site_could_send() {
    let open = Flockd::start("").await;
    let client = reqwest::Client::new();
    let post = |url: String| client.post(url).header("content-type", "application/json").body("{}");
    let off = post(format!("{}/api/v1/actions/pause", open.url)).send().await.unwrap();
    assert_eq!(off.status(), 403, "actions without a token");
    assert!(off.text().await.unwrap().contains("[http] token"));
    assert!(open.controller.launches_paused().is_none());
    open.stop().await;

    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, "tok-actions\n").unwrap();
    let flockd = Flockd::start(&format!("token = \"file:{}\"\n", token_file.display())).await;
    let url = &flockd.url;
    let host = url.trim_start_matches("http://");
    let pause = || post(format!("{url}/api/v1/actions/pause"));

    let cross_site =
        pause().basic_auth("b", Some("tok-actions")).header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(cross_site.status(), 403, "Basic credentials from another origin");
    let no_origin = pause().basic_auth("b", Some("tok-actions")).send().await.unwrap();
    assert_eq!(no_origin.status(), 403, "Basic credentials without an origin");
    let form = client
        .post(format!("{url}/api/v1/actions/pause"))
        .bearer_auth("tok-actions")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415, "a form post");
    assert!(flockd.controller.launches_paused().is_none(), "a refused request paused launches");

    let same_origin =
        pause().basic_auth("b", Some("tok-actions")).header("origin", format!("http://{host}")).send().await.unwrap();
    assert_eq!(same_origin.status(), 200, "the dashboard's own page");
    assert!(flockd.controller.launches_paused().is_some());
    let status: serde_json::Value = get_with(&client, &format!("{url}/api/v2/status")).await;
    assert!(status["launches-paused-since"].is_u64(), "{status}");
    assert_eq!(status["actions-enabled"], true);

    let resumed: serde_json::Value = post(format!("{url}/api/v2/actions/resume"))
        .bearer_auth("tok-actions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(resumed["launches-paused-since"].is_null(), "{resumed}");
    assert!(flockd.controller.launches_paused().is_none());

    let missing = client
        .post(format!("{url}/api/v1/actions/terminate"))
        .bearer_auth("tok-actions")
        .header("content-type", "application/json")
        .body(r#"{"instance": "i-not-here"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404, "{}", missing.text().await.unwrap());
    let none_idle: serde_json::Value = post(format!("{url}/api/v1/actions/shutdown-idle"))
        .bearer_auth("tok-actions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none_idle["terminated"], serde_json::json!([]), "{none_idle}");
    flockd.stop().await;
}

async fn get_with(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).bearer_auth("tok-actions").send().await.unwrap().json().await.unwrap()
}

/// Issue 15, item 10: the charts' last hour comes back after a restart
/// (from the journal), per resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_history_survives_a_restart() {
    let flockd = Flockd::start("").await;
    flockd.enqueue("cpu");
    let url = flockd.url.clone();
    until(Duration::from_secs(30), "a few samples with a booting machine", || async {
        let h: Value = get(&format!("{url}/api/v2/history")).await.json().await.unwrap();
        let samples = h.as_array().unwrap();
        (samples.len() >= 3 && samples.last().unwrap()["resources"][0]["booting"] == 1).then_some(())
    })
    .await;
    let dir = flockd.stop_keeping_dir().await;
    let stopped_at = flockd_core::Clock::now(&flockd_core::SystemClock);
    // The old process's last references go with its tasks.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let again = Flockd::start_in(dir, "", 3600.0).await;
    let h: Value = get(&format!("{}/api/v2/history", again.url)).await.json().await.unwrap();
    let before: Vec<&Value> = h.as_array().unwrap().iter().filter(|s| s["at"].as_u64().unwrap() < stopped_at).collect();
    assert!(before.len() >= 3, "the charts started empty after a restart: {h}");
    assert_eq!(before.last().unwrap()["resources"][0]["name"], "cpu", "{h}");
    again.stop().await;
}
