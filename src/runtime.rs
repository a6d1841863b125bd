//! The driver: a thin tokio layer that feeds the [`Supervisor`] state
//! machine with events from the OS and carries out its actions.
//!
//! One task owns the state machine. It reaps children (baton is a child
//! subreaper, so orphaned grandchildren come here too), turns signals into
//! intents (HUP → reload, TERM/INT → stop), and hears from per-worker tasks
//! (notify sockets, output pumps) and control-socket clients. The core's
//! timers are not tasks: the loop holds one sleep, set to the core's next
//! deadline (`poll_timeout`), and calls `handle_timeout` when it ends.
//! Nothing on that task blocks: fork and exec run on the spawner thread
//! (`sys::Spawner`), a reload's config is read on a blocking task, and both
//! answer through the event channel.
//!
//! The driver is the only place that knows pids. The core names workers;
//! the driver signals a worker through the pidfd it got at fork, kills its
//! whole process group only while the leader is unreaped (so the group id
//! cannot have been reused), and tracks the *orphans* baton adopts as
//! subreaper: daemons a worker left behind. Each orphan belongs to the
//! generation in its `BATON_GENERATION` (or to the worker whose exit
//! orphaned it) and is killed when that generation retires; whatever is left
//! is killed before baton exits, and baton reaps until it has no child left.
//!
//! Each worker's process tree is a cgroup of its own when systemd delegated
//! baton's cgroup, a process group otherwise (see `cgroup`). Whatever reads
//! /proc (the memory sampler, the memory figures of `status`) runs on the
//! blocking pool and reports back through the event channel, so the loop,
//! and with it the WATCHDOG=1 ping, never waits on it.
//!
//! Every task has an owner: a `TaskTracker` that is closed and awaited at
//! exit. Channels fed by workers are bounded; a worker that floods waits.
//!
//! The file is long because it is one type, the `Driver`, whose job is to
//! be the single owner of every OS handle a worker has; the handles
//! themselves live in their own modules (`sys`, `cgroup`, `notify`, `ipc`,
//! `output`, `control`).

#![forbid(unsafe_code)]

mod metrics;
pub(crate) mod upgrade;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{self, Config, Overrides};
use crate::control::status;
use crate::control::{self, Change, Command, ReloadAnswer, Reply, Repoint};
use crate::engine::spec::{CanaryCheck, GenSpec, Launch};
use crate::engine::supervisor::{
    Action, CanaryOutcome, ClientId, DriverError, ExitStatus, Fault, GenId, Hint, Notify, Phase, Record, RecordKind,
    RecordResult, ReloadError, ReloadResult, Supervisor, Waiter, WorkerId,
};
use crate::os::activation::Listener;
use crate::os::cgroup::{self, MemorySource, Mode, Probe, WorkerCgroup};
use crate::os::history::{self, History, Outcome, Release, Via};
use crate::os::ipc::IpcRest;
use crate::os::notify::{self, Endpoint, RateLimit, Received, SharedRateLimit};
use crate::os::output::{self, Origin, PipeRest, ReadyWatch, Stream, Tail, Writer};
use crate::os::procfs;
use crate::os::spawn;
use crate::os::sys::{self, Spawner};
use crate::systemd::manager::Notifier;
use crate::systemd::records::Recorder;

/// Everything `run` needs, prepared by `main` before the runtime started.
pub struct Context {
    pub settings: upgrade::Settings,
    /// `settings.overrides`, parsed.
    pub overrides: Overrides,
    pub listeners: Vec<Listener>,
    /// Where worker lines go (stderr or the journal).
    pub log: Writer,
    /// Forks the workers, on the main thread.
    pub spawner: Spawner,
}

/// How this supervisor begins.
pub enum Start {
    /// `baton run`: the first generation from this config.
    Fresh(Box<Config>),
    /// The next image after `baton upgrade`: everything the old one handed
    /// over, with the descriptors it names, adopted.
    Resume(Box<upgrade::Resume>),
}

