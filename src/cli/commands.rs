//! What each subcommand does, returning its exit code.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::Target;
use crate::config::{self, Config, Overrides, Source};
use crate::control::{self, Reply, Request};
use crate::engine::supervisor::Phase;
use crate::os::activation::{self, Inherited};
use crate::os::output::{self, JournalSink, LogSink, StderrSink};
use crate::runtime::upgrade::{self, OverridesState, Settings};
use crate::runtime::{self, Context, Start};
use crate::systemd::version::SystemdVersion;

pub use crate::exit::{EX_CONFIG, EX_FAILED, EX_OK, EX_USAGE, chain};

fn source_of(target: &Target, quick: bool) -> Option<Source> {
    match (&target.name, &target.config) {
        (_, Some(file)) => Some(Source::File(file.clone())),
        (Some(name), None) => Some(Source::File(config::path_for_name(name))),
        (None, None) if quick => Some(Source::Quick),
        (None, None) => None,
    }
}

/// `baton run`. `inherited` was taken in `main` before any thread existed;
/// `journal` says whether baton's stderr is connected to journald.
pub fn run(target: Target, overrides: Overrides, inherited: Inherited, journal: bool) -> i32 {
    let quick = !overrides.command.is_empty();
    let Some(source) = source_of(&target, quick) else {
        eprintln!("baton run: say what to run: an app NAME (/etc/baton/NAME.toml), --config FILE, or -- CMD ARGS");
        return EX_USAGE;
    };
    let config = match config::load(&source, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton: {}", chain(&e));
            return EX_CONFIG;
        }
    };
    let (listeners, socket_activated) = match inherited.sockets {
        Some(sockets) => {
            let wanted: Vec<String> = config.listen.iter().map(|l| l.address.to_string()).collect();
            let got: Vec<String> = sockets.iter().map(|s| s.address.clone()).collect();
            if !wanted.is_empty() && wanted != got {
                tracing::warn!(
                    "systemd passed sockets on {}; the config's [[listen]] ({}) is used only without systemd",
                    got.join(", "),
                    wanted.join(", ")
                );
            }
            (sockets, true)
        }
        None => match activation::bind_all(&config.listen) {
            Ok(l) => (l, false),
            Err(e @ activation::ActivationError::Nothing) => {
                eprintln!("baton: {}", chain(&e));
                return EX_CONFIG;
            }
            Err(e) => {
                eprintln!("baton: {}", chain(&e));
                return EX_FAILED;
            }
        },
    };
    let control = target
        .control
        .clone()
        .unwrap_or_else(|| control::control_path(&config.name));
    // A parallel reload holds several fds per worker; workers get back the
    // limit baton started with.
    let nofile = match crate::os::sys::raise_nofile() {
        Ok(n) => {
            if n.soft < n.hard {
                tracing::debug!("raised RLIMIT_NOFILE from {} to {}", n.soft, n.hard);
            }
            Some(n)
        }
        Err(e) => {
            tracing::warn!("cannot raise RLIMIT_NOFILE: {e}");
            None
        }
    };
    let settings = Settings {
        name: config.name.clone(),
        config_file: match &source {
            Source::File(f) => Some(f.clone()),
            Source::Quick => None,
        },
        overrides: OverridesState::from(&overrides),
        control,
        socket_activated,
        path: inherited.path,
        notify_socket: inherited.notify_socket,
        watchdog_ms: inherited
            .watchdog_usec
            .and_then(watchdog_timeout)
            .map(|d| d.as_millis() as u64),
        journal,
        listen: config.listen.iter().map(|l| l.address.to_string()).collect(),
        directory: config.directory.clone(),
        nofile: nofile.map(|n| (n.soft, n.hard)),
        metrics: config.metrics.clone(),
    };
    supervise(settings, overrides, listeners, Start::Fresh(Box::new(config)))
}

