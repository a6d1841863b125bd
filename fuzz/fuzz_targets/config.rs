//! The config loader and the state machine behind it: whatever `check`
//! accepts, `run` must survive (DESIGN rule 8).
//!
//! The input is a TOML file, optionally followed by a NUL byte and an event
//! script. A config that parses is resolved into a generation spec (the
//! command falls back to `sh` when the fuzzed one does not exist, so the
//! policy is what counts), and the supervisor core is driven through the
//! script: spawns, readiness, notify messages, exits, reloads, canaries
//! (promote, rollback, the hold's check), timers, and jumps of time up to
//! the far future. Without a script a fixed scenario
//! runs, so every seed config gets a start, a reload and a stop. Then baton
//! is stopped, and it must get to `Exit` with every reload answered once
//! and every canary ended at most once.
#![no_main]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::fuzzing::{Action, ClientId, DriverError, ExitStatus, GenId, Notify, Supervisor, Waiter, WorkerId};
use baton::fuzzing::{GenSpec, resolve};
use baton::fuzzing::{Overrides, parse};
use libfuzzer_sys::fuzz_target;

/// Start, all ready, a reload that works, one that fails, a crash, time.
const SCENARIO: &[u8] = &[
    13, 7, 1, 8, 0, 13, 5, 5, 7, 1, 8, 2, 4, 0, 9, 1, 5, 5, 12, 13, 9, 2, 5, 6, 12,
];

/// Bounds the work per input, so one input can't time out the fuzzer.
const MAX_STEPS: usize = 2_000;

struct Script<'a> {
    bytes: &'a [u8],
}

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.bytes.split_first().unwrap_or((&0, &[]));
        self.bytes = rest;
        b
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |n, _| (n << 8) | u64::from(self.byte()))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[usize::from(self.byte()) % items.len()])
        }
    }
}

/// The driver's side, as `runtime.rs` plays it, minus the processes.
struct Harness {
    core: Supervisor,
    now: Instant,
    spec: Arc<GenSpec>,
    to_spawn: Vec<WorkerId>,
    live: Vec<WorkerId>,
    load_pending: bool,
    next_client: ClientId,
    waiting: BTreeSet<ClientId>,
    next_pid: i32,
    exit: Option<i32>,
    /// RunCheck not yet answered.
    checks: Vec<GenId>,
    /// Canaries that ended.
    ended: BTreeSet<GenId>,
}

impl Harness {
    fn drain(&mut self) {
        while let Some(action) = self.core.poll_action() {
            assert!(self.exit.is_none(), "{action:?} after Exit");
            match action {
                Action::Spawn { worker, .. } => self.to_spawn.push(worker),
                Action::LoadConfig => self.load_pending = true,
                Action::ReloadDone { clients, .. } => {
                    for c in clients {
                        assert!(self.waiting.remove(&c), "client {c} answered twice or never asked");
                    }
                }
                Action::Exit(code) => self.exit = Some(code),
                Action::RunCheck { generation, .. } => self.checks.push(generation),
                Action::CanaryEnded { generation, .. } => {
                    assert!(self.ended.insert(generation), "canary {generation} ended twice");
                }
                Action::Signal { .. }
                | Action::StopMessage { .. }
                | Action::Kill { .. }
                | Action::Retired { .. }
                | Action::Progress { .. }
                | Action::WorkerFailed { .. }
                | Action::Log { .. }
                | Action::Record(_)
                | Action::Phase(_) => {}
            }
        }
    }

    /// A new client (or none, like SIGHUP), which must get one answer.
    fn waiter(&mut self, s: &mut Script<'_>) -> Option<Waiter> {
        match s.byte() % 3 {
            0 => None,
            n => {
                self.next_client = self.next_client.next();
                self.waiting.insert(self.next_client);
                Some(Waiter {
                    client: self.next_client,
                    wait: n == 2,
                })
            }
        }
    }

