//! Chaos soak: a real baton with 4 `hello` workers under continuous load,
//! through random rounds of clean reloads, broken releases, SIGKILLs of
//! workers and of their process groups, and kills in the middle of a
//! reload.
//!
//! It asserts that
//! - rounds without kills (clean reloads, broken releases) fail no request;
//!   requests failed by a kill are counted apart and reported;
//! - every reload answers the truth: exit 0 means the generation it names
//!   serves, a failure means the one before still does;
//! - baton's fds, RSS and threads do not grow between an early sample and
//!   the last one;
//! - nothing is left at the end: no zombie, no child of baton besides its
//!   live workers, and after stop no process carrying this baton's
//!   `BATON_NAME`.
//!
//! It runs for `BATON_CHAOS_SECS` (default 60) seconds of rounds; the
//! random sequence comes from `BATON_CHAOS_SEED` (default: the clock) and
//! is printed, so a failing run can be replayed.

use std::collections::BTreeSet;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::baton::{Baton, children_of, config_text, fd_count, port, rss_kib, zombies_of};
use crate::common::example_bin;
use crate::common::load::{Load, LoadStats};
use nix::sys::signal::{SIGKILL, kill, killpg};
use nix::unistd::Pid;

const DEFAULT_SECS: u64 = 60;
const WORKERS: usize = 4;
/// Room for a restart and for a retiring generation to drain.
const SETTLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Round {
    /// `baton reload` of the good release.
    Reload,
    /// A release whose workers exit before they are ready: the reload must
    /// fail and the old generation keep serving; then the good one again.
    BrokenRelease,
    /// SIGKILL of one worker of the serving generation.
    KillWorker,
    /// SIGKILL of one worker's whole process group.
    KillGroup,
    /// SIGKILL of any live worker, old or new, while a reload runs.
    KillDuringReload,
}

impl Round {
    const ALL: [Round; 5] = [
        Round::Reload,
        Round::BrokenRelease,
        Round::KillWorker,
        Round::KillGroup,
        Round::KillDuringReload,
    ];

    fn kills(self) -> bool {
        matches!(self, Round::KillWorker | Round::KillGroup | Round::KillDuringReload)
    }
}

/// xorshift64*: enough randomness for choosing rounds, and replayable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What is watched for growth.
#[derive(Debug, Clone, Copy)]
struct Sample {
    fds: usize,
    rss_kib: u64,
    threads: u64,
}

/// fds are taken as the least of three looks 50 ms apart: a status client
/// that just went away may still hold one for a moment.
fn sample(pid: i32) -> Sample {
    let fds = (0..3)
        .map(|i| {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            fd_count(pid)
        })
        .min()
        .unwrap_or(0);
    Sample { fds, ..look(pid) }
}

fn look(pid: i32) -> Sample {
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0);
    Sample {
        fds: fd_count(pid),
        rss_kib: rss_kib(pid),
        threads,
    }
}

