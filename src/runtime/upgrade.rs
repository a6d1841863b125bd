//! `baton upgrade` (README "Upgrading baton"): the running supervisor
//! re-executes the baton binary now installed where it was started from,
//! in place, and the new image carries on with everything.
//!
//! The old image stops its I/O tasks at a safe point (each gives back its
//! descriptor and the bytes it had read but not yet used), writes the whole
//! state, this [`HandOver`], as JSON into a memfd, and execs the new binary
//! from the spawner thread (`os::sys::Spawner::exec`) with exactly the
//! descriptors the hand-over lists kept open. Before that, the new binary
//! must have read the same JSON in its check mode (`baton upgrade-check`)
//! and said it can take over; if not, nothing changes.
//!
//! Descriptors travel by number: execve keeps numbers, and the new image
//! takes each listed one exactly once (`os::sys::adopt_fds`).

use std::io::Write as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Driver, Event, Helpers, IoParts, WorkerIo, spawn_task};
use crate::config::{Overrides, Source};
use crate::control::{self, Reply, UpgradeAnswer};
use crate::engine::supervisor::{
    CORE_FORMAT, CoreState, ExitStatus, GenId, Phase, Record, RecordKind, RecordResult, Supervisor, WorkerId,
};
use crate::os::history::{History, Release};
use crate::os::ipc::IpcRest;
use crate::os::notify::Endpoint;
use crate::os::output::{PipeRest, Stream, Tail};

/// The shape of [`HandOver`]. Bump it whenever that shape (or the core's,
/// [`CORE_FORMAT`]) changes: a binary refuses a format it does not know, in
/// its check mode, before the old image execs it.
pub const FORMAT: u32 = 2;

/// The oldest format this binary still reads: 1 lacks only the metrics'
/// counters and settings, which start from zero and from no outputs.
pub const OLDEST_FORMAT: u32 = 1;

/// The version of this binary.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use crate::control::status::Upgraded;

/// Everything the next image needs. Descriptors are numbers, valid in the
/// process that reads it right after the exec.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandOver {
    pub format: u32,
    pub core_format: u32,
    /// The version handing over.
    pub from_version: String,
    /// The path baton was first started from: where the next upgrade looks.
    pub exe: PathBuf,
    /// CLOCK_MONOTONIC (ns) when the core was exported: the new image
    /// shifts the core's instants by the time the exec took.
    pub mono_ns: u64,
    pub core: CoreState,
    pub settings: Settings,
    pub listeners: Vec<ListenerState>,
    /// The control socket's listener.
    pub control: RawFd,
    /// The `baton upgrade` client, answered by the new image.
    pub client: Option<RawFd>,
    pub workers: Vec<WorkerState>,
    pub orphans: Vec<OrphanState>,
    pub retired: Vec<GenId>,
    pub old_tails: Vec<(WorkerId, Vec<String>)>,
    pub history: History,
    pub run_id: u64,
    pub last_serving: Option<GenId>,
    /// When this supervisor (the first image) started: ms since the epoch,
    /// and how long ago, in ns of CLOCK_MONOTONIC.
    pub started_wall_ms: u64,
    pub started_mono_ns: u64,
    pub upgrades: Vec<Upgraded>,
    /// The metrics' counters (format 2).
    #[serde(default)]
    pub metrics: crate::control::metrics::Counters,
}

/// What the supervisor was started with, beyond the config: all it needs
/// to reload, report and notify systemd.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub name: String,
    /// The config file; `None`: quick mode (`baton run -- CMD`).
    pub config_file: Option<PathBuf>,
    pub overrides: OverridesState,
    pub control: PathBuf,
    pub socket_activated: bool,
    /// PATH as baton found it, for finding the app.
    pub path: Option<String>,
    /// systemd's NOTIFY_SOCKET and WATCHDOG_USEC (ms), which baton took out
    /// of its environment at start.
    pub notify_socket: Option<String>,
    pub watchdog_ms: Option<u64>,
    /// Worker lines go to the journal (else to stderr).
    pub journal: bool,
    /// `[[listen]]` of the config baton started with (compared at reloads
    /// in standalone mode).
    pub listen: Vec<String>,
    /// The configured `directory` (a `current` symlink a rollback re-points).
    pub directory: Option<PathBuf>,
    /// RLIMIT_NOFILE as baton found it, which workers get back: (soft, hard).
    pub nofile: Option<(u64, u64)>,
    /// `[metrics]` of the config baton started with (format 2). Its
    /// listener is bound again after the exec (tokio's sockets are
    /// close-on-exec), so a scrape during the exec may be refused.
    #[serde(default)]
    pub metrics: crate::config::Metrics,
}