/// `baton upgrade-resume --handover-fd N`: what the previous image execs
/// (README "Upgrading baton"). Takes over its state and descriptors, or,
/// if it cannot, kills the workers it cannot supervise and exits 1, so
/// that systemd's Restart= starts baton afresh.
pub fn resume(handover_fd: i32) -> i32 {
    let bytes = crate::os::sys::adopt_fds(&[handover_fd])
        .map_err(upgrade::HandOverError::Read)
        .and_then(|mut fds| match fds.pop() {
            Some(fd) => upgrade::read_fd(fd),
            None => Err(upgrade::HandOverError::Parse("no hand-over".into())),
        });
    let mut resume = match bytes.and_then(|b| upgrade::Resume::adopt(&b)) {
        Ok(r) => r,
        Err(e) => return give_up(&chain(&e)),
    };
    let settings = resume.handover.settings.clone();
    let overrides = match settings.overrides.parse() {
        Ok(o) => o,
        Err(e) => return give_up(&e),
    };
    let mut listeners = Vec::new();
    for l in resume.handover.listeners.clone() {
        match resume.take(l.fd) {
            Ok(fd) => listeners.push(activation::Listener {
                name: l.name,
                fd,
                address: l.address,
            }),
            Err(e) => return give_up(&e),
        }
    }
    supervise(settings, overrides, listeners, Start::Resume(Box::new(resume)))
}

/// The new image cannot take over: nothing may be left serving without a
/// supervisor. Its children (the workers) are killed with their process
/// groups, and baton exits 1; under systemd, Restart=on-failure starts a
/// fresh baton on the same sockets.
fn give_up(why: &str) -> i32 {
    eprintln!("baton: UPGRADE FAILED after the exec: cannot take over from the previous baton: {why}");
    kill_handed_over_workers();
    EX_FAILED
}

/// Every child of this process (the workers an upgrade handed over), with
/// its process group (each worker leads one, and what it started is in it).
fn kill_handed_over_workers() {
    eprintln!("baton: killing the workers it handed over and exiting; systemd's Restart= starts baton afresh");
    for pid in crate::os::procfs::own_children() {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// `baton upgrade-check`: the hand-over on stdin; says whether this binary
/// can take over from it. What `baton upgrade` asks the new binary before
/// it execs it.
pub fn upgrade_check() -> i32 {
    use std::io::Read;
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().take(64 << 20).read_to_end(&mut bytes) {
        eprintln!("baton upgrade-check: cannot read the hand-over: {e}");
        return EX_FAILED;
    }
    match upgrade::HandOver::from_json(&bytes) {
        Ok(h) => {
            println!("baton-upgrade-ok {}", upgrade::VERSION);
            println!(
                "can take over {} from baton {}: {} workers",
                h.settings.name,
                h.from_version,
                h.workers.len()
            );
            EX_OK
        }
        Err(e) => {
            eprintln!("{}", chain(&e));
            EX_FAILED
        }
    }
}

/// Runs the supervisor: the event loop on a thread of its own, the spawner
/// on this (main) thread, until baton exits.
fn supervise(settings: Settings, overrides: Overrides, listeners: Vec<activation::Listener>, start: Start) -> i32 {
    let sink: Box<dyn LogSink> = if settings.journal {
        Box::new(JournalSink::default())
    } else {
        Box::new(StderrSink::default())
    };
    let (log, log_thread) = match output::spawn_writer(sink) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("baton: cannot start the log writer thread: {e}");
            return EX_FAILED;
        }
    };
    let nofile = settings
        .nofile
        .map(|(soft, hard)| crate::os::sys::NoFile { soft, hard });
    let (spawner, spawner_loop) = crate::os::sys::Spawner::new(nofile);
    let ctx = Context {
        settings,
        overrides,
        listeners,
        log,
        spawner,
    };
    // The event loop runs on a thread of its own; this (main) thread forks
    // the workers (see `os::sys`): it is the one thread an exec keeps.
    let event_loop = std::thread::Builder::new()
        .name("baton-loop".into())
        .spawn(move || run_event_loop(ctx, start));
    let event_loop = match event_loop {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("baton: cannot start the event loop thread: {e}");
            return EX_FAILED;
        }
    };
    // Returns once the event loop has dropped every spawner handle.
    spawner_loop.run();
    let code = event_loop.join().unwrap_or_else(|_| {
        eprintln!("baton: the event loop thread panicked");
        EX_FAILED
    });
    let _ = log_thread.join();
    code
}

