//! Node configuration: the [`Config`] struct, its defaults, loading and validation.
//!
//! # Precedence
//! Defaults < YAML file (`--config FILE` or `FLOTILLA_CONFIG`) < environment (`FLOTILLA_…`,
//! nested fields joined with `__`, e.g. `FLOTILLA_RAFT__TICK_MS=50`) < command-line flags.
//!
//! # Errors
//! Every problem — a malformed file, an unknown field, a wrong type, a value that breaks a rule —
//! is reported as one line `invalid config: <field>…: <why>` ([`ConfigError`]); `flotilla server`
//! prints each and exits with code 2. All rule violations are reported at once, in field order.
//!
//! Unknown fields are refused in the file and in nested environment variables
//! (`FLOTILLA_RAFT__TIK_MS`). An environment variable whose first segment names no section or
//! field (`FLOTILLA_ENDPOINTS`, used by the client CLI) is not server configuration and is
//! ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Serialized, Yaml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

/// Default peer (Raft transport) port.
pub const DEFAULT_PEER_PORT: u16 = 7100;
/// Default client (etcd v3 gRPC) port.
pub const DEFAULT_CLIENT_PORT: u16 = 7379;
/// Default admin HTTP port.
pub const DEFAULT_ADMIN_PORT: u16 = 7180;
/// Prefix of the environment variables that configure a node.
pub const ENV_PREFIX: &str = "FLOTILLA_";
/// Environment variable naming the config file (same as `--config`).
pub const ENV_CONFIG_FILE: &str = "FLOTILLA_CONFIG";

/// The whole configuration of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id: non-zero, unique in the cluster, listed in `initial_cluster`.
    pub node_id: u64,
    /// Human-readable node name; default `node-<node_id>`.
    pub name: Option<String>,
    /// Cluster name; nodes only talk to nodes of the same cluster (its hash is the cluster id).
    pub cluster_name: String,
    /// Where the WAL and snapshots live; default `./flotilla-data/<node_id>`.
    pub data_dir: Option<PathBuf>,
    /// Raft peer transport.
    pub peer: Endpoint,
    /// etcd v3 gRPC API.
    pub client: Endpoint,
    /// Admin HTTP (health, readiness, metrics, status).
    pub admin: AdminEndpoint,
    /// Static initial cluster, this node included. Empty: a one-node cluster of this node.
    pub initial_cluster: Vec<MemberConfig>,
    /// Raft timing and log compaction.
    pub raft: RaftConfig,
    /// Request size and shape limits.
    pub limits: LimitsConfig,
    /// KV service behaviour.
    pub kv: KvConfig,
    /// Logging.
    pub log: LogConfig,
}

/// A listening socket and the address other nodes and clients should use to reach it. (No
/// `Default`: the defaults layer always supplies `listen`, and peer and client differ.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `host:port` to bind.
    pub listen: String,
    /// `host:port` (or `http://host:port`) others reach this node at; default: `listen`.
    pub advertise: Option<String>,
}

/// The admin HTTP listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminEndpoint {
    /// `host:port` to bind.
    pub listen: String,
}

/// One member of the initial cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Node id (non-zero).
    pub id: u64,
    /// Node name; default `node-<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Peer transport address, `host:port` or `http://host:port`.
    pub peer_url: String,
    /// etcd gRPC address, `host:port` or `http://host:port`.
    pub client_url: String,
}

impl MemberConfig {
    /// The name, or `node-<id>` when none was given.
    pub fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("node-{}", self.id))
    }
}

/// Raft settings, applied to every group of the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Length of one Raft tick in milliseconds.
    pub tick_ms: u64,
    /// Election timeout in ticks (randomized up to twice this).
    pub election_ticks: u32,
    /// Heartbeat interval in ticks; must be less than `election_ticks`.
    pub heartbeat_ticks: u32,
    /// Snapshot (and compact the log) every this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Campaign with a pre-vote round first.
    pub pre_vote: bool,
    /// Leaders step down when they lose contact with a quorum.
    pub check_quorum: bool,
    /// An idle group stops ticking after this many ticks; 0 disables quiescing.
    pub quiesce_after_ticks: u32,
}

