//! Builds the test policy components in `fixtures/policies/` and tells the
//! tests where they are (`FIXTURE_LOOP_FOREVER`, `FIXTURE_GOOD_V1`, ...).

use std::path::PathBuf;

const FIXTURES: &[&str] = &[
    "loop-forever",
    "memory-bomb",
    "trap",
    "huge-plan",
    "flood-plan",
    "other-world",
    "good-v1",
    "good-v2",
    "forged-text",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest_dir.parent().unwrap();
    println!("cargo:rerun-if-changed={}", repo.join("wit").display());
    let components = flockd_wasm_build::build_components(&manifest_dir.join("fixtures/policies/Cargo.toml"), FIXTURES);
    for (name, path) in FIXTURES.iter().zip(components) {
        println!("cargo:rustc-env=FIXTURE_{}={}", name.to_uppercase().replace('-', "_"), path.display());
    }
}