/// The start time of a process (field 22 of /proc/PID/stat), which tells
/// it from a later process with a recycled pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Every process whose environment holds `BATON_NAME=name`.
fn processes_named(name: &str) -> Vec<i32> {
    let needle = format!("BATON_NAME={name}");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

struct Chaos {
    baton: Baton,
    good: String,
    broken: String,
    rng: Rng,
    /// The generation that serves, as far as the answers so far tell.
    serving: u64,
    reloads: u64,
    failed_reloads: u64,
    kills: u64,
}

impl Chaos {
    fn status_serving(&self) -> u64 {
        self.baton.status()["supervisor"]["serving"].as_u64().unwrap()
    }

    /// pids of the live workers of `generation`, or of every generation.
    fn workers(&self, generation: Option<u64>) -> Vec<i32> {
        let status = self.baton.status();
        status["supervisor"]["generations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| generation.is_none() || g["id"].as_u64() == generation)
            .flat_map(|g| g["workers"].as_array().cloned().unwrap_or_default())
            .filter(|w| w["state"] != "stopping")
            .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
            .collect()
    }

    /// Waits until only the serving generation is left, at full strength.
    fn settle(&self) {
        let settled = crate::common::wait_until(SETTLE, || {
            self.baton.try_status().is_some_and(|s| {
                let sup = &s["supervisor"];
                let gens = sup["generations"].as_array().cloned().unwrap_or_default();
                !sup["reload_in_progress"].as_bool().unwrap_or(true)
                    && gens.len() == 1
                    && gens[0]["id"].as_u64() == sup["serving"].as_u64()
                    && gens[0]["ready"].as_u64() == Some(WORKERS as u64)
                    && gens[0]["workers"].as_array().is_some_and(|w| w.len() == WORKERS)
            })
        });
        assert!(
            settled,
            "baton did not settle: {}\n{}",
            self.baton.status(),
            self.baton.log()
        );
    }

    /// Checks that a reload's answer is the truth, and records it.
    fn judge(&mut self, out: &Output, must_succeed: Option<bool>) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let ok = out.status.success();
        if let Some(expected) = must_succeed {
            assert_eq!(
                ok,
                expected,
                "reload exit status {}\nstdout: {stdout}\nstderr: {stderr}\nlog:\n{}",
                out.status,
                self.baton.log()
            );
        }
        self.reloads += 1;
        let now = self.status_serving();
        if ok {
            let generation: u64 = stdout
                .split("reload ok: generation ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no generation in {stdout:?}"));
            assert!(
                generation > self.serving,
                "reload ok with old generation {generation}: {stdout}"
            );
            // Nothing else reloads, and a kill does not change which
            // generation serves.
            assert_eq!(
                now, generation,
                "reload said generation {generation} serves; status says {now}"
            );
            self.serving = generation;
        } else {
            assert_eq!(out.status.code(), Some(1), "a failed reload exits 1: {stderr}");
            assert!(stderr.contains("RELOAD FAILED"), "{stderr}");
            assert_eq!(
                now, self.serving,
                "reload failed, but the serving generation changed: {stderr}"
            );
            self.failed_reloads += 1;
        }
    }

    fn kill_one(&mut self, group: bool) {
        let pids = self.workers(Some(self.serving));
        assert!(!pids.is_empty(), "no worker to kill: {}", self.baton.status());
        let pid = pids[self.rng.below(pids.len())];
        // Each worker leads its own process group.
        let _ = if group {
            killpg(Pid::from_raw(pid), SIGKILL)
        } else {
            kill(Pid::from_raw(pid), SIGKILL)
        };
        self.kills += 1;
    }

    fn play(&mut self, round: Round) {
        match round {
            Round::Reload => {
                let out = self.baton.reload();
                self.judge(&out, Some(true));
            }
            Round::BrokenRelease => {
                self.baton.write_config(&self.broken);
                let out = self.baton.reload();
                self.judge(&out, Some(false));
                self.baton.write_config(&self.good);
                let out = self.baton.reload();
                self.judge(&out, Some(true));
            }
            Round::KillWorker => self.kill_one(false),
            Round::KillGroup => self.kill_one(true),
            Round::KillDuringReload => {
                let reload = self.baton.reload_in_background();
                std::thread::sleep(Duration::from_millis(self.rng.below(400) as u64));
                // Whoever is alive now: old workers, or the candidate's.
                let pids = self.workers(None);
                if let Some(&pid) = pids.get(self.rng.below(pids.len().max(1))) {
                    let _ = kill(Pid::from_raw(pid), SIGKILL);
                    self.kills += 1;
                }
                let out = reload.join().unwrap();
                // Either answer can be true; it must match the status.
                self.judge(&out, None);
            }
        }
    }
}

