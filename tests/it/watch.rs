//! `baton status --watch` as an operator sees it (README, "`baton
//! status`"): in a real 80×24 terminal (tmux, on a server socket of the
//! test's own), against a real baton: it shows the generation and its
//! workers, follows a reload, and q or Ctrl-C end it with exit 0 and the
//! pane gone.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::{baton_bin, example_bin, skip, text, wait_until};

/// A detached tmux session running one command, on a private server.
struct Tmux {
    socket: String,
}

const SESSION: &str = "watch";

impl Tmux {
    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Starts `argv` in an 80×24 pane.
    fn start(argv: &[String]) -> Tmux {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let socket = format!(
            "baton-watch-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tmux = Tmux { socket };
        let out = tmux.run(
            &["new-session", "-d", "-s", SESSION, "-x", "80", "-y", "24", "--"]
                .map(String::from)
                .into_iter()
                .chain(argv.iter().cloned())
                .collect::<Vec<_>>(),
        );
        assert!(out.status.success(), "tmux new-session failed: {}", text(&out));
        tmux
    }

    fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        Command::new("tmux")
            // No user config: the same terminal everywhere.
            .args(["-f", "/dev/null", "-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// The pane's text now ("" once it is gone).
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", SESSION]).stdout).into_owned()
    }

    fn wait_screen(&self, timeout: Duration, what: &str, f: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let shown = wait_until(timeout, || {
            last = self.screen();
            f(&last)
        });
        assert!(shown, "the pane never showed {what}; it shows:\n{last}");
        last
    }

    fn send_keys(&self, keys: &str) {
        let out = self.run(&["send-keys", "-t", SESSION, keys]);
        assert!(out.status.success(), "tmux send-keys failed: {}", text(&out));
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", SESSION]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Only this test's server: its socket name is ours alone.
        let _ = self.run(&["kill-server"]);
    }
}

/// `baton status --watch` for `baton` in a shell that writes its exit code
/// to `exit_file` once it ends.
fn watch_command(baton: &Baton, exit_file: &Path) -> Vec<String> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let script = format!(
        "BATON_RUNTIME_DIR={} {} status --config {} --watch --interval 200ms; echo $? > {}",
        quote(&baton.dir.path().join("run").display().to_string()),
        quote(&baton_bin().display().to_string()),
        quote(&baton.config.display().to_string()),
        quote(&exit_file.display().to_string()),
    );
    vec!["sh".into(), "-c".into(), script]
}

/// Worker lines of generation `generation` that say `ready`.
fn ready_workers(screen: &str, generation: u64) -> usize {
    let tag = format!("g{generation} ");
    screen
        .lines()
        .filter(|l| l.starts_with(&tag) && l.split_whitespace().nth(3) == Some("ready"))
        .count()
}

fn exit_code(file: &PathBuf) -> Option<String> {
    std::fs::read_to_string(file).ok().map(|s| s.trim().to_owned())
}

#[test]
fn watch_follows_a_reload_in_80x24_and_quits_on_q_and_ctrl_c() {
    if !Tmux::available() {
        skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let baton = Baton::start(port, &config_text(port, &[&hello], 2, ""));
    let wait = Duration::from_secs(15);
    // The CPU figure the view turns into a share: in `status --json` too.
    let status = baton.status();
    for w in status["supervisor"]["generations"][0]["workers"].as_array().unwrap() {
        assert!(w["cpu_usec"].is_u64(), "no cpu_usec: {w}");
    }

    let exit_file = baton.dir.path().join("watch-1.exit");
    let tmux = Tmux::start(&watch_command(&baton, &exit_file));
    let screen = tmux.wait_screen(wait, "generation 1 with both workers ready", |s| {
        s.contains("generation 1 serving 2/2 ready") && ready_workers(s, 1) == 2
    });
    assert!(screen.contains("rss history"), "{screen}");
    assert!(screen.contains("q quit"), "the footer is missing at 80×24:\n{screen}");

    let reload = baton.reload();
    assert!(reload.status.success(), "reload failed: {}", text(&reload));
    tmux.wait_screen(wait, "generation 2 serving with both workers ready", |s| {
        s.contains("generation 2 serving 2/2 ready") && ready_workers(s, 2) == 2 && s.contains("last reload: ok")
    });

    tmux.send_keys("q");
    assert!(
        wait_until(Duration::from_secs(5), || !tmux.alive()),
        "q did not end the view; the pane shows:\n{}",
        tmux.screen()
    );
    assert_eq!(exit_code(&exit_file).as_deref(), Some("0"), "exit code after q");
    drop(tmux);

    // Ctrl-C: a key in raw mode, not SIGINT.
    let exit_file = baton.dir.path().join("watch-2.exit");
    let tmux = Tmux::start(&watch_command(&baton, &exit_file));
    tmux.wait_screen(wait, "generation 2 with both workers ready", |s| {
        ready_workers(s, 2) == 2
    });
    tmux.send_keys("C-c");
    assert!(
        wait_until(Duration::from_secs(5), || !tmux.alive()),
        "Ctrl-C did not end the view; the pane shows:\n{}",
        tmux.screen()
    );
    assert_eq!(exit_code(&exit_file).as_deref(), Some("0"), "exit code after Ctrl-C");
}

#[test]
fn watch_keeps_polling_while_baton_is_away() {
    if !Tmux::available() {
        skip("tmux is not installed (apt-get install tmux)");
        return;
    }
    let port = port();
    let hello = example_bin("hello").display().to_string();
    let mut baton = Baton::start(port, &config_text(port, &[&hello], 1, ""));
    let exit_file = baton.dir.path().join("watch.exit");
    let tmux = Tmux::start(&watch_command(&baton, &exit_file));
    tmux.wait_screen(Duration::from_secs(15), "the worker ready", |s| {
        ready_workers(s, 1) == 1
    });

    baton.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(baton.wait_exit(Duration::from_secs(15)).is_some(), "baton did not stop");
    let screen = tmux.wait_screen(Duration::from_secs(10), "that baton is not reachable", |s| {
        s.contains("baton not reachable:") && s.contains("retrying")
    });
    // Its last answer stays on the screen.
    assert!(screen.contains("generation 1"), "{screen}");
    assert!(tmux.alive(), "the view ended when baton went away");

    tmux.send_keys("Escape");
    assert!(
        wait_until(Duration::from_secs(5), || !tmux.alive()),
        "Esc did not end the view; the pane shows:\n{}",
        tmux.screen()
    );
    assert_eq!(exit_code(&exit_file).as_deref(), Some("0"), "exit code after Esc");
}

#[test]
fn watch_without_a_terminal_exits_2_and_says_why() {
    // Captured stdout is a pipe, not a terminal; no baton is needed for
    // the check, which comes first.
    let out = Command::new(baton_bin())
        .args(["status", "nosuchapp", "--watch"])
        .output()
        .expect("run baton");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stdout is not a terminal"),
        "{}",
        text(&out)
    );
}