/// The tokio runtime and the supervisor's event loop, until baton exits.
fn run_event_loop(ctx: Context, start: Start) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // With [metrics] on, a job runs every measurement period (14 s);
        // tokio's default 10 s would end the thread and start another each
        // period.
        .thread_keep_alive(std::time::Duration::from_secs(60))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton: cannot start the async runtime: {e}");
            return EX_FAILED;
        }
    };
    let (phase, _) = tokio::sync::watch::channel(Phase::Starting);
    let resuming = matches!(start, Start::Resume(_));
    let code = match runtime.block_on(runtime::run(ctx, start, CancellationToken::new(), phase)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("baton: {}", chain(&e));
            if resuming {
                kill_handed_over_workers();
            }
            EX_FAILED
        }
    };
    // Dropping the runtime drops the pumps, and with them the last handles
    // on the writer, which then writes what is queued and ends; and the
    // last spawner handles, which ends the main thread's spawner loop.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

/// systemd's WATCHDOG_USEC for baton, as a timeout baton can keep.
///
/// 0 and u64::MAX (USEC_INFINITY) mean "no watchdog" to sd_watchdog_enabled(3),
/// and so here; a zero timeout once made a zero-length ping interval, which
/// panics tokio. Other values are clamped to 20 ms..2 h: baton pings at half
/// the timeout, and pinging more often than asked is harmless, while a
/// sub-millisecond interval would only spin.
pub fn watchdog_timeout(usec: u64) -> Option<Duration> {
    const MIN: Duration = Duration::from_millis(20);
    const MAX: Duration = Duration::from_secs(2 * 60 * 60);
    if usec == 0 || usec == u64::MAX {
        tracing::warn!("ignoring WATCHDOG_USEC={usec}: it means no watchdog");
        return None;
    }
    Some(Duration::from_micros(usec).clamp(MIN, MAX))
}

/// The control socket a client command should talk to.
fn control_target(target: &Target) -> Result<(PathBuf, String), control::ControlError> {
    if let Some(path) = &target.control {
        return Ok((path.clone(), path.display().to_string()));
    }
    let name = match (&target.name, &target.config) {
        (Some(name), _) => name.clone(),
        (None, Some(file)) => match config::load(&Source::File(file.clone()), &Overrides::default()) {
            Ok(c) => c.name,
            // A reload of a broken file must still reach the right
            // supervisor (to be told the file is broken): read just `name`.
            Err(_) => std::fs::read_to_string(file)
                .ok()
                .and_then(|text| text.parse::<toml_edit::DocumentMut>().ok())
                .and_then(|doc| doc.get("name")?.as_str().map(str::to_owned))
                .or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_default(),
        },
        (None, None) => {
            let path = control::discover()?;
            let name = path
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok((path, name));
        }
    };
    Ok((control::client_path(&name), name))
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `baton reload`, `baton promote` and `baton rollback`: a request
/// answered like a reload. `verb` names the command in messages.
pub fn change(target: Target, verb: &str, request: &Request) -> i32 {
    let (path, what) = match control_target(&target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("baton {verb}: {}", chain(&e));
            return EX_USAGE;
        }
    };
    let rt = match client_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton {verb}: {e:#}");
            return EX_USAGE;
        }
    };
    let reply = rt.block_on(control::request(&path, &what, request, |p| {
        println!("baton: {p}");
    }));
    match reply {
        Ok(Reply::Reloaded(answer)) if answer.ok => {
            println!("baton: {verb} ok: {}", answer.message);
            if let Some(r) = &answer.repoint {
                repoint_as_client(r);
            }
            EX_OK
        }
        Ok(Reply::Reloaded(answer)) => {
            eprintln!("baton: {} FAILED: {}", verb.to_uppercase(), answer.message);
            eprintln!("baton: the previous generation is still serving");
            if !answer.output.is_empty() {
                eprintln!("baton: last output of the failing worker:");
                for line in &answer.output {
                    eprintln!("  {line}");
                }
            }
            EX_FAILED
        }
        Ok(Reply::Error(e)) => {
            eprintln!("baton {verb}: the supervisor refused: {e}");
            EX_USAGE
        }
        Ok(other) => {
            eprintln!("baton {verb}: unexpected answer: {other:?}");
            EX_USAGE
        }
        Err(control::ControlError::NoAnswer) => {
            eprintln!("baton {verb}: the supervisor went away before answering (did it stop?)");
            EX_FAILED
        }
        Err(e) => {
            eprintln!("baton {verb}: {}", chain(&e));
            EX_USAGE
        }
    }
}