/// Limits on what clients may send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest key accepted.
    pub max_key_bytes: u64,
    /// Longest value accepted; must be less than `max_request_bytes`.
    pub max_value_bytes: u64,
    /// Most compares, or ops in one branch, of one txn.
    pub max_txn_ops: u64,
    /// Deepest txn nesting accepted.
    pub max_txn_depth: u64,
    /// Largest request (and Raft proposal) accepted.
    pub max_request_bytes: u64,
    /// Longest lease TTL accepted, in seconds.
    pub max_lease_ttl_secs: i64,
}

/// KV service settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// A request not answered within this long fails with `DeadlineExceeded`.
    pub request_timeout_ms: u64,
    /// How often the leader looks for expired leases.
    pub lease_check_interval_ms: u64,
    /// Keep this many revisions of history; older ones are compacted. 0 turns it off.
    pub compaction_retention_revisions: i64,
    /// How often idle watch streams get a progress notification.
    pub watch_progress_interval_ms: u64,
    /// Most watchers on one watch stream.
    pub max_watchers_per_stream: u64,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// When a log file is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    /// A new file every day (`<file>.YYYY-MM-DD`).
    Daily,
    /// A new file every hour (`<file>.YYYY-MM-DD-HH`).
    Hourly,
    /// One file, never rotated.
    Never,
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: a level (`info`) or directives (`info,flotilla_engine=debug`).
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
    /// Write logs to this file instead of stderr.
    pub file: Option<PathBuf>,
    /// Rotation of `file`: `daily`, `hourly` or `never`.
    pub rotation: LogRotation,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            name: None,
            cluster_name: "flotilla".into(),
            data_dir: None,
            peer: Endpoint {
                listen: format!("127.0.0.1:{DEFAULT_PEER_PORT}"),
                advertise: None,
            },
            client: Endpoint {
                listen: format!("127.0.0.1:{DEFAULT_CLIENT_PORT}"),
                advertise: None,
            },
            admin: AdminEndpoint::default(),
            initial_cluster: Vec::new(),
            raft: RaftConfig::default(),
            limits: LimitsConfig::default(),
            kv: KvConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for AdminEndpoint {
    fn default() -> Self {
        AdminEndpoint {
            listen: format!("127.0.0.1:{DEFAULT_ADMIN_PORT}"),
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_interval_entries: 100_000,
            pre_vote: true,
            check_quorum: true,
            quiesce_after_ticks: 100,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_key_bytes: 8 * 1024,
            max_value_bytes: 1024 * 1024,
            max_txn_ops: 128,
            max_txn_depth: 8,
            max_request_bytes: 1536 * 1024,
            max_lease_ttl_secs: 9_000_000_000,
        }
    }
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            request_timeout_ms: 5_000,
            lease_check_interval_ms: 500,
            compaction_retention_revisions: 100_000,
            watch_progress_interval_ms: 600_000,
            max_watchers_per_stream: 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
            file: None,
            rotation: LogRotation::Never,
        }
    }
}

