//! The core's state across `baton upgrade`: the running supervisor
//! re-executes its new binary in place, and the new image carries on with
//! exactly the state the old one had (generations, slots, workers, restart
//! counters and backoff timers, a running canary and its hold, every
//! deadline, the last reload and canary).
//!
//! [`Supervisor::export`] turns the state into a [`CoreState`], which is
//! plain data (serde); [`Supervisor::import`] checks one and rebuilds the
//! supervisor from it. The driver carries the fds and pids, and asks
//! [`Supervisor::hand_over_blocker`] first: some moments cannot be handed
//! over (a half-done fork, a config being loaded, a check running).
//!
//! # Why mirror types
//!
//! `CoreState` mirrors the supervisor's private structs field by field
//! instead of deriving serde on them with a thread-local reference instant:
//!
//! - Every `Instant` becomes signed nanoseconds from the `now` of `export`
//!   (past negative, future positive), rebuilt from the `now` of `import`.
//!   With mirrors that is an explicit function call at each instant, with
//!   nothing that could be serialized outside an `export` (and read
//!   relative to a stale or missing reference).
//! - `export` and `import` destructure every struct exhaustively, so a
//!   field added to `Worker`, `Slot`, ... does not compile until it is
//!   carried across (and then [`CORE_FORMAT`] is bumped): a hand-over
//!   cannot silently drop state.
//! - The public snapshot types `LastReload` and `LastCanary` skip their
//!   instant for `status`; the mirrors carry it.
//!
//! The specs are carried by value, one per generation. Nothing in the core
//! compares specs by identity across generations (only a `Spawn`'s spec
//! against its own generation's, which still holds); the driver's own spec
//! table must be rebuilt from [`Supervisor::generation_specs`].
//!
//! The pending-timer map is carried as a list in firing order with its
//! arming sequence numbers (so timers due at the same instant keep their
//! order); the index of armed timers is rebuilt from it, and a timer armed
//! twice, or one naming a worker that is not in the state, is refused.

// The driver (`runtime`) is the user of this; until it calls it, only the
// tests do.
#![cfg_attr(not(test), allow(dead_code))]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{
    Canary, ClientId, GenId, Generation, LastCanary, LastReload, Phase, ReadyBy, Reload, ReloadKind, ReloadOk, Role,
    Slot, Supervisor, Timer, Waiter, Worker, WorkerId, WorkerState,
};
use crate::engine::spec::GenSpec;

/// The version of [`CoreState`]'s shape. The driver's hand-over envelope
/// carries it next to the state, and a new image refuses a state of a
/// version it does not know. Bump it whenever `CoreState` (or a type it
/// contains: the spec, the ids, `ReloadError`, ...) changes shape.
pub const CORE_FORMAT: u32 = 1;

/// Nanoseconds from the reference instant (the `now` of an export or an
/// import): negative in the past, positive in the future.
type Rel = i64;

