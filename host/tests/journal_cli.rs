//! `flockd why` and `flockd decisions` (issue 15, item 9): the journal from
//! the shell, read from the store while flockd is stopped and through the
//! running flockd's API while it holds the store.

mod http_harness;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flockd::store::{JournalLimits, RedbStore};
use flockd_core::TerminationCause;
use flockd_core::journal::{Action, Outcome, TickRecord};
use flockd_core::store::StateStore;

fn flockd(args: &[&str], config: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flockd"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn launch(tick: u64, instance: &str) -> TickRecord {
    TickRecord {
        tick,
        at: 1_767_225_600_000 + tick * 1000,
        actions: vec![Action::Launch {
            resource: "cpu".into(),
            key: format!("k{tick}"),
            reason: "2 tasks waiting on cpu".into(),
            outcome: Outcome::Done,
            instance: Some(instance.into()),
        }],
        ..Default::default()
    }
}

/// The tick numbers of `--format json` output, which has the kebab-case
/// keys of /api/v2/decisions (no snake_case key anywhere).
fn ticks(json: &str) -> Vec<u64> {
    let records: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let records = records.as_array().unwrap_or_else(|| panic!("a list of records: {json}"));
    for r in records {
        let snake: Vec<&String> = r.as_object().unwrap().keys().filter(|k| k.contains('_')).collect();
        assert!(snake.is_empty(), "snake_case keys {snake:?} in {r}");
    }
    records.iter().map(|r| r["tick"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn why_and_decisions_read_the_store_of_a_stopped_flockd() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flockd.toml");
    std::fs::write(&config, http_harness::CONFIG).unwrap();
    {
        let store = RedbStore::open(&dir.path().join("state"), JournalLimits::default()).unwrap();
        store.append(&launch(1, "i-1")).await.unwrap();
        store.append(&TickRecord { tick: 2, at: 1_767_225_602_000, ..Default::default() }).await.unwrap();
        let idle = TickRecord {
            tick: 3,
            at: 1_767_225_603_000,
            actions: vec![Action::Terminate {
                instance: "i-1".into(),
                resource: "cpu".into(),
                cause: TerminationCause::Idle,
                reason: "idle for 600 s".into(),
                outcome: Outcome::Done,
            }],
            ..Default::default()
        };
        store.append(&idle).await.unwrap();
        store.append(&launch(4, "i-2")).await.unwrap();
    }

    let (code, out, err) = flockd(&["why", "i-1"], &config);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tick 3") && out.contains("terminate i-1 (cpu): idle for 600 s [done]"), "{out}");
    assert!(out.contains("tick 1") && out.contains("launch cpu → i-1: 2 tasks waiting on cpu"), "{out}");
    assert!(!out.contains("i-2"), "only i-1's ticks: {out}");
    let (_, json, _) = flockd(&["why", "i-1", "--format", "json"], &config);
    assert_eq!(ticks(&json), vec![3, 1]);
    let (code, out, _) = flockd(&["why", "i-404"], &config);
    assert_eq!(code, 1, "an instance the journal never saw: {out}");

    let (_, json, _) = flockd(&["decisions", "--format", "json"], &config);
    assert_eq!(ticks(&json), vec![4, 3, 2, 1]);
    let (_, json, _) = flockd(&["decisions", "--acted", "--format", "json"], &config);
    assert_eq!(ticks(&json), vec![4, 3, 1], "tick 2 did nothing");
    let (_, json, _) = flockd(&["decisions", "--resource", "cpu", "--limit", "1", "--format", "json"], &config);
    assert_eq!(ticks(&json), vec![4]);
    // Ticks 1-4 are at 2026-01-01T00:00:01..04Z.
    let (_, json, _) = flockd(&["decisions", "--since", "2026-01-01T00:00:03Z", "--format", "json"], &config);
    assert_eq!(ticks(&json), vec![4, 3]);
    let (code, _, err) = flockd(&["decisions", "--since", "last week"], &config);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("neither a time"), "{err}");
}

/// While flockd runs it holds the store: the commands ask its API instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_asks_a_running_flockd_through_its_api() {
    let running = http_harness::Flockd::start("").await;
    running.enqueue("cpu");
    let instance = http_harness::until(Duration::from_secs(30), "a launch", || async {
        running.controller.last().and_then(|(s, _)| s.instances.first().map(|i| i.id.clone()))
    })
    .await;
    let addr = running.url.trim_start_matches("http://").to_string();
    let config = running.dir.path().join("cli.toml");
    let text = http_harness::CONFIG.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""));
    std::fs::write(&config, text).unwrap();

    let (code, json, err) = flockd(&["why", &instance, "--format", "json"], &config);
    assert_eq!(code, 0, "{err}");
    assert!(!ticks(&json).is_empty() && json.contains(&format!("\"{instance}\"")), "{json}");
    running.stop().await;
}

/// With `[store] kind = "postgres"` the commands read the database, beside
/// whichever flockd leads (issue 15, item 9 with issue 11's store).
#[tokio::test]
async fn why_and_decisions_read_a_postgres_store() {
    use flockd_core::leader::LeaseBackend;
    let pg = flockd_postgres::testing::TempPostgres::start().expect("PostgreSQL (scripts/setup installs it)");
    let store = flockd_postgres::PgStore::connect(&pg.url(), "web", JournalLimits::default()).await.unwrap();
    store.acquire_or_renew("the-leader", Duration::from_secs(60)).await.unwrap();
    store.append(&launch(1, "i-1")).await.unwrap();
    store.append(&launch(2, "i-2")).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, pg.url()).unwrap();
    let config = dir.path().join("flockd.toml");
    let store_section = format!("\n[store]\nkind = \"postgres\"\nurl = \"file:{}\"\n", url_file.display());
    std::fs::write(&config, format!("{}{store_section}", http_harness::CONFIG)).unwrap();
    let (code, json, err) = flockd(&["decisions", "--format", "json"], &config);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ticks(&json), vec![2, 1]);
    let (code, out, err) = flockd(&["why", "i-1"], &config);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tick 1") && !out.contains("i-2"), "{out}");
}
