//! Compiling policies once and calling them safely: a fresh instance per
//! call, an epoch deadline, a memory cap, and no ambient capabilities.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flockd_core::Plan;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{self, PolicyBindings, PolicyBindingsPre, wit};
use crate::cache::{CacheOutcome, CompileCache};
use crate::text::{MAX_POLICY_TEXT_BYTES, bounded_text};

/// One epoch tick. Deadlines are whole ticks, so this is their resolution.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// The engine's deadline grows by this per queue, resource, instance and
/// failure in the snapshot: moving the snapshot into a fresh instance alone
/// costs ~1 µs an item, and a policy's own work grows with it. With a flat
/// 50 ms, every built-in times out at 1,000 queues / 10,000 instances and the
/// fleet never scales; an endless loop is still stopped, just later. A
/// policy's own deadline (`with_timeout_for`, `timeout-ms`) is taken as given.
pub const DEADLINE_PER_SNAPSHOT_ITEM: Duration = Duration::from_micros(20);
/// A policy that logs more than this in one call is cut off (its logs, not
/// the call): a chatty plugin must not flood the host's log.
const MAX_LOG_LINES_PER_CALL: usize = 64;
const MAX_LOG_LINE_BYTES: usize = 2048;
/// The most the host copies out of a policy in one go: a returned plan (its
/// lists counted at their size in host memory, its strings byte for byte) or
/// one `log` line. Checked by wasmtime's hostcall fuel before each list or
/// string is copied, so a plan whose million reasons all point at one large
/// string is refused before any of it reaches host memory. Wasmtime's own
/// default is 128 MiB; a plan for thousands of machines is well under 1.
pub const MAX_COPIED_BYTES: usize = 16 << 20;
/// Launch entries one plan may hold. One per resource is enough (its count
/// says how many machines); a chain of policies that each add one per queue
/// stays far below this.
pub const MAX_LAUNCH_ENTRIES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CallLimits {
    /// Wall-clock budget for instantiate + configure + decide, plus
    /// [`DEADLINE_PER_SNAPSHOT_ITEM`] per item of the snapshot.
    pub timeout: Duration,
    /// Cap on all linear memories of the instance together.
    pub memory_bytes: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits { timeout: Duration::from_millis(50), memory_bytes: 64 << 20 }
    }
}

/// Why a component could not become a policy.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("empty file (0 bytes): was it read mid-write? publish by writing elsewhere and renaming")]
    Empty,
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("does not implement world flockd:policy/policy@0.1.0: {0}")]
    WrongWorld(String),
}

