//! The only module with `unsafe` code: fork/exec of workers on a dedicated
//! spawner thread, pidfds, and adopting file descriptors the kernel hands
//! baton (systemd's `LISTEN_FDS`, `SCM_RIGHTS`).
//!
//! After fork the child runs only async-signal-safe code (baton is
//! multi-threaded by then). Everything the child needs (argv, envp,
//! the fd plan) is allocated before the fork; after it the child runs only
//! async-signal-safe system calls. `LISTEN_PID` and `WATCHDOG_PID` must hold
//! the child's own pid, which is unknown before the fork, so their entries
//! are reserved with room for the digits and the child writes them in place.
//!
//! Every fork happens on one thread, the *spawner*, that lives as long as
//! baton: a worker's `PR_SET_PDEATHSIG` fires when the thread that forked it
//! exits, so forking from a tokio thread (which may be retired) would kill
//! workers at random, and forking from the event loop would block it while
//! the child execs. The spawner forks with `clone3(CLONE_PIDFD)`, so each
//! worker comes with a pidfd from the first instant: signals go through it
//! and can never hit a recycled pid.
//!
//! A worker with a cgroup of its own (see `cgroup`) joins it first thing
//! after the fork, by writing "0" to a `cgroup.procs` descriptor opened
//! before, so nothing it runs ever executes outside that cgroup.
//!
//! Every public function here is safe to call with any argument: the
//! preconditions of the unsafe calls are checked or established inside.

use std::collections::HashSet;
use std::ffi::{CString, c_char};
use std::io::{self, IoSliceMut, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use nix::fcntl::OFlag;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::Signal;
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags};
use nix::unistd::Pid;

