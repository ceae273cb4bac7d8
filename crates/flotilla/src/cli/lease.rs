//! `flotilla lease …`: grant, keepalive, revoke, ttl, list; and [`Keeper`], the background
//! keep-alive `lock` uses.
//!
//! Lease ids are printed and parsed as 16-digit hex, like etcdctl.

use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::args::parse_lease_id;
use super::client::Client;
use super::output::{header_json, insert_bytes, print_json, OutputFormat};

/// Lease subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LeaseCommand {
    /// Grants a lease with a TTL in seconds; prints its id.
    Grant {
        /// Time to live, in seconds.
        ttl_s: i64,
    },
    /// Keeps a lease alive until Ctrl-C or the lease expires.
    Keepalive {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renews once and exits.
        #[arg(long)]
        once: bool,
    },
    /// Revokes a lease, deleting its keys.
    Revoke {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Prints a lease's granted and remaining TTL.
    Ttl {
        /// The lease id (hex).
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also prints the keys attached to the lease.
        #[arg(long)]
        keys: bool,
    },
    /// Lists all leases.
    List,
}

/// Runs a `lease` subcommand.
pub async fn run(client: &Client, output: OutputFormat, cmd: LeaseCommand) -> anyhow::Result<()> {
    match cmd {
        LeaseCommand::Grant { ttl_s } => {
            let resp = client.lease_grant(ttl_s, 0).await?;
            match output {
                OutputFormat::Text => {
                    println!("lease {:016x} granted with TTL({}s)", resp.id, resp.ttl)
                }
                OutputFormat::Json => print_json(&json!({
                    "header": header_json(resp.header.as_ref()),
                    "id": format!("{:016x}", resp.id),
                    "ttl": resp.ttl,
                }))?,
            }
        }
        LeaseCommand::Keepalive { id, once } => keepalive(client, output, id, once).await?,
        LeaseCommand::Revoke { id } => {
            let resp = client.lease_revoke(id).await?;
            match output {
                OutputFormat::Text => println!("lease {id:016x} revoked"),
                OutputFormat::Json => print_json(&json!({
                    "header": header_json(resp.header.as_ref()),
                    "id": format!("{id:016x}"),
                    "revoked": true,
                }))?,
            }
        }
        LeaseCommand::Ttl { id, keys } => {
            let resp = client.lease_time_to_live(id, keys).await?;
            match output {
                OutputFormat::Text => {
                    if resp.ttl < 0 {
                        println!("lease {id:016x} already expired");
                    } else {
                        let mut line = format!(
                            "lease {id:016x} granted with TTL({}s), remaining({}s)",
                            resp.granted_ttl, resp.ttl
                        );
                        if keys {
                            let names: Vec<_> = resp
                                .keys
                                .iter()
                                .map(|k| String::from_utf8_lossy(k).into_owned())
                                .collect();
                            line.push_str(&format!(", attached keys([{}])", names.join(" ")));
                        }
                        println!("{line}");
                    }
                }
                OutputFormat::Json => {
                    let keys: Vec<_> = resp
                        .keys
                        .iter()
                        .map(|k| {
                            let mut object = serde_json::Map::new();
                            insert_bytes(&mut object, "key", k);
                            serde_json::Value::Object(object)
                        })
                        .collect();
                    print_json(&json!({
                        "header": header_json(resp.header.as_ref()),
                        "id": format!("{id:016x}"),
                        "ttl": resp.ttl,
                        "granted_ttl": resp.granted_ttl,
                        "keys": keys,
                    }))?
                }
            }
        }
        LeaseCommand::List => {
            let resp = client.lease_leases().await?;
            match output {
                OutputFormat::Text => {
                    println!("found {} leases", resp.leases.len());
                    for lease in &resp.leases {
                        println!("{:016x}", lease.id);
                    }
                }
                OutputFormat::Json => print_json(&json!({
                    "header": header_json(resp.header.as_ref()),
                    "leases": resp
                        .leases
                        .iter()
                        .map(|l| format!("{:016x}", l.id))
                        .collect::<Vec<_>>(),
                }))?,
            }
        }
    }
    Ok(())
}

/// How often a lease with `ttl_s` is renewed: a third of the TTL (at least 500 ms), so two
/// renewals may fail before it expires.
pub fn renew_interval(ttl_s: i64) -> Duration {
    let ttl_ms = u64::try_from(ttl_s.max(1)).unwrap_or(1) * 1000;
    Duration::from_millis((ttl_ms / 3).max(500))
}

async fn keepalive(
    client: &Client,
    output: OutputFormat,
    id: i64,
    once: bool,
) -> anyhow::Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Runs until Ctrl-C, --once, or the lease is gone; each renewal is one bounded call.
    loop {
        let resp = client.lease_keep_alive_once(id).await?;
        if resp.ttl <= 0 {
            anyhow::bail!("lease {id:016x} expired or revoked");
        }
        match output {
            OutputFormat::Text => println!("lease {id:016x} keepalived with TTL({})", resp.ttl),
            OutputFormat::Json => print_json(&json!({
                "header": header_json(resp.header.as_ref()),
                "id": format!("{id:016x}"),
                "ttl": resp.ttl,
            }))?,
        }
        if once {
            return Ok(());
        }
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tokio::time::sleep(renew_interval(resp.ttl)) => {}
        }
    }
}

/// Keeps a lease alive in a background task until dropped or the lease is lost.
///
/// The lease counts as lost when the server says so (TTL ≤ 0) or when no renewal has
/// succeeded for a whole TTL — past that point the server may already have expired it, so
/// whoever relies on the lease (a lock holder) must stop.
pub struct Keeper {
    task: JoinHandle<()>,
    lost: watch::Receiver<Option<String>>,
}

impl Keeper {
    /// Starts renewing lease `id` granted with `ttl_s`.
    pub fn start(client: Client, id: i64, ttl_s: i64) -> Keeper {
        let (lost_tx, lost) = watch::channel(None);
        let task = tokio::spawn(async move {
            let ttl = Duration::from_secs(u64::try_from(ttl_s.max(1)).unwrap_or(1));
            let interval = renew_interval(ttl_s);
            let mut last_renewed = Instant::now();
            // Ends only when the lease is lost or the task is aborted by drop.
            loop {
                tokio::time::sleep(interval).await;
                match client.lease_keep_alive_once(id).await {
                    Ok(resp) if resp.ttl > 0 => last_renewed = Instant::now(),
                    Ok(_) => {
                        let _ = lost_tx.send(Some(format!("lease {id:016x} expired or revoked")));
                        return;
                    }
                    Err(e) if last_renewed.elapsed() >= ttl => {
                        let _ = lost_tx.send(Some(format!(
                            "lease {id:016x} not renewed for {ttl:?}: {e}"
                        )));
                        return;
                    }
                    Err(e) => eprintln!("warning: renewing lease {id:016x}: {e}"),
                }
            }
        });
        Keeper { task, lost }
    }

    /// Resolves with the reason once the lease is lost; pending forever while it is alive.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The task ended without a reason (it panicked): treat as lost.
            Err(_) => "lease keep-alive task stopped".to_string(),
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
