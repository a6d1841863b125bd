//! Where each worker's process tree lives, so that nothing a worker starts
//! outlives it: a cgroup of its own when systemd delegated baton's cgroup
//! (`Delegate=yes`), process groups otherwise.
//!
//! # Cgroup mode
//!
//! At start, baton finds its own cgroup (`0::/path` in /proc/self/cgroup) and
//! the cgroup2 mount (/proc/self/mountinfo: /sys/fs/cgroup on a unified host,
//! /sys/fs/cgroup/unified on a hybrid one). It uses that cgroup only if
//! systemd marked it delegated (the `user.delegate` or `trusted.delegate`
//! extended attribute, which systemd 251+ sets for `Delegate=yes`): without
//! delegation systemd owns the subtree, even where root could write it. Then,
//! inside the unit's cgroup, say `/system.slice/myapp.service`:
//!
//! - `supervisor/` holds baton itself. cgroup2 allows processes only in
//!   leaves once controllers are enabled below a node, so baton leaves the
//!   unit's own cgroup first.
//! - `gen<G>-worker<S>-id<N>/` holds worker slot S of generation G (N is the
//!   worker's id in `baton status`, unique for the life of this baton), with
//!   everything it forks. The child joins it between fork and exec by
//!   writing "0" to a `cgroup.procs` descriptor opened before the fork, so
//!   not even the app's first instruction runs outside.
//! - `.control/` is systemd's, for ExecReload and friends; baton leaves it alone.
//!
//! Retiring a worker sends its stop signal, then writes `cgroup.kill` at the
//! stop timeout. When a worker's main process exits, its cgroup is killed too
//! (KillMode=mixed semantics). `cgroup.kill` reaches every process in the
//! cgroup whatever it did with sessions and process groups; the empty cgroup
//! is then removed.
//!
//! Memory per worker is `memory.current` when the memory controller is
//! available on cgroup2 (baton enables it in the unit's `subtree_control`),
//! and OOM kills are read from `memory.events`. On a host whose memory
//! controller is bound to cgroup v1 (a *hybrid* layout, as on Debian 10/11
//! style hosts and in some containers) neither file exists: baton then sums
//! the resident memory of the processes listed in the worker's
//! `cgroup.procs`, and `baton status` says which source it used.
//!
//! # Process-group mode
//!
//! Standalone, under a unit without `Delegate=yes`, without a writable
//! cgroup2 or without `cgroup.kill` (Linux < 5.14), each worker leads a
//! process group of its own, killed with `killpg`, and memory is the resident
//! memory summed over the group from /proc. A process that leaves the group
//! (`setsid`) escapes this; baton, as child subreaper, adopts such orphans.
//!
//! # Why hand-written
//!
//! The `cgroups-rs` crate manages controllers and limits for container
//! runtimes; baton needs none of that, only a handful of text files
//! (`cgroup.procs`, `cgroup.kill`, `cgroup.events`, `memory.current`,
//! `memory.events`) plus two things that crate doesn't do: the delegation
//! check, and a `cgroup.procs` descriptor for the child to write between
//! fork and exec. A few dozen lines of file I/O are easier to audit.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::os::procfs;

/// Which mechanism holds each worker's process tree (`baton status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Cgroup,
    ProcessGroup,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Cgroup => "cgroup",
            Mode::ProcessGroup => "process-group",
        })
    }
}

/// The name of the leaf baton moves itself into.
pub const SUPERVISOR: &str = "supervisor";

/// baton's delegated cgroup, in which each worker gets a cgroup of its own.
#[derive(Debug)]
pub struct Tree {
    /// The unit's cgroup directory, e.g.
    /// /sys/fs/cgroup/unified/system.slice/myapp.service.
    dir: PathBuf,
    /// The same as a cgroup path, e.g. /system.slice/myapp.service.
    path: String,
    /// Whether worker cgroups have `memory.current` and `memory.events`.
    memory: bool,
    /// Empty worker cgroups of an earlier baton, removed at start.
    pub stale: usize,
}

