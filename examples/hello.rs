//! `hello`: a small HTTP/1.1 server written the way baton expects an app to be.
//!
//! Read it to see the four things a baton-friendly app does:
//!
//! 1. **Takes its listening socket from the environment** (`LISTEN_FDS`,
//!    `LISTEN_PID`; fd 3 is the first socket) with the `listenfd` crate, TCP or
//!    unix. Every generation of workers gets the same socket, so the port never
//!    closes during a reload. With no socket passed it binds `HELLO_ADDR`
//!    (default `127.0.0.1:8080`) itself, so it also runs alone.
//! 2. **Says when it is ready**: `READY=1` and a `STATUS=` line on
//!    `NOTIFY_SOCKET`, sent only once the accept loop runs. Until then baton
//!    keeps the old generation serving.
//! 3. **Drains on SIGTERM or SIGINT without failing a request**, keep-alive
//!    ones included: stop accepting (queued connections stay in the shared
//!    socket for the next generation), answer each connection's in-flight and
//!    next request with `Connection: close` (the client then reconnects, to the
//!    new generation), close only connections left without a request for
//!    longer than a grace (1.5 s), and exit 0 once none is left. Closing idle
//!    keep-alive connections at once, the usual drain, loses the request a
//!    busy client has already sent on each of them: see the README's
//!    "Keep-alive and the drain".
//! 4. **Pings the watchdog** (`WATCHDOG=1`) when `WATCHDOG_USEC` is set.
//!
//! The environment is read, and the passed fds taken, in a synchronous `main`
//! before the runtime starts: `listenfd` removes `LISTEN_FDS`/`LISTEN_PID` with
//! `remove_var`, which is unsound once other threads exist.
//!
//! Routes:
//!
//! - `GET /`: `hello from generation G worker W pid P`
//!   (`BATON_GENERATION`, `BATON_WORKER`, `-` when unset).
//! - `GET /slow?ms=N`: answers `slow done` after N milliseconds.
//! - `GET /fds`: `listen_pid_ok=true|false` (whether `LISTEN_PID` was this
//!   process's pid), then one `fd -> target` line per open file descriptor.
//! - `GET /env`: the `LISTEN_*`, `NOTIFY_*`, `WATCHDOG_*` and `BATON_*`
//!   variables as the process received them, one `K=V` per line.
//! - anything else: 404.
//!
//! Knobs for trying baton's safety nets (the integration tests use them):
//!
//! - `HELLO_FAIL_START="message"`: print the message to stderr and exit with
//!   status 3 before becoming ready, like a broken release.
//! - `HELLO_IGNORE_SIGTERM=1`: ignore SIGTERM and keep serving, so baton has
//!   to SIGKILL it after its stop timeout. SIGINT still drains.
//! - `HELLO_READY_DELAY_MS=N`: serve, but send `READY=1` only after N ms.
//! - `HELLO_NO_READY=1`: never send `READY=1` (a readiness timeout).
//! - `HELLO_NO_WATCHDOG=1`: never ping the watchdog (a hung worker).
//! - `HELLO_IDLE_GRACE_MS=N`: the drain's idle grace (default 1500). `0` is
//!   the usual drain that closes idle keep-alive connections at once, for
//!   measuring what it loses.
//!
//! Try it with systemd's own socket activation helper:
//!
//! ```text
//! cargo build --example hello
//! systemd-socket-activate -l 127.0.0.1:8080 target/debug/examples/hello
//! curl localhost:8080/
//! ```

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::error::Error;
use std::fmt;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulConnection;
use libsystemd::daemon::{self, NotifyState};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_util::task::TaskTracker;

type BoxError = Box<dyn Error + Send + Sync>;

/// How long, once draining has started, a connection may go without a
/// request before the drain closes it. A client using its connection sends
/// the next request as soon as it has read a response, so it is well within
/// this; closing sooner could drop a request already on its way. A
/// connection accepted just before the signal gets the same time to send its
/// first request.
const IDLE_GRACE: Duration = Duration::from_millis(1500);

const ENV_PREFIXES: [&str; 4] = ["LISTEN_", "NOTIFY_", "WATCHDOG_", "BATON_"];