    fn spawn_next(&mut self, ok: bool) {
        if self.to_spawn.is_empty() {
            return;
        }
        let worker = self.to_spawn.remove(0);
        if ok {
            self.next_pid += 1;
            self.core
                .spawned(self.now, worker, nix::unistd::Pid::from_raw(self.next_pid));
            self.live.push(worker);
        } else {
            self.core
                .spawn_failed(self.now, worker, DriverError::new(std::io::Error::other("fuzz")));
        }
    }

    fn exit_worker(&mut self, worker: WorkerId, status: ExitStatus) {
        self.live.retain(|&w| w != worker);
        self.core.exited(self.now, worker, status);
    }

    /// Fires every timer that is due, the way the driver's sleep would.
    fn fire_due(&mut self) {
        self.core.handle_timeout(self.now);
    }

    /// Moves time to the earliest timer and fires what is due then.
    fn fire_next(&mut self) {
        if let Some(at) = self.core.poll_timeout() {
            self.now = self.now.max(at);
            self.fire_due();
        }
    }

    fn advance(&mut self, by: Duration) {
        if let Some(t) = self.now.checked_add(by) {
            self.now = t;
        }
    }

    /// The largest whole-second step `now` can still take.
    fn to_the_end(&self) -> Duration {
        let (mut fits, mut overflows) = (0u64, u64::MAX);
        while overflows - fits > 1 {
            let mid = fits + (overflows - fits) / 2;
            if self.now.checked_add(Duration::from_secs(mid)).is_some() {
                fits = mid;
            } else {
                overflows = mid;
            }
        }
        Duration::from_secs(fits)
    }

    fn step(&mut self, op: u8, s: &mut Script<'_>) {
        match op % 18 {
            0 => self.spawn_next(true),
            1 => self.spawn_next(false),
            2 => {
                if let Some(w) = s.pick(&self.live) {
                    self.core.message(self.now, w, Notify::Ready);
                }
            }
            3 => {
                let Some(w) = s.pick(&self.live) else { return };
                let n = s.u64();
                let msg = match s.byte() % 7 {
                    0 => Notify::Status(n.to_string()),
                    1 => Notify::Stopping,
                    2 => Notify::Watchdog,
                    3 => Notify::WatchdogTrigger,
                    4 => Notify::MainPid(nix::unistd::Pid::from_raw((n as i32).max(1))),
                    5 => Notify::Errno(n as i32),
                    _ => Notify::ExtendTimeout(Duration::from_micros(n)),
                };
                self.core.message(self.now, w, msg);
            }
            4 => {
                let Some(w) = s.pick(&self.live) else { return };
                let status = match s.byte() % 3 {
                    0 => ExitStatus::Code(0),
                    1 => ExitStatus::Code(1),
                    _ => ExitStatus::Signal {
                        signal: 9,
                        core_dumped: false,
                    },
                };
                self.exit_worker(w, status);
            }
            5 => self.fire_next(),
            6 => self.fire_due(),
            7 => {
                let waiter = self.waiter(s);
                self.core.request_reload(self.now, waiter);
            }
            8 => {
                if std::mem::take(&mut self.load_pending) {
                    let result = if s.byte() % 4 == 3 {
                        Err(DriverError::new(std::io::Error::other("fuzz: config does not load")))
                    } else {
                        Ok(self.spec.clone())
                    };
                    self.core.config_loaded(self.now, result);
                }
            }
            9 => {
                let by = match s.byte() % 4 {
                    0 => Duration::from_millis(u64::from(s.byte())),
                    1 => Duration::from_secs(u64::from(s.byte())),
                    2 => Duration::from_nanos(s.u64()),
                    // To a few seconds before the end of `Instant`'s range:
                    // every addition to a time must be checked.
                    _ => self
                        .to_the_end()
                        .saturating_sub(Duration::from_secs(u64::from(s.byte()))),
                };
                self.advance(by);
            }
            10 => {
                if let Some(w) = s.pick(&self.live) {
                    self.core.memory_exceeded(self.now, w);
                }
            }
            11 => self.core.request_stop(self.now),
            12 => {
                let snapshot = self.core.snapshot(self.now);
                let _ = baton::fuzzing::summary(&snapshot, None);
                let _ = serde_json::to_string(&snapshot);
            }
            14 => {
                let waiter = self.waiter(s);
                let workers = usize::from(s.byte());
                let hold = match s.byte() % 3 {
                    0 => None,
                    1 => Some(Duration::from_millis(u64::from(s.byte()))),
                    _ => Some(Duration::from_nanos(s.u64())),
                };
                self.core.request_canary(self.now, waiter, workers, hold);
            }
            15 => {
                let waiter = self.waiter(s);
                self.core.promote(self.now, waiter);
            }
            16 => {
                let waiter = self.waiter(s);
                let target = (s.byte() % 2 == 0).then(|| self.spec.clone());
                self.core.rollback(self.now, waiter, target);
            }
            17 => {
                if let Some(generation) = s.pick(&self.checks) {
                    self.checks.retain(|&g| g != generation);
                    let result = if s.byte() % 2 == 0 {
                        Ok(())
                    } else {
                        Err(DriverError::new(std::io::Error::other("fuzz: check failed")))
                    };
                    self.core.check_done(self.now, generation, result);
                }
            }
            _ => {
                while !self.to_spawn.is_empty() {
                    self.spawn_next(true);
                    self.drain();
                }
                for w in self.live.clone() {
                    self.core.message(self.now, w, Notify::Ready);
                    self.drain();
                }
            }
        }
    }
}

