//! The supervisor core: generations, reloads, retirement and crash restarts,
//! as a deterministic state machine with no I/O.
//!
//! # Theory of operation
//!
//! A *generation* is one start of the application: a pinned [`GenSpec`] and
//! `workers` slots, each holding at most one live worker. At any time there
//! is at most one *serving* generation and at most one *candidate* (being
//! started by the first start or a reload). Every other generation is
//! *retiring*: its workers got the stop signal and are draining.
//!
//! A reload loads the config, starts a candidate and waits until it is ready.
//! Only then does the candidate become the serving generation and the old one
//! retire (rule 2). A candidate that fails in any way (exits, never gets
//! ready, crashes) is retired and the serving generation is left untouched.
//! A rolling reload replaces one slot at a time; when it fails midway it
//! restores the old generation's slots before it reports, so the old
//! generation is back at full strength. One reload runs at a time; requests
//! that arrive meanwhile are coalesced into one follow-up (rule 3).
//!
//! Retiring a worker that was ready sends the stop signal and arms a kill
//! deadline (`[stop] timeout`). A worker that never became ready, of a
//! generation that never served, has promised nothing and is killed at
//! once, so a candidate that was given up cannot start serving late; a
//! restart of a generation that served is drained like the others. When every worker of a retiring generation is
//! gone, [`Action::Retired`] lets the driver kill what they left behind.
//!
//! A worker of a serving generation that dies unexpectedly is restarted
//! from its own generation's spec with exponential backoff; a slot that
//! crashes more than `limit` times within `window` is given up. When the
//! serving generation has no live worker left and nothing to restart, baton
//! exits 1 so that systemd's `Restart=` decides what happens next.
//!
//! A worker whose memory stays above `[limits] memory` gets a *successor* in
//! its slot; the successor must be ready before the old worker retires, so
//! the slot never goes empty.
//!
//! ## Canaries
//!
//! `reload --canary N` runs like a reload whose candidate has only
//! `min(N, workers)` slots and replaces nothing: once they are all ready the
//! candidate becomes the *canary* (role `Canary`) beside the serving
//! generation, which keeps every slot, and the reload is over. Two
//! generations are then active, the serving one and the canary, and
//! nothing else may start beside them: a plain reload or SIGHUP is refused
//! at once ([`ReloadError::CanaryRunning`]), and so is a second canary.
//!
//! A canary is judged strictly. Any failure of one of its workers (exit,
//! watchdog, STOPPING=1, ERRNO=, the memory limit) *aborts* it: every
//! canary worker retires, none is ever restarted, and
//! [`Action::CanaryEnded`] says why. `promote` turns the canary back into a
//! candidate of a reload with its pinned spec and its workers kept: it
//! grows to full size (parallel), or first retires the old slots it covers
//! and then rolls the rest (rolling), and from there it is a reload like any
//! other, failures and rolling reverts included. A hold arms
//! [`Timer::CanaryHold`]; when it fires with the canary still there, the
//! check runs ([`Action::RunCheck`], answered by `check_done`) or, without
//! one, the canary is promoted. `rollback` aborts a running canary;
//! otherwise it is a reload from the release the driver names, without
//! loading the config. Every canary that became ready gets exactly one
//! `CanaryEnded`: promoted, rolled back, or aborted (a failed promotion and
//! a stop included).
//!
//! # Driving it
//!
//! The core does no I/O and reads no clock, in the way of quinn-proto: the
//! driver (`runtime.rs`, or a test) passes the current time into every call,
//! and the core answers only through its queues. After *every* call the
//! driver must
//!
//! 1. execute each [`Action`] from [`Supervisor::poll_action`] until it
//!    returns `None`, in order (some actions promise an answer: a
//!    [`Action::Spawn`] gets `spawned` or `spawn_failed`, a
//!    [`Action::LoadConfig`] gets `config_loaded`);
//! 2. ask [`Supervisor::poll_timeout`] again and wake up at that instant to
//!    call [`Supervisor::handle_timeout`].
//!
//! The clock is `std::time::Instant`, so a test drives the core with a
//! clock it advances by hand, without a runtime. Times passed in must never
//! go backwards.
//!
//! Timers live in the core. Each one names what it is for ([`Timer`]); when
//! it fires it checks that this still holds (the worker is still starting,
//! the restart is still the newest, ...), so correctness never depends on
//! cancelling one. Timers that can only find their cause gone are dropped
//! (a worker's when it exits, its readiness timers once it is ready) to
//! spare the driver a wakeup.
//!
//! Actions name workers ([`WorkerId`]), never processes: the driver alone
//! maps them to pids and pidfds, and decides when a process counts as
//! exited. The pids the core is told of serve only its reports.
//!
//! # Hand-over (`baton upgrade`)
//!
//! The whole state can cross an exec of a new binary in place:
//! [`Supervisor::export`] gives a [`CoreState`] (serde; every instant as
//! nanoseconds from the export's `now`) and [`Supervisor::import`] checks
//! one and rebuilds the supervisor relative to its own `now`. The driver
//! asks [`Supervisor::hand_over_blocker`] first: a reload, a canary check,
//! a fork it has not answered, actions it has not taken, or a stop block
//! it. See `supervisor/handover.rs`.
//!
//! # Why one long file
//!
//! The file is one type, [`Supervisor`], whose rules (rules 2-4 of
//! ARCHITECTURE.md's invariants) cut across generations, slots and workers;
//! split across files, each rule would be read in pieces. The tests live
//! beside it in `supervisor/tests.rs`.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::config::ReloadStrategy;
use crate::engine::spec::GenSpec;

/// `now + d`, saturating at a far-off instant instead of panicking.
///
/// The config bounds its durations, but a worker's EXTEND_TIMEOUT_USEC is
/// any u64, and no input may overflow the clock. About 30 years is what
/// tokio itself uses for "never"; a monotonic clock (time since boot) is
/// nowhere near overflowing with that added, so the fallback is unreachable.
pub fn after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn strategy_name(strategy: ReloadStrategy) -> &'static str {
    match strategy {
        ReloadStrategy::Parallel => "parallel",
        ReloadStrategy::Rolling => "rolling",
    }
}

/// Declares an id newtype: a `u64` that cannot be mixed up with the other
/// ids, shown (and serialized) as its number.
macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            pub const fn new(n: u64) -> Self {
                $name(n)
            }

            pub const fn get(self) -> u64 {
                self.0
            }

            /// The id after this one (ids are handed out in order).
            #[must_use]
            pub const fn next(self) -> Self {
                $name(self.0.saturating_add(1))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id! {
    /// A generation: 1 for the first start, one more for each reload.
    GenId
}
id! {
    /// A worker: one start of one slot; never reused.
    WorkerId
}
id! {
    /// A control-socket client waiting for a reload's answer (the driver
    /// hands these out).
    ClientId
}

/// An error the driver met doing what the core asked (loading the config,
/// starting a worker), handed to the core as the error itself rather than
/// its text. The core only relays and shows it, so any error type will do;
/// the `Arc` keeps actions cheap to clone.
///
/// It displays as the whole chain ("what: why: root cause"): this is where
/// the error is reported, to the log and to reload clients.
#[derive(Debug, Clone)]
pub struct DriverError(Arc<dyn std::error::Error + Send + Sync>);

impl DriverError {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        DriverError(Arc::new(error))
    }

    /// The error the driver met.
    pub fn get(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Errors of any type compare by what they say, which is all the core and
/// its tests can know of them.
impl PartialEq for DriverError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.to_string() == other.to_string()
    }
}

/// Serialized as the text it displays.
impl Serialize for DriverError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read back (a hand-over, [`CoreState`]) as an error that says that text:
/// the core only relays and shows it, so the text is all of it that counts.
impl<'de> Deserialize<'de> for DriverError {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(DriverError::new(Relayed(text)))
    }
}

/// A [`DriverError`] that crossed a hand-over: only its text survives.
#[derive(Debug)]
struct Relayed(String);

impl std::fmt::Display for Relayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Relayed {}

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal {
        signal: i32,
        core_dumped: bool,
    },
    /// SIGKILL from the kernel's OOM killer (its cgroup's `memory.events`
    /// counted the kill).
    OomKilled,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exited with status {code}"),
            ExitStatus::OomKilled => f.write_str("killed by the OOM killer"),
            ExitStatus::Signal { signal, core_dumped } => {
                let name = Signal::try_from(signal)
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|_| format!("signal {signal}"));
                write!(f, "killed by {name}")?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// A notify message from a worker, already authenticated and parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Notify {
    Ready,
    Status(String),
    Stopping,
    Watchdog,
    WatchdogTrigger,
    MainPid(Pid),
    Errno(i32),
    ExtendTimeout(Duration),
}

/// A timer inside the core, named by what it is for (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timer {
    /// The worker must be ready by its deadline.
    Ready(WorkerId),
    /// Readiness mode "delay": alive this long counts as ready.
    Delay(WorkerId),
    /// `[readiness] settle` after its READY is over: the worker is ready.
    Settle(WorkerId),
    /// A retiring worker gets SIGKILL (to its group) at its deadline.
    Stop(WorkerId),
    /// `[stop] message` went first; now the stop signal follows.
    Escalate(WorkerId),
    /// Respawn a crashed slot; `seq` tells a stale timer from the current one.
    Restart { generation: GenId, slot: usize, seq: u64 },
    /// A worker must ping (WATCHDOG=1) by its deadline.
    Watchdog(WorkerId),
    /// A canary's hold is over: run its check, or promote it.
    CanaryHold(GenId),
}

/// Lifecycle phase, for systemd's notify protocol and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Starting,
    Ready,
    Reloading,
    Stopping,
}

/// Why a worker was given up on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Failure {
    /// It exited before it became ready, or (for a candidate) at any time
    /// before its generation took over, or (serving) unexpectedly.
    Exited { status: ExitStatus, was_ready: bool },
    /// It did not become ready in time.
    NotReady { timeout_ms: u64 },
    /// fork/exec (or what prepares them) failed.
    Spawn { error: DriverError },
    /// It stopped sending WATCHDOG=1.
    WatchdogTimeout,
    /// It sent WATCHDOG=trigger.
    WatchdogTrigger,
    /// It sent STOPPING=1 before its generation took over.
    StoppedEarly,
    /// A canary worker sent ERRNO= (the errno is in the [`Fault`]).
    Errno,
    /// A canary worker stayed above `[limits] memory`.
    MemoryLimit,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Exited { status, was_ready } => {
                if *was_ready {
                    write!(f, "{status}")
                } else {
                    write!(f, "{status} before it became ready")
                }
            }
            Failure::NotReady { timeout_ms } => write!(
                f,
                "was not ready after {} (readiness timeout)",
                humantime::format_duration(Duration::from_millis(*timeout_ms))
            ),
            Failure::Spawn { error } => write!(f, "could not be started: {error}"),
            Failure::WatchdogTimeout => f.write_str("stopped sending watchdog pings"),
            Failure::WatchdogTrigger => f.write_str("asked for its watchdog to fire (WATCHDOG=trigger)"),
            Failure::StoppedEarly => f.write_str("sent STOPPING=1 before its generation took over"),
            Failure::Errno => f.write_str("reported an error, which fails a canary worker"),
            Failure::MemoryLimit => f.write_str("stayed above its memory limit"),
        }
    }
}

