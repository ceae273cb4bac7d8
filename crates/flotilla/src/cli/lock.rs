//! `flotilla lock <name> -- <command>`: runs a command while holding a distributed lock.
//!
//! The recipe is etcd's client-side mutex (clientv3/concurrency), so `flotilla lock` and
//! `etcdctl lock` exclude each other on the same name:
//! 1. grant a lease (the session) and keep it alive in the background;
//! 2. in one txn, create `<name>/<lease-hex>` bound to the lease if it does not exist
//!    (`create_revision == 0`), and read the oldest key under `<name>/`;
//! 3. if our key is not the oldest, repeatedly take the youngest key created before ours and
//!    watch it until it is deleted — a queue, each waiter watching only its predecessor, no
//!    polling;
//! 4. run the command with `FLOTILLA_LOCK_KEY` and `FLOTILLA_LOCK_REVISION` (our key's
//!    create_revision: a fencing token that grows with every acquisition);
//! 5. revoke the lease (deleting the key) and exit with the command's code.
//!
//! If the lease is lost while the command runs, the lock may already belong to someone else:
//! the command is killed and `lock` fails.

use std::process::Stdio;

use anyhow::{bail, Context as _};
use flotilla_kv::proto::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op::Request,
    response_op::Response,
    watch_request::RequestUnion,
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};
use flotilla_kv::proto::mvccpb::event::EventType;

use super::args::prefix_range_end;
use super::client::{is_retriable, watch_cancel_status, Client, RpcError};
use super::lease::Keeper;
use super::output::{header_revision, OutputFormat};

/// Upper bound on predecessors waited for; each wait ends with a deletion, so a real queue
/// never gets near it.
const PREDECESSOR_WAITS_MAX: usize = 1_000_000;

/// Exit code when the command was ended by a signal (128 + SIGTERM-ish, as shells report).
const EXIT_CODE_SIGNALED: i32 = 128;

/// `lock` arguments.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// The lock's name; the lock's keys live under `<NAME>/`.
    pub name: String,
    /// TTL in seconds of the lease that holds the lock; if this process dies the lock is
    /// released at most this long after.
    #[arg(long = "ttl", default_value_t = 10)]
    pub ttl_s: i64,
    /// The command to run while holding the lock (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// The lock, once held.
struct Held {
    key: String,
    create_revision: i64,
}

/// Runs `lock`. Exits the process with the command's exit code when it ran.
pub async fn run(client: &Client, _output: OutputFormat, args: LockArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.ttl_s > 0, "--ttl must be at least 1 second");
    let lease = client.lease_grant(args.ttl_s, 0).await?;
    let lease_id = lease.id;
    let mut keeper = Keeper::start(client.clone(), lease_id, lease.ttl);

    let outcome = async {
        let held = tokio::select! {
            held = acquire(client, &args.name, lease_id) => held?,
            reason = keeper.lost() => bail!("lock {:?} not acquired: {reason}", args.name),
            _ = tokio::signal::ctrl_c() => bail!("interrupted while waiting for lock {:?}", args.name),
        };
        run_command(&args.command, &held, &mut keeper).await
    }
    .await;

    drop(keeper);
    // Revoking deletes our key, which wakes the next waiter at once instead of after the TTL.
    if let Err(e) = client.lease_revoke(lease_id).await {
        eprintln!("warning: revoking lease {lease_id:016x}: {e} (the lock frees when it expires)");
    }
    let code = outcome?;
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Steps 2–3 of the recipe: enqueue our key and wait until it is the oldest.
async fn acquire(client: &Client, name: &str, lease_id: i64) -> anyhow::Result<Held> {
    let prefix = format!("{name}/");
    let key = format!("{prefix}{lease_id:x}");
    let oldest = RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: prefix.clone().into_bytes(),
            range_end: prefix_range_end(prefix.as_bytes()),
            limit: 1,
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Create as i32,
            ..Default::default()
        })),
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.clone().into_bytes(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            range_end: Vec::new(),
        }],
        success: vec![
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone().into_bytes(),
                    value: Vec::new(),
                    lease: lease_id,
                    ..Default::default()
                })),
            },
            oldest.clone(),
        ],
        failure: vec![
            RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })),
            },
            oldest,
        ],
    };
    let resp = client.txn(txn).await?;
    let my_revision = if resp.succeeded {
        header_revision(resp.header.as_ref())
    } else {
        match resp.responses.first().and_then(|r| r.response.as_ref()) {
            Some(Response::ResponseRange(r)) if !r.kvs.is_empty() => r.kvs[0].create_revision,
            _ => bail!("lock key {key} vanished right after its create txn failed"),
        }
    };
    anyhow::ensure!(
        my_revision > 0,
        "server returned no revision for lock key {key}"
    );
    let owner_revision = match resp.responses.get(1).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => r.kvs.first().map(|kv| kv.create_revision),
        _ => None,
    };
    if owner_revision != Some(my_revision) {
        wait_for_predecessors(client, &prefix, my_revision - 1).await?;
    }
    // The lease may have expired while we waited; then our key is gone and we hold nothing.
    let mine = client
        .range(RangeRequest {
            key: key.clone().into_bytes(),
            ..Default::default()
        })
        .await?;
    if mine.kvs.is_empty() {
        bail!("lock key {key} is gone (lease expired while waiting)");
    }
    Ok(Held {
        key,
        create_revision: my_revision,
    })
}