/// Where the child failed before `execve` replaced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Cgroup,
    Fds,
    Chdir,
    Exec,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Cgroup => "joining its cgroup",
            Stage::Fds => "setting up file descriptors",
            Stage::Chdir => "changing directory",
            Stage::Exec => "executing the command",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("an argument or environment entry contains a NUL byte")]
    Nul(#[from] std::ffi::NulError),
    #[error("cannot create the exec status pipe")]
    Pipe(#[source] nix::Error),
    #[error("fork failed")]
    Fork(#[source] nix::Error),
    #[error("the spawner thread is gone")]
    SpawnerGone,
    /// The child (`pid`, already exited) failed before exec.
    #[error("{stage} failed: {}", io::Error::from_raw_os_error(*.errno))]
    Child { pid: i32, stage: Stage, errno: i32 },
}

/// An environment entry whose value is the child's pid, filled in after fork.
const PID_SLOT: &str = "\u{0}";

/// A fully prepared child: every byte the child touches after fork.
pub struct Command {
    program: CString,
    argv: Vec<CString>,
    env: Vec<Vec<u8>>,
    /// (index into `env`, length of the `KEY=` prefix) for pid entries.
    pid_slots: Vec<(usize, usize)>,
    dir: Option<CString>,
    /// An open `cgroup.procs` the child writes "0" to, first thing.
    cgroup: Option<OwnedFd>,
}

impl Command {
    /// `program` must be a path (PATH lookup happens before, in `spawn.rs`).
    pub fn new(program: &std::path::Path, argv: &[String]) -> Result<Self, SpawnError> {
        use std::os::unix::ffi::OsStrExt;
        Ok(Command {
            program: CString::new(program.as_os_str().as_bytes())?,
            argv: argv
                .iter()
                .map(|a| CString::new(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            env: Vec::new(),
            pid_slots: Vec::new(),
            dir: None,
            cgroup: None,
        })
    }

    pub fn env(&mut self, key: &str, value: &str) -> Result<(), SpawnError> {
        if value == PID_SLOT {
            return self.env_pid(key);
        }
        let entry = CString::new(format!("{key}={value}"))?;
        self.env.push(entry.into_bytes_with_nul());
        Ok(())
    }

    /// `KEY=<pid of the child>`.
    pub fn env_pid(&mut self, key: &str) -> Result<(), SpawnError> {
        let mut entry = CString::new(format!("{key}="))?.into_bytes();
        let prefix = entry.len();
        // 20 digits hold any u64, plus the terminating NUL.
        entry.resize(prefix + 21, 0);
        self.pid_slots.push((self.env.len(), prefix));
        self.env.push(entry);
        Ok(())
    }

    pub fn current_dir(&mut self, dir: &std::path::Path) -> Result<(), SpawnError> {
        use std::os::unix::ffi::OsStrExt;
        self.dir = Some(CString::new(dir.as_os_str().as_bytes())?);
        Ok(())
    }

    /// The child joins this cgroup before anything else: `procs` is the
    /// cgroup's `cgroup.procs`, opened for writing. It is closed once the
    /// spawn is over.
    pub fn join_cgroup(&mut self, procs: OwnedFd) {
        self.cgroup = Some(procs);
    }
}

/// A started worker process. baton is its parent, so the pid stays its own
/// until baton reaps it; the pidfd stays its own for ever.
#[derive(Debug)]
pub struct Child {
    pub pid: i32,
    /// `None` only on kernels without `clone3` (before 5.3), where the
    /// driver signals by pid while it knows the process unreaped.
    pub pidfd: Option<OwnedFd>,
}

/// The answer to one spawn, called on the spawner thread.
pub type Reply = Box<dyn FnOnce(Result<Child, SpawnError>) + Send>;

/// The answer to an exec that failed (one that succeeds never returns).
pub type ExecReply = Box<dyn FnOnce(io::Error) + Send>;

enum Job {
    Spawn {
        cmd: Command,
        /// `fds[i]` becomes fd `i` in the child.
        fds: Vec<OwnedFd>,
        reply: Reply,
    },
    Exec {
        image: Image,
        reply: ExecReply,
    },
}

/// A new program image for baton itself ([`Spawner::exec`]).
pub struct Image {
    program: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Descriptors that must survive the exec: their close-on-exec flag is
    /// cleared just before it, and set again if it fails.
    keep: Vec<RawFd>,
}

impl Image {
    pub fn new(
        program: &std::path::Path,
        argv: &[String],
        env: &[(std::ffi::OsString, std::ffi::OsString)],
        keep: Vec<RawFd>,
    ) -> Result<Image, SpawnError> {
        use std::os::unix::ffi::OsStrExt;
        Ok(Image {
            program: CString::new(program.as_os_str().as_bytes())?,
            argv: argv
                .iter()
                .map(|a| CString::new(a.as_bytes()))
                .collect::<Result<_, _>>()?,
            env: env
                .iter()
                .map(|(k, v)| {
                    let mut entry = k.as_bytes().to_vec();
                    entry.push(b'=');
                    entry.extend_from_slice(v.as_bytes());
                    CString::new(entry)
                })
                .collect::<Result<_, _>>()?,
            keep,
        })
    }
}

/// `RLIMIT_NOFILE` as baton found it: (soft, hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub soft: u64,
    pub hard: u64,
}

/// Raises baton's soft `RLIMIT_NOFILE` to the hard limit (a parallel reload
/// holds several fds per worker) and returns the limit baton started with,
/// which workers get back before exec, as systemd gives services a soft
/// limit of 1024 for programs that still use `select(2)`.
pub fn raise_nofile() -> nix::Result<NoFile> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(NoFile { soft, hard })
}

/// A handle on the thread that forks every worker (see the module docs).
/// Cloned freely; when the last handle is dropped, [`SpawnerLoop::run`]
/// returns.
#[derive(Clone)]
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
    /// Pids the spawner forked and the driver has not reaped yet. Held
    /// across the fork, so a child that exits before its spawn is answered
    /// is still recognised as a worker by the reaper.
    forked: Arc<Mutex<HashSet<i32>>>,
}

/// The spawner's loop, run by [`SpawnerLoop::run`] on the process's main
/// thread.
pub struct SpawnerLoop {
    jobs: mpsc::Receiver<Job>,
    forked: Arc<Mutex<HashSet<i32>>>,
    nofile: Option<NoFile>,
}

impl Spawner {
    /// A spawner whose loop the caller runs on the main thread. `nofile`
    /// is the limit workers get.
    pub fn new(nofile: Option<NoFile>) -> (Spawner, SpawnerLoop) {
        let (jobs, rx) = mpsc::channel::<Job>();
        let forked: Arc<Mutex<HashSet<i32>>> = Arc::default();
        (
            Spawner {
                jobs,
                forked: forked.clone(),
            },
            SpawnerLoop {
                jobs: rx,
                forked,
                nofile,
            },
        )
    }

    /// Forks and execs `cmd` on the spawner thread; `fds[i]` becomes fd `i`
    /// in the child (0, 1, 2, then the sockets from 3), with close-on-exec
    /// cleared; every other descriptor is closed at exec. The child leads a
    /// new process group. `reply` gets the child once `execve` succeeded,
    /// or the reason it failed.
    pub fn spawn(&self, cmd: Command, fds: Vec<OwnedFd>, reply: Reply) {
        if let Err(mpsc::SendError(Job::Spawn { reply, .. })) = self.jobs.send(Job::Spawn { cmd, fds, reply }) {
            reply(Err(SpawnError::SpawnerGone));
        }
    }

    /// Replaces baton's program image with `image`, from the spawner
    /// thread: the parent of every worker, so that no worker's
    /// `PR_SET_PDEATHSIG` fires (execve ends every *other* thread, and a
    /// worker's parent-death signal follows the thread that forked it).
    /// Returns only through `reply`, if the exec failed.
    pub fn exec(&self, image: Image, reply: ExecReply) {
        if let Err(mpsc::SendError(Job::Exec { reply, .. })) = self.jobs.send(Job::Exec { image, reply }) {
            reply(io::Error::other("the spawner thread is gone"));
        }
    }

    /// Whether `pid` is a worker the spawner forked (and nobody called
    /// `forget` for yet).
    pub fn forked(&self, pid: i32) -> bool {
        self.forked.lock().unwrap_or_else(|e| e.into_inner()).contains(&pid)
    }

    /// `pid` is a worker a previous image forked (`baton upgrade`), not
    /// reaped yet.
    pub fn remember(&self, pid: i32) {
        self.forked.lock().unwrap_or_else(|e| e.into_inner()).insert(pid);
    }

    /// `pid` was reaped.
    pub fn forget(&self, pid: i32) {
        self.forked.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
    }
}

impl SpawnerLoop {
    /// Serves spawns (and an exec) until every [`Spawner`] is dropped. Run
    /// it on the process's **main thread**: the workers die with the thread
    /// that forked them, and after an exec the thread that called it is the
    /// only one left, so only the main thread can fork workers that survive
    /// any number of upgrades.
    pub fn run(self) {
        let parent = std::process::id() as libc::pid_t;
        let mut clone3 = true;
        while let Ok(job) = self.jobs.recv() {
            match job {
                Job::Spawn { cmd, fds, reply } => {
                    let result = fork_exec(cmd, &fds, self.nofile, parent, &self.forked, &mut clone3);
                    drop(fds);
                    reply(result);
                }
                Job::Exec { image, reply } => reply(exec_image(&image)),
            }
        }
    }
}

/// execve(2) of `image`, returning only if it failed. The signals baton
/// handles are blocked on this thread across it, and the mask survives
/// execve, so one that arrives before the new image has installed its
/// handlers waits for them instead of killing baton.
fn exec_image(image: &Image) -> io::Error {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let handled = handled_signals();
    let mut old = SigSet::empty();
    if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled), Some(&mut old)) {
        return e.into();
    }
    let mut cleared = Vec::new();
    let mut failure = None;
    for &fd in &image.keep {
        match set_cloexec(fd, false) {
            Ok(()) => cleared.push(fd),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let error = failure.unwrap_or_else(|| {
        let argv: Vec<*const c_char> = image
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp: Vec<*const c_char> = image
            .env
            .iter()
            .map(|e| e.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        // SAFETY: `program`, `argv` and `envp` are NUL-terminated C strings
        // owned by `image`, and both arrays end with a null pointer, as
        // execve(2) requires; they outlive the call. On success it does not
        // return; on failure nothing was changed.
        unsafe { libc::execve(image.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        io::Error::last_os_error()
    });
    for fd in cleared {
        let _ = set_cloexec(fd, true);
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    error
}

/// The signals baton's event loop handles.
fn handled_signals() -> nix::sys::signal::SigSet {
    let mut handled = nix::sys::signal::SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        handled.add(s);
    }
    handled
}

/// Unblocks, on the calling thread, the signals an upgrade blocked across
/// its exec; call it once their handlers are installed. Threads started
/// since the exec inherited the block, so this thread is the one that
/// receives them (the spawner thread keeps them blocked, and its children
/// start with an empty mask).
pub fn unblock_handled_signals() {
    use nix::sys::signal::{SigmaskHow, pthread_sigmask};
    let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&handled_signals()), None);
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    // SAFETY: the caller keeps `fd` open for the duration of this call (it
    // is one of the descriptors the hand-over owns); borrowing it does not
    // take ownership.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let flags = FdFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFD)?);
    let flags = if on {
        flags | FdFlag::FD_CLOEXEC
    } else {
        flags - FdFlag::FD_CLOEXEC
    };
    fcntl(fd, FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Takes ownership of descriptors a previous baton image handed over
/// across `execve` (`baton upgrade`): each must be open and listed once,
/// else nothing is taken. Each gets close-on-exec back, so no worker
/// started later inherits it.
pub fn adopt_fds(raw: &[RawFd]) -> io::Result<Vec<OwnedFd>> {
    use nix::fcntl::{FcntlArg, fcntl};
    let mut seen = HashSet::new();
    for &fd in raw {
        if fd < 0 || !seen.insert(fd) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("descriptor {fd} is listed twice or is negative"),
            ));
        }
        // SAFETY: only borrowed for this one call, which checks that the
        // number refers to an open descriptor; nothing is closed.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        fcntl(borrowed, FcntlArg::F_GETFD)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("descriptor {fd} is not open: {e}")))?;
    }
    let mut owned = Vec::with_capacity(raw.len());
    for &fd in raw {
        // SAFETY: `fd` is open (checked above), listed once, and the
        // hand-over gives it to this image alone: nothing else in this
        // process owns it, so it is closed exactly once, by this OwnedFd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        set_cloexec(fd.as_raw_fd(), true)?;
        owned.push(fd);
    }
    Ok(owned)
}

/// An anonymous in-memory file (close-on-exec), for the hand-over.
pub fn memfd(name: &str) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let name = CString::new(name)?;
    Ok(memfd_create(name.as_c_str(), MFdFlags::MFD_CLOEXEC)?)
}