/// Command-line overrides: the highest-precedence layer. `None` leaves the value alone.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--node-id`.
    pub node_id: Option<u64>,
    /// `--name`.
    pub name: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--peer-listen`.
    pub peer_listen: Option<String>,
    /// `--peer-advertise`.
    pub peer_advertise: Option<String>,
    /// `--client-listen`.
    pub client_listen: Option<String>,
    /// `--client-advertise`.
    pub client_advertise: Option<String>,
    /// `--admin-listen`.
    pub admin_listen: Option<String>,
    /// `--initial-cluster`, already parsed with [`parse_initial_cluster`].
    pub initial_cluster: Option<Vec<MemberConfig>>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// One or more configuration problems, one line each (`invalid config: …`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The problems, without the `invalid config: ` prefix.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![problem.into()],
        }
    }

    /// Every problem as its own `invalid config: …` line.
    pub fn lines(&self) -> Vec<String> {
        self.problems
            .iter()
            .map(|p| format!("invalid config: {p}"))
            .collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for ConfigError {}

/// Parses `--initial-cluster`: comma-separated `ID=PEER_URL|CLIENT_URL` or
/// `ID@NAME=PEER_URL|CLIENT_URL`, e.g. `1=http://127.0.0.1:7100|http://127.0.0.1:7379`.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<MemberConfig>, ConfigError> {
    let bad = |entry: &str| {
        ConfigError::one(format!(
            "--initial-cluster: entry {entry:?}: expected ID=PEER_URL|CLIENT_URL or \
             ID@NAME=PEER_URL|CLIENT_URL"
        ))
    };
    let mut members = Vec::new();
    for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (head, urls) = entry.split_once('=').ok_or_else(|| bad(entry))?;
        let (id, name) = match head.split_once('@') {
            Some((id, name)) if !name.is_empty() => (id, Some(name.to_string())),
            Some(_) => return Err(bad(entry)),
            None => (head, None),
        };
        let id: u64 = id.trim().parse().map_err(|_| bad(entry))?;
        let (peer_url, client_url) = urls.split_once('|').ok_or_else(|| bad(entry))?;
        if peer_url.is_empty() || client_url.is_empty() {
            return Err(bad(entry));
        }
        members.push(MemberConfig {
            id,
            name,
            peer_url: peer_url.to_string(),
            client_url: client_url.to_string(),
        });
    }
    Ok(members)
}

/// `FLOTILLA_…` variables as a figment provider. Figment's own `Env` reads the process
/// environment only; taking the variables as a list lets tests (and `load`) pass their own.
struct EnvVars {
    vars: Vec<(String, String)>,
}

/// Top-level keys a `FLOTILLA_…` variable may set; others are not server config (see module docs).
const TOP_LEVEL_KEYS: &[&str] = &[
    "node_id",
    "name",
    "cluster_name",
    "data_dir",
    "peer",
    "client",
    "admin",
    "initial_cluster",
    "raft",
    "limits",
    "kv",
    "log",
];

impl EnvVars {
    fn new(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != ENV_CONFIG_FILE)
            .filter_map(|(k, v)| {
                let key = k[ENV_PREFIX.len()..]
                    .to_ascii_lowercase()
                    .replace("__", ".");
                let top = key.split('.').next().unwrap_or_default();
                TOP_LEVEL_KEYS.contains(&top).then_some((key, v))
            })
            .collect();
        vars.sort();
        EnvVars { vars }
    }
}

fn merge_into(dict: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                merge_into(inner, rest, value);
            } else {
                // `FLOTILLA_RAFT=1` and `FLOTILLA_RAFT__TICK_MS=5` together: the nested one wins.
                let mut inner = Dict::new();
                merge_into(&mut inner, rest, value);
                *entry = Value::from(inner);
            }
        }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_profile, keys| {
            let keys: Vec<String> = keys.iter().map(|k| k.to_ascii_uppercase()).collect();
            format!("{ENV_PREFIX}{}", keys.join("__"))
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, value) in &self.vars {
            let value: Value = value.parse().expect("Value::from_str is infallible");
            merge_into(&mut dict, key, value);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// Loads the configuration: defaults < `file` < `env` (`FLOTILLA_…` pairs; pass
/// `std::env::vars()`) < `flags`, then validates it.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: &Overrides,
) -> Result<Config, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(file) = file {
        if !file.is_file() {
            return Err(ConfigError::one(format!(
                "{}: config file not found",
                file.display()
            )));
        }
        figment = figment.merge(Yaml::file_exact(file));
    }
    figment = figment.merge(EnvVars::new(env));
    figment = apply_overrides(figment, flags);
    let config: Config = figment.extract().map_err(figment_error)?;
    config.validate()?;
    Ok(config)
}