impl Context {
    fn watchdog(&self) -> Option<Duration> {
        self.settings.watchdog_ms.map(Duration::from_millis)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot become a child subreaper")]
    Subreaper(#[source] nix::Error),
    #[error("cannot open /dev/null")]
    DevNull(#[source] std::io::Error),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Spec(#[from] spawn::SpecError),
    /// The hand-over of `baton upgrade` could not be taken over.
    #[error("cannot take over from the previous baton: {0}")]
    Resume(String),
}

/// Why a reload's config could not be used.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Spec(#[from] spawn::SpecError),
    #[error("loading the config failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Why a canary's check did not pass.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("cannot start `{argv}`")]
    Start {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` {status}")]
    Failed { argv: String, status: ExitStatus },
    #[error("`{argv}` did not finish within {} ([canary] check_timeout); killed it", humantime::format_duration(*.timeout))]
    Timeout { argv: String, timeout: Duration },
}

/// A canary's check that runs: a child of baton in a process group of its
/// own, reaped by [`Driver::reap`].
struct RunningCheck {
    generation: GenId,
    argv: String,
}

/// The checks that run, by pid. The task that starts one holds the lock
/// across the fork and the insert, so the reaper, which asks here before it
/// reaps a child, never takes a check's exit for somebody else's.
type Checks = Arc<std::sync::Mutex<HashMap<i32, RunningCheck>>>;

/// See `Driver::helpers`.
type Helpers = Arc<std::sync::Mutex<HashMap<i32, tokio::sync::oneshot::Sender<ExitStatus>>>>;

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("notify socket")]
    Notify(#[source] std::io::Error),
    #[error("notify socket")]
    NotifyPath(#[source] notify::BindError),
    #[error("pipe")]
    Pipe(#[source] nix::Error),
    #[error("Node IPC channel")]
    Ipc(#[source] std::io::Error),
    #[error("cannot create its cgroup")]
    Cgroup(#[source] std::io::Error),
    #[error("dup")]
    Dup(#[source] std::io::Error),
    #[error("[node] inherit_listen needs baton's Node preload, which could not be written at start: {0}")]
    Preload(String),
    /// Preparing the command, or the fork and exec themselves.
    #[error(transparent)]
    Spawn(#[from] sys::SpawnError),
}

enum Event {
    Notify {
        worker: WorkerId,
        received: Received,
    },
    /// `process.send('ready')` on the worker's Node IPC channel.
    IpcReady {
        worker: WorkerId,
    },
    /// Readiness mode "log": a line of the worker's own output matched.
    LogReady {
        worker: WorkerId,
    },
    /// The worker's main process was reaped and its output drained.
    Exit {
        worker: WorkerId,
        status: ExitStatus,
    },
    Control(Command),
    /// The spawner thread's answer to a spawn.
    Spawned {
        worker: WorkerId,
        result: Result<sys::Child, sys::SpawnError>,
    },
    /// A reload's config, read on a blocking task.
    ConfigLoaded(Result<Arc<GenSpec>, DriverError>),
    /// A memory sample, measured off the event loop.
    Memory(HashMap<WorkerId, u64>),
    /// Every worker's memory and CPU for the metrics, measured off the
    /// event loop; `reply` is `baton metrics` waiting for the text.
    Usage {
        usage: HashMap<WorkerId, cgroup::Usage>,
        reply: Option<tokio::sync::oneshot::Sender<String>>,
    },
    /// `baton status`, its memory and CPU figures measured off the event
    /// loop.
    Status {
        reply: tokio::sync::oneshot::Sender<serde_json::Value>,
        usage: HashMap<WorkerId, cgroup::Usage>,
    },
    /// A canary's check could not start.
    CheckFailed {
        generation: GenId,
        error: DriverError,
    },
    /// A canary's check (this pid) reached its timeout.
    CheckTimeout {
        pid: i32,
        timeout: Duration,
    },
    /// A rollback's target was checked on the blocking pool: it can start
    /// (and `directory` is a symlink to re-point: link, target), or why not.
    RollbackChecked {
        waiter: Waiter,
        release: Release,
        result: Result<Option<(PathBuf, PathBuf)>, String>,
    },
    /// `baton upgrade`: the new binary's check said it can take over (its
    /// version), or why not.
    UpgradeChecked(Result<String, String>),
    /// A rollback's `directory` symlink was re-pointed (or not: why).
    Repointed {
        client: ClientId,
        answer: ReloadAnswer,
        repoint: Repoint,
        result: std::io::Result<()>,
    },
}

/// A rollback that started: its client, and the symlink to re-point once
/// it serves.
struct PendingRollback {
    client: ClientId,
    release: String,
    repoint: Option<(PathBuf, PathBuf)>,
}

/// Room in the event channel. Per-worker tasks (notify, IPC, output) wait
/// when it is full, so a flooding worker slows down instead of growing
/// baton's memory.
const EVENT_QUEUE: usize = 1024;

/// How long tasks get to finish at exit, and baton to reap what it killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What a spawn prepared on the loop, completed when the spawner answers.
struct Pending {
    generation: GenId,
    slot: usize,
    endpoint: Endpoint,
    out: OwnedFd,
    err: OwnedFd,
    ipc: Option<std::os::unix::net::UnixStream>,
    memory_limit: Option<u64>,
    stop_message: Option<String>,
    cgroup: Option<Arc<WorkerCgroup>>,
}

/// A process baton adopted as subreaper that is not a worker.
struct Orphan {
    generation: Option<GenId>,
    /// `None` only on kernels without pidfd_open; it is baton's unreaped
    /// child, so its pid is safe to signal until the reaper takes it.
    pidfd: Option<OwnedFd>,
}

/// Per-worker I/O the driver owns.
struct WorkerIo {
    generation: GenId,
    slot: usize,
    /// The pid we forked: the process group leader.
    leader: i32,
    /// Set once the leader was reaped: its group id may then be reused, so
    /// the group is no longer signalled.
    leader_reaped: bool,
    /// The pid whose exit means the worker is gone (MAINPID= may move it).
    main: i32,
    /// pidfd of `main`; signals go through it.
    main_pidfd: Option<OwnedFd>,
    tail: Tail,
    /// Gives its notify socket back when `handover` is cancelled.
    notify: Option<JoinHandle<Option<Endpoint>>>,
    /// The output pumps; each gives its pipe back when `handover` is
    /// cancelled, or ends (`None`) at EOF.
    outputs: Vec<(Stream, JoinHandle<Option<PipeRest>>)>,
    /// Closed when both output pumps have hit EOF.
    output_done: Option<mpsc::Receiver<()>>,
    /// Node IPC channel (readiness mode "node-ipc"): messages to send.
    ipc: Option<mpsc::UnboundedSender<Vec<u8>>>,
    ipc_task: Option<JoinHandle<Option<IpcRest>>>,
    /// `[limits] memory` of its generation, and how many samples in a row
    /// found the worker above it.
    memory_limit: Option<u64>,
    over_limit: u32,
    stop_message: Option<String>,
    /// The worker's own cgroup, in cgroup mode.
    cgroup: Option<Arc<WorkerCgroup>>,
    /// Stops the I/O tasks at a safe point, for `baton upgrade`.
    handover: CancellationToken,
}

/// What a worker's I/O tasks start from.
struct IoParts {
    stdout: Option<PipeRest>,
    stderr: Option<PipeRest>,
    endpoint: Endpoint,
    ipc: Option<IpcRest>,
    tail: Tail,
}

/// How often EXTEND_TIMEOUT_USEC is sent while busy, and by how much.
const EXTEND_EVERY: Duration = Duration::from_secs(5);
const EXTEND_BY: Duration = Duration::from_secs(20);

/// Memory is sampled this often; a worker above its limit this many times
/// in a row is replaced (a short spike is not enough).
const MEMORY_SAMPLE: Duration = Duration::from_secs(1);
const MEMORY_STRIKES: u32 = 3;

/// How many exited workers' last lines are kept for reports.
const KEEP_TAILS: usize = 64;

struct Driver {
    core: Supervisor,
    ctx: Context,
    name: Arc<str>,
    listeners: Arc<Vec<Listener>>,
    devnull: OwnedFd,
    events: mpsc::Sender<Event>,
    spawner: Spawner,
    tasks: TaskTracker,
    /// Cancelled when the loop ends: every task stops.
    done: CancellationToken,
    pending: HashMap<WorkerId, Pending>,
    /// Leaders that exited before their spawn was answered.
    early_exits: HashMap<i32, ExitStatus>,
    workers: HashMap<WorkerId, WorkerIo>,
    /// Main pid → worker, for the reaper.
    pids: HashMap<i32, WorkerId>,
    orphans: HashMap<i32, Orphan>,
    /// Generations whose workers are all gone; their orphans die on sight.
    retired: BTreeSet<GenId>,
    old_tails: VecDeque<(WorkerId, Tail)>,
    clients: BTreeMap<ClientId, mpsc::UnboundedSender<Reply>>,
    next_client: ClientId,
    rejected: RateLimit,
    /// Receive errors of the workers' notify sockets, all workers together.
    notify_errors: SharedRateLimit,
    started: Instant,
    started_wall: SystemTime,
    phase: watch::Sender<Phase>,
    systemd: Option<Notifier>,
    /// The last STATUS= sent, to send only changes.
    status_line: String,
    /// baton's delegated cgroup (cgroup mode), or why process groups hold
    /// the workers instead.
    tree: Result<Arc<cgroup::Tree>, String>,
    /// A memory sample is being measured.
    sampling: bool,
    /// Removals of emptied worker cgroups, awaited (bounded) before exit.
    cleanup: TaskTracker,
    /// The canary checks that run.
    checks: Checks,
    /// The releases that served (README "Rollback and history"), and the
    /// file they are written to.
    history: History,
    history_path: Option<PathBuf>,
    history_tx: watch::Sender<Option<History>>,
    /// This run in the history: its start, ns since the epoch.
    run_id: u64,
    /// Each live generation's spec (from its spawns), for its release.
    specs: HashMap<GenId, Arc<GenSpec>>,
    /// The serving generation the history last saw.
    last_serving: Option<GenId>,
    rollback: Option<PendingRollback>,
    /// Stops the control socket's accept loop for a hand-over, which then
    /// gives its listener back.
    control_stop: CancellationToken,
    control_task: Option<JoinHandle<std::io::Result<OwnedFd>>>,
    /// The binary `baton upgrade` re-executes: where this supervisor was
    /// first started from.
    exe: PathBuf,
    /// The upgrades this supervisor went through, oldest first.
    upgrades: Vec<upgrade::Upgraded>,
    /// An upgrade whose new binary is being checked.
    upgrade: Option<upgrade::Checking>,
    /// Children a task waits for (the new binary's check): the reaper
    /// reaps them and sends their status. The task that starts one holds
    /// the lock across the fork and the insert, as for `checks`.
    helpers: Helpers,
    /// The new binary passed its check: hand over to it (from the loop,
    /// which may wait).
    hand_over_to: Option<std::os::unix::net::UnixStream>,
    /// Counters, measurements and the published text (`runtime::metrics`).
    metrics: metrics::Metrics,
    /// Writes the journal record that ends each request.
    records: Recorder,
    /// The Node preload in the runtime directory (`os::node`), or why it
    /// could not be written.
    preload: Result<PathBuf, String>,
    /// The systemd service baton runs in, for the `journalctl -u` that
    /// failure reports give.
    unit: Option<String>,
    /// Where the workers' notify sockets are files (`notify/` beside the
    /// control socket); `None`: it could not be set up, so they are
    /// abstract.
    notify_dir: Option<PathBuf>,
}

/// The wall-clock time `ago` before now; a clock set back near 1970 (a
/// board without RTC) must not make the subtraction panic.
fn wall_clock_ago(ago: Duration) -> SystemTime {
    SystemTime::now().checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// How long an exited worker's cgroup may take to empty before baton
/// leaves it to systemd.
const CGROUP_PATIENCE: Duration = Duration::from_secs(5);

/// Supervises until stopped. Returns the exit code (README "Commands and
/// exit codes").
///
/// `shutdown` is the same as SIGTERM; tests use it to stop an in-process
/// supervisor. `phase` reports lifecycle changes to whoever listens.
///
/// Before it returns, every process baton started or adopted is killed and
/// reaped: nothing it started outlives it.
pub async fn run(
    ctx: Context,
    start: Start,
    shutdown: CancellationToken,
    phase: watch::Sender<Phase>,
) -> Result<i32, RunError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(RunError::Subreaper)?;
    let devnull = std::fs::File::open("/dev/null").map_err(RunError::DevNull)?.into();
    let mut ctx = ctx;
    let (spec, mut resume) = match start {
        Start::Fresh(config) => (Some(spawn::resolve(&config, ctx.settings.path.as_deref())?), None),
        Start::Resume(r) => (None, Some(*r)),
    };
    let tree = tokio::task::spawn_blocking(cgroup::Tree::setup)
        .await
        .unwrap_or_else(|e| Err(format!("cgroup setup failed: {e}")))
        .map(Arc::new);
    match &tree {
        Ok(t) => {
            tracing::info!(
                "process tree: a cgroup per worker under the delegated {} (baton in {}/{})",
                t.path(),
                t.path(),
                cgroup::SUPERVISOR
            );
            tracing::info!("worker memory: {}", t.memory_source());
            if t.stale > 0 {
                tracing::info!("removed {} empty worker cgroups an earlier baton left", t.stale);
            }
        }
        Err(why) => tracing::info!("process tree: a process group per worker ({why})"),
    }

    // Signal handlers first: a SIGCHLD before they exist would be lost.
    let mut sigchld = signal(SignalKind::child()).map_err(RunError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    // An upgrade blocked these across the exec (`sys::Spawner::exec`); one
    // that came meanwhile is delivered now, to the handlers above.
    sys::unblock_handled_signals();

    let listener = match resume.as_mut() {
        None => control::bind(&ctx.settings.control)?,
        Some(r) => {
            let fd = r.take(r.handover.control).map_err(RunError::Resume)?;
            control::listener_from_fd(fd).map_err(|e| RunError::Resume(format!("the control socket: {e}")))?
        }
    };
    let control_path = ctx.settings.control.clone();
    let tasks = TaskTracker::new();
    let done = CancellationToken::new();
    let (events, mut rx) = mpsc::channel(EVENT_QUEUE);
    let (commands_tx, commands_rx) = mpsc::channel(control::MAX_CLIENTS);
    let control_stop = CancellationToken::new();
    let control_task = tasks.spawn(control::serve_until(
        listener,
        commands_tx,
        tasks.clone(),
        done.clone(),
        control_stop.clone(),
    ));
    forward_commands(&tasks, &done, &events, commands_rx);

    let name: Arc<str> = ctx.settings.name.as_str().into();
    // The history: read once here (a bad file is reported, never fatal),
    // then written by a task on the blocking pool whenever it changes.
    // After an upgrade it came with the hand-over.
    let history_path = history::state_dir(&name).map(|d| d.join(history::FILE));
    let history = match (&resume, &history_path) {
        (Some(r), _) => r.handover.history.clone(),
        (None, Some(path)) => match history::load(path) {
            Ok(h) => {
                tracing::info!("release history: {} ({} releases)", path.display(), h.entries.len());
                h
            }
            Err(e) => {
                tracing::warn!(
                    "ignoring the release history: {}; starting a new one",
                    crate::exit::chain(&e)
                );
                History::default()
            }
        },
        (None, None) => {
            tracing::warn!(
                "no state directory (no STATE_DIRECTORY, XDG_STATE_HOME or HOME): the release history is not kept"
            );
            History::default()
        }
    };
    let (history_tx, mut history_rx) = watch::channel::<Option<History>>(None);
    if let Some(path) = history_path.clone() {
        let blocking = tasks.clone();
        spawn_task(&tasks, &done, "history", async move {
            while history_rx.changed().await.is_ok() {
                let Some(h) = history_rx.borrow_and_update().clone() else {
                    continue;
                };
                let path = path.clone();
                let saved = blocking.spawn_blocking(move || history::save(&path, &h)).await;
                if let Ok(Err(e)) = saved {
                    tracing::warn!("cannot write the release history: {e}");
                }
            }
        });
    }
    let listeners = Arc::new(std::mem::take(&mut ctx.listeners));
    for l in listeners.iter() {
        tracing::info!("listening on {} ({})", l.address, l.name);
    }
    // Written by every image (a new baton's preload gets a file of its own),
    // for any generation that asks for it, now or after a reload.
    let runtime_dir = control_path.parent().map(Path::to_path_buf).unwrap_or_default();
    let preload = tokio::task::spawn_blocking(move || crate::os::node::write_preload(&runtime_dir))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| crate::exit::chain(&e)));
    if let Err(why) = &preload {
        tracing::warn!("{why}: apps with [node] inherit_listen cannot start");
    }
    let mut driver = Driver {
        core: Supervisor::new(),
        name,
        listeners,
        devnull,
        events,
        spawner: ctx.spawner.clone(),
        tasks,
        done,
        pending: HashMap::new(),
        early_exits: HashMap::new(),
        workers: HashMap::new(),
        pids: HashMap::new(),
        orphans: HashMap::new(),
        retired: BTreeSet::new(),
        old_tails: VecDeque::new(),
        clients: BTreeMap::new(),
        next_client: ClientId::new(1),
        rejected: RateLimit::new(Duration::from_secs(10)),
        notify_errors: SharedRateLimit::new(Duration::from_secs(10)),
        started: Instant::now(),
        started_wall: SystemTime::now(),
        phase,
        systemd: Notifier::new(ctx.settings.notify_socket.as_deref()),
        records: Recorder::new(&ctx.settings.name, ctx.settings.journal),
        preload,
        unit: crate::os::procfs::own_unit(),
        notify_dir: notify_dir(&control_path, resume.is_none()),
        ctx,
        status_line: String::new(),
        tree,
        sampling: false,
        cleanup: TaskTracker::new(),
        checks: Checks::default(),
        history,
        history_path,
        history_tx,
        run_id: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        specs: HashMap::new(),
        last_serving: None,
        rollback: None,
        control_stop,
        control_task: Some(control_task),
        exe: upgrade::own_exe(),
        upgrades: Vec::new(),
        upgrade: None,
        hand_over_to: None,
        helpers: Helpers::default(),
        metrics: metrics::Metrics::new(resume.as_ref().map(|r| r.handover.metrics.clone()).unwrap_or_default()),
    };
    let metrics_settings = driver.ctx.settings.metrics.clone();
    driver.start_metrics(&metrics_settings).await;
    if driver.systemd.is_some() {
        tracing::debug!("notifying systemd");
    }
    // WATCHDOG=1 goes out from this loop itself: a wedged loop stops pinging
    // and systemd's watchdog catches it.
    // A zero period panics tokio; `commands::watchdog_timeout` keeps it far
    // from that, and this keeps it so for any caller.
    let ping = driver.ctx.watchdog().map_or(Duration::from_secs(3600), |w| w / 2);
    let mut watchdog = tokio::time::interval(ping.max(Duration::from_millis(1)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // While starting, reloading or stopping, ask systemd to keep waiting;
    // baton's own readiness and stop deadlines bound these phases.
    let mut extend = tokio::time::interval(EXTEND_EVERY);
    extend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut memory = tokio::time::interval(MEMORY_SAMPLE);
    memory.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut usage = tokio::time::interval(metrics::SAMPLE_EVERY);
    usage.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    match (spec, resume) {
        (Some(spec), _) => driver.core.start(Instant::now(), Arc::new(spec)),
        (None, Some(resume)) => {
            if let Err(why) = driver.resume(resume) {
                let reason = format!("the new image cannot take over: {why}");
                driver.records.upgrade_ended(RecordResult::Failed, &reason, None, None);
                return Err(RunError::Resume(why));
            }
        }
        (None, None) => return Err(RunError::Resume("nothing to start".into())),
    }
    // The core's timers, all behind one sleep set to its earliest deadline.
    let timeout = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timeout);

    let code = loop {
        if let Some(code) = driver.drain() {
            break code;
        }
        if let Some(client) = driver.hand_over_to.take() {
            driver.hand_over(client, &mut rx).await;
            continue;
        }
        let deadline = driver.core.poll_timeout().map(tokio::time::Instant::from_std);
        if let Some(at) = deadline {
            if timeout.deadline() != at {
                timeout.as_mut().reset(at);
            }
        }
        tokio::select! {
            _ = &mut timeout, if deadline.is_some() => driver.core.handle_timeout(Instant::now()),
            Some(event) = rx.recv() => driver.handle(event),
            _ = sigchld.recv() => driver.reap(),
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading");
                driver.core.request_reload(Instant::now(), None);
            }
            _ = sigterm.recv() => driver.stop("SIGTERM"),
            _ = sigint.recv() => driver.stop("SIGINT"),
            _ = shutdown.cancelled(), if !driver.core_stopping() => driver.stop("shutdown requested"),
            _ = watchdog.tick(), if driver.ctx.watchdog().is_some() => {
                if let Some(n) = &driver.systemd {
                    n.watchdog();
                }
            }
            // Both tick only while they have work, so an idle baton sleeps.
            _ = extend.tick(), if driver.systemd.is_some() && driver.core.phase() != Phase::Ready => {
                driver.extend_timeout()
            }
            _ = memory.tick(), if driver.has_memory_limits() => driver.sample_memory(),
            _ = usage.tick(), if driver.metrics.outputs() => driver.sample_usage(None),
        }
        driver.update_status();
        driver.track_serving();
        driver.publish_metrics();
    };

    driver.remove_cgroups(&mut sigchld).await;
    driver.kill_everything_and_reap().await;
    if let Some(n) = &driver.systemd {
        n.status(&format!("stopped (exit code {code})"));
    }
    driver.done.cancel();
    driver.tasks.close();
    drop(rx);
    if tokio::time::timeout(EXIT_GRACE, driver.tasks.wait()).await.is_err() {
        tracing::debug!("{} tasks did not finish in time", driver.tasks.len());
    }
    // The last word, once the writer task is done: what served stopped.
    if let Some(path) = &driver.history_path {
        if let Some(serving) = driver.last_serving {
            if let Some(e) = driver.history.entry_mut(driver.run_id, serving.get()) {
                e.stopped.get_or_insert_with(now_rfc3339);
            }
        }
        if let Err(e) = history::save(path, &driver.history) {
            tracing::warn!("cannot write the release history {}: {e}", path.display());
        }
    }
    if let Some(dir) = &driver.notify_dir {
        // Every endpoint has gone with its task; the directory goes too.
        let _ = std::fs::remove_dir(dir);
    }
    let _ = std::fs::remove_file(&control_path);
    Ok(code)
}

/// Sets up the directory of the workers' notify socket files, beside the
/// control socket: only baton's user may write in it (as for the control
/// socket), it must be its own 0700 directory, never a symlink
/// ([`control::private_dir`]), and on a fresh start whatever an earlier baton left there is
/// swept (after `baton upgrade` the sockets there are the handed-over
/// endpoints). `None`, with a warning, when that fails or its paths would
/// be too long for a socket address: workers then get abstract sockets.
fn notify_dir(control: &Path, fresh: bool) -> Option<PathBuf> {
    let dir = control.parent().unwrap_or(Path::new(".")).join("notify");
    // The longest name a worker's socket gets: its id, then ".sock".
    let longest = dir.join(format!("{}.sock", u64::MAX));
    if longest.as_os_str().len() > notify::MAX_SOCKET_PATH {
        tracing::warn!(
            "{} is too long for socket paths: workers get abstract notify sockets",
            dir.display()
        );
        return None;
    }
    if let Err(e) = control::private_dir(&dir, nix::unistd::Uid::current().as_raw()) {
        tracing::warn!("workers get abstract notify sockets: {}", crate::exit::chain(&e));
        return None;
    }
    if fresh {
        match notify::sweep(&dir) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} notify sockets an earlier baton left in {}", dir.display()),
            Err(e) => tracing::warn!("cannot clear {}: {e}", dir.display()),
        }
    }
    Some(dir)
}

/// Passes the control socket's commands on to the event loop.
fn forward_commands(
    tasks: &TaskTracker,
    done: &CancellationToken,
    events: &mpsc::Sender<Event>,
    mut commands: mpsc::Receiver<Command>,
) {
    let events = events.clone();
    spawn_task(tasks, done, "control-forward", async move {
        while let Some(cmd) = commands.recv().await {
            if events.send(Event::Control(cmd)).await.is_err() {
                break;
            }
        }
    });
}

/// Runs `task` on the tracker until it ends or `done` is cancelled.
fn spawn_task<F>(tasks: &TaskTracker, done: &CancellationToken, name: &'static str, task: F) -> JoinHandle<()>
where
    F: std::future::Future + Send + 'static,
{
    let done = done.clone();
    tasks.spawn(
        async move {
            tokio::select! {
                _ = done.cancelled() => {}
                _ = task => {}
            }
        }
        .instrument(tracing::debug_span!("task", name)),
    )
}

impl Driver {
    fn status_summary(&self) -> String {
        let now = Instant::now();
        let snapshot = self.core.snapshot(now);
        let at = snapshot
            .last_reload
            .as_ref()
            .map(|r| humantime::format_rfc3339_seconds(wall_clock_ago(now.duration_since(r.finished))).to_string());
        status::summary(&snapshot, at.as_deref())
    }

    /// Sends STATUS= when the summary changed.
    fn update_status(&mut self) {
        if self.systemd.is_none() {
            return;
        }
        let line = self.status_summary();
        if line != self.status_line {
            if let Some(n) = &self.systemd {
                n.status(&line);
            }
            self.status_line = line;
        }
    }

    fn extend_timeout(&self) {
        if let Some(n) = &self.systemd {
            if self.core.phase() != Phase::Ready {
                n.extend_timeout(EXTEND_BY);
            }
        }
    }

    fn core_stopping(&self) -> bool {
        matches!(self.core.phase(), Phase::Stopping)
    }

    fn stop(&mut self, why: &str) {
        // An upgrade being checked is over: its client hears why.
        if let Some(checking) = self.upgrade.take() {
            self.record_upgrade(RecordResult::Refused, "baton is stopping");
            checking.refuse("baton is stopping");
        }
        if self.core_stopping() {
            tracing::warn!("{why} again: killing every worker now");
        } else {
            tracing::info!("{why}: stopping all workers gracefully");
        }
        self.core.request_stop(Instant::now());
    }

    fn handle(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Exit { worker, status } => {
                if let Some(io) = self.workers.remove(&worker) {
                    if let Some(cg) = io.cgroup.clone() {
                        self.cleanup
                            .spawn(async move { cg.remove_when_empty(CGROUP_PATIENCE).await });
                    }
                    if let Some(task) = &io.notify {
                        task.abort();
                    }
                    if let Some(task) = &io.ipc_task {
                        task.abort();
                    }
                    self.pids.remove(&io.main);
                    self.old_tails.push_back((worker, io.tail));
                    if self.old_tails.len() > KEEP_TAILS {
                        self.old_tails.pop_front();
                    }
                }
                self.core.exited(now, worker, status);
            }
            Event::Spawned { worker, result } => self.spawned(now, worker, result),
            Event::ConfigLoaded(result) => self.core.config_loaded(now, result),
            Event::Notify { worker, received } => self.notified(now, worker, received),
            Event::IpcReady { worker } => self.core.ready_by(now, worker, false),
            Event::LogReady { worker } => {
                tracing::debug!("worker #{worker}: a line of its output matched [readiness] pattern");
                self.core.ready_by(now, worker, true)
            }
            Event::Control(Command::Status { reply }) => self.measure_for_status(reply),
            Event::Status { reply, usage } => {
                let _ = reply.send(self.status_json(now, &usage));
            }
            Event::Memory(used) => self.memory_sampled(used),
            Event::Control(Command::Metrics { reply }) => self.sample_usage(Some(reply)),
            Event::Usage { usage, reply } => self.usage_measured(usage, reply),
            Event::Control(Command::Reload { change, wait, replies }) => {
                let client = self.next_client;
                self.next_client = client.next();
                self.clients.insert(client, replies);
                let waiter = Some(Waiter { client, wait });
                match change {
                    Change::Reload { canary: None, .. } => self.core.request_reload(now, waiter),
                    Change::Reload {
                        canary: Some(workers),
                        hold,
                    } => {
                        tracing::info!(
                            "canary of {workers} worker{} requested",
                            if workers == 1 { "" } else { "s" }
                        );
                        self.core.request_canary(now, waiter, workers, hold);
                    }
                    Change::Promote => {
                        tracing::info!("promote requested");
                        self.core.promote(now, waiter);
                    }
                    Change::Rollback { to } => {
                        match &to {
                            Some(release) => tracing::info!("rollback to release {release} requested"),
                            None => tracing::info!("rollback requested"),
                        }
                        self.start_rollback(now, Waiter { client, wait }, to.as_deref());
                    }
                }
            }
            Event::RollbackChecked {
                waiter,
                release,
                result,
            } => self.rollback_checked(now, waiter, release, result),
            Event::Repointed {
                client,
                mut answer,
                repoint,
                result,
            } => {
                let (link, target) = (repoint.link.display(), repoint.target.display());
                match result {
                    Ok(()) => {
                        tracing::info!("re-pointed {link} → {target}");
                        answer.message.push_str(&format!(
                            "; re-pointed {link} → {target}, so later reloads and restarts stay there"
                        ));
                    }
                    Err(e) => {
                        // The client tries with its own rights, and says how that went.
                        tracing::warn!("cannot re-point {link} → {target}: {e}");
                        answer
                            .message
                            .push_str(&format!("; baton cannot re-point {link} → {target}: {e}"));
                        answer.repoint = Some(repoint);
                    }
                }
                if let Some(tx) = self.clients.remove(&client) {
                    let _ = tx.send(Reply::Reloaded(answer));
                }
            }
            Event::Control(Command::Upgrade { client }) => self.upgrade_requested(client),
            Event::UpgradeChecked(result) => self.upgrade_checked(result),
            Event::CheckFailed { generation, error } => self.core.check_done(now, generation, Err(error)),
            Event::CheckTimeout { pid, timeout } => {
                if let Some(check) = self.take_check(pid) {
                    // Unreaped (the reaper removes a check before it reaps
                    // it), so the group id is still the check's.
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                    let error = CheckError::Timeout {
                        argv: check.argv,
                        timeout,
                    };
                    self.core
                        .check_done(now, check.generation, Err(DriverError::new(error)));
                }
            }
        }
    }

    fn notified(&mut self, now: Instant, worker: WorkerId, received: Received) {
        let Some(io) = self.workers.get(&worker) else { return };
        let (pid, parsed) = match received {
            Received::Message { pid, parsed } => (pid, parsed),
            Received::Rejected { pid, reason } => {
                self.reject(worker, pid, &reason);
                return;
            }
        };
        let leader = io.leader;
        for msg in parsed.messages {
            if let Notify::MainPid(main) = msg {
                let main = main.as_raw();
                if main == leader {
                    continue;
                }
                // The pidfd first, then the check: if the pid was recycled in
                // between, the check looks at the process the pidfd names.
                let (pidfd, verified) = match sys::pidfd_open(main) {
                    Ok(fd) => {
                        let ok = notify::belongs_to(main, leader) && sys::pidfd_alive(fd.as_fd());
                        (Some(fd), ok)
                    }
                    // A kernel without pidfds: signalled by pid while unreaped.
                    Err(nix::Error::ENOSYS) => (None, notify::belongs_to(main, leader)),
                    Err(_) => (None, false),
                };
                if !verified {
                    self.reject(
                        worker,
                        Some(pid),
                        &format!("MAINPID={main} is not in the worker's process tree"),
                    );
                    continue;
                }
                if let Some(io) = self.workers.get_mut(&worker) {
                    self.pids.remove(&io.main);
                    io.main = main;
                    io.main_pidfd = pidfd;
                    self.pids.insert(main, worker);
                }
            }
            self.core.message(now, worker, msg);
        }
    }

    fn reject(&mut self, worker: WorkerId, pid: Option<i32>, reason: &str) {
        if let Some(suppressed) = self.rejected.allow(std::time::Instant::now()) {
            let from = pid.map_or_else(|| "unknown sender".to_owned(), |p| format!("pid {p}"));
            let more = notify::suppressed_note(suppressed);
            tracing::warn!("ignored a notify datagram for worker #{worker} from {from}: {reason}{more}");
        }
    }

    /// Executes queued actions. Returns the exit code once the core is done.
    fn drain(&mut self) -> Option<i32> {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Spawn {
                    worker,
                    generation,
                    slot,
                    spec,
                } => {
                    self.specs.entry(generation).or_insert_with(|| spec.clone());
                    self.spawn(worker, generation, slot, &spec);
                }
                Action::Signal { worker, signal } => self.signal(worker, signal),
                Action::StopMessage { worker } => self.send_stop_message(worker),
                Action::Kill { worker, why } => {
                    if let Some(io) = self.workers.get(&worker) {
                        match &io.cgroup {
                            Some(cg) => {
                                tracing::warn!(
                                    "worker #{worker} (pid {}) {why}; killing its cgroup {}",
                                    io.main,
                                    cg.path()
                                )
                            }
                            None => {
                                tracing::warn!("worker #{worker} (pid {}) {why}; killing its process group", io.main)
                            }
                        }
                    }
                    self.kill_tree(worker);
                }
                Action::Retired { generation } => {
                    self.metrics.retired(generation, Instant::now());
                    self.specs.remove(&generation);
                    self.retired(generation);
                }
                Action::LoadConfig => self.load_config(),
                Action::Progress { clients, text } => {
                    tracing::info!("reload: {text}");
                    for c in clients {
                        if let Some(tx) = self.clients.get(&c) {
                            let _ = tx.send(Reply::Progress(text.clone()));
                        }
                    }
                }
                Action::ReloadDone { clients, result } => {
                    let last = self.core.snapshot(Instant::now()).last_reload;
                    self.metrics.reload_done(&result, last.as_ref());
                    self.reload_done(clients, result)
                }
                Action::WorkerFailed { fault, context } => {
                    self.metrics.worker_failed(&fault, self.core.serving());
                    self.log_fault(&fault, &context)
                }
                Action::Log { level, text } => match level {
                    tracing::Level::ERROR => tracing::error!("{text}"),
                    tracing::Level::WARN => tracing::warn!("{text}"),
                    _ => tracing::info!("{text}"),
                },
                Action::Phase(p) => {
                    tracing::debug!("phase: {p:?}");
                    self.phase.send_replace(p);
                    let line = self.status_summary();
                    if let Some(n) = &self.systemd {
                        n.phase(p, &line);
                    }
                    self.status_line = line;
                }
                Action::CanaryEnded { generation, outcome } => {
                    self.stop_checks(Some(generation));
                    self.canary_history(generation, &outcome);
                }
                Action::Record(record) => self.write_record(&record),
                Action::RunCheck { generation, check } => self.run_check(generation, check),
                Action::Exit(code) => return Some(code),
            }
        }
        None
    }

    /// Re-reads the config for a reload on a blocking task (it reads files
    /// and resolves paths); the answer comes back as `Event::ConfigLoaded`.
    /// The sockets stay as they are.
    fn load_config(&self) {
        let source = self.ctx.settings.source();
        let overrides = self.ctx.overrides.clone();
        let path = self.ctx.settings.path.clone();
        let before: Option<Vec<String>> =
            (!self.ctx.settings.socket_activated).then(|| self.ctx.settings.listen.clone());
        let metrics = self.ctx.settings.metrics.clone();
        let events = self.events.clone();
        let tasks = self.tasks.clone();
        spawn_task(&self.tasks, &self.done, "load-config", async move {
            let load = tasks.spawn_blocking(move || {
                let config = config::load(&source, &overrides).map_err(LoadError::from)?;
                if config.metrics != metrics {
                    tracing::warn!("[metrics] changed; it is read at start, so the change takes effect only after a restart");
                }
                if let Some(before) = before {
                    let now: Vec<String> = config.listen.iter().map(|l| l.address.to_string()).collect();
                    if now != before {
                        tracing::warn!(
                            "[[listen]] changed; baton keeps its sockets across reloads, so the change takes effect only after a restart"
                        );
                    }
                }
                spawn::resolve(&config, path.as_deref())
                    .map(Arc::new)
                    .map_err(LoadError::from)
            });
            let result = load
                .await
                .unwrap_or_else(|e| Err(LoadError::Task(e)))
                .map_err(DriverError::new);
            let _ = events.send(Event::ConfigLoaded(result)).await;
        });
    }

    /// Runs a canary's check: on the blocking pool (fork and exec), in a
    /// process group of its own, with the canary's name, generation and
    /// pids in its environment and its directory as cwd; its output goes to
    /// baton's log. The reaper answers `check_done` when it exits; a task
    /// arms its timeout.
    fn run_check(&mut self, generation: GenId, check: CanaryCheck) {
        let mut pids: Vec<i32> = self
            .workers
            .values()
            .filter(|io| io.generation == generation)
            .map(|io| io.main)
            .collect();
        pids.sort_unstable();
        let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
        let directory = self
            .core
            .snapshot(Instant::now())
            .generations
            .into_iter()
            .find(|g| g.id == generation)
            .and_then(|g| g.directory);
        let argv = check.argv.join(" ");
        tracing::info!(
            "canary generation {generation}: running its check `{argv}` (pids {}, timeout {})",
            pids.join(" "),
            humantime::format_duration(check.timeout)
        );
        let Some((program, args)) = check.argv.split_first() else {
            return;
        };
        let mut cmd = std::process::Command::new(program);
        cmd.args(args);
        for key in config::RESERVED_ENV {
            cmd.env_remove(key);
        }
        cmd.env_remove("JOURNAL_STREAM")
            .env("BATON_NAME", &*self.name)
            .env("BATON_GENERATION", generation.to_string())
            .env("BATON_CANARY_PIDS", pids.join(" "))
            .stdin(std::process::Stdio::null())
            .stdout(std::io::stderr())
            .stderr(std::io::stderr());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if let Some(dir) = directory {
            cmd.current_dir(dir);
        }
        let (checks, events, tasks, timeout) = (
            self.checks.clone(),
            self.events.clone(),
            self.tasks.clone(),
            check.timeout,
        );
        spawn_task(&self.tasks, &self.done, "check", async move {
            let start = tasks.spawn_blocking(move || {
                let mut running = checks.lock().unwrap_or_else(|e| e.into_inner());
                let child = cmd.spawn().map_err(|source| CheckError::Start {
                    argv: argv.clone(),
                    source,
                })?;
                let pid = child.id() as i32;
                running.insert(pid, RunningCheck { generation, argv });
                Ok::<_, CheckError>(pid)
            });
            let event = match start.await {
                Ok(Ok(pid)) => {
                    tokio::time::sleep(timeout).await;
                    Event::CheckTimeout { pid, timeout }
                }
                Ok(Err(e)) => Event::CheckFailed {
                    generation,
                    error: DriverError::new(e),
                },
                Err(e) => Event::CheckFailed {
                    generation,
                    error: DriverError::new(e),
                },
            };
            let _ = events.send(event).await;
        });
    }

    /// The running check with this pid, now no longer tracked.
    fn take_check(&self, pid: i32) -> Option<RunningCheck> {
        self.checks.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid)
    }

    /// Kills the checks of `generation` (all with `None`); their exits are
    /// then reaped like any other child's.
    fn stop_checks(&self, generation: Option<GenId>) {
        let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        checks.retain(|&pid, check| {
            if generation.is_some_and(|g| g != check.generation) {
                return true;
            }
            tracing::info!(
                "killing the check `{}` of canary generation {}",
                check.argv,
                check.generation
            );
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            false
        });
    }

    fn tail_of(&self, worker: WorkerId) -> Vec<String> {
        self.workers
            .get(&worker)
            .map(|io| io.tail.clone())
            .or_else(|| {
                self.old_tails
                    .iter()
                    .find(|(w, _)| *w == worker)
                    .map(|(_, t)| t.clone())
            })
            .map(|t| t.lines())
            .unwrap_or_default()
    }

    /// What a report of `fault` says after the fault itself, one note a
    /// line: the line of its output that looks like the error, hints, and
    /// where its whole output is. Then the last lines of that output.
    fn explain(&self, fault: &Fault) -> (Vec<String>, Vec<String>) {
        let lines = self.tail_of(fault.worker);
        let held: Vec<u16> = self
            .listeners
            .iter()
            .filter_map(|l| l.address.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.port())
            .collect();
        // The generation's spec is still there when its fault is told (its
        // Retired comes after); the hint says so too.
        let preload = fault.hint == Some(Hint::ExitedZeroWithPreload)
            || self
                .specs
                .get(&fault.generation)
                .is_some_and(|s| s.launch.node.is_some());
        let mut notes = output::failure_notes(&lines, &held, preload);
        if let Some(hint) = fault.hint {
            notes.push(format!("hint: {hint}"));
        }
        let (generation, slot) = (fault.generation, fault.slot);
        notes.push(match (&self.unit, self.ctx.settings.journal) {
            (Some(unit), true) => {
                format!("its whole output: journalctl -u {unit} BATON_GENERATION={generation} BATON_WORKER={slot}")
            }
            (None, true) => format!(
                "its whole output: journalctl -t {} BATON_GENERATION={generation} BATON_WORKER={slot}",
                self.name
            ),
            (_, false) => format!(
                "its whole output: baton's stderr, the lines prefixed {}[{generation}.{slot} …]",
                self.name
            ),
        });
        (notes, output::last_lines(&lines).to_vec())
    }

    fn log_fault(&self, fault: &Fault, context: &str) {
        let (notes, lines) = self.explain(fault);
        let mut text = format!("{fault}; {context}");
        for note in &notes {
            text.push_str("\n  ");
            text.push_str(note);
        }
        if !lines.is_empty() {
            text.push_str("\n  its last output:");
            for l in &lines {
                text.push_str("\n    ");
                text.push_str(l);
            }
        }
        tracing::error!("{text}");
    }

    fn reload_done(&mut self, clients: Vec<ClientId>, result: ReloadResult) {
        let mut clients = clients;
        if let Ok(ok) = &result {
            if ok.canary {
                self.record(ok.generation, Via::Canary, false, Outcome::Canary);
            }
        }
        let rollback = match &self.rollback {
            Some(r) if clients.contains(&r.client) => self.rollback.take(),
            _ => None,
        };
        let answer = match &result {
            Ok(ok) => {
                let message = if ok.canary {
                    format!(
                        "canary generation {} is ready beside the serving generation; `baton promote` or `baton rollback` decide what happens next",
                        ok.generation
                    )
                } else {
                    format!("generation {} is serving", ok.generation)
                };
                ReloadAnswer {
                    ok: true,
                    generation: Some(ok.generation.get()),
                    message,
                    output: Vec::new(),
                    repoint: None,
                }
            }
            Err(e) => {
                let mut message = e.to_string();
                let (generation, output) = match e {
                    ReloadError::Worker { fault } => {
                        let (notes, output) = self.explain(fault);
                        for note in notes {
                            message.push_str("\n  ");
                            message.push_str(&note);
                        }
                        (Some(fault.generation.get()), output)
                    }
                    _ => (None, Vec::new()),
                };
                ReloadAnswer {
                    ok: false,
                    generation,
                    message,
                    output,
                    repoint: None,
                }
            }
        };
        if let Some(r) = rollback {
            let mut answer = answer.clone();
            if result.is_ok() {
                answer.message.push_str(&format!(" (release {})", r.release));
            }
            if let (Ok(_), Some((link, target))) = (&result, r.repoint) {
                // Answered once the link is re-pointed, which it says.
                clients.retain(|&c| c != r.client);
                self.repoint(r.client, answer, link, target);
            } else if let Some(tx) = self.clients.remove(&r.client) {
                clients.retain(|&c| c != r.client);
                let _ = tx.send(Reply::Reloaded(answer));
            }
        }
        for c in clients {
            if let Some(tx) = self.clients.remove(&c) {
                let _ = tx.send(Reply::Reloaded(answer.clone()));
            }
        }
    }

    /// Answers a client that the core never heard of (a refused rollback
    /// to `release`, if it was found).
    fn refuse_now(&mut self, client: ClientId, message: String, release: Option<&str>) {
        self.records.write(
            &Record {
                kind: RecordKind::Rollback,
                result: RecordResult::Refused,
                generation: None,
                elapsed_ms: 0,
                reason: message.clone(),
                message: message.clone(),
            },
            release,
        );
        if let Some(tx) = self.clients.remove(&client) {
            let _ = tx.send(Reply::Reloaded(ReloadAnswer {
                ok: false,
                generation: None,
                message,
                output: Vec::new(),
                repoint: None,
            }));
        }
    }

    /// `baton rollback`: aborts a running canary; otherwise finds the
    /// target in the history and checks it on the blocking pool
    /// (`Event::RollbackChecked`).
    fn start_rollback(&mut self, now: Instant, waiter: Waiter, to: Option<&str>) {
        if self.core.canary().is_some() {
            self.core.rollback(now, Some(waiter), None);
            return;
        }
        let current = self
            .core
            .serving()
            .and_then(|g| self.specs.get(&g))
            .map(|spec| Release::of(&spec.launch).id);
        let release = match self.history.target(current.as_deref(), to) {
            Ok(entry) => entry.release.clone(),
            Err(why) if to.is_some() => {
                self.refuse_now(waiter.client, format!("cannot roll back: {why}; nothing changed"), None);
                return;
            }
            // The core's own answer: nothing to roll back to.
            Err(_) => {
                self.core.rollback(now, Some(waiter), None);
                return;
            }
        };
        let link = self.ctx.settings.directory.clone();
        let events = self.events.clone();
        let tasks = self.tasks.clone();
        spawn_task(&self.tasks, &self.done, "rollback-check", async move {
            let checked = release.clone();
            let result = tasks
                .spawn_blocking(move || {
                    checked.verify()?;
                    Ok(repoint_of(link.as_deref(), checked.directory.as_deref()))
                })
                .await
                .unwrap_or_else(|e| Err(format!("checking the release failed: {e}")));
            let _ = events
                .send(Event::RollbackChecked {
                    waiter,
                    release,
                    result,
                })
                .await;
        });
    }

    /// The rollback's target can start: it becomes a generation with the
    /// serving generation's policy and the release's launch.
    fn rollback_checked(
        &mut self,
        now: Instant,
        waiter: Waiter,
        release: Release,
        result: Result<Option<(PathBuf, PathBuf)>, String>,
    ) {
        let repoint = match result {
            Ok(r) => r,
            Err(why) => {
                self.refuse_now(
                    waiter.client,
                    format!("refusing to roll back: {why}; nothing changed"),
                    Some(&release.id),
                );
                return;
            }
        };
        let Some(base) = self.core.serving().and_then(|g| self.specs.get(&g)).cloned() else {
            self.core.rollback(now, Some(waiter), None);
            return;
        };
        tracing::info!(
            "rolling back to release {} ({} in {})",
            release.id,
            release.command.join(" "),
            release
                .directory
                .as_ref()
                .map_or_else(|| "-".to_owned(), |d| d.display().to_string())
        );
        let spec = GenSpec {
            policy: base.policy.clone(),
            launch: Launch {
                program: release.program.clone(),
                argv: release.command.clone(),
                directory: release.directory.clone(),
                environment: release.environment.clone(),
                executable: release.executable.clone(),
                ..base.launch.clone()
            },
        };
        self.rollback = Some(PendingRollback {
            client: waiter.client,
            release: release.id,
            repoint,
        });
        self.core.rollback(now, Some(waiter), Some(Arc::new(spec)));
    }

    /// Re-points the `directory` symlink on the blocking pool, then answers
    /// the rollback's client (`Event::Repointed`).
    fn repoint(&self, client: ClientId, answer: ReloadAnswer, link: PathBuf, target: PathBuf) {
        let events = self.events.clone();
        let tasks = self.tasks.clone();
        spawn_task(&self.tasks, &self.done, "repoint", async move {
            let repoint = Repoint { link, target };
            let job = repoint.clone();
            let result = tasks
                .spawn_blocking(move || history::repoint(&job.link, &job.target))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let _ = events
                .send(Event::Repointed {
                    client,
                    answer,
                    repoint,
                    result,
                })
                .await;
        });
    }

    /// The serving release for `status`, and what changed since the one
    /// that served before it.
    fn release_report(&self) -> Option<status::ReleaseReport> {
        let current = Release::of(&self.specs.get(&self.core.serving()?)?.launch);
        let previous = self.history.target(Some(&current.id), None).ok();
        Some(status::ReleaseReport {
            changes: previous
                .map(|p| history::changes(&p.release, &current))
                .unwrap_or_default(),
            previous: previous.map(|p| p.release.id.clone()),
            id: current.id,
        })
    }

    /// Writes a request's journal record, with the release of its
    /// generation.
    fn write_record(&self, record: &Record) {
        let release = record
            .generation
            .and_then(|g| self.specs.get(&g))
            .map(|spec| Release::of(&spec.launch).id);
        self.records.write(record, release.as_deref());
    }

    /// A new entry for `generation`, unless it has one.
    fn record(&mut self, generation: GenId, via: Via, served: bool, outcome: Outcome) {
        let Some(spec) = self.specs.get(&generation) else {
            return;
        };
        let release = Release::of(&spec.launch);
        if self.history.entry_mut(self.run_id, generation.get()).is_some() {
            return;
        }
        self.history.push(history::Entry {
            run: self.run_id,
            generation: generation.get(),
            release,
            via,
            served,
            started: now_rfc3339(),
            stopped: None,
            outcome,
        });
        self.history_tx.send_replace(Some(self.history.clone()));
    }

    /// The history follows the serving generation: the one before stopped
    /// serving, the new one (or the promoted canary) serves.
    fn track_serving(&mut self) {
        let serving = self.core.serving();
        if serving == self.last_serving {
            return;
        }
        let at = now_rfc3339();
        if let Some(old) = self.last_serving {
            if let Some(e) = self.history.entry_mut(self.run_id, old.get()) {
                e.stopped.get_or_insert(at.clone());
            }
        }
        self.last_serving = serving;
        if let Some(new) = serving {
            match self.history.entry_mut(self.run_id, new.get()) {
                Some(e) => {
                    e.served = true;
                    e.outcome = Outcome::Ok;
                }
                None => {
                    let via = if self.rollback.is_some() {
                        Via::Rollback
                    } else if new.get() == 1 {
                        Via::Start
                    } else {
                        Via::Reload
                    };
                    self.record(new, via, true, Outcome::Ok);
                }
            }
        }
        self.history_tx.send_replace(Some(self.history.clone()));
    }

    /// A canary ended: its entry says how.
    fn canary_history(&mut self, generation: GenId, outcome: &CanaryOutcome) {
        let Some(e) = self.history.entry_mut(self.run_id, generation.get()) else {
            return;
        };
        match outcome {
            CanaryOutcome::Promoted => return,
            CanaryOutcome::RolledBack => e.outcome = Outcome::RolledBack,
            // The core's words for a canary that failed while it grew.
            CanaryOutcome::Aborted { reason } if reason.starts_with("the promotion failed") => {
                e.outcome = Outcome::Failed { reason: reason.clone() }
            }
            CanaryOutcome::Aborted { reason } => e.outcome = Outcome::CanaryAborted { reason: reason.clone() },
        }
        e.stopped.get_or_insert_with(now_rfc3339);
        self.history_tx.send_replace(Some(self.history.clone()));
    }

    /// Prepares a worker's pipes and sockets here, then hands the fork to
    /// the spawner thread, which answers with `Event::Spawned`.
    fn spawn(&mut self, worker: WorkerId, generation: GenId, slot: usize, spec: &GenSpec) {
        match self.prepare(worker, generation, slot, spec) {
            Ok((cmd, fds, pending)) => {
                self.pending.insert(worker, pending);
                let events = self.events.clone();
                self.spawner.spawn(
                    cmd,
                    fds,
                    Box::new(move |result| {
                        let _ = events.blocking_send(Event::Spawned { worker, result });
                    }),
                );
            }
            Err(e) => {
                let e = DriverError::new(e);
                tracing::error!("cannot start worker {slot} of generation {generation}: {e}");
                self.core.spawn_failed(Instant::now(), worker, e);
            }
        }
    }

    fn prepare(
        &self,
        worker: WorkerId,
        generation: GenId,
        slot: usize,
        spec: &GenSpec,
    ) -> Result<(sys::Command, Vec<OwnedFd>, Pending), StartError> {
        let endpoint_name = format!(
            "baton/{}/{}/{}",
            std::process::id(),
            worker,
            self.started_wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let endpoint = match &self.notify_dir {
            Some(dir) if !spec.launch.notify_abstract => {
                Endpoint::bind_path(dir, &format!("{worker}.sock")).map_err(StartError::NotifyPath)?
            }
            _ => Endpoint::bind(&endpoint_name).map_err(StartError::Notify)?,
        };
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(StartError::Pipe)?;
        let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(StartError::Pipe)?;
        let channel = match spec.launch.node_ipc {
            true => Some(crate::os::ipc::channel().map_err(StartError::Ipc)?),
            false => None,
        };
        let preload = match (&spec.launch.node, &self.preload) {
            (None, _) => None,
            (Some(_), Ok(path)) => Some(path.as_path()),
            (Some(_), Err(why)) => return Err(StartError::Preload(why.clone())),
        };
        let mut cmd = spawn::command(
            spec,
            &self.listeners,
            &endpoint.address,
            preload,
            generation.get(),
            slot,
        )?;
        let cgroup = match &self.tree {
            Ok(tree) => {
                let (cg, procs) = tree
                    .worker(generation.get(), slot, worker.get())
                    .map_err(StartError::Cgroup)?;
                cmd.join_cgroup(procs);
                Some(cg)
            }
            Err(_) => None,
        };
        // The spawner thread gets its own copies; they close once the child
        // has them (the sockets themselves stay open: rule 1).
        let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map_err(StartError::Dup);
        let mut fds = vec![dup(self.devnull.as_fd())?, out_w, err_w];
        for l in self.listeners.iter() {
            fds.push(dup(l.fd())?);
        }
        let ipc = match channel {
            Some(c) => {
                fds.push(c.child);
                Some(c.parent)
            }
            None => None,
        };
        let pending = Pending {
            generation,
            slot,
            endpoint,
            out: out_r,
            err: err_r,
            ipc,
            memory_limit: spec.policy.memory_limit,
            stop_message: spec.launch.stop_message.clone(),
            cgroup,
        };
        Ok((cmd, fds, pending))
    }

    /// The spawner's answer: start the worker's tasks, or report the failure.
    fn spawned(&mut self, now: Instant, worker: WorkerId, result: Result<sys::Child, sys::SpawnError>) {
        let Some(pending) = self.pending.remove(&worker) else {
            return;
        };
        let (generation, slot) = (pending.generation, pending.slot);
        let child = match result {
            Ok(child) => child,
            Err(e) => {
                if let sys::SpawnError::Child { pid, .. } = e {
                    // Reaped (or to be reaped) as a stranger.
                    self.spawner.forget(pid);
                    self.early_exits.remove(&pid);
                }
                if let Some(cg) = pending.cgroup {
                    // The child exits at once; the cgroup goes when it has.
                    self.cleanup
                        .spawn(async move { cg.remove_when_empty(CGROUP_PATIENCE).await });
                }
                let e = DriverError::new(StartError::from(e));
                tracing::error!("cannot start worker {slot} of generation {generation}: {e}");
                self.core.spawn_failed(now, worker, e);
                return;
            }
        };
        let pid = child.pid;
        tracing::info!("started worker {slot} of generation {generation} (pid {pid})");
        let io = IoParts {
            stdout: Some(PipeRest::new(pending.out)),
            stderr: Some(PipeRest::new(pending.err)),
            endpoint: pending.endpoint,
            ipc: pending.ipc.map(IpcRest::new),
            tail: Tail::default(),
        };
        let worker_io = self.start_io(worker, generation, slot, pid, io);
        self.pids.insert(pid, worker);
        self.workers.insert(
            worker,
            WorkerIo {
                leader: pid,
                leader_reaped: false,
                main: pid,
                main_pidfd: child.pidfd,
                memory_limit: pending.memory_limit,
                over_limit: 0,
                stop_message: pending.stop_message,
                cgroup: pending.cgroup,
                ..worker_io
            },
        );
        self.core.spawned(now, worker, Pid::from_raw(pid));
        if let Some(status) = self.early_exits.remove(&pid) {
            // It exited before this answer came (the reaper killed its
            // group then): its cgroup goes too, and it is judged now.
            if let Some(io) = self.workers.get_mut(&worker) {
                io.leader_reaped = true;
            }
            self.kill_tree(worker);
            self.pids.remove(&pid);
            self.report_exit(worker, status);
        }
    }

    /// Starts a worker's I/O tasks (its output pumps, notify socket and
    /// Node IPC channel) from `io`: fresh ones, or what an upgrade handed
    /// over. The returned `WorkerIo` has the process fields of a fresh
    /// spawn; the caller fills them in.
    fn start_io(&self, worker: WorkerId, generation: GenId, slot: usize, pid: i32, io: IoParts) -> WorkerIo {
        let handover = CancellationToken::new();
        let (ipc, ipc_task) = match io.ipc {
            Some(rest) => {
                let (tx, rx) = mpsc::unbounded_channel();
                let events = self.events.clone();
                let stop = handover.clone();
                let task = self.tasks.spawn(async move {
                    // `ready` is called from the IPC reader; a full event
                    // queue makes it wait rather than drop the message.
                    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(1);
                    let forward = async {
                        while ready_rx.recv().await.is_some() {
                            if events.send(Event::IpcReady { worker }).await.is_err() {
                                return;
                            }
                        }
                    };
                    let serve = async move {
                        let (rest, dropped) = crate::os::ipc::serve_from(
                            rest,
                            rx,
                            || {
                                let _ = ready_tx.try_send(());
                            },
                            stop,
                        )
                        .await;
                        if dropped > 0 {
                            tracing::debug!("worker #{worker}: ignored {dropped} other IPC messages");
                        }
                        rest
                    };
                    let (rest, ()) = tokio::join!(serve, forward);
                    rest
                });
                (Some(tx), Some(task))
            }
            None => (None, None),
        };

        let origin = Origin {
            name: self.name.clone(),
            generation: generation.get(),
            slot,
            pid,
        };
        let tail = io.tail;
        // Readiness mode "log": this worker's own pumps, and only they,
        // watch for its pattern. The forwarder ends with the pumps.
        let ready = self
            .specs
            .get(&generation)
            .and_then(|spec| spec.launch.ready_pattern.clone())
            .map(|pattern| {
                let (watch, mut matched) = ReadyWatch::new(pattern);
                let events = self.events.clone();
                self.tasks.spawn(async move {
                    if matched.recv().await.is_some() {
                        let _ = events.send(Event::LogReady { worker }).await;
                    }
                });
                watch
            });
        let (done_tx, done_rx) = mpsc::channel::<()>(1);
        let mut outputs = Vec::new();
        for (rest, stream) in [(io.stdout, Stream::Stdout), (io.stderr, Stream::Stderr)] {
            let Some(rest) = rest else { continue };
            let (origin, log, tail, done) = (origin.clone(), self.ctx.log.clone(), tail.clone(), done_tx.clone());
            let (ready, stop) = (ready.clone(), handover.clone());
            let task = self.tasks.spawn(async move {
                let rest = output::pump_from(rest, stream, origin, log, tail, ready, stop).await;
                drop(done);
                rest
            });
            outputs.push((stream, task));
        }
        let events = self.events.clone();
        let errors = self.notify_errors.clone();
        let endpoint = io.endpoint;
        let stop = handover.clone();
        let notify = self.tasks.spawn(async move {
            notify::forward_until(
                worker,
                errors,
                || endpoint.recv(pid),
                |received| {
                    let events = events.clone();
                    async move { events.send(Event::Notify { worker, received }).await.is_ok() }
                },
                &stop,
            )
            .await;
            stop.is_cancelled().then_some(endpoint)
        });
        WorkerIo {
            generation,
            slot,
            leader: pid,
            leader_reaped: false,
            main: pid,
            main_pidfd: None,
            tail,
            notify: Some(notify),
            outputs,
            output_done: Some(done_rx),
            ipc,
            ipc_task,
            memory_limit: None,
            over_limit: 0,
            stop_message: None,
            cgroup: None,
            handover,
        }
    }

    /// Sends `signal` to the worker's main process through its pidfd.
    fn signal(&self, worker: WorkerId, signal: Signal) {
        let Some(io) = self.workers.get(&worker) else { return };
        match &io.main_pidfd {
            Some(fd) => {
                let _ = sys::pidfd_signal(fd.as_fd(), signal);
            }
            // No pidfd (an old kernel): the pid is safe while the reaper
            // has not taken it, which `pids` says.
            None if self.pids.contains_key(&io.main) => {
                let _ = kill(Pid::from_raw(io.main), signal);
            }
            None => {}
        }
    }

    /// SIGKILLs everything the worker started: its cgroup (cgroup mode), its
    /// process group while the leader is unreaped (so the group id is still
    /// its own), and its main process. Without a cgroup, daemons that left
    /// the group are orphans, killed when the generation retires.
    fn kill_tree(&self, worker: WorkerId) {
        let Some(io) = self.workers.get(&worker) else { return };
        if let Some(cg) = &io.cgroup {
            cg.kill();
        }
        if !io.leader_reaped {
            let _ = killpg(Pid::from_raw(io.leader), Signal::SIGKILL);
        }
        self.signal(worker, Signal::SIGKILL);
    }

    /// Reaps every exited child. A worker's process group is killed while
    /// its leader is still a zombie, so the pgid cannot have been reused.
    fn reap(&mut self) {
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let (pid, status) = match waitid(Id::All, flags) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, core_dumped)) => (
                    pid,
                    ExitStatus::Signal {
                        signal: sig as i32,
                        core_dumped,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(other) => match other.pid() {
                    Some(pid) => {
                        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                        continue;
                    }
                    None => return,
                },
            };
            let raw = pid.as_raw();
            // A process a task of baton's waits for (`baton upgrade`'s check
            // of the new binary): reaped here, its status handed to the task.
            let helper = self.helpers.lock().unwrap_or_else(|e| e.into_inner()).remove(&raw);
            if let Some(tx) = helper {
                // Its process group goes with it (it leads one), killed while
                // the zombie still holds the group id, so nothing it started
                // outlives it or keeps its output pipes open.
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                let _ = tx.send(status);
                continue;
            }
            if let Some(check) = self.take_check(raw) {
                // Its group first, while the zombie still holds the id.
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
                let result = match status {
                    ExitStatus::Code(0) => Ok(()),
                    status => Err(DriverError::new(CheckError::Failed {
                        argv: check.argv,
                        status,
                    })),
                };
                self.core.check_done(Instant::now(), check.generation, result);
                continue;
            }
            let main_of = self.pids.remove(&raw);
            let leader_of = self
                .workers
                .iter()
                .find(|(_, io)| io.leader == raw && !io.leader_reaped)
                .map(|(&w, _)| w);
            let leader = self.spawner.forked(raw);
            let mut status = status;
            if let Some(worker) = main_of {
                // KillMode=mixed semantics: the main process is gone, so
                // whatever it left in its cgroup (or group) goes too.
                self.kill_tree(worker);
                let sigkill = matches!(status, ExitStatus::Signal { signal, .. } if signal == Signal::SIGKILL as i32);
                let oom = self
                    .workers
                    .get(&worker)
                    .and_then(|io| io.cgroup.as_ref())
                    .and_then(|cg| cg.oom_kills())
                    .is_some_and(|n| n > 0);
                if sigkill && oom {
                    status = ExitStatus::OomKilled;
                }
            } else if leader && leader_of.is_none() {
                // A worker whose spawn is not answered yet.
                let _ = killpg(pid, Signal::SIGKILL);
                self.early_exits.insert(raw, status);
            }
            let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            if leader {
                self.spawner.forget(raw);
            }
            if let Some(io) = leader_of.and_then(|w| self.workers.get_mut(&w)) {
                io.leader_reaped = true;
            }
            // Whatever this process had running was just handed to baton.
            let exited_gen = match (main_of.or(leader_of), self.orphans.remove(&raw)) {
                (Some(w), _) => self.workers.get(&w).map(|io| io.generation),
                (None, Some(orphan)) => orphan.generation,
                (None, None) => None,
            };
            self.adopt_orphans(exited_gen);
            if let Some(worker) = main_of {
                self.report_exit(worker, status);
            }
        }
    }

    /// Sends `Event::Exit` once the worker's output is drained.
    fn report_exit(&mut self, worker: WorkerId, status: ExitStatus) {
        let done = self.workers.get_mut(&worker).and_then(|io| io.output_done.take());
        let events = self.events.clone();
        spawn_task(&self.tasks, &self.done, "exit", async move {
            // Let the pumps pass on the last lines before the exit is
            // judged, so a failure report includes them.
            if let Some(mut done) = done {
                let _ = tokio::time::timeout(Duration::from_secs(1), done.recv()).await;
            }
            let _ = events.send(Event::Exit { worker, status }).await;
        });
    }

    /// Records the children baton adopted since the last look. Each belongs
    /// to the generation in its environment (daemons inherit it), else to
    /// `fallback`: the generation of the process whose exit just orphaned
    /// it. An orphan of a retired generation is killed at once.
    fn adopt_orphans(&mut self, fallback: Option<GenId>) {
        let mut checks: BTreeSet<i32> = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        checks.extend(self.helpers.lock().unwrap_or_else(|e| e.into_inner()).keys());
        for pid in procfs::own_children() {
            if self.orphans.contains_key(&pid)
                || self.pids.contains_key(&pid)
                || self.spawner.forked(pid)
                || checks.contains(&pid)
            {
                continue;
            }
            let generation = generation_of(pid, &self.name).or(fallback);
            let pidfd = sys::pidfd_open(pid).ok();
            tracing::debug!("adopted pid {pid} (generation {generation:?})");
            let orphan = Orphan { generation, pidfd };
            if generation.is_some_and(|g| self.retired.contains(&g)) {
                kill_orphan(pid, &orphan);
            }
            self.orphans.insert(pid, orphan);
        }
    }

    /// Every worker of `generation` is gone: so are its orphans.
    fn retired(&mut self, generation: GenId) {
        self.retired.insert(generation);
        self.adopt_orphans(None);
        let mut killed = 0;
        for (&pid, orphan) in &self.orphans {
            if orphan.generation == Some(generation) {
                kill_orphan(pid, orphan);
                killed += 1;
            }
        }
        if killed > 0 {
            tracing::warn!(
                "generation {generation} left {killed} process{} behind; killed",
                if killed == 1 { "" } else { "es" }
            );
        }
    }

    /// At exit: kills every child left (orphans, and any worker a second
    /// stop request did not wait for), and reaps until there is none, so
    /// nothing is left as a zombie of PID 1.
    async fn kill_everything_and_reap(&mut self) {
        // Untracked, they are adopted (and killed) below like orphans.
        self.stop_checks(None);
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            self.adopt_orphans(None);
            for (&pid, orphan) in &self.orphans {
                kill_orphan(pid, orphan);
            }
            let workers: Vec<WorkerId> = self.workers.keys().copied().collect();
            for w in workers {
                self.kill_tree(w);
            }
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) => break,
                    Ok(status) => {
                        if let Some(pid) = status.pid() {
                            self.orphans.remove(&pid.as_raw());
                            self.spawner.forget(pid.as_raw());
                            if let Some(w) = self.pids.remove(&pid.as_raw()) {
                                self.workers.remove(&w);
                            }
                        }
                    }
                    Err(nix::Error::EINTR) => {}
                    // ECHILD: nothing left.
                    Err(_) => return,
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!("processes still running at exit: {:?}", procfs::own_children());
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `[stop] message` over the worker's IPC channel.
    fn send_stop_message(&self, worker: WorkerId) {
        let Some(io) = self.workers.get(&worker) else { return };
        if let (Some(tx), Some(message)) = (&io.ipc, &io.stop_message) {
            let _ = tx.send(crate::os::ipc::encode(message));
        }
    }

    /// What to measure for each worker: its cgroup, or its process group.
    fn probes(&self, only_limited: bool) -> Vec<(WorkerId, Probe)> {
        self.workers
            .iter()
            .filter(|(_, io)| !only_limited || io.memory_limit.is_some())
            .map(|(&w, io)| {
                let probe = match &io.cgroup {
                    Some(cg) => Probe::Cgroup(cg.clone()),
                    None => Probe::Group(io.leader),
                };
                (w, probe)
            })
            .collect()
    }

    fn memory_source(&self) -> MemorySource {
        match &self.tree {
            Ok(tree) => tree.memory_source(),
            Err(_) => MemorySource::ProcessGroupRss,
        }
    }

    fn has_memory_limits(&self) -> bool {
        self.workers.values().any(|io| io.memory_limit.is_some())
    }

    /// Starts sampling every limited worker's memory (its whole cgroup or
    /// process group) against its generation's `[limits] memory`. The
    /// measuring reads /proc, so it runs on the blocking pool and reports
    /// back with `Event::Memory`.
    fn sample_memory(&mut self) {
        if self.sampling {
            return;
        }
        let probes = self.probes(true);
        if probes.is_empty() {
            return;
        }
        self.sampling = true;
        let events = self.events.clone();
        self.tasks.spawn_blocking(move || {
            let _ = events.blocking_send(Event::Memory(cgroup::measure(&probes)));
        });
    }

    fn memory_sampled(&mut self, rss: HashMap<WorkerId, u64>) {
        self.sampling = false;
        let mut over = Vec::new();
        for (&worker, io) in &mut self.workers {
            let Some(limit) = io.memory_limit else { continue };
            let Some(&used) = rss.get(&worker) else { continue };
            if used > limit {
                io.over_limit += 1;
                if io.over_limit == MEMORY_STRIKES {
                    over.push((worker, io.leader, used, limit));
                }
            } else {
                io.over_limit = 0;
            }
        }
        for (worker, pid, used, limit) in over {
            let generation = self.workers.get(&worker).map(|io| io.generation);
            if generation.is_some() && generation == self.core.serving() {
                self.metrics.counters.restarted("memory_limit");
            }
            tracing::warn!(
                "worker #{worker} (pid {pid}) uses {} with its children, above [limits] memory = {}, for {MEMORY_STRIKES} samples",
                status::mib(used),
                status::mib(limit)
            );
            self.core.memory_exceeded(Instant::now(), worker);
        }
    }

    /// `baton status`, first step: the memory and CPU figures come from
    /// /proc or cgroupfs (the same measure as the metrics'), so they are
    /// measured on the blocking pool, and the report is made when they are
    /// back. Measuring before the snapshot means a worker the snapshot
    /// shows was alive when it was measured.
    fn measure_for_status(&self, reply: tokio::sync::oneshot::Sender<serde_json::Value>) {
        let probes = self.probes(false);
        let events = self.events.clone();
        self.tasks.spawn_blocking(move || {
            let usage = cgroup::measure_usage(&probes);
            let _ = events.blocking_send(Event::Status { reply, usage });
        });
    }

    fn status_json(&self, now: Instant, usage: &HashMap<WorkerId, cgroup::Usage>) -> serde_json::Value {
        let mut snapshot = self.core.snapshot(now);
        for g in &mut snapshot.generations {
            for w in &mut g.workers {
                let measured = usage.get(&w.id);
                w.rss_bytes = measured.and_then(|u| u.memory);
                // Whole microseconds: what cgroup's cpu.stat counts in.
                w.cpu_usec = measured.and_then(|u| u.cpu_seconds).map(|s| (s * 1e6).round() as u64);
                w.cgroup = self
                    .workers
                    .get(&w.id)
                    .and_then(|io| io.cgroup.as_ref())
                    .map(|cg| cg.path().to_owned());
            }
        }
        let report = status::Report {
            name: self.name.to_string(),
            version: upgrade::VERSION.to_owned(),
            upgrades: self.upgrades.clone(),
            pid: std::process::id(),
            uptime_ms: now.duration_since(self.started).as_millis() as u64,
            socket_activated: self.ctx.settings.socket_activated,
            sockets: self
                .listeners
                .iter()
                .map(|l| status::SocketInfo {
                    name: l.name.clone(),
                    address: l.address.clone(),
                })
                .collect(),
            last_reload_at: snapshot.last_reload.as_ref().map(|r| {
                let ago = now.duration_since(r.finished);
                humantime::format_rfc3339_seconds(wall_clock_ago(ago)).to_string()
            }),
            process_tree: match &self.tree {
                Ok(_) => Mode::Cgroup,
                Err(_) => Mode::ProcessGroup,
            },
            process_tree_detail: match &self.tree {
                Ok(tree) => format!("delegated cgroup {}", tree.path()),
                Err(why) => why.clone(),
            },
            memory_source: self.memory_source(),
            release: self.release_report(),
            supervisor: snapshot,
        };
        serde_json::to_value(report).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    /// Before exit: waits (bounded) until the exited workers' cgroups are
    /// empty and removed, reaping what dies meanwhile (baton is their
    /// subreaper).
    async fn remove_cgroups(&mut self, sigchld: &mut tokio::signal::unix::Signal) {
        self.cleanup.close();
        let deadline = tokio::time::sleep(CGROUP_PATIENCE + Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            self.reap();
            tokio::select! {
                _ = self.cleanup.wait() => break,
                _ = sigchld.recv() => {}
                _ = &mut deadline => break,
            }
        }
        self.reap();
    }
}

/// SIGKILL to an orphan and its process group (a daemon that called
/// setsid leads one; its members are still in it while it is unreaped).
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The symlink to re-point for a rollback to `target`: the configured
/// `directory` when it is a symlink that leads elsewhere now.
fn repoint_of(link: Option<&std::path::Path>, target: Option<&std::path::Path>) -> Option<(PathBuf, PathBuf)> {
    let (link, target) = (link?, target?);
    let meta = std::fs::symlink_metadata(link).ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    if std::fs::canonicalize(link).ok().as_deref() == Some(target) {
        return None;
    }
    Some((link.to_owned(), target.to_owned()))
}

fn kill_orphan(pid: i32, orphan: &Orphan) {
    if nix::unistd::getpgid(Some(Pid::from_raw(pid))) == Ok(Pid::from_raw(pid)) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    match &orphan.pidfd {
        Some(fd) => {
            let _ = sys::pidfd_signal(fd.as_fd(), Signal::SIGKILL);
        }
        // baton's unreaped child: the pid is still its own.
        None => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// `BATON_GENERATION` from a process's environment, if it is one of this
/// app's (`BATON_NAME`).
fn generation_of(pid: i32, name: &str) -> Option<GenId> {
    let mut generation = None;
    let mut ours = false;
    for var in procfs::environ(pid)? {
        if let Some(v) = var.strip_prefix(b"BATON_GENERATION=") {
            generation = std::str::from_utf8(v).ok()?.parse().ok().map(GenId::new);
        } else if let Some(v) = var.strip_prefix(b"BATON_NAME=") {
            ours = v == name.as_bytes();
        }
    }
    generation.filter(|_| ours)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A `notify` symlink in the runtime directory is refused: workers get
    /// abstract sockets, and the fresh start's sweep does not delete the
    /// sockets of the directory it points at.
    #[test]
    fn a_symlinked_notify_directory_is_refused_not_followed() {
        let run = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let theirs = elsewhere.path().join("1.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&theirs).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), run.path().join("notify")).unwrap();
        let control = run.path().join("control.sock");
        assert_eq!(notify_dir(&control, true), None);
        assert!(theirs.exists(), "the sweep followed the symlink");
        // A real directory of its own is used.
        std::fs::remove_file(run.path().join("notify")).unwrap();
        assert_eq!(notify_dir(&control, true), Some(run.path().join("notify")));
    }
}