fn main() -> ExitCode {
    // Before anything else: listenfd consumes LISTEN_PID, and /fds and /env
    // report what the process was given.
    let info = Arc::new(Info::from_env());

    if let Ok(message) = std::env::var("HELLO_FAIL_START") {
        eprintln!("{message}");
        return ExitCode::from(3);
    }

    match run(info) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprint!("hello: error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprint!(": {cause}");
                source = cause.source();
            }
            eprintln!();
            ExitCode::FAILURE
        }
    }
}

/// Everything taken from the environment at start.
struct Info {
    generation: String,
    worker: String,
    pid: u32,
    listen_pid_ok: bool,
    /// The `ENV_PREFIXES` variables, before listenfd removes any.
    env: BTreeMap<String, String>,
}

impl Info {
    fn from_env() -> Info {
        let pid = std::process::id();
        let listen_pid_ok = std::env::var("LISTEN_PID").is_ok_and(|v| v == pid.to_string());
        let env = std::env::vars()
            .filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect();
        let var = |k| std::env::var(k).unwrap_or_else(|_| "-".to_owned());
        Info {
            generation: var("BATON_GENERATION"),
            worker: var("BATON_WORKER"),
            pid,
            listen_pid_ok,
            env,
        }
    }
}

/// The knobs from the doc comment, other than `HELLO_FAIL_START`.
struct Knobs {
    ignore_sigterm: bool,
    ready_delay: Duration,
    no_ready: bool,
    no_watchdog: bool,
    idle_grace: Duration,
}

impl Knobs {
    fn from_env() -> Result<Knobs, BoxError> {
        let flag = |k| std::env::var(k).is_ok_and(|v| v == "1");
        let millis = |k, default| match std::env::var(k) {
            Ok(ms) => ms
                .parse()
                .map(Duration::from_millis)
                .map_err(|e| format!("{k}={ms:?}: {e}")),
            Err(_) => Ok(default),
        };
        Ok(Knobs {
            ignore_sigterm: flag("HELLO_IGNORE_SIGTERM"),
            ready_delay: millis("HELLO_READY_DELAY_MS", Duration::ZERO)?,
            no_ready: flag("HELLO_NO_READY"),
            no_watchdog: flag("HELLO_NO_WATCHDOG"),
            idle_grace: millis("HELLO_IDLE_GRACE_MS", IDLE_GRACE)?,
        })
    }
}

enum StdListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl fmt::Display for StdListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StdListener::Tcp(l) => match l.local_addr() {
                Ok(addr) => write!(f, "{addr}"),
                Err(_) => f.write_str("a tcp socket"),
            },
            StdListener::Unix(l) => match l.local_addr() {
                Ok(addr) => match (addr.as_pathname(), addr.as_abstract_name()) {
                    (Some(path), _) => write!(f, "{}", path.display()),
                    (None, Some(name)) => write!(f, "@{}", String::from_utf8_lossy(name)),
                    (None, None) => f.write_str("an unnamed unix socket"),
                },
                Err(_) => f.write_str("a unix socket"),
            },
        }
    }
}

