//! A load client that counts every request, for asserting "zero failed
//! requests" across reloads, crashes and stops.
//!
//! Each thread loops: open a new connection, `GET path`, count the outcome.
//! A new connection per request means every request goes through the shared
//! listening socket, which is what a reload must not disturb. It always stops
//! by itself, after 10 minutes or 5 million requests, even if the test never
//! calls [`Load::stop`].

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{GetError, get};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DURATION: Duration = Duration::from_secs(10 * 60);
const MAX_REQUESTS: u64 = 5_000_000;
const KEPT_ERRORS: usize = 10;
/// After a failure, so a dead server doesn't turn the loop into a busy spin.
const FAILURE_PAUSE: Duration = Duration::from_millis(5);

/// What the load has seen so far. `failed` is the sum of the categories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadStats {
    /// Answered 200 with a whole response.
    pub ok: u64,
    pub failed: u64,
    /// Could not connect (refused: nobody listening).
    pub connect_errors: u64,
    /// Connection reset or broken pipe while sending or receiving.
    pub resets: u64,
    /// No whole response within 10 s.
    pub timeouts: u64,
    /// A whole response, but not 200.
    pub bad_status: u64,
    /// Closed before any response, or a short or garbled one.
    pub bad_responses: u64,
    /// The first few failures, with the time since the load started.
    pub first_errors: Vec<String>,
    /// The last few failures, so a failure late in a long run is not lost
    /// behind early ones that were expected.
    pub last_errors: VecDeque<String>,
    /// `G` of every `hello from generation G ...` body.
    pub generations_seen: BTreeSet<String>,
}

impl LoadStats {
    /// The reload tests' verdict: nothing failed, the load was big enough
    /// to mean something, and generation `last` answered.
    pub fn assert_served_through(&self, min_ok: u64, last: u64) {
        assert_eq!(self.failed, 0, "failed requests: {self}\n{:?}", self.first_errors);
        assert!(self.ok > min_ok, "too little load to mean anything: {self}");
        let last = last.to_string();
        assert!(
            self.generations_seen.contains(&last),
            "never saw generation {last}: {self}"
        );
    }

    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }

    fn record(&mut self, outcome: Result<(u16, String), GetError>, since_start: Duration) {
        let error = match outcome {
            Ok((200, body)) => {
                if let Some(rest) = body.strip_prefix("hello from generation ") {
                    let generation = rest.split_whitespace().next().unwrap_or_default();
                    if !self.generations_seen.contains(generation) {
                        self.generations_seen.insert(generation.to_owned());
                    }
                }
                self.ok += 1;
                return;
            }
            Ok((status, body)) => {
                self.bad_status += 1;
                format!("status {status}: {}", body.trim_end())
            }
            Err(err) => {
                match err {
                    GetError::Connect(_) => self.connect_errors += 1,
                    GetError::Reset(_) => self.resets += 1,
                    GetError::Timeout => self.timeouts += 1,
                    GetError::BadResponse(_) => self.bad_responses += 1,
                }
                err.to_string()
            }
        };
        self.failed += 1;
        let error = format!("t+{:.3}s {error}", since_start.as_secs_f64());
        if self.first_errors.len() < KEPT_ERRORS {
            self.first_errors.push(error.clone());
        }
        if self.last_errors.len() == KEPT_ERRORS {
            self.last_errors.pop_front();
        }
        self.last_errors.push_back(error);
    }
}

impl fmt::Display for LoadStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests: {} ok, {} failed (connect {}, reset {}, timeout {}, bad status {}, \
             bad response {}); generations {:?}",
            self.total(),
            self.ok,
            self.failed,
            self.connect_errors,
            self.resets,
            self.timeouts,
            self.bad_status,
            self.bad_responses,
            self.generations_seen,
        )?;
        if let Some(first) = self.first_errors.first() {
            write!(f, "; first error: {first}")?;
        }
        Ok(())
    }
}

/// Load running in background threads. Dropping it stops it too.
pub struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<LoadStats>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `concurrency` threads sending `GET path` to `addr`, which must be
    /// a loopback address.
    pub fn start(addr: SocketAddr, path: &str, concurrency: usize) -> Load {
        assert!(addr.ip().is_loopback(), "load only goes to loopback, not {addr}");
        assert!(concurrency > 0, "concurrency must be at least 1");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let threads = (0..concurrency)
            .map(|i| {
                let (stop, stats, sent) = (stop.clone(), stats.clone(), sent.clone());
                let path = path.to_owned();
                std::thread::Builder::new()
                    .name(format!("load-{i}"))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed)
                            && started.elapsed() < MAX_DURATION
                            && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                        {
                            let outcome = get(addr, &path, REQUEST_TIMEOUT);
                            let failed = !matches!(outcome, Ok((200, _)));
                            stats.lock().unwrap().record(outcome, started.elapsed());
                            if failed {
                                std::thread::sleep(FAILURE_PAUSE);
                            }
                        }
                    })
                    .expect("spawning a load thread")
            })
            .collect();
        Load { stop, stats, threads }
    }

    /// The counts so far; the load keeps running.
    pub fn snapshot(&self) -> LoadStats {
        self.stats.lock().unwrap().clone()
    }

    /// Stops the load, waits for the requests in flight, and returns the
    /// final counts.
    pub fn stop(mut self) -> LoadStats {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("a load thread panicked");
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Joining while already panicking could hide the first panic; the
        // threads stop within one request anyway.
        if !std::thread::panicking() {
            self.halt();
        }
    }
}
