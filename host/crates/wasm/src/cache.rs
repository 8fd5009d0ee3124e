//! Compiled policies cached on disk, so a restart does not recompile: a
//! Python or JavaScript policy takes seconds to compile and milliseconds to
//! load from its compiled form.
//!
//! An entry is wasmtime's precompiled component (`<key>.cwasm`) plus a
//! record of its length and sha256 (`<key>.sum`). The key is the sha256 of
//! the engine's compatibility hash and the component bytes, so another
//! engine configuration or another wasmtime simply misses.
//!
//! Loading precompiled code is `unsafe` in wasmtime: the bytes are trusted to
//! be machine code wasmtime produced. So an entry is used only when
//! - it lives in a folder only this user can write (flockd creates it 0700),
//! - both files are regular files (not symlinks) written by this module,
//! - the `.cwasm` has exactly the length and sha256 recorded next to it.
//!
//! Anything else (a corrupt, truncated, foreign or incompatible entry) is a
//! miss: compiled afresh and replaced. Files are written to a temporary name
//! and renamed into place, never rewritten in place, because a loaded entry
//! is memory-mapped by every flockd using it.

use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Entries kept, most recently used first; older ones are deleted when a new
/// one is written. A Python policy's entry is ~50 MB.
pub const DEFAULT_MAX_ENTRIES: usize = 16;

/// How a compile request was served, for logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a valid entry.
    Hit,
    /// No usable entry: compiled, and the entry written.
    Miss,
    /// An entry existed but was not trusted (corrupt, truncated, foreign,
    /// incompatible): compiled afresh and the entry replaced.
    Rebuilt,
    /// Compiled, but the entry could not be written (the reason is logged).
    Uncached,
}

/// A folder of compiled policies.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    max_entries: usize,
}

impl CompileCache {
    /// Opens (creating, mode 0700) the cache folder. Refuses a folder that
    /// other users can write: flockd would be running code they put there.
    pub fn open(dir: impl Into<PathBuf>) -> Result<CompileCache, String> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create the policy cache folder {}: {e}", dir.display()))?;
        let meta = fs::symlink_metadata(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if !meta.is_dir() {
            return Err(format!("policy cache {} is not a folder (a symlink?): give a plain folder", dir.display()));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(format!(
                "policy cache folder {} is writable by other users (mode {:o}): flockd runs the code it finds there; \
                 `chmod go-w` it or choose another folder",
                dir.display(),
                meta.mode() & 0o777
            ));
        }
        Ok(CompileCache { dir, max_entries: DEFAULT_MAX_ENTRIES })
    }

