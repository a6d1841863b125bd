//! What `baton status --watch` draws. [`draw`] is a pure function of the
//! recent answers ([`History`]), the latest report and the frame's size, so
//! the tests draw it on ratatui's `TestBackend` and read the buffer.
//!
//! The layout is made for an 80×24 terminal over ssh: four lines about the
//! app (name, version, sockets, the last reload, what is going on now),
//! one line per generation, then one line per worker with its RSS and CPU
//! history as two sparklines. Workers that do not fit are counted in a
//! "+N more" line and reached by scrolling.

#![forbid(unsafe_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Sparkline};
use serde_json::Value;

/// How many polls each worker's history keeps.
pub const SAMPLES: usize = 60;
/// Below this the view says the terminal is too small instead.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 10;
/// Generations beyond this many are counted, not listed (there are
/// rarely more than three: serving, candidate or canary, retiring).
const MAX_GENERATION_LINES: usize = 4;
/// The worker line's text before its sparklines.
const WORKER_TEXT: u16 = 54;

/// The recent figures of every worker the last answer listed, by worker id.
#[derive(Debug, Default)]
pub struct History {
    workers: HashMap<u64, Trail>,
}

#[derive(Debug, Default)]
struct Trail {
    rss: VecDeque<u64>,
    /// CPU use between two polls, in tenths of a percent of one core.
    cpu: VecDeque<u64>,
    /// The last `cpu_usec` and when it was measured (baton's `uptime_ms`).
    last_cpu: Option<(u64, u64)>,
}

impl History {
    /// Adds one `status` answer. Workers it no longer lists are forgotten.
    pub fn record(&mut self, report: &Value) {
        let at = report["uptime_ms"].as_u64();
        let mut listed = HashSet::new();
        for w in workers(report) {
            let Some(id) = w["id"].as_u64() else { continue };
            listed.insert(id);
            self.workers.entry(id).or_default().push(w, at);
        }
        self.workers.retain(|id, _| listed.contains(id));
    }

    fn trail(&self, worker: &Value) -> Option<&Trail> {
        self.workers.get(&worker["id"].as_u64()?)
    }
}

impl Trail {
    fn push(&mut self, w: &Value, at: Option<u64>) {
        push_bounded(&mut self.rss, w["rss_bytes"].as_u64().unwrap_or(0));
        let (Some(usec), Some(at)) = (w["cpu_usec"].as_u64(), at) else {
            return;
        };
        if let Some((last_usec, last_at)) = self.last_cpu {
            // A process-group figure drops when a child exits unwaited-for,
            // and baton's clock restarts if it did: no figure this time.
            if at > last_at && usec >= last_usec {
                // µs of CPU per ms of time is tenths of a percent.
                push_bounded(&mut self.cpu, (usec - last_usec) / (at - last_at));
            }
        }
        self.last_cpu = Some((usec, at));
    }
}

fn push_bounded(q: &mut VecDeque<u64>, value: u64) {
    if q.len() == SAMPLES {
        q.pop_front();
    }
    q.push_back(value);
}

/// What [`draw`] shows.
#[derive(Debug, Clone, Copy)]
pub struct Screen<'a> {
    /// The latest `status` answer (still shown while baton is unreachable).
    pub report: &'a Value,
    pub history: &'a History,
    /// Why the last poll got no answer, when it did not (the error).
    pub problem: Option<&'a str>,
    /// The first worker line shown.
    pub scroll: usize,
    pub interval: Duration,
}

/// Every worker of every generation, in the order the view lists them.
pub fn workers(report: &Value) -> impl Iterator<Item = &Value> {
    generations(report).flat_map(|g| g["workers"].as_array().into_iter().flatten())
}

