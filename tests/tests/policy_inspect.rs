//! `flockd policy inspect` on real components: what it reports and the
//! verdict for each kind of broken file.

use std::path::Path;

use flockd::policy_cli::inspect;
use flockd_tests::policy::{engine, engine_with_timeout, fixture, read};

#[test]
fn a_good_policy_is_valid_and_shows_its_world_imports_and_exports() {
    let bytes = read(fixture::GOOD_V1);
    let inspection = inspect(&engine(), Path::new(fixture::GOOD_V1), &bytes, "{}");
    assert!(inspection.is_valid(), "{}", inspection.render());
    assert_eq!(inspection.size, bytes.len());
    assert_eq!(inspection.digest, flockd_wasm::loader::digest(&bytes));
    let shape = inspection.shape.as_ref().unwrap();
    assert_eq!(shape.world().as_deref(), Some("flockd:policy/policy@0.1.0"));
    let exports: Vec<&str> = shape.exports.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(exports, ["configure", "decide"]);
    assert_eq!(shape.exports[0].kind, "func(settings: string) -> result<_, string>");
    let host = shape.imports.iter().find(|i| i.name == "flockd:policy/host@0.1.0").expect("imports the host interface");
    assert_eq!(host.members, ["log-level", "log"]);
    let rendered = inspection.render();
    assert!(rendered.contains("world:    flockd:policy/policy@0.1.0\n"), "{rendered}");
    assert!(rendered.starts_with("verdict:  valid policy\n"), "the verdict comes first: {rendered}");
}

#[test]
fn each_broken_file_is_invalid_with_its_reason() {
    let whole = read(fixture::GOOD_V1);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("zero bytes", Vec::new(), "empty file (0 bytes)"),
        ("truncated", whole[..whole.len() / 2].to_vec(), "not a valid WebAssembly component"),
        ("another world", read(fixture::OTHER_WORLD), "does not implement world flockd:policy/policy@0.1.0"),
        ("endless loop", read(fixture::LOOP_FOREVER), "timed out"),
        ("memory bomb", read(fixture::MEMORY_BOMB), "memory limit"),
        ("panic", read(fixture::TRAP), "unreachable"),
    ];
    let engine = engine_with_timeout(std::time::Duration::from_millis(200));
    for (what, bytes, reason) in cases {
        let inspection = inspect(&engine, Path::new("x.wasm"), &bytes, "{}");
        assert!(!inspection.is_valid(), "{what} must be invalid");
        let got = inspection.reason().unwrap();
        assert!(got.contains(reason), "{what}: {got:?} should say {reason:?}");
        assert!(inspection.render().contains(&format!("verdict:  invalid: {got}")));
        if what == "endless loop" {
            let hint = inspection.hint.as_deref().unwrap_or_default();
            assert!(hint.contains("--timeout-ms"), "a deadline failure says how to give it longer: {hint:?}");
        }
    }
    // The foreign component still shows what it is.
    let other = inspect(&engine, Path::new("o.wasm"), &read(fixture::OTHER_WORLD), "{}");
    let shape = other.shape.expect("it is a component");
    assert_eq!(shape.world(), None);
    assert_eq!(shape.exports.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["run"]);
}

#[test]
fn settings_are_checked_by_configure() {
    let bytes = flockd_wasm::builtin::component("scale-up").unwrap();
    let inspection = inspect(&engine(), Path::new("scale-up.wasm"), bytes, r#"{"no-such-setting": 1}"#);
    let reason = inspection.reason().expect("an unknown setting is refused");
    assert!(reason.contains("rejected its settings") && reason.contains("no-such-setting"), "{reason}");
}
