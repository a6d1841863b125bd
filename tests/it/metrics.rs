//! Metrics from a real baton: `[metrics] listen` and `[metrics] textfile`
//! after 3 good reloads and a failed one, then the same read by a real
//! Prometheus, once scraping baton and once through node_exporter's
//! textfile collector (Debian's `prometheus` and
//! `prometheus-node-exporter`; required under CI=true).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::baton::{Baton, config_text, port};
use crate::common::{example_bin, free_port, http_get, skip, text, wait_until};

/// A baton with both outputs, after 3 good reloads and 1 failed one.
struct Reloaded {
    baton: Baton,
    listen: SocketAddr,
    textfile: PathBuf,
    _dir: tempfile::TempDir,
}

fn config(port: u16, listen: SocketAddr, dir: &Path, extra: &str) -> String {
    let hello = example_bin("hello").display().to_string();
    config_text(
        port,
        &[&hello],
        2,
        &format!(
            "[metrics]\nlisten = \"{listen}\"\ntextfile = {:?}\n\n{extra}",
            dir.display().to_string()
        ),
    )
}

fn reloaded() -> Reloaded {
    let dir = tempfile::tempdir().unwrap();
    let port = port();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let good = config(port, listen, dir.path(), "");
    let baton = Baton::start(port, &good);
    baton.reload_times(3, Duration::from_millis(50));
    baton.write_config(&config(
        port,
        listen,
        dir.path(),
        "[environment]\nHELLO_FAIL_START = \"boom\"\n",
    ));
    let out = baton.reload();
    assert_eq!(out.status.code(), Some(1), "the 4th reload fails: {}", text(&out));
    baton.write_config(&good);
    let textfile = dir.path().join("app.prom");
    Reloaded {
        baton,
        listen,
        textfile,
        _dir: dir,
    }
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The lines every output must show after the reloads.
const EXPECTED: [&str; 5] = [
    "baton_reloads_total{app=\"app\",result=\"ok\"} 3",
    "baton_reloads_total{app=\"app\",result=\"failed\"} 1",
    "baton_reload_duration_seconds_count{app=\"app\"} 4",
    "baton_generation{app=\"app\"} 4",
    "baton_last_reload_success{app=\"app\"} 0",
];

#[test]
fn listen_textfile_and_the_cli_show_the_reloads() {
    let r = reloaded();
    // `baton metrics`: measured afresh.
    let out = r.baton.client(&["metrics"]);
    assert!(out.status.success(), "{}", text(&out));
    let cli = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in EXPECTED {
        assert!(has(&cli, line), "baton metrics lacks {line:?}:\n{cli}");
    }
    assert!(has(&cli, "baton_workers{app=\"app\",state=\"ready\"} 2"), "{cli}");
    assert!(
        cli.contains("baton_worker_resident_memory_bytes{app=\"app\",worker=\"0\",generation=\"4\"} "),
        "{cli}"
    );
    assert!(
        cli.contains("baton_worker_cpu_seconds_total{app=\"app\",worker=\"1\",generation=\"4\"} "),
        "{cli}"
    );
    assert!(
        has(&cli, "baton_listen_queue_depth{app=\"app\",socket=\"http\"} 0"),
        "{cli}"
    );
    assert!(cli.contains("baton_reload_drain_seconds{app=\"app\"} "), "{cli}");

    // GET /metrics on its own address; other paths are 404.
    let mut scraped = String::new();
    let served = wait_until(Duration::from_secs(10), || {
        scraped = http_get(r.listen, "/metrics", Duration::from_secs(5)).map_or_else(|e| e, |(_, b)| b);
        EXPECTED.iter().all(|l| has(&scraped, l))
    });
    assert!(served, "GET /metrics:\n{scraped}\n{}", r.baton.log());
    let (code, _) = http_get(r.listen, "/", Duration::from_secs(5)).unwrap();
    assert_eq!(code, 404);

    // The textfile: the same numbers, no temp file beside it.
    let mut file = String::new();
    let written = wait_until(Duration::from_secs(10), || {
        file = std::fs::read_to_string(&r.textfile).unwrap_or_default();
        EXPECTED.iter().all(|l| has(&file, l))
    });
    assert!(written, "{}:\n{file}", r.textfile.display());
    // Listed once baton is gone, so that no write is under way.
    let mut r = r;
    r.baton.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(r.baton.wait_exit(Duration::from_secs(30)).is_some());
    let names: Vec<String> = std::fs::read_dir(r.textfile.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["app.prom".to_owned()]);

    // promtool agrees with the format, where it is installed.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&r.textfile).unwrap())
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool: {}",
            text(&out)
        ),
        Err(e) => skip(&format!("no promtool ({e}): apt-get install prometheus")),
    }
}

#[test]
fn a_metrics_address_on_the_apps_socket_is_refused() {
    let port = port();
    let dir = tempfile::tempdir().unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let path = dir.path().join("app.toml");
    std::fs::write(&path, config(port, listen, dir.path(), "")).unwrap();
    let out = Command::new(crate::common::baton_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is one of the app's [[listen]] sockets"),
        "{}",
        text(&out)
    );
}

