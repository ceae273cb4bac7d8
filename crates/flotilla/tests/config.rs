//! Configuration: the shipped example, precedence (file < env < flags), the one-line error of
//! each kind of invalid config, and `flotilla server` exiting with code 2 on one. Nothing here
//! binds a socket: invalid configs stop before, `--print-config` never starts a node.

use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla::config::{
    load, parse_initial_cluster, Config, ConfigError, LogFormat, LogRotation, Overrides,
};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flotilla.example.yaml")
}

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Writes `yaml` to a fresh file; the directory lives as long as the returned guard.
fn yaml_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flotilla.yaml");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

fn load_yaml(yaml: &str) -> Result<Config, ConfigError> {
    let (_dir, path) = yaml_file(yaml);
    load(Some(&path), no_env(), &Overrides::default())
}

const CLUSTER: &str = "
initial_cluster:
  - {id: 1, peer_url: 'http://127.0.0.1:7100', client_url: 'http://127.0.0.1:7379'}
  - {id: 2, peer_url: 'http://127.0.0.1:7101', client_url: 'http://127.0.0.1:7380'}
  - {id: 3, peer_url: 'http://127.0.0.1:7102', client_url: 'http://127.0.0.1:7381'}
";

#[test]
fn example_file_loads_and_every_field_has_its_documented_default() {
    let c = load(Some(&example_path()), no_env(), &Overrides::default()).unwrap();
    assert_eq!(c, Config::default(), "the example lists the defaults");
    // The documented values, spelled out (so a changed default must change the docs too).
    assert_eq!(c.node_id, 1);
    assert_eq!(c.name, None);
    assert_eq!(c.node_name(), "node-1");
    assert_eq!(c.cluster_name, "flotilla");
    assert_eq!(c.data_dir(), PathBuf::from("flotilla-data/1"));
    assert_eq!(c.peer.listen, "127.0.0.1:7100");
    assert_eq!(c.peer.advertise, None);
    assert_eq!(c.peer_advertise(), "127.0.0.1:7100");
    assert_eq!(c.client.listen, "127.0.0.1:7379");
    assert_eq!(c.client.advertise, None);
    assert_eq!(c.admin.listen, "127.0.0.1:7180");
    assert!(c.initial_cluster.is_empty());
    assert_eq!(
        c.members().len(),
        1,
        "empty initial_cluster: this node alone"
    );
    assert_eq!(c.raft.tick_ms, 100);
    assert_eq!(c.raft.election_ticks, 10);
    assert_eq!(c.raft.heartbeat_ticks, 1);
    assert_eq!(c.raft.snapshot_interval_entries, 100_000);
    assert!(c.raft.pre_vote);
    assert!(c.raft.check_quorum);
    assert_eq!(c.raft.quiesce_after_ticks, 100);
    assert_eq!(c.limits.max_key_bytes, 8192);
    assert_eq!(c.limits.max_value_bytes, 1_048_576);
    assert_eq!(c.limits.max_txn_ops, 128);
    assert_eq!(c.limits.max_txn_depth, 8);
    assert_eq!(c.limits.max_request_bytes, 1_572_864);
    assert_eq!(c.limits.max_lease_ttl_secs, 9_000_000_000);
    assert_eq!(c.kv.request_timeout_ms, 5000);
    assert_eq!(c.kv.lease_check_interval_ms, 500);
    assert_eq!(c.kv.compaction_retention_revisions, 100_000);
    assert_eq!(c.kv.watch_progress_interval_ms, 600_000);
    assert_eq!(c.kv.max_watchers_per_stream, 1024);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.file, None);
    assert_eq!(c.log.rotation, LogRotation::Never);
}

#[test]
fn every_config_field_appears_in_the_example() {
    let example = std::fs::read_to_string(example_path()).unwrap();
    let json = serde_json::to_value(Config {
        name: Some("x".into()),
        data_dir: Some("x".into()),
        ..Config::default()
    })
    .unwrap();
    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                out.push(k.clone());
                keys(v, out);
            }
        }
    }
    let mut all = Vec::new();
    keys(&json, &mut all);
    for k in all {
        assert!(
            example.contains(&format!("{k}:")),
            "flotilla.example.yaml does not mention `{k}`"
        );
    }
}

