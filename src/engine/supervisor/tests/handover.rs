//! `baton upgrade`: the core's state across an exec ([`CoreState`]).

use super::*;

/// Two supervisors, the second a hand-over of the first imported `shift`
/// later: every event reaches both, the second `shift` later on its clock,
/// and both must answer with the same actions and timers.
struct Twin {
    a: Supervisor,
    b: Supervisor,
    /// The first one's clock.
    now: Instant,
    shift: Duration,
}

impl Twin {
    fn both(&mut self, f: impl Fn(&mut Supervisor, Instant)) -> Vec<Action> {
        f(&mut self.a, self.now);
        f(&mut self.b, self.now + self.shift);
        let a: Vec<Action> = std::iter::from_fn(|| self.a.poll_action()).collect();
        let b: Vec<Action> = std::iter::from_fn(|| self.b.poll_action()).collect();
        assert_eq!(a, b);
        self.same_timers();
        a
    }

    fn same_timers(&self) {
        assert_eq!(self.b.poll_timeout(), self.a.poll_timeout().map(|at| at + self.shift));
    }

    /// Moves both clocks by `d`, firing the timers due on the way.
    fn advance(&mut self, d: Duration) -> Vec<Action> {
        let end = self.now + d;
        let mut actions = Vec::new();
        while let Some(at) = self.a.poll_timeout().filter(|&at| at <= end) {
            self.now = at;
            actions.extend(self.both(|s, now| s.handle_timeout(now)));
        }
        self.now = end;
        actions
    }

    fn spawned(&mut self, actions: &[Action]) -> Vec<WorkerId> {
        let ids: Vec<WorkerId> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Spawn { worker, .. } => Some(*worker),
                _ => None,
            })
            .collect();
        for &w in &ids {
            self.both(|s, now| s.spawned(now, w, Pid::from_raw(pid_of(w))));
        }
        ids
    }
}

/// Serving generation 1 of 3 (workers 1-3) with a crash restart pending in
/// slot 0 and another in slot 1, whose worker 2 drains (STOPPING=1) with a
/// kill deadline; canary generation 2 (worker 4) holds for 60 s.
fn busy_state() -> H {
    let mut h = with_canary(3, Parallel, 1, spec("v2", 3, Parallel), Some(secs(60)));
    h.crash(1, 0, FAIL);
    h.advance(ms(10));
    h.send(2, Notify::Stopping);
    h.advance(ms(3));
    h.take();
    h
}