/// Waits until no key under `prefix` has create_revision ≤ `max_create_revision`: take the
/// youngest such key, watch it until deleted, repeat.
async fn wait_for_predecessors(
    client: &Client,
    prefix: &str,
    max_create_revision: i64,
) -> anyhow::Result<()> {
    for _ in 0..PREDECESSOR_WAITS_MAX {
        let resp = client
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_range_end(prefix.as_bytes()),
                limit: 1,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Create as i32,
                max_create_revision,
                ..Default::default()
            })
            .await?;
        let Some(predecessor) = resp.kvs.first() else {
            return Ok(());
        };
        wait_for_delete(
            client,
            &predecessor.key,
            header_revision(resp.header.as_ref()),
        )
        .await?;
    }
    bail!("gave up after waiting for {PREDECESSOR_WAITS_MAX} lock holders")
}

/// Watches `key` from `revision` (when it existed) until a DELETE event. A broken stream just
/// returns: the caller re-reads the queue, which is always safe.
async fn wait_for_delete(client: &Client, key: &[u8], revision: i64) -> anyhow::Result<()> {
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.to_vec(),
            start_revision: revision,
            ..Default::default()
        })),
    };
    let watch = client.watch(create).await?;
    let _requests = watch.requests;
    let mut stream = watch.responses;
    // Ends with the deletion, a stream failure, or an error; each message is one server event.
    loop {
        match stream.message().await {
            Ok(Some(resp)) => {
                if resp.canceled {
                    let status = watch_cancel_status(&resp);
                    if RpcError::from(status.clone()).is_compacted() {
                        // History we asked for is gone; re-reading the queue is current.
                        return Ok(());
                    }
                    return Err(RpcError::from(status).into());
                }
                if resp
                    .events
                    .iter()
                    .any(|e| e.r#type == EventType::Delete as i32)
                {
                    return Ok(());
                }
            }
            Ok(None) => return Ok(()),
            Err(status) if is_retriable(status.code()) => return Ok(()),
            Err(status) => return Err(RpcError::from(status).into()),
        }
    }
}

/// Step 4: runs the command holding the lock; returns its exit code.
async fn run_command(command: &[String], held: &Held, keeper: &mut Keeper) -> anyhow::Result<i32> {
    let (program, program_args) = command.split_first().context("no command given after --")?;
    let mut child = tokio::process::Command::new(program)
        .args(program_args)
        .env("FLOTILLA_LOCK_KEY", &held.key)
        .env("FLOTILLA_LOCK_REVISION", held.create_revision.to_string())
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {program:?}"))?;
    tokio::select! {
        status = child.wait() => {
            let status = status.with_context(|| format!("waiting for {program:?}"))?;
            Ok(status.code().unwrap_or(EXIT_CODE_SIGNALED))
        }
        reason = keeper.lost() => {
            let _ = child.kill().await;
            bail!("lost lock {}: {reason}; killed {program:?}", held.key)
        }
        _ = tokio::signal::ctrl_c() => {
            let _ = child.kill().await;
            bail!("interrupted; killed {program:?} and released lock {}", held.key)
        }
    }
}
