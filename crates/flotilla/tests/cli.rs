//! End-to-end tests of the client CLI: the built `flotilla` binary against a live cluster that
//! speaks the etcd v3 API.
//!
//! The tests only see an endpoint list ([`TestCluster::endpoints`], wrapped by [`Cli`]): they run
//! against a `flotilla server` process by default, and against a real etcd 3.4 with
//! `FLOTILLA_CLI_TEST_BACKEND=etcd` (the CLI speaks the plain etcd v3 API).
//! Every wait polls with a deadline; no test sleeps for a fixed time.
// Real processes over real sockets: wall-clock deadlines and a reader thread are the point
// here, unlike the deterministic crates the workspace-wide bans are written for.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const ETCD_BIN: &str = "/usr/bin/etcd";
const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const STEP_DEADLINE: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(25);

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

/// A free localhost port (released before use; the cluster start retries if it was taken).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// A server process (single-member etcd or single-node `flotilla server`) in a temp dir,
/// killed on drop.
struct Server {
    child: Child,
    client_endpoint: String,
    log_path: PathBuf,
    _data: tempfile::TempDir,
}

/// Which server the tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Flotilla,
    Etcd,
}

fn backend_from_env() -> Backend {
    match std::env::var("FLOTILLA_CLI_TEST_BACKEND").as_deref() {
        Ok("etcd") => Backend::Etcd,
        _ => Backend::Flotilla,
    }
}

impl Server {
    fn spawn(backend: Backend) -> Server {
        match backend {
            Backend::Etcd => Server::etcd(),
            Backend::Flotilla => Server::flotilla(),
        }
    }