/// Why one call of a policy failed. The chain logs it and passes the input
/// plan on unchanged.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("timed out after {0:?} (deadline exceeded)")]
    Timeout(Duration),
    #[error("memory limit of {} MiB exceeded", .0 >> 20)]
    OutOfMemory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("rejected its settings: {0}")]
    Settings(String),
    #[error("returned an error: {0}")]
    Declined(String),
    #[error("returned an invalid plan: {0}")]
    InvalidPlan(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// What one call produced besides its result.
#[derive(Clone, Debug, Default)]
pub struct CallReport {
    pub logs: Vec<(LogLevel, String)>,
    pub elapsed: Duration,
}

/// Shared by every policy: one wasmtime engine, one linker, one epoch ticker.
pub struct PolicyEngine {
    engine: Engine,
    linker: Linker<CallState>,
    limits: CallLimits,
    ticker_stop: Arc<AtomicBool>,
    /// Compiled components on disk, when configured (see `cache.rs`).
    cache: Option<CompileCache>,
    /// Per-policy deadlines replacing `limits.timeout`, by policy name.
    timeouts: std::collections::HashMap<String, Duration>,
}

impl PolicyEngine {
    pub fn new(limits: CallLimits) -> anyhow::Result<Self> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(instance_pool(limits)));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::<CallState>::new(&engine);
        // Rust, Python and JS guests all import WASI through their standard
        // libraries even when they never use it; they get a context with
        // nothing in it (see `CallState::new`).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        PolicyBindings::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new().name("flockd-epoch".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })?;
        Ok(PolicyEngine { engine, linker, limits, ticker_stop, cache: None, timeouts: Default::default() })
    }

    /// Gives the policy named `name` its own per-call deadline (config
    /// `[[policy]] timeout-ms`): for a heavy policy, e.g. an interpreted one
    /// on a large fleet, instead of raising everyone's. An endless loop is
    /// still stopped, only later.
    pub fn with_timeout_for(mut self, name: &str, timeout: Duration) -> Self {
        self.timeouts.insert(name.to_string(), timeout);
        self
    }

    /// The deadline set for `name` with [`with_timeout_for`](Self::with_timeout_for), if any.
    pub fn timeout_for(&self, name: &str) -> Option<Duration> {
        self.timeouts.get(name).copied()
    }

    /// Keeps compiled components in `cache`, so a restart loads them instead
    /// of compiling them again.
    pub fn with_compile_cache(mut self, cache: CompileCache) -> Self {
        self.cache = Some(cache);
        self
    }

    pub fn limits(&self) -> CallLimits {
        self.limits
    }

    pub(crate) fn wasmtime_engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles and links a component against the policy world. CPU-heavy
    /// (tens of ms for Rust, seconds for Python): never call it on an async
    /// executor thread.
    pub fn compile(&self, bytes: &[u8]) -> Result<CompiledPolicy, LoadError> {
        self.compile_cached(bytes).map(|(policy, _)| policy)
    }

    /// [`compile`](Self::compile), saying whether the compile cache served it
    /// (`None` without a cache).
    pub fn compile_cached(&self, bytes: &[u8]) -> Result<(CompiledPolicy, Option<CacheOutcome>), LoadError> {
        if bytes.is_empty() {
            return Err(LoadError::Empty);
        }
        let (component, outcome) = match &self.cache {
            Some(cache) => cache.component(&self.engine, bytes).map(|(c, outcome)| (c, Some(outcome))),
            None => Component::from_binary(&self.engine, bytes).map(|c| (c, None)),
        }
        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let pre = PolicyBindingsPre::new(pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        Ok((CompiledPolicy { pre, timeout: None }, outcome))
    }

    /// One configure + decide on a fresh instance, under the deadline and the
    /// memory cap. The instance is dropped afterwards: no state survives a
    /// call, so a plan depends only on settings, snapshot and plan so far.
    pub fn call(
        &self,
        policy: &CompiledPolicy,
        settings_json: &str,
        snapshot: &wit::Snapshot,
        plan: &Plan,
    ) -> (Result<Plan, CallError>, CallReport) {
        let started = Instant::now();
        let items =
            snapshot.queues.len() + snapshot.resources.len() + snapshot.instances.len() + snapshot.failures.len();
        let (mut store, timeout) = self.bounded_store(policy, snapshot.now, items);

        let result = (|| {
            let bindings: PolicyBindings = policy.pre.instantiate(&mut store).map_err(|e| self.classify(e, timeout))?;
            bindings
                .call_configure(&mut store, settings_json)
                .map_err(|e| self.classify(e, timeout))?
                .map_err(CallError::Settings)?;
            let out = bindings
                .call_decide(&mut store, snapshot, &bindings::plan_to_wit(plan))
                .map_err(|e| self.classify_returned(e, timeout))?
                .map_err(|message| CallError::Declined(bounded_text(message, MAX_POLICY_TEXT_BYTES)))?;
            check_plan_size(&out, snapshot.instances.len())?;
            Ok(bindings::plan_from_wit(out, MAX_POLICY_TEXT_BYTES))
        })();
        let result = result.map_err(|e| store.data().limits.reclassify(e));
        let report = CallReport { logs: std::mem::take(&mut store.data_mut().logs), elapsed: started.elapsed() };
        (result, report)
    }

    /// Only `configure`, for checking settings before a policy goes live.
    pub fn check_settings(&self, policy: &CompiledPolicy, settings_json: &str) -> Result<(), CallError> {
        let (mut store, timeout) = self.bounded_store(policy, 0, 0);
        let result = (|| {
            let bindings: PolicyBindings = policy.pre.instantiate(&mut store).map_err(|e| self.classify(e, timeout))?;
            bindings
                .call_configure(&mut store, settings_json)
                .map_err(|e| self.classify(e, timeout))?
                .map_err(CallError::Settings)
        })();
        result.map_err(|e| store.data().limits.reclassify(e))
    }

    /// A fresh store for one call: the memory cap, and the policy's deadline
    /// (for a snapshot of `items` items) armed before instantiation (epoch 0
    /// would trap at once).
    fn bounded_store(&self, policy: &CompiledPolicy, now_ms: u64, items: usize) -> (Store<CallState>, Duration) {
        let timeout = policy.timeout.unwrap_or_else(|| {
            self.limits.timeout + DEADLINE_PER_SNAPSHOT_ITEM.saturating_mul(u32::try_from(items).unwrap_or(u32::MAX))
        });
        let mut store = Store::new(&self.engine, CallState::new(self.limits.memory_bytes, now_ms));
        store.limiter(|s| &mut s.limits);
        store.set_hostcall_fuel(MAX_COPIED_BYTES);
        store.set_epoch_deadline(deadline_ticks(timeout));
        store.epoch_deadline_trap();
        (store, timeout)
    }

    /// [`classify`](Self::classify) for a call whose result is being read:
    /// an error that is not a trap (the host's only import, `log`, cannot
    /// fail) is the host refusing what the guest handed back: out of its
    /// memory's bounds, not valid text, or more than [`MAX_COPIED_BYTES`].
    fn classify_returned(&self, error: wasmtime::Error, timeout: Duration) -> CallError {
        let unreadable = error.downcast_ref::<Trap>().is_none();
        match self.classify(error, timeout) {
            CallError::Trap(text) if unreadable => CallError::InvalidPlan(format!(
                "could not be read ({text}); the host copies at most {} MiB out of one call",
                MAX_COPIED_BYTES >> 20
            )),
            other => other,
        }
    }

    fn classify(&self, error: wasmtime::Error, timeout: Duration) -> CallError {
        let text = format!("{error:#}");
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Timeout(timeout),
            Some(Trap::UnreachableCodeReached) => {
                CallError::Trap(format!("unreachable code reached (the plugin panicked or aborted): {text}"))
            }
            _ => CallError::Trap(text),
        }
    }
}

