//! The driver's metrics half: the counters it keeps as the core's actions
//! go by, the workers' usage it measures on the blocking pool, and the
//! text it publishes to the outputs (`control::scrape`) whenever what the
//! metrics show changed, and after every periodic measurement.
//!
//! The text lives in a `watch` channel: a scrape or the textfile writer
//! reads the latest one and never waits on the event loop. `baton metrics`
//! measures afresh, then answers from the loop.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

use super::{Driver, Event, spawn_task, wall_clock_ago};
use crate::config;
use crate::control::metrics::{self, Counters, Inputs, Queue};
use crate::control::scrape;
use crate::engine::supervisor::{Fault, GenId, LastReload, ReloadResult, Snapshot, WorkerId};
use crate::os::cgroup::{self, Usage};
use crate::os::sys;

/// How often the workers' memory and CPU are measured while an output
/// (`listen` or `textfile`) is on: about Prometheus's default scrape
/// interval, more often would cost idle CPU for figures nobody reads. A
/// second less than the textfile's period, so that each measurement's text
/// reaches the textfile writer before its own deadline and is the period's
/// one write (`scrape::keep_textfile`).
pub(super) const SAMPLE_EVERY: Duration = scrape::TEXTFILE_EVERY.saturating_sub(Duration::from_secs(1));

/// The driver's metrics state.
pub(super) struct Metrics {
    pub(super) counters: Counters,
    /// The last measured usage per worker.
    usage: HashMap<WorkerId, Usage>,
    /// The latest text, for the outputs.
    text: watch::Sender<Arc<str>>,
    /// An output is on: measure periodically and publish changes.
    outputs: bool,
    /// A periodic measurement is under way.
    sampling: bool,
    /// What the last published text showed, to publish only changes.
    shown: u64,
    /// Generations that stopped serving, and when (for the drain time).
    retiring: HashMap<GenId, Instant>,
    serving: Option<GenId>,
    /// When the last reload counted ended (the core's `LastReload`).
    counted: Option<Instant>,
}

impl Metrics {
    pub(super) fn new(counters: Counters) -> Self {
        Metrics {
            counters,
            usage: HashMap::new(),
            text: watch::Sender::new(Arc::from("")),
            outputs: false,
            sampling: false,
            shown: 0,
            retiring: HashMap::new(),
            serving: None,
            counted: None,
        }
    }

    /// An output is on (the loop then measures every [`SAMPLE_EVERY`]).
    pub(super) fn outputs(&self) -> bool {
        self.outputs
    }

    /// An answer to a reload-like request (`Action::ReloadDone`), with the
    /// core's last reload as it is now. One reload can answer several
    /// times (a `--wait` client hears after the drain), so a reload that
    /// ran is counted when the core's last reload is a new one; an error
    /// answer without one is a request that never ran (refused).
    pub(super) fn reload_done(&mut self, result: &ReloadResult, last: Option<&LastReload>) {
        match last {
            Some(last) if Some(last.finished) != self.counted => {
                self.counted = Some(last.finished);
                let elapsed = Duration::from_millis(last.elapsed_ms).as_secs_f64();
                self.counters.reload_done(result, Some(elapsed));
            }
            _ if result.is_err() => self.counters.reload_refused(),
            // Another answer to a reload already counted, or a canary
            // ended by `rollback` (nothing was started).
            _ => {}
        }
    }

    /// A worker failed (`Action::WorkerFailed`): a restart when it served.
    pub(super) fn worker_failed(&mut self, fault: &Fault, serving: Option<GenId>) {
        if Some(fault.generation) == serving {
            self.counters.restarted(metrics::failure_label(&fault.failure));
        }
    }

    /// Every worker of `generation` is gone (`Action::Retired`).
    pub(super) fn retired(&mut self, generation: GenId, now: Instant) {
        if let Some(since) = self.retiring.remove(&generation) {
            self.counters.last_drain_seconds = Some(now.saturating_duration_since(since).as_secs_f64());
        }
    }

    /// The serving generation as of now: when it changed, the one before
    /// starts draining.
    pub(super) fn track_serving(&mut self, serving: Option<GenId>, now: Instant) {
        if serving != self.serving {
            if let Some(old) = self.serving {
                self.retiring.insert(old, now);
            }
            self.serving = serving;
        }
    }
}

/// A cheap digest of what the metrics show, but for usage and queues
/// (they change all the time, and are refreshed by the periodic sample).
fn digest(s: &Snapshot, counters: &Counters) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.serving.hash(&mut h);
    for g in &s.generations {
        g.id.hash(&mut h);
        (g.role as u8).hash(&mut h);
        for w in &g.workers {
            w.id.hash(&mut h);
            (w.state as u8).hash(&mut h);
        }
    }
    s.last_reload.as_ref().map(|r| (r.ok, r.elapsed_ms)).hash(&mut h);
    // The counters are small maps; their JSON is a stable digest.
    serde_json::to_string(counters).unwrap_or_default().hash(&mut h);
    h.finish()
}

