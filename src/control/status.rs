//! What `baton status` shows: the supervisor's snapshot plus what only the
//! driver knows (sockets, memory), and its rendering for humans.

#![forbid(unsafe_code)]

use std::fmt::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::supervisor::Snapshot;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketInfo {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    /// baton's own version (of the image running now).
    pub version: String,
    /// `baton upgrade`s this supervisor went through, oldest first.
    pub upgrades: Vec<Upgraded>,
    pub pid: u32,
    pub uptime_ms: u64,
    pub socket_activated: bool,
    pub sockets: Vec<SocketInfo>,
    /// RFC 3339, UTC.
    pub last_reload_at: Option<String>,
    /// What holds each worker's process tree: its own cgroup, or its
    /// process group (see the `cgroup` module).
    pub process_tree: crate::os::cgroup::Mode,
    /// In cgroup mode, baton's delegated cgroup; otherwise why process
    /// groups are used.
    pub process_tree_detail: String,
    /// Where each worker's `rss_bytes` comes from.
    pub memory_source: crate::os::cgroup::MemorySource,
    /// The serving release, and what changed since the one before it.
    pub release: Option<ReleaseReport>,
    pub supervisor: Snapshot,
}

/// One `baton upgrade` the supervisor went through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upgraded {
    pub from: String,
    pub to: String,
    /// RFC 3339, UTC.
    pub at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseReport {
    pub id: String,
    /// The release that served before (where `rollback` goes).
    pub previous: Option<String>,
    /// What differs from it (`history::changes`).
    pub changes: Vec<String>,
}

/// The one-line STATUS= for systemd, e.g.
/// `gen 3: 4/4 ready · last reload 12:03:04 UTC ok in 1.2s`, with
/// `· canary gen 4: 1/1 ready` while a canary runs.
pub fn summary(snapshot: &Snapshot, last_reload_at: Option<&str>) -> String {
    let count = |id: Option<crate::engine::supervisor::GenId>| {
        snapshot
            .generations
            .iter()
            .find(|g| Some(g.id) == id)
            .map(|g| format!("gen {}: {}/{} ready", g.id, g.ready, g.slots))
    };
    let mut line = count(snapshot.serving).unwrap_or_else(|| match snapshot.phase {
        crate::engine::supervisor::Phase::Stopping => "stopping".to_owned(),
        _ => "starting".to_owned(),
    });
    if snapshot.serving.is_some() {
        if let Some(candidate) = count(snapshot.candidate) {
            let _ = write!(line, " · reloading → {candidate}");
        }
    } else if let Some(candidate) = count(snapshot.candidate) {
        line = format!("starting {candidate}");
    }
    if let Some(canary) = &snapshot.canary {
        if let Some(c) = count(Some(canary.generation)) {
            let _ = write!(line, " · canary {c}");
            if canary.checking {
                line.push_str(", checking");
            }
        }
    }
    if snapshot.phase == crate::engine::supervisor::Phase::Stopping && snapshot.serving.is_some() {
        line.push_str(" · stopping");
    }
    if let Some(r) = &snapshot.last_reload {
        // "2026-11-21T12:03:04Z" → "12:03:04 UTC"
        let at = last_reload_at
            .and_then(|t| t.get(11..19))
            .map(|t| format!("{t} UTC"))
            .unwrap_or_default();
        let took = Duration::from_millis(r.elapsed_ms);
        if r.ok {
            let _ = write!(line, " · last reload {at} ok in {:.1}s", took.as_secs_f64());
        } else {
            let first = r.message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let _ = write!(line, " · last reload {at} FAILED: {first}");
            // A config error's first line only says "invalid config"; the
            // first problem is the useful part.
            if let Some(problem) = r.message.lines().nth(1).filter(|l| !l.trim().is_empty()) {
                let _ = write!(line, " {}", problem.trim());
            }
        }
    }
    line
}