    fn etcd() -> Server {
        assert!(
            Path::new(ETCD_BIN).exists(),
            "{ETCD_BIN} is missing: the CLI tests need a real etcd 3.4; \
             run `apt-get install etcd-server etcd-client`"
        );
        let data = tempfile::tempdir().expect("temp dir");
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let log_path = data.path().join("etcd.log");
        let log = std::fs::File::create(&log_path).expect("etcd log file");
        let child = Command::new(ETCD_BIN)
            .arg("--name=t")
            .arg(format!("--data-dir={}", data.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=t={peer_url}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        Server {
            child,
            client_endpoint: client_url.trim_start_matches("http://").to_string(),
            log_path,
            _data: data,
        }
    }

    fn flotilla() -> Server {
        let data = tempfile::tempdir().expect("temp dir");
        let client_endpoint = format!("127.0.0.1:{}", free_port());
        let log_path = data.path().join("flotilla.log");
        let log = std::fs::File::create(&log_path).expect("flotilla log file");
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("server")
            .arg("--node-id=1")
            .arg(format!("--data-dir={}", data.path().join("data").display()))
            .arg(format!("--peer-listen=127.0.0.1:{}", free_port()))
            .arg(format!("--client-listen={client_endpoint}"))
            .arg(format!("--admin-listen=127.0.0.1:{}", free_port()))
            .arg("--log-level=warn")
            .env("FLOTILLA_RAFT__TICK_MS", "20")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start flotilla server");
        Server {
            child,
            client_endpoint,
            log_path,
            _data: data,
        }
    }

    fn endpoint(&self) -> String {
        self.client_endpoint.clone()
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster the tests talk to. Tests use only [`TestCluster::endpoints`].
struct TestCluster {
    endpoints: Vec<String>,
    _server: Server,
}

impl TestCluster {
    fn cli(&self) -> Cli {
        Cli::new(&self.endpoints)
    }
}

/// Starts the cluster under test (see [`backend_from_env`]) and waits (polling, with a
/// deadline) until it answers.
fn start_cluster() -> TestCluster {
    start_backend(backend_from_env())
}

fn start_backend(backend: Backend) -> TestCluster {
    let mut last_log = String::new();
    // A free port can be grabbed by someone else before the server binds it: try a few times.
    for _ in 0..3 {
        let mut server = Server::spawn(backend);
        let endpoints = vec![server.endpoint()];
        let cli = Cli::new(&endpoints);
        let deadline = Instant::now() + STARTUP_DEADLINE;
        while Instant::now() < deadline {
            if server.exited() {
                break;
            }
            let probe = cli.run(&[
                "kv",
                "put",
                "__ready__",
                "1",
                "--timeout",
                "1s",
                "--retry-timeout",
                "1s",
            ]);
            if probe.status.success() {
                cli.run(&["kv", "del", "__ready__"]);
                return TestCluster {
                    endpoints,
                    _server: server,
                };
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        last_log = server.log();
    }
    panic!("{backend:?} did not start within {STARTUP_DEADLINE:?}; its log:\n{last_log}");
}

/// Runs the `flotilla` binary against a fixed endpoint list.
struct Cli {
    endpoints: String,
}

impl Cli {
    fn new(endpoints: &[String]) -> Cli {
        Cli {
            endpoints: endpoints.join(","),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        command
            .args(args)
            .env("FLOTILLA_ENDPOINTS", &self.endpoints)
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run flotilla")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run flotilla");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait for flotilla")
    }

    /// Runs and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_success(args, &output);
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// Runs with `--output json`, asserts success, parses each stdout line as JSON.
    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        self.ok(&args)
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON object per line"))
            .collect()
    }

    /// Runs, asserts exit code 1, returns stderr.
    fn err(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "expected `flotilla {}` to fail; stdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stderr).expect("utf-8 stderr")
    }

    /// The store's current revision.
    fn revision(&self) -> i64 {
        self.json(&["kv", "get", "any-key-at-all"])[0]["header"]["revision"]
            .as_i64()
            .expect("revision")
    }

    fn keys_under(&self, prefix: &str) -> Vec<String> {
        self.ok(&["kv", "get", prefix, "--prefix", "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

fn assert_success(args: &[&str], output: &Output) {
    assert!(
        output.status.success(),
        "`flotilla {}` failed with {}; stdout: {}; stderr: {}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + STEP_DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("timed out waiting for {what} to exit");
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Lines of a child's stdout, delivered through a channel so reads can have a deadline.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(lines: &mpsc::Receiver<String>, what: &str) -> String {
    lines
        .recv_timeout(STEP_DEADLINE)
        .unwrap_or_else(|_| panic!("no line from {what} within {STEP_DEADLINE:?}"))
}

/// Sends SIGINT (what Ctrl-C sends) without unsafe code.
fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -INT failed");
}

fn etcdctl(cluster: &TestCluster, args: &[&str]) -> Command {
    assert!(
        Path::new(ETCDCTL_BIN).exists(),
        "{ETCDCTL_BIN} is missing: run `apt-get install etcd-client`"
    );
    let mut command = Command::new(ETCDCTL_BIN);
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cluster.endpoints.join(",")))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    command
}

// ---------------------------------------------------------------------------------------------
// kv
// ---------------------------------------------------------------------------------------------

#[test]
fn put_get_del_print_etcdctl_style_text() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    assert_eq!(cli.ok(&["kv", "put", "greeting", "hello"]), "OK\n");
    assert_eq!(cli.ok(&["kv", "get", "greeting"]), "greeting\nhello\n");
    assert_eq!(
        cli.ok(&["kv", "put", "greeting", "hi", "--prev-kv"]),
        "OK\ngreeting\nhello\n"
    );
    assert_eq!(cli.ok(&["kv", "get", "missing"]), "");
    assert_eq!(
        cli.ok(&["kv", "del", "greeting", "--prev-kv"]),
        "1\ngreeting\nhi\n"
    );
    assert_eq!(cli.ok(&["kv", "del", "greeting"]), "0\n");
    assert_eq!(cli.ok(&["kv", "get", "greeting"]), "");
}

#[test]
fn get_flags_select_sort_and_count() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    for (key, value) in [("app/b", "2"), ("app/a", "3"), ("app/c", "1"), ("apq", "x")] {
        cli.ok(&["kv", "put", key, value]);
    }
    let first_rev = cli.revision();
    cli.ok(&["kv", "put", "app/a", "changed"]);

    assert_eq!(
        cli.ok(&["kv", "get", "app/", "--prefix", "--keys-only"]),
        "app/a\napp/b\napp/c\n"
    );
    assert_eq!(
        cli.ok(&["kv", "get", "app/", "--prefix", "--count-only"]),
        "3\n"
    );
    assert_eq!(
        cli.ok(&[
            "kv",
            "get",
            "app/",
            "--prefix",
            "--limit",
            "2",
            "--keys-only"
        ]),
        "app/a\napp/b\n"
    );
    assert_eq!(
        cli.ok(&[
            "kv",
            "get",
            "app/",
            "--prefix",
            "--sort-by",
            "value",
            "--keys-only"
        ]),
        "app/c\napp/b\napp/a\n"
    );
    assert_eq!(
        cli.ok(&[
            "kv",
            "get",
            "app/",
            "--prefix",
            "--order",
            "descend",
            "--keys-only"
        ]),
        "app/c\napp/b\napp/a\n"
    );
    assert_eq!(
        cli.ok(&["kv", "get", "app/c", "--from-key", "--keys-only"]),
        "app/c\napq\n"
    );
    let rev = first_rev.to_string();
    assert_eq!(cli.ok(&["kv", "get", "app/a", "--rev", &rev]), "app/a\n3\n");
    assert_eq!(
        cli.ok(&["kv", "get", "app/a", "--serializable"]),
        "app/a\nchanged\n"
    );
}

#[test]
fn json_output_has_one_object_per_result_with_utf8_strings() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    let put = cli.json(&["kv", "put", "j", "v1"]);
    assert_eq!(put.len(), 1);
    let put_rev = put[0]["header"]["revision"].as_i64().expect("revision");
    let got = cli.json(&["kv", "get", "j"]);
    assert_eq!(got.len(), 1);
    let kv = &got[0]["kvs"][0];
    assert_eq!(kv["key"], "j");
    assert_eq!(kv["value"], "v1");
    assert_eq!(kv["mod_revision"].as_i64(), Some(put_rev));
    assert_eq!(kv["version"].as_i64(), Some(1));
    assert_eq!(got[0]["count"].as_i64(), Some(1));
    let del = cli.json(&["kv", "del", "j"]);
    assert_eq!(del[0]["deleted"].as_i64(), Some(1));
}

#[test]
fn txn_reads_etcdctl_format_from_stdin_and_takes_the_right_branch() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    cli.ok(&["kv", "put", "flag", "on"]);

    let txn = "value(\"flag\") = \"on\"\n\nput flag off\nget flag\n\nput flag broken\n";
    let output = cli.run_with_stdin(&["kv", "txn"], txn);
    assert_success(&["kv", "txn"], &output);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "SUCCESS\n\nOK\n\nflag\noff\n"
    );

    // Now the compare fails: the failure branch runs.
    let output = cli.run_with_stdin(&["kv", "txn"], txn);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "FAILURE\n\nOK\n");
    assert_eq!(cli.ok(&["kv", "get", "flag"]), "flag\nbroken\n");

    let rev = cli.revision();
    let txn = format!("mod(\"flag\") < \"{}\"\n\ndel flag\n\n", rev + 1);
    let output = cli.run_with_stdin(&["kv", "txn", "--output", "json"], &txn);
    let json: Value = serde_json::from_slice(&output.stdout).expect("txn json");
    assert_eq!(json["succeeded"], true);
    assert_eq!(json["responses"][0]["delete"]["deleted"].as_i64(), Some(1));

    let output = cli.run_with_stdin(&["kv", "txn"], "size(\"flag\") = \"1\"\n\n\n");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown target"));
}

#[test]
fn watch_prints_events_from_a_revision_until_max_events() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    let start = cli.revision() + 1;
    cli.ok(&["kv", "put", "w/a", "1"]);
    cli.ok(&["kv", "put", "w/b", "2"]);
    cli.ok(&["kv", "del", "w/a"]);
    cli.ok(&["kv", "put", "other", "x"]);
    let start = start.to_string();
    assert_eq!(
        cli.ok(&[
            "kv",
            "watch",
            "w/",
            "--prefix",
            "--rev",
            &start,
            "--max-events",
            "3"
        ]),
        "PUT\nw/a\n1\nPUT\nw/b\n2\nDELETE\nw/a\n"
    );
    let events = cli.json(&[
        "kv",
        "watch",
        "w/b",
        "--rev",
        &start,
        "--max-events",
        "1",
        "--prev-kv",
    ]);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "PUT");
    assert_eq!(events[0]["kv"]["value"], "2");
}