impl Settings {
    pub fn source(&self) -> Source {
        match &self.config_file {
            Some(f) => Source::File(f.clone()),
            None => Source::Quick,
        }
    }
}

/// [`Overrides`] as text, parsed again on the other side.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverridesState {
    pub name: Option<String>,
    pub listen: Vec<String>,
    pub workers: Option<String>,
    pub command: Vec<String>,
}

impl From<&Overrides> for OverridesState {
    fn from(o: &Overrides) -> Self {
        OverridesState {
            name: o.name.clone(),
            listen: o.listen.iter().map(ToString::to_string).collect(),
            workers: o.workers.as_ref().map(ToString::to_string),
            command: o.command.clone(),
        }
    }
}

impl OverridesState {
    pub fn parse(&self) -> Result<Overrides, String> {
        Ok(Overrides {
            name: self.name.clone(),
            listen: self
                .listen
                .iter()
                .map(|l| l.parse().map_err(|e| format!("--listen {l}: {e}")))
                .collect::<Result<_, _>>()?,
            workers: self
                .workers
                .as_deref()
                .map(|w| w.parse().map_err(|e| format!("--workers {w}: {e}")))
                .transpose()?,
            command: self.command.clone(),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerState {
    pub name: String,
    pub address: String,
    pub fd: RawFd,
}

/// A pipe's read end and the bytes read from it that are not a whole line
/// yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipeState {
    pub fd: RawFd,
    pub partial: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpcState {
    pub fd: RawFd,
    pub partial: Vec<u8>,
    pub oversize: bool,
    /// Messages to the worker not written yet.
    pub unsent: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerState {
    pub worker: WorkerId,
    pub generation: GenId,
    pub slot: usize,
    pub leader: i32,
    pub leader_reaped: bool,
    pub main: i32,
    pub main_pidfd: Option<RawFd>,
    pub tail: Vec<String>,
    pub notify: RawFd,
    pub notify_address: String,
    /// `None`: that stream had reached its end.
    pub stdout: Option<PipeState>,
    pub stderr: Option<PipeState>,
    pub ipc: Option<IpcState>,
    pub memory_limit: Option<u64>,
    pub over_limit: u32,
    pub stop_message: Option<String>,
    /// The worker's own cgroup's directory name (cgroup mode).
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrphanState {
    pub pid: i32,
    pub generation: Option<GenId>,
    pub pidfd: Option<RawFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("cannot read the hand-over")]
    Read(#[source] std::io::Error),
    #[error("the hand-over is not one this baton can read: {0}")]
    Parse(String),
    #[error(
        "the hand-over has format {found} (core {core_found}); this baton {VERSION} reads format {FORMAT} \
         (core {CORE_FORMAT})"
    )]
    Format { found: u32, core_found: u32 },
}

impl HandOver {
    /// Every descriptor the hand-over names, each once.
    pub fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.listeners.iter().map(|l| l.fd).collect();
        fds.push(self.control);
        fds.extend(self.client);
        for w in &self.workers {
            fds.extend(w.main_pidfd);
            fds.push(w.notify);
            fds.extend(w.stdout.as_ref().map(|p| p.fd));
            fds.extend(w.stderr.as_ref().map(|p| p.fd));
            fds.extend(w.ipc.as_ref().map(|i| i.fd));
        }
        fds.extend(self.orphans.iter().filter_map(|o| o.pidfd));
        fds
    }

    pub fn to_json(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| e.to_string())
    }

    /// Parses and checks the formats: what `baton upgrade-check` does
    /// before the old image execs this binary, and what the new image does
    /// first.
    pub fn from_json(bytes: &[u8]) -> Result<HandOver, HandOverError> {
        // The formats first, so an unknown one is named as such rather than
        // as the first field it does not know.
        #[derive(Deserialize)]
        struct Formats {
            format: u32,
            core_format: u32,
        }
        let formats: Formats = serde_json::from_slice(bytes).map_err(|e| HandOverError::Parse(e.to_string()))?;
        if !(OLDEST_FORMAT..=FORMAT).contains(&formats.format) || formats.core_format != CORE_FORMAT {
            return Err(HandOverError::Format {
                found: formats.format,
                core_found: formats.core_format,
            });
        }
        let handover: HandOver = serde_json::from_slice(bytes).map_err(|e| HandOverError::Parse(e.to_string()))?;
        handover.settings.overrides.parse().map_err(HandOverError::Parse)?;
        // The descriptors are checked when they are adopted: the check mode
        // reads a copy whose descriptors are not its own.
        Ok(handover)
    }
}

/// A hand-over read by the new image, with the descriptors it names.
#[derive(Debug)]
pub struct Resume {
    pub handover: HandOver,
    fds: std::collections::HashMap<RawFd, OwnedFd>,
}

impl Resume {
    /// Parses the hand-over and takes every descriptor it names.
    pub fn adopt(bytes: &[u8]) -> Result<Resume, HandOverError> {
        let handover = HandOver::from_json(bytes)?;
        let listed = handover.fds();
        let owned = crate::os::sys::adopt_fds(&listed).map_err(HandOverError::Read)?;
        Ok(Resume {
            handover,
            fds: listed.into_iter().zip(owned).collect(),
        })
    }

    /// The descriptor numbered `fd` in the hand-over (each only once).
    pub fn take(&mut self, fd: RawFd) -> Result<OwnedFd, String> {
        self.fds
            .remove(&fd)
            .ok_or_else(|| format!("descriptor {fd} is not in the hand-over (or was taken twice)"))
    }
}

/// Writes `json` into a fresh memfd, rewound for the reader.
pub fn to_memfd(json: &[u8]) -> std::io::Result<OwnedFd> {
    use std::io::{Seek, Write};
    let fd = crate::os::sys::memfd("baton-handover")?;
    let mut file = std::fs::File::from(fd);
    file.write_all(json)?;
    file.rewind()?;
    Ok(file.into())
}

/// Reads the whole hand-over from `fd` (a memfd), and closes it.
pub fn read_fd(fd: OwnedFd) -> Result<Vec<u8>, HandOverError> {
    use std::io::Read;
    let mut file = std::fs::File::from(fd);
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(HandOverError::Read)?;
    Ok(bytes)
}

/// CLOCK_MONOTONIC in ns: the clock `Instant` reads on Linux, and one that
/// keeps counting across an exec.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            (t.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec() as u64)
        })
        .unwrap_or(0)
}