fn generations(report: &Value) -> impl Iterator<Item = &Value> {
    report["supervisor"]["generations"].as_array().into_iter().flatten()
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, screen: &Screen) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!(
            "terminal too small ({}×{}): baton status --watch needs {MIN_WIDTH}×{MIN_HEIGHT}; q quits",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(text), row(area, 0));
        return;
    }
    let mut y = 0;
    let line = |frame: &mut Frame, y: &mut u16, l: Line| {
        frame.render_widget(Paragraph::new(l), row(area, *y));
        *y += 1;
    };
    let report = screen.report;
    line(frame, &mut y, header(report));
    line(frame, &mut y, sockets(report));
    line(frame, &mut y, last_reload(report));
    line(frame, &mut y, notice(report, screen.problem, area.width));
    let gens: Vec<&Value> = generations(report).collect();
    for g in gens.iter().take(MAX_GENERATION_LINES) {
        line(frame, &mut y, generation(report, g));
    }
    if gens.len() > MAX_GENERATION_LINES {
        line(
            frame,
            &mut y,
            Line::from(format!("+{} more generations", gens.len() - MAX_GENERATION_LINES)),
        );
    }
    let (_, each) = sparklines(area.width);
    let mut columns = format!(
        "{:<4} {:<3} {:<8} {:<8} {:>7} {:>3} {:>7} {:>6} ",
        "GEN", "W", "PID", "STATE", "UP", "RST", "RSS", "CPU"
    );
    if each > 0 {
        let width = usize::from(each);
        columns.push_str(&format!("{:<width$} {:<width$}", "rss history", "cpu history"));
    }
    line(
        frame,
        &mut y,
        Line::styled(columns, Style::new().add_modifier(Modifier::BOLD)),
    );
    // The footer takes the last line.
    let room = usize::from(area.height.saturating_sub(1).saturating_sub(y));
    let rows: Vec<(&Value, &Value)> = gens
        .iter()
        .flat_map(|g| g["workers"].as_array().into_iter().flatten().map(move |w| (*g, w)))
        .collect();
    let (shown, more) = if rows.len() <= room {
        (0..rows.len(), 0)
    } else {
        let fits = room.saturating_sub(1);
        let first = screen.scroll.min(rows.len() - fits);
        (first..first + fits, rows.len() - fits)
    };
    for &(g, w) in &rows[shown] {
        worker(frame, row(area, y), g, w, screen.history.trail(w));
        y += 1;
    }
    if more > 0 {
        line(
            frame,
            &mut y,
            Line::from(format!("+{more} more workers (↑↓ PgUp PgDn scroll)")),
        );
    }
    let footer = format!(
        "q quit · ↑↓ scroll · every {} · baton status --json for everything",
        humantime::format_duration(screen.interval)
    );
    frame.render_widget(
        Paragraph::new(Line::styled(footer, Style::new().add_modifier(Modifier::DIM))),
        row(area, area.height - 1),
    );
}

fn row(area: Rect, y: u16) -> Rect {
    Rect::new(area.x, area.y + y.min(area.height.saturating_sub(1)), area.width, 1)
}

fn alert() -> Style {
    Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn header(report: &Value) -> Line<'static> {
    let sup = &report["supervisor"];
    let serving = sup["serving"].as_u64().and_then(|id| {
        generations(report)
            .find(|g| g["id"].as_u64() == Some(id))
            .map(|g| format!("generation {id} serving {}/{} ready", n(&g["ready"]), n(&g["slots"])))
    });
    let text = format!(
        "{} · {} · {} · baton {} pid {} up {}",
        s(&report["name"]),
        serving.unwrap_or_else(|| "no generation serving".to_owned()),
        s(&sup["phase"]),
        s(&report["version"]),
        n(&report["pid"]),
        age(n(&report["uptime_ms"])),
    );
    Line::styled(text, Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD))
}

fn sockets(report: &Value) -> Line<'static> {
    let list: Vec<String> = report["sockets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| format!("{} {}", s(&x["name"]), s(&x["address"])))
        .collect();
    let origin = if report["socket_activated"].as_bool() == Some(true) {
        "from systemd"
    } else {
        "bound by baton"
    };
    Line::from(format!("sockets ({origin}): {}", list.join(", ")))
}

fn last_reload(report: &Value) -> Line<'static> {
    let r = &report["supervisor"]["last_reload"];
    if !r.is_object() {
        return Line::from("last reload: none since baton started");
    }
    let ok = r["ok"].as_bool() == Some(true);
    // "2026-11-21T12:03:04Z" → "12:03:04 UTC"
    let at = report["last_reload_at"]
        .as_str()
        .and_then(|t| t.get(11..19))
        .map_or_else(String::new, |t| format!(" at {t} UTC"));
    let ms = n(&r["elapsed_ms"]);
    let took = if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", Duration::from_millis(ms).as_secs_f64())
    };
    let message = r["message"]
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .collect::<Vec<_>>();
    let result = if ok {
        Span::styled("ok", Style::new().fg(Color::Green))
    } else {
        Span::styled("FAILED", alert())
    };
    Line::from(vec![
        Span::raw("last reload: "),
        result,
        Span::raw(format!("{at} in {took}: {}", message.join(" "))),
    ])
}

/// What is going on now, or why baton does not answer.
fn notice(report: &Value, problem: Option<&str>, width: u16) -> Line<'static> {
    if let Some(e) = problem {
        // The error is cut, never the words that say what happens next.
        let (before, after) = ("baton not reachable: ", ", retrying (the last answer below)");
        let room = usize::from(width).saturating_sub(before.len() + after.len());
        let e = if e.chars().count() > room {
            let cut: String = e.chars().take(room.saturating_sub(1)).collect();
            format!("{cut}…")
        } else {
            e.to_owned()
        };
        return Line::styled(format!("{before}{e}{after}"), alert());
    }
    let sup = &report["supervisor"];
    let yellow = Style::new().fg(Color::Yellow);
    if sup["phase"].as_str() == Some("stopping") {
        return Line::styled("baton is stopping", yellow);
    }
    if sup["reload_in_progress"].as_bool() == Some(true) {
        let queued = if sup["reload_queued"].as_bool() == Some(true) {
            " (another one is queued)"
        } else {
            ""
        };
        return Line::styled(format!("a reload is in progress{queued}"), yellow);
    }
    let c = &sup["canary"];
    if c.is_object() {
        let next = if c["checking"].as_bool() == Some(true) {
            "its check is running".to_owned()
        } else if let Some(left) = c["hold_left_ms"].as_u64() {
            format!("hold: {} left", age(left))
        } else {
            "waiting for `baton promote` or `baton rollback`".to_owned()
        };
        return Line::styled(
            format!("canary: generation {} ready; {next}", n(&c["generation"])),
            yellow,
        );
    }
    Line::from("")
}