impl Tree {
    /// Sets up cgroup mode, or says why process groups are used instead.
    ///
    /// Moves baton into `supervisor/`, so call it before any worker exists.
    pub fn setup() -> Result<Tree, String> {
        let own =
            std::fs::read_to_string("/proc/self/cgroup").map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let path = own_cgroup(&own).ok_or("no cgroup2 hierarchy (cgroup v1 only)")?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let dir = cgroup_dir(&mountinfo, &path).ok_or_else(|| format!("cgroup {path} is not under a cgroup2 mount"))?;
        if !is_delegated(&dir) {
            return Err(format!(
                "cgroup {path} is not delegated to baton (Delegate=yes in the unit enables it)"
            ));
        }
        let mut path = path;
        let mut dir = dir;
        // Already in our own leaf: an earlier baton in this unit exec'd us,
        // or we are the same process set up twice.
        if dir.file_name().is_some_and(|n| n == SUPERVISOR) {
            if let Some(parent) = dir.parent().filter(|p| is_delegated(p)) {
                dir = parent.to_owned();
                path = path.rsplit_once('/').map(|(p, _)| p.to_owned()).unwrap_or_default();
            }
        }
        if !dir.join("cgroup.kill").exists() {
            return Err("the kernel has no cgroup.kill (Linux 5.14 or later is needed)".to_owned());
        }
        let leaf = dir.join(SUPERVISOR);
        match std::fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
        }
        write_file(&leaf.join("cgroup.procs"), std::process::id().to_string().as_bytes())
            .map_err(|e| format!("cannot move baton into {}: {e}", leaf.display()))?;

        // systemd removes the whole subtree when the unit stops, so worker
        // cgroups left here are empty ones of an earlier baton that was
        // exec'd in place; rmdir fails on any that still holds a process,
        // which stays as it is.
        let mut stale = 0;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_name().to_string_lossy().starts_with("gen") && std::fs::remove_dir(entry.path()).is_ok() {
                    stale += 1;
                }
            }
        }

        let memory = std::fs::read_to_string(dir.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
            && write_file(&dir.join("cgroup.subtree_control"), b"+memory").is_ok();
        Ok(Tree {
            dir,
            path,
            memory,
            stale,
        })
    }

    /// The unit's cgroup path, e.g. /system.slice/myapp.service.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where per-worker memory comes from.
    pub fn memory_source(&self) -> MemorySource {
        if self.memory {
            MemorySource::MemoryCurrent
        } else {
            MemorySource::CgroupRss
        }
    }

    /// Creates the cgroup for worker `id` (slot `slot` of `generation`) and
    /// opens its `cgroup.procs` for the child to join before exec.
    pub fn worker(&self, generation: u64, slot: usize, id: u64) -> io::Result<(Arc<WorkerCgroup>, OwnedFd)> {
        let name = format!("gen{generation}-worker{slot}-id{id}");
        let dir = self.dir.join(&name);
        std::fs::create_dir(&dir)?;
        let procs = std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs"))?;
        let cgroup = WorkerCgroup {
            dir,
            // The unit's cgroup is "/" inside a cgroup namespace of its own
            // (ProtectControlGroups=private).
            path: format!("{}/{name}", self.path.trim_end_matches('/')),
            memory: self.memory,
        };
        Ok((Arc::new(cgroup), procs.into()))
    }
}

impl Tree {
    /// The cgroup `name` that a previous image created for a worker it
    /// handed over (`baton upgrade`).
    pub fn adopt(&self, name: &str) -> Arc<WorkerCgroup> {
        Arc::new(WorkerCgroup {
            dir: self.dir.join(name),
            path: format!("{}/{name}", self.path.trim_end_matches('/')),
            memory: self.memory,
        })
    }
}

/// One worker's cgroup.
#[derive(Debug)]
pub struct WorkerCgroup {
    dir: PathBuf,
    path: String,
    memory: bool,
}