#[test]
fn chaos_soak_under_load() {
    let secs: u64 = std::env::var("BATON_CHAOS_SECS")
        .ok()
        .map(|s| s.parse().expect("BATON_CHAOS_SECS is a number of seconds"))
        .unwrap_or(DEFAULT_SECS);
    let seed: u64 = std::env::var("BATON_CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("BATON_CHAOS_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    eprintln!("chaos: {secs} s of rounds, BATON_CHAOS_SEED={seed}");

    let port = port();
    let hello = example_bin("hello").display().to_string();
    // A name of its own, to find its processes by their environment.
    let name = format!("chaos-{}-{port}", std::process::id());
    // Kills must be restarted at once and never given up on.
    let extra = "[stop]\ntimeout = \"5s\"\n\n[restart]\ndelay = \"50ms\"\nmax_delay = \"200ms\"\nlimit = 1000\nwindow = \"1s\"\n";
    let good =
        config_text(port, &[&hello], WORKERS, extra).replacen("name = \"app\"", &format!("name = \"{name}\""), 1);
    let broken = good.replacen(
        "[stop]",
        "[environment]\nHELLO_FAIL_START = \"chaos: a broken release\"\n\n[stop]",
        1,
    );
    assert_ne!(good, broken);
    let baton = Baton::start(port, &good);
    let pid = baton.pid();
    let mut chaos = Chaos {
        baton,
        good,
        broken,
        rng: Rng(seed),
        serving: 1,
        reloads: 0,
        failed_reloads: 0,
        kills: 0,
    };
    let load_started = Instant::now();
    let load = Load::start(chaos.baton.addr(), "/", 6);

    let started = Instant::now();
    let budget = Duration::from_secs(secs);
    let mut clean = LoadStats::default();
    let mut killed = LoadStats::default();
    let mut rounds: Vec<Round> = Vec::new();
    let mut early: Option<Sample> = None;
    // Every kind of round comes up once before the early sample, in a random
    // order; after that, any kind at random.
    let mut first = Round::ALL.to_vec();
    while started.elapsed() < budget || !first.is_empty() {
        let round = if first.is_empty() {
            Round::ALL[chaos.rng.below(Round::ALL.len())]
        } else {
            first.remove(chaos.rng.below(first.len()))
        };
        let before = load.snapshot();
        let round_started = Instant::now();
        chaos.play(round);
        chaos.settle();
        let after = load.snapshot();
        let into = if round.kills() { &mut killed } else { &mut clean };
        into.ok += after.ok - before.ok;
        into.failed += after.failed - before.failed;
        if !round.kills() && after.failed > before.failed {
            let new = (after.failed - before.failed) as usize;
            let new_errors: Vec<_> = after.last_errors.iter().rev().take(new).rev().collect();
            panic!(
                "round {} ({round:?}, from t+{:.3}s of the load) failed {new} requests: {new_errors:?}\n\
                 rounds before: {rounds:?}\n{}",
                rounds.len(),
                round_started.duration_since(load_started).as_secs_f64(),
                chaos.baton.log()
            );
        }
        rounds.push(round);
        // The early sample: every path taken, and a third of the time gone
        // by, for the allocator's arenas to warm up (RSS climbs for the
        // first dozen rounds or so, then levels off).
        if early.is_none() && first.is_empty() && started.elapsed() >= budget / 3 {
            early = Some(sample(pid));
        }
    }
    let early = early.unwrap_or_else(|| sample(pid));
    // tokio's blocking pool (status and memory sampling) may hold an extra
    // thread, with its stack and arena, for up to 10 s after its last job;
    // compare like with like. A thread that never goes away is growth.
    crate::common::wait_until(Duration::from_secs(15), || look(pid).threads <= early.threads);
    let last = sample(pid);
    let stats = load.stop();
    let kinds: BTreeSet<Round> = rounds.iter().copied().collect();
    let count = |r: Round| rounds.iter().filter(|&&x| x == r).count();
    eprintln!(
        "chaos: {} rounds in {:.1} s (reload {}, broken {}, kill worker {}, kill group {}, kill during reload {}); \
         {} reloads ({} failed, as they should), {} kills",
        rounds.len(),
        started.elapsed().as_secs_f64(),
        count(Round::Reload),
        count(Round::BrokenRelease),
        count(Round::KillWorker),
        count(Round::KillGroup),
        count(Round::KillDuringReload),
        chaos.reloads,
        chaos.failed_reloads,
        chaos.kills
    );
    eprintln!(
        "chaos: clean rounds: {} requests, {} failed; kill rounds: {} requests, {} failed; all: {stats}",
        clean.ok + clean.failed,
        clean.failed,
        killed.ok + killed.failed,
        killed.failed
    );
    eprintln!("chaos: baton early {early:?}, last {last:?}");
    assert_eq!(kinds.len(), Round::ALL.len(), "not every kind of round ran: {rounds:?}");
    assert_eq!(clean.failed, 0, "failed requests in clean rounds");
    assert!(
        clean.ok > 100,
        "too little load in clean rounds to mean anything: {clean:?}"
    );
    assert!(chaos.failed_reloads >= count(Round::BrokenRelease) as u64);

    // Only the serving generation is left (settled): the fds it holds are
    // those of the early sample, when the same was true.
    assert!(last.fds <= early.fds, "fds grew from {} to {}", early.fds, last.fds);
    assert!(
        last.threads <= early.threads,
        "threads grew from {} to {}",
        early.threads,
        last.threads
    );
    // The allocator wobbles; a leak of even a few KiB per round would not fit.
    assert!(
        last.rss_kib <= early.rss_kib + 1024,
        "RSS grew from {} KiB to {} KiB",
        early.rss_kib,
        last.rss_kib
    );

    // Children of baton: exactly its live workers, no zombie.
    let workers: BTreeSet<i32> = chaos.workers(None).into_iter().collect();
    let children: BTreeSet<i32> = children_of(pid).into_iter().map(|(p, _)| p).collect();
    assert_eq!(children, workers, "baton's children are not exactly its workers");
    assert!(zombies_of(pid).is_empty(), "zombies: {:?}", zombies_of(pid));

    let last_workers: Vec<(i32, Option<u64>)> = workers.iter().map(|&p| (p, start_time(p))).collect();

    chaos.baton.signal(nix::sys::signal::SIGTERM);
    let status = chaos.baton.wait_exit(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "baton did not stop cleanly: {status:?}\n{}",
        chaos.baton.log()
    );
    let strays = processes_named(&name);
    assert!(strays.is_empty(), "processes of {name} outlived baton: {strays:?}");
    // Not even as zombies (which have no environment to find them by).
    let left: Vec<i32> = last_workers
        .iter()
        .filter(|&&(p, started)| started.is_some() && start_time(p) == started)
        .map(|&(p, _)| p)
        .collect();
    assert!(left.is_empty(), "workers still there after baton exited: {left:?}");
}