#[test]
fn a_busy_state_carries_over_with_its_timers_shifted() {
    let h = busy_state();
    let sup = &h.sup;
    assert_eq!(sup.hand_over_blocker(), None);
    assert_eq!(sup.canary(), Some(GenId(2)));
    let slots = &sup.gens[&GenId(1)].slots;
    assert!(slots[0].restart_pending && slots[1].restart_pending);
    assert_eq!(sup.workers[&WorkerId(2)].state, WorkerState::Stopping);
    assert!(h.armed(Timer::Stop(WorkerId(2))).is_some());
    assert!(h.armed(Timer::CanaryHold(GenId(2))).is_some());

    let t = h.now;
    let shift = ms(7);
    let copy = round_trip(sup, t, t + shift);
    // `status` reads the same, 7 ms later on the new clock...
    assert_eq!(
        serde_json::to_value(sup.snapshot(t)).unwrap(),
        serde_json::to_value(copy.snapshot(t + shift)).unwrap()
    );
    // ...every deadline moved by exactly 7 ms, and in the same order.
    assert_eq!(copy.poll_timeout(), sup.poll_timeout().map(|at| at + shift));
    let order = |s: &Supervisor, base: Instant| -> Vec<(Duration, Timer)> {
        s.timers.iter().map(|(&(at, _), &timer)| (at - base, timer)).collect()
    };
    assert_eq!(order(sup, t), order(&copy, t + shift));
    assert_eq!(sup.armed.len(), copy.armed.len());
    assert_eq!(
        copy.last_reload.as_ref().unwrap().finished,
        sup.last_reload.as_ref().unwrap().finished + shift
    );

    // Both carry on alike: the restarts, the drained worker's exit, the
    // hold that promotes the canary, and the old generation retiring.
    let mut twin = Twin {
        a: h.sup,
        b: copy,
        now: t,
        shift,
    };
    let restarts = twin.advance(ms(200));
    let started = twin.spawned(&restarts);
    assert_eq!(started, [WorkerId(5), WorkerId(6)]);
    for &w in &started {
        twin.both(|s, now| s.message(now, w, Notify::Ready));
    }
    twin.both(|s, now| s.exited(now, WorkerId(2), TERMED));
    let promotion = twin.advance(secs(60));
    assert!(promotion.contains(&Action::Phase(Phase::Reloading)), "{promotion:?}");
    let grown = twin.spawned(&promotion);
    assert_eq!(grown.len(), 2);
    let mut done = Vec::new();
    for &w in &grown {
        done.extend(twin.both(|s, now| s.message(now, w, Notify::Ready)));
    }
    assert!(done.contains(&Action::CanaryEnded {
        generation: GenId(2),
        outcome: CanaryOutcome::Promoted
    }));
    assert_eq!((twin.a.serving(), twin.b.serving()), (Some(GenId(2)), Some(GenId(2))));
    // The kill deadlines of the retiring generation fire alike too.
    let kills = twin.advance(secs(31));
    assert!(kills.iter().any(|a| matches!(a, Action::Kill { .. })), "{kills:?}");
}

#[test]
fn a_canary_that_holds_carries_over_but_a_reload_a_check_or_a_spawn_blocks() {
    // A holding canary is no blocker.
    let h = with_canary(2, Parallel, 1, checked("v2", 2), Some(secs(5)));
    assert_eq!(h.sup.hand_over_blocker(), None);
    // Its check, once the hold is over, is.
    let mut h = h;
    h.advance(secs(5));
    let why = h.sup.hand_over_blocker().unwrap();
    assert!(why.contains("check of canary generation 2 is running"), "{why}");

    // A reload, loading its config and then starting its generation.
    let mut h = started(2, Parallel);
    assert_eq!(h.sup.hand_over_blocker(), None);
    h.reload(5);
    let why = h.sup.hand_over_blocker().unwrap();
    assert!(why.contains("a reload is running (loading the config)"), "{why}");
    h.load(spec("v2", 2, Parallel));
    let why = h.sup.hand_over_blocker().unwrap();
    assert_eq!(why, "a reload is running (generation 2); retry when it has finished");
    h.ready(2, 0);
    h.ready(2, 1);
    assert_eq!(h.sup.hand_over_blocker(), None, "old workers draining carry over");

    // A worker the driver is still forking.
    let mut h = started(2, Parallel);
    h.hold_spawns = true;
    h.crash(1, 0, FAIL);
    h.advance(ms(100));
    assert_eq!(h.held.len(), 1);
    let why = h.sup.hand_over_blocker().unwrap();
    assert!(why.starts_with("a worker is being started"), "{why}");
    let w = h.held[0];
    h.release(w, None);
    assert_eq!(h.sup.hand_over_blocker(), None);

    // Actions the driver has not taken yet.
    let now = h.now;
    h.sup.memory_exceeded(now, WorkerId(2));
    let why = h.sup.hand_over_blocker().unwrap();
    assert!(why.contains("not yet taken by the driver"), "{why}");

    // A stop.
    let mut h = started(2, Parallel);
    h.stop();
    assert_eq!(h.sup.hand_over_blocker().as_deref(), Some("baton is stopping"));
}

/// `state` through JSON with `corrupt` applied, imported.
fn import_corrupted(
    state: &CoreState,
    corrupt: impl FnOnce(&mut serde_json::Value),
) -> Result<Supervisor, ImportError> {
    let mut json = serde_json::to_value(state).unwrap();
    corrupt(&mut json);
    let state: CoreState = serde_json::from_value(json).unwrap();
    Supervisor::import(state, Instant::now())
}