fn apply_overrides(mut f: Figment, o: &Overrides) -> Figment {
    fn set<T: Serialize>(f: Figment, key: &str, v: &Option<T>) -> Figment {
        match v {
            Some(v) => f.merge(Serialized::default(key, v).profile(Profile::Default)),
            None => f,
        }
    }
    f = set(f, "node_id", &o.node_id);
    f = set(f, "name", &o.name);
    f = set(f, "data_dir", &o.data_dir);
    f = set(f, "peer.listen", &o.peer_listen);
    f = set(f, "peer.advertise", &o.peer_advertise);
    f = set(f, "client.listen", &o.client_listen);
    f = set(f, "client.advertise", &o.client_advertise);
    f = set(f, "admin.listen", &o.admin_listen);
    f = set(f, "initial_cluster", &o.initial_cluster);
    f = set(f, "log.level", &o.log_level);
    f = set(f, "log.format", &o.log_format);
    f
}

/// Turns figment's (possibly chained) errors into one line per problem.
fn figment_error(err: figment::Error) -> ConfigError {
    let problems = err
        .into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let why = match &e.kind {
                // The path already ends with the unknown field's name.
                figment::error::Kind::UnknownField(..) => "unknown field".to_string(),
                figment::error::Kind::UnknownVariant(v, expected) => {
                    format!(
                        "unknown value {v:?}, expected one of {}",
                        expected.join(", ")
                    )
                }
                kind => kind.to_string(),
            };
            let file = e.metadata.as_ref().and_then(|md| match &md.source {
                Some(figment::Source::File(p)) => Some(p.display().to_string()),
                _ => None,
            });
            let env = e
                .metadata
                .as_ref()
                .filter(|md| md.name.starts_with("environment"))
                .map(|md| md.interpolate(&Profile::Default, &e.path));
            match (path.is_empty(), file, env) {
                // A file that is not YAML at all: name the file.
                (true, Some(file), _) => format!("{file}: {why}"),
                (_, _, Some(var)) => format!("{path}: {why} (from {var})"),
                (_, Some(file), None) => format!("{path}: {why} (in {file})"),
                (_, None, None) => format!("{path}: {why}"),
            }
        })
        .collect();
    ConfigError { problems }
}

/// Checks `host:port` or `scheme://host:port` (the form peers and clients dial).
fn check_url(s: &str) -> Result<(), &'static str> {
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if scheme == "http" || scheme == "https" => rest,
        Some(_) => return Err("scheme must be http:// or https://"),
        None => s,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match rest.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
        {
            Ok(())
        }
        _ => Err("expected host:port or http://host:port"),
    }
}

/// `http://host:port` → `host:port`.
pub fn strip_scheme(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.strip_suffix('/').unwrap_or(rest)
}

