//! Used from build scripts to compile a workspace of policy crates to
//! `wasm32-wasip2` components, so no one ever has to run a manual build step.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `crates` of the workspace at `manifest` in release mode for
/// wasm32-wasip2 and returns each component's path, in order. Panics with a
/// message saying what to do, as build scripts must.
pub fn build_components(manifest: &Path, crates: &[&str]) -> Vec<PathBuf> {
    let workspace = manifest.parent().expect("manifest has a parent");
    for watched in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    for krate in crates {
        println!("cargo:rerun-if-changed={}", workspace.join(krate).display());
    }
    let target_dir = shared_target_dir().join("wasm32-components");

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg("wasm32-wasip2")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    for krate in crates {
        cmd.arg("-p").arg(krate);
    }
    // The outer build's flags and wrappers are for the host target (and
    // clippy's driver when linting); none of them belong in a wasm build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "__CARGO_FIX_PLZ",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().unwrap_or_else(|e| panic!("could not run cargo to build policies: {e}"));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("wasm32-wasip2") && stderr.contains("target may not be installed") {
            "\n\nThe wasm32-wasip2 target is missing: run `scripts/setup` (or `rustup target add wasm32-wasip2`)."
        } else {
            ""
        };
        panic!("building the policy components in {} failed:\n{stderr}{hint}", workspace.display());
    }
    crates
        .iter()
        .map(|krate| {
            let file = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", krate.replace('-', "_")));
            assert!(file.exists(), "cargo built {krate} but {} is missing: is it a cdylib?", file.display());
            file
        })
        .collect()
}

/// The workspace's target directory, so every profile (dev, test, clippy,
/// release) shares one wasm build instead of redoing it.
fn shared_target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("called from a build script"));
    out.ancestors().nth(4).expect("OUT_DIR is inside a target directory").to_path_buf()
}