/// How a worker said it was ready: what it actually did, for the words
/// that report it (a log line is no READY=1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyBy {
    /// `READY=1` on its notify socket (any mode honours it).
    Notify,
    /// `process.send('ready')` (mode "node-ipc").
    Ipc,
    /// A line of its output matched this `[readiness] pattern` (mode "log").
    Log(String),
    /// It was alive for `[readiness] delay` (mode "delay").
    Delay(Duration),
}

impl std::fmt::Display for ReadyBy {
    /// A clause after "worker N of generation G" or "after it".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadyBy::Notify => write!(f, "sent READY=1"),
            ReadyBy::Ipc => write!(f, "sent 'ready' over the IPC channel"),
            ReadyBy::Log(pattern) => write!(f, "printed a line matching [readiness] pattern {pattern:?}"),
            ReadyBy::Delay(d) => write!(
                f,
                "stayed up for its [readiness] delay of {}",
                humantime::format_duration(*d)
            ),
        }
    }
}

/// A worker that failed, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub worker: WorkerId,
    pub generation: GenId,
    pub slot: usize,
    pub pid: Option<i32>,
    pub failure: Failure,
    /// ERRNO= the worker reported, if any.
    pub errno: Option<i32>,
    /// It had sent READY and was settling (`[readiness] settle`): for this
    /// long, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settling_ms: Option<u64>,
    /// While settling: how it had said it was ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_by: Option<ReadyBy>,
    /// What usually causes a failure like this one, when the core can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<Hint>,
}

/// The likely cause of a [`Fault`], said after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hint {
    /// It exited 0 before its generation was ready, or right after it
    /// became ready: an app that ends "successfully" at start has usually
    /// failed to listen (Express 5 hands EADDRINUSE to the listen callback,
    /// and a PM2-style app then sends 'ready' and exits 0).
    ExitedZeroAtStart,
    /// The same, in a generation that loads baton's Node preload
    /// (`[node] inherit_listen = true`): setting it is no advice then; the
    /// preload's own `baton: listen(…)` line says what went wrong.
    ExitedZeroWithPreload,
}

/// A worker that exits 0 within this long of becoming ready gets
/// [`Hint::ExitedZeroAtStart`].
pub const QUICK_EXIT: Duration = Duration::from_secs(5);

impl std::fmt::Display for Hint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hint::ExitedZeroAtStart => f.write_str(
                "an app that exits 0 as it starts has usually failed to listen: it may bind the port itself \
                 while baton already holds it (Express 5 passes EADDRINUSE to the listen callback); \
                 use the inherited socket (fd 3, LISTEN_FDS) or set [node] inherit_listen = true",
            ),
            Hint::ExitedZeroWithPreload => f.write_str(
                "an app that exits 0 as it starts has usually failed to listen; baton's Node preload is on \
                 ([node] inherit_listen = true): its line `baton: listen(…)` in the output says which listen \
                 it could not map and names the sockets baton holds; listen on one of their ports or paths",
            ),
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "worker {} of generation {}", self.slot, self.generation)?;
        if let Some(pid) = self.pid {
            write!(f, " (pid {pid})")?;
        }
        match (&self.failure, self.settling_ms) {
            (_, None) => write!(f, " {}", self.failure)?,
            (failure, Some(ms)) => {
                // "before it became ready" would hide that it had said so.
                match failure {
                    Failure::Exited { status, .. } => write!(f, " {status}")?,
                    other => write!(f, " {other}")?,
                }
                write!(
                    f,
                    " while settling, {} after it ",
                    humantime::format_duration(Duration::from_millis(ms))
                )?;
                match &self.ready_by {
                    Some(by) => write!(f, "{by}")?,
                    None => write!(f, "said it was ready")?,
                }
                write!(f, " ([readiness] settle)")?;
            }
        }
        if let Some(errno) = self.errno {
            write!(
                f,
                "; it reported ERRNO={errno} ({})",
                std::io::Error::from_raw_os_error(errno)
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ReloadError {
    /// The config could not be loaded; nothing was started.
    Config {
        #[serde(rename = "message")]
        error: DriverError,
    },
    /// A worker of the new generation failed; it was retired.
    Worker { fault: Fault },
    /// baton is shutting down.
    Stopping,
    /// A plain reload (or another canary) while a canary runs: `promote`
    /// or `rollback` decide what happens next.
    CanaryRunning { generation: GenId },
    /// A canary, promote or rollback was asked for while something else
    /// runs; nothing changed.
    Busy { reason: String },
    /// `promote` with no canary running.
    NoCanary,
    /// `rollback` with no canary running and no earlier release.
    NoRollbackTarget,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config { error } => write!(f, "invalid config, nothing changed:\n{error}"),
            ReloadError::Worker { fault } => write!(f, "{fault}"),
            ReloadError::Stopping => f.write_str("baton is stopping"),
            ReloadError::CanaryRunning { generation } => write!(
                f,
                "a canary (generation {generation}) is running: `baton promote` or `baton rollback` decide what happens next"
            ),
            ReloadError::Busy { reason } => write!(f, "{reason}; nothing changed"),
            ReloadError::NoCanary => f.write_str("no canary is running"),
            ReloadError::NoRollbackTarget => f.write_str("no earlier release to roll back to"),
        }
    }
}

/// What became of a serving slot after a failure, for the log line that
/// reports the failure: it must say what really happens next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    /// A replacement starts after this delay.
    Restart(Duration),
    /// More than `limit` failures within `window`: the slot stays empty.
    GiveUp {
        slot: usize,
        failures: u32,
        limit: u32,
        window: Duration,
    },
    /// Another live worker holds the slot (a memory successor, or the
    /// worker it was to replace).
    Occupied,
    /// A rolling reload passed the slot's role to the new generation.
    HandedOver,
    /// The slot was given up before.
    Nothing,
}

impl Next {
    /// The end of "worker 0 of generation 1 (pid 7) FAILURE; ...".
    fn describe(self, failure: &Failure) -> String {
        // A worker that failed without exiting is being stopped.
        let stopping = match failure {
            Failure::Exited { .. } | Failure::Spawn { .. } | Failure::StoppedEarly => "",
            _ => "stopping it; ",
        };
        let again = match failure {
            Failure::Spawn { .. } => "trying again",
            Failure::Exited { .. } => "restarting it",
            _ => "its replacement starts",
        };
        match self {
            Next::Restart(delay) => format!("{stopping}{again} in {}", humantime::format_duration(delay)),
            Next::GiveUp {
                slot,
                failures,
                limit,
                window,
            } => format!(
                "{stopping}that is {failures} failures within {} ([restart] limit = {limit}); giving up on slot {slot}, which stays empty",
                humantime::format_duration(window)
            ),
            Next::Occupied => format!("{stopping}another worker holds its slot; nothing to restart"),
            Next::HandedOver => format!("{stopping}its slot now belongs to the new generation; not restarting it"),
            Next::Nothing => format!("{stopping}its slot was given up before; not restarting it"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOk {
    pub generation: GenId,
    pub elapsed_ms: u64,
    /// `generation` is a canary beside the serving generation (it is not
    /// serving alone).
    pub canary: bool,
}

/// How a canary that became ready ended ([`Action::CanaryEnded`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CanaryOutcome {
    /// It became the serving generation.
    Promoted,
    /// `rollback` ended it.
    RolledBack,
    /// A failure ended it (a worker, the check, a failed promotion, a
    /// stop); `reason` says which.
    Aborted { reason: String },
}

impl std::fmt::Display for CanaryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CanaryOutcome::Promoted => f.write_str("promoted"),
            CanaryOutcome::RolledBack => f.write_str("rolled back"),
            CanaryOutcome::Aborted { reason } => write!(f, "aborted: {reason}"),
        }
    }
}

pub type ReloadResult = Result<ReloadOk, ReloadError>;

/// What a journal record is about (README "Reload records in the
/// journal"). The core ends each of its requests in exactly one
/// [`Action::Record`]; the driver writes the upgrade's and the rollbacks
/// it refuses itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKind {
    Reload,
    /// `reload --canary`: its workers started (or failed to).
    CanaryStart,
    /// A ready canary ended by a failure (a worker, its check, a stop).
    CanaryAbort,
    /// `promote`, or the end of the canary's hold.
    Promote,
    /// `rollback`: of a running canary, or to an earlier release.
    Rollback,
    Upgrade,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordResult {
    Ok,
    Failed,
    /// Nothing was tried: it could not run now, or its target is unusable.
    Refused,
    Aborted,
}

/// How a request ended, for its one journal record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: RecordKind,
    pub result: RecordResult,
    /// The generation it is about: the one serving after it went well, the
    /// canary, or the candidate that failed (if it got that far).
    pub generation: Option<GenId>,
    pub elapsed_ms: u64,
    /// Why it failed, was refused or aborted; empty when it went well.
    pub reason: String,
    /// The human line (MESSAGE).
    pub message: String,
}

