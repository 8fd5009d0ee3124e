//! What a new user does on the first day, step by step, and what they must
//! see (issue: the first day of a ClearML team with flockd).

use std::process::{Command, Output};

const BASE: &str = r#"
cluster = "first-day"
poll-interval-secs = 10

[limits]
max-instances = 4
max-cost-per-hour = 10.0

[provider.sim]
kind = "simulated"

[[queue]]
name = "cpu"
resources = ["cpu"]

[resource.cpu]
provider = "sim"
max-instances = 4
price-per-hour = 0.5
"#;

const TRACE: &str = r#"{"at": 0, "queue": "cpu", "duration": 300, "count": 5}
{"at": 1200, "queue": "cpu", "duration": 120, "count": 2}
"#;

fn flockd(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flockd")).args(args).current_dir(dir).env_remove("RUST_LOG").output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn setup(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("flockd.toml"), format!("{BASE}{extra}")).unwrap();
    std::fs::write(dir.path().join("trace.jsonl"), TRACE).unwrap();
    dir
}

/// Trap 1: listing one built-in to change its settings used to replace the
/// whole chain, dropping scale-up: nothing ever launched, `check` said ok and
/// `simulate` exited 0 with waits of 0.0 s.
#[test]
fn changing_one_builtin_policy_keeps_the_chain_that_launches() {
    let dir = setup("\n[[policy]]\nname = \"idle\"\nsettings = { max-idle-secs = 120 }\n");
    let check = flockd(dir.path(), &["check", "--config", "flockd.toml"]);
    assert!(check.status.success(), "{}", text(&check));
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        stdout.contains("policy chain: scale-up → spin-up-timeout → idle → budget (required)"),
        "check must print the chain in effect:\n{}",
        text(&check)
    );

    let sim =
        flockd(dir.path(), &["simulate", "--config", "flockd.toml", "--trace", "trace.jsonl", "--format", "json"]);
    assert!(sim.status.success(), "{}", text(&sim));
    let report: serde_json::Value = serde_json::from_slice(&sim.stdout).unwrap();
    assert_eq!(report["total"]["tasks-never-started"], 0, "{report:#}");
    assert_eq!(report["total"]["tasks-finished"], 7, "{report:#}");
}

/// A chain that cannot launch is allowed only when said explicitly, is
/// warned about by `check`, and fails `simulate` unless accepted.
#[test]
fn a_chain_that_cannot_launch_is_warned_about_and_fails_the_simulation() {
    let dir = setup("\n[policies]\nchain = [\"idle\", \"budget\"]\n");
    let check = flockd(dir.path(), &["check", "--config", "flockd.toml"]);
    assert!(check.status.success(), "{}", text(&check));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains("no policy in the chain (idle → budget) can launch"), "{}", text(&check));

    // Two hours are enough to see that nothing ever starts.
    let sim =
        flockd(dir.path(), &["simulate", "--config", "flockd.toml", "--trace", "trace.jsonl", "--until-secs", "7200"]);
    assert_eq!(sim.status.code(), Some(1), "{}", text(&sim));
    let stdout = String::from_utf8_lossy(&sim.stdout);
    assert!(stdout.contains("7 never"), "the waits' place says how many never started:\n{}", text(&sim));
    assert!(String::from_utf8_lossy(&sim.stderr).contains("7 of 7 task(s) never started"), "{}", text(&sim));

    let accepted = flockd(
        dir.path(),
        &["simulate", "--config", "flockd.toml", "--trace", "trace.jsonl", "--until-secs", "7200", "--allow-unstarted"],
    );
    assert!(accepted.status.success(), "{}", text(&accepted));
}
