//! The mapping, key by key, with the machine described by [`Facts`]: none
//! of these tests touches the filesystem.

#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::import::pm2::keys::RemarkKind;

const BASE: &str = "/srv/app";

fn request() -> Request {
    Request {
        file: PathBuf::from("/srv/app/ecosystem.config.js"),
        listen: Vec::new(),
        env: None,
        user: None,
        unit_dir: PathBuf::from("/etc/systemd/system"),
        config_dir: PathBuf::from("/etc/baton"),
        force: false,
        dry_run: false,
        baton: PathBuf::from("/usr/bin/baton"),
        systemd: crate::systemd::version::SystemdVersion::BASELINE,
    }
}

/// Plans `app` as the only app of /srv/app/ecosystem.config.js.
fn plan_of(req: &Request, facts: &Facts, app: Value) -> Planned {
    let ctx = Ctx {
        req,
        file: Path::new("/srv/app/ecosystem.config.js"),
        base: Path::new(BASE),
        apps: 1,
    };
    plan(&ctx, facts, 0, &app, &mut Vec::new())
}

/// Plans an app with a script that exists and a port, plus `keys`.
fn planned(keys: Value) -> Planned {
    let mut app = json!({"name": "web", "script": "app.js", "port": 3000});
    app.as_object_mut().unwrap().extend(keys.as_object().unwrap().clone());
    plan_of(&request(), &facts_with(&[("app.js", false)], &[]), app)
}

/// [`planned`], run by python3: an app baton's Node preload cannot help.
fn planned_not_node(keys: Value) -> Planned {
    let mut keys = keys;
    keys.as_object_mut()
        .unwrap()
        .insert("interpreter".into(), json!("python3"));
    planned(keys)
}

fn ok(p: &Planned) -> &Plan {
    p.plan.as_ref().unwrap()
}

/// The remarks about `key`, as "note: ..." or "not mapped: ...".
fn remarks(p: &Planned, key: &str) -> Vec<String> {
    p.remarks
        .iter()
        .filter(|r| r.key == key)
        .map(|r| {
            let kind = match r.kind {
                RemarkKind::Note => "note",
                RemarkKind::NotMapped => "not mapped",
            };
            format!("{kind}: {}", r.text)
        })
        .collect()
}

#[test]
fn instances_are_workers_and_max_or_zero_is_one_per_cpu() {
    let p = planned(json!({"instances": 4}));
    assert_eq!(ok(&p).workers, Some((Workers::Count(4), "instances: 4".to_owned())));
    let p = planned(json!({"instances": "3"}));
    assert_eq!(ok(&p).workers, Some((Workers::Count(3), "instances: \"3\"".to_owned())));
    let p = planned(json!({"instances": "max"}));
    assert_eq!(ok(&p).workers, Some((Workers::Auto, "instances: \"max\"".to_owned())));
    let p = planned(json!({"instances": 0}));
    assert_eq!(ok(&p).workers.as_ref().unwrap().0, Workers::Auto);
    assert!(p.remarks.is_empty(), "{:?}", p.remarks);
    let p = planned(json!({"instances": -1}));
    assert_eq!(ok(&p).workers.as_ref().unwrap().0, Workers::Auto);
    let [r] = &remarks(&p, "instances")[..] else {
        panic!("{:?}", p.remarks)
    };
    assert!(r.starts_with("note: -1 means one worker per CPU but 1 in PM2"), "{r}");
    let p = planned(json!({"instances": "many"}));
    assert_eq!(ok(&p).workers, None);
    assert_eq!(
        remarks(&p, "instances"),
        ["not mapped: \"many\" is not a number or \"max\"; workers = 1"]
    );
}

#[test]
fn fork_and_cluster_both_mean_workers_and_anything_else_is_a_remark() {
    for mode in ["fork", "fork_mode", "cluster", "cluster_mode"] {
        let p = planned(json!({"exec_mode": mode}));
        assert!(p.remarks.is_empty(), "{mode}: {:?}", p.remarks);
    }
    let p = planned(json!({"execMode": "threads"}));
    assert_eq!(
        remarks(&p, "execMode"),
        ["not mapped: \"threads\" is not fork or cluster (either one means `workers` processes in baton)"]
    );
}