    pub fn with_max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(1);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `bytes` compiled by `engine` lives (whether or not
    /// it exists yet).
    pub fn entry_path(&self, engine: &Engine, bytes: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.cwasm", key(engine, bytes)))
    }

    /// The compiled component for `bytes`: from a valid entry, or compiled
    /// and stored. Only compile errors are returned; cache trouble is logged
    /// and costs a compile, never a policy.
    pub fn component(&self, engine: &Engine, bytes: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
        let cwasm = self.entry_path(engine, bytes);
        let sum = cwasm.with_extension("sum");
        let existed = cwasm.exists() || sum.exists();
        if existed {
            match self.load(engine, &cwasm, &sum) {
                Ok(component) => {
                    // Recently used entries survive pruning.
                    let _ = File::options().write(true).open(&sum).and_then(|f| f.set_modified(SystemTime::now()));
                    return Ok((component, CacheOutcome::Hit));
                }
                Err(why) => {
                    tracing::warn!(entry = %cwasm.display(), "ignoring a policy cache entry and recompiling: {why}");
                }
            }
        }
        let compiled = engine.precompile_component(bytes)?;
        match self.store(&cwasm, &sum, &compiled) {
            Ok(()) => {
                self.prune(&sum);
                // Loading from the file maps it instead of copying it.
                // SAFETY: written just now by `store`, from wasmtime's own output.
                match unsafe { Component::deserialize_file(engine, &cwasm) } {
                    Ok(component) => Ok((component, if existed { CacheOutcome::Rebuilt } else { CacheOutcome::Miss })),
                    Err(_) => uncached(engine, &compiled),
                }
            }
            Err(e) => {
                tracing::warn!(folder = %self.dir.display(), "cannot write the policy cache, compiling without it: {e}");
                uncached(engine, &compiled)
            }
        }
    }

    /// Checks an entry, then loads it. Every reason to distrust it is an `Err`.
    fn load(&self, engine: &Engine, cwasm: &Path, sum: &Path) -> Result<Component, String> {
        let (length, digest) = read_sum(sum)?;
        let meta = fs::symlink_metadata(cwasm).map_err(|e| format!("cannot read it: {e}"))?;
        if !meta.is_file() || meta.mode() & 0o022 != 0 {
            return Err("not a regular file only flockd's user can write".into());
        }
        if meta.len() != length {
            return Err(format!("{} bytes, {length} recorded: truncated or replaced", meta.len()));
        }
        let mut file = File::open(cwasm).map_err(|e| format!("cannot open it: {e}"))?;
        if sha256_of(&mut file).map_err(|e| format!("cannot read it: {e}"))? != digest {
            return Err("its sha256 differs from the one recorded: corrupt".into());
        }
        // SAFETY: a file in flockd's own folder, written by `store` from
        // wasmtime's output, and byte-for-byte what was written (length and
        // sha256 checked above). wasmtime still checks version and config.
        unsafe { Component::deserialize_file(engine, cwasm) }.map_err(|e| format!("wasmtime refused it: {e:#}"))
    }

    /// Writes both files under temporary names, then renames them into
    /// place: the `.sum` last, so an entry is never complete before its
    /// `.cwasm` is.
    fn store(&self, cwasm: &Path, sum: &Path, compiled: &[u8]) -> io::Result<()> {
        let _ = fs::remove_file(sum);
        write_then_rename(cwasm, compiled)?;
        let record = format!("{} {}\n", compiled.len(), hex::encode(Sha256::digest(compiled)));
        write_then_rename(sum, record.as_bytes())
    }

    /// Deletes all but the `max_entries` most recently used entries (and
    /// temporary files left by a crash), never `keep`.
    fn prune(&self, keep: &Path) {
        let Ok(listing) = fs::read_dir(&self.dir) else { return };
        let mut sums = Vec::new();
        for entry in listing.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            if name.starts_with('.') && name.ends_with(".partial") {
                // Another process may be writing it right now: only old ones.
                if modified.elapsed().is_ok_and(|age| age.as_secs() > 3600) {
                    let _ = fs::remove_file(&path);
                }
            } else if name.ends_with(".sum") && path != keep {
                sums.push((modified, path));
            }
        }
        sums.sort_by_key(|(modified, _)| std::cmp::Reverse(*modified));
        for (_, sum) in sums.into_iter().skip(self.max_entries.saturating_sub(1)) {
            let _ = fs::remove_file(&sum);
            let _ = fs::remove_file(sum.with_extension("cwasm"));
        }
    }
}

fn uncached(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<(Component, CacheOutcome)> {
    // SAFETY: `compiled` is what `precompile_component` returned just now.
    let component = unsafe { Component::deserialize(engine, compiled) }?;
    Ok((component, CacheOutcome::Uncached))
}

/// sha256 over the engine's compatibility hash and the component bytes.
fn key(engine: &Engine, bytes: &[u8]) -> String {
    struct Sha256Hasher(Sha256);
    impl Hasher for Sha256Hasher {
        fn finish(&self) -> u64 {
            unreachable!("only fed, never finished")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hasher.write(b"\0flockd-policy-component\0");
    hasher.write(bytes);
    hex::encode(&hasher.0.finalize()[..16])
}

fn read_sum(path: &Path) -> Result<(u64, String), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("no checksum record: {e}"))?;
    if !meta.is_file() || meta.mode() & 0o022 != 0 || meta.len() > 256 {
        return Err("its checksum record is not a small regular file only flockd's user can write".into());
    }
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read its checksum record: {e}"))?;
    let mut fields = text.split_whitespace();
    match (fields.next().and_then(|n| n.parse().ok()), fields.next(), fields.next()) {
        (Some(length), Some(digest), None) if digest.len() == 64 => Ok((length, digest.to_string())),
        _ => Err("its checksum record is malformed".into()),
    }
}

fn sha256_of(file: &mut File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buffer[..n]);
    }
}