/// The spec `run` would start with; `None` when even `sh` can't be found.
fn spec_of(text: &str) -> Option<GenSpec> {
    let mut config = parse(text, Path::new("/fuzz/app.toml"), &Overrides::default()).ok()?;
    let path = Some("/usr/bin:/bin");
    resolve(&config, path).ok().or_else(|| {
        config.command = vec!["sh".into()];
        config.directory = None;
        resolve(&config, path).ok()
    })
}

fuzz_target!(|data: &[u8]| {
    let (toml, script) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, SCENARIO),
    };
    let Ok(text) = std::str::from_utf8(toml) else { return };
    let Some(spec) = spec_of(text) else { return };
    let spec = Arc::new(spec);
    let mut h = Harness {
        core: Supervisor::new(),
        now: Instant::now(),
        spec: spec.clone(),
        to_spawn: Vec::new(),
        live: Vec::new(),
        load_pending: false,
        next_client: ClientId::new(0),
        waiting: BTreeSet::new(),
        next_pid: 1000,
        exit: None,
        checks: Vec::new(),
        ended: BTreeSet::new(),
    };
    h.core.start(h.now, spec);
    h.drain();
    let mut s = Script { bytes: script };
    let mut steps = 0;
    while !s.bytes.is_empty() && h.exit.is_none() && steps < MAX_STEPS {
        let op = s.byte();
        h.step(op, &mut s);
        h.drain();
        steps += 1;
    }
    // Stop: whatever state it is in, baton must get to Exit once every
    // worker is gone, and must have answered every reload client.
    h.core.request_stop(h.now);
    h.drain();
    while h.exit.is_none() && steps < 2 * MAX_STEPS {
        if h.load_pending {
            h.load_pending = false;
            h.core.config_loaded(h.now, Ok(h.spec.clone()));
        } else if !h.to_spawn.is_empty() {
            h.spawn_next(true);
        } else if let Some(&w) = h.live.first() {
            h.exit_worker(w, ExitStatus::Code(0));
        } else if h.core.poll_timeout().is_none() {
            break;
        } else {
            h.fire_next();
        }
        h.drain();
        steps += 1;
    }
    assert!(h.exit.is_some(), "no Exit after stop: {:?}", h.core.snapshot(h.now));
    assert!(h.waiting.is_empty(), "reload clients never answered: {:?}", h.waiting);
});