impl WorkerCgroup {
    /// The cgroup path, e.g. /system.slice/myapp.service/gen3-worker1-id17.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Its directory's name, e.g. gen3-worker1-id17.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// SIGKILL to every process in it, whatever its session or group.
    pub fn kill(&self) {
        if let Err(e) = write_file(&self.dir.join("cgroup.kill"), b"1") {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot kill cgroup {}: {e}", self.path);
            }
        }
    }

    /// Whether any process is left in it (`cgroup.events`).
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|events| keyed(&events, "populated") != Some(0))
            .unwrap_or(false)
    }

    /// Removes the (empty) cgroup. A cgroup still holding processes is busy.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// How many processes in it the kernel's OOM killer killed
    /// (`memory.events`), where the memory controller is on cgroup2.
    pub fn oom_kills(&self) -> Option<u64> {
        if !self.memory {
            return None;
        }
        let events = std::fs::read_to_string(self.dir.join("memory.events")).ok()?;
        keyed(&events, "oom_kill")
    }

    /// Memory in use: `memory.current`, or the resident memory of its
    /// processes. Reads /proc: call it off the event loop.
    fn usage(&self) -> Option<u64> {
        if self.memory {
            return std::fs::read_to_string(self.dir.join("memory.current"))
                .ok()?
                .trim()
                .parse()
                .ok();
        }
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).ok()?;
        Some(
            procs
                .lines()
                .filter_map(|pid| procfs::rss_bytes(pid.trim().parse().ok()?))
                .sum(),
        )
    }

    /// CPU time of everything that ran in it: `cpu.stat` usage_usec, which
    /// cgroup2 keeps without the cpu controller. Reads cgroupfs: call it
    /// off the event loop.
    fn cpu_usec(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).ok()?;
        keyed(&stat, "usage_usec")
    }

    /// Kills what is left and removes the cgroup once it is empty, for up
    /// to `patience`. Dying processes leave their cgroup when they exit,
    /// before they are reaped.
    pub async fn remove_when_empty(&self, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        let mut pause = Duration::from_millis(5);
        loop {
            if !self.populated() {
                match self.remove() {
                    Ok(()) => return,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => {
                        tracing::warn!("cannot remove cgroup {}: {e}", self.path);
                        return;
                    }
                }
            } else {
                self.kill();
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "cgroup {} still has processes after {}; leaving it to systemd",
                    self.path,
                    humantime::format_duration(patience)
                );
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

/// Where `baton status` and `[limits] memory` get a worker's memory from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemorySource {
    /// The worker cgroup's `memory.current` (includes page cache).
    MemoryCurrent,
    /// Resident memory summed over the pids in the worker's `cgroup.procs`
    /// (no memory controller on cgroup2).
    CgroupRss,
    /// Resident memory summed over the worker's process group, from /proc.
    ProcessGroupRss,
}

impl std::fmt::Display for MemorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemorySource::MemoryCurrent => "memory.current of each worker's cgroup",
            MemorySource::CgroupRss => {
                "resident memory of the processes in each worker's cgroup (no memory controller on cgroup2)"
            }
            MemorySource::ProcessGroupRss => "resident memory of each worker's process group",
        })
    }
}

/// What to measure for one worker.
#[derive(Debug, Clone)]
pub enum Probe {
    Cgroup(Arc<WorkerCgroup>),
    /// The process group led by this pid.
    Group(i32),
}

/// Resident memory and CPU ticks per process group (a worker leads its own
/// group, so this is a worker with its children), from one pass over
/// baton's descendants. A worker's group holds only its descendants: its
/// members are forked from it, and an orphan comes back to baton, the
/// child subreaper; a process that left with setsid is in another group.
/// So the other processes of the machine need not be read, unless the
/// kernel has no children files: then every process in /proc is. It reads
/// a few files per process: call it off the event loop (`spawn_blocking`).
pub fn usage_by_group() -> HashMap<i32, (u64, u64)> {
    let mut groups = HashMap::new();
    let pids = procfs::descendants().unwrap_or_else(|| procfs::pids().collect());
    for pid in pids {
        // A zombie has no memory left to count, and its CPU time moves to
        // its parent's cutime once reaped.
        let Some(stat) = procfs::stat(pid).filter(|s| s.state != 'Z') else {
            continue;
        };
        let entry: &mut (u64, u64) = groups.entry(stat.pgrp).or_default();
        entry.0 += procfs::rss_bytes(pid).unwrap_or(0);
        entry.1 = entry.1.saturating_add(stat.cpu_ticks);
    }
    groups
}