#[test]
fn an_inconsistent_state_is_refused() {
    let h = busy_state();
    let state = h.sup.export(h.now);
    assert!(import_corrupted(&state, |_| {}).is_ok());

    // Worker 2 (worker 1 crashed) of a generation that is not there.
    let err = import_corrupted(&state, |j| j["workers"][0]["generation"] = 99.into()).unwrap_err();
    assert_eq!(
        err,
        ImportError::NoGeneration {
            what: "worker 2".into(),
            generation: GenId(99)
        }
    );
    assert_eq!(
        err.to_string(),
        "worker 2 names generation 99, which is not in the handed-over state"
    );

    // A timer of a worker that is not there.
    let err = import_corrupted(&state, |j| {
        let timers = j["timers"].as_array_mut().unwrap();
        let mut stray = timers[0].clone();
        stray["timer"] = serde_json::json!({ "stop": 77 });
        stray["seq"] = 0.into();
        timers.push(stray);
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::NoWorker {
                worker: WorkerId(77),
                ..
            }
        ),
        "{err}"
    );

    // A timer armed twice.
    let err = import_corrupted(&state, |j| {
        let timers = j["timers"].as_array_mut().unwrap();
        let mut twice = timers[0].clone();
        twice["seq"] = 0.into();
        timers.push(twice);
    })
    .unwrap_err();
    assert!(err.to_string().contains("armed twice"), "{err}");

    // A slot naming a worker of another slot, a missing serving generation.
    let err = import_corrupted(&state, |j| j["generations"][0]["slots"][2]["worker"] = 4.into()).unwrap_err();
    assert!(err.to_string().contains("slot 0 of generation 2"), "{err}");
    let err = import_corrupted(&state, |j| j["serving"] = 7.into()).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::NoGeneration {
                generation: GenId(7),
                ..
            }
        ),
        "{err}"
    );
    // An id that the new image would hand out again.
    let err = import_corrupted(&state, |j| j["next_worker"] = 2.into()).unwrap_err();
    assert!(err.to_string().contains("not below the next id"), "{err}");
    // Unknown fields are not ignored.
    let mut json = serde_json::to_value(&state).unwrap();
    json["surprise"] = true.into();
    assert!(serde_json::from_value::<CoreState>(json).is_err());
}

#[test]
fn the_state_is_plain_json_with_relative_nanoseconds() {
    let h = busy_state();
    let json = serde_json::to_value(h.sup.export(h.now)).unwrap();
    // Generation 1's spec, by value, its signal by name.
    let spec = &json["generations"][0]["spec"];
    assert_eq!(spec["policy"]["stop_signal"], "SIGTERM");
    assert_eq!(spec["policy"]["strategy"], "parallel");
    // Worker 2 drains: its kill deadline is 30 s after STOPPING=1, which
    // came 3 ms ago; it started 13 ms (plus the canary's start) ago.
    let w2 = json["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == 2)
        .unwrap();
    assert_eq!(w2["state"], "stopping");
    assert_eq!(w2["deadline"], 30_000_000_000i64 - 3_000_000);
    assert!(w2["started"].as_i64().unwrap() < 0);
}

/// A reminder: a change to the state's shape changes these keys (or those
/// of the types inside), and then [`CORE_FORMAT`] goes up.
#[test]
fn the_format_version_names_this_shape() {
    let h = busy_state();
    let json = serde_json::to_value(h.sup.export(h.now)).unwrap();
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        (CORE_FORMAT, keys),
        (
            1,
            vec![
                "canary",
                "candidate",
                "exit_code",
                "exited",
                "generations",
                "last_canary",
                "last_reload",
                "next_gen",
                "next_worker",
                "phase",
                "queued",
                "reload",
                "serving",
                "stopping",
                "timer_seq",
                "timers",
                "workers",
            ]
        )
    );
}
