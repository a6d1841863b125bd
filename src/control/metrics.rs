//! baton's Prometheus metrics: what the driver counts ([`Counters`]), and
//! the text it renders from them with a core snapshot and the workers'
//! measured usage ([`render`]).
//!
//! The counters are plain data so they can ride in the `baton upgrade`
//! hand-over: a counter that dropped to zero at an upgrade would read as a
//! reset (and a reload storm) in `rate()`. Everything else is derived
//! from the core's snapshot at render time, so it cannot drift from what
//! `baton status` says.
//!
//! The text is the Prometheus text format 0.0.4 written by the
//! prometheus-client crate, which node_exporter's textfile collector and
//! every Prometheus read. baton's own metric types below only hold values
//! (a registry of long-lived metric objects would have to be kept in step
//! with the snapshot); the crate encodes them.

#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::engine::supervisor::{Failure, GenId, ReloadError, ReloadResult, Role, Snapshot, WorkerId, WorkerState};
use crate::os::cgroup::Usage;

/// `Content-Type` of what [`render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the reload duration histogram, in seconds: a reload
/// takes from well under a second (a small app) to minutes (a JVM warming
/// up behind a long readiness timeout).
pub const DURATION_BUCKETS: [f64; 12] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0];

/// A histogram's state: per-bucket (not cumulative) counts, the last one
/// for everything above the highest bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; DURATION_BUCKETS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe(&mut self, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let i = DURATION_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(DURATION_BUCKETS.len());
        // A hand-over from a binary with other buckets: start them afresh
        // rather than index out of bounds.
        if self.buckets.len() != DURATION_BUCKETS.len() + 1 {
            *self = Histogram::default();
        }
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

/// What the driver counts. Carried across `baton upgrade`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counters {
    /// Reload-like requests that ended, by result: `ok`, `failed` (the
    /// config or a new worker failed), `aborted` (baton stopped during
    /// it), `refused` (nothing was started: a canary runs, nothing to
    /// promote or roll back to, busy, stopping).
    pub reloads: BTreeMap<String, u64>,
    /// How long the reloads that ran (ok or failed) took.
    pub reload_duration: Histogram,
    /// Serving workers that failed and were replaced (or their slot given
    /// up), by reason; plus graceful replacements for the memory limit.
    pub restarts: BTreeMap<String, u64>,
    /// How long the generation retired last took to exit, in seconds.
    pub last_drain_seconds: Option<f64>,
}

/// The `result` label of a finished reload.
pub fn result_label(result: &ReloadResult) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ReloadError::Config { .. } | ReloadError::Worker { .. }) => "failed",
        Err(ReloadError::Stopping) => "aborted",
        Err(
            ReloadError::CanaryRunning { .. }
            | ReloadError::Busy { .. }
            | ReloadError::NoCanary
            | ReloadError::NoRollbackTarget,
        ) => "refused",
    }
}

/// The `reason` label of a serving worker's failure.
pub fn failure_label(failure: &Failure) -> &'static str {
    match failure {
        Failure::Exited { .. } => "exited",
        Failure::NotReady { .. } => "not_ready",
        Failure::Spawn { .. } => "spawn_failed",
        Failure::WatchdogTimeout | Failure::WatchdogTrigger => "watchdog",
        Failure::StoppedEarly => "stopped_early",
        Failure::Errno => "errno",
        Failure::MemoryLimit => "memory_limit",
    }
}

impl Counters {
    /// A reload-like request ended; `elapsed` is how long it ran (for
    /// those that ran: ok and failed).
    pub fn reload_done(&mut self, result: &ReloadResult, elapsed: Option<f64>) {
        let label = result_label(result);
        *self.reloads.entry(label.to_owned()).or_default() += 1;
        if let (Some(s), "ok" | "failed") = (elapsed, label) {
            self.reload_duration.observe(s);
        }
    }

