//! `flotilla kv …`: put, get, del, watch and txn.
//!
//! The put/get/del argument structs double as the grammar of `kv txn` operation lines, so a
//! txn op accepts exactly the flags the command does.

use anyhow::Context as _;
use flotilla_kv::proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    watch_request::RequestUnion,
    CompactionRequest, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest,
};
use flotilla_kv::proto::mvccpb::{event::EventType, Event};
use serde_json::json;

use super::args::{parse_lease_id, prefix_range_end, FROM_KEY_RANGE_END};
use super::client::{is_retriable, watch_cancel_status, Client, RpcError};
use super::output::{
    header_json, header_revision, kv_json, print_bytes_line, print_json, print_kv_text,
    OutputFormat,
};

/// Key-value subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KvCommand {
    /// Puts a key; prints OK.
    Put(PutArgs),
    /// Gets a key or a range of keys; prints key and value lines.
    Get(GetArgs),
    /// Deletes a key or range; prints the number deleted.
    Del(DelArgs),
    /// Prints events on a key or prefix until Ctrl-C or --max-events.
    Watch(WatchArgs),
    /// Discards history before a revision (reads and watches below it fail afterwards).
    Compact {
        /// The revision to compact up to.
        revision: i64,
        /// Waits until the compaction is physically applied.
        #[arg(long)]
        physical: bool,
    },
    /// Runs a transaction read from stdin in etcdctl's format: compares, a blank line,
    /// success ops, a blank line, failure ops.
    Txn,
}

/// `kv put` (also a txn op).
#[derive(Debug, Clone, clap::Args)]
pub struct PutArgs {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
    /// Attaches the key to this lease (hex id, as `lease grant` prints it).
    #[arg(long, value_parser = parse_lease_id)]
    pub lease: Option<i64>,
    /// Prints the previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
}

impl PutArgs {
    /// The request this put sends.
    pub fn request(&self) -> PutRequest {
        PutRequest {
            key: self.key.clone().into_bytes(),
            value: self.value.clone().into_bytes(),
            lease: self.lease.unwrap_or(0),
            prev_kv: self.prev_kv,
            ..Default::default()
        }
    }
}

/// What `--sort-by` sorts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// The key bytes.
    Key,
    /// The key's version.
    Version,
    /// The create revision.
    Create,
    /// The mod revision.
    Modify,
    /// The value bytes.
    Value,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// Smallest first.
    Ascend,
    /// Largest first.
    Descend,
}

/// `kv get` (also a txn op).
#[derive(Debug, Clone, clap::Args)]
pub struct GetArgs {
    /// The key, or the prefix with --prefix, or the first key with --from-key.
    pub key: String,
    /// Gets every key starting with <KEY>.
    #[arg(long, conflicts_with = "from_key")]
    pub prefix: bool,
    /// Gets every key greater than or equal to <KEY>.
    #[arg(long)]
    pub from_key: bool,
    /// Returns at most N keys (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Reads at revision R (0: latest).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Prints keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Prints only the number of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Reads from the local member without a quorum round (may be stale).
    #[arg(long)]
    pub serializable: bool,
    /// Sorts by this field (ascending unless --order).
    #[arg(long, value_enum)]
    pub sort_by: Option<SortBy>,
    /// Sort direction (sorts by key unless --sort-by).
    #[arg(long, value_enum)]
    pub order: Option<Order>,
}