/// `baton upgrade [NAME | --all]`.
pub fn upgrade(target: Target, all: bool) -> i32 {
    let rt = match client_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baton upgrade: {e:#}");
            return EX_USAGE;
        }
    };
    let targets: Vec<(PathBuf, String)> = if all {
        let found = control::all_running();
        if found.is_empty() {
            println!("baton upgrade: no baton supervisor is running here; nothing to upgrade");
            return EX_OK;
        }
        found
    } else {
        match control_target(&target) {
            Ok(t) => vec![t],
            Err(e) => {
                eprintln!("baton upgrade: {}", chain(&e));
                return EX_USAGE;
            }
        }
    };
    let mut code = EX_OK;
    for (path, what) in targets {
        let reply = rt.block_on(control::request(&path, &what, &Request::Upgrade {}, |p| {
            println!("baton: {what}: {p}");
        }));
        let this = match reply {
            Ok(Reply::Upgraded(a)) => {
                println!(
                    "baton: {what}: upgraded from baton {} to {} in place (pid {}); {} workers kept, none restarted: {}",
                    a.from,
                    a.to,
                    a.pid,
                    a.workers.len(),
                    a.workers.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
                );
                EX_OK
            }
            Ok(Reply::Error(e)) if e.starts_with("bad request") => {
                eprintln!(
                    "baton: {what}: UPGRADE REFUSED: that supervisor is a baton too old to upgrade itself in \
                     place; restart it once (systemctl restart {what}) to run the new binary"
                );
                EX_FAILED
            }
            Ok(Reply::Error(e)) => {
                eprintln!("baton: {what}: UPGRADE REFUSED: {e}");
                EX_FAILED
            }
            Ok(other) => {
                eprintln!("baton: {what}: unexpected answer: {other:?}");
                EX_FAILED
            }
            Err(control::ControlError::NoAnswer) => {
                eprintln!(
                    "baton: {what}: UPGRADE FAILED: the supervisor went away without an answer: it was stopped, \
                     or the new binary could not take over (it then kills the workers and exits 1, and under \
                     systemd Restart= starts baton afresh); see `systemctl status {what}` and `journalctl -u {what}`"
                );
                EX_FAILED
            }
            Err(e) => {
                eprintln!("baton: {what}: {}", chain(&e));
                if all { EX_FAILED } else { EX_USAGE }
            }
        };
        if this != EX_OK && code == EX_OK {
            code = this;
        }
    }
    code
}

/// A rollback serves, but baton's user could not re-point the `directory`
/// symlink (the deploy layout belongs to someone else): the client, run by
/// the operator, tries with its own rights. The rollback stands either way.
fn repoint_as_client(r: &control::Repoint) {
    let (link, target) = (r.link.display(), r.target.display());
    match crate::os::history::repoint(&r.link, &r.target) {
        Ok(()) => println!("baton: re-pointed {link} → {target} (as you), so later reloads and restarts stay there"),
        Err(e) => {
            eprintln!("baton: WARNING: you cannot re-point {link} → {target} either: {e}");
            eprintln!(
                "baton: the rolled-back release serves now, but the next reload or restart starts what {link} \
                 points to; fix it with: ln -sfn {target} {link}"
            );
        }
    }
}

