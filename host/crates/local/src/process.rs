//! What Linux says about a process, and signals to process groups. A pid
//! alone does not name a process for long (pids are reused), so a process is
//! named by (boot id, pid, start time in clock ticks since boot).

use std::fs;
use std::io;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process as it was when flockd started it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProcessIdentity {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: ticks since boot when it started.
    pub start_ticks: u64,
    /// `/proc/sys/kernel/random/boot_id`: start times restart at each boot.
    pub boot_id: String,
}

impl ProcessIdentity {
    /// Reads the identity of a live process.
    pub fn of(pid: i32) -> io::Result<Self> {
        let stat =
            read_stat(pid)?.ok_or_else(|| io::Error::other(format!("process {pid} vanished right after start")))?;
        Ok(ProcessIdentity { pid, start_ticks: stat.start_ticks, boot_id: boot_id()? })
    }

    /// True while this very process (not a later one with the same pid) runs
    /// and is not a zombie.
    pub fn is_alive(&self) -> bool {
        if boot_id().ok().as_deref() != Some(self.boot_id.as_str()) {
            return false;
        }
        match read_stat(self.pid) {
            Ok(Some(stat)) => stat.start_ticks == self.start_ticks && !matches!(stat.state, 'Z' | 'X'),
            _ => false,
        }
    }
}

struct Stat {
    state: char,
    process_group: i32,
    start_ticks: u64,
}

/// `/proc/<pid>/stat`, or None if there is no such process.
fn read_stat(pid: i32) -> io::Result<Option<Stat>> {
    let text = match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The command name (field 2) may hold spaces and parentheses: the fields
    // we want come after its last ')'.
    let after_name = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat: {text}")))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), field 5 (pgrp) is fields[2], field 22
    // (starttime) is fields[19].
    let state = fields.first().and_then(|s| s.chars().next());
    let process_group = fields.get(2).and_then(|s| s.parse().ok());
    let start_ticks = fields.get(19).and_then(|s| s.parse().ok());
    match (state, process_group, start_ticks) {
        (Some(state), Some(process_group), Some(start_ticks)) => Ok(Some(Stat { state, process_group, start_ticks })),
        _ => Err(io::Error::other(format!("unexpected /proc/{pid}/stat: {text}"))),
    }
}

fn boot_id() -> io::Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_owned())
}

/// The process-group leader (pid == pgid) whose environment holds
/// `KEY=VALUE`, if one runs. Its children inherit the variable but lead no
/// group, so the result is the process flockd started.
pub fn find_group_leader_with_env(key: &str, value: &str) -> io::Result<Option<i32>> {
    for pid in pids()? {
        let pid = pid?;
        if !has_env(pid, key, value) {
            continue;
        }
        if let Ok(Some(stat)) = read_stat(pid)
            && stat.process_group == pid
            && !matches!(stat.state, 'Z' | 'X')
        {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// True while a live process of group `pgid` has `KEY=VALUE` in its
/// environment: what a leader started lives on after it (the variable is
/// inherited), and a stranger's group that reused the number does not have it.
pub fn group_member_with_env(pgid: i32, key: &str, value: &str) -> io::Result<bool> {
    for pid in pids()? {
        let pid = pid?;
        if let Ok(Some(stat)) = read_stat(pid)
            && stat.process_group == pgid
            && !matches!(stat.state, 'Z' | 'X')
            && has_env(pid, key, value)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Every pid in /proc (a process may be gone by the time it is looked at).
fn pids() -> io::Result<impl Iterator<Item = io::Result<i32>>> {
    Ok(fs::read_dir("/proc")?.filter_map(|entry| match entry {
        Ok(entry) => entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()).map(Ok),
        Err(e) => Some(Err(e)),
    }))
}

/// Whether `KEY=VALUE` is in the process's environment. Unreadable (another
/// user's) or gone meanwhile: not ours.
fn has_env(pid: i32, key: &str, value: &str) -> bool {
    let needle = format!("{key}={value}");
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
}

/// Sends `signal` to every process in group `pgid`. Ok(false) if the group
/// has no process left.
pub fn signal_group(pgid: i32, signal: Option<Signal>) -> io::Result<bool> {
    match killpg(Pid::from_raw(pgid), signal) {
        Ok(()) => Ok(true),
        Err(Errno::ESRCH) => Ok(false),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// True while any process of the group runs. Zombies do not count: once
/// their parent died they wait for pid 1 to reap them, and in a container
/// pid 1 may never do so.
pub fn group_running(pgid: i32) -> io::Result<bool> {
    if !signal_group(pgid, None)? {
        return Ok(false);
    }
    for pid in pids()? {
        let pid = pid?;
        if let Ok(Some(stat)) = read_stat(pid)
            && stat.process_group == pgid
            && !matches!(stat.state, 'Z' | 'X')
        {
            return Ok(true);
        }
    }
    Ok(false)
}