#[test]
fn wait_ready_is_node_ipc_and_unlocks_the_shutdown_message() {
    let p = planned_not_node(json!({}));
    assert_eq!(ok(&p).node_ipc, None);
    assert!(!ok(&p).node);
    let p = planned_not_node(json!({"waitReady": true, "shutdown_with_message": true}));
    assert_eq!(ok(&p).node_ipc.as_deref(), Some("waitReady"));
    assert_eq!(ok(&p).stop_message.as_deref(), Some("shutdown_with_message"));
    let p = planned_not_node(json!({"shutdown_with_message": true}));
    assert_eq!(ok(&p).stop_message, None);
    let [r] = &remarks(&p, "shutdown_with_message")[..] else {
        panic!("{:?}", p.remarks)
    };
    assert!(r.starts_with("not mapped: baton sends the 'shutdown' message over Node's IPC channel"));
    let p = planned(json!({"wait_ready": "yes"}));
    assert_eq!(ok(&p).node_ipc, None);
    assert_eq!(remarks(&p, "wait_ready"), ["not mapped: \"yes\" is not true or false"]);
}

#[test]
fn a_node_app_gets_the_preload_and_its_ipc_channel() {
    let p = planned(json!({"shutdown_with_message": true, "listen_timeout": 500}));
    assert!(ok(&p).node, "app.js is run by node");
    assert_eq!(ok(&p).node_ipc, None, "no wait_ready: the preload says ready");
    assert_eq!(ok(&p).stop_message.as_deref(), Some("shutdown_with_message"));
    assert_eq!(
        ok(&p).readiness_timeout,
        Some((Duration::from_millis(500), "listen_timeout: 500".to_owned()))
    );
    let p = planned(json!({"wait_ready": true}));
    assert!(ok(&p).node);
    assert_eq!(ok(&p).node_ipc.as_deref(), Some("wait_ready"));
    for interpreter in ["node", "/usr/bin/node", "nodejs", "node@20"] {
        let p = planned(json!({ "interpreter": interpreter }));
        assert!(ok(&p).node, "{interpreter}");
    }
}

#[test]
fn a_listen_timeout_shorter_than_the_ready_delay_needs_wait_ready() {
    let p = planned_not_node(json!({"listen_timeout": 500}));
    assert_eq!(ok(&p).readiness_timeout, None);
    assert!(remarks(&p, "listen_timeout")[0].starts_with("not mapped: 500ms: without wait_ready"));
    let p = planned_not_node(json!({"listen_timeout": 1000}));
    assert_eq!(
        ok(&p).readiness_timeout,
        None,
        "1s, the ready delay itself, is too short"
    );
    let p = planned_not_node(json!({"listen_timeout": 1001}));
    assert_eq!(
        ok(&p).readiness_timeout,
        Some((Duration::from_millis(1001), "listen_timeout: 1001".to_owned()))
    );
    let p = planned_not_node(json!({"listen_timeout": 500, "wait_ready": true}));
    assert_eq!(
        ok(&p).readiness_timeout,
        Some((Duration::from_millis(500), "listen_timeout: 500".to_owned()))
    );
    let p = planned_not_node(json!({"listen_timeout": 0, "wait_ready": true}));
    assert_eq!(ok(&p).readiness_timeout, None);
    assert_eq!(
        remarks(&p, "listen_timeout"),
        ["not mapped: 0 would fail every start; baton's default, 60s, is used"]
    );
}