/// Memory per worker. Blocking (it reads /proc and cgroupfs): run it with
/// `spawn_blocking`, never on the event loop.
pub fn measure<K: Copy + Eq + std::hash::Hash>(probes: &[(K, Probe)]) -> HashMap<K, u64> {
    measure_usage(probes)
        .into_iter()
        .filter_map(|(k, u)| Some((k, u.memory?)))
        .collect()
}

/// A worker's resources, as `measure_usage` found them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// As in [`measure`].
    pub memory: Option<u64>,
    /// CPU time: the cgroup's `cpu.stat` usage_usec (every process that
    /// ever ran in it), or the process group's utime + stime (+ the
    /// children they waited for) from /proc, which drops when a member
    /// exits unwaited-for.
    pub cpu_seconds: Option<f64>,
}

/// Memory and CPU time per worker. Blocking, like [`measure`].
pub fn measure_usage<K: Copy + Eq + std::hash::Hash>(probes: &[(K, Probe)]) -> HashMap<K, Usage> {
    let groups = probes
        .iter()
        .any(|(_, p)| matches!(p, Probe::Group(_)))
        .then(usage_by_group)
        .unwrap_or_default();
    let tick = procfs::ticks_per_second() as f64;
    probes
        .iter()
        .map(|(k, p)| {
            let usage = match p {
                Probe::Cgroup(c) => Usage {
                    memory: c.usage(),
                    cpu_seconds: c.cpu_usec().map(|us| us as f64 / 1e6),
                },
                Probe::Group(leader) => match groups.get(leader) {
                    Some(&(rss, ticks)) => Usage {
                        memory: Some(rss),
                        cpu_seconds: Some(ticks as f64 / tick),
                    },
                    None => Usage::default(),
                },
            };
            (*k, usage)
        })
        .collect()
}

/// `key value` lines, as in cgroup.events and memory.events.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The cgroup2 path in /proc/self/cgroup (`0::/path`). A path outside our
/// cgroup namespace shows as `/..`, which we cannot use.
fn own_cgroup(proc_self_cgroup: &str) -> Option<String> {
    let path = proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    (path.starts_with('/') && !path.split('/').any(|c| c == "..")).then(|| path.to_owned())
}

/// The directory of cgroup `path` under the cgroup2 mount in mountinfo.
fn cgroup_dir(mountinfo: &str, path: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        // id parent major:minor root mount-point ...
        let mut fields = left.split_whitespace();
        let root = unescape(fields.nth(3)?);
        let mount_point = unescape(fields.next()?);
        let rest = if root == "/" {
            path
        } else {
            path.strip_prefix(root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))?
        };
        let rest = rest.trim_start_matches('/');
        Some(if rest.is_empty() {
            PathBuf::from(mount_point)
        } else {
            Path::new(&mount_point).join(rest)
        })
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// systemd marks a cgroup it delegated with `trusted.delegate=1` (251+,
/// readable by root only) and `user.delegate=1` (252+).
fn is_delegated(dir: &Path) -> bool {
    ["user.delegate", "trusted.delegate"]
        .iter()
        .any(|name| matches!(xattr::get(dir, name), Ok(Some(v)) if v == b"1"))
}