#[test]
fn environment_overrides_the_file() {
    let (_dir, path) = yaml_file(&format!(
        "node_id: 2\nraft:\n  tick_ms: 50\n  election_ticks: 20\n{CLUSTER}"
    ));
    let c = load(
        Some(&path),
        env(&[
            ("FLOTILLA_RAFT__TICK_MS", "20"),
            ("FLOTILLA_LOG__FORMAT", "json"),
            ("FLOTILLA_ENDPOINTS", "not server config: ignored"),
            ("HOME", "/not/ours"),
        ]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.raft.tick_ms, 20, "env beats file");
    assert_eq!(c.raft.election_ticks, 20, "file value kept");
    assert_eq!(c.node_id, 2);
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.initial_cluster.len(), 3);
}

#[test]
fn flags_override_the_environment() {
    let (_dir, path) = yaml_file(&format!("node_id: 1\n{CLUSTER}"));
    let flags = Overrides {
        node_id: Some(3),
        peer_listen: Some("127.0.0.1:9100".into()),
        log_level: Some("debug".into()),
        ..Overrides::default()
    };
    let c = load(
        Some(&path),
        env(&[
            ("FLOTILLA_NODE_ID", "2"),
            ("FLOTILLA_PEER__LISTEN", "127.0.0.1:8100"),
            ("FLOTILLA_LOG__LEVEL", "warn"),
            ("FLOTILLA_CLIENT__LISTEN", "127.0.0.1:8379"),
        ]),
        &flags,
    )
    .unwrap();
    assert_eq!(c.node_id, 3);
    assert_eq!(c.peer.listen, "127.0.0.1:9100");
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.client.listen, "127.0.0.1:8379", "env kept where no flag");
}

#[test]
fn initial_cluster_flag_replaces_the_file_list() {
    let (_dir, path) = yaml_file(CLUSTER);
    let flags = Overrides {
        initial_cluster: Some(
            parse_initial_cluster("1@a=http://127.0.0.1:7100|http://127.0.0.1:7379").unwrap(),
        ),
        ..Overrides::default()
    };
    let c = load(Some(&path), no_env(), &flags).unwrap();
    assert_eq!(c.initial_cluster.len(), 1);
    assert_eq!(c.initial_cluster[0].name(), "a");
}

/// (what is wrong, YAML, the exact line — `{file}` stands for the file's path).
const INVALID: &[(&str, &str, &str)] = &[
    (
        "election not longer than heartbeat",
        "raft:\n  election_ticks: 1\n",
        "invalid config: raft.election_ticks = 1: must be greater than raft.heartbeat_ticks (1)",
    ),
    (
        "unknown field",
        "raft:\n  tik_ms: 5\n",
        "invalid config: raft.tik_ms: unknown field (in {file})",
    ),
    (
        "unknown top-level field",
        "nodeid: 3\n",
        "invalid config: nodeid: unknown field (in {file})",
    ),
    (
        "wrong type",
        "node_id: abc\n",
        "invalid config: node_id: invalid type: found string \"abc\", expected u64 (in {file})",
    ),
    (
        "unknown enum value",
        "log:\n  format: xml\n",
        "invalid config: log.format: unknown value \"xml\", expected one of text, json (in {file})",
    ),
    (
        "node not in the cluster",
        "node_id: 4\ninitial_cluster:\n  - {id: 1, peer_url: 'a:1', client_url: 'a:2'}\n  - {id: 2, peer_url: 'b:1', client_url: 'b:2'}\n",
        "invalid config: node_id = 4: not in initial_cluster (ids: 1, 2)",
    ),
    (
        "duplicate id",
        "initial_cluster:\n  - {id: 1, peer_url: 'a:1', client_url: 'a:2'}\n  - {id: 1, peer_url: 'b:1', client_url: 'b:2'}\n",
        "invalid config: initial_cluster[1].id = 1: duplicate of initial_cluster[0].id",
    ),
    (
        "duplicate peer address (scheme does not matter)",
        "initial_cluster:\n  - {id: 1, peer_url: 'a:1', client_url: 'a:2'}\n  - {id: 2, peer_url: 'http://a:1', client_url: 'b:2'}\n",
        "invalid config: initial_cluster[1].peer_url = \"a:1\": duplicate of initial_cluster[0].peer_url",
    ),
    (
        "bad member URL",
        "initial_cluster:\n  - {id: 1, peer_url: 'a', client_url: 'a:2'}\n",
        "invalid config: initial_cluster[0].peer_url = \"a\": expected host:port or http://host:port",
    ),
    (
        "bad socket address",
        "peer:\n  listen: localhost:7100\n",
        "invalid config: peer.listen = \"localhost:7100\": not a socket address (expected ip:port, e.g. 127.0.0.1:7100)",
    ),
    (
        "two listeners on one address",
        "admin:\n  listen: 127.0.0.1:7379\n",
        "invalid config: admin.listen = \"127.0.0.1:7379\": same address as client.listen",
    ),
    (
        "zero limit",
        "limits:\n  max_txn_ops: 0\n",
        "invalid config: limits.max_txn_ops = 0: must be at least 1",
    ),
    (
        "value larger than a request",
        "limits:\n  max_value_bytes: 2000000\n",
        "invalid config: limits.max_value_bytes = 2000000: must be less than limits.max_request_bytes (1572864)",
    ),
    (
        "zero tick",
        "raft:\n  tick_ms: 0\n",
        "invalid config: raft.tick_ms = 0: must be at least 1",
    ),
    (
        "node id zero",
        "node_id: 0\n",
        "invalid config: node_id = 0: must be non-zero",
    ),
    (
        "negative retention",
        "kv:\n  compaction_retention_revisions: -1\n",
        "invalid config: kv.compaction_retention_revisions = -1: must be 0 (off) or positive",
    ),
];