/// The record of a request that never ran. A refused rollback is
/// `Refused`; the others fail like any reload that did not happen.
fn refusal(kind: RecordKind, error: &ReloadError) -> Record {
    let (result, what) = match kind {
        RecordKind::Rollback => (RecordResult::Refused, "rollback refused"),
        RecordKind::CanaryStart => (RecordResult::Failed, "canary failed"),
        RecordKind::Promote => (RecordResult::Failed, "promotion failed"),
        _ => (RecordResult::Failed, "reload failed"),
    };
    Record {
        kind,
        result,
        generation: None,
        elapsed_ms: 0,
        reason: error.to_string(),
        message: format!("{what}: {error}"),
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a worker; answer with `spawned` or `spawn_failed`.
    Spawn {
        worker: WorkerId,
        generation: GenId,
        slot: usize,
        spec: Arc<GenSpec>,
    },
    /// Send a signal to the worker's main process. The driver resolves the
    /// worker to its pidfd, and drops the signal if the process was reaped.
    Signal { worker: WorkerId, signal: Signal },
    /// Send `[stop] message` over the worker's IPC channel.
    StopMessage { worker: WorkerId },
    /// SIGKILL the worker's whole process tree (its process group, or its
    /// cgroup where baton has one). `why` completes "worker N ...".
    Kill { worker: WorkerId, why: &'static str },
    /// Every worker of this generation has exited: whatever they left
    /// behind (daemons baton adopted as subreaper) goes too.
    Retired { generation: GenId },
    /// Read the config; answer with `config_loaded`.
    LoadConfig,
    /// Tell reload clients how it is going.
    Progress { clients: Vec<ClientId>, text: String },
    /// A reload ended: log its result, and give these clients their final
    /// answer. Emitted for every reload that ran, also one with no client
    /// (SIGHUP), so that its result reaches the journal.
    ReloadDone {
        clients: Vec<ClientId>,
        result: ReloadResult,
    },
    /// A worker failed; log it with its last lines of output. `context`
    /// says what happens next.
    WorkerFailed { fault: Fault, context: String },
    /// A line for baton's log, in order with the other actions (the core
    /// does no I/O, logging included).
    Log { level: tracing::Level, text: String },
    /// A canary that became ready is over: write the history (its journal
    /// record is a [`Action::Record`]). Exactly one per canary that became
    /// ready.
    CanaryEnded { generation: GenId, outcome: CanaryOutcome },
    /// A request ended: write its journal record. Exactly one per request
    /// (a reload, canary, promotion or rollback, run or refused, a SIGHUP
    /// included) and one per canary abort.
    Record(Record),
    /// A canary's hold is over: run `check` (with the canary's pids in its
    /// environment, killed at its timeout) and answer with `check_done`.
    RunCheck {
        generation: GenId,
        check: crate::engine::spec::CanaryCheck,
    },
    /// The phase changed.
    Phase(Phase),
    /// Nothing is left running; exit with this code.
    Exit(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    Spawning,
    Starting,
    /// It sent READY; it counts as ready once `[readiness] settle` has
    /// passed with it alive (and its watchdog fed).
    Settling,
    Ready,
    Stopping,
}

#[derive(Debug)]
struct Worker {
    generation: GenId,
    slot: usize,
    /// The pid that reports and `status` name: the one the driver forked
    /// ([`Supervisor::spawned`]), or the MAINPID= the worker handed its role
    /// to. `None` until spawned. Only a name: the driver alone holds the
    /// process handles, signals and reaps.
    pid: Option<Pid>,
    state: WorkerState,
    /// Asked to stop while still being spawned.
    stop_pending: bool,
    started: Instant,
    ready_at: Option<Instant>,
    /// Readiness deadline while starting, the end of the settle while
    /// settling, kill deadline while stopping.
    deadline: Option<Instant>,
    /// When it said it was ready (it may still be settling).
    said_ready: Option<Instant>,
    /// How it said so.
    said_ready_by: Option<ReadyBy>,
    watchdog_deadline: Option<Instant>,
    watchdog_armed: bool,
    status_text: Option<String>,
    errno: Option<i32>,
}

impl Worker {
    /// The pid the worker's reports name.
    fn reported_pid(&self) -> Option<i32> {
        self.pid.map(Pid::as_raw)
    }

    /// How long it has been settling, in milliseconds, if it is.
    fn settling_ms(&self, now: Instant) -> Option<u64> {
        let since = self.said_ready.filter(|_| self.state == WorkerState::Settling)?;
        Some(u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX))
    }
}

#[derive(Debug, Default)]
struct Slot {
    worker: Option<WorkerId>,
    /// Crash times within the restart window.
    crashes: VecDeque<Instant>,
    restarts: u32,
    restart_pending: bool,
    /// Bumped at every armed restart; only the newest timer counts.
    restart_seq: u64,
    gave_up: bool,
    /// Rolling reload: this slot's role passed to the candidate.
    handed_over: bool,
    /// A replacement started while `worker` still serves (memory limit).
    successor: Option<WorkerId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Starting,
    Serving,
    /// Ready beside the serving generation, waiting for `promote`,
    /// `rollback` or its hold.
    Canary,
    Retiring,
}

#[derive(Debug)]
struct Generation {
    spec: Arc<GenSpec>,
    role: Role,
    slots: Vec<Slot>,
    created: Instant,
    /// `reload --wait` clients, answered when this generation has exited.
    drain_waiters: Vec<(ClientId, ReloadOk)>,
    /// Started as a canary of this many workers (slots `0..n`): none of
    /// them is ever restarted.
    canary: Option<usize>,
    /// It has been the serving generation: its release is known good, so
    /// even a worker of it that is not ready yet (a restart) is drained
    /// when it retires, never killed at once.
    served: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub client: ClientId,
    /// `--wait`: answer only once the old generation has fully exited.
    pub wait: bool,
}

#[derive(Debug)]
struct Reload {
    waiters: Vec<Waiter>,
    started: Instant,
    /// Set once the config loaded.
    generation: Option<GenId>,
    /// Rolling: the next slot to start.
    next_slot: usize,
    /// Rolling: failed midway, old slots being restored; the answer to give.
    reverting: Option<ReloadError>,
    kind: ReloadKind,
    /// A promotion the canary's hold started (for its record; never
    /// handed over, as a running reload blocks `baton upgrade`).
    held: bool,
}

/// What a running [`Reload`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReloadKind {
    /// A reload: it loads the config and replaces the serving generation.
    Plain,
    /// `reload --canary`: it loads the config and starts `workers` beside
    /// the serving generation, which stays as it is.
    Canary { workers: usize, hold: Option<Duration> },
    /// `promote`: the canary grows into the serving generation.
    Promote,
    /// `rollback` to a release the driver resolved: a reload without
    /// loading the config.
    Rollback,
}

/// A canary that is ready, beside the serving generation.
#[derive(Debug)]
struct Canary {
    generation: GenId,
    /// When its workers were all ready.
    ready_at: Instant,
    /// Its check runs ([`Action::RunCheck`]).
    checking: bool,
}

/// How the last canary ended, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastCanary {
    pub generation: GenId,
    pub outcome: CanaryOutcome,
    #[serde(skip)]
    pub finished: Instant,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LastReload {
    pub generation: Option<GenId>,
    pub ok: bool,
    pub message: String,
    #[serde(skip)]
    pub finished: Instant,
    pub elapsed_ms: u64,
}

/// The state machine. See the module docs.
#[derive(Debug)]
pub struct Supervisor {
    next_worker: WorkerId,
    next_gen: GenId,
    gens: BTreeMap<GenId, Generation>,
    workers: BTreeMap<WorkerId, Worker>,
    serving: Option<GenId>,
    candidate: Option<GenId>,
    reload: Option<Reload>,
    /// A follow-up reload was requested while one ran; these want its answer.
    queued: Option<Vec<Waiter>>,
    stopping: bool,
    /// Exit with this code once no worker is left.
    exit_code: Option<i32>,
    exited: bool,
    phase: Phase,
    last_reload: Option<LastReload>,
    /// The canary beside the serving generation, once it is ready.
    canary: Option<Canary>,
    last_canary: Option<LastCanary>,
    actions: VecDeque<Action>,
    /// Pending timers by deadline, then arming order (so timers due at the
    /// same instant fire in the order they were armed).
    timers: BTreeMap<(Instant, u64), Timer>,
    /// Where each pending timer sits in `timers`: re-arming one moves it.
    armed: HashMap<Timer, (Instant, u64)>,
    timer_seq: u64,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// An idle supervisor: nothing happens until [`Supervisor::start`].
    pub fn new() -> Self {
        Supervisor {
            next_worker: WorkerId(1),
            next_gen: GenId(1),
            gens: BTreeMap::new(),
            workers: BTreeMap::new(),
            serving: None,
            candidate: None,
            reload: None,
            queued: None,
            stopping: false,
            exit_code: None,
            exited: false,
            phase: Phase::Starting,
            last_reload: None,
            canary: None,
            last_canary: None,
            actions: VecDeque::new(),
            timers: BTreeMap::new(),
            armed: HashMap::new(),
            timer_seq: 0,
        }
    }

    /// The next thing the driver must do, in order. Call it until it returns
    /// `None` after every other call, and carry each action out before
    /// feeding in the next event: actions are not idempotent (a second
    /// `Spawn` would be a second worker). Once [`Action::Exit`] came out,
    /// nothing more does; the driver exits.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The lifecycle phase (also announced by [`Action::Phase`]).
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The serving generation.
    pub fn serving(&self) -> Option<GenId> {
        self.serving
    }

    /// The canary beside it, once ready.
    pub fn canary(&self) -> Option<GenId> {
        self.canary.as_ref().map(|c| c.generation)
    }

    /// Starts the first generation from `spec`. Call it once, first.
    pub fn start(&mut self, now: Instant, spec: Arc<GenSpec>) {
        let generation = self.new_generation(now, spec);
        self.candidate = Some(generation);
        self.set_phase(Phase::Starting);
        for slot in 0..self.slot_count(generation) {
            self.spawn(now, generation, slot);
        }
    }

    /// `baton reload`, SIGHUP or `systemctl reload`. `waiter` is `None` for
    /// a signal, which has nobody to answer. Each waiter's client id must be
    /// new; it gets exactly one [`Action::ReloadDone`], possibly preceded by
    /// [`Action::Progress`].
    pub fn request_reload(&mut self, now: Instant, waiter: Option<Waiter>) {
        if self.stopping || self.exit_code.is_some() {
            if waiter.is_some() {
                self.refuse(waiter, ReloadError::Stopping, RecordKind::Reload);
            }
            return;
        }
        if let Some(error) = self.canary_refusal() {
            self.refuse(waiter, error, RecordKind::Reload);
            return;
        }
        let busy = self.reload.is_some() || self.serving.is_none();
        if busy {
            let queued = self.queued.get_or_insert_with(Vec::new);
            if let Some(w) = waiter {
                queued.push(w);
                self.push(Action::Progress {
                    clients: vec![w.client],
                    text: "another reload is in progress; yours runs right after it".into(),
                });
            }
            return;
        }
        self.begin_reload(now, waiter.into_iter().collect(), ReloadKind::Plain);
    }

    /// `baton reload --canary N [--hold D]`: like a reload (the config is
    /// loaded, answer with `config_loaded`), but the new generation starts
    /// only `workers` (at most its configured count) beside the serving
    /// generation, which stays at full strength. The waiter is answered
    /// once they are all ready (`ReloadOk::canary`), or with the fault of
    /// the first that fails. With `hold`, the canary promotes itself that
    /// long after it became ready (after its check, if the spec has one).
    /// Refused at once while a reload, a canary or a stop runs, or before
    /// the first generation serves.
    pub fn request_canary(&mut self, now: Instant, waiter: Option<Waiter>, workers: usize, hold: Option<Duration>) {
        if let Some(error) = self.busy() {
            self.refuse(waiter, error, RecordKind::CanaryStart);
            return;
        }
        let kind = ReloadKind::Canary {
            workers: workers.max(1),
            hold,
        };
        self.begin_reload(now, waiter.into_iter().collect(), kind);
    }

    /// `baton promote`: the running canary grows into the serving
    /// generation from its pinned spec (no config is loaded), with its
    /// strategy, keeping the canary's workers. Parallel: the remaining
    /// slots start, and it takes over once all are ready. Rolling: the old
    /// generation's slots the canary covers retire first, then the rest
    /// roll one by one. A failure ends it like a failed reload: the whole
    /// canary retires and the old generation is (back) at full strength.
    /// The waiter is answered as for a reload; [`Action::CanaryEnded`]
    /// follows either way.
    pub fn promote(&mut self, now: Instant, waiter: Option<Waiter>) {
        if self.stopping || self.exit_code.is_some() {
            self.refuse(waiter, ReloadError::Stopping, RecordKind::Promote);
            return;
        }
        let Some(canary) = self.canary.take() else {
            let error = match self.canary_refusal() {
                Some(busy) => busy,
                None => ReloadError::NoCanary,
            };
            self.refuse(waiter, error, RecordKind::Promote);
            return;
        };
        let generation = canary.generation;
        self.disarm(Timer::CanaryHold(generation));
        let Some(g) = self.gens.get_mut(&generation) else {
            self.refuse(waiter, ReloadError::NoCanary, RecordKind::Promote);
            return;
        };
        g.role = Role::Starting;
        let covered = g.slots.len();
        let workers = g.spec.policy.workers.max(covered);
        let strategy = g.spec.policy.strategy;
        g.slots.resize_with(workers, Slot::default);
        self.candidate = Some(generation);
        // Only the hold promotes without a client.
        let held = waiter.is_none();
        self.reload = Some(Reload {
            waiters: waiter.into_iter().collect(),
            started: now,
            generation: Some(generation),
            next_slot: covered,
            reverting: None,
            kind: ReloadKind::Promote,
            held,
        });
        self.set_phase(Phase::Reloading);
        self.progress(format!(
            "promoting canary generation {generation}: {covered} of {workers} workers ready ({})",
            strategy_name(strategy)
        ));
        match strategy {
            ReloadStrategy::Parallel => {
                for slot in covered..workers {
                    self.spawn(now, generation, slot);
                }
                if self.all_ready(generation) {
                    self.take_over(now);
                }
            }
            ReloadStrategy::Rolling => {
                // The canary's ready workers replace the old slots they cover.
                for slot in 0..covered {
                    self.hand_over(now, slot);
                }
                self.roll_next(now);
            }
        }
    }

    /// `baton rollback`. With a canary running, it is aborted
    /// (`CanaryOutcome::RolledBack`) and the waiter answered at once.
    /// Otherwise `target` (the earlier release, which the driver resolves
    /// from its history) starts as a reload would, without loading the
    /// config; `None` is refused (`ReloadError::NoRollbackTarget`), as is
    /// a rollback while a reload or a stop runs.
    pub fn rollback(&mut self, now: Instant, waiter: Option<Waiter>, target: Option<Arc<GenSpec>>) {
        if let Some(canary) = self.canary.as_ref().map(|c| c.generation) {
            self.end_canary(now, CanaryOutcome::RolledBack);
            let serving = self.serving.unwrap_or_default();
            self.push(Action::Record(Record {
                kind: RecordKind::Rollback,
                result: RecordResult::Ok,
                generation: Some(serving),
                elapsed_ms: 0,
                reason: String::new(),
                message: format!("canary generation {canary} rolled back; generation {serving} keeps serving"),
            }));
            let ok = ReloadOk {
                generation: self.serving.unwrap_or_default(),
                elapsed_ms: 0,
                canary: false,
            };
            self.push(Action::ReloadDone {
                clients: waiter.into_iter().map(|w| w.client).collect(),
                result: Ok(ok),
            });
            return;
        }
        if let Some(error) = self.busy() {
            self.refuse(waiter, error, RecordKind::Rollback);
            return;
        }
        let Some(spec) = target else {
            self.refuse(waiter, ReloadError::NoRollbackTarget, RecordKind::Rollback);
            return;
        };
        self.begin_reload(now, waiter.into_iter().collect(), ReloadKind::Rollback);
        self.start_candidate(now, spec);
    }

    /// The answer to [`Action::RunCheck`]: `Ok` promotes the canary, an
    /// error aborts it. Ignored if that canary is gone meanwhile.
    pub fn check_done(&mut self, now: Instant, generation: GenId, result: Result<(), DriverError>) {
        if !self
            .canary
            .as_ref()
            .is_some_and(|c| c.generation == generation && c.checking)
        {
            return;
        }
        match result {
            Ok(()) => {
                self.push(Action::Log {
                    level: tracing::Level::INFO,
                    text: format!("the check of canary generation {generation} passed; promoting it"),
                });
                self.promote(now, None);
            }
            Err(error) => self.end_canary(
                now,
                CanaryOutcome::Aborted {
                    reason: format!("check failed: {error}"),
                },
            ),
        }
    }

    /// The answer to [`Action::LoadConfig`]: the resolved spec, or why the
    /// config cannot be used. Call it once per `LoadConfig`; an answer that
    /// comes after a stop request is ignored.
    pub fn config_loaded(&mut self, now: Instant, result: Result<Arc<GenSpec>, DriverError>) {
        let Some(reload) = self.reload.as_ref() else { return };
        if reload.generation.is_some() {
            return;
        }
        let spec = match result {
            Ok(spec) => spec,
            Err(error) => {
                self.finish_reload(now, Err(ReloadError::Config { error }));
                // The serving generation may have been lost while the config loaded.
                self.check_lost(now);
                return;
            }
        };
        self.start_candidate(now, spec);
    }

    /// The reload's generation from `spec`: all of it, or a canary's share.
    fn start_candidate(&mut self, now: Instant, spec: Arc<GenSpec>) {
        let kind = self.reload.as_ref().map_or(ReloadKind::Plain, |r| r.kind);
        let strategy = spec.policy.strategy;
        let generation = self.new_generation(now, spec);
        self.candidate = Some(generation);
        if let Some(reload) = self.reload.as_mut() {
            reload.generation = Some(generation);
        }
        if let ReloadKind::Canary { workers, .. } = kind {
            let count = workers.min(self.slot_count(generation));
            if let Some(g) = self.gens.get_mut(&generation) {
                g.slots.truncate(count);
                g.canary = Some(count);
            }
            self.progress(format!(
                "starting canary generation {generation} with {count} worker{} beside generation {}",
                plural(count),
                self.serving.unwrap_or_default()
            ));
            for slot in 0..count {
                self.spawn(now, generation, slot);
            }
            return;
        }
        let count = self.slot_count(generation);
        let text = format!(
            "starting generation {generation} with {count} worker{} ({})",
            plural(count),
            strategy_name(strategy)
        );
        self.progress(text);
        match strategy {
            ReloadStrategy::Parallel => {
                for slot in 0..count {
                    self.spawn(now, generation, slot);
                }
            }
            ReloadStrategy::Rolling => self.roll_next(now),
        }
    }

    /// The answer to [`Action::Spawn`]: `worker` runs as `pid` (reported in
    /// faults and `status`). From now on the driver owes an
    /// [`Supervisor::exited`] for it. Call it before any `message` or
    /// `exited` of this worker.
    pub fn spawned(&mut self, now: Instant, worker: WorkerId, pid: Pid) {
        let Some(w) = self.workers.get_mut(&worker) else { return };
        w.pid = Some(pid);
        w.state = WorkerState::Starting;
        w.started = now;
        if w.stop_pending {
            self.retire_worker(now, worker);
            return;
        }
        let Some(policy) = self.policy_of(worker) else { return };
        let ready_at = after(now, policy.ready_timeout);
        let delay = policy.ready_delay;
        if let Some(w) = self.workers.get_mut(&worker) {
            w.deadline = Some(ready_at);
        }
        self.arm(ready_at, Timer::Ready(worker));
        if let Some(delay) = delay {
            self.arm(after(now, delay), Timer::Delay(worker));
        }
    }

    /// The other answer to [`Action::Spawn`]: no process was started (or the
    /// one started is already gone and will not be reported). The worker is
    /// forgotten; no `exited` follows.
    pub fn spawn_failed(&mut self, now: Instant, worker: WorkerId, error: DriverError) {
        let Some(w) = self.workers.remove(&worker) else { return };
        self.disarm_worker(worker);
        let fault = Fault {
            worker,
            generation: w.generation,
            slot: w.slot,
            pid: None,
            failure: Failure::Spawn { error },
            errno: w.errno,
            settling_ms: None,
            ready_by: None,
            hint: None,
        };
        self.clear_slot(w.generation, w.slot, worker);
        if w.state == WorkerState::Stopping || w.stop_pending {
            self.after_exit(now, w.generation);
            return;
        }
        self.on_failure(now, fault);
        self.after_exit(now, w.generation);
    }

    /// The worker said it is ready another way than READY=1: 'ready' over
    /// Node's IPC channel, or (`log`) a line of its output matched
    /// `[readiness] pattern`. Like READY=1, it counts only while starting.
    pub fn ready_by(&mut self, now: Instant, worker: WorkerId, log_line: bool) {
        let Some(w) = self.workers.get(&worker) else { return };
        if w.state != WorkerState::Starting {
            return;
        }
        let by = if log_line {
            let pattern = self
                .gens
                .get(&w.generation)
                .and_then(|g| g.spec.launch.ready_pattern.as_ref());
            ReadyBy::Log(pattern.map_or_else(String::new, |p| p.as_str().to_owned()))
        } else {
            ReadyBy::Ipc
        };
        self.said_ready(now, worker, by);
    }

    /// A notify message from a worker (or one of its descendants), already
    /// authenticated by the driver (a MAINPID= it could not verify is not
    /// passed on). Messages for unknown or gone workers are ignored.
    pub fn message(&mut self, now: Instant, worker: WorkerId, msg: Notify) {
        let Some(w) = self.workers.get_mut(&worker) else { return };
        match msg {
            Notify::Ready => {
                if w.state == WorkerState::Starting {
                    self.said_ready(now, worker, ReadyBy::Notify);
                }
            }
            Notify::Status(text) => w.status_text = Some(text),
            Notify::Errno(errno) => {
                w.errno = Some(errno);
                // A canary is judged strictly: a reported error ends it.
                let (generation, state) = (w.generation, w.state);
                if state != WorkerState::Stopping && self.in_canary(generation) {
                    self.fail_live_worker(now, worker, Failure::Errno);
                }
            }
            Notify::MainPid(pid) => {
                if w.pid.is_some() {
                    w.pid = Some(pid);
                }
            }
            Notify::ExtendTimeout(by) => {
                if matches!(w.state, WorkerState::Starting | WorkerState::Stopping) {
                    let extended = after(now, by);
                    if w.deadline.is_none_or(|d| d < extended) {
                        w.deadline = Some(extended);
                    }
                }
            }
            Notify::Watchdog => {
                if let Some(interval) = self.policy_of(worker).and_then(|p| p.watchdog) {
                    if let Some(w) = self.workers.get_mut(&worker) {
                        w.watchdog_deadline = Some(after(now, interval));
                    }
                }
            }
            Notify::WatchdogTrigger => {
                if w.state != WorkerState::Stopping {
                    self.fail_live_worker(now, worker, Failure::WatchdogTrigger);
                }
            }
            Notify::Stopping => self.worker_stopping(now, worker),
        }
    }

    /// The worker's main process exited and was reaped (and its output
    /// drained, so that a failure report includes its last lines). Call it
    /// exactly once per `spawned` worker, whether or not the core asked it
    /// to stop; the worker id is dead afterwards.
    pub fn exited(&mut self, now: Instant, worker: WorkerId, status: ExitStatus) {
        let Some(w) = self.workers.remove(&worker) else { return };
        self.disarm_worker(worker);
        self.clear_slot(w.generation, w.slot, worker);
        if w.state != WorkerState::Stopping {
            // Exiting 0 is no failure an app means at start (see Hint).
            let at_start = w.ready_at.is_none_or(|r| now.saturating_duration_since(r) < QUICK_EXIT)
                || Some(w.generation) == self.candidate;
            let fault = Fault {
                worker,
                generation: w.generation,
                slot: w.slot,
                pid: w.reported_pid(),
                failure: Failure::Exited {
                    status,
                    was_ready: w.state == WorkerState::Ready,
                },
                errno: w.errno,
                settling_ms: w.settling_ms(now),
                ready_by: w.settling_ms(now).and(w.said_ready_by.clone()),
                hint: (status == ExitStatus::Code(0) && at_start).then(|| {
                    match self
                        .gens
                        .get(&w.generation)
                        .is_some_and(|g| g.spec.launch.node.is_some())
                    {
                        true => Hint::ExitedZeroWithPreload,
                        false => Hint::ExitedZeroAtStart,
                    }
                }),
            };
            self.on_failure(now, fault);
        }
        self.after_exit(now, w.generation);
    }

    /// The earliest deadline of a pending timer: the driver calls
    /// [`Supervisor::handle_timeout`] once the clock reaches it. `None`
    /// means nothing is pending. Ask again after every call into the core,
    /// since any of them may arm a timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|&(at, _)| at)
    }

    /// Fires every timer due at `now` (deadline `<= now`), in deadline
    /// order, including timers those arm that are already due. Calling it
    /// early or more than once is harmless: nothing that is not due fires.
    /// Drain [`Supervisor::poll_action`] afterwards.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            self.armed.remove(&timer);
            self.fire(now, timer);
        }
    }

    fn fire(&mut self, now: Instant, timer: Timer) {
        match timer {
            Timer::Ready(id) => {
                let Some(w) = self.workers.get(&id) else { return };
                if w.state != WorkerState::Starting {
                    return;
                }
                match w.deadline {
                    Some(d) if d > now => self.arm(d, Timer::Ready(id)),
                    _ => {
                        let timeout_ms = self
                            .policy_of(id)
                            .map(|p| p.ready_timeout.as_millis() as u64)
                            .unwrap_or_default();
                        self.fail_live_worker(now, id, Failure::NotReady { timeout_ms });
                    }
                }
            }
            Timer::Delay(id) => {
                if self.workers.get(&id).is_some_and(|w| w.state == WorkerState::Starting) {
                    let delay = self.policy_of(id).and_then(|p| p.ready_delay).unwrap_or_default();
                    self.said_ready(now, id, ReadyBy::Delay(delay));
                }
            }
            Timer::Settle(id) => {
                let Some(w) = self.workers.get(&id) else { return };
                if w.state != WorkerState::Settling {
                    return;
                }
                match w.deadline {
                    Some(d) if d > now => self.arm(d, Timer::Settle(id)),
                    _ => self.became_ready(now, id),
                }
            }
            Timer::Stop(id) => {
                let Some(w) = self.workers.get(&id) else { return };
                if w.state != WorkerState::Stopping {
                    return;
                }
                match (w.deadline, w.pid) {
                    (Some(d), _) if d > now => self.arm(d, Timer::Stop(id)),
                    (_, Some(_)) => self.push(Action::Kill {
                        worker: id,
                        why: "did not stop in time",
                    }),
                    _ => {}
                }
            }
            Timer::Escalate(id) => {
                let signal = self.policy_of(id).map(|p| p.stop_signal);
                let Some(w) = self.workers.get(&id) else { return };
                if let (WorkerState::Stopping, Some(_), Some(signal)) = (w.state, w.reported_pid(), signal) {
                    self.push(Action::Signal { worker: id, signal });
                }
            }
            Timer::Restart { generation, slot, seq } => self.restart_slot(now, generation, slot, seq),
            Timer::CanaryHold(generation) => self.hold_over(now, generation),
            Timer::Watchdog(id) => {
                let Some(w) = self.workers.get_mut(&id) else { return };
                if !matches!(w.state, WorkerState::Ready | WorkerState::Settling) {
                    w.watchdog_armed = false;
                    return;
                }
                match w.watchdog_deadline {
                    Some(d) if d > now => self.arm(d, Timer::Watchdog(id)),
                    _ => {
                        w.watchdog_armed = false;
                        self.fail_live_worker(now, id, Failure::WatchdogTimeout);
                    }
                }
            }
        }
    }

    /// The driver saw `worker` stay above `[limits] memory` (the driver
    /// decides what "stay" means). It is replaced
    /// gracefully: a successor starts in its slot, and only once that is
    /// ready does the old worker retire (PM2's max_memory_restart, without
    /// the gap). Ignored while a reload runs (it replaces every worker
    /// anyway) or while a successor is already on its way.
    pub fn memory_exceeded(&mut self, now: Instant, worker: WorkerId) {
        let Some(w) = self.workers.get(&worker) else { return };
        let (generation, slot) = (w.generation, w.slot);
        if matches!(w.state, WorkerState::Starting | WorkerState::Ready) && self.in_canary(generation) {
            // A canary worker is never replaced: its failure ends the canary.
            self.fail_live_worker(now, worker, Failure::MemoryLimit);
            return;
        }
        if w.state != WorkerState::Ready
            || Some(generation) != self.serving
            || self.reload.is_some()
            || self.stopping
            || self.exit_code.is_some()
        {
            return;
        }
        let eligible = self.gens.get(&generation).is_some_and(|g| {
            let restart = &g.spec.policy.restart;
            g.slots.get(slot).is_some_and(|s| {
                // Successors that keep failing pause the replacements until
                // their crashes age out of the restart window.
                let recent = s
                    .crashes
                    .iter()
                    .filter(|&&t| now.duration_since(t) <= restart.window)
                    .count();
                s.worker == Some(worker)
                    && s.successor.is_none()
                    && !s.gave_up
                    && !s.handed_over
                    && recent as u32 <= restart.limit
            })
        });
        if eligible {
            self.push(Action::Log {
                level: tracing::Level::WARN,
                text: format!(
                    "worker {slot} of generation {generation} stays above its memory limit; starting its replacement"
                ),
            });
            self.spawn_into(now, generation, slot, true);
        }
    }

    /// A successor is ready: the worker it replaces retires.
    fn successor_ready(&mut self, now: Instant, generation: GenId, slot: usize, worker: WorkerId) {
        let Some(s) = self.gens.get_mut(&generation).and_then(|g| g.slots.get_mut(slot)) else {
            return;
        };
        if s.successor != Some(worker) {
            return;
        }
        s.restarts += 1;
        match s.worker {
            Some(old) => self.retire_worker(now, old),
            None => {
                s.worker = s.successor.take();
                s.restart_pending = false;
            }
        }
    }

    /// SIGTERM/SIGINT. A second request kills what is still running. After
    /// it, the driver keeps reporting exits until [`Action::Exit`].
    pub fn request_stop(&mut self, now: Instant) {
        if self.stopping {
            let started: Vec<WorkerId> = self
                .workers
                .iter()
                .filter(|(_, w)| w.pid.is_some())
                .map(|(&id, _)| id)
                .collect();
            for worker in started {
                self.push(Action::Kill {
                    worker,
                    why: "is still running at a second stop request",
                });
            }
            return;
        }
        self.stopping = true;
        self.exit_code.get_or_insert(0);
        self.set_phase(Phase::Stopping);
        self.shut_everything_down(now);
    }

    // ---- internals -------------------------------------------------------

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// Arms `timer` for `at`, replacing an earlier arming of the same
    /// timer. A timer is never cancelled: when it fires it checks whether
    /// what it was for still holds (see [`Timer`]).
    fn arm(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        let key = (at, self.timer_seq);
        if let Some(old) = self.armed.insert(timer, key) {
            self.timers.remove(&old);
        }
        self.timers.insert(key, timer);
    }

    /// A worker is gone: its timers would only find it missing, so they go
    /// now instead of lingering (a restart timer belongs to its slot and
    /// stays).
    fn disarm_worker(&mut self, worker: WorkerId) {
        for timer in [
            Timer::Ready(worker),
            Timer::Delay(worker),
            Timer::Settle(worker),
            Timer::Stop(worker),
            Timer::Escalate(worker),
            Timer::Watchdog(worker),
        ] {
            self.disarm(timer);
        }
    }

    /// Drops a timer that can only find its cause gone, to save the driver
    /// a wakeup.
    fn disarm(&mut self, timer: Timer) {
        if let Some(key) = self.armed.remove(&timer) {
            self.timers.remove(&key);
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if self.phase != phase {
            self.phase = phase;
            self.push(Action::Phase(phase));
        }
    }

    fn progress(&mut self, text: String) {
        let clients: Vec<ClientId> = self
            .reload
            .iter()
            .flat_map(|r| r.waiters.iter().map(|w| w.client))
            .collect();
        if !clients.is_empty() {
            self.push(Action::Progress { clients, text });
        }
    }

    fn new_generation(&mut self, now: Instant, spec: Arc<GenSpec>) -> GenId {
        let id = self.next_gen;
        self.next_gen = id.next();
        let slots = (0..spec.policy.workers).map(|_| Slot::default()).collect();
        self.gens.insert(
            id,
            Generation {
                spec,
                role: Role::Starting,
                slots,
                created: now,
                drain_waiters: Vec::new(),
                canary: None,
                served: false,
            },
        );
        id
    }

    fn slot_count(&self, generation: GenId) -> usize {
        self.gens.get(&generation).map_or(0, |g| g.slots.len())
    }

    fn policy_of(&self, worker: WorkerId) -> Option<&crate::engine::spec::Policy> {
        let w = self.workers.get(&worker)?;
        self.gens.get(&w.generation).map(|g| &g.spec.policy)
    }

    fn spawn(&mut self, now: Instant, generation: GenId, slot: usize) {
        self.spawn_into(now, generation, slot, false);
    }

    /// Starts a worker in `slot`: as the slot's worker, or as the successor
    /// of the one still serving there.
    fn spawn_into(&mut self, now: Instant, generation: GenId, slot: usize, successor: bool) {
        let Some(g) = self.gens.get_mut(&generation) else {
            return;
        };
        let Some(s) = g.slots.get_mut(slot) else { return };
        let id = self.next_worker;
        self.next_worker = id.next();
        if successor {
            s.successor = Some(id);
        } else {
            s.worker = Some(id);
            s.restart_pending = false;
        }
        let spec = g.spec.clone();
        self.workers.insert(
            id,
            Worker {
                generation,
                slot,
                pid: None,
                state: WorkerState::Spawning,
                stop_pending: false,
                started: now,
                ready_at: None,
                said_ready: None,
                said_ready_by: None,
                deadline: None,
                watchdog_deadline: None,
                watchdog_armed: false,
                status_text: None,
                errno: None,
            },
        );
        self.push(Action::Spawn {
            worker: id,
            generation,
            slot,
            spec,
        });
    }

    fn clear_slot(&mut self, generation: GenId, slot: usize, worker: WorkerId) {
        if let Some(s) = self.gens.get_mut(&generation).and_then(|g| g.slots.get_mut(slot)) {
            if s.worker == Some(worker) {
                // A successor already on its way takes the slot over.
                s.worker = s.successor.take();
            } else if s.successor == Some(worker) {
                s.successor = None;
            }
        }
    }

    /// Sends the stop signal and arms the kill deadline; a worker that never
    /// became ready is killed at once, unless its generation served (a
    /// restart, which may already accept). Idempotent.
    fn retire_worker(&mut self, now: Instant, worker: WorkerId) {
        self.stop_worker(now, worker, false);
    }

    /// [`Self::retire_worker`] for a worker that failed: one that never
    /// became ready is killed at once whatever its generation.
    fn retire_failed_worker(&mut self, now: Instant, worker: WorkerId) {
        self.stop_worker(now, worker, true);
    }

    fn stop_worker(&mut self, now: Instant, worker: WorkerId, failed: bool) {
        let stop = self
            .policy_of(worker)
            .map(|p| (p.stop_signal, p.stop_timeout, p.stop_message));
        let Some(w) = self.workers.get_mut(&worker) else { return };
        let (generation, slot) = (w.generation, w.slot);
        if w.state == WorkerState::Stopping {
            return;
        }
        if w.state == WorkerState::Spawning {
            w.stop_pending = true;
            self.clear_slot(generation, slot, worker);
            return;
        }
        let Some((signal, timeout, message)) = stop else { return };
        let served = !failed && self.gens.get(&generation).is_some_and(|g| g.served);
        let Some(w) = self.workers.get_mut(&worker) else { return };
        w.state = WorkerState::Stopping;
        if w.ready_at.is_none() && !served {
            // It never said it was ready, and its release never served, so
            // it has promised nothing and nobody relies on it draining.
            // Killed at once, it cannot start serving from the shared
            // sockets after its generation was given up (an app still
            // loading when its deadline passed). A restart of a generation
            // that served is drained like any worker: it may already be
            // accepting, and its release is known good.
            w.deadline = None;
            self.clear_slot(generation, slot, worker);
            self.push(Action::Kill {
                worker,
                why: "never became ready, so it is not drained",
            });
            return;
        }
        let deadline = after(now, timeout);
        w.deadline = Some(deadline);
        let target = w.reported_pid();
        self.clear_slot(generation, slot, worker);
        if message {
            // PM2's shutdown_with_message: the message first, the signal at
            // half time, SIGKILL at the deadline, all within one timeout.
            self.push(Action::StopMessage { worker });
            self.arm(after(now, timeout / 2), Timer::Escalate(worker));
        } else if target.is_some() {
            self.push(Action::Signal { worker, signal });
        }
        self.arm(deadline, Timer::Stop(worker));
    }

    fn retire_generation(&mut self, now: Instant, generation: GenId) {
        let Some(g) = self.gens.get_mut(&generation) else {
            return;
        };
        g.role = Role::Retiring;
        for s in &mut g.slots {
            s.restart_pending = false;
        }
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.generation == generation)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            self.retire_worker(now, id);
        }
        self.after_exit(now, generation);
    }

    fn live_workers(&self, generation: GenId) -> impl Iterator<Item = (&WorkerId, &Worker)> {
        self.workers
            .iter()
            .filter(move |(_, w)| w.generation == generation && w.state != WorkerState::Stopping && !w.stop_pending)
    }

    /// The worker said it is ready (READY=1, 'ready', its log line, or its
    /// delay passed). With `[readiness] settle` it now settles: the
    /// readiness timeout no longer applies (the settle comes after it, so a
    /// worker that takes the whole timeout still gets its settle), its
    /// watchdog starts, and any failure before the settle is over is a
    /// failed start, exactly as before READY.
    fn said_ready(&mut self, now: Instant, worker: WorkerId, by: ReadyBy) {
        let (settle, watchdog) = match self.policy_of(worker) {
            Some(p) => (p.settle, p.watchdog),
            None => return,
        };
        if settle.is_zero() {
            self.became_ready(now, worker);
            return;
        }
        let Some(w) = self.workers.get_mut(&worker) else { return };
        w.state = WorkerState::Settling;
        w.said_ready = Some(now);
        w.said_ready_by = Some(by.clone());
        let until = after(now, settle);
        w.deadline = Some(until);
        let (generation, slot) = (w.generation, w.slot);
        if let Some(interval) = watchdog {
            self.start_watchdog(now, worker, interval);
        }
        self.disarm(Timer::Ready(worker));
        self.disarm(Timer::Delay(worker));
        self.arm(until, Timer::Settle(worker));
        if Some(generation) == self.candidate {
            self.progress(format!(
                "worker {slot} of generation {generation} {by}; settling for {}",
                humantime::format_duration(settle)
            ));
        }
    }

    /// Expects `worker`'s next ping within `interval` from now, arming its
    /// watchdog timer the first time.
    fn start_watchdog(&mut self, now: Instant, worker: WorkerId, interval: Duration) {
        let Some(w) = self.workers.get_mut(&worker) else { return };
        w.watchdog_deadline = Some(after(now, interval));
        if !w.watchdog_armed {
            w.watchdog_armed = true;
            self.arm(after(now, interval), Timer::Watchdog(worker));
        }
    }

    fn became_ready(&mut self, now: Instant, worker: WorkerId) {
        let watchdog = self.policy_of(worker).and_then(|p| p.watchdog);
        let Some(w) = self.workers.get_mut(&worker) else { return };
        w.state = WorkerState::Ready;
        w.ready_at = Some(now);
        w.said_ready.get_or_insert(now);
        w.deadline = None;
        let (generation, slot) = (w.generation, w.slot);
        if let Some(interval) = watchdog {
            self.start_watchdog(now, worker, interval);
        }
        self.disarm(Timer::Ready(worker));
        self.disarm(Timer::Delay(worker));
        self.disarm(Timer::Settle(worker));
        if Some(generation) == self.candidate {
            let reverting = self.reload.as_ref().is_some_and(|r| r.reverting.is_some());
            if reverting {
                return;
            }
            let kind = self.reload.as_ref().map(|r| r.kind);
            let canary = matches!(kind, Some(ReloadKind::Canary { .. }));
            let rolling = kind.is_some()
                && !canary
                && self.gens.get(&generation).map(|g| g.spec.policy.strategy) == Some(ReloadStrategy::Rolling);
            if rolling {
                self.progress(format!("worker {slot} of generation {generation} is ready"));
                self.hand_over(now, slot);
                self.roll_next(now);
            } else if self.all_ready(generation) {
                if canary {
                    self.canary_ready(now);
                } else {
                    self.take_over(now);
                }
            }
        } else if Some(generation) == self.serving {
            self.successor_ready(now, generation, slot, worker);
            self.check_revert(now);
        }
    }

    fn all_ready(&self, generation: GenId) -> bool {
        let Some(g) = self.gens.get(&generation) else {
            return false;
        };
        g.slots.iter().all(|s| {
            s.worker
                .and_then(|id| self.workers.get(&id))
                .is_some_and(|w| w.state == WorkerState::Ready)
        })
    }

    /// Rolling: the candidate's `slot` is ready, so the old one retires.
    fn hand_over(&mut self, now: Instant, slot: usize) {
        let Some(old) = self.serving else { return };
        let Some(s) = self.gens.get_mut(&old).and_then(|g| g.slots.get_mut(slot)) else {
            return;
        };
        s.handed_over = true;
        s.restart_pending = false;
        // A memory successor on its way goes too: the slot is no longer
        // the old generation's to fill.
        let (worker, successor) = (s.worker, s.successor);
        for id in successor.into_iter().chain(worker) {
            self.retire_worker(now, id);
        }
    }

    /// Rolling: start the next slot, or finish when all are ready.
    fn roll_next(&mut self, now: Instant) {
        let Some(generation) = self.candidate else { return };
        let count = self.slot_count(generation);
        let Some(reload) = self.reload.as_mut() else { return };
        let next = reload.next_slot;
        if next < count {
            reload.next_slot += 1;
            self.spawn(now, generation, next);
        } else {
            self.take_over(now);
        }
    }

    /// The candidate is ready: it serves, the old generation retires.
    fn take_over(&mut self, now: Instant) {
        let Some(generation) = self.candidate.take() else {
            return;
        };
        if let Some(g) = self.gens.get_mut(&generation) {
            g.role = Role::Serving;
            g.served = true;
        }
        let old = self.serving.replace(generation);
        if let Some(old) = old {
            self.retire_generation(now, old);
        }
        if self.reload.is_some() {
            let elapsed_ms = self.reload.as_ref().map_or(0, |r| (now - r.started).as_millis() as u64);
            let ok = ReloadOk {
                generation,
                elapsed_ms,
                canary: false,
            };
            let waiting: Vec<Waiter> = self
                .reload
                .as_ref()
                .map(|r| r.waiters.iter().filter(|w| w.wait).copied().collect())
                .unwrap_or_default();
            if !waiting.is_empty() {
                self.progress(format!(
                    "generation {generation} is serving; waiting for the old one to exit"
                ));
            }
            match old.and_then(|o| self.gens.get_mut(&o)) {
                Some(g) => g.drain_waiters.extend(waiting.iter().map(|w| (w.client, ok.clone()))),
                None => {
                    if !waiting.is_empty() {
                        self.push(Action::ReloadDone {
                            clients: waiting.iter().map(|w| w.client).collect(),
                            result: Ok(ok.clone()),
                        });
                    }
                }
            }
            if let Some(r) = self.reload.as_mut() {
                r.waiters.retain(|w| !w.wait);
            }
            self.finish_reload(now, Ok(ok));
        } else {
            self.set_phase(Phase::Ready);
            self.start_queued(now);
        }
        if let Some(old) = old {
            self.after_exit(now, old);
        }
    }

    fn begin_reload(&mut self, now: Instant, waiters: Vec<Waiter>, kind: ReloadKind) {
        self.reload = Some(Reload {
            waiters,
            started: now,
            generation: None,
            next_slot: 0,
            reverting: None,
            kind,
            held: false,
        });
        self.set_phase(Phase::Reloading);
        if matches!(kind, ReloadKind::Plain | ReloadKind::Canary { .. }) {
            self.push(Action::LoadConfig);
        }
    }

    fn start_queued(&mut self, now: Instant) {
        if self.reload.is_some() || self.stopping || self.exit_code.is_some() {
            return;
        }
        let Some(waiters) = self.queued.take() else { return };
        match self.canary_refusal() {
            // A follow-up must not replace a canary behind its back.
            Some(error) => {
                let clients = waiters.iter().map(|w| w.client).collect();
                self.push(Action::Record(refusal(RecordKind::Reload, &error)));
                self.push(Action::ReloadDone {
                    clients,
                    result: Err(error),
                });
            }
            None => self.begin_reload(now, waiters, ReloadKind::Plain),
        }
    }

    /// Answers a request that cannot run now, at once; nothing changes. A
    /// request nobody waits for (SIGHUP) is still reported, for the log.
    fn refuse(&mut self, waiter: Option<Waiter>, error: ReloadError, kind: RecordKind) {
        self.push(Action::Record(refusal(kind, &error)));
        self.push(Action::ReloadDone {
            clients: waiter.into_iter().map(|w| w.client).collect(),
            result: Err(error),
        });
    }

    /// Why a plain reload must not run now because of a canary.
    fn canary_refusal(&self) -> Option<ReloadError> {
        if let Some(c) = &self.canary {
            return Some(ReloadError::CanaryRunning {
                generation: c.generation,
            });
        }
        if self
            .reload
            .as_ref()
            .is_some_and(|r| matches!(r.kind, ReloadKind::Canary { .. }))
        {
            return Some(ReloadError::Busy {
                reason: "a canary is starting; once it is ready, `baton promote` or `baton rollback` decide what happens next"
                    .into(),
            });
        }
        None
    }

    /// Why a canary or a rollback cannot start now.
    fn busy(&self) -> Option<ReloadError> {
        if self.stopping || self.exit_code.is_some() {
            return Some(ReloadError::Stopping);
        }
        if let Some(error) = self.canary_refusal() {
            return Some(error);
        }
        let reason = if self.reload.is_some() {
            "a reload is in progress"
        } else if self.serving.is_none() {
            "the first generation is not serving yet"
        } else {
            return None;
        };
        Some(ReloadError::Busy { reason: reason.into() })
    }

    /// `generation` is a canary: ready beside the serving generation, or
    /// still starting as one. Its workers fail on ERRNO= and the memory
    /// limit, and are never restarted.
    fn in_canary(&self, generation: GenId) -> bool {
        match self.gens.get(&generation).map(|g| g.role) {
            Some(Role::Canary) => true,
            Some(Role::Starting) => self
                .reload
                .as_ref()
                .is_some_and(|r| r.generation == Some(generation) && matches!(r.kind, ReloadKind::Canary { .. })),
            _ => false,
        }
    }

    /// Every canary worker is ready: it runs beside the serving generation
    /// until `promote`, `rollback`, a failure or its hold.
    fn canary_ready(&mut self, now: Instant) {
        let Some(generation) = self.candidate.take() else {
            return;
        };
        let Some(reload) = self.reload.as_ref() else { return };
        // `--hold`, else the canary's own `[canary] hold`.
        let hold = match reload.kind {
            ReloadKind::Canary { hold, .. } => {
                hold.or_else(|| self.gens.get(&generation).and_then(|g| g.spec.policy.canary_hold))
            }
            _ => None,
        };
        let elapsed_ms = now.duration_since(reload.started).as_millis() as u64;
        if let Some(g) = self.gens.get_mut(&generation) {
            g.role = Role::Canary;
        }
        self.canary = Some(Canary {
            generation,
            ready_at: now,
            checking: false,
        });
        if let Some(hold) = hold {
            self.arm(after(now, hold), Timer::CanaryHold(generation));
        }
        let ok = ReloadOk {
            generation,
            elapsed_ms,
            canary: true,
        };
        self.finish_reload(now, Ok(ok));
        // The serving generation may have been lost while the canary started.
        self.check_lost(now);
    }

    /// The canary's hold is over without a failure: its check runs, or
    /// (without one) it is promoted.
    fn hold_over(&mut self, now: Instant, generation: GenId) {
        let check = self.gens.get(&generation).and_then(|g| g.spec.policy.check.clone());
        let Some(canary) = self
            .canary
            .as_mut()
            .filter(|c| c.generation == generation && !c.checking)
        else {
            return;
        };
        match check {
            Some(check) => {
                canary.checking = true;
                self.push(Action::Log {
                    level: tracing::Level::INFO,
                    text: format!("the hold of canary generation {generation} is over; running its check"),
                });
                self.push(Action::RunCheck { generation, check });
            }
            None => {
                self.push(Action::Log {
                    level: tracing::Level::INFO,
                    text: format!("the hold of canary generation {generation} is over; promoting it"),
                });
                self.promote(now, None);
            }
        }
    }

    /// Ends the running canary: every worker retires (none is restarted),
    /// the serving generation stays as it is.
    fn end_canary(&mut self, now: Instant, outcome: CanaryOutcome) {
        let Some(canary) = self.canary.take() else { return };
        self.disarm(Timer::CanaryHold(canary.generation));
        self.retire_generation(now, canary.generation);
        self.record_abort(now, &canary, &outcome);
        self.canary_ended(now, canary.generation, outcome);
    }

    /// The record of a ready canary that a failure ended (a rollback's is
    /// the rollback's; a promotion's, the promotion's).
    fn record_abort(&mut self, now: Instant, canary: &Canary, outcome: &CanaryOutcome) {
        let CanaryOutcome::Aborted { reason } = outcome else {
            return;
        };
        let generation = canary.generation;
        self.push(Action::Record(Record {
            kind: RecordKind::CanaryAbort,
            result: RecordResult::Aborted,
            generation: Some(generation),
            elapsed_ms: now.saturating_duration_since(canary.ready_at).as_millis() as u64,
            reason: reason.clone(),
            message: format!("canary generation {generation} aborted: {reason}; the serving generation is untouched"),
        }));
    }

    fn canary_ended(&mut self, now: Instant, generation: GenId, outcome: CanaryOutcome) {
        self.last_canary = Some(LastCanary {
            generation,
            outcome: outcome.clone(),
            finished: now,
        });
        self.push(Action::CanaryEnded { generation, outcome });
    }

    /// The record of a reload, canary, promotion or rollback that ran.
    fn reload_record(&self, reload: &Reload, result: &ReloadResult, elapsed_ms: u64) -> Record {
        let kind = match reload.kind {
            ReloadKind::Plain => RecordKind::Reload,
            ReloadKind::Canary { .. } => RecordKind::CanaryStart,
            ReloadKind::Promote => RecordKind::Promote,
            ReloadKind::Rollback => RecordKind::Rollback,
        };
        let took = humantime::format_duration(Duration::from_millis(elapsed_ms));
        let serving = self.serving.unwrap_or_default();
        let (result, generation, reason, message) = match result {
            Ok(ok) => {
                let g = ok.generation;
                let message = match kind {
                    RecordKind::CanaryStart => {
                        format!("canary generation {g} is ready beside generation {serving} (took {took})")
                    }
                    RecordKind::Promote if reload.held => {
                        format!("canary generation {g} promoted after its hold: generation {g} serving (took {took})")
                    }
                    RecordKind::Promote => {
                        format!("canary generation {g} promoted: generation {g} serving (took {took})")
                    }
                    RecordKind::Rollback => format!("rollback finished: generation {g} serving (took {took})"),
                    _ => format!("reload finished: generation {g} serving (took {took})"),
                };
                (RecordResult::Ok, Some(g), String::new(), message)
            }
            Err(e) => {
                let message = match kind {
                    RecordKind::CanaryStart => format!("canary failed: {e}"),
                    RecordKind::Promote => format!("promotion failed: {e}"),
                    RecordKind::Rollback => format!("rollback failed: {e}"),
                    _ => format!("reload failed: {e}"),
                };
                (RecordResult::Failed, reload.generation, e.to_string(), message)
            }
        };
        Record {
            kind,
            result,
            generation,
            elapsed_ms,
            reason,
            message,
        }
    }

    fn finish_reload(&mut self, now: Instant, result: ReloadResult) {
        let Some(reload) = self.reload.take() else { return };
        let elapsed_ms = (now - reload.started).as_millis() as u64;
        self.last_reload = Some(LastReload {
            generation: match &result {
                Ok(ok) => Some(ok.generation),
                Err(_) => reload.generation,
            },
            ok: result.is_ok(),
            message: match &result {
                Ok(ok) if ok.canary => format!(
                    "generation {} is a canary beside generation {}",
                    ok.generation,
                    self.serving.unwrap_or_default()
                ),
                Ok(ok) => format!("generation {} serving", ok.generation),
                Err(e) => e.to_string(),
            },
            finished: now,
            elapsed_ms,
        });
        let promoted = match (&result, reload.kind, reload.generation) {
            (Ok(ok), ReloadKind::Promote, _) => Some((ok.generation, CanaryOutcome::Promoted)),
            (Err(e), ReloadKind::Promote, Some(generation)) => Some((
                generation,
                CanaryOutcome::Aborted {
                    reason: format!("the promotion failed: {e}"),
                },
            )),
            _ => None,
        };
        let record = self.reload_record(&reload, &result, elapsed_ms);
        self.push(Action::Record(record));
        let clients: Vec<ClientId> = reload.waiters.iter().map(|w| w.client).collect();
        self.push(Action::ReloadDone { clients, result });
        if let Some((generation, outcome)) = promoted {
            self.canary_ended(now, generation, outcome);
        }
        if !self.stopping {
            self.set_phase(Phase::Ready);
        }
        self.start_queued(now);
    }

    /// A live worker failed without exiting (timeout, watchdog): stop it and
    /// treat it like a crash.
    fn fail_live_worker(&mut self, now: Instant, worker: WorkerId, failure: Failure) {
        let Some(w) = self.workers.get(&worker) else { return };
        let fault = Fault {
            worker,
            generation: w.generation,
            slot: w.slot,
            pid: w.reported_pid(),
            failure,
            errno: w.errno,
            settling_ms: w.settling_ms(now),
            ready_by: w.settling_ms(now).and(w.said_ready_by.clone()),
            hint: None,
        };
        self.retire_failed_worker(now, worker);
        self.on_failure(now, fault);
    }

    /// The worker behind `fault` is gone or going; decide what that means
    /// for its generation.
    fn on_failure(&mut self, now: Instant, fault: Fault) {
        let generation = fault.generation;
        if Some(generation) == self.candidate {
            if self.reload.is_none() {
                self.push(Action::WorkerFailed {
                    fault: fault.clone(),
                    context: "the first generation failed to start; stopping it and exiting with status 1".into(),
                });
                // The first start failed: nothing to fall back to.
                self.exit_code.get_or_insert(1);
                self.shut_everything_down(now);
                return;
            }
            if self.reload.as_ref().is_some_and(|r| r.reverting.is_some()) {
                self.push(Action::WorkerFailed {
                    fault,
                    context: "the new generation is already being rolled back".into(),
                });
                self.check_revert(now);
                return;
            }
            let context = if self.in_canary(generation) {
                "the canary failed to start; the serving generation is untouched"
            } else {
                "the new generation failed; the old one keeps serving"
            };
            self.push(Action::WorkerFailed {
                fault: fault.clone(),
                context: context.into(),
            });
            self.fail_reload(now, ReloadError::Worker { fault });
            return;
        }
        if self.canary.as_ref().is_some_and(|c| c.generation == generation) {
            self.push(Action::WorkerFailed {
                fault: fault.clone(),
                context: format!(
                    "aborting canary generation {generation}: its workers retire and none is restarted; generation {} keeps serving",
                    self.serving.unwrap_or_default()
                ),
            });
            let reason = fault.to_string();
            self.end_canary(now, CanaryOutcome::Aborted { reason });
            return;
        }
        if Some(generation) == self.serving && !self.stopping {
            let slot = fault.slot;
            let index = self.actions.len();
            let next = self.crashed(now, generation, slot);
            // Logged before whatever the crash led to (restart, exit), and
            // saying which it is.
            self.actions.insert(
                index,
                Action::WorkerFailed {
                    context: next.describe(&fault.failure),
                    fault,
                },
            );
        }
    }

    fn fail_reload(&mut self, now: Instant, error: ReloadError) {
        let Some(candidate) = self.candidate else {
            self.finish_reload(now, Err(error));
            return;
        };
        let handed_over: Vec<usize> = self
            .serving
            .and_then(|s| self.gens.get(&s))
            .map(|g| {
                g.slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.handed_over)
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        if handed_over.is_empty() {
            self.candidate = None;
            self.retire_generation(now, candidate);
            self.finish_reload(now, Err(error));
            self.check_lost(now);
            return;
        }
        // Rolling reload failed midway: the candidate's ready workers keep
        // serving until the old slots they replaced are ready again.
        self.progress(format!(
            "{error}; restoring {} worker{} of generation {}",
            handed_over.len(),
            plural(handed_over.len()),
            self.serving.unwrap_or_default()
        ));
        if let Some(r) = self.reload.as_mut() {
            r.reverting = Some(error);
        }
        let not_ready: Vec<WorkerId> = self
            .live_workers(candidate)
            .filter(|(_, w)| w.state != WorkerState::Ready)
            .map(|(&id, _)| id)
            .collect();
        for id in not_ready {
            self.retire_worker(now, id);
        }
        if let Some(old) = self.serving {
            for slot in handed_over {
                let Some(s) = self.gens.get_mut(&old).and_then(|g| g.slots.get_mut(slot)) else {
                    continue;
                };
                s.handed_over = false;
                // A slot given up before the reload stays given up: a worker
                // there would have no restarts and nobody to notice it is lost.
                if !s.gave_up {
                    self.spawn(now, old, slot);
                }
            }
        }
        self.check_revert(now);
    }

    /// Rolling revert: retire each candidate worker whose old slot is back.
    fn check_revert(&mut self, now: Instant) {
        let (Some(candidate), Some(old)) = (self.candidate, self.serving) else {
            return;
        };
        if self.reload.as_ref().is_none_or(|r| r.reverting.is_none()) {
            return;
        }
        let restored: Vec<WorkerId> = self
            .live_workers(candidate)
            .filter(|(_, w)| {
                // A slot the old generation never had has nothing to wait for.
                self.gens.get(&old).and_then(|g| g.slots.get(w.slot)).is_none_or(|s| {
                    s.gave_up
                        || s.worker
                            .and_then(|id| self.workers.get(&id))
                            .is_some_and(|ow| ow.state == WorkerState::Ready)
                })
            })
            .map(|(&id, _)| id)
            .collect();
        for id in restored {
            self.retire_worker(now, id);
        }
        if self.live_workers(candidate).next().is_none() {
            self.candidate = None;
            self.retire_generation(now, candidate);
            let error = self
                .reload
                .as_mut()
                .and_then(|r| r.reverting.take())
                .unwrap_or(ReloadError::Stopping);
            self.finish_reload(now, Err(error));
            self.check_lost(now);
        }
    }

    /// Records a failure in a serving slot and restarts it or gives it up.
    /// Returns which, for the log line the caller writes.
    fn crashed(&mut self, now: Instant, generation: GenId, slot: usize) -> Next {
        let Some(g) = self.gens.get_mut(&generation) else {
            return Next::Nothing;
        };
        let policy = g.spec.policy.restart.clone();
        let Some(s) = g.slots.get_mut(slot) else {
            return Next::Nothing;
        };
        if s.handed_over {
            return Next::HandedOver;
        }
        if s.gave_up {
            return Next::Nothing;
        }
        s.crashes.push_back(now);
        if s.worker.is_some() {
            // The slot still has a live worker: a memory successor failed
            // (the old worker keeps serving), or the old worker died while
            // its successor was starting (which now holds the slot). The
            // crash is recorded, which paces further replacements, but
            // there is nothing to restart and no reason to give up.
            return Next::Occupied;
        }
        s.restarts += 1;
        while s
            .crashes
            .front()
            .is_some_and(|&t| now.duration_since(t) > policy.window)
        {
            s.crashes.pop_front();
        }
        let recent = s.crashes.len() as u32;
        if recent > policy.limit {
            s.gave_up = true;
            let next = Next::GiveUp {
                slot,
                failures: recent,
                limit: policy.limit,
                window: policy.window,
            };
            self.check_revert(now);
            self.check_lost(now);
            return next;
        }
        let factor = 1u32.checked_shl(recent.saturating_sub(1)).unwrap_or(u32::MAX);
        let delay = policy.delay.saturating_mul(factor).min(policy.max_delay);
        s.restart_pending = true;
        s.restart_seq += 1;
        let seq = s.restart_seq;
        self.arm(after(now, delay), Timer::Restart { generation, slot, seq });
        Next::Restart(delay)
    }

    fn restart_slot(&mut self, now: Instant, generation: GenId, slot: usize, seq: u64) {
        if self.stopping || self.exit_code.is_some() || Some(generation) != self.serving {
            return;
        }
        let Some(s) = self.gens.get(&generation).and_then(|g| g.slots.get(slot)) else {
            return;
        };
        if !s.restart_pending || s.restart_seq != seq || s.worker.is_some() || s.gave_up || s.handed_over {
            return;
        }
        self.spawn(now, generation, slot);
    }

    /// STOPPING=1: the worker is leaving on its own.
    fn worker_stopping(&mut self, now: Instant, worker: WorkerId) {
        let Some(w) = self.workers.get(&worker) else { return };
        if w.state == WorkerState::Stopping {
            return;
        }
        let (generation, slot) = (w.generation, w.slot);
        if Some(generation) == self.candidate || self.in_canary(generation) {
            self.fail_live_worker(now, worker, Failure::StoppedEarly);
            return;
        }
        self.retire_worker(now, worker);
        if Some(generation) == self.serving && !self.stopping {
            // Its replacement starts after the usual restart delay while it
            // drains. It counts toward the restart limit like a crash, so a
            // worker that keeps announcing STOPPING=1 cannot fork-loop.
            let index = self.actions.len();
            let next = self.crashed(now, generation, slot);
            let text = format!(
                "worker {slot} of generation {generation} sent STOPPING=1; letting it drain; {}",
                next.describe(&Failure::StoppedEarly)
            );
            self.actions.insert(
                index,
                Action::Log {
                    level: tracing::Level::WARN,
                    text,
                },
            );
        }
    }

    /// The serving generation lost every worker with nothing to restart.
    fn check_lost(&mut self, now: Instant) {
        if self.stopping || self.reload.is_some() || self.exit_code.is_some() {
            return;
        }
        let Some(serving) = self.serving else { return };
        let Some(g) = self.gens.get(&serving) else { return };
        let recovering = g.slots.iter().any(|s| s.restart_pending);
        if recovering || self.live_workers(serving).next().is_some() {
            return;
        }
        self.push(Action::Log {
            level: tracing::Level::ERROR,
            text: format!(
                "generation {serving} has no worker left and its restarts are exhausted; stopping and exiting with status 1"
            ),
        });
        self.exit_code = Some(1);
        self.shut_everything_down(now);
    }

    fn shut_everything_down(&mut self, now: Instant) {
        self.set_phase(Phase::Stopping);
        let reason = if self.stopping {
            "baton is stopping"
        } else {
            "baton is exiting"
        };
        let ready = self.canary.take();
        let canary = ready.as_ref().map(|c| c.generation).or_else(|| {
            self.reload
                .as_ref()
                .filter(|r| r.kind == ReloadKind::Promote)
                .and_then(|r| r.generation)
        });
        if let Some(generation) = canary {
            self.disarm(Timer::CanaryHold(generation));
            let outcome = CanaryOutcome::Aborted {
                reason: reason.to_owned(),
            };
            if let Some(c) = &ready {
                self.record_abort(now, c, &outcome);
            }
            self.canary_ended(now, generation, outcome);
        }
        if let Some(reload) = self.reload.take() {
            let error = ReloadError::Stopping;
            let elapsed_ms = now.saturating_duration_since(reload.started).as_millis() as u64;
            let record = self.reload_record(&reload, &Err(error), elapsed_ms);
            self.push(Action::Record(record));
            let clients: Vec<ClientId> = reload.waiters.iter().map(|w| w.client).collect();
            if !clients.is_empty() {
                self.push(Action::ReloadDone {
                    clients,
                    result: Err(ReloadError::Stopping),
                });
            }
        }
        if let Some(queued) = self.queued.take() {
            let clients: Vec<ClientId> = queued.iter().map(|w| w.client).collect();
            if !clients.is_empty() {
                self.push(Action::Record(refusal(RecordKind::Reload, &ReloadError::Stopping)));
                self.push(Action::ReloadDone {
                    clients,
                    result: Err(ReloadError::Stopping),
                });
            }
        }
        self.candidate = None;
        let gens: Vec<GenId> = self.gens.keys().copied().collect();
        for g in gens {
            self.retire_generation(now, g);
        }
        self.check_exit();
    }

    /// Bookkeeping after a worker of `generation` left.
    fn after_exit(&mut self, now: Instant, generation: GenId) {
        let gone = self.gens.get(&generation).is_some_and(|g| g.role == Role::Retiring)
            && !self.workers.values().any(|w| w.generation == generation);
        if gone {
            if let Some(g) = self.gens.remove(&generation) {
                self.push(Action::Retired { generation });
                let mut by_result: Vec<(ClientId, ReloadOk)> = g.drain_waiters;
                for (client, ok) in by_result.drain(..) {
                    self.push(Action::ReloadDone {
                        clients: vec![client],
                        result: Ok(ok),
                    });
                }
            }
        }
        let _ = now;
        self.check_exit();
    }

    fn check_exit(&mut self) {
        if let Some(code) = self.exit_code {
            if self.workers.is_empty() && !self.exited {
                self.exited = true;
                self.push(Action::Exit(code));
            }
        }
    }

    /// A picture of everything, for `baton status`. No side effects; callable
    /// at any time.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let generations = self
            .gens
            .iter()
            .map(|(&id, g)| {
                let mut workers: Vec<WorkerSnapshot> = self
                    .workers
                    .iter()
                    .filter(|(_, w)| w.generation == id)
                    .map(|(&wid, w)| WorkerSnapshot {
                        id: wid,
                        slot: w.slot,
                        pid: w.reported_pid(),
                        state: w.state,
                        uptime_ms: now.duration_since(w.started).as_millis() as u64,
                        ready_ms: w.ready_at.map(|r| now.duration_since(r).as_millis() as u64),
                        restarts: g.slots.get(w.slot).map_or(0, |s| s.restarts),
                        status: w.status_text.clone(),
                        rss_bytes: None,
                        cpu_usec: None,
                        cgroup: None,
                    })
                    .collect();
                workers.sort_by_key(|w| (w.slot, w.id));
                let role = g.role;
                GenerationSnapshot {
                    id,
                    role,
                    age_ms: now.duration_since(g.created).as_millis() as u64,
                    slots: g.slots.len(),
                    ready: g
                        .slots
                        .iter()
                        .filter(|s| {
                            s.worker
                                .and_then(|id| self.workers.get(&id))
                                .is_some_and(|w| w.state == WorkerState::Ready)
                        })
                        .count(),
                    restarts: g.slots.iter().map(|s| s.restarts).sum(),
                    given_up: g
                        .slots
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.gave_up)
                        .map(|(i, _)| i)
                        .collect(),
                    workers,
                    command: g.spec.launch.argv.clone(),
                    directory: g.spec.launch.directory.clone(),
                }
            })
            .collect();
        Snapshot {
            phase: self.phase,
            serving: self.serving,
            candidate: self.candidate,
            reload_in_progress: self.reload.is_some(),
            reload_queued: self.queued.is_some(),
            generations,
            last_reload: self.last_reload.clone(),
            canary: self.canary.as_ref().map(|c| CanarySnapshot {
                generation: c.generation,
                ready_ms: now.duration_since(c.ready_at).as_millis() as u64,
                hold_left_ms: self
                    .armed
                    .get(&Timer::CanaryHold(c.generation))
                    .map(|&(at, _)| at.saturating_duration_since(now).as_millis() as u64),
                checking: c.checking,
            }),
            last_canary: self.last_canary.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerSnapshot {
    pub id: WorkerId,
    pub slot: usize,
    pub pid: Option<i32>,
    pub state: WorkerState,
    pub uptime_ms: u64,
    pub ready_ms: Option<u64>,
    pub restarts: u32,
    pub status: Option<String>,
    pub rss_bytes: Option<u64>,
    /// CPU time the worker (with its children) used so far, in
    /// microseconds, measured like `rss_bytes` (filled in by the driver).
    pub cpu_usec: Option<u64>,
    /// The worker's own cgroup, in cgroup mode (filled in by the driver).
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationSnapshot {
    pub id: GenId,
    pub role: Role,
    pub age_ms: u64,
    pub slots: usize,
    pub ready: usize,
    pub restarts: u32,
    pub given_up: Vec<usize>,
    pub workers: Vec<WorkerSnapshot>,
    pub command: Vec<String>,
    pub directory: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub phase: Phase,
    pub serving: Option<GenId>,
    pub candidate: Option<GenId>,
    pub reload_in_progress: bool,
    pub reload_queued: bool,
    pub generations: Vec<GenerationSnapshot>,
    pub last_reload: Option<LastReload>,
    /// The canary beside the serving generation, once it is ready (its
    /// generation has role "canary").
    pub canary: Option<CanarySnapshot>,
    /// How the last canary ended.
    pub last_canary: Option<LastCanary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CanarySnapshot {
    pub generation: GenId,
    /// Since its workers were all ready.
    pub ready_ms: u64,
    /// Until its hold is over (`None`: no hold, or it is over).
    pub hold_left_ms: Option<u64>,
    /// Its check runs.
    pub checking: bool,
}

mod handover;
// The driver's `baton upgrade` is their user; until it lands, only tests.
#[cfg_attr(not(test), allow(unused_imports))]
pub use handover::{CORE_FORMAT, CoreState, ImportError};

#[cfg(test)]
mod tests;
