//! baton's one reader of per-process files in /proc: a process's parent and
//! group, its CPU time, its resident memory, its environment, and baton's
//! own children.
//! (`cgroup` reads /proc/self/cgroup and mountinfo once, to find its cgroup.) Each function reads
//! one or a few small files and returns `None` when the process is gone
//! (it may exit between any two reads). All of them block on the
//! filesystem: call them off the event loop, except where the caller says
//! why a single small read is fine.
//!
//! Hand-written rather than the procfs crate: baton needs four fields from
//! three files, and the crate's parsers read and convert every field.

#![forbid(unsafe_code)]

/// The fields of /proc/PID/stat that baton uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `Z` for a zombie, `R`, `S`, `D`, `T`…
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// CPU time in clock ticks: its own (utime + stime) and that of the
    /// children it waited for (cutime + cstime), so a worker that forks
    /// short-lived helpers is charged for them. 0 if the line is cut short.
    pub cpu_ticks: u64,
}

/// The systemd service baton runs in (`myapp.service`), from
/// /proc/self/cgroup: the last `.service` in its cgroup path. `None`
/// outside a service. One small read, once at start.
pub fn own_unit() -> Option<String> {
    unit_of(&std::fs::read_to_string("/proc/self/cgroup").ok()?)
}

fn unit_of(cgroups: &str) -> Option<String> {
    // cgroup v2 is "0::/path"; v1 hierarchies have "N:name=systemd:/path".
    let line = cgroups
        .lines()
        .find(|l| l.starts_with("0::"))
        .or_else(|| cgroups.lines().find(|l| l.contains(":name=systemd:")))?;
    let (_, path) = line.rsplit_once(':')?;
    path.split('/')
        .rev()
        .find(|c| c.ends_with(".service"))
        .map(str::to_owned)
}

/// /proc/PID/stat.
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name may contain spaces and parentheses; the fields
    // resume after the last ')': state, ppid, pgrp, …
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    // session tty_nr tpgid flags minflt cminflt majflt cmajflt, then
    // utime stime cutime cstime.
    let cpu_ticks = fields
        .skip(8)
        .take(4)
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .fold(0u64, u64::saturating_add);
    Some(Stat {
        state,
        ppid,
        pgrp,
        cpu_ticks,
    })
}

/// Clock ticks per second, the unit of [`Stat::cpu_ticks`].
pub fn ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as u64
}

/// Resident memory in bytes, from /proc/PID/statm.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// Every pid in /proc right now.
pub fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// baton's children: /proc/self/task/*/children (a child adopted as
/// subreaper may belong to any of baton's threads).
pub fn own_children() -> Vec<i32> {
    let mut out = children("self");
    out.sort_unstable();
    out.dedup();
    out
}

/// The children of `proc` ("self" or a pid), whichever of its threads
/// forked them; empty when it is gone.
fn children(proc: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{proc}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(text.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// Levels below baton that [`descendants`] walks, and the most pids it
/// returns: a bound on one measurement's work (ARCHITECTURE rule 8), far
/// past any real worker tree.
pub const MAX_DEPTH: usize = 64;
pub const MAX_DESCENDANTS: usize = 65_536;

/// baton's descendants, level by level through /proc/PID/task/*/children,
/// at most [`MAX_DEPTH`] levels and [`MAX_DESCENDANTS`] pids. `None` when
/// the kernel has no children files (built without CONFIG_PROC_CHILDREN):
/// the caller then scans all of [`pids`]. A process that forks or exits
/// during the walk may be missed; the next walk sees it.
pub fn descendants() -> Option<Vec<i32>> {
    if !std::path::Path::new("/proc/thread-self/children").exists() {
        return None;
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut level = children("self");
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for pid in level {
            if out.len() == MAX_DESCENDANTS {
                return Some(out);
            }
            // A process re-parented to baton mid-walk shows up twice.
            if seen.insert(pid) {
                out.push(pid);
                next.extend(children(&pid.to_string()));
            }
        }
        if next.is_empty() {
            break;
        }
        level = next;
    }
    Some(out)
}

/// The `NAME=value` entries of /proc/PID/environ.
pub fn environ(pid: i32) -> Option<Vec<Vec<u8>>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|v| !v.is_empty())
            .map(<[u8]>::to_vec)
            .collect(),
    )
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parens_does_not_shift_the_fields() {
        let stat = parse_stat("42 (my (odd) name) S 7 42 42 0 -1 4194560").expect("parses");
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                ppid: 7,
                pgrp: 42,
                cpu_ticks: 0,
            }
        );
        let full = "42 (w) S 7 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0";
        assert_eq!(
            parse_stat(full).map(|s| s.cpu_ticks),
            Some(310),
            "utime + stime + cutime + cstime"
        );
        assert_eq!(parse_stat("42 (x) Z 1"), None, "a truncated line is no stat");
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let stat = stat(me).expect("our own stat");
        assert_eq!(stat.pgrp, nix::unistd::getpgrp().as_raw());
        assert_eq!(stat.ppid, nix::unistd::getppid().as_raw());
        assert!(rss_bytes(me).is_some_and(|b| b > 0));
        assert!(pids().any(|p| p == me));
        let env = environ(me).expect("our environ");
        assert!(env.iter().all(|v| !v.is_empty()));
    }

    #[test]
    fn the_unit_is_the_last_service_in_the_cgroup_path() {
        assert_eq!(
            unit_of("0::/system.slice/myapp.service/supervisor\n").as_deref(),
            Some("myapp.service")
        );
        assert_eq!(
            unit_of("0::/system.slice/system-baton.slice/baton@web.service\n").as_deref(),
            Some("baton@web.service")
        );
        assert_eq!(unit_of("0::/user.slice/user-1000.slice/session-2.scope\n"), None);
        assert_eq!(
            unit_of("12:cpu:/\n1:name=systemd:/system.slice/old.service\n").as_deref(),
            Some("old.service")
        );
    }
}