#[test]
fn kill_timeout_is_the_stop_timeout() {
    let p = planned(json!({"kill_timeout": 5000}));
    assert_eq!(
        ok(&p).stop_timeout,
        Some((Duration::from_secs(5), "kill_timeout: 5000".to_owned()))
    );
    let p = planned(json!({"killTimeout": "250"}));
    assert_eq!(
        ok(&p).stop_timeout,
        Some((Duration::from_millis(250), "killTimeout: \"250\"".to_owned()))
    );
    let p = planned(json!({"kill_timeout": "soon"}));
    assert_eq!(ok(&p).stop_timeout, None);
    assert_eq!(
        remarks(&p, "kill_timeout"),
        ["not mapped: \"soon\" is not a number of milliseconds"]
    );
}

#[test]
fn max_memory_restart_units_are_powers_of_1024_as_in_pm2() {
    let p = planned(json!({"max_memory_restart": "300M"}));
    assert_eq!(
        ok(&p).memory,
        Some((
            300 << 20,
            "max_memory_restart: \"300M\"; PM2's K, M, G are KiB, MiB, GiB".to_owned()
        ))
    );
    let p = planned(json!({"max_memory_restart": 1000}));
    assert_eq!(ok(&p).memory, Some((1000, "max_memory_restart: 1000".to_owned())));
    let p = planned(json!({"max_memory_restart": "2048"}));
    assert_eq!(ok(&p).memory, Some((2048, "max_memory_restart: \"2048\"".to_owned())));
    let p = planned(json!({"max_memory_restart": 0}));
    assert_eq!(ok(&p).memory, None);
    assert_eq!(remarks(&p, "max_memory_restart"), ["not mapped: 0 sets no limit"]);
    let p = planned(json!({"max_memory_restart": "300MB"}));
    assert_eq!(ok(&p).memory, None);
    assert!(remarks(&p, "max_memory_restart")[0].starts_with("not mapped: \"300MB\" is not a size PM2 understands"));
}

#[test]
fn restart_delays_become_the_backoff() {
    let p = planned(json!({"restart_delay": 2000, "max_restarts": 10}));
    assert_eq!(
        ok(&p).restart_delay,
        Some((
            Duration::from_secs(2),
            "restart_delay: 2000; PM2 waited this long each time, baton doubles it per crash".to_owned()
        ))
    );
    assert_eq!(ok(&p).restart_limit, Some((10, "max_restarts: 10".to_owned())));
    let p = planned(json!({"restart_delay": 2000, "exp_backoff_restart_delay": 100}));
    assert_eq!(
        ok(&p).restart_delay,
        Some((
            Duration::from_millis(100),
            "exp_backoff_restart_delay: 100; doubles per crash".to_owned()
        ))
    );
    assert_eq!(
        remarks(&p, "restart_delay"),
        ["not mapped: exp_backoff_restart_delay sets [restart] delay (baton's backoff is always exponential)"]
    );
    let p = planned(json!({"restart_delay": 0, "max_restarts": 1.5}));
    assert_eq!(ok(&p).restart_delay, None);
    assert!(remarks(&p, "restart_delay")[0].starts_with("note: 0 (restart at once)"));
    assert_eq!(remarks(&p, "max_restarts"), ["not mapped: 1.5 is not a whole number"]);
}

#[test]
fn env_variants_are_merged_only_when_selected() {
    let app = json!({
        "name": "web", "script": "app.js",
        "env": {"PORT": 3000, "MODE": "dev", "DEBUG": true},
        "env_production": {"MODE": "prod"},
        "env_staging": {"MODE": "staging"},
    });
    let p = plan_of(&request(), &Facts::default(), app.clone());
    let env = &ok(&p).environment;
    assert_eq!(env["MODE"], "dev");
    assert_eq!(env["DEBUG"], "true");
    assert_eq!(env["PORT"], "3000");
    assert_eq!(ok(&p).listen, ["0.0.0.0:3000"]);
    assert_eq!(ok(&p).listen_from, "env.PORT");
    assert_eq!(
        remarks(&p, "env_production"),
        ["not mapped: used only with `--env production`, as with `pm2 start --env production`"]
    );

    let req = Request {
        env: Some("production".to_owned()),
        ..request()
    };
    let p = plan_of(&req, &Facts::default(), app);
    assert_eq!(ok(&p).environment["MODE"], "prod");
    assert!(remarks(&p, "env_production").is_empty());
    assert_eq!(
        remarks(&p, "env_staging"),
        ["not mapped: not selected: --env production was given"]
    );

    let p = plan_of(&req, &Facts::default(), json!({"script": "app.js", "port": 80}));
    assert_eq!(
        remarks(&p, "env"),
        ["note: this app has no env_production, so --env production adds nothing to it"]
    );
}