    /// A request that never ran: a canary runs, nothing to promote or roll
    /// back to, busy, or baton is stopping.
    pub fn reload_refused(&mut self) {
        *self.reloads.entry("refused".to_owned()).or_default() += 1;
    }

    pub fn restarted(&mut self, reason: &str) {
        *self.restarts.entry(reason.to_owned()).or_default() += 1;
    }
}

/// One listening socket's accept queue: `None` where it cannot be read
/// (a unix socket: the series is left out).
#[derive(Debug, Clone)]
pub struct Queue {
    pub socket: String,
    pub depth: Option<u32>,
}

/// Everything one rendering reads.
pub struct Inputs<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub snapshot: &'a Snapshot,
    /// When the last reload ended, in seconds since the epoch.
    pub last_reload_unix: Option<f64>,
    /// The workers' last measured memory and CPU.
    pub usage: &'a HashMap<WorkerId, Usage>,
    pub queues: &'a [Queue],
    pub counters: &'a Counters,
}

/// Label pairs of one series (besides `app`, which the registry adds).
type Labels = Vec<(&'static str, String)>;

/// A metric family as values: one series per label set.
#[derive(Debug)]
struct Series<T> {
    kind: MetricType,
    rows: Vec<(Labels, T)>,
}

impl<T> Series<T> {
    fn one(kind: MetricType, value: T) -> Self {
        Series {
            kind,
            rows: vec![(Vec::new(), value)],
        }
    }
}

/// How a value is written for its metric type.
trait Value {
    fn write(&self, kind: &MetricType, e: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error>;
}

impl Value for u64 {
    fn write(&self, kind: &MetricType, e: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => e.encode_counter::<NoLabelSet, _, u64>(self, None),
            _ => e.encode_gauge(&(*self as i64)),
        }
    }
}

impl Value for f64 {
    fn write(&self, kind: &MetricType, e: &mut MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => e.encode_counter::<NoLabelSet, _, f64>(self, None),
            _ => e.encode_gauge(self),
        }
    }
}

