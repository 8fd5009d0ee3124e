//! Compiles the default policies in `plugins/` to components and embeds them,
//! so a freshly built flockd decides with no plugin files on disk.

use std::path::PathBuf;

/// Built-in policies, in the default chain order.
const BUILTINS: &[&str] = &["scale-up", "spin-up-timeout", "idle", "budget"];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let repo = manifest_dir.ancestors().nth(3).unwrap();
    println!("cargo:rerun-if-changed={}", repo.join("wit").display());
    println!("cargo:rerun-if-changed={}", repo.join("plugins/sdk").display());
    let components = flockd_wasm_build::build_components(&repo.join("plugins/Cargo.toml"), BUILTINS);

    let mut code =
        String::from("/// (name, component bytes, case file) of each built-in policy, in default chain order.\n");
    code.push_str("pub static BUILTINS: &[(&str, &[u8], &str)] = &[\n");
    for (name, path) in BUILTINS.iter().zip(&components) {
        let cases = repo.join("plugins").join(name).join("cases.toml");
        let cases =
            if cases.exists() { format!("include_str!({:?})", cases.display().to_string()) } else { "\"\"".into() };
        code.push_str(&format!("    ({name:?}, include_bytes!({:?}), {cases}),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtins.rs");
    std::fs::write(out, code).unwrap();
}
