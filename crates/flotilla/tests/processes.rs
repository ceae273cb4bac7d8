//! A 3-node cluster of separate `flotilla server` processes on 127.0.0.1, driven by the real
//! `etcdctl` (Debian's etcd-client; scripts/test installs it) and by the Rust `etcd-client`
//! crate: every etcdctl command a user would type, bad input, and `kill -9` of the leader
//! during a stream of puts. Every wait polls with a deadline.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    args: Vec<String>,
    client: String,
    child: Option<Child>,
}

/// Separate `flotilla server` processes; all killed on drop.
struct ProcCluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, Node>,
    env: Vec<(String, String)>,
}

impl ProcCluster {
    fn start(n: u64, env: &[(&str, &str)]) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let initial: Vec<String> = (1..=n)
            .map(|id| {
                let (peer, client, _) = ports[(id - 1) as usize];
                format!("{id}=http://127.0.0.1:{peer}|http://127.0.0.1:{client}")
            })
            .collect();
        let mut c = ProcCluster {
            nodes: BTreeMap::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([("FLOTILLA_RAFT__TICK_MS".to_string(), "20".to_string())])
                .collect(),
            dir,
        };
        for id in 1..=n {
            let (peer, client, admin) = ports[(id - 1) as usize];
            let data: PathBuf = c.dir.path().join(format!("node{id}"));
            let args = vec![
                "server".to_string(),
                format!("--node-id={id}"),
                format!("--data-dir={}", data.display()),
                format!("--peer-listen=127.0.0.1:{peer}"),
                format!("--client-listen=127.0.0.1:{client}"),
                format!("--admin-listen=127.0.0.1:{admin}"),
                format!("--initial-cluster={}", initial.join(",")),
                "--log-level=warn".to_string(),
            ];
            c.nodes.insert(
                id,
                Node {
                    args,
                    client: format!("127.0.0.1:{client}"),
                    child: None,
                },
            );
            c.spawn(id);
        }
        c.wait_ready();
        c
    }

    fn spawn(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{id}.log")))
            .unwrap();
        let node = self.nodes.get_mut(&id).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(&node.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
    }

    /// `kill -9`: no shutdown path runs.
    fn kill9(&mut self, id: u64) {
        let mut child = self.nodes.get_mut(&id).unwrap().child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn endpoints(&self) -> String {
        self.live()
            .map(|(_, n)| n.client.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn live(&self) -> impl Iterator<Item = (&u64, &Node)> {
        self.nodes.iter().filter(|(_, n)| n.child.is_some())
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for id in self.nodes.keys() {
            let log = std::fs::read_to_string(self.dir.path().join(format!("node{id}.log")))
                .unwrap_or_default();
            out += &format!("--- node{id}.log (tail)\n");
            let lines: Vec<&str> = log.lines().collect();
            out += &lines[lines.len().saturating_sub(20)..].join("\n");
            out += "\n";
        }
        out
    }

    /// Polls until a write succeeds through every live node.
    fn wait_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        for (_, n) in self.live() {
            loop {
                let out = etcdctl(&n.client, &["put", "__ready__", "1"]);
                if out.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster not ready: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        etcdctl(&self.endpoints(), args)
    }

    /// Runs etcdctl and returns stdout, failing the test on a non-zero exit.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The leader's node id, from Maintenance.Status (etcdctl endpoint status).
    fn leader(&self) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let out = self.etcdctl(&["endpoint", "status", "-w", "json"]);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if let Some(l) = v[0]["Status"]["leader"].as_u64().filter(|&l| l != 0) {
                    return l;
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for n in self.nodes.values_mut() {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn etcdctl_path() -> &'static str {
    if Command::new("etcdctl").arg("version").output().is_err() {
        panic!("etcdctl not found: apt-get install etcd-client (./scripts/test does this)");
    }
    "etcdctl"
}

fn etcdctl(endpoints: &str, args: &[&str]) -> Output {
    Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn etcdctl_kv_txn_watch_lease_lock_and_cluster_commands_work() {
    let c = ProcCluster::start(3, &[]);
    assert_eq!(c.ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(c.ok(&["get", "foo"]), "foo\nbar\n");
    c.ok(&["put", "fob", "baz"]);
    assert_eq!(
        c.ok(&["get", "--prefix", "fo", "--keys-only"]),
        "fob\n\nfoo\n\n"
    );

    // Txn from stdin, etcdctl's interactive format: compares, success ops, failure ops.
    let mut txn = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.endpoints()))
        .arg("txn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    txn.stdin
        .take()
        .unwrap()
        .write_all(b"value(\"foo\") = \"bar\"\n\nput foo qux\n\nget foo\n\n")
        .unwrap();
    let out = txn.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "SUCCESS\n\nOK\n");
    assert_eq!(c.ok(&["get", "foo", "--print-value-only"]), "qux\n");

    // Watch from revision 1 replays history, then the delete arrives live.
    let mut watch = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", c.endpoints()))
        .args(["watch", "foo", "--rev=1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let expect_history = ["PUT", "foo", "bar", "PUT", "foo", "qux"];
    while lines.len() < expect_history.len() {
        lines.push(rx.recv_timeout(DEADLINE).expect("watch history"));
    }
    assert_eq!(lines, expect_history);
    assert_eq!(c.ok(&["del", "foo"]), "1\n");
    let mut live = Vec::new();
    while live.len() < 2 {
        live.push(rx.recv_timeout(DEADLINE).expect("live watch event"));
    }
    assert_eq!(live, ["DELETE", "foo"]);
    let _ = watch.kill();
    let _ = watch.wait();

    // Leases: grant, attach, keep-alive, time-to-live, revoke deletes the key.
    let granted = c.ok(&["lease", "grant", "60"]);
    // "lease 694d77aa9e38260f granted with TTL(60s)"
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert!(granted.ends_with("granted with TTL(60s)\n"), "{granted}");
    c.ok(&["put", "--lease", &id, "leased", "v"]);
    let ttl = c.ok(&["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"),
        "{ttl}"
    );
    let ka = c.ok(&["lease", "keep-alive", "--once", &id]);
    assert!(ka.contains("keepalived with TTL(60)"), "{ka}");
    assert!(c.ok(&["lease", "list"]).contains(&id));
    assert_eq!(
        c.ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(c.ok(&["get", "leased"]), "");

    // Lock: etcdctl runs the command while holding the lock.
    let locked = c.ok(&["lock", "mylock", "echo", "holding-the-lock"]);
    assert!(locked.contains("holding-the-lock"), "{locked}");

    // Cluster and maintenance.
    let members = c.ok(&["member", "list"]);
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(
        members.contains("started, node-1") || members.contains("node-1"),
        "{members}"
    );
    let status = c.ok(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    c.ok(&["endpoint", "health"]);
    c.ok(&["compaction", "2"]);
    let err = c.etcdctl(&["get", "fob", "--rev=1"]);
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("required revision has been compacted"));
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let c = ProcCluster::start(3, &[("FLOTILLA_LIMITS__MAX_VALUE_BYTES", "1024")]);
    c.ok(&["put", "k", "v"]);
    let before = c.ok(&["get", "k", "-w", "json"]);
    let rev = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s).unwrap()["header"]["revision"]
            .as_i64()
            .unwrap()
    };

    let big = "x".repeat(2000);
    let out = c.etcdctl(&["put", "k", &big]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("max_value_bytes = 1024"), "{stderr}");

    let out = c.etcdctl(&["put", "k", "w", "--lease=1234"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requested lease not found"), "{stderr}");

    let out = c.etcdctl(&["lease", "revoke", "1234"]);
    assert!(!out.status.success());

    let after = c.ok(&["get", "k", "-w", "json"]);
    assert_eq!(rev(&before), rev(&after), "nothing was written");
    assert_eq!(c.ok(&["get", "k", "--print-value-only"]), "v\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_during_puts_loses_no_acknowledged_write() {
    use etcd_client::{Client, EventType, GetOptions, WatchOptions};
    const PUTS: usize = 300;

    let mut c = ProcCluster::start(3, &[]);
    let leader = c.leader();
    let survivor = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    let endpoints: Vec<String> = c.nodes.values().map(|n| n.client.clone()).collect();
    let mut writer = Client::connect(&endpoints, None).await.unwrap();
    let first = writer
        .put("load/start", "", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    // A watcher on a node that survives, from the first revision.
    let mut watcher = Client::connect([c.nodes[&survivor].client.clone()], None)
        .await
        .unwrap();
    let mut stream = watcher
        .watch(
            "load/",
            Some(WatchOptions::new().with_prefix().with_start_revision(first)),
        )
        .await
        .unwrap();

    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    acked.insert("load/start".into(), first);
    for i in 0..PUTS {
        if i == PUTS / 3 {
            c.kill9(leader);
        }
        let key = format!("load/{i:04}");
        let deadline = Instant::now() + DEADLINE;
        loop {
            match writer.put(key.as_str(), i.to_string(), None).await {
                Ok(r) => {
                    acked.insert(key.clone(), r.header().unwrap().revision());
                    break;
                }
                // Unavailable, connection lost: outcome unknown; retry as etcd clients do.
                Err(e) => assert!(Instant::now() < deadline, "no progress: {e}\n{}", c.logs()),
            }
        }
    }
    let last = *acked.values().max().unwrap();

    // The watcher saw every revision from `first` to `last` exactly once, in order.
    let mut seen = Vec::new();
    while seen.last().copied().unwrap_or(0) < last {
        let msg = tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("watch stalled");
        let resp = msg.unwrap().expect("watch stream ended");
        for e in resp.events() {
            assert_eq!(e.event_type(), EventType::Put);
            seen.push(e.kv().unwrap().mod_revision());
        }
    }
    assert_eq!(seen, (first..=last).collect::<Vec<_>>());

    // Restart the killed node from its data dir: it catches up, and every acknowledged put
    // is readable at every node.
    c.spawn(leader);
    for (id, node) in &c.nodes {
        let mut client = Client::connect([node.client.clone()], None).await.unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = client
                .get("load/", Some(GetOptions::new().with_prefix()))
                .await
                .map(|r| {
                    r.kvs()
                        .iter()
                        .map(|kv| kv.key_str().unwrap().to_string())
                        .collect::<Vec<_>>()
                });
            match got {
                Ok(keys) if acked.keys().all(|k| keys.contains(k)) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "node {id} is missing acknowledged writes: {:?}\n{}",
                    other.map(|k| k.len()),
                    c.logs()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