/// The binary baton was started from, as a path: after the package
/// replaced it, `/proc/self/exe` says "PATH (deleted)", and PATH is where
/// the new one is.
pub fn own_exe() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/usr/bin/baton"));
    let text = exe.to_string_lossy();
    match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    }
}

/// How long the new binary's check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// An upgrade whose new binary is being checked: its client waits.
#[derive(Debug)]
pub struct Checking {
    client: UnixStream,
}

impl Checking {
    /// The upgrade will not happen: the client is told why.
    pub(super) fn refuse(self, why: &str) {
        tell_refused(self.client, why);
    }
}

/// Writes one reply line to a `baton upgrade` client (a short line on a
/// local socket: it fits the socket buffer, so it does not block the loop).
fn tell(client: &mut UnixStream, reply: &Reply) {
    if let Ok(mut line) = serde_json::to_vec(reply) {
        line.push(b'\n');
        let _ = client.set_nonblocking(false);
        let _ = client.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = client.write_all(&line);
    }
}

fn tell_refused(mut client: UnixStream, why: &str) {
    tell(&mut client, &Reply::Error(format!("{why}; nothing changed")));
}

/// The new binary's check: `EXE upgrade-check` reads the hand-over on its
/// stdin and prints its version if it can take over. baton's reaper reaps
/// it (it reaps every child) and passes its status through `helpers`; it is
/// killed, with its process group, if it takes longer than
/// [`CHECK_TIMEOUT`].
async fn run_check(exe: PathBuf, json: Vec<u8>, helpers: Helpers, tasks: TaskTracker) -> Result<String, String> {
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;
    let shown = exe.display().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let started = {
        let (helpers, shown) = (helpers.clone(), shown.clone());
        tasks
            .spawn_blocking(move || {
                // A file still open for writing somewhere (a copy being
                // finished) cannot be executed: ETXTBSY, which passes; tried
                // again for up to 2 s, without holding the lock meanwhile.
                let mut tries = 0;
                loop {
                    let mut running = helpers.lock().unwrap_or_else(|e| e.into_inner());
                    let spawned = std::process::Command::new(&exe)
                        .arg("upgrade-check")
                        .stdin(std::process::Stdio::piped())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .process_group(0)
                        .spawn();
                    match spawned {
                        Ok(child) => {
                            running.insert(child.id() as i32, tx);
                            return Ok::<_, String>(child);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 40 => {
                            drop(running);
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => return Err(format!("cannot run {shown}: {e}")),
                    }
                }
            })
            .await
            .map_err(|e| e.to_string())??
    };
    let pid = started.id() as i32;
    let io = tasks.spawn_blocking(move || {
        let mut child = started;
        // A binary that does not read its stdin (not baton) gets EPIPE, or
        // is killed at the timeout, which ends this write too.
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&json);
        }
        let (mut out, mut err) = (Vec::new(), Vec::new());
        if let Some(s) = child.stdout.take() {
            let _ = s.take(1 << 20).read_to_end(&mut out);
        }
        if let Some(s) = child.stderr.take() {
            let _ = s.take(1 << 20).read_to_end(&mut err);
        }
        (out, err)
    });
    let answered = tokio::time::timeout(CHECK_TIMEOUT, async { (io.await, rx.await) }).await;
    let ((out, err), status) = match answered {
        Ok((Ok(output), Ok(status))) => (output, status),
        Ok(_) => return Err(format!("{shown} upgrade-check: lost track of it")),
        Err(_) => {
            // Still baton's unreaped child while it is in `helpers`.
            if helpers.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&pid) {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
            }
            return Err(format!(
                "{shown} upgrade-check did not answer within {}s; killed it",
                CHECK_TIMEOUT.as_secs()
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&out);
    let stderr = String::from_utf8_lossy(&err);
    match stdout.lines().next().and_then(|l| l.strip_prefix("baton-upgrade-ok ")) {
        Some(version) if status == ExitStatus::Code(0) => Ok(version.trim().to_owned()),
        _ => {
            let said = stderr.lines().chain(stdout.lines()).find(|l| !l.trim().is_empty());
            Err(match said {
                Some(line) => format!("{shown} cannot take over: {}", line.trim()),
                None => format!("{shown} is not a baton that can take over ({status})"),
            })
        }
    }
}

impl Driver {
    /// Why the state cannot be handed over right now, if it cannot: the
    /// core's reasons, and the driver's own half-done work.
    fn hand_over_blocker(&self) -> Option<String> {
        if let Some(why) = self.core.hand_over_blocker() {
            return Some(why);
        }
        if !self.pending.is_empty() || !self.early_exits.is_empty() {
            return Some("a worker is being started; retry in a moment".into());
        }
        if self.workers.values().any(|io| !self.pids.contains_key(&io.main)) {
            return Some("a worker's exit is being reported; retry in a moment".into());
        }
        if !self.checks.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return Some("a canary check is running; retry in a moment".into());
        }
        if self.rollback.is_some() {
            return Some("a rollback is running; retry when it has finished".into());
        }
        if self.hand_over_to.is_some() || self.upgrade.is_some() {
            return Some("an upgrade is already running".into());
        }
        None
    }

    /// The upgrade will not happen: its record, then the client hears why.
    pub(super) fn refuse_upgrade(&mut self, client: UnixStream, why: &str) {
        self.record_upgrade(RecordResult::Refused, why);
        tell_refused(client, why);
    }

    /// The record of an upgrade that did not happen; the upgrade that
    /// happened is recorded by the new image (`resume`).
    pub(super) fn record_upgrade(&mut self, result: RecordResult, why: &str) {
        let serving = self.core.serving();
        let release = serving
            .and_then(|g| self.specs.get(&g))
            .map(|spec| Release::of(&spec.launch).id);
        self.records.upgrade_ended(result, why, serving, release.as_deref());
    }

    /// `baton upgrade`: checks the new binary off the loop
    /// (`Event::UpgradeChecked`), or refuses at once.
    pub(super) fn upgrade_requested(&mut self, client: UnixStream) {
        self.records.upgrade_began(std::time::Instant::now());
        if let Some(why) = self.hand_over_blocker() {
            self.refuse_upgrade(client, &why);
            return;
        }
        tracing::info!("upgrade requested: checking {}", self.exe.display());
        let json = match self.export(None).and_then(|h| h.to_json()) {
            Ok(json) => json,
            Err(e) => {
                self.refuse_upgrade(client, &format!("cannot write the hand-over: {e}"));
                return;
            }
        };
        let mut client = client;
        tell(
            &mut client,
            &Reply::Progress(format!("checking that {} can take over", self.exe.display())),
        );
        self.upgrade = Some(Checking { client });
        let (exe, events, helpers, tasks) = (
            self.exe.clone(),
            self.events.clone(),
            self.helpers.clone(),
            self.tasks.clone(),
        );
        spawn_task(&self.tasks, &self.done, "upgrade-check", async move {
            let result = run_check(exe, json, helpers, tasks).await;
            let _ = events.send(Event::UpgradeChecked(result)).await;
        });
    }

    /// The new binary's answer.
    pub(super) fn upgrade_checked(&mut self, result: Result<String, String>) {
        let Some(Checking { mut client }) = self.upgrade.take() else {
            return;
        };
        match result {
            Err(why) => self.refuse_upgrade(client, &why),
            Ok(version) => {
                tell(
                    &mut client,
                    &Reply::Progress(format!("baton {version} can take over; handing over")),
                );
                self.hand_over_to = Some(client);
            }
        }
    }

    /// Stops every I/O task at a safe point, writes the hand-over and
    /// execs the new binary. Returns only if that failed: then every task
    /// is running again from where it stopped, and the client is told.
    pub(super) async fn hand_over(&mut self, client: UnixStream, rx: &mut mpsc::Receiver<Event>) {
        if let Some(why) = self.hand_over_blocker() {
            self.refuse_upgrade(client, &why);
            return;
        }
        if let Some(n) = &self.systemd {
            n.phase(Phase::Reloading, "upgrading baton itself");
        }
        // Stop the tasks. Events they send meanwhile are kept, and handled
        // once all have stopped (a task blocked on a full queue must get
        // to its stop point).
        let mut held = Vec::new();
        self.control_stop.cancel();
        for io in self.workers.values() {
            io.handover.cancel();
        }
        let mut stopped = Stopped::default();
        let control = self.control_task.take();
        let handles: Vec<_> = self
            .workers
            .iter_mut()
            .map(|(&w, io)| (w, io.notify.take(), std::mem::take(&mut io.outputs), io.ipc_task.take()))
            .collect();
        let collect = async move {
            let control = match control {
                Some(task) => task.await.ok().and_then(Result::ok),
                None => None,
            };
            let mut rests = Vec::new();
            for (w, notify, outputs, ipc) in handles {
                let notify = match notify {
                    Some(task) => task.await.ok().flatten(),
                    None => None,
                };
                let mut rest_outputs = Vec::new();
                for (stream, task) in outputs {
                    rest_outputs.push((stream, task.await.ok().flatten()));
                }
                let ipc = match ipc {
                    Some(task) => task.await.ok().flatten(),
                    None => None,
                };
                rests.push((w, notify, rest_outputs, ipc));
            }
            (control, rests)
        };
        let (control, rests) = {
            tokio::pin!(collect);
            loop {
                tokio::select! {
                    done = &mut collect => break done,
                    Some(event) = rx.recv() => held.push(event),
                }
            }
        };
        stopped.control = control;
        stopped.rests = rests;
        for event in held {
            self.handle(event);
        }
        // Whatever the held events asked for must be done before the state
        // can cross; if that leaves work half done, the upgrade waits for
        // another day.
        if let Some(code) = self.drain() {
            tracing::warn!("baton is exiting ({code}); upgrade abandoned");
        }
        let blocker = self.hand_over_blocker();
        let mut client = client;
        let outcome = match blocker {
            Some(why) => Err(why),
            None => self.exec(&mut stopped, &client).await,
        };
        let why = match outcome {
            Ok(never) => match never {},
            Err(why) => why,
        };
        self.restart_io(stopped);
        if let Some(n) = &self.systemd {
            n.phase(Phase::Ready, &self.status_summary());
        }
        self.record_upgrade(
            RecordResult::Failed,
            &format!("the hand-over failed: {why}; this baton {VERSION} carries on"),
        );
        tell(
            &mut client,
            &Reply::Error(format!(
                "the hand-over failed: {why}; this baton {VERSION} carries on, nothing changed"
            )),
        );
    }
}

/// What the stopped I/O tasks gave back: owned until the exec, and
/// restarted from if it fails.
#[derive(Default)]
pub(super) struct Stopped {
    control: Option<OwnedFd>,
    rests: Vec<Rests>,
}

/// A worker's notify socket, as `Endpoint::into_parts` gives it.
type Handed = (WorkerId, (OwnedFd, String));

/// One worker's: its notify socket (fd and address), its pipes (`None`:
/// that stream had ended), its IPC channel.
type Rests = (
    WorkerId,
    Option<Endpoint>,
    Vec<(Stream, Option<PipeRest>)>,
    Option<IpcRest>,
);

impl Driver {
    /// Writes the hand-over and execs the new binary. Returns only if that
    /// failed, with why.
    async fn exec(&mut self, stopped: &mut Stopped, client: &UnixStream) -> Result<std::convert::Infallible, String> {
        // Every line read so far reaches the log before the exec.
        self.ctx.log.flush().await;
        let mut endpoints = Vec::new();
        for (worker, endpoint, _, _) in &mut stopped.rests {
            match endpoint.take() {
                Some(e) => match e.into_parts() {
                    Ok(parts) => endpoints.push((*worker, parts)),
                    Err(e) => return Err(format!("worker #{worker}'s notify socket: {e}")),
                },
                None => return Err(format!("worker #{worker}'s notify socket is gone")),
            }
        }
        let result = self.exec_with(stopped, &endpoints, client).await;
        // Back into the rests, for the restart.
        for (worker, (fd, address)) in endpoints {
            if let Some(r) = stopped.rests.iter_mut().find(|r| r.0 == worker) {
                r.1 = Endpoint::from_parts(fd, address).ok();
            }
        }
        result
    }

    async fn exec_with(
        &mut self,
        stopped: &Stopped,
        endpoints: &[Handed],
        client: &UnixStream,
    ) -> Result<std::convert::Infallible, String> {
        let control = stopped
            .control
            .as_ref()
            .ok_or("the control socket's listener is gone")?;
        let mut handover = self.export(Some((stopped, endpoints)))?;
        handover.control = control.as_raw_fd();
        handover.client = Some(client.as_raw_fd());
        let json = handover.to_json()?;
        let memfd = to_memfd(&json).map_err(|e| format!("cannot write the hand-over: {e}"))?;
        let mut keep = handover.fds();
        keep.push(memfd.as_raw_fd());
        let argv = vec![
            self.exe.display().to_string(),
            "upgrade-resume".to_owned(),
            "--handover-fd".to_owned(),
            memfd.as_raw_fd().to_string(),
        ];
        let env: Vec<_> = std::env::vars_os().collect();
        let image = crate::os::sys::Image::new(&self.exe, &argv, &env, keep).map_err(|e| e.to_string())?;
        tracing::info!(
            "upgrade: handing over to {} ({} workers, {} bytes of state)",
            self.exe.display(),
            handover.workers.len(),
            json.len()
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawner.exec(
            image,
            Box::new(move |e| {
                let _ = tx.send(e);
            }),
        );
        // Only a failed exec answers. No timeout: the spawner has nothing
        // else queued (no spawn is in flight, or the upgrade was refused),
        // and an exec given up on while still queued could run later with
        // a hand-over that is gone.
        let failed = match rx.await {
            Ok(e) => format!("cannot execute {}: {e}", self.exe.display()),
            Err(_) => "the spawner thread is gone".to_owned(),
        };
        drop(memfd);
        Err(failed)
    }

    /// The whole state. Without `stopped` (the check's copy), descriptors
    /// the tasks own are written as -1.
    fn export(&self, stopped: Option<(&Stopped, &[Handed])>) -> Result<HandOver, String> {
        let now = Instant::now();
        let mono_ns = monotonic_ns();
        let core = self.core.export(now);
        let settings = self.ctx.settings.clone();
        let listeners = self
            .listeners
            .iter()
            .map(|l| ListenerState {
                name: l.name.clone(),
                address: l.address.clone(),
                fd: l.fd().as_raw_fd(),
            })
            .collect();
        let mut workers = Vec::new();
        for (&worker, io) in &self.workers {
            let rests = stopped.and_then(|(s, _)| s.rests.iter().find(|r| r.0 == worker));
            let endpoint = stopped
                .and_then(|(_, e)| e.iter().find(|e| e.0 == worker))
                .map(|e| &e.1);
            let pipe = |stream: Stream| -> Option<PipeState> {
                match rests {
                    None => Some(PipeState {
                        fd: -1,
                        partial: Vec::new(),
                    }),
                    Some((_, _, outputs, _)) => outputs.iter().find(|o| o.0 == stream).and_then(|o| {
                        o.1.as_ref().map(|p| PipeState {
                            fd: p.fd.as_raw_fd(),
                            partial: p.partial.clone(),
                        })
                    }),
                }
            };
            let ipc = match rests {
                None => io.ipc.as_ref().map(|_| IpcState {
                    fd: -1,
                    partial: Vec::new(),
                    oversize: false,
                    unsent: Vec::new(),
                }),
                Some((_, _, _, rest)) => rest.as_ref().map(|r| IpcState {
                    fd: r.stream.as_raw_fd(),
                    partial: r.partial.clone(),
                    oversize: r.oversize,
                    unsent: r.unsent.clone(),
                }),
            };
            workers.push(WorkerState {
                worker,
                generation: io.generation,
                slot: io.slot,
                leader: io.leader,
                leader_reaped: io.leader_reaped,
                main: io.main,
                main_pidfd: io.main_pidfd.as_ref().map(|fd| fd.as_raw_fd()),
                tail: io.tail.lines(),
                notify: endpoint.map_or(-1, |(fd, _)| fd.as_raw_fd()),
                notify_address: endpoint.map(|(_, a)| a.clone()).unwrap_or_default(),
                stdout: pipe(Stream::Stdout),
                stderr: pipe(Stream::Stderr),
                ipc,
                memory_limit: io.memory_limit,
                over_limit: io.over_limit,
                stop_message: io.stop_message.clone(),
                cgroup: io.cgroup.as_ref().map(|cg| cg.name().to_owned()),
            });
        }
        workers.sort_by_key(|w| w.worker);
        let orphans = self
            .orphans
            .iter()
            .map(|(&pid, o)| OrphanState {
                pid,
                generation: o.generation,
                pidfd: o.pidfd.as_ref().map(|fd| fd.as_raw_fd()),
            })
            .collect();
        let mut upgrades = self.upgrades.clone();
        upgrades.push(Upgraded {
            from: VERSION.to_owned(),
            to: String::new(),
            at: super::now_rfc3339(),
        });
        Ok(HandOver {
            format: FORMAT,
            core_format: CORE_FORMAT,
            from_version: VERSION.to_owned(),
            exe: self.exe.clone(),
            mono_ns,
            core,
            settings,
            listeners,
            control: -1,
            client: None,
            workers,
            orphans,
            retired: self.retired.iter().copied().collect(),
            old_tails: self.old_tails.iter().map(|(w, t)| (*w, t.lines())).collect(),
            history: self.history.clone(),
            run_id: self.run_id,
            last_serving: self.last_serving,
            started_wall_ms: self
                .started_wall
                .duration_since(std::time::SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            started_mono_ns: mono_ns.saturating_sub(now.saturating_duration_since(self.started).as_nanos() as u64),
            upgrades,
            metrics: self.metrics.counters.clone(),
        })
    }

    /// After a failed exec: every task runs again from what it gave back.
    fn restart_io(&mut self, stopped: Stopped) {
        match stopped.control.map(control::listener_from_fd) {
            Some(Ok(listener)) => {
                self.control_stop = CancellationToken::new();
                let (commands_tx, commands_rx) = mpsc::channel(control::MAX_CLIENTS);
                self.control_task = Some(self.tasks.spawn(control::serve_until(
                    listener,
                    commands_tx,
                    self.tasks.clone(),
                    self.done.clone(),
                    self.control_stop.clone(),
                )));
                super::forward_commands(&self.tasks, &self.done, &self.events, commands_rx);
            }
            Some(Err(e)) => {
                tracing::error!("the control socket is lost: {e}; baton serves its workers but takes no commands")
            }
            None => tracing::error!("the control socket is lost; baton serves its workers but takes no commands"),
        }
        for (worker, endpoint, outputs, ipc) in stopped.rests {
            let Some(io) = self.workers.get(&worker) else { continue };
            let Some(endpoint) = endpoint else {
                tracing::error!("worker #{worker}: its notify socket is lost");
                continue;
            };
            let mut parts = IoParts {
                stdout: None,
                stderr: None,
                endpoint,
                ipc,
                tail: io.tail.clone(),
            };
            for (stream, rest) in outputs {
                match stream {
                    Stream::Stdout => parts.stdout = rest,
                    Stream::Stderr => parts.stderr = rest,
                }
            }
            let fresh = self.start_io(worker, io.generation, io.slot, io.main, parts);
            if let Some(io) = self.workers.get_mut(&worker) {
                io.notify = fresh.notify;
                io.outputs = fresh.outputs;
                io.output_done = fresh.output_done;
                io.ipc = fresh.ipc;
                io.ipc_task = fresh.ipc_task;
                io.handover = fresh.handover;
            }
        }
    }

    /// The new image: takes over everything the old one handed over.
    pub(super) fn resume(&mut self, mut r: Resume) -> Result<(), String> {
        let gap = Duration::from_nanos(monotonic_ns().saturating_sub(r.handover.mono_ns));
        let now = Instant::now();
        let then = now.checked_sub(gap).unwrap_or(now);
        let h = std::mem::take(&mut r.handover.workers);
        self.core = Supervisor::import(
            std::mem::replace(&mut r.handover.core, Supervisor::new().export(now)),
            then,
        )
        .map_err(|e| format!("the core's state: {e}"))?;
        for (generation, spec) in self.core.generation_specs() {
            self.specs.insert(generation, spec);
        }
        for w in h {
            let take = |r: &mut Resume, fd: RawFd| r.take(fd);
            let endpoint = Endpoint::from_parts(take(&mut r, w.notify)?, w.notify_address.clone())
                .map_err(|e| format!("worker #{}'s notify socket: {e}", w.worker))?;
            let mut pipe = |p: Option<PipeState>| -> Result<Option<PipeRest>, String> {
                p.map(|p| {
                    Ok(PipeRest {
                        fd: r.take(p.fd)?,
                        partial: p.partial,
                    })
                })
                .transpose()
            };
            let stdout = pipe(w.stdout)?;
            let stderr = pipe(w.stderr)?;
            let ipc = match w.ipc {
                Some(i) => Some(IpcRest {
                    stream: std::os::unix::net::UnixStream::from(r.take(i.fd)?),
                    partial: i.partial,
                    oversize: i.oversize,
                    unsent: i.unsent,
                }),
                None => None,
            };
            let main_pidfd = w.main_pidfd.map(|fd| r.take(fd)).transpose()?;
            let cgroup = match (&w.cgroup, &self.tree) {
                (Some(name), Ok(tree)) => Some(tree.adopt(name)),
                (Some(name), Err(why)) => {
                    tracing::warn!("worker #{}'s cgroup {name} is not reachable: {why}", w.worker);
                    None
                }
                (None, _) => None,
            };
            let parts = IoParts {
                stdout,
                stderr,
                endpoint,
                ipc,
                tail: Tail::from_lines(w.tail),
            };
            let io = self.start_io(w.worker, w.generation, w.slot, w.main, parts);
            if !w.leader_reaped {
                self.spawner.remember(w.leader);
            }
            self.pids.insert(w.main, w.worker);
            self.workers.insert(
                w.worker,
                WorkerIo {
                    leader: w.leader,
                    leader_reaped: w.leader_reaped,
                    main: w.main,
                    main_pidfd,
                    memory_limit: w.memory_limit,
                    over_limit: w.over_limit,
                    stop_message: w.stop_message,
                    cgroup,
                    ..io
                },
            );
        }
        let h = &mut r.handover;
        for o in std::mem::take(&mut h.orphans) {
            let pidfd = o.pidfd.map(|fd| r.take(fd)).transpose()?;
            self.orphans.insert(
                o.pid,
                super::Orphan {
                    generation: o.generation,
                    pidfd,
                },
            );
        }
        let h = &mut r.handover;
        self.retired = h.retired.iter().copied().collect();
        self.old_tails = std::mem::take(&mut h.old_tails)
            .into_iter()
            .map(|(w, lines)| (w, Tail::from_lines(lines)))
            .collect();
        self.run_id = h.run_id;
        self.last_serving = h.last_serving;
        self.exe = h.exe.clone();
        let up_for = Duration::from_nanos(monotonic_ns().saturating_sub(h.started_mono_ns));
        self.started = now.checked_sub(up_for).unwrap_or(now);
        self.started_wall = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(h.started_wall_ms);
        self.upgrades = std::mem::take(&mut h.upgrades);
        if let Some(last) = self.upgrades.last_mut() {
            last.to = VERSION.to_owned();
        }
        let from = h.from_version.clone();
        let client = h.client.map(|fd| r.take(fd)).transpose()?;
        // The upgrade's record: its duration is the hand-over's (export to
        // take-over), all this image can know of it.
        let serving = self.core.serving();
        let release = serving
            .and_then(|g| self.specs.get(&g))
            .map(|spec| Release::of(&spec.launch).id);
        let record = Record {
            kind: RecordKind::Upgrade,
            result: RecordResult::Ok,
            generation: serving,
            elapsed_ms: gap.saturating_add(now.elapsed()).as_millis() as u64,
            reason: String::new(),
            message: format!(
                "upgraded in place from baton {from} to {VERSION}: {} workers carried over, none restarted",
                self.workers.len()
            ),
        };
        self.records.write(&record, release.as_deref());
        if let Some(n) = &self.systemd {
            n.phase(Phase::Ready, &self.status_summary());
        }
        if let Some(fd) = client {
            let mut client = UnixStream::from(fd);
            let answer = UpgradeAnswer {
                from,
                to: VERSION.to_owned(),
                pid: std::process::id(),
                workers: self.workers.values().map(|io| io.main).collect(),
            };
            tell(&mut client, &Reply::Upgraded(answer));
        }
        // Whatever exited while the exec ran is reaped now.
        self.reap();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn overrides_go_across_as_text() {
        let o = Overrides {
            name: Some("web".into()),
            listen: vec!["127.0.0.1:8080".parse().unwrap(), "@abstract".parse().unwrap()],
            workers: Some("4".parse().unwrap()),
            command: vec!["node".into(), "server.js".into()],
        };
        let state = OverridesState::from(&o);
        let json = serde_json::to_string(&state).unwrap();
        let back: OverridesState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.parse().unwrap(), o);
    }

    #[test]
    fn an_unknown_format_is_named_as_such() {
        let err = HandOver::from_json(br#"{"format": 99, "core_format": 1, "whatever": true}"#).unwrap_err();
        assert!(err.to_string().contains("format 99"), "{err}");
        let err = HandOver::from_json(b"not json").unwrap_err();
        assert!(err.to_string().contains("not one this baton can read"), "{err}");
    }

    #[test]
    fn a_memfd_gives_back_what_was_written() {
        let fd = to_memfd(b"{\"hello\": 1}").unwrap();
        assert_eq!(read_fd(fd).unwrap(), b"{\"hello\": 1}");
    }
}