impl Drop for PolicyEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Policy calls instantiate afresh every time; a pool of pre-mapped slots
/// makes that a reuse instead of an mmap, page faults and an munmap per call
/// (a third of a call's time without it). Slots are reset between calls, so
/// no state survives; sizes are virtual reservations, generous enough for
/// Python and JavaScript components.
fn instance_pool(limits: CallLimits) -> wasmtime::PoolingAllocationConfig {
    // Calls in flight at once: the chain is sequential, but reload trials
    // and concurrent callers overlap. Running out fails a call, not the host.
    const CONCURRENT_CALLS: u32 = 64;
    let mut pool = wasmtime::PoolingAllocationConfig::new();
    pool.total_component_instances(CONCURRENT_CALLS)
        .total_core_instances(CONCURRENT_CALLS * 16)
        .total_memories(CONCURRENT_CALLS * 4)
        .total_tables(CONCURRENT_CALLS * 16)
        .max_memories_per_module(2)
        .max_tables_per_module(8)
        .table_elements(MAX_TABLE_ELEMENTS)
        .max_core_instance_size(8 << 20)
        .max_component_instance_size(8 << 20)
        .max_memory_size(limits.memory_bytes)
        // Pages up to this are zeroed in place on reuse instead of handed
        // back to the kernel (and faulted in again by the next call).
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(64 << 10);
    pool
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_micros() / EPOCH_TICK.as_micros()).max(1) as u64 + 1
}

/// A component compiled and linked against the policy world, ready to be
/// instantiated cheaply any number of times.
#[derive(Clone)]
pub struct CompiledPolicy {
    pre: PolicyBindingsPre<CallState>,
    /// This policy's own deadline, replacing the engine's.
    timeout: Option<Duration>,
}

impl CompiledPolicy {
    /// Gives this policy its own per-call deadline (`None`: the engine's).
    /// For a policy that is known to need more than the default, e.g. an
    /// interpreted one on a large fleet; an endless loop is still stopped.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

/// Per-call store data.
pub(crate) struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MemoryCap,
    logs: Vec<(LogLevel, String)>,
}

impl CallState {
    fn new(memory_bytes: usize, now_ms: u64) -> Self {
        // No env, args, preopens, stdin or network; stdout/stderr discarded.
        // Clocks are frozen at the snapshot's `now` and randomness is a fixed
        // stream, so even a guest that reads them decides deterministically.
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .wall_clock(FrozenClock(now_ms))
            .monotonic_clock(FrozenClock(now_ms))
            .secure_random(FixedRandom::default())
            .insecure_random(FixedRandom::default())
            .insecure_random_seed(0)
            .build();
        CallState {
            wasi,
            table: ResourceTable::new(),
            limits: MemoryCap { memory_bytes, total: 0, last_grant: None, refused: None },
            logs: Vec::new(),
        }
    }
}