/// cgroupfs files take one write each.
fn write_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    std::fs::OpenOptions::new().write(true).open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn finds_the_cgroup2_path() {
        let hybrid = "9:name=systemd:/system.slice/x.service\n4:memory:/\n0::/system.slice/x.service\n";
        assert_eq!(own_cgroup(hybrid).as_deref(), Some("/system.slice/x.service"));
        assert_eq!(own_cgroup("4:memory:/\n"), None);
        assert_eq!(own_cgroup("0::/..\n"), None);
    }

    #[test]
    fn finds_the_mount_on_unified_and_hybrid_hosts() {
        let unified = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup_dir(unified, "/system.slice/x.service"),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/x.service"))
        );
        let hybrid = "50 45 0:32 / /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n\
                      54 45 0:38 / /sys/fs/cgroup/unified rw shared:21 - cgroup2 cgroup rw\n";
        assert_eq!(
            cgroup_dir(hybrid, "/system.slice/x.service"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/system.slice/x.service"))
        );
        assert_eq!(cgroup_dir(hybrid, "/"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        // A bind mount of a subtree.
        let sub = "60 1 0:38 /system.slice /mnt/my\\040cg rw - cgroup2 cgroup rw\n";
        assert_eq!(
            cgroup_dir(sub, "/system.slice/x.service"),
            Some(PathBuf::from("/mnt/my cg/x.service"))
        );
        assert_eq!(cgroup_dir(sub, "/system.slicex"), None);
        assert_eq!(
            cgroup_dir("50 45 0:32 / /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n", "/"),
            None
        );
    }

    #[test]
    fn a_group_sums_its_members_among_our_descendants() {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        // A shell leading its own group, like a worker, with a sleep it
        // forked in that group.
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 60 & echo $!; wait"])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(sh.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let sleep: i32 = line.trim().parse().unwrap();
        let shell = sh.id() as i32;
        let found = procfs::descendants().expect("this kernel has children files");
        assert!(found.contains(&shell) && found.contains(&sleep), "{found:?}");
        assert!(!found.contains(&(std::process::id() as i32)), "not ourselves");
        assert_eq!(procfs::stat(sleep).map(|s| s.pgrp), Some(shell));
        // `echo $!` can run before the child has finished exec'ing sleep, so
        // its memory may still be changing: read the sum on both sides of
        // the group's reading and compare only when it held still.
        let sum = || procfs::rss_bytes(shell).unwrap() + procfs::rss_bytes(sleep).unwrap();
        let mut compared = false;
        for _ in 0..100 {
            let before = sum();
            let group = usage_by_group().get(&shell).map(|u| u.0);
            if before == sum() {
                assert_eq!(group, Some(before));
                compared = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(compared, "the two processes' memory never held still for 2 s");
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(shell), nix::sys::signal::Signal::SIGKILL);
        sh.wait().unwrap();
    }

    #[test]
    fn reads_keyed_files() {
        let events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "oom"), Some(2));
        assert_eq!(keyed("populated 0\nfrozen 0\n", "populated"), Some(0));
        assert_eq!(keyed("", "populated"), None);
    }

    #[test]
    fn an_oom_kill_says_so() {
        assert_eq!(
            crate::engine::supervisor::ExitStatus::OomKilled.to_string(),
            "killed by the OOM killer"
        );
    }

    #[test]
    fn mode_names_for_status() {
        assert_eq!(serde_json::to_value(Mode::Cgroup).unwrap(), "cgroup");
        assert_eq!(serde_json::to_value(Mode::ProcessGroup).unwrap(), "process-group");
        assert_eq!(serde_json::to_value(MemorySource::CgroupRss).unwrap(), "cgroup-rss");
    }

    /// A worker cgroup reads its files; here a plain directory stands in.
    #[test]
    fn worker_files() {
        let dir = tempfile::tempdir().unwrap();
        let cg = WorkerCgroup {
            dir: dir.path().to_owned(),
            path: "/x/gen1-worker0-id1".into(),
            memory: true,
        };
        std::fs::write(dir.path().join("memory.current"), "123456\n").unwrap();
        std::fs::write(dir.path().join("memory.events"), "low 0\noom_kill 2\n").unwrap();
        std::fs::write(dir.path().join("cgroup.events"), "populated 1\nfrozen 0\n").unwrap();
        assert_eq!(cg.usage(), Some(123456));
        assert_eq!(cg.oom_kills(), Some(2));
        assert!(cg.populated());
        let probes = vec![(7u64, Probe::Cgroup(Arc::new(cg)))];
        assert_eq!(measure(&probes).get(&7), Some(&123456));
    }
}
