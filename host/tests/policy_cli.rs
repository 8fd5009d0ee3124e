//! `flockd policy …` end to end: the built binary, its output and exit codes.

use std::path::Path;
use std::process::{Command, Output};

fn flockd(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flockd"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        // The edit-test loop's compile cache, per test folder: never the
        // user's own ~/.cache.
        .env("FLOCKD_POLICY_CACHE", cwd.join("policy-cache"))
        .output()
        .expect("run flockd")
}

fn text(output: &Output) -> (String, String) {
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn list_shows_the_built_ins_in_chain_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = flockd(&["policy", "list"], dir.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let names: Vec<&str> = stdout.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
    let builtins: Vec<&str> = flockd_wasm::builtin::names().collect();
    assert_eq!(names, builtins, "{stdout}");
}

#[test]
fn export_then_inspect_a_built_in_and_its_broken_copies() {
    let dir = tempfile::tempdir().unwrap();
    let out = flockd(&["policy", "export", "scale-up", "-o", "scale-up.wasm", "--cases", "cases.toml"], dir.path());
    assert!(out.status.success(), "{:?}", text(&out));
    let exported = std::fs::read(dir.path().join("scale-up.wasm")).unwrap();
    assert_eq!(exported, flockd_wasm::builtin::component("scale-up").unwrap());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cases.toml")).unwrap(),
        flockd_wasm::builtin::cases("scale-up").unwrap()
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no staging files left behind: {leftovers:?}");

    let out = flockd(&["policy", "inspect", "scale-up.wasm"], dir.path());
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "world:    flockd:policy/policy@0.1.0",
        "version:  0.1.0",
        "  decide: func(snapshot: record{now, queues, resources, instances, failures, budget}, plan: record{launches, terminations}) -> result<record{launches, terminations}, string>",
        "verdict:  valid policy",
    ] {
        assert!(stdout.lines().any(|l| l == line), "missing {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains(&format!("size:     {} bytes", exported.len())));

    std::fs::write(dir.path().join("half.wasm"), &exported[..exported.len() / 2]).unwrap();
    std::fs::write(dir.path().join("empty.wasm"), b"").unwrap();
    for (file, reason) in
        [("half.wasm", "invalid: not a valid WebAssembly component"), ("empty.wasm", "invalid: empty file (0 bytes)")]
    {
        let out = flockd(&["policy", "inspect", file], dir.path());
        let (stdout, _) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{file}: {stdout}");
        assert!(stdout.contains(&format!("verdict:  {reason}")), "{file}: {stdout}");
    }
    let out = flockd(&["policy", "inspect", "scale-up.wasm", "--settings", r#"{"cool-off-secs": "soon"}"#], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let (stdout, _) = text(&out);
    assert!(stdout.contains("FAILED  configure("), "{stdout}");
    // Issue 16, item 7: the verdict first, then what to do, the imports last.
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("verdict:  invalid: rejected its settings"), "{stdout}");
    assert!(lines[1].starts_with("hint:") && lines[1].contains("--settings"), "{stdout}");
    let imports = lines.iter().position(|l| *l == "imports:").expect("imports listed");
    assert!(lines[imports..].iter().skip(1).all(|l| l.starts_with("  ")), "the import list is last:\n{stdout}");

    let out = flockd(&["policy", "inspect", "scale-up.wasm", "--timeout-ms", "5000"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    let out = flockd(&["policy", "inspect", "missing.wasm"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("cannot read missing.wasm"), "{:?}", text(&out));
}

#[test]
fn export_of_an_unknown_name_lists_the_built_ins() {
    let dir = tempfile::tempdir().unwrap();
    let out = flockd(&["policy", "export", "scale-down", "-o", "x.wasm"], dir.path());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    let all = flockd_wasm::builtin::names().collect::<Vec<_>>().join(", ");
    assert!(stderr.contains("\"scale-down\"") && stderr.contains(&all), "{stderr}");
    assert!(!dir.path().join("x.wasm").exists());
}

#[test]
fn test_exits_0_when_cases_pass_1_when_one_fails_2_when_a_file_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("policies")).unwrap();
    assert!(flockd(&["policy", "export", "scale-up", "-o", "policies/scale-up.wasm"], dir.path()).status.success());
    // A relative policy path resolves against the case file's folder.
    let case = |expect: &str| {
        format!(
            "policy = \"policies/scale-up.wasm\"\n[[case]]\nname = \"three pending over A max 2 and B\"\n[case.snapshot]\nnow = 1_700_000_000_000\n\
             queues = [ {{ name = \"q\", pending = 3, resources = [\"A\", \"B\"] }} ]\n\
             resources = [ {{ name = \"A\", queues = [\"q\"], max-instances = 2 }}, {{ name = \"B\", queues = [\"q\"], max-instances = 5 }} ]\n\
             [case.expect]\n{expect}\n"
        )
    };
    std::fs::write(dir.path().join("pass.toml"), case("launches = { A = 2, B = 1 }")).unwrap();
    std::fs::write(dir.path().join("fail.toml"), case("launches = { A = 3 }")).unwrap();
    std::fs::write(dir.path().join("bad.toml"), case("launches = { A = 2 }\nlaunch = 1")).unwrap();

    let out = flockd(&["policy", "test", "pass.toml"], dir.path());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("  ok      three pending over A max 2 and B"), "{stdout}");
    // Issue 16, item 7: the second run of the edit-test loop does not
    // compile again (12-15 s for a Python policy).
    assert!(stdout.contains("; compiled and cached)"), "{stdout}");
    let again = text(&flockd(&["policy", "test", "pass.toml"], dir.path())).0;
    assert!(again.contains("; from the compile cache)"), "{again}");

    let out = flockd(&["policy", "test", "pass.toml", "fail.toml"], dir.path());
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("  FAILED  three pending over A max 2 and B"), "{stdout}");
    assert!(stdout.contains("launches differ: A: expected 3, actual 2; B: expected 0, actual 1"), "{stdout}");
    assert!(stdout.contains("            launch 2 × A: "), "the actual plan with reasons: {stdout}");

    let out = flockd(&["policy", "test", "fail.toml", "bad.toml"], dir.path());
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("bad.toml") && stderr.contains("unknown field `launch`") && stderr.contains("line 10"),
        "{stderr}"
    );
    assert!(stdout.contains("FAILED"), "the good file still ran: {stdout}");

    // Issue 16, item 10: the same run for a CI pipeline.
    let out = flockd(&["policy", "test", "pass.toml", "fail.toml", "--format", "json"], dir.path());
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(report["files"][0]["passed"], true, "{report:#}");
    assert_eq!(report["files"][1]["cases"][0]["passed"], false, "{report:#}");
    assert!(
        report["files"][1]["cases"][0]["mismatches"][0].as_str().unwrap().contains("launches differ"),
        "{report:#}"
    );
    let out = flockd(&["policy", "test", "pass.toml", "fail.toml", "--format", "junit"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let (xml, _) = text(&out);
    assert!(
        xml.starts_with("<?xml") && xml.contains(r#"tests="1" failures="1""#) && xml.contains("<failure "),
        "{xml}"
    );

    let out = flockd(&["policy", "test", "nowhere.toml"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("nowhere.toml: cannot read"), "{:?}", text(&out));
}
