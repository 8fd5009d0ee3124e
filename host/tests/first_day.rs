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

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// Item 6: a "morning burst" must land in the morning for time-of-day
/// policies, and `--verbose` lines say when in virtual time they happened,
/// with no colour codes in a pipe.
#[test]
fn simulate_starts_when_told_and_stamps_its_logs_with_virtual_time() {
    let dir = setup("");
    let sim = flockd(
        dir.path(),
        &[
            "simulate",
            "--config",
            "flockd.toml",
            "--trace",
            "trace.jsonl",
            "--start",
            "2026-03-02T08:00:00+01:00",
            "--verbose",
            "--format",
            "json",
        ],
    );
    let report = json(&sim);
    assert_eq!(report["start"], "2026-03-02T07:00:00Z", "{report:#}");
    let stderr = String::from_utf8_lossy(&sim.stderr);
    assert!(stderr.lines().any(|l| l.starts_with("2026-03-02T07:0")), "virtual time stamps:\n{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no colour codes into a pipe:\n{stderr}");

    let default = json(&flockd(
        dir.path(),
        &["simulate", "--config", "flockd.toml", "--trace", "trace.jsonl", "--format", "json"],
    ));
    assert_eq!(default["start"], "2026-01-01T00:00:00Z", "the documented default");
    let bad =
        flockd(dir.path(), &["simulate", "--config", "flockd.toml", "--trace", "trace.jsonl", "--start", "monday"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"), "{}", text(&bad));
}

/// Item 6: a team replays its real config with realistic GPU boot times:
/// `[resource.X.simulated]` beside `[resource.X.aws]` is accepted by
/// `check` (before: "rename the table"), ignored by `run`, used by `simulate`.
#[test]
fn a_production_config_replays_with_its_own_simulated_boot_times() {
    let aws = |simulated: &str| {
        format!(
            r#"
cluster = "first-day"
[limits]
max-instances = 4
max-cost-per-hour = 10.0
[provider.ec2]
kind = "aws"
region = "eu-west-1"
[[queue]]
name = "cpu"
resources = ["cpu"]
[resource.cpu]
provider = "ec2"
max-instances = 4
price-per-hour = 0.5
[resource.cpu.aws]
ami = "ami-0123456789abcdef0"
instance-type = "m7i.large"
{simulated}"#
        )
    };
    let dir = setup("");
    std::fs::write(dir.path().join("flockd.toml"), aws("[resource.cpu.simulated]\nboot-secs = 600\n")).unwrap();
    let check = flockd(dir.path(), &["check", "--config", "flockd.toml"]);
    assert!(check.status.success(), "{}", text(&check));
    let sim = json(&flockd(
        dir.path(),
        &["simulate", "--config", "flockd.toml", "--trace", "trace.jsonl", "--format", "json"],
    ));
    let p50 = sim["total"]["wait-p50-secs"].as_f64().unwrap();
    assert!(p50 >= 600.0, "the 600 s boot is in the waits: {sim:#}");

    std::fs::write(dir.path().join("flockd.toml"), aws("[resource.cpu.simulated]\nboot-secs = -1\n")).unwrap();
    let check = flockd(dir.path(), &["check", "--config", "flockd.toml"]);
    assert_eq!(check.status.code(), Some(2), "a wrong .simulated table is still an error:\n{}", text(&check));
}

/// Item 6: the report says why tasks waited (launches the caps cut, time at
/// each cap, idle machine time), in readable durations and with no `-0`.
#[test]
fn the_report_says_why_tasks_waited() {
    // One machine per resource: the built-in scale-up stays within it, so
    // nothing is cut, but the resource sits at its cap.
    let dir = setup("");
    let base = std::fs::read_to_string(dir.path().join("flockd.toml")).unwrap();
    let write = |config: String| std::fs::write(dir.path().join("flockd.toml"), config).unwrap();
    let simulate = || {
        json(&flockd(
            dir.path(),
            &["simulate", "--config", "flockd.toml", "--trace", "trace.jsonl", "--format", "json"],
        ))
    };
    write(base.replace("max-instances = 4\nprice", "max-instances = 1\nprice"));
    let sim = simulate();
    let cpu = &sim["resources"][0];
    // Five 300 s tasks, one machine: it sits at its cap for 25 minutes at least.
    assert!(cpu["secs-at-max-instances"].as_f64().unwrap() >= 1500.0, "{sim:#}");
    assert!(cpu["idle-hours"].as_f64().unwrap() > 0.0, "{sim:#}");
    assert_eq!(sim["total"]["idle-hours"], cpu["idle-hours"], "{sim:#}");

    // A cost cap of one machine and a chain without `budget`: the guardrails
    // cut what scale-up asks for, and the fleet sits at the cost cap.
    write(
        base.replace("max-cost-per-hour = 10.0", "max-cost-per-hour = 0.6")
            + "\n[policies]\nchain = [\"scale-up\", \"spin-up-timeout\", \"idle\"]\n",
    );
    let cut = simulate();
    assert!(cut["resources"][0]["launches-cut"]["by-cost-cap"].as_u64().unwrap() > 0, "{cut:#}");
    assert_eq!(cut["total"]["launches-cut"], cut["resources"][0]["launches-cut"], "{cut:#}");
    assert!(cut["total"]["secs-at-cost-cap"].as_f64().unwrap() >= 1500.0, "{cut:#}");

    let table = flockd(dir.path(), &["simulate", "--config", "flockd.toml", "--trace", "trace.jsonl"]);
    assert!(table.status.success(), "{}", text(&table));
    let stdout = String::from_utf8_lossy(&table.stdout);
    assert!(stdout.contains("why tasks waited"), "{stdout}");
    // Minutes and seconds, like 4m05s, not 245.0s.
    let minutes = |w: &str| {
        w.strip_suffix('s').and_then(|w| w.split_once('m')).is_some_and(|(m, s)| {
            !m.is_empty()
                && m.bytes().all(|b| b.is_ascii_digit())
                && s.len() == 2
                && s.bytes().all(|b| b.is_ascii_digit())
        })
    };
    assert!(stdout.split_whitespace().any(minutes), "durations read 4m05s:\n{stdout}");
    assert!(!stdout.contains("-0.0") && !sim.to_string().contains("-0.0"), "{stdout}");
}

/// Item 10: the config is found where people keep it (./flockd.toml, or
/// FLOCKD_CONFIG), global flags go before the command, and the shell
/// completes flockd.
#[test]
fn cli_conventions_default_config_global_flags_and_completions() {
    let dir = setup("");
    let check = flockd(dir.path(), &["--log", "warn", "check"]);
    assert!(check.status.success(), "./flockd.toml by default, global flag first:\n{}", text(&check));
    assert!(String::from_utf8_lossy(&check.stdout).contains("flockd.toml: ok"), "{}", text(&check));

    let elsewhere = tempfile::tempdir().unwrap();
    let by_env = Command::new(env!("CARGO_BIN_EXE_flockd"))
        .args(["simulate", "--trace"])
        .arg(dir.path().join("trace.jsonl"))
        .args(["--format", "json"])
        .current_dir(elsewhere.path())
        .env_remove("RUST_LOG")
        .env("FLOCKD_CONFIG", dir.path().join("flockd.toml"))
        .output()
        .unwrap();
    assert!(by_env.status.success(), "FLOCKD_CONFIG names the config:\n{}", text(&by_env));

    let missing = flockd(elsewhere.path(), &["check"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("flockd.toml"),
        "says which file it looked for:\n{}",
        text(&missing)
    );

    // check --format json, for a CI pipeline: every error with its place.
    std::fs::write(
        elsewhere.path().join("flockd.toml"),
        "cluster = \"Bad Name\"\n[limits]\nmax-instances = 0\nmax-cost-per-hour = 1.0\n",
    )
    .unwrap();
    let out = flockd(elsewhere.path(), &["check", "--format", "json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(report["ok"], false, "{report:#}");
    let first = &report["diagnostics"][0];
    assert_eq!(first["severity"], "error", "{report:#}");
    assert!(first["line"].as_u64().is_some() && first["message"].as_str().is_some(), "{report:#}");
    assert_eq!(report["errors"].as_u64(), Some(report["diagnostics"].as_array().unwrap().len() as u64), "{report:#}");
    let ok: serde_json::Value =
        serde_json::from_slice(&flockd(dir.path(), &["check", "--format", "json"]).stdout).unwrap();
    assert_eq!(ok["ok"], true, "{ok:#}");
    assert!(ok["chain"][0].as_str().is_some(), "{ok:#}");

    let script = flockd(dir.path(), &["completions", "bash"]);
    assert!(script.status.success(), "{}", text(&script));
    let path = dir.path().join("flockd.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(syntax.status.success(), "the bash script parses: {}", text(&syntax));
    assert!(String::from_utf8_lossy(&script.stdout).contains("simulate"), "it completes the commands");
}

/// A run cut short by `--until-secs` leaves out the trace's tasks that arrive
/// after its end: before, they counted as never started and failed the run
/// with "no policy in the chain launched for them".
#[test]
fn a_run_cut_short_leaves_out_the_tasks_that_arrive_after_its_end() {
    let dir = setup("");
    let args = ["simulate", "--config", "flockd.toml", "--trace", "trace.jsonl", "--until-secs", "1000"];
    let sim = flockd(dir.path(), &[&args[..], &["--format", "json"]].concat());
    let report = json(&sim);
    assert_eq!(report["total"]["tasks"], 5, "{report:#}");
    assert_eq!(report["total"]["tasks-after-the-end"], 2, "{report:#}");
    assert_eq!(report["total"]["tasks-never-started"], 0, "{report:#}");
    let table = flockd(dir.path(), &args);
    assert!(table.status.success(), "{}", text(&table));
    assert!(String::from_utf8_lossy(&table.stdout).contains("2 task(s) of the trace arrive after --until-secs"));
}