/// `baton check` warns of a missing textfile directory but accepts the
/// config: baton runs without it (README "Metrics").
#[test]
fn check_warns_of_a_missing_textfile_directory() {
    let port = port();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("node-exporter");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let path = dir.path().join("app.toml");
    let check = |textfile: &Path| {
        std::fs::write(&path, config(port, listen, textfile, "")).unwrap();
        Command::new(crate::common::baton_bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check(&missing);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let warning = format!(
        "{}: warning: [metrics] textfile directory {} does not exist",
        path.display(),
        missing.display()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&warning), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write {}/app.prom until it is", missing.display())),
        "{stderr}"
    );
    std::fs::create_dir(&missing).unwrap();
    let out = check(&missing);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
}

#[test]
fn idle_connections_do_not_lock_a_scraper_out() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let port = port();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let baton = Baton::start(port, &config(port, listen, dir.path(), ""));
    let up = wait_until(Duration::from_secs(10), || {
        http_get(listen, "/metrics", Duration::from_secs(5)).is_ok_and(|(code, _)| code == 200)
    });
    assert!(up, "GET /metrics never answered:\n{}", baton.log());
    // Twice the 16 slots: half send nothing, half trickle a partial head.
    let mut idle = Vec::new();
    for i in 0..32 {
        let mut s = std::net::TcpStream::connect(listen).unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /metr").unwrap();
        }
        idle.push(s);
        std::thread::sleep(Duration::from_millis(5));
    }
    for round in 0..3 {
        let started = std::time::Instant::now();
        let got = http_get(listen, "/metrics", Duration::from_secs(2));
        assert!(
            matches!(got, Ok((200, _))),
            "scrape {round} with {} idle connections held: {got:?} after {:?}\n{}",
            idle.len(),
            started.elapsed(),
            baton.log()
        );
        // The attacker keeps the slots full with fresh idle connections.
        for _ in 0..16 {
            idle.push(std::net::TcpStream::connect(listen).unwrap());
        }
    }
    assert!(
        baton
            .log()
            .contains("closed the oldest one that had sent no complete request yet"),
        "{}",
        baton.log()
    );
    drop(idle);
}

/// A child process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(prometheus: SocketAddr, q: &str) -> Vec<serde_json::Value> {
    let path = format!("/api/v1/query?query={}", urlencode(q));
    let Ok((200, body)) = http_get(prometheus, &path, Duration::from_secs(5)) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `{job, result} → value` of an instant vector.
fn by_job_and_result(rows: &[serde_json::Value]) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            let m = &r["metric"];
            (
                m["job"].as_str().unwrap_or("").to_owned(),
                m["result"].as_str().unwrap_or("").to_owned(),
                r["value"][1].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_real_prometheus_reads_both_paths() {
    let (Ok(prometheus_bin), Ok(exporter_bin)) = (which("prometheus"), which("prometheus-node-exporter")) else {
        skip("no prometheus or prometheus-node-exporter: apt-get install prometheus prometheus-node-exporter");
        return;
    };
    let r = reloaded();
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(
        &r.textfile
    )
    .is_ok_and(|t| has(&t, EXPECTED[1]))));
    let work = tempfile::tempdir().unwrap();
    let exporter = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _exporter = Killed(
        Command::new(exporter_bin)
            .arg(format!("--web.listen-address={exporter}"))
            .arg(format!(
                "--collector.textfile.directory={}",
                r.textfile.parent().unwrap().display()
            ))
            // Only what the test reads, so it starts fast and quietly.
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node_exporter"),
    );
    let prom = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        [
            "global:".to_owned(),
            "  scrape_interval: 1s".to_owned(),
            "  scrape_timeout: 1s".to_owned(),
            "scrape_configs:".to_owned(),
            "  - job_name: baton".to_owned(),
            "    static_configs:".to_owned(),
            format!("      - targets: ['{}']", r.listen),
            "  - job_name: node".to_owned(),
            "    static_configs:".to_owned(),
            format!("      - targets: ['{exporter}']"),
            String::new(),
        ]
        .join("\n"),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", work.path().join("data").display()))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    let want = vec![
        ("baton".to_owned(), "failed".to_owned(), "1".to_owned()),
        ("baton".to_owned(), "ok".to_owned(), "3".to_owned()),
        ("node".to_owned(), "failed".to_owned(), "1".to_owned()),
        ("node".to_owned(), "ok".to_owned(), "3".to_owned()),
    ];
    let mut got = Vec::new();
    let seen = wait_until(Duration::from_secs(60), || {
        got = by_job_and_result(&query(prom, "baton_reloads_total{app=\"app\"}"));
        got == want
    });
    assert!(
        seen,
        "Prometheus: baton_reloads_total = {got:?}, want {want:?}; its log:\n{}",
        std::fs::read_to_string(work.path().join("prometheus.log")).unwrap_or_default()
    );
    let counts = by_job_and_result(&query(prom, "baton_reload_duration_seconds_count{app=\"app\"}"));
    assert_eq!(
        counts,
        vec![
            ("baton".to_owned(), String::new(), "4".to_owned()),
            ("node".to_owned(), String::new(), "4".to_owned()),
        ],
        "the histogram's count from both paths"
    );
    crate::common::say(&format!(
        "Prometheus: baton_reloads_total {got:?}; histogram count {counts:?}"
    ));
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
