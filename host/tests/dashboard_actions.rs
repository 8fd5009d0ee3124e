//! The dashboard's actions in a real browser (issue 15, item 1; headless
//! Chromium driven by `tests/browser/actions.mjs`): pausing holds launches
//! back, resuming lets them go, a busy machine's terminate button is
//! refused with the reason, and requests without the token, with a wrong
//! one, or from another site's page are refused.

mod http_harness;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flockd_core::InstanceState;
use http_harness::{Flockd, until};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TOKEN: &str = "flockd-actions-test-token";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_pauses_resumes_and_cannot_terminate_a_busy_machine() {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir() && Path::new("/usr/bin/chromium").exists(),
        "the browser test needs chromium and playwright-core: run scripts/setup"
    );
    let mut token_file = tempfile::NamedTempFile::new().unwrap();
    token_file.write_all(TOKEN.as_bytes()).unwrap();
    // Appended to the harness config, inside its [http] table.
    let extra = format!("token = \"file:{}\"", token_file.path().display());
    let flockd = Flockd::start_booting_in(&extra, 1.0).await;

    // What the script says went wrong, read back when it stops talking.
    let errors = tempfile::NamedTempFile::new().unwrap();
    let mut node = tokio::process::Command::new("node")
        .arg(dir.join("actions.mjs"))
        .arg(format!("{}/", flockd.url))
        .arg(TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(errors.reopen().unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut to_browser = node.stdin.take().unwrap();
    let mut from_browser = BufReader::new(node.stdout.take().unwrap()).lines();
    let stderr = || std::fs::read_to_string(errors.path()).unwrap_or_default();
    let mut next = async || -> String {
        match tokio::time::timeout(Duration::from_secs(90), from_browser.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("the browser script stopped talking ({other:?}):\n{}", stderr()),
        }
    };

    assert_eq!(next().await, "paused");
    assert!(flockd.controller.launches_paused().is_some(), "the button did not pause launches");
    // Work arrives while paused: nothing is launched for it.
    flockd.enqueue("cpu");
    let held = until(Duration::from_secs(10), "a tick that held a launch back", || async {
        let (_, record) = flockd.controller.last()?;
        record.clamps.iter().any(|c| c.contains("paused by an operator")).then_some(record)
    })
    .await;
    assert_eq!(held.launched(), 0);
    assert!(flockd.controller.last().unwrap().0.instances.is_empty(), "a machine was launched while paused");
    to_browser.write_all(b"checked-paused\n").await.unwrap();

    assert_eq!(next().await, "resumed");
    assert!(flockd.controller.launches_paused().is_none());
    let busy = until(Duration::from_secs(30), "the launched machine to take the task", || async {
        let (snapshot, _) = flockd.controller.last()?;
        snapshot.instances.iter().find(|i| i.busy && i.state == InstanceState::Running).map(|i| i.id.clone())
    })
    .await;
    to_browser.write_all(format!("busy {busy}\n").as_bytes()).await.unwrap();

    let refused = next().await;
    assert!(refused.starts_with("refused terminate:"), "{refused}");
    assert!(refused.contains(&busy) && refused.contains("running a task"), "the page did not say why: {refused}");
    let (snapshot, _) = flockd.controller.last().unwrap();
    assert!(snapshot.instance(&busy).is_some_and(|i| i.state == InstanceState::Running), "the busy machine went");

    assert_eq!(next().await, "no-token 401 401 403", "no credentials, a wrong token, another site's page");
    let last = next().await;
    let status = node.wait().await.unwrap();
    assert_eq!(last, "console-clean", "{}", stderr());
    assert!(status.success(), "{}", stderr());
    flockd.stop().await;
}
