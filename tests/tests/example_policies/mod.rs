//! The example policies in other languages (`examples/policies/{python,js}`),
//! built by their own `build.sh` into `target/example-policies/` and rebuilt
//! only when a source is newer than the component. Shared by the tests and
//! the benchmark through `#[path]`; each binary builds at most once.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// One example: its folder, its build output, and what the build reads.
pub struct Example {
    pub folder: &'static str,
    pub component: &'static str,
    sources: &'static [&'static str],
    built: OnceLock<PathBuf>,
}

/// The Rust example (night-freeze), built by cargo in its own folder.
pub static RUST: Example = Example {
    folder: "examples/policies/rust",
    component: "night_freeze.wasm",
    sources: &["src/lib.rs", "Cargo.toml", "Cargo.lock"],
    built: OnceLock::new(),
};

pub static PYTHON: Example = Example {
    folder: "examples/policies/python",
    component: "warm_pool.wasm",
    sources: &["warm_pool.py", "build.sh"],
    built: OnceLock::new(),
};

pub static JS: Example = Example {
    folder: "examples/policies/js",
    component: "cheapest_first.wasm",
    sources: &["cheapest_first.js", "build.sh", "package-lock.json"],
    built: OnceLock::new(),
};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_path_buf()
}

impl Example {
    pub fn dir(&self) -> PathBuf {
        repo().join(self.folder)
    }

    /// The component, built if missing or older than any source (or the WIT).
    pub fn path(&self) -> &Path {
        self.built.get_or_init(|| {
            let target =
                std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));
            let out = target.join("example-policies").join(self.component);
            let newest_source = self
                .sources
                .iter()
                .map(|s| self.dir().join(s))
                .chain(std::fs::read_dir(repo().join("wit/v0.1.0")).expect("wit folder").flatten().map(|e| e.path()))
                .map(|p| modified(&p).unwrap_or_else(|| panic!("{} is missing", p.display())))
                .max()
                .expect("sources");
            if modified(&out).is_none_or(|built| built < newest_source) {
                std::fs::create_dir_all(out.parent().unwrap()).expect("create target/example-policies");
                let status = self
                    .build_command(&out)
                    .status()
                    .unwrap_or_else(|e| panic!("cannot run {}/build.sh: {e}", self.folder));
                assert!(
                    status.success(),
                    "{}/build.sh failed ({status}): run scripts/setup, then the script by hand",
                    self.folder
                );
            }
            out
        })
    }

    fn build_command(&self, out: &Path) -> Command {
        if self.folder.ends_with("rust") {
            // cargo writes into the example's own target folder; copy it out
            // so every example is found the same way.
            let built = self.dir().join("target/wasm32-wasip2/release").join(self.component);
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("cargo build --quiet --release --target wasm32-wasip2 --manifest-path \"$1/Cargo.toml\" && cp \"$2\" \"$3.partial\" && mv \"$3.partial\" \"$3\"")
                .args(["build-rust-example", &self.dir().display().to_string()])
                .arg(&built)
                .arg(out)
                // Set by the cargo running these tests; they would point the
                // example's build at the host's target folder and profile.
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("CARGO_BUILD_TARGET")
                .env_remove("RUSTFLAGS");
            return sh;
        }
        let mut script = Command::new(self.dir().join("build.sh"));
        script.arg(out);
        script
    }

    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(self.path()).expect("read the built example")
    }

    pub fn cases(&self) -> PathBuf {
        self.dir().join("cases.toml")
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