fn generation(report: &Value, g: &Value) -> Line<'static> {
    let id = g["id"].as_u64();
    let role = match g["role"].as_str() {
        Some("starting") if id.is_some() && report["supervisor"]["candidate"].as_u64() == id => "candidate",
        Some(role) => role,
        None => "-",
    };
    let role_style = match role {
        "serving" => Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
        "candidate" | "canary" => Style::new().fg(Color::Yellow),
        _ => Style::new().add_modifier(Modifier::DIM),
    };
    let mut rest = format!(
        " {}/{} ready  age {}  restarts {}",
        n(&g["ready"]),
        n(&g["slots"]),
        age(n(&g["age_ms"])),
        n(&g["restarts"]),
    );
    if let Some(given_up) = g["given_up"].as_array().filter(|a| !a.is_empty()) {
        let slots: Vec<String> = given_up.iter().map(|x| n(x).to_string()).collect();
        rest.push_str(&format!("  given up: worker {}", slots.join(", ")));
    }
    Line::from(vec![
        Span::raw(format!("gen {:<4} ", n(&g["id"]))),
        Span::styled(format!("{role:<9}"), role_style),
        Span::raw(rest),
    ])
}

fn worker(frame: &mut Frame, area: Rect, g: &Value, w: &Value, trail: Option<&Trail>) {
    let state = s(&w["state"]);
    let state_style = match state {
        "ready" => Style::new().fg(Color::Green),
        "starting" | "spawning" => Style::new().fg(Color::Yellow),
        _ => Style::new().add_modifier(Modifier::DIM),
    };
    let cpu = trail
        .and_then(|t| t.cpu.back())
        .map_or_else(|| "-".to_owned(), |c| format!("{:.1}%", *c as f64 / 10.0));
    let text = Line::from(vec![
        Span::raw(format!(
            "{:<4} {:<3} {:<8} ",
            format!("g{}", n(&g["id"])),
            n(&w["slot"]),
            w["pid"].as_i64().map_or_else(|| "-".to_owned(), |p| p.to_string()),
        )),
        Span::styled(format!("{state:<8}"), state_style),
        Span::raw(format!(
            " {:>7} {:>3} {:>7} {:>6} ",
            age(n(&w["uptime_ms"])),
            n(&w["restarts"]),
            w["rss_bytes"].as_u64().map_or_else(|| "-".to_owned(), bytes),
            cpu,
        )),
    ]);
    frame.render_widget(Paragraph::new(text), area);
    let Some(trail) = trail else { return };
    let (x, each) = sparklines(area.width);
    if each == 0 {
        return;
    }
    let rss = Rect::new(area.x + x, area.y, each, 1);
    let cpu = Rect::new(area.x + x + each + 1, area.y, each, 1);
    let rss_data = fit(&trail.rss, each);
    let rss_max = rss_data.iter().copied().max().unwrap_or(0).max(1);
    frame.render_widget(
        Sparkline::default()
            .data(rss_data)
            .max(rss_max)
            .style(Style::new().fg(Color::Cyan)),
        rss,
    );
    let cpu_data = fit(&trail.cpu, each);
    // One whole core is the top of the scale unless a worker used more.
    let cpu_max = cpu_data.iter().copied().max().unwrap_or(0).max(1000);
    frame.render_widget(
        Sparkline::default()
            .data(cpu_data)
            .max(cpu_max)
            .style(Style::new().fg(Color::Magenta)),
        cpu,
    );
}

/// Where a worker line's two sparklines start and how wide each is (0: no
/// room for them).
fn sparklines(width: u16) -> (u16, u16) {
    let each = width.saturating_sub(WORKER_TEXT).saturating_sub(1) / 2;
    (WORKER_TEXT, if each < 4 { 0 } else { each })
}

/// `samples` in at most `width` bars: neighbours are merged (their
/// largest) so that the whole history shows however narrow the terminal.
pub fn fit(samples: &VecDeque<u64>, width: u16) -> Vec<u64> {
    let width = usize::from(width.max(1));
    let per_bar = samples.len().div_ceil(width).max(1);
    let all: Vec<u64> = samples.iter().copied().collect();
    all.chunks(per_bar)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect()
}

/// `1.5G`, `312.4M`, `812K`: seven columns at most.
pub fn bytes(b: u64) -> String {
    const K: f64 = 1024.0;
    let b = b as f64;
    if b >= K * K * K {
        format!("{:.2}G", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.1}M", b / (K * K))
    } else {
        format!("{:.0}K", b / K)
    }
}

/// `42s`, `12m03s`, `3h12m`, `2d04h`: short enough for a column.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests;