impl Driver {
    /// Starts the outputs `[metrics]` asks for. A listen address that
    /// cannot be bound is reported and left off; baton serves on.
    pub(super) async fn start_metrics(&mut self, settings: &config::Metrics) {
        if let Some(addr) = settings.listen {
            match scrape::bind(addr).await {
                Ok(listener) => {
                    tracing::info!("metrics: serving GET /metrics on {addr}");
                    let (rx, tasks, done) = (self.metrics.text.subscribe(), self.tasks.clone(), self.done.clone());
                    spawn_task(
                        &self.tasks,
                        &self.done,
                        "metrics-listen",
                        scrape::serve(listener, rx, tasks, done),
                    );
                    self.metrics.outputs = true;
                }
                Err(e) => tracing::error!("metrics: cannot listen on {addr}: {e}; GET /metrics is off"),
            }
        }
        if let Some(dir) = &settings.textfile {
            let path = scrape::textfile_path(dir, &self.name);
            tracing::info!("metrics: writing {}", path.display());
            let (rx, tasks, done) = (self.metrics.text.subscribe(), self.tasks.clone(), self.done.clone());
            spawn_task(
                &self.tasks,
                &self.done,
                "metrics-textfile",
                scrape::keep_textfile(path, rx, tasks, done),
            );
            self.metrics.outputs = true;
        }
        if self.metrics.outputs {
            self.sample_usage(None);
        }
    }

    /// Measures every worker's memory and CPU on the blocking pool; the
    /// answer (`Event::Usage`) publishes the text and, for `baton metrics`,
    /// answers `reply`.
    pub(super) fn sample_usage(&mut self, reply: Option<oneshot::Sender<String>>) {
        if reply.is_none() {
            if self.metrics.sampling {
                return;
            }
            self.metrics.sampling = true;
        }
        let probes = self.probes(false);
        let events = self.events.clone();
        self.tasks.spawn_blocking(move || {
            let usage = cgroup::measure_usage(&probes);
            let _ = events.blocking_send(Event::Usage { usage, reply });
        });
    }

    /// `Event::Usage`: new figures; publish, and answer `baton metrics`.
    pub(super) fn usage_measured(&mut self, usage: HashMap<WorkerId, Usage>, reply: Option<oneshot::Sender<String>>) {
        self.metrics.usage = usage;
        let text = self.render_metrics();
        match reply {
            Some(reply) => {
                let _ = reply.send(text.to_string());
            }
            None => self.metrics.sampling = false,
        }
        if self.metrics.outputs {
            self.metrics.text.send_replace(text);
        }
    }

    /// After each turn of the loop: the drain clock, and, with an output
    /// on, the text when what it shows changed.
    pub(super) fn publish_metrics(&mut self) {
        let now = Instant::now();
        self.metrics.track_serving(self.core.serving(), now);
        if !self.metrics.outputs {
            return;
        }
        let digest = digest(&self.core.snapshot(now), &self.metrics.counters);
        if digest != self.metrics.shown {
            let text = self.render_metrics();
            self.metrics.text.send_replace(text);
            // New workers have no figures yet: measure now rather than at
            // the next tick.
            self.sample_usage(None);
        }
    }

    fn render_metrics(&mut self) -> Arc<str> {
        let now = Instant::now();
        let snapshot = self.core.snapshot(now);
        self.metrics.shown = digest(&snapshot, &self.metrics.counters);
        // Workers that are gone leave no series behind.
        let live: std::collections::HashSet<WorkerId> = snapshot
            .generations
            .iter()
            .flat_map(|g| g.workers.iter().map(|w| w.id))
            .collect();
        self.metrics.usage.retain(|w, _| live.contains(w));
        let last_reload_unix = snapshot.last_reload.as_ref().map(|r| {
            wall_clock_ago(now.saturating_duration_since(r.finished))
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        });
        let queues: Vec<Queue> = self
            .listeners
            .iter()
            .map(|l| Queue {
                socket: l.name.clone(),
                depth: sys::tcp_accept_queue(l.fd.as_fd()),
            })
            .collect();
        Arc::from(metrics::render(&Inputs {
            name: &self.name,
            version: super::upgrade::VERSION,
            snapshot: &snapshot,
            last_reload_unix,
            usage: &self.metrics.usage,
            queues: &queues,
            counters: &self.metrics.counters,
        }))
    }
}