#[test]
fn watch_sees_writes_made_after_it_started() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    let mut watch = cli
        .command(&["kv", "watch", "live", "--max-events", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start watch");
    // Keep writing until the watch has seen one: it may start after the first put.
    let status = {
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            cli.ok(&["kv", "put", "live", "now"]);
            if let Some(status) = watch.try_wait().expect("try_wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "watch saw no event");
            std::thread::sleep(POLL_INTERVAL);
        }
    };
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut watch.stdout.take().expect("stdout"), &mut out)
        .expect("read watch output");
    assert_eq!(out, "PUT\nlive\nnow\n");
}

// ---------------------------------------------------------------------------------------------
// lease
// ---------------------------------------------------------------------------------------------

#[test]
fn lease_grant_attach_ttl_keepalive_list_revoke() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    let granted = cli.ok(&["lease", "grant", "60"]);
    let id = granted
        .strip_prefix("lease ")
        .and_then(|rest| rest.strip_suffix(" granted with TTL(60s)\n"))
        .unwrap_or_else(|| panic!("unexpected grant output {granted:?}"))
        .to_string();
    assert_eq!(id.len(), 16);

    cli.ok(&["kv", "put", "leased", "v", "--lease", &id]);
    let ttl = cli.ok(&["lease", "ttl", &id, "--keys"]);
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.ends_with(", attached keys([leased])\n"), "{ttl}");
    let ttl = cli.json(&["lease", "ttl", &id]);
    assert_eq!(ttl[0]["granted_ttl"].as_i64(), Some(60));

    assert_eq!(
        cli.ok(&["lease", "keepalive", &id, "--once"]),
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert!(cli.ok(&["lease", "list"]).contains(&format!("{id}\n")));
    let list = cli.json(&["lease", "list"]);
    assert!(list[0]["leases"]
        .as_array()
        .expect("leases")
        .contains(&Value::from(id.clone())));

    assert_eq!(
        cli.ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    // Revoking deletes the attached key.
    assert_eq!(cli.ok(&["kv", "get", "leased"]), "");
    assert_eq!(
        cli.ok(&["lease", "ttl", &id]),
        format!("lease {id} already expired\n")
    );
}

#[test]
fn grpc_errors_print_code_and_message() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    let stderr = cli.err(&["lease", "revoke", "1234abcd"]);
    assert!(
        stderr.starts_with("error: NotFound: ") && stderr.contains("lease not found"),
        "{stderr}"
    );
    let future = (cli.revision() + 1000).to_string();
    let stderr = cli.err(&["kv", "get", "k", "--rev", &future]);
    assert!(stderr.starts_with("error: OutOfRange: "), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// lock
// ---------------------------------------------------------------------------------------------

#[test]
fn lock_runs_the_command_with_fencing_env_and_returns_its_exit_code() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    let output = cli.run(&[
        "lock",
        "jobs",
        "--ttl",
        "5",
        "--",
        "sh",
        "-c",
        "echo \"$FLOTILLA_LOCK_KEY $FLOTILLA_LOCK_REVISION\"; exit 7",
    ]);
    assert_eq!(output.status.code(), Some(7));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (key, revision) = stdout.trim().split_once(' ').expect("key and revision");
    assert!(key.starts_with("jobs/"), "{key}");
    let revision: i64 = revision.parse().expect("numeric revision");
    assert!(revision > 0);
    // The lease was revoked on exit: the lock key is gone.
    assert!(cli.keys_under("jobs/").is_empty());

    // A second acquisition gets a larger fencing revision.
    let again = cli.ok(&[
        "lock",
        "jobs",
        "--",
        "sh",
        "-c",
        "echo $FLOTILLA_LOCK_REVISION",
    ]);
    assert!(again.trim().parse::<i64>().expect("revision") > revision);
}

#[test]
fn lock_waits_for_an_etcdctl_lock_holder() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    let mut holder = etcdctl(&cluster, &["lock", "shared"])
        .spawn()
        .expect("start etcdctl lock");
    let holder_lines = line_reader(&mut holder);
    let holder_key = next_line(&holder_lines, "etcdctl lock");
    assert!(holder_key.starts_with("shared/"), "{holder_key}");
    let holder_rev = cli.json(&["kv", "get", &holder_key])[0]["kvs"][0]["create_revision"]
        .as_i64()
        .expect("holder revision");

    let mut waiter = cli
        .command(&[
            "lock",
            "shared",
            "--",
            "sh",
            "-c",
            "echo $FLOTILLA_LOCK_REVISION",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start flotilla lock");
    wait_until("flotilla to queue behind etcdctl", || {
        cli.keys_under("shared/").len() == 2
    });
    assert!(
        waiter.try_wait().expect("try_wait").is_none(),
        "flotilla lock ran while etcdctl held the lock"
    );

    interrupt(&holder);
    wait_exit(&mut holder, "etcdctl lock");
    let status = wait_exit(&mut waiter, "flotilla lock");
    assert!(status.success());
    let waiter_lines = line_reader(&mut waiter);
    let waiter_rev: i64 = next_line(&waiter_lines, "flotilla lock")
        .parse()
        .expect("revision");
    assert!(waiter_rev > holder_rev);
}

#[test]
fn etcdctl_lock_waits_for_a_flotilla_lock_holder() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    // The command holds the lock until its stdin closes.
    let mut holder = cli
        .command(&[
            "lock",
            "shared",
            "--",
            "sh",
            "-c",
            "echo held; read line; exit 0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start flotilla lock");
    let holder_lines = line_reader(&mut holder);
    assert_eq!(next_line(&holder_lines, "flotilla lock"), "held");

    let mut waiter = etcdctl(&cluster, &["lock", "shared", "echo", "etcdctl-acquired"])
        .spawn()
        .expect("start etcdctl lock");
    wait_until("etcdctl to queue behind flotilla", || {
        cli.keys_under("shared/").len() == 2
    });
    assert!(
        waiter.try_wait().expect("try_wait").is_none(),
        "etcdctl lock ran while flotilla held the lock"
    );

    drop(holder.stdin.take());
    assert!(wait_exit(&mut holder, "flotilla lock").success());
    assert!(wait_exit(&mut waiter, "etcdctl lock").success());
    let waiter_lines = line_reader(&mut waiter);
    assert_eq!(next_line(&waiter_lines, "etcdctl lock"), "etcdctl-acquired");
}

// ---------------------------------------------------------------------------------------------
// config
// ---------------------------------------------------------------------------------------------

#[test]
fn config_set_get_history_and_rollback() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    let mut revisions = Vec::new();
    for value in ["v1", "v2", "v3"] {
        let out = cli.ok(&["config", "set", "db.url", value]);
        let revision: i64 = out
            .trim()
            .strip_prefix("OK revision ")
            .expect("OK revision N")
            .parse()
            .expect("number");
        revisions.push(revision);
    }
    assert_eq!(
        cli.ok(&["kv", "get", "/config/db.url"]),
        "/config/db.url\nv3\n"
    );
    assert_eq!(cli.ok(&["config", "get", "db.url"]), "v3\n");
    let first = revisions[0].to_string();
    assert_eq!(
        cli.ok(&["config", "get", "db.url", "--revision", &first]),
        "v1\n"
    );

    let history = cli.ok(&["config", "history", "db.url"]);
    let expected: String = revisions
        .iter()
        .zip(["v1", "v2", "v3"])
        .map(|(rev, value)| format!("{rev}\t{value}\n"))
        .collect();
    assert_eq!(history, expected);

    let rolled = cli.json(&["config", "rollback", "db.url", "--to-revision", &first]);
    let new_rev = rolled[0]["revision"].as_i64().expect("revision");
    assert!(new_rev > revisions[2]);
    assert_eq!(cli.ok(&["config", "get", "db.url"]), "v1\n");
    let history = cli.json(&["config", "history", "db.url"]);
    let values: Vec<_> = history
        .iter()
        .map(|kv| kv["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["v1", "v2", "v3", "v1"]);

    // A custom prefix is a different key space.
    cli.ok(&["config", "set", "db.url", "other", "--prefix", "/staging/"]);
    assert_eq!(cli.ok(&["config", "get", "db.url"]), "v1\n");
    assert_eq!(
        cli.ok(&["config", "get", "db.url", "--prefix", "/staging/"]),
        "other\n"
    );
}

#[test]
fn config_rollback_refuses_missing_and_compacted_revisions() {
    let cluster = start_cluster();
    let cli = cluster.cli();
    let before = cli.revision().to_string();
    cli.ok(&["config", "set", "feature", "a"]);
    let stderr = cli.err(&["config", "rollback", "feature", "--to-revision", &before]);
    assert!(stderr.contains("did not exist at revision"), "{stderr}");

    cli.ok(&["config", "set", "feature", "b"]);
    let now = cli.revision().to_string();
    assert_eq!(
        cli.ok(&["kv", "compact", &now, "--physical"]),
        format!("compacted revision {now}\n")
    );
    let stderr = cli.err(&["config", "rollback", "feature", "--to-revision", &before]);
    assert!(stderr.contains("compacted"), "{stderr}");
    // History stops at the compaction point instead of failing.
    assert_eq!(
        cli.ok(&["config", "history", "feature"]),
        format!("{now}\tb\n")
    );
}

// ---------------------------------------------------------------------------------------------
// cluster
// ---------------------------------------------------------------------------------------------

/// Membership commands against etcd: Flotilla has no replicated address book yet, so it
/// cannot add a member at a new peer URL (see the Flotilla variant below).
#[test]
fn cluster_members_status_and_learner_membership_changes() {
    let cluster = start_backend(Backend::Etcd);
    let cli = cluster.cli();
    let members = cli.ok(&["cluster", "members"]);
    let lines: Vec<_> = members.lines().collect();
    assert_eq!(lines.len(), 1, "{members}");
    let fields: Vec<_> = lines[0].split(", ").collect();
    assert_eq!(fields[1], "started");
    assert_eq!(fields[4], format!("http://{}", cluster.endpoints[0]));
    assert_eq!(fields[5], "false");
    let self_id = fields[0].to_string();

    let status = cli.json(&["cluster", "status"]);
    assert_eq!(status[0]["id"], Value::from(self_id.clone()));
    assert_eq!(status[0]["is_leader"], true);

    // A learner does not count towards quorum, so a 1-member cluster stays available.
    let peer = format!("http://127.0.0.1:{}", free_port());
    let added = cli.ok(&["cluster", "add", &peer, "--learner"]);
    assert!(added.starts_with("Member "), "{added}");
    let learner_id = added.split(' ').nth(1).expect("member id").to_string();
    let members = cli.json(&["cluster", "members"]);
    let learner = members[0]["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["id"] == learner_id.as_str())
        .expect("the learner is listed")
        .clone();
    assert_eq!(learner["is_learner"], true);
    assert_eq!(learner["peer_urls"][0], Value::from(peer));

    // It never started, so it cannot be in sync: promotion is refused by the server.
    let stderr = cli.err(&["cluster", "promote", &learner_id]);
    assert!(
        stderr.starts_with("error: FailedPrecondition: "),
        "{stderr}"
    );

    // MoveLeader reaches the leader (found via Status) and the server judges the target.
    let stderr = cli.err(&["cluster", "transfer-leader", &learner_id]);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("no endpoint"),
        "the leader was not found: {stderr}"
    );

    assert!(cli
        .ok(&["cluster", "remove", &learner_id])
        .starts_with(&format!("Member {learner_id} removed from cluster ")));
    assert_eq!(cli.ok(&["cluster", "members"]).lines().count(), 1);
}

#[test]
fn cluster_members_and_status_against_flotilla() {
    let cluster = start_backend(Backend::Flotilla);
    let cli = cluster.cli();
    let members = cli.ok(&["cluster", "members"]);
    let lines: Vec<_> = members.lines().collect();
    assert_eq!(lines.len(), 1, "{members}");
    let fields: Vec<_> = lines[0].split(", ").collect();
    assert_eq!(u64::from_str_radix(fields[0], 16).unwrap(), 1, "{members}");
    assert_eq!(fields[4], format!("http://{}", cluster.endpoints[0]));
    assert_eq!(fields[5], "false");
    let status = cli.json(&["cluster", "status"]);
    assert_eq!(status[0]["is_leader"], true);
    // An address outside the configured cluster is refused with the reason.
    let stderr = cli.err(&["cluster", "add", "http://127.0.0.1:1", "--learner"]);
    assert!(
        stderr.starts_with("error: FailedPrecondition: "),
        "{stderr}"
    );
    assert_eq!(cli.ok(&["cluster", "members"]).lines().count(), 1);
}

// ---------------------------------------------------------------------------------------------
// failover
// ---------------------------------------------------------------------------------------------

#[test]
fn failover_skips_a_dead_endpoint_listed_first() {
    let cluster = start_cluster();
    let dead = format!("127.0.0.1:{}", free_port());
    let mut endpoints = vec![dead.clone()];
    endpoints.extend(cluster.endpoints.iter().cloned());
    let cli = Cli::new(&endpoints);
    cli.ok(&["kv", "put", "failover", "works"]);
    assert_eq!(cli.ok(&["kv", "get", "failover"]), "failover\nworks\n");

    // With only dead endpoints the CLI gives up at the total deadline with the gRPC code.
    let started = Instant::now();
    let stderr = Cli::new(&[dead]).err(&[
        "kv",
        "get",
        "failover",
        "--timeout",
        "200ms",
        "--retry-timeout",
        "1s",
    ]);
    assert!(stderr.starts_with("error: Unavailable: "), "{stderr}");
    assert!(started.elapsed() < STEP_DEADLINE);
}