#[test]
fn variables_baton_sets_or_cannot_pass_are_remarks() {
    let p = planned(json!({"env": {"LISTEN_FDS": "3", "A=B": "x", "NESTED": {"x": 1}, "OK": "yes"}}));
    assert_eq!(ok(&p).environment.get("OK").map(String::as_str), Some("yes"));
    assert!(!ok(&p).environment.contains_key("LISTEN_FDS"));
    assert_eq!(
        remarks(&p, "env.LISTEN_FDS"),
        ["not mapped: baton sets LISTEN_FDS for each worker"]
    );
    assert_eq!(remarks(&p, "env.A=B"), ["not mapped: not a valid variable name"]);
    assert_eq!(
        remarks(&p, "env.NESTED"),
        ["not mapped: {\"x\":1} is not a string, number or boolean"]
    );
}

#[test]
fn an_app_needs_a_listen_address() {
    let p = plan_of(
        &request(),
        &Facts::default(),
        json!({"name": "web", "script": "app.js"}),
    );
    let errors = p.plan.unwrap_err();
    assert_eq!(
        errors,
        [
            "no listen address: a PM2 app binds its own port, but baton's socket unit must know it: set env.PORT (or port) in the app, or pass --listen ADDR"
        ]
    );
    let req = Request {
        listen: vec!["127.0.0.1:8080".to_owned()],
        ..request()
    };
    let p = plan_of(
        &req,
        &Facts::default(),
        json!({"name": "web", "script": "app.js", "port": "http"}),
    );
    assert_eq!(ok(&p).listen, ["127.0.0.1:8080"]);
    assert_eq!(ok(&p).listen_from, "--listen");
    let p = planned(json!({"port": "http"}));
    assert_eq!(p.plan.unwrap_err()[0], "port is \"http\", not a port number (1-65535)");
}

#[test]
fn keys_baton_has_no_equivalent_for_are_named_with_the_reason() {
    let p = planned(json!({
        "watch": true,
        "out_file": "/var/log/web.log",
        "cron_restart": "0 3 * * *",
        "autorestart": true,
        "colour": "red",
        "gid": "www",
    }));
    assert!(p.plan.is_ok());
    assert_eq!(
        remarks(&p, "watch"),
        ["not mapped: baton reloads when you run `systemctl reload web` (from your deploy), not on file changes"]
    );
    assert_eq!(
        remarks(&p, "out_file"),
        ["not mapped: journald has it all: `journalctl -u web` (-f to follow, BATON_WORKER=N for one worker)"]
    );
    assert!(remarks(&p, "cron_restart")[0].contains("systemctl reload web"));
    assert!(remarks(&p, "autorestart").is_empty());
    assert_eq!(remarks(&p, "colour"), ["not mapped: not a PM2 key baton knows"]);
    assert_eq!(
        remarks(&p, "gid"),
        ["not mapped: add Group= with `systemctl edit web.service`"]
    );
    let keys: Vec<&str> = p.remarks.iter().map(|r| r.key.as_str()).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "the remarks are sorted by key");
}