/// `baton history`: reads the file itself, so it works with baton stopped.
pub fn history(target: Target, json: bool) -> i32 {
    use crate::os::history;
    let name = match control_target(&target) {
        Ok((_, name)) => name,
        Err(e) => {
            eprintln!("baton history: {}", chain(&e));
            return EX_USAGE;
        }
    };
    let Some(path) = history::file_to_read(&name) else {
        eprintln!("baton history: no state directory: set STATE_DIRECTORY, XDG_STATE_HOME or HOME");
        return EX_USAGE;
    };
    match history::load(&path) {
        Ok(h) => {
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&h).unwrap_or_default())
            } else {
                history::render(&h)
            };
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            EX_OK
        }
        Err(e) => {
            eprintln!("baton history: {}", chain(&e));
            EX_FAILED
        }
    }
}

/// `baton status`, or with `watch` (its interval) `baton status --watch`.
pub fn status(target: Target, json: bool, watch: Option<Duration>) -> i32 {
    if let Some(interval) = watch {
        use std::io::IsTerminal;
        if !std::io::stdout().is_terminal() {
            eprintln!(
                "baton status --watch: stdout is not a terminal; for scripts and pipes use `baton status` or `baton status --json`"
            );
            return EX_USAGE;
        }
        let (path, what) = match control_target(&target) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("baton status: {}", chain(&e));
                return EX_USAGE;
            }
        };
        return match client_runtime() {
            Ok(rt) => super::watch::run(&rt, &path, &what, interval),
            Err(e) => {
                eprintln!("baton status: {e:#}");
                EX_USAGE
            }
        };
    }
    let result = control_target(&target).map_err(|e| chain(&e)).and_then(|(path, what)| {
        let rt = client_runtime().map_err(|e| format!("{e:#}"))?;
        rt.block_on(control::request(&path, &what, &Request::Status {}, |_| {}))
            .map_err(|e| chain(&e))
    });
    match result {
        Ok(Reply::Status(v)) => {
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
            } else {
                crate::control::status::render(&v)
            };
            // `baton status | head` closes the pipe early; that is not an error.
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            EX_OK
        }
        Ok(other) => {
            eprintln!("baton status: unexpected answer: {other:?}");
            EX_USAGE
        }
        Err(e) => {
            eprintln!("baton status: {e}");
            EX_USAGE
        }
    }
}

/// `baton metrics`.
pub fn metrics(target: Target) -> i32 {
    let result = control_target(&target).map_err(|e| chain(&e)).and_then(|(path, what)| {
        let rt = client_runtime().map_err(|e| format!("{e:#}"))?;
        rt.block_on(control::request(&path, &what, &Request::Metrics {}, |_| {}))
            .map_err(|e| chain(&e))
    });
    match result {
        Ok(Reply::Metrics(text)) => {
            use std::io::Write;
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            EX_OK
        }
        Ok(Reply::Error(e)) => {
            eprintln!("baton metrics: {e}");
            EX_USAGE
        }
        Ok(other) => {
            eprintln!("baton metrics: unexpected answer: {other:?}");
            EX_USAGE
        }
        Err(e) => {
            eprintln!("baton metrics: {e}");
            EX_USAGE
        }
    }
}

/// `baton check`.
pub fn check(target: Target) -> i32 {
    let Some(source) = source_of(&target, false) else {
        eprintln!("baton check: name the app (baton check NAME) or pass --config FILE");
        return EX_USAGE;
    };
    match config::load(&source, &Overrides::default()).map(|c| (validate_runnable(&c), c)) {
        Ok((Ok(()), c)) => {
            println!(
                "{}: ok ({} worker{}, command {:?})",
                match &source {
                    Source::File(p) => p.display().to_string(),
                    Source::Quick => "command line".into(),
                },
                c.workers,
                if c.workers == 1 { "" } else { "s" },
                c.command.join(" ")
            );
            EX_OK
        }
        Ok((Err(e), _)) => {
            eprintln!("{e}");
            EX_CONFIG
        }
        Err(e) => {
            eprintln!("{}", chain(&e));
            EX_CONFIG
        }
    }
}