/// Takes fd 3 from socket activation, or binds `HELLO_ADDR` when no socket was
/// passed to this process.
fn take_listener(listen_pid_ok: bool) -> Result<(StdListener, &'static str), BoxError> {
    let pid_set = std::env::var("LISTEN_PID").is_ok_and(|v| !v.is_empty());
    if std::env::var_os("LISTEN_FDS").is_some() && pid_set && !listen_pid_ok {
        eprintln!("hello: LISTEN_FDS is set but LISTEN_PID is not this process; ignoring it");
    }
    let mut fds = listenfd::ListenFd::from_env();
    let passed = match fds.take_tcp_listener(0) {
        Ok(Some(l)) => Some(StdListener::Tcp(l)),
        Ok(None) => None,
        Err(tcp_err) => match fds.take_unix_listener(0) {
            Ok(l) => l.map(StdListener::Unix),
            Err(unix_err) => {
                return Err(format!("fd 3 is neither a tcp listener ({tcp_err}) nor a unix one ({unix_err})").into());
            }
        },
    };
    if let Some(listener) = passed {
        return Ok((listener, "passed"));
    }
    let addr = std::env::var("HELLO_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let listener = std::net::TcpListener::bind(&addr).map_err(|e| format!("binding {addr}: {e}"))?;
    Ok((StdListener::Tcp(listener), "bound"))
}

fn run(info: Arc<Info>) -> Result<(), BoxError> {
    let knobs = Knobs::from_env()?;
    let (listener, how) = take_listener(info.listen_pid_ok)?;
    let watchdog = if knobs.no_watchdog {
        None
    } else {
        daemon::watchdog_enabled(false)
    };
    match &listener {
        StdListener::Tcp(l) => l.set_nonblocking(true)?,
        StdListener::Unix(l) => l.set_nonblocking(true)?,
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(info, knobs, listener, how, watchdog))
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    async fn accept(&self, info: &Arc<Info>, conns: &Connections) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => conns.spawn(l.accept().await?.0, info),
            Listener::Unix(l) => conns.spawn(l.accept().await?.0, info),
        }
        Ok(())
    }
}

async fn serve(
    info: Arc<Info>,
    knobs: Knobs,
    listener: StdListener,
    how: &str,
    watchdog: Option<Duration>,
) -> Result<(), BoxError> {
    // Handlers first: from here on SIGTERM must drain, not kill.
    let mut stop = StopSignals::new(knobs.ignore_sigterm)?;
    let described = listener.to_string();
    let listener = match listener {
        StdListener::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
        StdListener::Unix(l) => Listener::Unix(UnixListener::from_std(l)?),
    };
    println!(
        "hello: generation {} worker {} pid {} listening on {described} ({how})",
        info.generation, info.worker, info.pid
    );

    // Spawned, so it runs once the accept loop below is waiting.
    if !knobs.no_ready {
        let status = format!("serving on {described}");
        tokio::spawn(announce_ready(knobs.ready_delay, status));
    }
    if let Some(timeout) = watchdog {
        tokio::spawn(ping_watchdog(timeout / 2));
    }

    let conns = Connections::new(knobs.idle_grace);
    let signal = loop {
        tokio::select! {
            biased;
            name = stop.recv() => break name,
            accepted = listener.accept(&info, &conns) => {
                if let Err(err) = accepted {
                    eprintln!("hello: accept: {err}");
                    // Out of fds and the like: don't spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };

    println!("hello: {signal} received, draining {} connection(s)", conns.tasks.len());
    notify(&[NotifyState::Stopping, NotifyState::Status("draining".to_owned())]);
    // Closes only this process's copy: queued connections wait in the shared
    // socket for the next generation.
    drop(listener);
    tokio::select! {
        () = conns.drain() => println!("hello: drained, exiting"),
        name = stop.recv() => println!("hello: second {name}, exiting without finishing the drain"),
    }
    Ok(())
}

async fn announce_ready(delay: Duration, status: String) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

async fn ping_watchdog(every: Duration) {
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        notify(&[NotifyState::Watchdog]);
    }
}

/// Sends to `NOTIFY_SOCKET` (a path or an abstract `@name`) if there is one.
/// `unset_env = false` because removing it would be unsound now that the
/// runtime exists.
fn notify(state: &[NotifyState]) {
    if let Err(err) = daemon::notify(false, state) {
        eprintln!("hello: sd_notify: {err}");
    }
}

struct StopSignals {
    term: Signal,
    int: Signal,
    ignore_term: bool,
}

impl StopSignals {
    fn new(ignore_term: bool) -> io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            ignore_term,
        })
    }

    /// Waits for the next signal that asks us to stop, and names it.
    async fn recv(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    if !self.ignore_term {
                        return "SIGTERM";
                    }
                    println!("hello: ignoring SIGTERM (HELLO_IGNORE_SIGTERM=1)");
                }
                _ = self.int.recv() => return "SIGINT",
            }
        }
    }
}