impl GetArgs {
    /// The request this get sends.
    pub fn request(&self) -> RangeRequest {
        let key = self.key.clone().into_bytes();
        let range_end = if self.prefix {
            prefix_range_end(&key)
        } else if self.from_key {
            FROM_KEY_RANGE_END.to_vec()
        } else {
            Vec::new()
        };
        // Like etcdctl: a sort field alone sorts ascending; an order alone sorts by key.
        let sort_order = match (self.sort_by, self.order) {
            (_, Some(Order::Descend)) => SortOrder::Descend,
            (Some(_), None) | (_, Some(Order::Ascend)) => SortOrder::Ascend,
            (None, None) => SortOrder::None,
        };
        let sort_target = match self.sort_by.unwrap_or(SortBy::Key) {
            SortBy::Key => SortTarget::Key,
            SortBy::Version => SortTarget::Version,
            SortBy::Create => SortTarget::Create,
            SortBy::Modify => SortTarget::Mod,
            SortBy::Value => SortTarget::Value,
        };
        RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.rev,
            sort_order: sort_order as i32,
            sort_target: sort_target as i32,
            serializable: self.serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

/// `kv del` (also a txn op).
#[derive(Debug, Clone, clap::Args)]
pub struct DelArgs {
    /// The key, or the prefix with --prefix, or the first key with --from-key.
    pub key: String,
    /// Deletes every key starting with <KEY>.
    #[arg(long, conflicts_with = "from_key")]
    pub prefix: bool,
    /// Deletes every key greater than or equal to <KEY>.
    #[arg(long)]
    pub from_key: bool,
    /// Prints the deleted key-values.
    #[arg(long)]
    pub prev_kv: bool,
}

impl DelArgs {
    /// The request this delete sends.
    pub fn request(&self) -> DeleteRangeRequest {
        let key = self.key.clone().into_bytes();
        let range_end = if self.prefix {
            prefix_range_end(&key)
        } else if self.from_key {
            FROM_KEY_RANGE_END.to_vec()
        } else {
            Vec::new()
        };
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        }
    }
}

/// `kv watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The key, or the prefix with --prefix.
    pub key: String,
    /// Watches every key starting with <KEY>.
    #[arg(long)]
    pub prefix: bool,
    /// Starts at revision R (0: from now on); older events are replayed.
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Includes each event's previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Exits after printing N events.
    #[arg(long)]
    pub max_events: Option<u64>,
}

/// Runs a `kv` subcommand.
pub async fn run(client: &Client, output: OutputFormat, cmd: KvCommand) -> anyhow::Result<()> {
    match cmd {
        KvCommand::Put(args) => {
            let resp = client.put(args.request()).await?;
            print_put(output, &resp)
        }
        KvCommand::Get(args) => {
            let resp = client.range(args.request()).await?;
            print_range(output, &resp, args.keys_only, args.count_only)
        }
        KvCommand::Del(args) => {
            let resp = client.delete(args.request()).await?;
            print_delete(output, &resp)
        }
        KvCommand::Watch(args) => watch(client, output, &args).await,
        KvCommand::Txn => super::txn::run(client, output).await,
        KvCommand::Compact { revision, physical } => {
            let resp = client
                .compact(CompactionRequest { revision, physical })
                .await?;
            match output {
                OutputFormat::Text => println!("compacted revision {revision}"),
                OutputFormat::Json => print_json(&json!({
                    "header": header_json(resp.header.as_ref()),
                    "compacted_revision": revision,
                }))?,
            }
            Ok(())
        }
    }
}

/// Prints a put: `OK`, then the previous key-value if one came back.
pub fn print_put(output: OutputFormat, resp: &PutResponse) -> anyhow::Result<()> {
    match output {
        OutputFormat::Text => {
            println!("OK");
            if let Some(prev) = &resp.prev_kv {
                print_kv_text(prev, false)?;
            }
            Ok(())
        }
        OutputFormat::Json => print_json(&put_json(resp)),
    }
}

/// A put response as JSON.
pub fn put_json(resp: &PutResponse) -> serde_json::Value {
    json!({
        "header": header_json(resp.header.as_ref()),
        "prev_kv": resp.prev_kv.as_ref().map(kv_json),
    })
}

/// Prints a range: key and value lines per key-value, or the count with `count_only`.
pub fn print_range(
    output: OutputFormat,
    resp: &RangeResponse,
    keys_only: bool,
    count_only: bool,
) -> anyhow::Result<()> {
    match output {
        OutputFormat::Text => {
            if count_only {
                println!("{}", resp.count);
                return Ok(());
            }
            for kv in &resp.kvs {
                print_kv_text(kv, keys_only)?;
            }
            Ok(())
        }
        OutputFormat::Json => print_json(&range_json(resp)),
    }
}