fn ms(ms: u64) -> String {
    // Whole seconds read better at 3 a.m. than "1m 3s 412ms 3us".
    let d = Duration::from_secs(ms / 1000);
    if d.is_zero() {
        format!("{ms}ms")
    } else {
        humantime::format_duration(d).to_string()
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Renders the JSON document `status` returns (so the client needs no
/// shared types beyond serde_json).
pub fn render(v: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let sup = &v["supervisor"];
    let mut out = String::new();
    let serving = sup["serving"].as_u64();
    let _ = write!(out, "{}: ", s(&v["name"]));
    match serving {
        Some(g) => {
            let serving_gen = sup["generations"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["id"].as_u64() == Some(g)));
            let (ready, slots) = serving_gen.map_or((0, 0), |x| (n(&x["ready"]), n(&x["slots"])));
            let _ = write!(out, "generation {g} serving, {ready}/{slots} ready");
        }
        None => out.push_str("no generation serving yet"),
    }
    let _ = writeln!(
        out,
        " · {} · baton {} pid {}, up {}",
        s(&sup["phase"]),
        s(&v["version"]),
        n(&v["pid"]),
        ms(n(&v["uptime_ms"]))
    );
    if let Some(last) = v["upgrades"].as_array().and_then(|u| u.last()) {
        let _ = writeln!(
            out,
            "upgraded from {} at {} (in place: same pid, same workers)",
            s(&last["from"]),
            s(&last["at"])
        );
    }
    let origin = if v["socket_activated"].as_bool() == Some(true) {
        "from systemd"
    } else {
        "bound by baton"
    };
    let _ = writeln!(out, "sockets ({origin}):");
    for sock in v["sockets"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {:<12} {}", s(&sock["name"]), s(&sock["address"]));
    }
    let _ = writeln!(
        out,
        "process tree: {} ({}); memory: {}",
        match v["process_tree"].as_str() {
            Some("cgroup") => "a cgroup per worker",
            Some("process-group") => "a process group per worker",
            _ => "-",
        },
        s(&v["process_tree_detail"]),
        match v["memory_source"].as_str() {
            Some("memory-current") => "memory.current of each worker's cgroup",
            Some("cgroup-rss") => "RSS summed over each worker's cgroup (no memory controller on cgroup2)",
            Some("process-group-rss") => "RSS summed over each worker's process group",
            _ => "-",
        },
    );
    if let Some(r) = v["release"].as_object() {
        let id = r.get("id").map_or_else(|| "-".to_owned(), s);
        match r.get("previous").and_then(|p| p.as_str()) {
            None => {
                let _ = writeln!(out, "release {id} (no earlier release recorded)");
            }
            Some(previous) => {
                let changes: Vec<String> = r
                    .get("changes")
                    .and_then(|c| c.as_array())
                    .map(|c| c.iter().map(s).collect())
                    .unwrap_or_default();
                if changes.is_empty() {
                    let _ = writeln!(out, "release {id}, the same as the one before ({previous})");
                } else {
                    let _ = writeln!(out, "release {id}, changed since {previous}:");
                    for c in changes {
                        let _ = writeln!(out, "  {c}");
                    }
                }
            }
        }
    }
    for g in sup["generations"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "generation {} {:<9} {}/{} ready  age {}  restarts {}  {}",
            n(&g["id"]),
            s(&g["role"]),
            n(&g["ready"]),
            n(&g["slots"]),
            ms(n(&g["age_ms"])),
            n(&g["restarts"]),
            g["command"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
                .unwrap_or_default()
        );
        if let Some(given_up) = g["given_up"].as_array().filter(|a| !a.is_empty()) {
            let slots: Vec<String> = given_up.iter().map(|x| n(x).to_string()).collect();
            let _ = writeln!(out, "  given up (crashed too often): worker {}", slots.join(", "));
        }
        for w in g["workers"].as_array().into_iter().flatten() {
            let _ = write!(
                out,
                "  worker {:<3} pid {:<8} {:<9} up {:<8} restarts {:<3}",
                n(&w["slot"]),
                w["pid"].as_i64().map_or("-".into(), |p| p.to_string()),
                s(&w["state"]),
                ms(n(&w["uptime_ms"])),
                n(&w["restarts"]),
            );
            if let Some(rss) = w["rss_bytes"].as_u64() {
                let _ = write!(out, " rss {}", mib(rss));
            }
            if let Some(cgroup) = w["cgroup"].as_str() {
                let _ = write!(out, " cgroup {}", cgroup.rsplit('/').next().unwrap_or(cgroup));
            }
            if let Some(st) = w["status"].as_str() {
                let _ = write!(out, "  \"{st}\"");
            }
            out.push('\n');
        }
    }
    if let Some(c) = sup["canary"].as_object() {
        let generation = c.get("generation").map_or(0, n);
        let _ = write!(
            out,
            "canary: generation {generation} beside the serving generation, ready for {}",
            ms(c.get("ready_ms").map_or(0, n))
        );
        if c.get("checking").and_then(|x| x.as_bool()) == Some(true) {
            out.push_str("; its check is running (exit 0 promotes it)\n");
        } else if let Some(left) = c.get("hold_left_ms").and_then(|x| x.as_u64()) {
            let _ = writeln!(out, "; hold: {} left, then it is checked or promoted", ms(left));
        } else {
            out.push_str("; waiting for `baton promote` or `baton rollback`\n");
        }
    }
    if let Some(c) = sup["last_canary"].as_object() {
        let outcome = &c["outcome"];
        let text = match outcome["kind"].as_str() {
            Some("promoted") => "promoted".to_owned(),
            Some("rolled_back") => "rolled back".to_owned(),
            Some("aborted") => format!("ABORTED: {}", s(&outcome["reason"])),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "last canary: generation {} {text}",
            c.get("generation").map_or(0, n)
        );
    }
    if sup["reload_in_progress"].as_bool() == Some(true) {
        out.push_str("a reload is in progress\n");
    }
    match sup["last_reload"].as_object() {
        Some(r) => {
            let ok = r.get("ok").and_then(|x| x.as_bool()) == Some(true);
            let _ = writeln!(
                out,
                "last reload: {} {} in {}: {}",
                s(&v["last_reload_at"]),
                if ok { "ok" } else { "FAILED" },
                ms(r.get("elapsed_ms").and_then(|x| x.as_u64()).unwrap_or(0)),
                r.get("message").and_then(|x| x.as_str()).unwrap_or("")
            );
        }
        None => out.push_str("last reload: none since start\n"),
    }
    out
}
