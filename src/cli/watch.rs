//! `baton status --watch`: a live view of one app, like `top`, redrawn in
//! place from a `status` request every interval ([`view`] draws it).
//!
//! The terminal is the one thing to get right: raw mode and the alternate
//! screen are undone by [`Tty`]'s `Drop`, so every way out (q, Esc,
//! Ctrl-C, SIGTERM, SIGHUP, an error, a panic) leaves the shell usable.
//! In raw mode Ctrl-C is a key, not SIGINT. A baton that stops answering
//! (stopped, or mid-`upgrade`) is shown as such and polled again; only
//! the first request must succeed, so that a wrong name fails at once.

#![forbid(unsafe_code)]

mod view;

use std::io::{self, Stdout};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};
use serde_json::Value;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::control::{self, Reply, Request};
use crate::exit::{EX_FAILED, EX_OK, EX_USAGE, chain};

/// How long one poll may wait for its answer (a `status` across an
/// `upgrade` is retried by `control::request` meanwhile).
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// How often the key reader looks whether it should stop.
const KEY_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("cannot set up the terminal")]
    Setup(#[source] io::Error),
    #[error("cannot draw on the terminal")]
    Draw(#[source] io::Error),
    #[error("cannot read keys from the terminal")]
    Keys(#[source] io::Error),
    #[error("cannot listen for signals")]
    Signals(#[source] io::Error),
}

/// The live view of the supervisor at `path` (`what` names it in
/// messages), asking every `interval`. Returns the exit code. stdout must
/// be a terminal (the caller checks).
pub fn run(rt: &tokio::runtime::Runtime, path: &Path, what: &str, interval: Duration) -> i32 {
    // Before the screen changes: a wrong name or a stopped baton is said
    // plainly, as `baton status` says it.
    let first = match rt.block_on(poll(path, what)) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("baton status: {e}");
            return EX_USAGE;
        }
    };
    let signals = {
        let _entered = rt.enter();
        Signals::new()
    };
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            eprintln!("baton status --watch: {}", chain(&e));
            return EX_FAILED;
        }
    };
    let (keys, key_events) = mpsc::channel(64);
    let stop = Arc::new(AtomicBool::new(false));
    let result = Tty::enter().and_then(|mut tty| {
        let reader = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("baton-keys".into())
                .spawn(move || read_keys(&keys, &stop))
                .map_err(WatchError::Keys)?
        };
        let watch = Watch::new(first, interval);
        let result = rt.block_on(watch.run(&mut tty, path, what, key_events, signals));
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        result
        // `tty` restores the terminal here.
    });
    match result {
        Ok(()) => EX_OK,
        Err(e) => {
            eprintln!("baton status --watch: {}", chain(&e));
            EX_FAILED
        }
    }
}

/// One `status` request, bounded in time.
async fn poll(path: &Path, what: &str) -> Result<Value, String> {
    let request = control::request(path, what, &Request::Status {}, |_| {});
    match tokio::time::timeout(ANSWER_WITHIN, request).await {
        Err(_) => Err(format!("no answer within {}s", ANSWER_WITHIN.as_secs())),
        Ok(Ok(Reply::Status(report))) => Ok(report),
        Ok(Ok(Reply::Error(e))) => Err(e),
        Ok(Ok(other)) => Err(format!("unexpected answer: {other:?}")),
        Ok(Err(e)) => Err(chain(&e)),
    }
}

async fn poll_after(pause: Duration, path: &Path, what: &str) -> Result<Value, String> {
    tokio::time::sleep(pause).await;
    poll(path, what).await
}

/// SIGTERM, SIGHUP (the ssh connection went away) and SIGINT (from
/// `kill`: in raw mode Ctrl-C is a key) all end the view.
struct Signals {
    term: Signal,
    hup: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> Result<Signals, WatchError> {
        let on = |kind| signal(kind).map_err(WatchError::Signals);
        Ok(Signals {
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
            int: on(SignalKind::interrupt())?,
        })
    }

    async fn any(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Raw mode, the alternate screen and a hidden cursor, for as long as it
/// lives.
struct Tty {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    _restore: Restore,
}

/// Undoes [`Tty::enter`], whatever part of it was done.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = execute!(io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

impl Tty {
    fn enter() -> Result<Tty, WatchError> {
        terminal::enable_raw_mode().map_err(WatchError::Setup)?;
        let restore = Restore;
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide).map_err(WatchError::Setup)?;
        let terminal = Terminal::new(CrosstermBackend::new(io::stdout())).map_err(WatchError::Setup)?;
        Ok(Tty {
            terminal,
            _restore: restore,
        })
    }
}

/// Forwards the terminal's events until `stop` (or the receiver is gone).
/// A thread of its own: crossterm's reads block.
fn read_keys(keys: &mpsc::Sender<io::Result<Event>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let event = match event::poll(KEY_POLL) {
            Ok(false) => continue,
            Ok(true) => event::read(),
            Err(e) => Err(e),
        };
        let failed = event.is_err();
        if keys.blocking_send(event).is_err() || failed {
            return;
        }
    }
}

/// What a key (or a resize) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    Quit,
    Scroll(isize),
    Top,
    Bottom,
    Redraw,
}

const PAGE: isize = 10;