/// `baton init`.
pub fn init(req: crate::systemd::init::Request) -> i32 {
    use crate::systemd::init::Account;
    let default_units = req.unit_dir == std::path::Path::new("/etc/systemd/system");
    let default_sysusers = req.sysusers_dir == std::path::Path::new(crate::systemd::init::DEFAULT_SYSUSERS_DIR);
    let name = req.name.clone();
    let account = crate::systemd::init::account(&req);
    match crate::systemd::init::write(&req) {
        Ok(files) => {
            use crate::systemd::init::Outcome;
            for (p, outcome) in &files {
                match outcome {
                    Outcome::Wrote => println!("wrote {}", p.display()),
                    Outcome::Unchanged => println!("unchanged {}", p.display()),
                }
            }
            let units_changed = files
                .iter()
                .any(|(p, o)| *o == Outcome::Wrote && p.starts_with(&req.unit_dir));
            match account {
                Ok(Account::Dedicated(user)) if default_sysusers => {
                    let entry = req.sysusers_dir.join(format!("baton-{user}.conf"));
                    match std::process::Command::new("systemd-sysusers").arg(&entry).status() {
                        Ok(s) if s.success() => println!("ran systemd-sysusers: {name} runs as system user {user}"),
                        _ => eprintln!(
                            "baton init: `systemd-sysusers {}` failed; run it yourself, or {name}.service cannot start (no user {user})",
                            entry.display()
                        ),
                    }
                }
                Ok(Account::Dedicated(user)) => {
                    println!(
                        "{name} runs as system user {user}: create it with `systemd-sysusers` from the entry above"
                    )
                }
                Ok(Account::Root) => eprintln!(
                    "baton init: WARNING: {name} will run as root. A flaw in the app then hands root to \
                     whoever exploits it (the sandbox drops every capability, but root still owns most \
                     of the system's files). Prefer the default (a system user of its own) or --user USER."
                ),
                _ => {}
            }
            // `systemctl enable` reloads too, but a plain `start` would not.
            if default_units && units_changed && std::path::Path::new("/run/systemd/system").exists() {
                match std::process::Command::new("systemctl").arg("daemon-reload").status() {
                    Ok(s) if s.success() => println!("ran systemctl daemon-reload"),
                    _ => eprintln!("baton init: `systemctl daemon-reload` failed; run it yourself"),
                }
            }
            println!("next: systemctl enable --now {name}.socket");
            println!("then: systemctl reload {name}   ·   journalctl -u {name}   ·   baton status {name}");
            EX_OK
        }
        Err(e @ crate::systemd::init::InitError::Invalid(_)) => {
            eprintln!("baton init: {}", chain(&e));
            EX_CONFIG
        }
        Err(e) => {
            eprintln!("baton init: {}", chain(&e));
            EX_FAILED
        }
    }
}

/// This machine's systemd version, for units written without
/// `--systemd-version`; the baseline (with a note) when it has none.
pub fn systemd_here() -> SystemdVersion {
    SystemdVersion::detect().unwrap_or_else(|e| {
        eprintln!(
            "baton: {e}; writing units for {} (pass --systemd-version N for another host)",
            SystemdVersion::BASELINE
        );
        SystemdVersion::BASELINE
    })
}

/// `baton import-pm2`.
pub fn import_pm2(req: crate::import::pm2::Request) -> i32 {
    crate::import::pm2::run(&req)
}

/// What `check` adds on top of parsing: the program and directory exist.
fn validate_runnable(config: &Config) -> Result<(), String> {
    let path = std::env::var("PATH").ok();
    crate::os::spawn::resolve(config, path.as_deref())
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{}: {}",
                config
                    .source
                    .as_ref()
                    .map_or("command line".into(), |p| p.display().to_string()),
                chain(&e)
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_usec_zero_and_infinity_are_off_and_the_rest_is_clamped() {
        assert_eq!(watchdog_timeout(0), None);
        assert_eq!(watchdog_timeout(u64::MAX), None);
        assert_eq!(watchdog_timeout(1), Some(Duration::from_millis(20)));
        assert_eq!(watchdog_timeout(30_000_000), Some(Duration::from_secs(30)));
        assert_eq!(watchdog_timeout(u64::MAX - 1), Some(Duration::from_secs(7200)));
    }
}
