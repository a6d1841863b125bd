//! The view drawn on ratatui's `TestBackend`: what an operator reads.

use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::{Value, json};

use super::*;

fn worker(id: u64, slot: u64, pid: i64, state: &str, rss: u64, cpu_usec: u64) -> Value {
    json!({
        "id": id, "slot": slot, "pid": pid, "state": state, "uptime_ms": 754_000,
        "ready_ms": 750_000, "restarts": 1, "status": null, "rss_bytes": rss,
        "cpu_usec": cpu_usec, "cgroup": null
    })
}

/// A report like baton's: generation 3 serving `workers` workers, and a
/// candidate generation 4 with one worker starting.
fn report(workers: u64, uptime_ms: u64, cpu_step: u64) -> Value {
    let ws: Vec<Value> = (0..workers)
        .map(|i| worker(10 + i, i, 4000 + i as i64, "ready", 50 << 20, uptime_ms * cpu_step))
        .collect();
    json!({
        "name": "shop",
        "version": "0.1.0",
        "upgrades": [],
        "pid": 321,
        "uptime_ms": uptime_ms,
        "socket_activated": true,
        "sockets": [{"name": "http", "address": "127.0.0.1:8080"}],
        "last_reload_at": "2026-11-21T12:03:04Z",
        "supervisor": {
            "phase": "reloading",
            "serving": 3,
            "candidate": 4,
            "reload_in_progress": true,
            "reload_queued": false,
            "generations": [
                {"id": 3, "role": "serving", "age_ms": 3_600_000, "slots": workers, "ready": workers,
                 "restarts": 2, "given_up": [], "workers": ws, "command": ["node", "server.js"]},
                {"id": 4, "role": "starting", "age_ms": 2_000, "slots": 1, "ready": 0,
                 "restarts": 0, "given_up": [],
                 "workers": [worker(99, 0, 5000, "starting", 1 << 20, 0)],
                 "command": ["node", "server.js"]}
            ],
            "last_reload": {"generation": 3, "ok": true, "message": "generation 3 serving", "elapsed_ms": 1200},
            "canary": null,
            "last_canary": null
        }
    })
}

fn draw_text(width: u16, height: u16, screen: &Screen) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| draw(f, screen)).unwrap();
    let buffer = terminal.backend().buffer();
    let mut text = String::new();
    for y in 0..height {
        for x in 0..width {
            text.push_str(buffer[(x, y)].symbol());
        }
        text.push('\n');
    }
    text
}

fn screen<'a>(report: &'a Value, history: &'a History) -> Screen<'a> {
    Screen {
        report,
        history,
        problem: None,
        scroll: 0,
        interval: Duration::from_secs(1),
    }
}

#[test]
fn two_workers_fit_80x24_with_everything_essential() {
    let mut history = History::default();
    // Two polls a second apart, each worker using a quarter of a core.
    history.record(&report(2, 10_000, 250));
    let last = report(2, 11_000, 250);
    history.record(&last);
    let text = draw_text(80, 24, &screen(&last, &history));
    for want in [
        "shop",
        "generation 3 serving 2/2 ready",
        "baton 0.1.0",
        "http 127.0.0.1:8080",
        "last reload: ok at 12:03:04 UTC in 1.2s: generation 3 serving",
        "rss history",
        "cpu history",
        "a reload is in progress",
        "gen 3    serving",
        "gen 4    candidate 0/1 ready",
        "restarts 2",
        "4000",
        "4001",
        "ready",
        "starting",
        "50.0M",
        "25.0%",
        "q quit",
    ] {
        assert!(text.contains(want), "{want:?} is not on the screen:\n{text}");
    }
    assert!(!text.contains("more workers"), "{text}");
}

