//! The dashboard in a real browser (headless Chromium driven by
//! `tests/browser/dashboard.mjs` through playwright-core, both installed by
//! `scripts/setup`): it loads with no console error, a queued task makes a
//! booting machine appear whose journal entries open on a click, and a
//! policy swap shows up in the reload list, with the error of a rejected one.

mod http_harness;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use http_harness::{Flockd, publish, rebuilt_builtin};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_fleet_decisions_and_reloads_in_a_browser() {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs chromium and playwright-core: run scripts/setup"
    );
    // The dashboard's log tail, as `flockd run` feeds it (without stderr,
    // which a test run does not capture).
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let tail = flockd::http::logs::global().layer(false);
        let _ = tracing_subscriber::registry().with(tracing_subscriber::EnvFilter::new("info")).with(tail).try_init();
    }
    let flockd = Flockd::start("").await;

    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .arg(&flockd.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut to_browser = node.stdin.take().unwrap();
    let mut from_browser = BufReader::new(node.stdout.take().unwrap()).lines();
    let mut errors = BufReader::new(node.stderr.take().unwrap()).lines();
    let stderr = tokio::spawn(async move {
        let mut all = String::new();
        while let Ok(Some(line)) = errors.next_line().await {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let mut next = async || -> String {
        match tokio::time::timeout(Duration::from_secs(90), from_browser.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("the browser script stopped talking: {other:?}"),
        }
    };

    assert_eq!(next().await, "page-loaded");
    flockd.enqueue("cpu");
    to_browser.write_all(b"enqueued\n").await.unwrap();
    let booting = next().await;
    if !booting.starts_with("saw-booting ") {
        let _ = node.wait().await;
        panic!("{booting}\n{}", stderr.await.unwrap());
    }
    let instance = booting.trim_start_matches("saw-booting ").to_string();
    let fleet = flockd.controller.last().unwrap().0;
    assert!(fleet.instance(&instance).is_some(), "the page showed {instance}, which the controller does not know");

    publish(&flockd.policy_dir().join("idle.wasm"), &rebuilt_builtin("idle", "v2"));
    publish(&flockd.policy_dir().join("budget.wasm"), b"\0asm not really a component");
    to_browser.write_all(b"swapped\n").await.unwrap();
    let reload = next().await;
    let last = next().await;
    let status = node.wait().await.unwrap();
    let stderr = stderr.await.unwrap();
    assert_eq!(reload, "saw-reload", "{stderr}");
    assert_eq!(last, "console-clean", "{stderr}");
    assert!(status.success(), "{stderr}");
    flockd.stop().await;
}