#[test]
fn names_are_made_safe_for_units_and_must_be_unique() {
    let p = planned(json!({"name": "my app@1"}));
    assert_eq!(ok(&p).name, "my-app-1");
    assert_eq!(ok(&p).pm2_name.as_deref(), Some("my app@1"));
    assert_eq!(p.label, "my-app-1");
    let p = plan_of(
        &request(),
        &Facts::default(),
        json!({"script": "srv/api.js", "port": 80}),
    );
    assert_eq!(ok(&p).name, "api");
    assert_eq!(
        remarks(&p, "name"),
        ["note: not set; \"api\", the script's name, is used, as PM2 does"]
    );

    let req = request();
    let ctx = Ctx {
        req: &req,
        file: Path::new("/srv/app/ecosystem.config.js"),
        base: Path::new(BASE),
        apps: 2,
    };
    let app = json!({"name": "web", "script": "app.js", "port": 80});
    let mut taken = Vec::new();
    assert!(plan(&ctx, &Facts::default(), 0, &app, &mut taken).plan.is_ok());
    let second = plan(&ctx, &Facts::default(), 1, &app, &mut taken);
    assert_eq!(second.label, "app 2");
    assert_eq!(
        second.plan.unwrap_err(),
        ["another app in this file is already called \"web\"; give each app its own name"]
    );
    let p = plan(&ctx, &Facts::default(), 2, &json!(["x"]), &mut taken);
    assert_eq!(p.label, "app 3");
    assert_eq!(p.plan.unwrap_err(), ["the app is [\"x\"], not an object of PM2 keys"]);
}