#[test]
fn many_workers_are_counted_as_more_at_80x24() {
    let history = History::default();
    let last = report(64, 10_000, 0);
    let text = draw_text(80, 24, &screen(&last, &history));
    // 24 rows: 4 about the app, 2 generations, the column names, the
    // footer, "+N more": 15 workers shown of 65.
    assert!(text.contains("+50 more workers"), "{text}");
    assert!(text.contains("4000") && text.contains("4014"), "{text}");
    assert!(!text.contains("4015"), "{text}");
    assert!(text.contains("q quit"), "the footer is gone:\n{text}");

    // Scrolled to the end: the last of them, and the candidate's worker.
    let mut scrolled = screen(&last, &history);
    scrolled.scroll = 1000;
    let text = draw_text(80, 24, &scrolled);
    assert!(text.contains("4063") && text.contains("5000"), "{text}");
    assert!(text.contains("+50 more workers"), "{text}");
}

#[test]
fn a_small_terminal_gets_one_line_not_a_panic() {
    let history = History::default();
    let last = report(2, 10_000, 0);
    let text = draw_text(20, 5, &screen(&last, &history));
    assert!(text.starts_with("terminal too small"), "{text}");
    for (w, h) in [(1, 1), (59, 24), (80, 9), (0, 0)] {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| draw(f, &screen(&last, &history))).unwrap();
    }
}

#[test]
fn an_unreachable_baton_is_said_above_its_last_answer() {
    let history = History::default();
    let last = report(2, 10_000, 0);
    let mut s = screen(&last, &history);
    s.problem = Some("cannot connect");
    let text = draw_text(80, 24, &s);
    assert!(text.contains("baton not reachable: cannot connect, retrying"), "{text}");
    assert!(text.contains("generation 3 serving"), "{text}");
    // A long error is cut; what happens next is not.
    let long = "no baton is running for app (nothing answers on /run/baton/app/control.sock: no such file)";
    s.problem = Some(long);
    let text = draw_text(80, 24, &s);
    let line = text.lines().find(|l| l.contains("not reachable")).unwrap();
    assert!(
        line.contains("no baton is running") && line.contains("…, retrying"),
        "{line}"
    );
}

#[test]
fn cpu_is_the_delta_between_two_polls_and_history_is_bounded() {
    let mut history = History::default();
    for i in 0..(SAMPLES as u64 + 10) {
        // 500 ms of CPU per 1000 ms: half a core.
        history.record(&report(1, 1000 * i, 500));
    }
    let trail = history.workers.get(&10).unwrap();
    assert_eq!(trail.rss.len(), SAMPLES);
    assert_eq!(trail.cpu.len(), SAMPLES);
    assert!(trail.cpu.iter().all(|&c| c == 500), "{:?}", trail.cpu);
    // A worker that is gone is forgotten.
    history.record(&report(0, 1000 * 100, 500));
    assert!(!history.workers.contains_key(&10));
}

#[test]
fn a_counter_going_backwards_gives_no_figure() {
    let mut history = History::default();
    history.record(&report(1, 10_000, 500));
    history.record(&report(1, 11_000, 100));
    assert!(history.workers.get(&10).unwrap().cpu.is_empty());
}

#[test]
fn fit_merges_neighbours_to_show_the_whole_history() {
    let samples: VecDeque<u64> = (0..60).collect();
    let bars = fit(&samples, 12);
    assert_eq!(bars.len(), 12);
    assert_eq!(bars[0], 4);
    assert_eq!(bars[11], 59);
    assert_eq!(fit(&VecDeque::from(vec![1, 2]), 12), vec![1, 2]);
    assert!(fit(&VecDeque::new(), 0).is_empty());
}

#[test]
fn short_figures() {
    assert_eq!(age(42_000), "42s");
    assert_eq!(age(723_000), "12m03s");
    assert_eq!(age(3 * 3_600_000 + 12 * 60_000), "3h12m");
    assert_eq!(age(2 * 86_400_000 + 4 * 3_600_000), "2d04h");
    assert_eq!(bytes(50 << 20), "50.0M");
    assert_eq!(bytes(3 << 30), "3.00G");
    assert_eq!(bytes(812 << 10), "812K");
}