/// The open connections, and the drain that closes them without failing a
/// request.
struct Connections {
    tasks: TaskTracker,
    /// Turns true when the drain starts.
    draining: watch::Sender<bool>,
    idle_grace: Duration,
}

impl Connections {
    fn new(idle_grace: Duration) -> Connections {
        Connections {
            tasks: TaskTracker::new(),
            draining: watch::Sender::new(false),
            idle_grace,
        }
    }

    fn spawn<S>(&self, stream: S, info: &Arc<Info>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // When the connection last finished a request (or was accepted);
        // None while it handles one.
        let idle_since = watch::Sender::new(Some(Instant::now()));
        let draining = self.draining.subscribe();
        let service = {
            let (idle_since, info, draining) = (idle_since.clone(), info.clone(), draining.clone());
            service_fn(move |req| {
                idle_since.send_replace(None);
                let (idle_since, info, draining) = (idle_since.clone(), info.clone(), draining.clone());
                async move {
                    let mut response = handle(req, &info).await;
                    // Once draining, this is the connection's last response:
                    // hyper closes it after sending, and the client sends its
                    // next request on a new connection, to the new generation.
                    if *draining.borrow() {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    idle_since.send_replace(Some(Instant::now()));
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        let grace = self.idle_grace;
        self.tasks.spawn(async move {
            if let Err(err) = serve_connection(conn, idle_since.subscribe(), draining, grace).await {
                eprintln!("hello: connection: {err}");
            }
        });
    }

    /// Waits until every connection is closed: each ends after its next
    /// response, or after `idle_grace` without a request.
    async fn drain(self) {
        self.draining.send_replace(true);
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Serves one connection to its end. Once draining starts, a connection that
/// has gone `grace` without a request is shut down (hyper closes an idle one
/// at once); one in use ends by itself after its next response.
async fn serve_connection<C>(
    conn: C,
    mut idle_since: watch::Receiver<Option<Instant>>,
    mut draining: watch::Receiver<bool>,
    grace: Duration,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    let mut conn = pin!(conn);
    let mut shut_down = false;
    loop {
        let drain = *draining.borrow();
        let deadline = match *idle_since.borrow_and_update() {
            Some(since) if drain && !shut_down => Some(since + grace),
            _ => None,
        };
        // Biased, in this order: after a stall (a loaded machine) the
        // connection reads what arrived meanwhile, and a request that began
        // moves the deadline, before an expired deadline may shut down a
        // connection whose request is already waiting unread.
        tokio::select! {
            biased;
            result = conn.as_mut() => return result,
            Ok(()) = draining.changed(), if !drain => {}
            // A request began or ended: the deadline moves.
            Ok(()) = idle_since.changed(), if drain && !shut_down => {}
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                conn.as_mut().graceful_shutdown();
                shut_down = true;
            }
        }
    }
}

async fn handle(req: Request<Incoming>, info: &Info) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::NOT_FOUND, "not found\n".to_owned());
    }
    match req.uri().path() {
        "/" => text(
            StatusCode::OK,
            format!(
                "hello from generation {} worker {} pid {}\n",
                info.generation, info.worker, info.pid
            ),
        ),
        "/slow" => match slow_ms(req.uri().query()) {
            Some(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, "slow done\n".to_owned())
            }
            None => text(StatusCode::BAD_REQUEST, "usage: /slow?ms=MILLISECONDS\n".to_owned()),
        },
        "/fds" => text(StatusCode::OK, fds_report(info.listen_pid_ok)),
        "/env" => text(
            StatusCode::OK,
            info.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    }
}

fn slow_ms(query: Option<&str>) -> Option<u64> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))?
        .parse()
        .ok()
}

fn fds_report(listen_pid_ok: bool) -> String {
    let mut report = format!("listen_pid_ok={listen_pid_ok}\n");
    let mut fds: Vec<u32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(err) => {
            report.push_str(&format!("error: /proc/self/fd: {err}\n"));
            return report;
        }
    };
    fds.sort_unstable();
    // The directory's own fd is closed by now, so its readlink fails: skip it.
    for fd in fds {
        if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
            report.push_str(&format!("{fd} -> {}\n", target.display()));
        }
    }
    report
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