impl<T: Value + std::fmt::Debug + Send + Sync + 'static> EncodeMetric for Series<T> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, value) in &self.rows {
            if labels.is_empty() {
                value.write(&self.kind, &mut encoder)?;
            } else {
                let mut e = encoder.encode_family(labels)?;
                value.write(&self.kind, &mut e)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .zip(self.buckets.iter().copied())
            .collect();
        buckets.push((
            f64::INFINITY,
            self.buckets.get(DURATION_BUCKETS.len()).copied().unwrap_or(0),
        ));
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

const STATES: [(WorkerState, &str); 5] = [
    (WorkerState::Spawning, "spawning"),
    (WorkerState::Starting, "starting"),
    (WorkerState::Settling, "settling"),
    (WorkerState::Ready, "ready"),
    (WorkerState::Stopping, "stopping"),
];

/// The metrics text of one app.
pub fn render(inputs: &Inputs<'_>) -> String {
    let s = inputs.snapshot;
    let c = inputs.counters;
    let labels = [(Cow::Borrowed("app"), Cow::Owned(inputs.name.to_owned()))];
    let mut r = Registry::with_prefix_and_labels("baton", labels.into_iter());

    r.register(
        "build_info",
        "The version of baton that supervises the app; always 1",
        Series::<u64> {
            kind: MetricType::Gauge,
            rows: vec![(vec![("version", inputs.version.to_owned())], 1)],
        },
    );
    r.register(
        "generation",
        "The serving generation (1, 2, 3, ...; 0 before the first is ready)",
        Series::one(MetricType::Gauge, s.serving.map_or(0, GenId::get)),
    );
    let mut by_state = [0u64; STATES.len()];
    for w in s.generations.iter().flat_map(|g| &g.workers) {
        if let Some(i) = STATES.iter().position(|(st, _)| *st == w.state) {
            by_state[i] += 1;
        }
    }
    r.register(
        "workers",
        "Workers of every generation, by state",
        Series::<u64> {
            kind: MetricType::Gauge,
            rows: STATES
                .iter()
                .zip(by_state)
                .map(|((_, name), n)| (vec![("state", (*name).to_owned())], n))
                .collect(),
        },
    );
    let mut reloads: BTreeMap<&str, u64> = ["ok", "failed"].into_iter().map(|k| (k, 0)).collect();
    for (k, v) in &c.reloads {
        reloads.insert(k, *v);
    }
    r.register(
        "reloads",
        "Reloads (also canary starts, promotions and rollbacks) that ended, by result: ok, failed, aborted (baton stopped), refused (nothing started)",
        Series::<u64> {
            kind: MetricType::Counter,
            rows: reloads
                .into_iter()
                .map(|(k, v)| (vec![("result", k.to_owned())], v))
                .collect(),
        },
    );
    r.register(
        "reload_duration_seconds",
        "How long the reloads that ran (ok or failed) took, from the request to the answer",
        c.reload_duration.clone(),
    );
    if let Some(last) = &s.last_reload {
        r.register(
            "last_reload_success",
            "1 if the last reload that ran succeeded, else 0",
            Series::<u64>::one(MetricType::Gauge, u64::from(last.ok)),
        );
    }
    if let Some(at) = inputs.last_reload_unix {
        r.register(
            "last_reload_timestamp_seconds",
            "When the last reload that ran ended, in seconds since the epoch",
            Series::one(MetricType::Gauge, at),
        );
    }
    if let Some(d) = c.last_drain_seconds {
        r.register(
            "reload_drain_seconds",
            "How long the last retired generation took to exit after it stopped serving",
            Series::one(MetricType::Gauge, d),
        );
    }
    r.register(
        "worker_restarts",
        "Serving workers that failed and were replaced, or whose slot was given up, by reason; memory_limit counts graceful replacements too",
        Series::<u64> {
            kind: MetricType::Counter,
            rows: c
                .restarts
                .iter()
                .map(|(k, v)| (vec![("reason", k.clone())], *v))
                .collect(),
        },
    );
    let mut rss = Vec::new();
    let mut cpu = Vec::new();
    for g in &s.generations {
        for w in &g.workers {
            let labels = vec![("worker", w.slot.to_string()), ("generation", g.id.to_string())];
            let Some(u) = inputs.usage.get(&w.id) else { continue };
            if let Some(m) = u.memory {
                rss.push((labels.clone(), m));
            }
            if let Some(sec) = u.cpu_seconds {
                cpu.push((labels, sec));
            }
        }
    }
    r.register(
        "worker_resident_memory_bytes",
        "Memory of each worker with its children: its cgroup's memory.current, else the resident memory of its process group",
        Series {
            kind: MetricType::Gauge,
            rows: rss,
        },
    );
    r.register(
        "worker_cpu_seconds",
        "CPU time of each worker with its children: its cgroup's cpu.stat usage, else its process group's from /proc",
        Series {
            kind: MetricType::Counter,
            rows: cpu,
        },
    );
    let canary = s
        .generations
        .iter()
        .filter(|g| g.role == Role::Canary || s.canary.as_ref().is_some_and(|c| c.generation == g.id))
        .map(|g| g.workers.len() as u64)
        .sum::<u64>();
    r.register(
        "canary_workers",
        "Workers of the canary beside the serving generation (0: no canary)",
        Series::one(MetricType::Gauge, canary),
    );
    r.register(
        "listen_queue_depth",
        "Connections waiting in each TCP listening socket's accept queue (unix sockets are left out)",
        Series::<u64> {
            kind: MetricType::Gauge,
            rows: inputs
                .queues
                .iter()
                .filter_map(|q| Some((vec![("socket", q.socket.clone())], u64::from(q.depth?))))
                .collect(),
        },
    );
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &r) {
        // Writing to a String cannot fail; say so if it ever does.
        return format!("# baton: cannot encode the metrics: {e}\n");
    }
    out
}

#[cfg(test)]
mod tests;
