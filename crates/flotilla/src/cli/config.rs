//! `flotilla config …`: versioned configuration values under a key prefix (`/config/`).
//!
//! Every write is a new revision of the store, so a config key's history is its MVCC history:
//! `history` walks it backwards (Range at `mod_revision - 1` gives the previous version) and
//! `rollback` re-writes an old value as a new revision — history only grows.

use anyhow::bail;
use flotilla_kv::proto::etcdserverpb::{PutRequest, RangeRequest};
use flotilla_kv::proto::mvccpb::KeyValue;
use serde_json::json;

use super::client::{Client, RpcError};
use super::output::{header_revision, kv_json, print_bytes_line, print_json, OutputFormat};

/// Most versions `history` walks, so a hot key cannot make it run unbounded.
const HISTORY_VERSIONS_MAX_DEFAULT: usize = 1_000;

/// `config` arguments.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Prefix under which config keys live.
    #[arg(long, global = true, default_value = "/config/")]
    pub prefix: String,
    /// The config subcommand.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// Config subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Sets a config key; prints the new revision.
    Set {
        /// The key (under the prefix).
        key: String,
        /// The value.
        value: String,
    },
    /// Prints a config value (now, or at --revision).
    Get {
        /// The key (under the prefix).
        key: String,
        /// Reads the value as of this store revision.
        #[arg(long, default_value_t = 0)]
        revision: i64,
    },
    /// Prints every version of a key since it was last created, oldest first.
    History {
        /// The key (under the prefix).
        key: String,
        /// Walks back at most this many versions.
        #[arg(long, default_value_t = HISTORY_VERSIONS_MAX_DEFAULT)]
        max_versions: usize,
    },
    /// Writes the value a key had at revision R as a new revision.
    Rollback {
        /// The key (under the prefix).
        key: String,
        /// The revision whose value to restore.
        #[arg(long)]
        to_revision: i64,
    },
}

/// Runs a `config` subcommand.
pub async fn run(client: &Client, output: OutputFormat, args: ConfigArgs) -> anyhow::Result<()> {
    let full_key = |key: &str| format!("{}{key}", args.prefix);
    match args.command {
        ConfigCommand::Set { key, value } => {
            let resp = client
                .put(PutRequest {
                    key: full_key(&key).into_bytes(),
                    value: value.into_bytes(),
                    ..Default::default()
                })
                .await?;
            let revision = header_revision(resp.header.as_ref());
            match output {
                OutputFormat::Text => println!("OK revision {revision}"),
                OutputFormat::Json => {
                    print_json(&json!({ "key": full_key(&key), "revision": revision }))?
                }
            }
        }
        ConfigCommand::Get { key, revision } => {
            let kv = get_at(client, &full_key(&key), revision).await?;
            let Some(kv) = kv else {
                if revision > 0 {
                    bail!(
                        "config key {} did not exist at revision {revision}",
                        full_key(&key)
                    );
                }
                bail!("config key {} not found", full_key(&key));
            };
            match output {
                OutputFormat::Text => print_bytes_line(&kv.value)?,
                OutputFormat::Json => print_json(&kv_json(&kv))?,
            }
        }
        ConfigCommand::History { key, max_versions } => {
            let key = full_key(&key);
            let Some(latest) = get_at(client, &key, 0).await? else {
                bail!("config key {key} not found");
            };
            let (versions, compacted) = history(client, &key, latest, max_versions).await?;
            if compacted {
                eprintln!("(older versions of {key} are compacted)");
            }
            for kv in versions.iter().rev() {
                match output {
                    OutputFormat::Text => {
                        let mut line = format!("{}\t", kv.mod_revision).into_bytes();
                        line.extend_from_slice(&kv.value);
                        print_bytes_line(&line)?;
                    }
                    OutputFormat::Json => print_json(&kv_json(kv))?,
                }
            }
        }
        ConfigCommand::Rollback { key, to_revision } => {
            let key = full_key(&key);
            anyhow::ensure!(to_revision > 0, "--to-revision must be positive");
            let old = match get_at(client, &key, to_revision).await {
                Ok(Some(kv)) => kv,
                Ok(None) => bail!("config key {key} did not exist at revision {to_revision}"),
                Err(e) if e.is_compacted() => {
                    bail!("cannot roll {key} back to revision {to_revision}: it is compacted ({e})")
                }
                Err(e) => return Err(e.into()),
            };
            let resp = client
                .put(PutRequest {
                    key: key.clone().into_bytes(),
                    value: old.value.clone(),
                    ..Default::default()
                })
                .await?;
            let revision = header_revision(resp.header.as_ref());
            match output {
                OutputFormat::Text => {
                    println!("rolled back {key} to its value at revision {to_revision}: revision {revision}")
                }
                OutputFormat::Json => print_json(&json!({
                    "key": key,
                    "to_revision": to_revision,
                    "revision": revision,
                }))?,
            }
        }
    }
    Ok(())
}

/// The key-value of `key` at `revision` (0: latest), or None when it did not exist then.
async fn get_at(client: &Client, key: &str, revision: i64) -> Result<Option<KeyValue>, RpcError> {
    let resp = client
        .range(RangeRequest {
            key: key.as_bytes().to_vec(),
            revision,
            ..Default::default()
        })
        .await?;
    Ok(resp.kvs.into_iter().next())
}

/// Walks from `latest` back to version 1 of the key's current life, newest first. Returns
/// true as well when the walk stopped at compacted history.
async fn history(
    client: &Client,
    key: &str,
    latest: KeyValue,
    max_versions: usize,
) -> Result<(Vec<KeyValue>, bool), RpcError> {
    let mut versions = vec![latest];
    while versions.len() < max_versions {
        let current = versions.last().expect("versions starts non-empty");
        if current.version <= 1 {
            break;
        }
        match get_at(client, key, current.mod_revision - 1).await {
            // Each step must go strictly back in time, or the walk might not end.
            Ok(Some(previous)) if previous.mod_revision < current.mod_revision => {
                versions.push(previous)
            }
            Ok(Some(previous)) => {
                return Err(RpcError::new(
                    tonic::Code::Internal,
                    format!(
                        "server answered a read at revision {} with mod_revision {}",
                        current.mod_revision - 1,
                        previous.mod_revision
                    ),
                ))
            }
            Ok(None) => break,
            Err(e) if e.is_compacted() => return Ok((versions, true)),
            Err(e) => return Err(e),
        }
    }
    Ok((versions, false))
}
