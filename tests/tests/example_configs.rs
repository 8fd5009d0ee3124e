//! Every config in examples/ parses and passes `flockd check` (the binary,
//! built with its default features: `cargo build -p flockd` first).
//!
//! `check` makes no network call and needs no secret: a reference whose
//! variable or file is missing where `check` runs is a warning that names it
//! (it may well exist where flockd runs); `flockd run` refuses to start on it.

mod aws_harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_harness::{flockd_bin, repo_root};

const EXAMPLES: [&str; 5] = ["aws", "gcp", "local", "simulate", "dev"];

fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(format!("{name}.toml"))
}

/// The `env:NAME` references in a config (outside comments).
fn env_refs(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let code: String = text.lines().map(|l| l.split('#').next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let mut names: Vec<String> = code
        .split("env:")
        .skip(1)
        .map(|rest| rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
        .filter(|name: &String| !name.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn check(path: &Path, env: &[(String, String)]) -> Output {
    let mut command = Command::new(flockd_bin());
    command.args(["check", "--config"]).arg(path);
    for name in env_refs(path) {
        command.env_remove(name);
    }
    command.envs(env.iter().cloned());
    command.output().expect("flockd check runs")
}

#[test]
fn examples_load() {
    for name in EXAMPLES {
        let config = flockd::config::Config::load(&example(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!config.queues.is_empty() && !config.resources.is_empty(), "{name}");
    }
}

#[test]
fn examples_pass_check_without_warnings_when_their_references_resolve() {
    for name in EXAMPLES {
        let path = example(name);
        let env: Vec<(String, String)> = env_refs(&path).into_iter().map(|n| (n, "fake-value".to_owned())).collect();
        let out = check(&path, &env);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{name}: exit {}\n{stdout}{stderr}", out.status);
        let lines: Vec<&str> = stdout.trim().lines().collect();
        assert_eq!(lines.last().copied(), Some(format!("{}: ok", path.display()).as_str()), "{name}\n{stderr}");
        // The chain in effect comes first, the four built-ins in each example.
        assert_eq!(lines[0], "policy chain: scale-up → spin-up-timeout → idle → budget (required)", "{name}");
        // In particular no "built without" warning: provider settings were checked.
        assert!(stderr.trim().is_empty(), "{name}: warnings:\n{stderr}");
    }
}

#[test]
fn unset_references_are_named_as_warnings() {
    let path = example("aws");
    let refs = env_refs(&path);
    assert!(refs.contains(&"CLEARML_API_SECRET_KEY".to_owned()), "{refs:?}");
    let out = check(&path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "a missing secret is not a config error: {stderr}");
    for name in &refs {
        let line = stderr.lines().find(|l| l.contains(&format!("env:{name}"))).unwrap_or_else(|| {
            panic!("no warning names {name}:\n{stderr}");
        });
        assert!(line.contains("warning") && line.contains("flockd run fails"), "{line}");
    }
}

#[test]
fn run_refuses_to_start_when_a_reference_is_unset() {
    // Pointed at a closed loopback port: nothing may leave this machine.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aws.toml");
    let text = std::fs::read_to_string(example("aws")).unwrap();
    let text = text.replace("https://api.clear.ml", &format!("http://127.0.0.1:{}", aws_harness::free_port()));
    std::fs::write(&path, text.replace("/var/lib/flockd", &dir.path().join("state").display().to_string())).unwrap();
    let out = Command::new(flockd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .env("FLOCKD_GIT_TOKEN", "fake-token")
        .env_remove("CLEARML_API_ACCESS_KEY")
        .env_remove("CLEARML_API_SECRET_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "flockd run started without its secrets");
    assert!(stderr.contains("CLEARML_API_ACCESS_KEY"), "the error names the missing variable:\n{stderr}");
}