fn rel(now: Instant, at: Instant) -> Rel {
    // Saturates at about 292 years either way; deadlines are at most 30
    // years out (`after`) and past instants at most the uptime back.
    match at.checked_duration_since(now) {
        Some(ahead) => i64::try_from(ahead.as_nanos()).unwrap_or(i64::MAX),
        None => i64::try_from(now.duration_since(at).as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn abs(now: Instant, at: Rel) -> Result<Instant, ImportError> {
    let d = Duration::from_nanos(at.unsigned_abs());
    let instant = if at >= 0 {
        now.checked_add(d)
    } else {
        now.checked_sub(d)
    };
    instant.ok_or(ImportError::Clock(at))
}

fn abs_opt(now: Instant, at: Option<Rel>) -> Result<Option<Instant>, ImportError> {
    at.map(|at| abs(now, at)).transpose()
}

/// Why a state cannot be imported: the new image refuses it cleanly, and
/// the driver reports it (the old image's state is inconsistent, or the
/// hand-over was corrupted).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImportError {
    #[error("{what} names generation {generation}, which is not in the handed-over state")]
    NoGeneration { what: String, generation: GenId },
    #[error("{what} names worker {worker}, which is not in the handed-over state")]
    NoWorker { what: String, worker: WorkerId },
    #[error("the handed-over state is inconsistent: {0}")]
    Inconsistent(String),
    #[error("an instant {0} ns from now is outside the clock")]
    Clock(Rel),
}

/// Everything the core knows, as plain data with instants relative to the
/// `now` of [`Supervisor::export`]. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreState {
    next_worker: WorkerId,
    next_gen: GenId,
    generations: Vec<GenerationState>,
    workers: Vec<WorkerRecord>,
    serving: Option<GenId>,
    candidate: Option<GenId>,
    reload: Option<ReloadState>,
    queued: Option<Vec<Waiter>>,
    stopping: bool,
    exit_code: Option<i32>,
    exited: bool,
    phase: Phase,
    last_reload: Option<LastReloadState>,
    canary: Option<CanaryState>,
    last_canary: Option<LastCanaryState>,
    /// Pending timers in firing order.
    timers: Vec<TimerState>,
    timer_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GenerationState {
    id: GenId,
    spec: GenSpec,
    role: Role,
    slots: Vec<SlotState>,
    created: Rel,
    drain_waiters: Vec<(ClientId, ReloadOk)>,
    canary: Option<usize>,
    served: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotState {
    worker: Option<WorkerId>,
    crashes: Vec<Rel>,
    restarts: u32,
    restart_pending: bool,
    restart_seq: u64,
    gave_up: bool,
    handed_over: bool,
    successor: Option<WorkerId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerRecord {
    id: WorkerId,
    generation: GenId,
    slot: usize,
    pid: Option<i32>,
    state: WorkerState,
    stop_pending: bool,
    started: Rel,
    ready_at: Option<Rel>,
    /// When it sent READY (absent from a hand-over of a binary without
    /// `[readiness] settle`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    said_ready: Option<Rel>,
    /// How it said so (absent from older binaries: reports then say "said
    /// it was ready").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    said_ready_by: Option<ReadyBy>,
    deadline: Option<Rel>,
    watchdog_deadline: Option<Rel>,
    watchdog_armed: bool,
    status_text: Option<String>,
    errno: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadState {
    waiters: Vec<Waiter>,
    started: Rel,
    generation: Option<GenId>,
    next_slot: usize,
    reverting: Option<super::ReloadError>,
    kind: ReloadKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryState {
    generation: GenId,
    ready_at: Rel,
    checking: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LastReloadState {
    generation: Option<GenId>,
    ok: bool,
    message: String,
    finished: Rel,
    elapsed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LastCanaryState {
    generation: GenId,
    outcome: super::CanaryOutcome,
    finished: Rel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimerState {
    at: Rel,
    seq: u64,
    timer: Timer,
}

impl Supervisor {
    /// Why the state cannot be handed over to a new image right now, in
    /// words for the operator; `None` when it can. What blocks is what the
    /// driver could not carry across or the core is waiting for an answer
    /// to (a fork, a config, a check), and a stop. A canary that is merely
    /// ready or holding carries over with its hold.
    pub fn hand_over_blocker(&self) -> Option<String> {
        if self.stopping || self.exit_code.is_some() || self.exited {
            return Some("baton is stopping".into());
        }
        if let Some(r) = &self.reload {
            let what = match r.kind {
                ReloadKind::Plain => "a reload",
                ReloadKind::Canary { .. } => "a canary reload",
                ReloadKind::Promote => "a promotion",
                ReloadKind::Rollback => "a rollback",
            };
            return Some(match r.generation {
                Some(g) => format!("{what} is running (generation {g}); retry when it has finished"),
                None => format!("{what} is running (loading the config); retry when it has finished"),
            });
        }
        if self.queued.is_some() {
            return Some("a reload is queued; retry when it has finished".into());
        }
        if self.serving.is_none() {
            // The first start: nothing serves yet, and a failure exits.
            return Some("the first generation is still starting; retry when it is serving".into());
        }
        if let Some(c) = self.canary.as_ref().filter(|c| c.checking) {
            return Some(format!(
                "the check of canary generation {} is running; retry in a moment",
                c.generation
            ));
        }
        if !self.actions.is_empty() {
            return Some(format!(
                "{} action{} of the core not yet taken by the driver",
                self.actions.len(),
                super::plural(self.actions.len())
            ));
        }
        if let Some((id, w)) = self.workers.iter().find(|(_, w)| w.state == WorkerState::Spawning) {
            return Some(format!(
                "a worker is being started (worker {} of generation {}, id {id}); retry in a moment",
                w.slot, w.generation
            ));
        }
        None
    }

    /// Every generation's spec, for the driver's own table after an
    /// [`Supervisor::import`] (the specs crossed by value, so they are new
    /// `Arc`s).
    pub fn generation_specs(&self) -> Vec<(GenId, Arc<GenSpec>)> {
        self.gens.iter().map(|(&id, g)| (id, g.spec.clone())).collect()
    }

    /// The whole state, with every instant relative to `now`. Call it only
    /// when [`Supervisor::hand_over_blocker`] is `None`: pending actions
    /// are not part of the state (the driver must have taken them all).
    pub fn export(&self, now: Instant) -> CoreState {
        let Supervisor {
            next_worker,
            next_gen,
            gens,
            workers,
            serving,
            candidate,
            reload,
            queued,
            stopping,
            exit_code,
            exited,
            phase,
            last_reload,
            canary,
            last_canary,
            actions: _,
            timers,
            armed: _,
            timer_seq,
        } = self;
        let r = |at: &Instant| rel(now, *at);
        let generations = gens
            .iter()
            .map(|(&id, g)| {
                let Generation {
                    spec,
                    role,
                    slots,
                    created,
                    drain_waiters,
                    canary,
                    served,
                } = g;
                GenerationState {
                    id,
                    spec: GenSpec::clone(spec),
                    role: *role,
                    slots: slots
                        .iter()
                        .map(|s| {
                            let Slot {
                                worker,
                                crashes,
                                restarts,
                                restart_pending,
                                restart_seq,
                                gave_up,
                                handed_over,
                                successor,
                            } = s;
                            SlotState {
                                worker: *worker,
                                crashes: crashes.iter().map(r).collect(),
                                restarts: *restarts,
                                restart_pending: *restart_pending,
                                restart_seq: *restart_seq,
                                gave_up: *gave_up,
                                handed_over: *handed_over,
                                successor: *successor,
                            }
                        })
                        .collect(),
                    created: r(created),
                    drain_waiters: drain_waiters.clone(),
                    canary: *canary,
                    served: *served,
                }
            })
            .collect();
        let workers = workers
            .iter()
            .map(|(&id, w)| {
                let Worker {
                    generation,
                    slot,
                    pid,
                    state,
                    stop_pending,
                    started,
                    ready_at,
                    said_ready,
                    said_ready_by,
                    deadline,
                    watchdog_deadline,
                    watchdog_armed,
                    status_text,
                    errno,
                } = w;
                WorkerRecord {
                    id,
                    generation: *generation,
                    slot: *slot,
                    pid: pid.map(Pid::as_raw),
                    state: *state,
                    stop_pending: *stop_pending,
                    started: r(started),
                    ready_at: ready_at.as_ref().map(r),
                    said_ready: said_ready.as_ref().map(r),
                    said_ready_by: said_ready_by.clone(),
                    deadline: deadline.as_ref().map(r),
                    watchdog_deadline: watchdog_deadline.as_ref().map(r),
                    watchdog_armed: *watchdog_armed,
                    status_text: status_text.clone(),
                    errno: *errno,
                }
            })
            .collect();
        let reload = reload.as_ref().map(|reload| {
            let Reload {
                waiters,
                started,
                generation,
                next_slot,
                reverting,
                kind,
                held: _,
            } = reload;
            ReloadState {
                waiters: waiters.clone(),
                started: r(started),
                generation: *generation,
                next_slot: *next_slot,
                reverting: reverting.clone(),
                kind: *kind,
            }
        });
        let last_reload = last_reload.as_ref().map(|l| {
            let LastReload {
                generation,
                ok,
                message,
                finished,
                elapsed_ms,
            } = l;
            LastReloadState {
                generation: *generation,
                ok: *ok,
                message: message.clone(),
                finished: r(finished),
                elapsed_ms: *elapsed_ms,
            }
        });
        let canary = canary.as_ref().map(|c| {
            let Canary {
                generation,
                ready_at,
                checking,
            } = c;
            CanaryState {
                generation: *generation,
                ready_at: r(ready_at),
                checking: *checking,
            }
        });
        let last_canary = last_canary.as_ref().map(|l| {
            let LastCanary {
                generation,
                outcome,
                finished,
            } = l;
            LastCanaryState {
                generation: *generation,
                outcome: outcome.clone(),
                finished: r(finished),
            }
        });
        CoreState {
            next_worker: *next_worker,
            next_gen: *next_gen,
            generations,
            workers,
            serving: *serving,
            candidate: *candidate,
            reload,
            queued: queued.clone(),
            stopping: *stopping,
            exit_code: *exit_code,
            exited: *exited,
            phase: *phase,
            last_reload,
            canary,
            last_canary,
            timers: timers
                .iter()
                .map(|(&(at, seq), &timer)| TimerState {
                    at: rel(now, at),
                    seq,
                    timer,
                })
                .collect(),
            timer_seq: *timer_seq,
        }
    }

    /// Rebuilds a supervisor from `state`, every instant relative to `now`
    /// (the driver passes a `now` that accounts for the exec gap). The
    /// state is checked first; an inconsistent one is refused, never
    /// half-imported. The new supervisor has no pending action.
    pub fn import(state: CoreState, now: Instant) -> Result<Supervisor, ImportError> {
        validate(&state)?;
        let CoreState {
            next_worker,
            next_gen,
            generations,
            workers,
            serving,
            candidate,
            reload,
            queued,
            stopping,
            exit_code,
            exited,
            phase,
            last_reload,
            canary,
            last_canary,
            timers,
            timer_seq,
        } = state;
        let mut gens = BTreeMap::new();
        for g in generations {
            let GenerationState {
                id,
                spec,
                role,
                slots,
                created,
                drain_waiters,
                canary,
                served,
            } = g;
            let slots = slots
                .into_iter()
                .map(|s| {
                    let SlotState {
                        worker,
                        crashes,
                        restarts,
                        restart_pending,
                        restart_seq,
                        gave_up,
                        handed_over,
                        successor,
                    } = s;
                    Ok(Slot {
                        worker,
                        crashes: crashes
                            .into_iter()
                            .map(|at| abs(now, at))
                            .collect::<Result<VecDeque<_>, _>>()?,
                        restarts,
                        restart_pending,
                        restart_seq,
                        gave_up,
                        handed_over,
                        successor,
                    })
                })
                .collect::<Result<Vec<_>, ImportError>>()?;
            gens.insert(
                id,
                Generation {
                    spec: Arc::new(spec),
                    role,
                    slots,
                    created: abs(now, created)?,
                    drain_waiters,
                    canary,
                    served,
                },
            );
        }
        let mut by_id = BTreeMap::new();
        for w in workers {
            let WorkerRecord {
                id,
                generation,
                slot,
                pid,
                state,
                stop_pending,
                started,
                ready_at,
                said_ready,
                said_ready_by,
                deadline,
                watchdog_deadline,
                watchdog_armed,
                status_text,
                errno,
            } = w;
            by_id.insert(
                id,
                Worker {
                    generation,
                    slot,
                    pid: pid.map(Pid::from_raw),
                    state,
                    stop_pending,
                    started: abs(now, started)?,
                    ready_at: abs_opt(now, ready_at)?,
                    said_ready: abs_opt(now, said_ready)?,
                    said_ready_by,
                    deadline: abs_opt(now, deadline)?,
                    watchdog_deadline: abs_opt(now, watchdog_deadline)?,
                    watchdog_armed,
                    status_text,
                    errno,
                },
            );
        }
        let reload = match reload {
            None => None,
            Some(r) => {
                let ReloadState {
                    waiters,
                    started,
                    generation,
                    next_slot,
                    reverting,
                    kind,
                } = r;
                Some(Reload {
                    waiters,
                    started: abs(now, started)?,
                    generation,
                    next_slot,
                    reverting,
                    kind,
                    held: false,
                })
            }
        };
        let last_reload = match last_reload {
            None => None,
            Some(l) => {
                let LastReloadState {
                    generation,
                    ok,
                    message,
                    finished,
                    elapsed_ms,
                } = l;
                Some(LastReload {
                    generation,
                    ok,
                    message,
                    finished: abs(now, finished)?,
                    elapsed_ms,
                })
            }
        };
        let canary = match canary {
            None => None,
            Some(c) => {
                let CanaryState {
                    generation,
                    ready_at,
                    checking,
                } = c;
                Some(Canary {
                    generation,
                    ready_at: abs(now, ready_at)?,
                    checking,
                })
            }
        };
        let last_canary = match last_canary {
            None => None,
            Some(l) => {
                let LastCanaryState {
                    generation,
                    outcome,
                    finished,
                } = l;
                Some(LastCanary {
                    generation,
                    outcome,
                    finished: abs(now, finished)?,
                })
            }
        };
        let mut timer_map = BTreeMap::new();
        let mut armed = HashMap::new();
        for t in timers {
            let key = (abs(now, t.at)?, t.seq);
            // `validate` made timers and sequence numbers unique, so
            // neither insert replaces anything.
            timer_map.insert(key, t.timer);
            armed.insert(t.timer, key);
        }
        Ok(Supervisor {
            next_worker,
            next_gen,
            gens,
            workers: by_id,
            serving,
            candidate,
            reload,
            queued,
            stopping,
            exit_code,
            exited,
            phase,
            last_reload,
            canary,
            last_canary,
            actions: VecDeque::new(),
            timers: timer_map,
            armed,
            timer_seq,
        })
    }
}

/// The checks of [`Supervisor::import`]: every reference resolves, ids are
/// unique and below the next one to hand out, slots and workers agree, and
/// the timers are a consistent index. What the core tolerates at run time
/// (a restart timer of a generation gone since, `last_reload` naming a
/// retired generation) is accepted here too.
fn validate(state: &CoreState) -> Result<(), ImportError> {
    let bad = |text: String| Err(ImportError::Inconsistent(text));
    let mut gens: BTreeMap<GenId, &GenerationState> = BTreeMap::new();
    for g in &state.generations {
        if g.id >= state.next_gen {
            return bad(format!(
                "generation {} is not below the next id {}",
                g.id, state.next_gen
            ));
        }
        if gens.insert(g.id, g).is_some() {
            return bad(format!("generation {} appears twice", g.id));
        }
    }
    let mut workers: BTreeMap<WorkerId, &WorkerRecord> = BTreeMap::new();
    for w in &state.workers {
        if w.id >= state.next_worker {
            return bad(format!(
                "worker {} is not below the next id {}",
                w.id, state.next_worker
            ));
        }
        if workers.insert(w.id, w).is_some() {
            return bad(format!("worker {} appears twice", w.id));
        }
        let Some(g) = gens.get(&w.generation) else {
            return Err(ImportError::NoGeneration {
                what: format!("worker {}", w.id),
                generation: w.generation,
            });
        };
        if w.slot >= g.slots.len() {
            return bad(format!(
                "worker {} is in slot {} of generation {}, which has {} slots",
                w.id,
                w.slot,
                w.generation,
                g.slots.len()
            ));
        }
    }
    for g in &state.generations {
        for (i, s) in g.slots.iter().enumerate() {
            for (what, id) in [("worker", s.worker), ("successor", s.successor)] {
                let Some(id) = id else { continue };
                let what = format!("the {what} of slot {i} of generation {}", g.id);
                let Some(w) = workers.get(&id) else {
                    return Err(ImportError::NoWorker { what, worker: id });
                };
                if (w.generation, w.slot) != (g.id, i) {
                    return bad(format!(
                        "{what} is worker {id}, which is in slot {} of generation {}",
                        w.slot, w.generation
                    ));
                }
            }
        }
    }
    let named = [
        ("the serving generation", state.serving),
        ("the candidate", state.candidate),
        ("the running reload", state.reload.as_ref().and_then(|r| r.generation)),
        ("the canary", state.canary.as_ref().map(|c| c.generation)),
    ];
    for (what, generation) in named {
        if let Some(generation) = generation {
            if !gens.contains_key(&generation) {
                return Err(ImportError::NoGeneration {
                    what: what.into(),
                    generation,
                });
            }
        }
    }
    if let Some(c) = &state.canary {
        if gens.get(&c.generation).map(|g| g.role) != Some(Role::Canary) {
            return bad(format!(
                "canary generation {} does not have the canary role",
                c.generation
            ));
        }
    }
    let mut seqs = BTreeSet::new();
    let mut armed = HashSet::new();
    for t in &state.timers {
        if t.seq > state.timer_seq || !seqs.insert(t.seq) {
            return bad(format!(
                "timer {:?} has a reused or future sequence number {}",
                t.timer, t.seq
            ));
        }
        if !armed.insert(t.timer) {
            return bad(format!("timer {:?} is armed twice", t.timer));
        }
        let worker = match t.timer {
            Timer::Ready(w)
            | Timer::Delay(w)
            | Timer::Settle(w)
            | Timer::Stop(w)
            | Timer::Escalate(w)
            | Timer::Watchdog(w) => Some(w),
            Timer::Restart { .. } | Timer::CanaryHold(_) => None,
        };
        if let Some(worker) = worker {
            if !workers.contains_key(&worker) {
                return Err(ImportError::NoWorker {
                    what: format!("timer {:?}", t.timer),
                    worker,
                });
            }
        }
    }
    Ok(())
}
