//! The only module with `unsafe` code: fork/exec of workers, adopting file
//! descriptors handed over by systemd or received over a socket, and editing
//! the process environment while baton is still single-threaded.
//!
//! Spawning follows DESIGN rule 7. Everything the child needs (argv, envp,
//! the fd plan) is allocated before `fork`; after `fork` the child runs only
//! async-signal-safe system calls. `LISTEN_PID` and `WATCHDOG_PID` must hold
//! the child's own pid, which is unknown before `fork`, so their entries are
//! reserved with room for the digits and the child writes them in place.
//! A worker with a cgroup of its own (see `cgroup`) joins it first thing
//! after `fork`, by writing "0" to a `cgroup.procs` descriptor opened
//! before, so nothing it runs ever executes outside that cgroup.

use std::ffi::{CString, c_char};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
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
    #[error("{stage} failed: {}", io::Error::from_raw_os_error(*.errno))]
    Child { stage: Stage, errno: i32 },
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
    cgroup: Option<RawFd>,
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
    /// cgroup's `cgroup.procs`, opened for writing, and must stay open until
    /// `spawn` returns.
    pub fn join_cgroup(&mut self, procs: BorrowedFd<'_>) {
        self.cgroup = Some(procs.as_raw_fd());
    }

    /// Fork and exec. `fds[i]` becomes fd `i` in the child (0, 1, 2, then the
    /// sockets from 3), with close-on-exec cleared; every other descriptor is
    /// closed at exec. The child leads a new process group.
    ///
    /// Returns once `execve` has succeeded (or failed, with the reason).
    pub fn spawn(&mut self, fds: &[BorrowedFd<'_>]) -> Result<Pid, SpawnError> {
        let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(SpawnError::Pipe)?;

        let argv: Vec<*const c_char> = self
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let pid_slots: Vec<(*mut u8, usize)> = self
            .pid_slots
            .iter()
            .map(|&(i, prefix)| (self.env[i].as_mut_ptr(), prefix))
            .collect();
        let envp: Vec<*const c_char> = self
            .env
            .iter()
            .map(|e| e.as_ptr().cast::<c_char>())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let raw_fds: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut scratch: Vec<RawFd> = vec![-1; raw_fds.len()];
        let child = ChildPlan {
            program: self.program.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            pid_slots: &pid_slots,
            dir: self.dir.as_ref().map(|d| d.as_ptr()),
            cgroup: self.cgroup,
            fds: &raw_fds,
            scratch: scratch.as_mut_ptr(),
            err_fd: err_write.as_raw_fd(),
        };

        // SAFETY: baton is multi-threaded here, so after fork the child may
        // only call async-signal-safe functions. `ChildPlan::exec` makes raw
        // system calls on memory allocated above (no allocation, no locks) and
        // ends in execve or _exit, never returning into Rust code.
        let pid = match unsafe { libc::fork() } {
            -1 => return Err(SpawnError::Fork(nix::Error::last())),
            0 => unsafe_child(&child),
            pid => Pid::from_raw(pid),
        };
        drop(err_write);
        // The child also calls setpgid; doing it here too closes the race
        // where baton signals the group before the child got to run. EACCES
        // (the child already exec'd) is harmless.
        let _ = nix::unistd::setpgid(pid, pid);

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
            return Err(SpawnError::Child { stage, errno });
        }
        Ok(pid)
    }
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
}

/// Runs in the forked child only. Never returns.
fn unsafe_child(plan: &ChildPlan<'_>) -> ! {
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

/// Takes ownership of descriptors that came from outside: systemd's
/// `LISTEN_FDS` or `SCM_RIGHTS` ancillary data.
///
/// Each fd must be open and owned by nobody else in this process.
pub fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass descriptors that the kernel just installed for us
    // (SCM_RIGHTS) or that systemd handed over at exec (LISTEN_FDS, checked
    // by LISTEN_PID); nothing else in baton refers to them.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Removes variables from baton's own environment. Call only from `main`
/// before any thread exists.
pub fn remove_env_vars_single_threaded(keys: &[&str]) {
    for key in keys {
        // SAFETY: called from main before the tokio runtime (or any other
        // thread) starts, so nothing can read the environment concurrently.
        unsafe { std::env::remove_var(key) };
    }
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
        unsafe { write_decimal(buf.as_mut_ptr(), 0) };
        assert_eq!(&buf[..2], b"0\0");
        unsafe { write_decimal(buf.as_mut_ptr(), u64::MAX) };
        assert_eq!(&buf[..21], b"18446744073709551615\0");
    }
}
