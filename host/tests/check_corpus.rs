//! `flockd check` on a corpus of broken configs (`tests/configs/broken`):
//! each must exit 2 with an error at the line (and column) each of its
//! headers names, `# expect: LINE[:COL] SUBSTRING`, and never print a value its header
//! lists as `# never-printed: VALUE`. Valid configs (`tests/configs/valid`
//! and `examples/`) must exit 0, printing the warnings their
//! `# warning: LINE[:COL] SUBSTRING` headers name.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn configs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// Header lines `# <tag>: <value>`.
fn headers(text: &str, tag: &str) -> Vec<String> {
    let prefix = format!("# {tag}: ");
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_string)
        .collect()
}

struct Expected {
    position: String,
    substring: String,
}

fn parse_expectation(header: &str) -> Expected {
    let (position, substring) = header.split_once(' ').unwrap_or((header, ""));
    Expected { position: position.to_string(), substring: substring.to_string() }
}

fn check(path: &Path) -> (i32, String, String) {
    // Secret references in the examples point at variables this test does
    // not set: those are warnings, never errors.
    let out = Command::new(env!("CARGO_BIN_EXE_flockd"))
        .args(["check", "--config"])
        .arg(path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Some line of `output` reports `severity` at the expected place with the expected words.
fn reported(output: &str, path: &Path, severity: &str, e: &Expected) -> bool {
    let at = format!("{}:{}", path.display(), e.position);
    output.lines().any(|l| {
        l.strip_prefix(&at)
            .is_some_and(|rest| (rest.starts_with(':') && !e.position.contains(':')) || rest.starts_with(": "))
            && l.contains(&format!(": {severity}: "))
            && l.contains(&e.substring)
    })
}

#[test]
fn every_broken_config_is_reported_where_it_is_broken() {
    let files = configs(&repo().join("tests/configs/broken"));
    assert!(files.len() >= 15, "the corpus shrank: {files:?}");
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        // Several headers: every one of those errors is reported, not only
        // the first (issue 16, item 4).
        let expect = headers(&text, "expect");
        assert!(!expect.is_empty(), "{}: needs a `# expect: LINE[:COL] SUBSTRING` header", path.display());
        let (code, stdout, stderr) = check(&path);
        if code != 2 {
            failures.push(format!("{}: exit {code}, not 2\n{stderr}", path.display()));
        }
        for expected in expect.iter().map(|e| parse_expectation(e)) {
            if !reported(&stderr, &path, "error", &expected) {
                failures.push(format!(
                    "{}: no error at {} containing {:?}; got:\n{stderr}",
                    path.display(),
                    expected.position,
                    expected.substring
                ));
            }
        }
        for secret in headers(&text, "never-printed") {
            if stdout.contains(&secret) || stderr.contains(&secret) {
                failures.push(format!("{}: printed the secret {secret:?}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn valid_configs_and_the_examples_pass_with_their_warnings() {
    let mut files = configs(&repo().join("tests/configs/valid"));
    files.extend(configs(&repo().join("examples")));
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let (code, stdout, stderr) = check(&path);
        if code != 0 || stderr.contains(": error: ") {
            failures.push(format!("{}: exit {code}\n{stderr}", path.display()));
        }
        if !stdout.contains(": ok") {
            failures.push(format!("{}: no `ok` line: {stdout}", path.display()));
        }
        for w in headers(&text, "warning") {
            let expected = parse_expectation(&w);
            if !reported(&stderr, &path, "warning", &expected) {
                failures.push(format!(
                    "{}: no warning at {} containing {:?}; got:\n{stderr}",
                    path.display(),
                    expected.position,
                    expected.substring
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Issue 15, item 11: every TOML block in the README, docs/ and the READMEs
/// under examples/ and plugins/ is either a config `flockd check` accepts or
/// is marked a fragment (```` ```toml fragment ````), so no example a reader
/// copies fails at their first `check`.
#[test]
fn every_toml_block_in_the_docs_passes_check_or_is_marked_a_fragment() {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    let markdown = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "md")).collect())
            .unwrap_or_default()
    };
    files.extend(markdown(&root.join("docs")));
    for parent in ["examples", "examples/policies", "plugins"] {
        for entry in std::fs::read_dir(root.join(parent)).unwrap() {
            files.extend(markdown(&entry.unwrap().path()));
        }
    }
    files.sort();
    let dir = tempfile::tempdir().unwrap();
    let (mut checked, mut failures) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut lines = text.lines().enumerate();
        while let Some((n, line)) = lines.next() {
            let Some(info) = line.trim_start().strip_prefix("```toml") else { continue };
            let block: Vec<&str> =
                lines.by_ref().map(|(_, l)| l).take_while(|l| !l.trim_start().starts_with("```")).collect();
            if info.split_whitespace().any(|w| w == "fragment") {
                continue;
            }
            let config = dir.path().join(format!("block-{checked}.toml"));
            std::fs::write(&config, block.join("\n")).unwrap();
            checked += 1;
            let (code, _, stderr) = check(&config);
            if code != 0 {
                failures.push(format!(
                    "{}:{}: this TOML block fails `flockd check` (exit {code}); fix it, or mark it ```toml fragment:\n{stderr}",
                    file.display(),
                    n + 1
                ));
            }
        }
    }
    assert!(checked >= 1, "no complete config found in {files:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