#[test]
fn each_invalid_config_gives_its_documented_one_line_error() {
    for (what, yaml, expected) in INVALID {
        let (_dir, path) = yaml_file(yaml);
        let err = load(Some(&path), no_env(), &Overrides::default())
            .expect_err(what)
            .lines();
        let expected = expected.replace("{file}", &path.display().to_string());
        assert_eq!(err, vec![expected], "{what}");
    }
}

#[test]
fn every_rule_violation_is_reported_at_once() {
    let err = load_yaml("node_id: 0\nraft:\n  tick_ms: 0\nlimits:\n  max_key_bytes: 0\n")
        .unwrap_err()
        .lines();
    assert_eq!(
        err,
        vec![
            "invalid config: node_id = 0: must be non-zero",
            "invalid config: raft.tick_ms = 0: must be at least 1",
            "invalid config: limits.max_key_bytes = 0: must be at least 1",
        ]
    );
}

#[test]
fn a_bad_environment_variable_is_named_in_its_error() {
    let err = load(
        None,
        env(&[("FLOTILLA_RAFT__PRE_VOTE", "maybe")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .lines();
    assert_eq!(
        err,
        vec![
            "invalid config: raft.pre_vote: invalid type: found string \"maybe\", expected a boolean (from FLOTILLA_RAFT__PRE_VOTE)"
        ]
    );
    let err = load(
        None,
        env(&[("FLOTILLA_RAFT__TIK_MS", "5")]),
        &Overrides::default(),
    )
    .unwrap_err()
    .lines();
    assert_eq!(
        err,
        vec!["invalid config: raft.tik_ms: unknown field (from FLOTILLA_RAFT__TIK_MS)"]
    );
}

#[test]
fn a_missing_config_file_is_an_error() {
    let err = load(
        Some(Path::new("/nonexistent/flotilla.yaml")),
        no_env(),
        &Overrides::default(),
    )
    .unwrap_err()
    .lines();
    assert_eq!(
        err,
        vec!["invalid config: /nonexistent/flotilla.yaml: config file not found"]
    );
}

/// The binary, with no `FLOTILLA_…` variables inherited from whoever runs the tests.
fn flotilla() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOTILLA_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn server_with_an_invalid_config_exits_2_and_prints_the_line() {
    let (_dir, path) = yaml_file("raft:\n  election_ticks: 1\n");
    let out = flotilla()
        .args(["server", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        vec![
            "invalid config: raft.election_ticks = 1: must be greater than raft.heartbeat_ticks (1)"
        ]
    );

    let out = flotilla()
        .args(["server", "--initial-cluster", "1=nourl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .starts_with("invalid config: --initial-cluster: entry \"1=nourl\""));
}

#[test]
fn server_applies_file_then_env_then_flags() {
    let (_dir, path) = yaml_file(&format!("raft:\n  tick_ms: 50\n{CLUSTER}"));
    let out = flotilla()
        .args(["server", "--print-config", "--node-id", "3"])
        .env("FLOTILLA_CONFIG", &path)
        .env("FLOTILLA_NODE_ID", "2")
        .env("FLOTILLA_RAFT__HEARTBEAT_TICKS", "2")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: Config = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c.node_id, 3, "flag beats env");
    assert_eq!(c.raft.heartbeat_ticks, 2, "env beats default");
    assert_eq!(c.raft.tick_ms, 50, "file beats default");
}