fn input(event: &Event) -> Option<Input> {
    let key = match event {
        Event::Key(key) if key.kind != KeyEventKind::Release => key,
        Event::Resize(..) => return Some(Input::Redraw),
        _ => return None,
    };
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    Some(match key.code {
        KeyCode::Char('c' | 'd') if ctrl => Input::Quit,
        KeyCode::Char('l') if ctrl => Input::Redraw,
        KeyCode::Char('q' | 'Q') | KeyCode::Esc => Input::Quit,
        KeyCode::Up | KeyCode::Char('k') => Input::Scroll(-1),
        KeyCode::Down | KeyCode::Char('j') => Input::Scroll(1),
        KeyCode::PageUp => Input::Scroll(-PAGE),
        KeyCode::PageDown | KeyCode::Char(' ') => Input::Scroll(PAGE),
        KeyCode::Home | KeyCode::Char('g') => Input::Top,
        KeyCode::End | KeyCode::Char('G') => Input::Bottom,
        _ => return None,
    })
}

/// The view's state between two draws.
struct Watch {
    history: view::History,
    report: Value,
    problem: Option<String>,
    scroll: usize,
    interval: Duration,
}

impl Watch {
    fn new(first: Value, interval: Duration) -> Watch {
        let mut history = view::History::default();
        history.record(&first);
        Watch {
            history,
            report: first,
            problem: None,
            scroll: 0,
            interval,
        }
    }

    fn answered(&mut self, answer: Result<Value, String>) {
        match answer {
            Ok(report) => {
                self.history.record(&report);
                self.report = report;
                self.problem = None;
            }
            Err(e) => self.problem = Some(e),
        }
    }

    fn scroll(&mut self, to: Input) {
        let last = view::workers(&self.report).count().saturating_sub(1);
        self.scroll = match to {
            Input::Scroll(by) => self.scroll.saturating_add_signed(by).min(last),
            Input::Top => 0,
            Input::Bottom => last,
            Input::Quit | Input::Redraw => self.scroll,
        };
    }

    fn draw(&self, tty: &mut Tty) -> Result<(), WatchError> {
        let screen = view::Screen {
            report: &self.report,
            history: &self.history,
            problem: self.problem.as_deref(),
            scroll: self.scroll,
            interval: self.interval,
        };
        tty.terminal
            .draw(|frame| view::draw(frame, &screen))
            .map(|_| ())
            .map_err(WatchError::Draw)
    }

    async fn run(
        mut self,
        tty: &mut Tty,
        path: &Path,
        what: &str,
        mut keys: mpsc::Receiver<io::Result<Event>>,
        mut signals: Signals,
    ) -> Result<(), WatchError> {
        let mut next = Box::pin(poll_after(self.interval, path, what));
        loop {
            self.draw(tty)?;
            tokio::select! {
                () = signals.any() => return Ok(()),
                event = keys.recv() => match event {
                    Some(Ok(event)) => match input(&event) {
                        Some(Input::Quit) => return Ok(()),
                        Some(Input::Redraw) => tty.terminal.clear().map_err(WatchError::Draw)?,
                        Some(to) => self.scroll(to),
                        None => {}
                    },
                    Some(Err(e)) => return Err(WatchError::Keys(e)),
                    None => return Err(WatchError::Keys(io::Error::other("the key reader stopped"))),
                },
                answer = &mut next => {
                    self.answered(answer);
                    next.set(poll_after(self.interval, path, what));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::{KeyEvent, KeyEventState};

    fn key(code: KeyCode, modifiers: KeyModifiers) -> Event {
        Event::Key(KeyEvent {
            code,
            modifiers,
            kind: KeyEventKind::Press,
            state: KeyEventState::NONE,
        })
    }

    #[test]
    fn q_esc_and_ctrl_c_quit() {
        for code in [KeyCode::Char('q'), KeyCode::Esc] {
            assert_eq!(input(&key(code, KeyModifiers::NONE)), Some(Input::Quit));
        }
        // Raw mode: Ctrl-C is a key, not SIGINT.
        assert_eq!(
            input(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Input::Quit)
        );
        assert_eq!(input(&key(KeyCode::Char('c'), KeyModifiers::NONE)), None);
        assert_eq!(input(&Event::Resize(80, 24)), Some(Input::Redraw));
    }

    #[test]
    fn scrolling_stays_within_the_workers() {
        let report = serde_json::json!({"supervisor": {"generations": [
            {"id": 1, "workers": [{"id": 1}, {"id": 2}, {"id": 3}]}
        ]}});
        let mut watch = Watch::new(report, Duration::from_secs(1));
        watch.scroll(Input::Scroll(-1));
        assert_eq!(watch.scroll, 0);
        watch.scroll(Input::Scroll(PAGE));
        assert_eq!(watch.scroll, 2);
        watch.scroll(Input::Top);
        assert_eq!(watch.scroll, 0);
        watch.scroll(Input::Bottom);
        assert_eq!(watch.scroll, 2);
    }

    #[test]
    fn an_unanswered_poll_keeps_the_last_report_and_says_so() {
        let report = serde_json::json!({"name": "app", "supervisor": {"generations": []}});
        let mut watch = Watch::new(report, Duration::from_secs(1));
        watch.answered(Err("cannot connect".into()));
        assert_eq!(watch.report["name"], "app");
        assert_eq!(watch.problem.as_deref(), Some("cannot connect"));
        watch.answered(Ok(serde_json::json!({"name": "app"})));
        assert!(watch.problem.is_none());
    }
}
