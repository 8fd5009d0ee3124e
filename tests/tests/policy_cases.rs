//! The case runner behind `flockd policy test`: every built-in's shipped
//! cases pass, a wrong expectation fails with a readable diff, and a bad case
//! file is refused naming the file, the key and the line.

use flockd::policy_cases::{CaseFile, PolicyRef, run_builtin_cases, run_file};
use flockd_tests::policy::{engine, fixture};
use flockd_wasm::builtin;

fn case_file(text: &str) -> CaseFile {
    CaseFile::parse(text, "inline.toml", Some(std::path::Path::new("/"))).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_built_in_ships_cases_and_they_all_pass() {
    let engine = engine();
    let mut report = String::new();
    let mut failed = Vec::new();
    for name in builtin::names() {
        let outcome = run_builtin_cases(&engine, name).unwrap_or_else(|e| panic!("{e}"));
        assert!(!outcome.cases.is_empty(), "built-in {name} ships no cases");
        report.push_str(&outcome.render());
        if !outcome.all_passed() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "built-in cases failed for {failed:?}:\n{report}");
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_of_plan_reasons_and_logs() {
    let text = format!(
        r#"
policy = "{}"
[[case]]
name = "v1 does not launch five"
[case.snapshot]
now = 1
queues = [ {{ name = "q", pending = 3, resources = ["A"] }} ]
resources = [ {{ name = "A", queues = ["q"], max-instances = 4 }}, {{ name = "B", max-instances = 1 }} ]
[case.expect]
launches = {{ A = 5, B = 1 }}
reason-contains = "launch 7"

[[case]]
name = "v1 launches one"
[case.snapshot]
now = 1
resources = [ {{ name = "A", max-instances = 4 }} ]
[case.expect]
launches = {{ A = 1 }}
terminated = []
"#,
        fixture::GOOD_V1
    );
    let file = case_file(&text);
    assert_eq!(file.policy, PolicyRef::File(fixture::GOOD_V1.into()));
    let outcome = run_file(&engine(), &file).unwrap();
    assert!(!outcome.all_passed());
    assert_eq!(outcome.failed(), 1);
    let failing = &outcome.cases[0];
    assert_eq!(
        failing.mismatches,
        [
            "launches differ: A: expected 5, actual 1; B: expected 1, actual 0",
            "reason-contains: no action's reason contains \"launch 7\""
        ]
    );
    assert!(outcome.cases[1].passed(), "{:?}", outcome.cases[1].mismatches);
    let rendered = outcome.render();
    for line in [
        "  FAILED  v1 does not launch five",
        "          - launches differ: A: expected 5, actual 1; B: expected 1, actual 0",
        "            launch 1 × A: good-v1: launch 1",
        "            Info: good-v1 deciding",
        "  ok      v1 launches one",
        "  2 cases: 1 ok, 1 FAILED",
    ] {
        assert!(rendered.lines().any(|l| l == line), "missing line {line:?} in:\n{rendered}");
    }
}

#[test]
fn expected_errors_match_traps_invalid_plans_and_refused_settings() {
    let cases = [
        (fixture::TRAP, "unreachable"),
        (fixture::HUGE_PLAN, "unknown resource \"nope\""),
        (fixture::LOOP_FOREVER, "timed out"),
    ];
    let engine = engine();
    for (policy, error) in cases {
        let file = case_file(&format!(
            "policy = \"{policy}\"\n[[case]]\nname = \"fails\"\n[case.snapshot]\nnow = 5\n[case.expect]\nerror = \"{}\"\n",
            error.replace('"', "\\\"")
        ));
        let outcome = run_file(&engine, &file).unwrap();
        assert!(outcome.all_passed(), "{}", outcome.render());
    }
    // A built-in with a setting it does not know: configure refuses it, and
    // an unexpected error is a failure naming it.
    let file = case_file(
        "policy = \"scale-up\"\n[[case]]\nname = \"bad setting\"\nsettings = { cool-off-sec = 3 }\n[case.snapshot]\nnow = 5\n",
    );
    let outcome = run_file(&engine, &file).unwrap();
    let mismatches = &outcome.cases[0].mismatches;
    assert!(
        mismatches.len() == 1 && mismatches[0].contains("unexpected error") && mismatches[0].contains("cool-off-sec"),
        "{mismatches:?}"
    );
}

#[test]
fn an_unknown_key_is_refused_naming_file_key_and_line() {
    let text = "policy = \"scale-up\"\n[[case]]\nname = \"x\"\n[case.snapshot]\nnow = 1\n[case.expect]\nlaunches-at-mots = 3\n";
    let error = CaseFile::parse(text, "plugins/x/cases.toml", None).unwrap_err().to_string();
    for part in ["plugins/x/cases.toml", "launches-at-mots", "line 7"] {
        assert!(error.contains(part), "{part:?} missing from {error:?}");
    }
    let in_snapshot = "policy = \"scale-up\"\n[[case]]\nname = \"x\"\n[case.snapshot]\nnow = 1\nqueues = [ { name = \"q\", pendng = 1 } ]\n";
    let error = CaseFile::parse(in_snapshot, "s.toml", None).unwrap_err().to_string();
    assert!(error.contains("pendng") && error.contains("line 6"), "{error}");
}

#[test]
fn case_files_that_cannot_run_say_why() {
    let engine = engine();
    let unknown = case_file("policy = \"scale-upp\"\n[[case]]\nname = \"x\"\n[case.snapshot]\nnow = 1\n");
    let error = run_file(&engine, &unknown).unwrap_err().to_string();
    assert!(error.contains("scale-upp") && error.contains("scale-up, "), "{error}");

    let foreign = case_file(&format!(
        "policy = \"{}\"\n[[case]]\nname = \"x\"\n[case.snapshot]\nnow = 1\n",
        fixture::OTHER_WORLD
    ));
    let error = run_file(&engine, &foreign).unwrap_err().to_string();
    assert!(error.contains("does not implement world"), "{error}");

    for (text, says) in [
        ("policy = \"scale-up\"\n", "no cases"),
        ("policy = \"scale-up\"\n[[case]]\nname = \"x\"\n", "snapshot"),
        ("[[case]]\nname = \"x\"\n[case.snapshot]\nnow = 1\n", "policy"),
        ("policy = \"a.wasm\"\n[[case]]\nname = \"x\"\n[case.snapshot]\nnow = 1\n", "no folder"),
    ] {
        let error = CaseFile::parse(text, "c.toml", None).unwrap_err().to_string();
        assert!(error.starts_with("c.toml: ") && error.contains(says), "{says:?} missing from {error:?}");
    }
}
