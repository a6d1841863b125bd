use std::time::Instant;

use super::*;
use crate::engine::supervisor::{
    DriverError, ExitStatus, GenerationSnapshot, LastReload, Phase, ReloadOk, WorkerSnapshot,
};

fn worker(id: u64, slot: usize, state: WorkerState) -> WorkerSnapshot {
    WorkerSnapshot {
        id: WorkerId::new(id),
        slot,
        pid: Some(100 + id as i32),
        state,
        uptime_ms: 0,
        ready_ms: None,
        restarts: 0,
        status: None,
        rss_bytes: None,
        cpu_usec: None,
        cgroup: None,
    }
}

fn generation(id: u64, role: Role, workers: Vec<WorkerSnapshot>) -> GenerationSnapshot {
    GenerationSnapshot {
        id: GenId::new(id),
        role,
        age_ms: 0,
        slots: workers.len(),
        ready: 0,
        restarts: 0,
        given_up: Vec::new(),
        workers,
        command: vec!["app".into()],
        directory: None,
    }
}

/// Generation 3 serves with two workers, generation 2 drains one.
fn snapshot() -> Snapshot {
    Snapshot {
        phase: Phase::Ready,
        serving: Some(GenId::new(3)),
        candidate: None,
        reload_in_progress: false,
        reload_queued: false,
        generations: vec![
            generation(2, Role::Retiring, vec![worker(4, 0, WorkerState::Stopping)]),
            generation(
                3,
                Role::Serving,
                vec![worker(5, 0, WorkerState::Ready), worker(6, 1, WorkerState::Ready)],
            ),
        ],
        last_reload: Some(LastReload {
            generation: Some(GenId::new(3)),
            ok: true,
            message: String::new(),
            finished: Instant::now(),
            elapsed_ms: 1200,
        }),
        canary: None,
        last_canary: None,
    }
}

fn ok() -> ReloadResult {
    Ok(ReloadOk {
        generation: GenId::new(3),
        elapsed_ms: 1200,
        canary: false,
    })
}

fn failed() -> ReloadResult {
    Err(ReloadError::Config {
        error: DriverError::new(std::io::Error::other("bad")),
    })
}

/// Three good reloads and a failed one, a crash, usage of both workers.
fn sample() -> String {
    let mut counters = Counters::default();
    for s in [0.05, 1.2, 7.0] {
        counters.reload_done(&ok(), Some(s));
    }
    counters.reload_done(&failed(), Some(0.3));
    counters.reload_done(&Err(ReloadError::NoCanary), None);
    counters.restarted(failure_label(&Failure::Exited {
        status: ExitStatus::Code(1),
        was_ready: true,
    }));
    counters.last_drain_seconds = Some(2.5);
    let usage: HashMap<WorkerId, Usage> = [
        (
            WorkerId::new(5),
            Usage {
                memory: Some(1 << 20),
                cpu_seconds: Some(1.5),
            },
        ),
        (
            WorkerId::new(6),
            Usage {
                memory: Some(2 << 20),
                cpu_seconds: None,
            },
        ),
    ]
    .into_iter()
    .collect();
    let queues = [
        Queue {
            socket: "web.socket".into(),
            depth: Some(3),
        },
        Queue {
            socket: "unix.socket".into(),
            depth: None,
        },
    ];
    render(&Inputs {
        name: "web",
        version: "1.2.3",
        snapshot: &snapshot(),
        last_reload_unix: Some(1_800_000_000.5),
        usage: &usage,
        queues: &queues,
        counters: &counters,
    })
}