impl Config {
    /// Checks every rule; reports all violations, in field order.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p: Vec<String> = Vec::new();
        if self.node_id == 0 {
            p.push("node_id = 0: must be non-zero".into());
        }
        if self.name.as_deref() == Some("") {
            p.push("name = \"\": must not be empty".into());
        }
        if self.cluster_name.is_empty() {
            p.push("cluster_name = \"\": must not be empty".into());
        }
        if self.data_dir.as_deref() == Some(Path::new("")) {
            p.push("data_dir = \"\": must not be empty".into());
        }
        let mut listens: Vec<(&str, SocketAddr)> = Vec::new();
        for (field, value) in [
            ("peer.listen", &self.peer.listen),
            ("client.listen", &self.client.listen),
            ("admin.listen", &self.admin.listen),
        ] {
            match value.parse::<SocketAddr>() {
                Ok(addr) => {
                    if let Some((other, _)) = listens
                        .iter()
                        .find(|(_, a)| *a == addr && addr.port() != 0)
                    {
                        p.push(format!("{field} = {value:?}: same address as {other}"));
                    }
                    listens.push((field, addr));
                }
                Err(_) => p.push(format!(
                    "{field} = {value:?}: not a socket address (expected ip:port, e.g. 127.0.0.1:{})",
                    match field {
                        "peer.listen" => DEFAULT_PEER_PORT,
                        "client.listen" => DEFAULT_CLIENT_PORT,
                        _ => DEFAULT_ADMIN_PORT,
                    }
                )),
            }
        }
        for (field, value) in [
            ("peer.advertise", &self.peer.advertise),
            ("client.advertise", &self.client.advertise),
        ] {
            if let Some(v) = value {
                if let Err(why) = check_url(v) {
                    p.push(format!("{field} = {v:?}: {why}"));
                } else if strip_scheme(v)
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.ip().is_unspecified())
                {
                    p.push(format!(
                        "{field} = {v:?}: an unspecified address cannot be dialed"
                    ));
                }
            }
        }
        self.validate_cluster(&mut p);
        let r = &self.raft;
        if r.tick_ms == 0 {
            p.push("raft.tick_ms = 0: must be at least 1".into());
        }
        if r.heartbeat_ticks == 0 {
            p.push("raft.heartbeat_ticks = 0: must be at least 1".into());
        }
        if r.election_ticks <= r.heartbeat_ticks {
            p.push(format!(
                "raft.election_ticks = {}: must be greater than raft.heartbeat_ticks ({})",
                r.election_ticks, r.heartbeat_ticks
            ));
        }
        if r.snapshot_interval_entries == 0 {
            p.push("raft.snapshot_interval_entries = 0: must be at least 1".into());
        }
        let l = &self.limits;
        for (field, v) in [
            ("limits.max_key_bytes", l.max_key_bytes),
            ("limits.max_value_bytes", l.max_value_bytes),
            ("limits.max_txn_ops", l.max_txn_ops),
            ("limits.max_txn_depth", l.max_txn_depth),
            ("limits.max_request_bytes", l.max_request_bytes),
        ] {
            if v == 0 {
                p.push(format!("{field} = 0: must be at least 1"));
            }
        }
        if l.max_lease_ttl_secs <= 0 {
            p.push(format!(
                "limits.max_lease_ttl_secs = {}: must be at least 1",
                l.max_lease_ttl_secs
            ));
        }
        if l.max_request_bytes > 0 && l.max_value_bytes >= l.max_request_bytes {
            p.push(format!(
                "limits.max_value_bytes = {}: must be less than limits.max_request_bytes ({})",
                l.max_value_bytes, l.max_request_bytes
            ));
        }
        if l.max_request_bytes > MAX_REQUEST_BYTES_CAP {
            p.push(format!(
                "limits.max_request_bytes = {}: must be at most {MAX_REQUEST_BYTES_CAP} (8 MiB)",
                l.max_request_bytes
            ));
        }
        let k = &self.kv;
        for (field, v) in [
            ("kv.request_timeout_ms", k.request_timeout_ms),
            ("kv.lease_check_interval_ms", k.lease_check_interval_ms),
            (
                "kv.watch_progress_interval_ms",
                k.watch_progress_interval_ms,
            ),
            ("kv.max_watchers_per_stream", k.max_watchers_per_stream),
        ] {
            if v == 0 {
                p.push(format!("{field} = 0: must be at least 1"));
            }
        }
        if k.compaction_retention_revisions < 0 {
            p.push(format!(
                "kv.compaction_retention_revisions = {}: must be 0 (off) or positive",
                k.compaction_retention_revisions
            ));
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            p.push(format!("log.level = {:?}: {e}", self.log.level));
        }
        if self.log.file.as_deref() == Some(Path::new("")) {
            p.push("log.file = \"\": must not be empty (leave it out to log to stderr)".into());
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: p })
        }
    }

    fn validate_cluster(&self, p: &mut Vec<String>) {
        let mut seen: BTreeMap<(&str, String), usize> = BTreeMap::new();
        for (i, m) in self.initial_cluster.iter().enumerate() {
            if m.id == 0 {
                p.push(format!("initial_cluster[{i}].id = 0: must be non-zero"));
            }
            for (field, v) in [("peer_url", &m.peer_url), ("client_url", &m.client_url)] {
                if let Err(why) = check_url(v) {
                    p.push(format!("initial_cluster[{i}].{field} = {v:?}: {why}"));
                }
            }
            for (field, v) in [
                ("id", m.id.to_string()),
                ("name", m.name()),
                ("peer_url", strip_scheme(&m.peer_url).to_string()),
                ("client_url", strip_scheme(&m.client_url).to_string()),
            ] {
                if field == "name" && m.name.is_none() {
                    // A default name repeats only when the id does, reported above; still
                    // record it so an explicit name equal to it is caught.
                    seen.entry((field, v)).or_insert(i);
                    continue;
                }
                if let Some(first) = seen.get(&(field, v.clone())) {
                    let shown = match field {
                        "id" => v.clone(),
                        _ => format!("{v:?}"),
                    };
                    p.push(format!(
                        "initial_cluster[{i}].{field} = {shown}: duplicate of initial_cluster[{first}].{field}"
                    ));
                } else {
                    seen.insert((field, v), i);
                }
            }
        }
        if !self.initial_cluster.is_empty()
            && self.node_id != 0
            && !self.initial_cluster.iter().any(|m| m.id == self.node_id)
        {
            let ids: Vec<String> = self
                .initial_cluster
                .iter()
                .map(|m| m.id.to_string())
                .collect();
            p.push(format!(
                "node_id = {}: not in initial_cluster (ids: {})",
                self.node_id,
                ids.join(", ")
            ));
        }
    }

    /// This node's name.
    pub fn node_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("node-{}", self.node_id))
    }

    /// The data directory: `data_dir`, or `./flotilla-data/<node_id>`.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("flotilla-data").join(self.node_id.to_string()))
    }

    /// Where peers reach this node.
    pub fn peer_advertise(&self) -> String {
        self.peer
            .advertise
            .clone()
            .unwrap_or_else(|| self.peer.listen.clone())
    }

    /// Where clients reach this node.
    pub fn client_advertise(&self) -> String {
        self.client
            .advertise
            .clone()
            .unwrap_or_else(|| self.client.listen.clone())
    }

    /// The initial cluster; empty in the config means this node alone.
    pub fn members(&self) -> Vec<MemberConfig> {
        if !self.initial_cluster.is_empty() {
            return self.initial_cluster.clone();
        }
        vec![MemberConfig {
            id: self.node_id,
            name: Some(self.node_name()),
            peer_url: self.peer_advertise(),
            client_url: self.client_advertise(),
        }]
    }

    /// The cluster id every node derives from `cluster_name` (FNV-1a, stable across builds).
    pub fn cluster_id(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.cluster_name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    }

    /// Length of a Raft tick.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.raft.tick_ms)
    }
}

/// Upper bound on `limits.max_request_bytes`: a proposal must fit, with room to spare, in one
/// transport frame (16 MiB).
pub const MAX_REQUEST_BYTES_CAP: u64 = 8 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn initial_cluster_flag_parses_ids_names_and_urls() {
        let m = parse_initial_cluster(
            "1=http://127.0.0.1:7100|http://127.0.0.1:7379,2@b=127.0.0.1:7101|127.0.0.1:7380",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name(), "node-1");
        assert_eq!(m[1].name(), "b");
        assert_eq!(m[1].client_url, "127.0.0.1:7380");
        assert!(parse_initial_cluster("1=a").is_err());
        assert!(parse_initial_cluster("x=a|b").is_err());
    }

    #[test]
    fn urls_accept_host_port_with_optional_scheme() {
        assert!(check_url("127.0.0.1:7100").is_ok());
        assert!(check_url("http://node-1.flotilla:7100").is_ok());
        assert!(check_url("[::1]:7100").is_ok());
        assert!(check_url("ftp://x:1").is_err());
        assert!(check_url("nohost").is_err());
        assert!(check_url("x:0").is_err());
    }
}