/// The layout of `struct clone_args` (linux/sched.h) up to `cgroup`; libc
/// has it only for musl.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn fork_exec(
    mut cmd: Command,
    fds: &[OwnedFd],
    nofile: Option<NoFile>,
    parent: libc::pid_t,
    registry: &Mutex<HashSet<i32>>,
    clone3: &mut bool,
) -> Result<Child, SpawnError> {
    let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;

    let argv: Vec<*const c_char> = cmd
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let pid_slots: Vec<(*mut u8, usize)> = cmd
        .pid_slots
        .iter()
        .map(|&(i, prefix)| (cmd.env[i].as_mut_ptr(), prefix))
        .collect();
    let envp: Vec<*const c_char> = cmd
        .env
        .iter()
        .map(|e| e.as_ptr().cast::<c_char>())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let raw_fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut scratch: Vec<RawFd> = vec![-1; raw_fds.len()];
    let nofile = nofile.map(|n| libc::rlimit {
        rlim_cur: n.soft as libc::rlim_t,
        rlim_max: n.hard as libc::rlim_t,
    });
    let plan = ChildPlan {
        program: cmd.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        pid_slots: &pid_slots,
        dir: cmd.dir.as_ref().map(|d| d.as_ptr()),
        cgroup: cmd.cgroup.as_ref().map(|fd| fd.as_raw_fd()),
        fds: &raw_fds,
        scratch: scratch.as_mut_ptr(),
        err_fd: err_write.as_raw_fd(),
        parent,
        nofile: nofile.as_ref().map_or(std::ptr::null(), |n| n as *const libc::rlimit),
    };

    let mut forked = registry.lock().unwrap_or_else(|e| e.into_inner());
    let mut pidfd: RawFd = -1;
    let mut pid: libc::pid_t = -1;
    if *clone3 {
        let args = CloneArgs {
            flags: libc::CLONE_PIDFD as u64,
            pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 without CLONE_VM and without a stack is fork(2)
        // that also writes a pidfd into `pidfd`. baton is multi-threaded,
        // so the child may only run async-signal-safe code: `run_child`
        // makes raw system calls on memory prepared above (no allocation,
        // no locks) and ends in execve or _exit, never returning. glibc's
        // fork handlers are skipped, which is fine for the same reason.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                std::ptr::addr_of!(args),
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match ret {
            0 => run_child(&plan),
            -1 => {
                let e = nix::Error::last();
                if matches!(e, nix::Error::ENOSYS | nix::Error::EPERM) {
                    // No clone3 (or a seccomp filter that hides it): fork
                    // without a pidfd from now on.
                    *clone3 = false;
                } else {
                    return Err(SpawnError::Fork(e));
                }
            }
            child => pid = child as libc::pid_t,
        }
    }
    if pid == -1 {
        // SAFETY: as for clone3 above.
        pid = match unsafe { libc::fork() } {
            -1 => return Err(SpawnError::Fork(nix::Error::last())),
            0 => run_child(&plan),
            pid => pid,
        };
    }
    forked.insert(pid);
    drop(forked);
    drop(err_write);
    // SAFETY: the kernel just installed `pidfd` for this thread (clone3
    // with CLONE_PIDFD succeeded) and nothing else refers to it.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    // The child also calls setpgid; doing it here too closes the race
    // where baton signals the group before the child got to run. EACCES
    // (the child already exec'd) is harmless.
    let _ = nix::unistd::setpgid(Pid::from_raw(pid), Pid::from_raw(pid));

    let mut report = [0u8; 5];
    let mut file = std::fs::File::from(err_read);
    let mut got = 0;
    while got < report.len() {
        match file.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    if got == report.len() {
        let stage = match report[0] {
            0 => Stage::Fds,
            1 => Stage::Chdir,
            3 => Stage::Cgroup,
            _ => Stage::Exec,
        };
        let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
        // The child has exited; the reaper collects it like any other.
        return Err(SpawnError::Child { pid, stage, errno });
    }
    Ok(Child { pid, pidfd })
}

struct ChildPlan<'a> {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    pid_slots: &'a [(*mut u8, usize)],
    dir: Option<*const c_char>,
    cgroup: Option<RawFd>,
    fds: &'a [RawFd],
    scratch: *mut RawFd,
    err_fd: RawFd,
    /// baton's pid, to notice that it died before PR_SET_PDEATHSIG was set.
    parent: libc::pid_t,
    /// RLIMIT_NOFILE for the app, or null to keep baton's.
    nofile: *const libc::rlimit,
}

/// Runs in the forked child only. Never returns.
fn run_child(plan: &ChildPlan<'_>) -> ! {
    // SAFETY: see `ChildPlan::exec`; called only in the child after fork.
    unsafe { plan.exec() }
}

impl ChildPlan<'_> {
    /// # Safety
    /// Only in the child right after fork: it uses async-signal-safe calls only.
    unsafe fn exec(&self) -> ! {
        // SAFETY: every call below is an async-signal-safe system call on
        // memory prepared before fork; nothing allocates or takes a lock.
        unsafe {
            // Into the worker's cgroup before it can fork anything, and
            // before the fd shuffle below can overwrite this descriptor.
            if let Some(procs) = self.cgroup {
                if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                    self.fail(3);
                }
            }
            // A worker must not outlive baton, even a SIGKILLed one. If
            // baton died before this line, the signal will never come.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            if libc::getppid() != self.parent {
                libc::_exit(127);
            }
            // The child inherits baton's signal mask and ignored signals (Rust
            // ignores SIGPIPE); an app expects a clean slate.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            libc::setpgid(0, 0);

            // Move every source out of the way first: a source may sit on a
            // target number (say the second socket is fd 3).
            let n = self.fds.len() as RawFd;
            for (i, &fd) in self.fds.iter().enumerate() {
                let tmp = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, n.max(3));
                if tmp < 0 {
                    self.fail(0);
                }
                *self.scratch.add(i) = tmp;
            }
            for i in 0..self.fds.len() {
                // dup2 clears FD_CLOEXEC on the new descriptor.
                if libc::dup2(*self.scratch.add(i), i as RawFd) < 0 {
                    self.fail(0);
                }
            }
            // Belt and braces against leaks: mark everything above the plan
            // close-on-exec, whatever flags it was opened with (the status
            // pipe must survive until exec, so no plain close here).
            libc::syscall(
                libc::SYS_close_range,
                n as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );

            // Only now: the fd numbers above are baton's, which may lie
            // beyond the app's limit during a wide reload. Lowering the soft
            // limit cannot fail; if it did, the app would keep baton's.
            if !self.nofile.is_null() {
                libc::setrlimit(libc::RLIMIT_NOFILE, self.nofile);
            }

            let pid = libc::getpid() as u64;
            for &(entry, prefix) in self.pid_slots {
                write_decimal(entry.add(prefix), pid);
            }
            if let Some(dir) = self.dir {
                if libc::chdir(dir) < 0 {
                    self.fail(1);
                }
            }
            libc::execve(self.program, self.argv, self.envp);
            self.fail(2)
        }
    }

    /// # Safety
    /// Child only.
    unsafe fn fail(&self, stage: u8) -> ! {
        // SAFETY: errno location, write and _exit are async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location();
            let e = errno.to_ne_bytes();
            let report = [stage, e[0], e[1], e[2], e[3]];
            libc::write(self.err_fd, report.as_ptr().cast(), report.len());
            libc::_exit(127)
        }
    }
}

