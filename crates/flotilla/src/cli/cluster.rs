//! `flotilla cluster …`: member status and membership changes.
//!
//! Member ids are printed and parsed as hex, like etcdctl.

use anyhow::bail;
use flotilla_kv::proto::etcdserverpb::{Member, MemberAddRequest, ResponseHeader, StatusResponse};
use serde_json::json;

use super::args::parse_member_id;
use super::client::Client;
use super::output::{header_json, print_json, OutputFormat};

/// Cluster subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Prints each endpoint's member id, leader, raft term/index and revision.
    Status,
    /// Lists the members.
    Members,
    /// Adds a member by its peer URL.
    Add {
        /// The new member's peer URL (e.g. http://10.0.0.4:2380).
        peer_url: String,
        /// Adds it as a non-voting learner (promote it later).
        #[arg(long)]
        learner: bool,
    },
    /// Removes a member.
    Remove {
        /// The member id (hex).
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Promotes a learner to a voting member.
    Promote {
        /// The member id (hex).
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Moves leadership to another voting member (sent to the current leader).
    TransferLeader {
        /// The target member id (hex).
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
}

/// Runs a `cluster` subcommand.
pub async fn run(client: &Client, output: OutputFormat, cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status => status(client, output).await,
        ClusterCommand::Members => {
            let resp = client.member_list().await?;
            print_members(output, resp.header.as_ref(), &resp.members)
        }
        ClusterCommand::Add { peer_url, learner } => {
            let resp = client
                .member_add(MemberAddRequest {
                    peer_ur_ls: vec![peer_url],
                    is_learner: learner,
                })
                .await?;
            let id = resp.member.as_ref().map_or(0, |m| m.id);
            let cluster = resp.header.as_ref().map_or(0, |h| h.cluster_id);
            match output {
                OutputFormat::Text => {
                    println!("Member {id:016x} added to cluster {cluster:016x}");
                    Ok(())
                }
                OutputFormat::Json => print_json(&json!({
                    "header": header_json(resp.header.as_ref()),
                    "member": resp.member.as_ref().map(member_json),
                    "members": resp.members.iter().map(member_json).collect::<Vec<_>>(),
                })),
            }
        }
        ClusterCommand::Remove { id } => {
            let resp = client.member_remove(id).await?;
            print_change(
                output,
                "removed from",
                id,
                resp.header.as_ref(),
                &resp.members,
            )
        }
        ClusterCommand::Promote { id } => {
            let resp = client.member_promote(id).await?;
            print_change(
                output,
                "promoted in",
                id,
                resp.header.as_ref(),
                &resp.members,
            )
        }
        ClusterCommand::TransferLeader { id } => transfer_leader(client, output, id).await,
    }
}

async fn status(client: &Client, output: OutputFormat) -> anyhow::Result<()> {
    let mut failed = 0;
    for (index, endpoint) in client.endpoints().iter().enumerate() {
        match client.status_at(index).await {
            Ok(resp) => print_status(output, endpoint, &resp)?,
            Err(e) => {
                failed += 1;
                eprintln!("{endpoint}: {e}");
            }
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} endpoints did not answer",
            client.endpoints().len()
        );
    }
    Ok(())
}

fn print_status(output: OutputFormat, endpoint: &str, resp: &StatusResponse) -> anyhow::Result<()> {
    let header = resp.header.unwrap_or_default();
    match output {
        OutputFormat::Text => {
            println!(
                "{endpoint}, id={:016x}, leader={:016x}, is_leader={}, learner={}, raft_term={}, \
                 raft_index={}, raft_applied={}, revision={}, version={}",
                header.member_id,
                resp.leader,
                header.member_id == resp.leader,
                resp.is_learner,
                resp.raft_term,
                resp.raft_index,
                resp.raft_applied_index,
                header.revision,
                resp.version,
            );
            Ok(())
        }
        OutputFormat::Json => print_json(&json!({
            "endpoint": endpoint,
            "id": format!("{:016x}", header.member_id),
            "leader": format!("{:016x}", resp.leader),
            "is_leader": header.member_id == resp.leader,
            "is_learner": resp.is_learner,
            "raft_term": resp.raft_term,
            "raft_index": resp.raft_index,
            "raft_applied_index": resp.raft_applied_index,
            "revision": header.revision,
            "version": resp.version,
            "db_size": resp.db_size,
            "errors": resp.errors,
        })),
    }
}

/// MoveLeader only works at the leader: ask each endpoint for its status, find the one whose
/// member id is the leader, send it there.
async fn transfer_leader(client: &Client, output: OutputFormat, target: u64) -> anyhow::Result<()> {
    let mut leader = None;
    for index in 0..client.endpoints().len() {
        let Ok(resp) = client.status_at(index).await else {
            continue;
        };
        let member = resp.header.as_ref().map_or(0, |h| h.member_id);
        if member != 0 && member == resp.leader {
            leader = Some((index, member));
            break;
        }
    }
    let Some((index, from)) = leader else {
        bail!("no endpoint in --endpoints is the leader (list the leader's client URL)");
    };
    let resp = client.move_leader_at(index, target).await?;
    match output {
        OutputFormat::Text => {
            println!("Leadership transferred from {from:016x} to {target:016x}");
            Ok(())
        }
        OutputFormat::Json => print_json(&json!({
            "header": header_json(resp.header.as_ref()),
            "from": format!("{from:016x}"),
            "to": format!("{target:016x}"),
        })),
    }
}

fn print_change(
    output: OutputFormat,
    verb: &str,
    id: u64,
    header: Option<&ResponseHeader>,
    members: &[Member],
) -> anyhow::Result<()> {
    let cluster = header.map_or(0, |h| h.cluster_id);
    match output {
        OutputFormat::Text => {
            println!("Member {id:016x} {verb} cluster {cluster:016x}");
            Ok(())
        }
        OutputFormat::Json => print_json(&json!({
            "header": header_json(header),
            "id": format!("{id:016x}"),
            "members": members.iter().map(member_json).collect::<Vec<_>>(),
        })),
    }
}

/// etcdctl's member line: `id, started|unstarted, name, peer URLs, client URLs, is learner`.
fn print_members(
    output: OutputFormat,
    header: Option<&ResponseHeader>,
    members: &[Member],
) -> anyhow::Result<()> {
    match output {
        OutputFormat::Text => {
            for m in members {
                // A member that has not joined yet has no name.
                let state = if m.name.is_empty() {
                    "unstarted"
                } else {
                    "started"
                };
                println!(
                    "{:016x}, {state}, {}, {}, {}, {}",
                    m.id,
                    m.name,
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(","),
                    m.is_learner
                );
            }
            Ok(())
        }
        OutputFormat::Json => print_json(&json!({
            "header": header_json(header),
            "members": members.iter().map(member_json).collect::<Vec<_>>(),
        })),
    }
}

fn member_json(m: &Member) -> serde_json::Value {
    json!({
        "id": format!("{:016x}", m.id),
        "name": m.name,
        "peer_urls": m.peer_ur_ls,
        "client_urls": m.client_ur_ls,
        "is_learner": m.is_learner,
    })
}