fn write_then_rename(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = path.with_file_name(format!(
        ".{name}.{}.{}.partial",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = File::options().write(true).create_new(true).mode(0o600).open(&staging)?;
        file.write_all(bytes)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.sync_all()?;
        fs::rename(&staging, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&staging);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        Engine::new(&config).unwrap()
    }

    fn policy_bytes(name: &str) -> &'static [u8] {
        crate::builtin::component(name).expect("a built-in policy")
    }

    #[test]
    fn a_second_engine_loads_what_the_first_compiled() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = policy_bytes("scale-up");
        let cache = CompileCache::open(dir.path()).unwrap();
        assert_eq!(cache.component(&engine(), bytes).unwrap().1, CacheOutcome::Miss);
        let cache = CompileCache::open(dir.path()).unwrap();
        assert_eq!(cache.component(&engine(), bytes).unwrap().1, CacheOutcome::Hit);
        let mode = fs::metadata(cache.entry_path(&engine(), bytes)).unwrap().mode();
        assert_eq!(mode & 0o077, 0, "entries are private to flockd's user");
    }

    #[test]
    fn another_engine_configuration_misses() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = policy_bytes("scale-up");
        let cache = CompileCache::open(dir.path()).unwrap();
        cache.component(&engine(), bytes).unwrap();
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let other = Engine::new(&config).unwrap();
        assert_ne!(cache.entry_path(&other, bytes), cache.entry_path(&engine(), bytes));
        assert_eq!(cache.component(&other, bytes).unwrap().1, CacheOutcome::Miss);
    }

    /// Each way an entry can go bad is noticed, recompiled, and the entry
    /// repaired: the next load is a hit again.
    #[test]
    fn corrupt_truncated_or_foreign_entries_are_rebuilt_never_loaded() {
        let bytes = policy_bytes("idle");
        type Spoil = fn(&Path);
        let spoil: [(&str, Spoil); 5] = [
            ("one flipped byte", |p| {
                let mut data = fs::read(p).unwrap();
                let middle = data.len() / 2;
                data[middle] ^= 0x40;
                fs::write(p, data).unwrap();
            }),
            ("truncated", |p| {
                let data = fs::read(p).unwrap();
                fs::write(p, &data[..data.len() / 3]).unwrap();
            }),
            ("checksum record missing", |p| fs::remove_file(p.with_extension("sum")).unwrap()),
            ("writable by others", |p| fs::set_permissions(p, fs::Permissions::from_mode(0o666)).unwrap()),
            ("replaced by a symlink", |p| {
                let elsewhere = p.with_extension("elsewhere");
                fs::rename(p, &elsewhere).unwrap();
                std::os::unix::fs::symlink(&elsewhere, p).unwrap();
            }),
        ];
        for (what, spoil) in spoil {
            let dir = tempfile::tempdir().unwrap();
            let cache = CompileCache::open(dir.path()).unwrap();
            cache.component(&engine(), bytes).unwrap();
            spoil(&cache.entry_path(&engine(), bytes));
            assert_eq!(cache.component(&engine(), bytes).unwrap().1, CacheOutcome::Rebuilt, "{what}");
            assert_eq!(cache.component(&engine(), bytes).unwrap().1, CacheOutcome::Hit, "{what}: repaired");
        }
    }

    #[test]
    fn a_folder_other_users_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let error = CompileCache::open(dir.path()).unwrap_err();
        assert!(error.contains("writable by other users"), "{error}");
    }

    #[test]
    fn an_invalid_component_is_an_error_and_leaves_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap();
        assert!(cache.component(&engine(), b"\0asm not really").is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn only_the_most_recently_used_entries_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CompileCache::open(dir.path()).unwrap().with_max_entries(2);
        for name in ["scale-up", "idle", "budget"] {
            cache.component(&engine(), policy_bytes(name)).unwrap();
        }
        let entries = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(entries, 4, "two entries of two files each");
        assert_eq!(cache.component(&engine(), policy_bytes("budget")).unwrap().1, CacheOutcome::Hit);
        assert_eq!(cache.component(&engine(), policy_bytes("scale-up")).unwrap().1, CacheOutcome::Miss);
    }
}