#[test]
fn renders_every_metric_with_help_and_the_app_label() {
    let text = sample();
    for line in [
        "baton_build_info{app=\"web\",version=\"1.2.3\"} 1",
        "baton_generation{app=\"web\"} 3",
        "baton_workers{app=\"web\",state=\"ready\"} 2",
        "baton_workers{app=\"web\",state=\"stopping\"} 1",
        "baton_workers{app=\"web\",state=\"spawning\"} 0",
        "baton_reloads_total{app=\"web\",result=\"ok\"} 3",
        "baton_reloads_total{app=\"web\",result=\"failed\"} 1",
        "baton_reloads_total{app=\"web\",result=\"refused\"} 1",
        "baton_reload_duration_seconds_count{app=\"web\"} 4",
        "baton_reload_duration_seconds_bucket{app=\"web\",le=\"0.1\"} 1",
        "baton_reload_duration_seconds_bucket{app=\"web\",le=\"0.5\"} 2",
        "baton_reload_duration_seconds_bucket{app=\"web\",le=\"10\"} 4",
        "baton_reload_duration_seconds_bucket{app=\"web\",le=\"+Inf\"} 4",
        "baton_last_reload_success{app=\"web\"} 1",
        "baton_last_reload_timestamp_seconds{app=\"web\"} 1800000000.5",
        "baton_reload_drain_seconds{app=\"web\"} 2.5",
        "baton_worker_restarts_total{app=\"web\",reason=\"exited\"} 1",
        "baton_worker_resident_memory_bytes{app=\"web\",worker=\"0\",generation=\"3\"} 1048576",
        "baton_worker_resident_memory_bytes{app=\"web\",worker=\"1\",generation=\"3\"} 2097152",
        "baton_worker_cpu_seconds_total{app=\"web\",worker=\"0\",generation=\"3\"} 1.5",
        "baton_canary_workers{app=\"web\"} 0",
        "baton_listen_queue_depth{app=\"web\",socket=\"web.socket\"} 3",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    assert!(
        !text.contains("unix.socket"),
        "a unix socket has no queue series:\n{text}"
    );
    // Every family has HELP and TYPE.
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert_eq!(families.len(), 13, "{text}");
    for f in families {
        assert!(text.contains(&format!("# HELP {f} ")), "no HELP for {f}");
    }
}

#[test]
fn a_fresh_supervisor_has_zero_reloads_and_no_last_reload() {
    let mut s = snapshot();
    s.last_reload = None;
    let text = render(&Inputs {
        name: "web",
        version: "1",
        snapshot: &s,
        last_reload_unix: None,
        usage: &HashMap::new(),
        queues: &[],
        counters: &Counters::default(),
    });
    assert!(
        text.contains("baton_reloads_total{app=\"web\",result=\"ok\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("baton_reloads_total{app=\"web\",result=\"failed\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("baton_reload_duration_seconds_count{app=\"web\"} 0"),
        "{text}"
    );
    assert!(!text.contains("baton_last_reload_success{"), "{text}");
}

#[test]
fn counters_survive_a_round_trip_through_json() {
    let mut counters = Counters::default();
    counters.reload_done(&ok(), Some(0.7));
    counters.restarted("watchdog");
    let json = serde_json::to_string(&counters).unwrap();
    let back: Counters = serde_json::from_str(&json).unwrap();
    assert_eq!(back, counters);
}

#[test]
fn label_values_are_escaped() {
    let text = render(&Inputs {
        name: "a\"b\\c",
        version: "1",
        snapshot: &snapshot(),
        last_reload_unix: None,
        usage: &HashMap::new(),
        queues: &[],
        counters: &Counters::default(),
    });
    assert!(text.contains(r#"baton_generation{app="a\"b\\c"} 3"#), "{text}");
}

/// `promtool check metrics` (Debian's `prometheus` package) on real output:
/// the format and the naming conventions. Required under CI=true.
#[test]
fn promtool_accepts_the_text() {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CI").is_some_and(|v| v == "true") => {
            panic!("promtool is required under CI=true (apt-get install prometheus): {e}")
        }
        Err(e) => {
            eprintln!("skipping: no promtool ({e}); apt-get install prometheus");
            return;
        }
    };
    child.stdin.take().unwrap().write_all(sample().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{}",
        sample()
    );
}