/// Caps the memories of an instance together (a component of several core
/// modules has a memory each: a per-memory cap would multiply) and each
/// table, and remembers a refusal: a Rust guest whose allocation fails
/// aborts, and the host would otherwise only see "unreachable",
/// indistinguishable from a panic.
struct MemoryCap {
    memory_bytes: usize,
    /// Bytes of all the store's memories together, as granted so far.
    total: usize,
    /// The last grant, (current, desired): wasmtime may still fail a grow it
    /// asked about (past the memory's own maximum), and then it is undone.
    last_grant: Option<(usize, usize)>,
    /// The size the guest asked for when it was refused.
    refused: Option<usize>,
}

/// Table elements per table: far beyond what any real policy needs.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryCap {
    /// A trap after a refused growth is the memory limit, whatever the
    /// guest did when its allocation failed; so is an unreadable result (the
    /// refusal is an error, not a trap, when it stops the call).
    fn reclassify(&self, error: CallError) -> CallError {
        match (&error, self.refused) {
            (CallError::Trap(_) | CallError::InvalidPlan(_), Some(_)) => CallError::OutOfMemory(self.memory_bytes),
            _ => error,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total <= self.memory_bytes {
            self.total = total;
            self.last_grant = Some((current, desired));
            return Ok(true);
        }
        self.refused = Some(total);
        // Trapping here (rather than failing the grow) stops the call at
        // once instead of letting the guest limp on without memory.
        Err(wasmtime::Error::msg(format!(
            "memory limit of {} MiB exceeded: the plugin asked for {total} bytes in all",
            self.memory_bytes >> 20
        )))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        // The guest sees its grow fail (-1); its memory did not change.
        if let Some((current, desired)) = self.last_grant.take() {
            self.total = self.total.saturating_sub(desired).saturating_add(current);
        }
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired <= MAX_TABLE_ELEMENTS {
            return Ok(true);
        }
        Err(wasmtime::Error::msg(format!("table limit of {MAX_TABLE_ELEMENTS} elements exceeded")))
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wit::Host for CallState {}

impl bindings::flockd::policy::host::Host for CallState {
    fn log(&mut self, level: wit::LogLevel, message: String) {
        if self.logs.len() >= MAX_LOG_LINES_PER_CALL {
            return;
        }
        let level = match level {
            wit::LogLevel::Debug => LogLevel::Debug,
            wit::LogLevel::Info => LogLevel::Info,
            wit::LogLevel::Warn => LogLevel::Warn,
            wit::LogLevel::Error => LogLevel::Error,
        };
        self.logs.push((level, bounded_text(message, MAX_LOG_LINE_BYTES)));
    }
}

/// A plan larger than any valid plan for a snapshot of `instances`
/// instances could be is refused whole, before it is converted or checked
/// action by action (each entry alone may be valid).
fn check_plan_size(plan: &wit::Plan, instances: usize) -> Result<(), CallError> {
    let (launches, terminations) = (plan.launches.len(), plan.terminations.len());
    if launches > MAX_LAUNCH_ENTRIES {
        return Err(CallError::InvalidPlan(format!(
            "{launches} launch entries; a plan holds at most {MAX_LAUNCH_ENTRIES} (one per resource is enough: its count says how many machines)"
        )));
    }
    if terminations > instances {
        return Err(CallError::InvalidPlan(format!(
            "{terminations} terminations for {instances} instance(s): a plan names each instance at most once"
        )));
    }
    Ok(())
}

struct FrozenClock(u64);

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::from_millis(self.0)
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0.saturating_mul(1_000_000)
    }
}

/// A deterministic byte stream (xorshift) standing in for randomness.
#[derive(Clone)]
struct FixedRandom(u64);

impl Default for FixedRandom {
    fn default() -> Self {
        FixedRandom(0x9E37_79B9_7F4A_7C15)
    }
}

impl FixedRandom {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

impl rand10::TryRng for FixedRandom {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.next() as u32)
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.next())
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dest.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod memory_cap_tests {
    use super::*;

    #[test]
    fn memories_add_up_and_a_failed_grow_is_given_back() {
        let mut cap = MemoryCap { memory_bytes: 100, total: 0, last_grant: None, refused: None };
        assert!(cap.memory_growing(0, 60, None).unwrap());
        assert!(cap.memory_growing(60, 90, None).unwrap());
        // wasmtime failed that grow after all (the memory's own maximum).
        cap.memory_grow_failed(wasmtime::Error::msg("past its maximum")).unwrap();
        // A second memory: 60 + 40 fits the 100 for the instance, one more byte does not.
        assert!(cap.memory_growing(0, 40, None).unwrap());
        assert!(cap.memory_growing(0, 1, None).is_err());
        assert_eq!(cap.refused, Some(101));
    }
}