/// # Safety
/// `dst` must have room for 21 bytes.
unsafe fn write_decimal(dst: *mut u8, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (value % 10) as u8;
        value /= 10;
        n += 1;
        if value == 0 {
            break;
        }
    }
    for i in 0..n {
        // SAFETY: the caller reserved 21 bytes; n <= 20 digits plus NUL.
        unsafe { *dst.add(i) = digits[n - 1 - i] };
    }
    // SAFETY: as above.
    unsafe { *dst.add(n) = 0 };
}

/// A pidfd for `pid`. The caller must make sure the pid still means the
/// process it has in mind *after* this returns (a pidfd for a recycled pid
/// names the new process); see `pidfd_alive`.
pub fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the kernel just installed this fd for us; nothing else has it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd`. ESRCH once it has exited.
pub fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> nix::Result<()> {
    // SAFETY: a valid fd, a signal number, no siginfo (null), no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if ret < 0 { Err(nix::Error::last()) } else { Ok(()) }
}

/// Whether the process behind `pidfd` is still running (a pidfd turns
/// readable when its process exits).
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [nix::poll::PollFd::new(pidfd, nix::poll::PollFlags::POLLIN)];
    matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(0))
}

/// The accept queue of a listening TCP socket: connections the kernel
/// completed that no worker has accepted yet. On a socket in LISTEN state
/// TCP_INFO's `tcpi_unacked` is that count (and `tcpi_sacked` the
/// backlog); `None` for any other socket (a unix socket has no TCP_INFO)
/// or one that is not listening. nix has no `TcpInfo` option.
pub fn tcp_accept_queue(sock: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: tcp_info is plain integers, for which all zeroes is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid fd; `info` is writable for `len` bytes, and the
    // kernel writes at most `len` and stores the length it wrote.
    let ret = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast::<libc::c_void>(),
            &raw mut len,
        )
    };
    // TCP_LISTEN is 10 in the kernel's enum of TCP states.
    (ret == 0 && info.tcpi_state == 10).then_some(info.tcpi_unacked)
}

#[derive(Debug, thiserror::Error)]
pub enum ListenFdsError {
    #[error("LISTEN_FDS={0:?} is not a small number")]
    Count(String),
    #[error("LISTEN_FDS says fd {fd} was passed, but it is not open")]
    NotOpen {
        fd: RawFd,
        #[source]
        source: nix::Error,
    },
    #[error("the sockets systemd passed were taken already")]
    Taken,
}

/// The most sockets taken from `LISTEN_FDS`; systemd's own cap is similar.
const MAX_LISTEN_FDS: usize = 4096;

/// Takes the sockets systemd passed (`sd_listen_fds`): `None` unless
/// `LISTEN_PID` is baton's pid and `LISTEN_FDS` is set. Each is checked to
/// be open and made close-on-exec. Only the first call can take them, so
/// no two owners of one fd can exist.
pub fn take_listen_fds() -> Result<Option<Vec<OwnedFd>>, ListenFdsError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let me = std::process::id().to_string();
    if !std::env::var("LISTEN_PID").is_ok_and(|p| p == me) {
        return Ok(None);
    }
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    let n: usize = count
        .parse()
        .ok()
        .filter(|&n| n <= MAX_LISTEN_FDS)
        .ok_or_else(|| ListenFdsError::Count(count.clone()))?;
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(ListenFdsError::Taken);
    }
    const FIRST: RawFd = 3; // SD_LISTEN_FDS_START
    let mut fds = Vec::with_capacity(n);
    for fd in FIRST..FIRST + n as RawFd {
        use nix::fcntl::{FcntlArg, FdFlag, fcntl};
        // SAFETY: a borrow only for these two calls; F_GETFD fails with
        // EBADF on a closed fd, which is reported instead of adopting it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        fcntl(borrowed, FcntlArg::F_GETFD).map_err(|source| ListenFdsError::NotOpen { fd, source })?;
        fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|source| ListenFdsError::NotOpen { fd, source })?;
        // SAFETY: the fd is open (checked above); systemd passed it at exec
        // (LISTEN_PID is ours) and TAKEN makes this the only adoption, so
        // nothing else in baton owns it.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    Ok(Some(fds))
}

/// One datagram read by [`recv_with_credentials`].
#[derive(Debug)]
pub struct Datagram {
    /// Bytes received (at most the buffer's length).
    pub len: usize,
    /// The datagram was longer than the buffer.
    pub truncated: bool,
    /// The sender's pid, from `SCM_CREDENTIALS`.
    pub pid: Option<i32>,
    /// Descriptors that came along (`SCM_RIGHTS`), close-on-exec.
    pub fds: Vec<OwnedFd>,
}

/// `recvmsg` on a datagram socket, taking ownership of passed descriptors.
pub fn recv_with_credentials(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Datagram> {
    let cap = buf.len();
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(libc::ucred, [RawFd; 16]);
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC,
    )?;
    let mut pid = None;
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                ControlMessageOwned::ScmRights(raw) => {
                    // SAFETY: the kernel installed these descriptors in this
                    // very recvmsg call; nothing else knows their numbers.
                    fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                }
                _ => {}
            }
        }
    }
    Ok(Datagram {
        len: msg.bytes.min(cap),
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.bytes > cap,
        pid,
        fds,
    })
}

/// The marker `Command::env` turns into the child's pid.
pub fn pid_placeholder() -> &'static str {
    PID_SLOT
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decimal_digits() {
        let mut buf = [0xffu8; 21];
        // SAFETY: buf has 21 bytes.
        unsafe { write_decimal(buf.as_mut_ptr(), 4194304) };
        assert_eq!(&buf[..8], b"4194304\0");
        // SAFETY: as above.
        unsafe { write_decimal(buf.as_mut_ptr(), 0) };
        assert_eq!(&buf[..2], b"0\0");
        // SAFETY: as above.
        unsafe { write_decimal(buf.as_mut_ptr(), u64::MAX) };
        assert_eq!(&buf[..21], b"18446744073709551615\0");
    }
}