/// Facts in which /srv/app exists and holds `files` (name, is a binary).
fn facts_with(files: &[(&str, bool)], in_path: &[&str]) -> Facts {
    Facts {
        home: Some("/home/deploy".to_owned()),
        dirs: [PathBuf::from(BASE)].into(),
        files: files.iter().map(|(f, b)| (Path::new(BASE).join(f), *b)).collect(),
        in_path: in_path.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn runner_of(facts: &Facts, app: Value) -> (Runner, Vec<String>, Vec<String>) {
    let p = plan_of(&request(), facts, app);
    let notes = remarks(&p, "script");
    let plan = p.plan.unwrap();
    (plan.runner, plan.command, notes)
}

fn interpreter(name: &str, why: Option<&str>) -> Runner {
    Runner::Interpreter {
        name: name.to_owned(),
        why: why.map(str::to_owned),
    }
}

#[test]
fn the_interpreter_is_resolved_as_pm2_resolves_it() {
    let facts = facts_with(
        &[("app.js", false), ("server", true), ("run", false)],
        &["npm", "server"],
    );
    let app = |script: &str, extra: Value| {
        let mut app = json!({"name": "web", "script": script, "port": 80});
        app.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        app
    };

    let (runner, command, notes) = runner_of(
        &facts,
        app(
            "app.js",
            json!({"node_args": "--max-old-space-size=512", "args": ["--x", 1]}),
        ),
    );
    assert_eq!(runner, interpreter("node", Some("PM2's default for .js files")));
    assert_eq!(command, ["node", "--max-old-space-size=512", "app.js", "--x", "1"]);
    assert!(notes.is_empty(), "{notes:?}");

    // A binary in cwd runs directly, as ./NAME even when PATH has one too.
    let (runner, command, _) = runner_of(&facts, app("server", json!({})));
    assert_eq!(runner, Runner::Direct("a binary, as PM2 runs it"));
    assert_eq!(command, ["./server"]);

    let (runner, command, _) = runner_of(&facts, app("run", json!({})));
    assert_eq!(
        runner,
        interpreter("node", Some("PM2's default for a script that is not a binary"))
    );
    assert_eq!(command, ["node", "run"]);

    // A bare name that is no file in cwd but a program in PATH (npm start).
    let (runner, command, notes) = runner_of(&facts, app("npm", json!({"args": "start"})));
    assert_eq!(runner, Runner::Direct("found in PATH"));
    assert_eq!(command, ["npm", "start"]);
    assert!(notes.is_empty(), "{notes:?}");

    let (runner, command, notes) = runner_of(&facts, app("missing", json!({})));
    assert_eq!(runner, interpreter("node", Some("PM2's default")));
    assert_eq!(command, ["node", "missing"]);
    assert_eq!(
        notes,
        ["note: /srv/app/missing does not exist on this machine; `baton check` fails until it does"]
    );

    let p = plan_of(
        &request(),
        &facts,
        app("server", json!({"interpreter": "none", "node_args": "--x"})),
    );
    assert_eq!(ok(&p).runner, Runner::Direct("interpreter \"none\""));
    assert_eq!(
        remarks(&p, "node_args"),
        ["not mapped: the script runs directly, with no interpreter to pass them to (PM2 drops them too)"]
    );

    // An interpreter named in the app: npm in PATH is no longer the script.
    let (runner, command, notes) = runner_of(&facts, app("npm", json!({"interpreter": "bash"})));
    assert_eq!(runner, interpreter("bash", None));
    assert_eq!(command, ["bash", "npm"]);
    assert_eq!(notes.len(), 1, "{notes:?}");

    let p = plan_of(
        &request(),
        &facts,
        app("app.js", json!({"exec_interpreter": "node@18.1.0"})),
    );
    assert_eq!(ok(&p).runner, interpreter("node", None));
    assert!(
        remarks(&p, "exec_interpreter")[0].starts_with("note: \"node@18.1.0\" asked PM2 for a Node version from nvm")
    );

    let p = plan_of(&request(), &facts, app("worker.py", json!({})));
    assert_eq!(ok(&p).command, ["python3", "worker.py"]);
    assert_eq!(ok(&p).environment["PYTHONUNBUFFERED"], "1");
    assert_eq!(remarks(&p, "script").len(), 2, "{:?}", p.remarks);
}

#[test]
fn cwd_starts_at_the_file_and_tilde_is_home() {
    let facts = facts_with(&[], &[]);
    let p = plan_of(
        &request(),
        &facts,
        json!({"name": "web", "script": "app.js", "port": 80, "cwd": "~/app/./current"}),
    );
    assert_eq!(ok(&p).directory, PathBuf::from("/home/deploy/app/current"));
    assert_eq!(ok(&p).directory_from.as_deref(), Some("cwd"));
    assert_eq!(
        remarks(&p, "cwd"),
        ["note: /home/deploy/app/current does not exist on this machine; `baton check` fails until it does"]
    );
    let facts = Facts {
        dirs: [PathBuf::from("/srv/releases")].into(),
        ..facts
    };
    let p = plan_of(
        &request(),
        &facts,
        json!({"name": "web", "script": "app.js", "port": 80, "cwd": "../releases"}),
    );
    assert_eq!(ok(&p).directory, PathBuf::from("/srv/releases"));
    assert!(remarks(&p, "cwd").is_empty());
    let p = plan_of(
        &request(),
        &Facts::default(),
        json!({"name": "web", "script": "app.js", "port": 80, "cwd": 3}),
    );
    assert_eq!(ok(&p).directory, PathBuf::from(BASE));
    assert_eq!(ok(&p).directory_from, None);
}

#[test]
fn the_questions_for_facts_are_the_paths_plan_looks_at() {
    let app = json!({"exec": "bin/www", "cwd": "~/x"});
    let q = questions(&app, Path::new(BASE), Some("/home/d"));
    assert_eq!(q.directory, PathBuf::from("/home/d/x"));
    assert_eq!(q.script.as_deref(), Some("bin/www"));
    let q = questions(&json!({"script": ""}), Path::new(BASE), None);
    assert_eq!(q.directory, PathBuf::from(BASE));
    assert_eq!(q.script, None);
}

#[test]
fn uid_or_else_the_user_flag_is_the_unit_user() {
    let p = planned(json!({"uid": 33}));
    assert_eq!(ok(&p).user.as_deref(), Some("33"));
    let req = Request {
        user: Some("www-data".to_owned()),
        ..request()
    };
    let p = plan_of(
        &req,
        &Facts::default(),
        json!({"script": "app.js", "port": 80, "user": true}),
    );
    assert_eq!(ok(&p).user.as_deref(), Some("www-data"));
    assert_eq!(remarks(&p, "user"), ["not mapped: true is not a user name or id"]);
}