/// A range response as JSON.
pub fn range_json(resp: &RangeResponse) -> serde_json::Value {
    json!({
        "header": header_json(resp.header.as_ref()),
        "kvs": resp.kvs.iter().map(kv_json).collect::<Vec<_>>(),
        "count": resp.count,
        "more": resp.more,
    })
}

/// Prints a delete: the number deleted, then the deleted key-values if asked for.
pub fn print_delete(output: OutputFormat, resp: &DeleteRangeResponse) -> anyhow::Result<()> {
    match output {
        OutputFormat::Text => {
            println!("{}", resp.deleted);
            for kv in &resp.prev_kvs {
                print_kv_text(kv, false)?;
            }
            Ok(())
        }
        OutputFormat::Json => print_json(&delete_json(resp)),
    }
}

/// A delete response as JSON.
pub fn delete_json(resp: &DeleteRangeResponse) -> serde_json::Value {
    json!({
        "header": header_json(resp.header.as_ref()),
        "deleted": resp.deleted,
        "prev_kvs": resp.prev_kvs.iter().map(kv_json).collect::<Vec<_>>(),
    })
}

/// Watches until Ctrl-C, `--max-events`, or an error. A broken stream is reopened (with
/// failover) right after the last revision printed, so no event is lost or repeated.
async fn watch(client: &Client, output: OutputFormat, args: &WatchArgs) -> anyhow::Result<()> {
    let key = args.key.clone().into_bytes();
    let range_end = if args.prefix {
        prefix_range_end(&key)
    } else {
        Vec::new()
    };
    let max_events = args.max_events.unwrap_or(u64::MAX);
    let mut printed: u64 = 0;
    let mut next_rev = args.rev;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Each pass is one stream; every reopen after the first needs a failed stream, and a
    // failed reopen ends the command, so the number of passes is bounded by stream failures.
    while printed < max_events {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: key.clone(),
                range_end: range_end.clone(),
                start_revision: next_rev,
                prev_kv: args.prev_kv,
                ..Default::default()
            })),
        };
        let watch = client.watch(create).await?;
        let _requests = watch.requests;
        let mut stream = watch.responses;
        if next_rev == 0 {
            // Watching "from now": a reopen must resume right after the creation revision.
            next_rev = header_revision(watch.created.header.as_ref()) + 1;
        }
        loop {
            let message = tokio::select! {
                _ = &mut ctrl_c => return Ok(()),
                message = stream.message() => message,
            };
            let resp = match message {
                Ok(Some(resp)) => resp,
                // The server ended the stream: reopen it.
                Ok(None) => break,
                Err(status) if is_retriable(status.code()) => break,
                Err(status) => return Err(RpcError::from(status).into()),
            };
            if resp.canceled {
                return Err(RpcError::from(watch_cancel_status(&resp)).into());
            }
            for event in &resp.events {
                print_event(output, event)?;
                if let Some(kv) = &event.kv {
                    next_rev = kv.mod_revision + 1;
                }
                printed += 1;
                if printed >= max_events {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Prints a watch event: `PUT`/`DELETE`, then (with --prev-kv) the previous key-value, then the
/// key and, for puts, the value — etcdctl's order.
fn print_event(output: OutputFormat, event: &Event) -> anyhow::Result<()> {
    let kind = if event.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    };
    match output {
        OutputFormat::Text => {
            println!("{kind}");
            if let Some(prev) = &event.prev_kv {
                print_kv_text(prev, false)?;
            }
            if let Some(kv) = &event.kv {
                print_bytes_line(&kv.key)?;
                if kind == "PUT" {
                    print_bytes_line(&kv.value)?;
                }
            }
            Ok(())
        }
        OutputFormat::Json => print_json(&json!({
            "type": kind,
            "kv": event.kv.as_ref().map(kv_json),
            "prev_kv": event.prev_kv.as_ref().map(kv_json),
        })),
    }
    .context("printing a watch event")
}
