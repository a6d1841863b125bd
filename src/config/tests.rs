use std::net::SocketAddr;

use super::*;
use types::{Size, closest};

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    Positions::new(text).at(offset)
}

const FILE: &str = "/etc/baton/myapp.toml";

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new(FILE), &Overrides::default())
}

fn ok(text: &str) -> Config {
    match parse_str(text) {
        Ok(config) => config,
        Err(err) => panic!("expected a valid config, got:\n{err}"),
    }
}

fn problems_with(text: &str, overrides: &Overrides) -> Vec<String> {
    match parse(text, Path::new(FILE), overrides) {
        Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

fn problems(text: &str) -> Vec<String> {
    problems_with(text, &Overrides::default())
}

/// The single problem of `text`.
fn problem(text: &str) -> String {
    let all = problems(text);
    assert_eq!(all.len(), 1, "expected one problem, got {all:#?}");
    all.into_iter().next().unwrap()
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

const FULL: &str = r#"name = "myapp"                       # default: the file's stem
command = ["node", "server.js"]      # required: argv, looked up in PATH
directory = "/srv/myapp/current"     # working directory
workers = 4                          # default 1; "auto" = number of CPUs

[environment]                        # added to the workers' environment
NODE_ENV = "production"

[[listen]]                           # standalone mode only
name = "http"                        # becomes LISTEN_FDNAMES
address = "127.0.0.1:8080"           # also "[::1]:8080", "/run/myapp.sock", "@abstract"

[readiness]
mode = "notify"
timeout = "60s"

[reload]
strategy = "parallel"

[stop]
signal = "SIGTERM"
timeout = "30s"

[restart]
delay = "100ms"
max_delay = "30s"
limit = 5
window = "60s"

[watchdog]
timeout = "0s"

[limits]
memory = "512MiB"
"#;

#[test]
fn full_design_example() {
    let config = ok(FULL);
    assert_eq!(
        config,
        Config {
            name: "myapp".into(),
            source: Some(PathBuf::from(FILE)),
            command: strings(&["node", "server.js"]),
            directory: Some(PathBuf::from("/srv/myapp/current")),
            workers: 4,
            environment: vec![("NODE_ENV".into(), "production".into())],
            listen: vec![ListenSpec {
                name: "http".into(),
                address: ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap()),
            }],
            readiness: Readiness {
                mode: ReadinessMode::Notify,
                timeout: Duration::from_secs(60),
                settle: Duration::ZERO,
                notify_socket: crate::config::NotifySocket::Path,
            },
            reload: ReloadStrategy::Parallel,
            stop: Stop {
                signal: Signal::SIGTERM,
                timeout: Duration::from_secs(30),
                message: None,
            },
            restart: Restart {
                delay: Duration::from_millis(100),
                max_delay: Duration::from_secs(30),
                limit: 5,
                window: Duration::from_secs(60),
            },
            watchdog: None,
            memory_limit: Some(512 * 1024 * 1024),
            canary: super::Canary::default(),
            metrics: super::Metrics::default(),
            node: super::Node::default(),
        }
    );
}

#[test]
fn minimal_file_gets_defaults() {
    let config = ok(r#"command = ["x"]"#);
    assert_eq!(
        config,
        Config {
            name: "myapp".into(),
            source: Some(PathBuf::from(FILE)),
            command: strings(&["x"]),
            directory: None,
            workers: 1,
            environment: vec![],
            listen: vec![],
            readiness: Readiness::default(),
            reload: ReloadStrategy::Parallel,
            stop: Stop::default(),
            restart: Restart::default(),
            watchdog: None,
            memory_limit: None,
            canary: super::Canary::default(),
            metrics: super::Metrics::default(),
            node: super::Node::default(),
        }
    );
    assert_eq!(config.readiness.timeout, Duration::from_secs(60));
    assert_eq!(config.readiness.mode, ReadinessMode::Notify);
    assert_eq!(config.stop.signal, Signal::SIGTERM);
    assert_eq!(config.stop.timeout, Duration::from_secs(30));
    assert_eq!(config.restart.delay, Duration::from_millis(100));
    assert_eq!(config.restart.max_delay, Duration::from_secs(30));
    assert_eq!(config.restart.limit, 5);
    assert_eq!(config.restart.window, Duration::from_secs(60));
}

#[test]
fn the_documented_workers_message() {
    assert_eq!(
        problem("name = \"myapp\"\ncommand = [\"x\"]\nworkers = -2\n"),
        r#"/etc/baton/myapp.toml:3:11: workers must be a positive integer or "auto", found -2"#
    );
}

#[test]
fn reports_every_problem_at_once_in_file_order() {
    let text = r#"command = ["node", 3]
workerz = 2
workers = 0

[stop]
signal = "SIGKIL"
timeout = 30

[restart]
limit = -1

[[listen]]
address = "8080"
"#;
    assert_eq!(
        problems(text),
        vec![
            r#"/etc/baton/myapp.toml:1:20: command[1] must be a string, found 3; quote it"#,
            r#"/etc/baton/myapp.toml:2:1: unknown key "workerz" in the top level; expected one of: name, command, directory, workers, environment, listen, readiness, reload, stop, restart, watchdog, limits, canary, metrics, node (did you mean "workers"?)"#,
            r#"/etc/baton/myapp.toml:3:11: workers must be a positive integer or "auto", found 0"#,
            r#"/etc/baton/myapp.toml:6:10: [stop] signal "SIGKIL" is not a signal name; use a name like SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1 or SIGUSR2"#,
            r#"/etc/baton/myapp.toml:7:11: [stop] timeout must be a duration like "30s", "250ms" or "1m 30s", found 30: a bare number has no unit; write "30s" for seconds or "30ms" for milliseconds"#,
            r#"/etc/baton/myapp.toml:10:9: [restart] limit must be a whole number from 0 to 1000, found -1"#,
            r#"/etc/baton/myapp.toml:13:11: [[listen]] address "8080" is not valid: a bare port is not an address: write "0.0.0.0:8080" (all IPv4 interfaces) or "[::]:8080" (all interfaces)"#,
        ]
    );
}

#[test]
fn config_error_display_lists_every_problem() {
    let err = parse_str("workers = 0\nfoo = 1\n").unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("/etc/baton/myapp.toml:1:1: missing required key \"command\""));
    assert!(lines[1].starts_with("/etc/baton/myapp.toml:1:11: workers must be"));
    assert!(lines[2].starts_with("/etc/baton/myapp.toml:2:1: unknown key \"foo\""));
}

#[test]
fn many_problems_are_capped_and_counted() {
    let mut text = String::from("command = [\"x\"]\n");
    for i in 0..51 {
        text.push_str(&format!("k{i} = 1\n"));
    }
    let err = parse_str(&text).unwrap_err();
    let ConfigError::Invalid(found) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(found.len(), 51);
    let shown = err.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 51, "{shown}");
    assert!(
        lines[49].starts_with("/etc/baton/myapp.toml:51:1: unknown key \"k49\""),
        "{shown}"
    );
    assert_eq!(lines[50], "... and 1 more error");

    // One long line of problems: columns keep counting on.
    let keys: Vec<String> = (0..3).map(|i| format!("k{i} = 1")).collect();
    let text = format!("command = [\"x\"]\nstop = {{ {} }}\n", keys.join(", "));
    assert_eq!(
        problems(&text)
            .iter()
            .map(|p| p.split(": unknown").next().unwrap().to_owned())
            .collect::<Vec<_>>(),
        [
            "/etc/baton/myapp.toml:2:10",
            "/etc/baton/myapp.toml:2:18",
            "/etc/baton/myapp.toml:2:26"
        ]
    );
}

#[test]
fn unknown_key_in_a_table() {
    assert_eq!(
        problem("command = [\"x\"]\n[stop]\nsginal = \"SIGINT\"\n"),
        r#"/etc/baton/myapp.toml:3:1: unknown key "sginal" in [stop]; expected one of: signal, timeout, message (did you mean "signal"?)"#
    );
    assert_eq!(
        problem("command = [\"x\"]\n[restart]\n  max-delay = \"1s\"\n"),
        r#"/etc/baton/myapp.toml:3:3: unknown key "max-delay" in [restart]; expected one of: delay, max_delay, limit, window (did you mean "max_delay"?)"#
    );
    assert_eq!(
        problem("command = [\"x\"]\n[[listen]]\naddress = \"@a\"\nport = 1\n"),
        r#"/etc/baton/myapp.toml:4:1: unknown key "port" in [[listen]]; expected one of: name, address"#
    );
    // A sub-table is an unknown key too.
    assert_eq!(
        problem("command = [\"x\"]\n[stop.extra]\n"),
        r#"/etc/baton/myapp.toml:2:7: unknown key "extra" in [stop]; expected one of: signal, timeout, message"#
    );
}

#[test]
fn unknown_table_and_far_off_key_get_no_suggestion() {
    let message = problem("command = [\"x\"]\n[logging]\nlevel = 1\n");
    assert_eq!(
        message,
        r#"/etc/baton/myapp.toml:2:2: unknown key "logging" in the top level; expected one of: name, command, directory, workers, environment, listen, readiness, reload, stop, restart, watchdog, limits, canary, metrics, node"#
    );
}

#[test]
fn sections_must_be_tables() {
    assert_eq!(
        problem("command = [\"x\"]\nstop = \"SIGTERM\"\n"),
        r#"/etc/baton/myapp.toml:2:8: stop must be a table, written as a [stop] section, found "SIGTERM""#
    );
}

#[test]
fn inline_tables_and_dotted_keys_work() {
    let config = ok("command = [\"x\"]\nstop = { signal = \"INT\", timeout = \"5s\" }\nrestart.limit = 9\n");
    assert_eq!(config.stop.signal, Signal::SIGINT);
    assert_eq!(config.stop.timeout, Duration::from_secs(5));
    assert_eq!(config.restart.limit, 9);
}

#[test]
fn durations() {
    let config = ok(r#"command = ["x"]
[readiness]
timeout = "1m 30s"
[stop]
timeout = "250ms"
[restart]
delay = "1s"
max_delay = "2min"
window = "1h"
[watchdog]
timeout = "10s"
"#);
    assert_eq!(config.readiness.timeout, Duration::from_secs(90));
    assert_eq!(config.stop.timeout, Duration::from_millis(250));
    assert_eq!(config.restart.delay, Duration::from_secs(1));
    assert_eq!(config.restart.max_delay, Duration::from_secs(120));
    assert_eq!(config.restart.window, Duration::from_secs(3600));
    assert_eq!(config.watchdog, Some(Duration::from_secs(10)));
}

#[test]
fn durations_are_written_as_init_writes_them() {
    for (d, text) in [
        (Duration::ZERO, "0s"),
        (Duration::from_millis(100), "100ms"),
        (Duration::from_secs(60), "60s"),
    ] {
        assert_eq!(Dur(d).to_string(), text);
        assert_eq!(text.parse::<Dur>(), Ok(Dur(d)));
    }
}

#[test]
fn bad_durations() {
    assert_eq!(
        problem("command = [\"x\"]\n[stop]\ntimeout = \"thirty\"\n"),
        r#"/etc/baton/myapp.toml:3:11: [stop] timeout must be a duration like "30s", "250ms" or "1m 30s", found "thirty" (expected number at 0)"#
    );
    assert_eq!(
        problem("command = [\"x\"]\n[readiness]\ntimeout = \"30\"\n"),
        r#"/etc/baton/myapp.toml:3:11: [readiness] timeout must be a duration like "30s", "250ms" or "1m 30s", found "30": add a unit, e.g. "30s""#
    );
    assert_eq!(
        problem("command = [\"x\"]\n[stop]\ntimeout = -5\n"),
        r#"/etc/baton/myapp.toml:3:11: [stop] timeout must be a duration like "30s", "250ms" or "1m 30s", found -5"#
    );
    assert!(
        problem("command = [\"x\"]\n[stop]\ntimeout = 1.5\n")
            .ends_with(r#"write "1.5s" for seconds or "1.5ms" for milliseconds"#)
    );
    assert_eq!(
        ok("command = [\"x\"]\n[stop]\ntimeout = \"1.5s\"\n").stop.timeout,
        Duration::from_millis(1500)
    );
    assert_eq!(
        problem("command = [\"x\"]\n[watchdog]\ntimeout = true\n"),
        r#"/etc/baton/myapp.toml:3:11: [watchdog] timeout must be a duration like "30s", "250ms" or "1m 30s", found true"#
    );
    assert_eq!(
        problem("command = [\"x\"]\n[readiness]\ntimeout = \"0s\"\n"),
        "/etc/baton/myapp.toml:3:11: [readiness] timeout must be greater than 0: a worker needs some time to become ready"
    );
    assert!(
        problem("command = [\"x\"]\n[restart]\ndelay = \"0s\"\n").contains("[restart] delay must be greater than 0")
    );
    assert!(
        problem("command = [\"x\"]\n[restart]\nwindow = \"0s\"\n").contains("[restart] window must be greater than 0")
    );
}

#[test]
fn every_duration_is_bounded() {
    // 2^64-1 seconds parses as a Duration, and adding it to a clock
    // panics: each key must reject it, with its position.
    let huge = "\"18446744073709551615s\"";
    for (section, key) in [
        ("readiness", "timeout"),
        ("readiness", "delay"),
        ("stop", "timeout"),
        ("restart", "delay"),
        ("restart", "max_delay"),
        ("restart", "window"),
        ("watchdog", "timeout"),
    ] {
        let mode = if key == "delay" && section == "readiness" {
            "mode = \"delay\"\n"
        } else {
            ""
        };
        let text = format!("command = [\"x\"]\n[{section}]\n{mode}{key} = {huge}\n");
        let line = if mode.is_empty() { 3 } else { 4 };
        assert_eq!(
            problems(&text),
            vec![format!(
                "/etc/baton/myapp.toml:{line}:{}: [{section}] {key} must be at most 24h, found {}",
                key.len() + 4,
                huge
            )],
            "{text}"
        );
        // The bound itself is accepted...
        let text = format!("command = [\"x\"]\n[{section}]\n{mode}{key} = \"24h\"\n");
        let text = text.replace("[restart]\ndelay", "[restart]\nmax_delay = \"24h\"\ndelay");
        ok(&text);
        // ...and one nanosecond more is not.
        let text = format!("command = [\"x\"]\n[{section}]\n{mode}{key} = \"24h 1ns\"\n");
        assert!(problem(&text).contains("must be at most 24h"), "{text}");
    }
    assert_eq!(MAX_DURATION, Duration::from_secs(24 * 3600));
}

#[test]
fn counts_are_bounded() {
    assert_eq!(ok("command = [\"x\"]\nrestart.limit = 1000\n").restart.limit, 1000);
    assert_eq!(
        problem("command = [\"x\"]\nrestart.limit = 1001\n"),
        "/etc/baton/myapp.toml:2:17: [restart] limit must be a whole number from 0 to 1000, found 1001"
    );
    assert_eq!(
        problem("command = [\"x\"]\nrestart.limit = 4294967296\n"),
        "/etc/baton/myapp.toml:2:17: [restart] limit must be a whole number from 0 to 1000, found 4294967296"
    );
    assert_eq!(ok("command = [\"x\"]\nworkers = 1024\n").workers, 1024);
    assert_eq!(
        problem("command = [\"x\"]\nworkers = 1025\n"),
        "/etc/baton/myapp.toml:2:11: workers must be at most 1024, found 1025"
    );
    assert_eq!(
        problem("command = [\"x\"]\nworkers = 9223372036854775807\n"),
        "/etc/baton/myapp.toml:2:11: workers must be at most 1024, found 9223372036854775807"
    );
}

#[test]
fn watchdog_zero_is_off() {
    assert_eq!(ok("command = [\"x\"]\n[watchdog]\ntimeout = \"0s\"\n").watchdog, None);
    assert_eq!(ok("command = [\"x\"]\n[watchdog]\n").watchdog, None);
}

#[test]
fn signals() {
    let signal = |s: &str| {
        ok(&format!("command = [\"x\"]\n[stop]\nsignal = \"{s}\"\n"))
            .stop
            .signal
    };
    assert_eq!(signal("SIGTERM"), Signal::SIGTERM);
    assert_eq!(signal("TERM"), Signal::SIGTERM);
    assert_eq!(signal("SIGINT"), Signal::SIGINT);
    assert_eq!(signal("quit"), Signal::SIGQUIT);
    assert_eq!(signal("SIGUSR2"), Signal::SIGUSR2);
}

#[test]
fn bad_signals() {
    assert_eq!(
        problem("command = [\"x\"]\n[stop]\nsignal = \"SIGKILL\"\n"),
        "/etc/baton/myapp.toml:3:10: [stop] signal cannot be SIGKILL: it cannot be caught, so workers could not finish their requests; baton sends SIGKILL itself after [stop] timeout"
    );
    assert!(problem("command = [\"x\"]\n[stop]\nsignal = \"KILL\"\n").contains("cannot be SIGKILL"));
    assert!(
        problem("command = [\"x\"]\n[stop]\nsignal = \"STOP\"\n").contains("cannot be SIGSTOP: it suspends a worker")
    );
    assert_eq!(
        problem("command = [\"x\"]\n[stop]\nsignal = 15\n"),
        "/etc/baton/myapp.toml:3:10: [stop] signal must be a string, found 15"
    );
    assert!(
        problem("command = [\"x\"]\n[stop]\nsignal = \"SIGFOO\"\n")
            .contains(r#"[stop] signal "SIGFOO" is not a signal name"#)
    );
}

#[test]
fn workers_forms() {
    let auto = ok("command = [\"x\"]\nworkers = \"auto\"\n").workers;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(auto, cpus.min(MAX_WORKERS));
    assert!(auto >= 1);
    assert_eq!(ok("command = [\"x\"]\nworkers = 1024\n").workers, 1024);
    assert_eq!(
        problem("command = [\"x\"]\nworkers = 1025\n"),
        "/etc/baton/myapp.toml:2:11: workers must be at most 1024, found 1025"
    );
    assert_eq!(
        problem("command = [\"x\"]\nworkers = \"4\"\n"),
        r#"/etc/baton/myapp.toml:2:11: workers must be a positive integer or "auto", found "4"; write it without quotes: workers = 4"#
    );
    assert_eq!(
        problem("command = [\"x\"]\nworkers = \"many\"\n"),
        r#"/etc/baton/myapp.toml:2:11: workers must be a positive integer or "auto", found "many""#
    );
    assert_eq!(
        problem("command = [\"x\"]\nworkers = 2.5\n"),
        r#"/etc/baton/myapp.toml:2:11: workers must be a positive integer or "auto", found 2.5"#
    );
}

#[test]
fn listen_address_forms_round_trip() {
    for (text, expected) in [
        ("127.0.0.1:8080", ListenAddress::Tcp("127.0.0.1:8080".parse().unwrap())),
        ("0.0.0.0:8080", ListenAddress::Tcp("0.0.0.0:8080".parse().unwrap())),
        ("[::1]:8080", ListenAddress::Tcp("[::1]:8080".parse().unwrap())),
        ("[::]:443", ListenAddress::Tcp("[::]:443".parse().unwrap())),
        ("127.0.0.1:0", ListenAddress::Tcp("127.0.0.1:0".parse().unwrap())),
        ("/run/x.sock", ListenAddress::Unix(PathBuf::from("/run/x.sock"))),
        ("@name", ListenAddress::Abstract("name".into())),
    ] {
        let parsed: ListenAddress = text.parse().unwrap();
        assert_eq!(parsed, expected, "{text}");
        assert_eq!(parsed.to_string(), text);
    }
    assert!(matches!(
        "[::1]:8080".parse::<ListenAddress>().unwrap(),
        ListenAddress::Tcp(SocketAddr::V6(_))
    ));
}

#[test]
fn bad_listen_addresses() {
    let err = |s: &str| s.parse::<ListenAddress>().unwrap_err();
    assert_eq!(
        err("8080"),
        r#"a bare port is not an address: write "0.0.0.0:8080" (all IPv4 interfaces) or "[::]:8080" (all interfaces)"#
    );
    assert!(err(":8080").starts_with("a bare port is not an address"));
    assert!(err("localhost:8080").starts_with("host names are not resolved"));
    assert!(err("localhost:8080").contains("\"0.0.0.0:8080\""));
    assert!(err("::1:8080").contains("brackets"));
    assert!(err("127.0.0.1").contains("port is missing"));
    assert!(err("127.0.0.1:99999").contains("between 0 and 65535"));
    assert!(err("run/x.sock").contains("must be absolute"));
    assert!(err("").contains("empty"));
    assert!(err("@").contains("needs a name"));
    assert!(err(&format!("/{}", "a".repeat(107))).contains("at most 107 bytes"));
    assert!(err("[::1]").contains("port is missing"));
    assert!(err(" 127.0.0.1:80").contains("spaces"));
    assert!(err("nonsense").starts_with("expected an IP address and port"));
}

#[test]
fn listen_entries_and_names() {
    let config = ok(r#"command = ["x"]
[[listen]]
address = "127.0.0.1:8080"
[[listen]]
name = "admin"
address = "[::1]:9090"
[[listen]]
address = "/run/myapp.sock"
[[listen]]
address = "@myapp"
"#);
    assert_eq!(
        config.listen,
        vec![
            ListenSpec {
                name: "myapp.socket".into(),
                address: "127.0.0.1:8080".parse().unwrap(),
            },
            ListenSpec {
                name: "admin".into(),
                address: "[::1]:9090".parse().unwrap(),
            },
            ListenSpec {
                name: "myapp.socket".into(),
                address: ListenAddress::Unix("/run/myapp.sock".into()),
            },
            ListenSpec {
                name: "myapp.socket".into(),
                address: ListenAddress::Abstract("myapp".into()),
            },
        ]
    );
    // An inline array of tables works too.
    let inline = ok("command = [\"x\"]\nlisten = [{ address = \"@a\" }, { address = \"@b\", name = \"b\" }]\n");
    assert_eq!(inline.listen.len(), 2);
    assert_eq!(inline.listen[1].name, "b");
}

#[test]
fn listen_name_uses_the_config_name() {
    let config = ok("name = \"shop\"\ncommand = [\"x\"]\n[[listen]]\naddress = \"@a\"\n");
    assert_eq!(config.listen[0].name, "shop.socket");
}

#[test]
fn bad_listen_entries() {
    assert_eq!(
        problem("command = [\"x\"]\n[[listen]]\nname = \"a:b\"\naddress = \"@a\"\n"),
        r#"/etc/baton/myapp.toml:3:8: [[listen]] name "a:b" contains ':', which separates the names in LISTEN_FDNAMES"#
    );
    assert_eq!(
        problem("command = [\"x\"]\n[[listen]]\nname = \"http\"\n"),
        r#"/etc/baton/myapp.toml:2:1: [[listen]] entry has no address; add one like address = "127.0.0.1:8080""#
    );
    assert_eq!(
        problem("command = [\"x\"]\n[listen]\naddress = \"@a\"\n"),
        "/etc/baton/myapp.toml:2:1: listen must be written [[listen]], with double brackets (one entry per socket), not [listen]"
    );
    assert!(
        problem("command = [\"x\"]\nlisten = \"127.0.0.1:80\"\n")
            .starts_with("/etc/baton/myapp.toml:2:10: listen must be [[listen]] sections")
    );
    assert!(
        problem(&format!(
            "command = [\"x\"]\n[[listen]]\nname = \"{}\"\naddress = \"@a\"\n",
            "n".repeat(256)
        ))
        .contains("the limit is 255")
    );
}

#[test]
fn duplicate_listen_addresses() {
    assert_eq!(
        problem("command = [\"x\"]\n[[listen]]\naddress = \"127.0.0.1:80\"\n[[listen]]\naddress = \"127.0.0.1:80\"\n"),
        r#"/etc/baton/myapp.toml:5:11: [[listen]] address "127.0.0.1:80" is listed twice (first at line 3); each socket can be bound once"#
    );
    let overrides = Overrides {
        listen: vec!["@a".parse().unwrap(), "@a".parse().unwrap()],
        ..Overrides::default()
    };
    assert_eq!(
        problems_with("command = [\"x\"]\n", &overrides),
        vec!["command line: --listen @a is given twice; each socket can be bound once"]
    );
}

#[test]
fn memory_sizes() {
    let cases: &[(&str, u64)] = &[
        ("512MiB", 512 << 20),
        ("1GiB", 1 << 30),
        ("1gib", 1 << 30),
        ("500MB", 500_000_000),
        ("500mb", 500_000_000),
        ("2G", 2_000_000_000),
        ("2Gi", 2 << 30),
        ("64K", 64_000),
        ("64KiB", 65_536),
        ("1048576", 1_048_576),
        ("100B", 100),
        ("1.5GiB", 3 << 29),
        ("1.5G", 1_500_000_000),
        ("256 MiB", 256 << 20),
        ("1TiB", 1 << 40),
    ];
    for (text, bytes) in cases {
        assert_eq!(text.parse::<Size>(), Ok(Size(*bytes)), "{text}");
    }
    for bad in [
        "",
        "MiB",
        "12XB",
        "1.2.3G",
        "1.",
        "0",
        "0MiB",
        "1.5",
        "-1G",
        "99999999999999TiB",
    ] {
        assert!(bad.parse::<Size>().is_err(), "{bad:?} should fail");
    }
}

#[test]
fn memory_in_the_file() {
    let memory = |v: &str| ok(&format!("command = [\"x\"]\n[limits]\nmemory = {v}\n")).memory_limit;
    assert_eq!(memory("\"512MiB\""), Some(536_870_912));
    assert_eq!(memory("1048576"), Some(1_048_576));
    assert_eq!(memory("\"1048576\""), Some(1_048_576));
    assert_eq!(
        problem("command = [\"x\"]\n[limits]\nmemory = \"512 megs\"\n"),
        r#"/etc/baton/myapp.toml:3:10: [limits] memory must be a size like "512MiB", "1GiB", "500MB" or a number of bytes, found "512 megs": unknown unit "megs"; use B, K, M, G, T (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"#
    );
    assert!(problem("command = [\"x\"]\n[limits]\nmemory = 0\n").contains("remove the key for no limit"));
    assert!(problem("command = [\"x\"]\n[limits]\nmemory = -5\n").contains("greater than 0, found -5"));
}

#[test]
fn readiness_modes() {
    let config = ok("command = [\"x\"]\n[readiness]\nmode = \"delay\"\n");
    assert_eq!(config.readiness.mode, ReadinessMode::Delay(Duration::from_secs(1)));
    let config = ok("command = [\"x\"]\n[readiness]\nmode = \"delay\"\ndelay = \"3s\"\n");
    assert_eq!(config.readiness.mode, ReadinessMode::Delay(Duration::from_secs(3)));
    let config = ok("command = [\"x\"]\n[readiness]\nmode = \"node-ipc\"\n");
    assert_eq!(config.readiness.mode, ReadinessMode::NodeIpc);
    assert_eq!(
        problem("command = [\"x\"]\n[readiness]\nmode = \"node_ipc\"\n"),
        r#"/etc/baton/myapp.toml:3:8: [readiness] mode must be one of "notify", "delay", "node-ipc", "log", found "node_ipc" (did you mean "node-ipc"?)"#
    );
    assert_eq!(
        problem("command = [\"x\"]\n[readiness]\ndelay = \"2s\"\n"),
        r#"/etc/baton/myapp.toml:3:9: [readiness] delay is only used with mode = "delay", but mode defaults to "notify"; set mode = "delay" or remove delay"#
    );
    assert!(
        problem("command = [\"x\"]\n[readiness]\nmode = \"node-ipc\"\ndelay = \"2s\"\n")
            .contains(r#"but mode is "node-ipc""#)
    );
}

#[test]
fn an_invalid_value_does_not_cause_follow_up_errors() {
    assert_eq!(
        problems("command = [\"x\"]\n[readiness]\nmode = \"ready\"\ndelay = \"1s\"\n[stop]\nmessage = \"bye\"\n"),
        vec![
            r#"/etc/baton/myapp.toml:3:8: [readiness] mode must be one of "notify", "delay", "node-ipc", "log", found "ready""#
        ]
    );
    assert_eq!(
        problems("command = [\"x\"]\n[restart]\ndelay = \"1m\"\nmax_delay = 90\n").len(),
        1
    );
}

#[test]
fn reload_strategy() {
    assert_eq!(
        ok("command = [\"x\"]\n[reload]\nstrategy = \"rolling\"\n").reload,
        ReloadStrategy::Rolling
    );
    assert_eq!(
        problem("command = [\"x\"]\n[reload]\nstrategy = \"all\"\n"),
        r#"/etc/baton/myapp.toml:3:12: [reload] strategy must be one of "parallel", "rolling", found "all""#
    );
}

#[test]
fn stop_message_needs_node_ipc() {
    let config = ok("command = [\"x\"]\n[readiness]\nmode = \"node-ipc\"\n[stop]\nmessage = \"shutdown\"\n");
    assert_eq!(config.stop.message.as_deref(), Some("shutdown"));
    assert_eq!(
        problem("command = [\"x\"]\n[stop]\nmessage = \"shutdown\"\n"),
        r#"/etc/baton/myapp.toml:3:11: [stop] message is sent over Node's IPC channel, so it needs [readiness] mode = "node-ipc", but mode defaults to "notify""#
    );
}

#[test]
fn restart_max_delay_at_least_delay() {
    assert_eq!(
        problem("command = [\"x\"]\n[restart]\ndelay = \"10s\"\nmax_delay = \"5s\"\n"),
        "/etc/baton/myapp.toml:4:13: [restart] max_delay (5s) must be at least [restart] delay (10s)"
    );
    assert_eq!(
        problem("command = [\"x\"]\n[restart]\ndelay = \"1m\"\n"),
        "/etc/baton/myapp.toml:3:9: [restart] max_delay (30s, the default) must be at least [restart] delay (1m)"
    );
    let config = ok("command = [\"x\"]\n[restart]\ndelay = \"5s\"\nmax_delay = \"5s\"\nlimit = 0\n");
    assert_eq!(config.restart.max_delay, Duration::from_secs(5));
    assert_eq!(config.restart.limit, 0);
}

#[test]
fn environment_in_file_order_and_stringified() {
    let config = ok(r#"command = ["x"]
[environment]
ZED = "last letter"
PORT = 8080
RATIO = 0.5
DEBUG = false
"A.B" = "quoted key"
"#);
    assert_eq!(
        config.environment,
        vec![
            ("ZED".into(), "last letter".into()),
            ("PORT".into(), "8080".into()),
            ("RATIO".into(), "0.5".into()),
            ("DEBUG".into(), "false".into()),
            ("A.B".into(), "quoted key".into()),
        ]
    );
}

#[test]
fn bad_environment() {
    assert_eq!(
        problems("command = [\"x\"]\n[environment]\n\"A=B\" = \"x\"\n\"\" = \"y\"\nLIST = [1]\nLISTEN_FDS = \"3\"\n"),
        vec![
            r#"/etc/baton/myapp.toml:3:1: [environment] "A=B" is not a valid variable name: it contains '='"#,
            r#"/etc/baton/myapp.toml:4:1: [environment] "" is not a valid variable name: it is empty"#,
            "/etc/baton/myapp.toml:5:8: [environment] LIST must be a string, number or boolean, found [1]",
            r#"/etc/baton/myapp.toml:6:1: [environment] "LISTEN_FDS" is set by baton for each worker and cannot be replaced"#,
        ]
    );
    assert_eq!(
        problem("command = [\"x\"]\nenvironment = 1\n"),
        "/etc/baton/myapp.toml:2:15: environment must be a table, written as a [environment] section, found 1"
    );
}

#[test]
fn directory_is_made_absolute_against_the_config_dir() {
    let dir = |path: &str, value: &str| {
        parse(
            &format!("command = [\"x\"]\ndirectory = \"{value}\"\n"),
            Path::new(path),
            &Overrides::default(),
        )
        .unwrap()
        .directory
        .unwrap()
    };
    assert_eq!(dir("/etc/baton/a.toml", "/srv/a"), PathBuf::from("/srv/a"));
    assert_eq!(dir("/etc/baton/a.toml", "app"), PathBuf::from("/etc/baton/app"));
    assert_eq!(
        dir("/etc/baton/a.toml", "../srv/current"),
        PathBuf::from("/etc/baton/../srv/current")
    );
    let relative = dir("a.toml", "app");
    assert!(relative.is_absolute());
    assert!(relative.ends_with("app"));
    assert!(problem("command = [\"x\"]\ndirectory = \"\"\n").contains("directory is empty"));
}

#[test]
fn command_problems() {
    assert_eq!(
        problem("name = \"a\"\n"),
        r#"/etc/baton/myapp.toml:1:1: missing required key "command" in the top level; add the program and its arguments, like command = ["node", "server.js"]"#
    );
    assert_eq!(
        problem("command = \"node server.js\"\n"),
        r#"/etc/baton/myapp.toml:1:11: command must be an array of strings like ["node", "server.js"], found "node server.js"; write command = ["node", "server.js"] (no shell is involved)"#
    );
    assert_eq!(
        problem("command = []\n"),
        r#"/etc/baton/myapp.toml:1:11: command is empty; it must be an array of strings like ["node", "server.js"], the program first"#
    );
    assert_eq!(
        problem("command = [\"\", \"a\"]\n"),
        "/etc/baton/myapp.toml:1:12: command[0], the program, is empty"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    // "é" is two bytes; the column of `3` is still 17.
    assert_eq!(
        problem("command = [\"é\", 3]\n"),
        "/etc/baton/myapp.toml:1:17: command[1] must be a string, found 3; quote it"
    );
    assert_eq!(position("aé\nxyé z", 9), (2, 5));
    assert_eq!(position("", 0), (1, 1));
    assert_eq!(position("ab", 99), (1, 3));
    assert_eq!(position("aé", 2), (1, 3), "inside a character");
    assert_eq!(position("a\nb", 1), (1, 2), "the newline ends its line");
    let text = "ab\ncdé f\n\ng";
    let mut p = Positions::new(text);
    // Lookups in any order agree with lookups from scratch.
    for offset in [0, 4, 8, 3, 9, 10, 11, 12, 2, 6, 7] {
        assert_eq!(p.at(offset), position(text, offset), "offset {offset}");
    }
}

#[test]
fn toml_syntax_error_has_a_position() {
    let all = problems("command = [\"x\"]\nworkers = \n");
    assert_eq!(all.len(), 1);
    assert!(
        all[0].starts_with("/etc/baton/myapp.toml:2:11: invalid TOML: "),
        "{}",
        all[0]
    );
    let all = problems("command = [\"x\"]\n[stop]\n[stop]\n");
    assert_eq!(all, vec!["/etc/baton/myapp.toml:3:2: invalid TOML: duplicate key"]);
}

#[test]
fn name_defaults_to_the_file_stem() {
    let config = parse(
        "command = [\"x\"]\n",
        Path::new("/tmp/shop-api.toml"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(config.name, "shop-api");
    let config = parse(
        "name = \"explicit\"\ncommand = [\"x\"]\n",
        Path::new("/tmp/shop-api.toml"),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(config.name, "explicit");
}

#[test]
fn invalid_names() {
    let err = parse(
        "command = [\"x\"]\n",
        Path::new("/tmp/my app.toml"),
        &Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        r#"/tmp/my app.toml:1:1: the name defaults to the file's stem, "my app", which contains ' '; a name may only use letters, digits and _ . @ - because it is used in paths and unit names; set name = "..." in the top level"#
    );
    assert_eq!(
        problem("name = \"my/app\"\ncommand = [\"x\"]\n"),
        r#"/etc/baton/myapp.toml:1:8: name "my/app" contains '/'; a name may only use letters, digits and _ . @ - because it is used in paths and unit names"#
    );
    assert!(problem("name = \"..\"\ncommand = [\"x\"]\n").contains("is not allowed"));
    assert!(problem("name = \"\"\ncommand = [\"x\"]\n").contains("is empty"));
    assert!(problem(&format!("name = \"{}\"\ncommand = [\"x\"]\n", "a".repeat(300))).contains("the limit is 247"));
    assert!(ok("name = \"my_app.v2@blue-1\"\ncommand = [\"x\"]\n").name == "my_app.v2@blue-1");
}

#[test]
fn overrides_replace_listen_workers_and_command() {
    let overrides = Overrides {
        name: None,
        listen: vec!["[::]:9000".parse().unwrap(), "/run/b.sock".parse().unwrap()],
        workers: Some(Workers::Count(3)),
        command: strings(&["python3", "app.py"]),
    };
    let config = parse(FULL, Path::new(FILE), &overrides).unwrap();
    assert_eq!(config.command, strings(&["python3", "app.py"]));
    assert_eq!(config.workers, 3);
    assert_eq!(
        config.listen,
        vec![
            ListenSpec {
                name: "myapp.socket".into(),
                address: "[::]:9000".parse().unwrap(),
            },
            ListenSpec {
                name: "myapp.socket".into(),
                address: ListenAddress::Unix("/run/b.sock".into()),
            },
        ]
    );
    // Empty overrides leave the file alone.
    let config = parse(FULL, Path::new(FILE), &Overrides::default()).unwrap();
    assert_eq!(config.command, strings(&["node", "server.js"]));
    assert_eq!(config.workers, 4);
    assert_eq!(config.listen[0].name, "http");
    // The command line can supply a missing command.
    let overrides = Overrides {
        command: strings(&["x"]),
        workers: Some(Workers::Auto),
        name: Some("renamed".into()),
        ..Overrides::default()
    };
    let config = parse("[[listen]]\naddress = \"@a\"\n", Path::new(FILE), &overrides).unwrap();
    assert_eq!(config.command, strings(&["x"]));
    assert!(config.workers >= 1);
    assert_eq!(config.name, "renamed");
    assert_eq!(config.listen[0].name, "renamed.socket");
}

#[test]
fn bad_overrides_are_command_line_problems() {
    let overrides = Overrides {
        name: Some("a b".into()),
        ..Overrides::default()
    };
    assert_eq!(
        problems_with("command = [\"x\"]\nworkers = 0\n", &overrides),
        vec![
            r#"command line: name "a b" contains ' '; a name may only use letters, digits and _ . @ - because it is used in paths and unit names"#,
            r#"/etc/baton/myapp.toml:2:11: workers must be a positive integer or "auto", found 0"#,
        ]
    );
}

/// `--workers` and `--listen` are parsed by clap with these.
#[test]
fn command_line_values() {
    let workers = |s: &str| s.parse::<Workers>();
    assert_eq!(workers("4"), Ok(Workers::Count(4)));
    assert_eq!(workers("auto"), Ok(Workers::Auto));
    assert_eq!(Workers::Auto.to_string(), "auto");
    assert!(Workers::Auto.count() >= 1);
    assert_eq!(
        workers("0"),
        Err(r#"must be a positive integer or "auto", found 0"#.to_owned())
    );
    assert_eq!(
        workers("lots"),
        Err(r#"must be a positive integer or "auto", found "lots""#.to_owned())
    );
    assert_eq!(workers("2000"), Err("must be at most 1024, found 2000".to_owned()));
}

#[test]
fn quick_mode() {
    let overrides = Overrides {
        listen: vec!["127.0.0.1:8080".parse().unwrap()],
        workers: Some(Workers::Count(2)),
        command: strings(&["/usr/bin/node", "server.js"]),
        ..Overrides::default()
    };
    let config = load(&Source::Quick, &overrides).unwrap();
    assert_eq!(
        config,
        Config {
            name: "node".into(),
            source: None,
            command: strings(&["/usr/bin/node", "server.js"]),
            directory: None,
            workers: 2,
            environment: vec![],
            listen: vec![ListenSpec {
                name: "node.socket".into(),
                address: "127.0.0.1:8080".parse().unwrap(),
            }],
            readiness: Readiness::default(),
            reload: ReloadStrategy::Parallel,
            stop: Stop::default(),
            restart: Restart::default(),
            watchdog: None,
            memory_limit: None,
            canary: super::Canary::default(),
            metrics: super::Metrics::default(),
            node: super::Node::default(),
        }
    );
    // Listening is optional (socket activation may provide sockets).
    let config = load(
        &Source::Quick,
        &Overrides {
            command: strings(&["./my server"]),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(config.name, "my_server");
    assert!(config.listen.is_empty());
    assert_eq!(config.workers, 1);
    let config = load(
        &Source::Quick,
        &Overrides {
            name: Some("web".into()),
            command: strings(&["node"]),
            ..Overrides::default()
        },
    )
    .unwrap();
    assert_eq!(config.name, "web");
}

#[test]
fn quick_mode_needs_a_command() {
    let err = load(&Source::Quick, &Overrides::default()).unwrap_err();
    let ConfigError::Invalid(problems) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].file, "command line");
    assert_eq!((problems[0].line, problems[0].column), (0, 0));
    assert_eq!(
        err.to_string(),
        "command line: no command given: write it after --, as in `baton run -- node server.js`, or use a config file"
    );
}

#[test]
fn load_reads_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.toml");
    std::fs::write(&path, "command = [\"sleep\", \"1\"]\ndirectory = \"app\"\n").unwrap();
    let config = load(&Source::File(path.clone()), &Overrides::default()).unwrap();
    assert_eq!(config.name, "svc");
    assert_eq!(config.source, Some(path));
    assert_eq!(config.directory, Some(dir.path().join("app")));

    let missing = dir.path().join("missing.toml");
    let err = load(&Source::File(missing.clone()), &Overrides::default()).unwrap_err();
    assert!(matches!(&err, ConfigError::Read { path, .. } if *path == missing));
    assert_eq!(
        crate::exit::chain(&err),
        format!(
            "cannot read {}: No such file or directory (os error 2)",
            missing.display()
        )
    );

    let err = load(&Source::File(dir.path().to_owned()), &Overrides::default()).unwrap_err();
    assert_eq!(
        crate::exit::chain(&err),
        format!("cannot read {}: Is a directory (os error 21)", dir.path().display())
    );
}

#[test]
fn invalid_utf8_has_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, b"command = [\"x\"]\n# caf\xc3\xa9 \xff\xfe\n").unwrap();
    let err = load(&Source::File(path.clone()), &Overrides::default()).unwrap_err();
    assert_eq!(
        crate::exit::chain(&err),
        format!(
            "{}:2:8: invalid UTF-8 (byte 0xff); a config file must be UTF-8 text",
            path.display()
        )
    );
    // A truncated sequence at the very end too.
    std::fs::write(&path, b"command = [\"x\"]\xe2\x82").unwrap();
    let err = load(&Source::File(path.clone()), &Overrides::default()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with(":1:16: invalid UTF-8 (byte 0xe2); a config file must be UTF-8 text")
    );
}

#[test]
fn huge_files_are_refused_without_reading_them_whole() {
    let err = load(&Source::File("/dev/zero".into()), &Overrides::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot read /dev/zero: it is larger than 16777216 bytes, which no config needs"
    );
}

#[test]
fn config_paths() {
    assert_eq!(path_in(None, "myapp"), PathBuf::from("/etc/baton/myapp.toml"));
    assert_eq!(
        path_in(Some("".into()), "myapp"),
        PathBuf::from("/etc/baton/myapp.toml")
    );
    assert_eq!(
        path_in(Some("/tmp/cfg".into()), "myapp"),
        PathBuf::from("/tmp/cfg/myapp.toml")
    );
    let expected = std::env::var_os(CONFIG_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/etc/baton"), PathBuf::from)
        .join("x.toml");
    assert_eq!(path_for_name("x"), expected);
}

#[test]
fn problem_display() {
    let p = Problem {
        file: "/etc/baton/a.toml".into(),
        line: 3,
        column: 11,
        message: "boom".into(),
    };
    assert_eq!(p.to_string(), "/etc/baton/a.toml:3:11: boom");
    let p = Problem {
        file: COMMAND_LINE.into(),
        line: 0,
        column: 0,
        message: "boom".into(),
    };
    assert_eq!(p.to_string(), "command line: boom");
}

#[test]
fn suggestions() {
    const TOP_KEYS: &[&str] = &[
        "name",
        "command",
        "directory",
        "workers",
        "environment",
        "listen",
        "readiness",
        "reload",
        "stop",
        "restart",
        "watchdog",
        "limits",
    ];
    assert_eq!(closest("workerz", TOP_KEYS), Some("workers"));
    assert_eq!(closest("Command", TOP_KEYS), Some("command"));
    assert_eq!(closest("timout", &["signal", "timeout", "message"]), Some("timeout"));
    assert_eq!(closest("zzzz", TOP_KEYS), None);
    assert_eq!(closest("readinesss", TOP_KEYS), Some("readiness"));
    assert_eq!(closest("retsart", TOP_KEYS), Some("restart"), "a swap is one edit");
    assert_eq!(closest(&"x".repeat(1 << 20), TOP_KEYS), None);
    assert_eq!(closest("key000049", TOP_KEYS), None);
}

#[test]
fn canary_section() {
    let config = ok(r#"command = ["x"]
[canary]
hold = "10m"
check = ["./check-error-rate", "--max", "1%"]
check_timeout = "45s"
"#);
    assert_eq!(
        config.canary,
        super::Canary {
            hold: Some(Duration::from_secs(600)),
            check: Some(strings(&["./check-error-rate", "--max", "1%"])),
            check_timeout: Duration::from_secs(45),
        }
    );
    assert_eq!(ok(r#"command = ["x"]"#).canary, super::Canary::default());
    assert_eq!(super::Canary::default().check_timeout, Duration::from_secs(30));
}

#[test]
fn canary_section_problems_have_positions() {
    let all = problems(
        r#"command = ["x"]
[canary]
hold = "soon"
check = ["", 3]
check_timeout = "0s"
checks = 1
"#,
    );
    assert_eq!(all.len(), 5, "{all:#?}");
    assert!(all[0].contains(":3:") && all[0].contains("[canary] hold"), "{all:#?}");
    assert!(
        all.iter()
            .any(|p| p.contains("[canary] check[0], the program, is empty")),
        "{all:#?}"
    );
    assert!(
        all.iter().any(|p| p.contains("[canary] check[1] must be a string")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|p| p.contains("[canary] check_timeout must be greater than 0")),
        "{all:#?}"
    );
    assert!(all.iter().any(|p| p.contains("checks")), "{all:#?}");
}

#[test]
fn metrics_section() {
    let c = ok(
        "command = [\"x\"]\n[metrics]\ntextfile = \"/var/lib/prometheus/node-exporter\"\nlisten = \"127.0.0.1:9464\"\n",
    );
    assert_eq!(
        c.metrics,
        super::Metrics {
            textfile: Some(PathBuf::from("/var/lib/prometheus/node-exporter")),
            listen: Some("127.0.0.1:9464".parse().unwrap()),
        }
    );
    assert_eq!(ok(r#"command = ["x"]"#).metrics, super::Metrics::default());
    let p = problem("command = [\"x\"]\n[metrics]\ntextfile = \"prom\"\n");
    assert!(p.contains("[metrics] textfile must be an absolute directory"), "{p}");
    assert!(p.contains(":3:"), "at the value: {p}");
    let p = problem("command = [\"x\"]\n[metrics]\nlisten = \"/run/m.sock\"\n");
    assert!(p.contains("[metrics] listen must be an IP address and port"), "{p}");
    let p =
        problem("command = [\"x\"]\n[[listen]]\naddress = \"0.0.0.0:8080\"\n[metrics]\nlisten = \"127.0.0.1:8080\"\n");
    assert!(p.contains("is one of the app's [[listen]] sockets"), "{p}");
    let p = problem("command = [\"x\"]\n[metrics]\npath = \"/metrics\"\n");
    assert!(p.contains("path"), "unknown keys are errors: {p}");
}

#[test]
fn node_inherit_listen_implies_node_ipc_and_its_keys_need_it() {
    let c = ok("command = [\"node\", \"s.js\"]\n[node]\ninherit_listen = true\n");
    assert_eq!(c.readiness.mode, ReadinessMode::NodeIpc);
    assert_eq!(
        c.node,
        Node {
            inherit_listen: true,
            ..Node::default()
        }
    );
    let c = ok(
        "command = [\"node\", \"s.js\"]\n[readiness]\nmode = \"delay\"\n[node]\ninherit_listen = true\ndrain = true\ndrain_grace = \"2s\"\n",
    );
    assert_eq!(c.readiness.mode, ReadinessMode::Delay(Duration::from_secs(1)));
    assert!(c.node.drain);
    assert_eq!(c.node.drain_grace, Duration::from_secs(2));
    // The stop message works with the implied mode.
    let c = ok("command = [\"x\"]\n[stop]\nmessage = \"shutdown\"\n[node]\ninherit_listen = true\nwait_ready = true\n");
    assert_eq!(c.stop.message.as_deref(), Some("shutdown"));
    assert!(c.node.wait_ready);

    let p = problem("command = [\"x\"]\n[readiness]\nmode = \"notify\"\n[node]\ninherit_listen = true\n");
    assert!(
        p.starts_with(&format!(
            "{FILE}:5:18: [node] inherit_listen tells readiness over Node's IPC channel"
        )),
        "{p}"
    );
    let p = problem("command = [\"x\"]\n[node]\ndrain = true\n");
    assert!(
        p.contains(":3:9: [node] drain works through baton's preload, which only inherit_listen = true loads"),
        "{p}"
    );
    let p = problem("command = [\"x\"]\n[node]\ninherit_listen = false\nwait_ready = true\n");
    assert!(p.contains("[node] wait_ready works through baton's preload"), "{p}");
    let p =
        problem("command = [\"x\"]\n[readiness]\nmode = \"delay\"\n[node]\ninherit_listen = true\nwait_ready = true\n");
    assert!(
        p.contains("[node] wait_ready = true means the app sends 'ready'"),
        "{p}"
    );
    let p = problem("command = [\"x\"]\n[node]\ninherit_listen = true\ndrain_grace = \"0s\"\n");
    assert!(p.contains("[node] drain_grace must be greater than 0"), "{p}");
    let p = problem("command = [\"x\"]\n[node]\ninherit_listen = \"yes\"\n");
    assert!(p.contains("[node] inherit_listen"), "{p}");
    let p = problem("command = [\"x\"]\n[node]\ninherit = true\n");
    assert!(
        p.contains(
            "unknown key \"inherit\" in [node]; expected one of: inherit_listen, wait_ready, drain, drain_grace"
        ),
        "{p}"
    );
    let p = problem("command = [\"x\"]\n[environment]\nBATON_LISTEN_ADDRESSES = \"x\"\n");
    assert!(p.contains("is set by baton for each worker"), "{p}");
}

#[test]
fn log_mode_pattern_settle_and_notify_socket() {
    let config =
        ok("command = [\"x\"]\n[readiness]\nmode = \"log\"\npattern = \"Uvicorn running on\"\nsettle = \"2s\"\n");
    match &config.readiness.mode {
        ReadinessMode::Log(p) => {
            assert_eq!(p.as_str(), "Uvicorn running on");
            assert!(p.is_match("INFO:     Uvicorn running on socket"));
            assert!(!p.is_match("INFO:     Started server process"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(config.readiness.settle, Duration::from_secs(2));
    assert_eq!(config.readiness.notify_socket, crate::config::NotifySocket::Path);
    let config = ok("command = [\"x\"]\n[readiness]\nnotify_socket = \"abstract\"\n");
    assert_eq!(config.readiness.notify_socket, crate::config::NotifySocket::Abstract);
    assert_eq!(ok("command = [\"x\"]\n").readiness.settle, Duration::ZERO);

    assert_eq!(
        problem("command = [\"x\"]\n[readiness]\nmode = \"log\"\n"),
        r#"/etc/baton/myapp.toml:3:8: [readiness] mode = "log" needs a pattern: the regular expression a line of the worker's output must match, e.g. pattern = "Listening on""#
    );
    assert_eq!(
        problem("command = [\"x\"]\n[readiness]\npattern = \"ready\"\n"),
        r#"/etc/baton/myapp.toml:3:11: [readiness] pattern is only used with mode = "log", but mode defaults to "notify"; set mode = "log" or remove pattern"#
    );
    let bad = problem("command = [\"x\"]\n[readiness]\nmode = \"log\"\npattern = \"listening (on\"\n");
    assert!(
        bad.starts_with("/etc/baton/myapp.toml:4:11: [readiness] pattern is not a valid regular expression: "),
        "{bad}"
    );
    assert!(!bad.contains('\n'), "{bad}");
    // A bad pattern is one problem, not a second one about the missing pattern.
    assert_eq!(
        problems("command = [\"x\"]\n[readiness]\nmode = \"log\"\npattern = \"(\"\n").len(),
        1
    );
    let long = "a".repeat(crate::config::types::MAX_PATTERN + 1);
    assert!(
        problem(&format!(
            "command = [\"x\"]\n[readiness]\nmode = \"log\"\npattern = \"{long}\"\n"
        ))
        .contains("at most 1024 are allowed")
    );
    // Small to write, too big to compile.
    assert!(
        problem("command = [\"x\"]\n[readiness]\nmode = \"log\"\npattern = \"\\\\w{1000}{1000}\"\n")
            .contains("not a valid regular expression")
    );
    assert!(problem("command = [\"x\"]\n[readiness]\nmode = \"log\"\npattern = \"\"\n").contains("must not be empty"));
    // Patterns that match the empty string match every line too.
    for every in [".*", "x?", "^", "$", "a|", "(?m)^", "\\\\s*"] {
        let text = format!("command = [\"x\"]\n[readiness]\nmode = \"log\"\npattern = \"{every}\"\n");
        assert!(
            problem(&text).contains("matches every line"),
            "{every}: {}",
            problem(&text)
        );
    }
    // An empty line is a (strange) ready line, but not every line.
    let empty_line = "command = [\"x\"]\n[readiness]\nmode = \"log\"\npattern = \"^$\"\n";
    assert!(parse(empty_line, Path::new(FILE), &Overrides::default()).is_ok());
    assert!(
        problem("command = [\"x\"]\n[readiness]\nnotify_socket = \"file\"\n")
            .contains(r#"must be one of "path", "abstract""#)
    );
}
