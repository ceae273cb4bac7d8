//! [`KvStateMachine`]: the KV as the engine's [`StateMachine`], and its snapshot format.
//!
//! # Snapshot format (version 1)
//! `"FLKVSNAP"` (8 bytes) | version `u32` LE | body | CRC32C of everything before it, `u32` LE.
//! The body is the current and compact revisions, every key's history, the retained watch
//! events and the leases (see `MvccStore::encode_body`). Limits are configuration, not state:
//! they are not in the snapshot.

use bytes::Bytes;
use flotilla_engine::{AppliedEntry, StateMachine};

use crate::command::{Command, Reader, Response, ResponseBody, Writer};
use crate::error::{KvError, Result};
use crate::mvcc::{Limits, MvccStore};

/// First bytes of every KV snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"FLKVSNAP";
/// The snapshot version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The replicated KV: applies encoded [`Command`]s, answers with encoded [`Response`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStateMachine {
    store: MvccStore,
}

impl KvStateMachine {
    /// An empty KV with these bounds.
    pub fn new(limits: Limits) -> Self {
        KvStateMachine {
            store: MvccStore::new(limits),
        }
    }

    /// The store (for reads served after a ReadIndex, and for the leader's lease expiry scan).
    pub fn store(&self) -> &MvccStore {
        &self.store
    }

    /// Applies one decoded command. Refusals leave the store unchanged.
    pub fn apply_command(&mut self, cmd: &Command) -> Response {
        let s = &mut self.store;
        let result = match cmd {
            Command::Put(p) => s.put(p).map(ResponseBody::Put),
            Command::DeleteRange(d) => s.delete_range(d).map(ResponseBody::DeleteRange),
            Command::Txn(t) => s.txn(t).map(ResponseBody::Txn),
            Command::Compact { revision } => s.compact(*revision).map(|()| ResponseBody::Compact),
            Command::LeaseGrant {
                id,
                ttl_secs,
                now_ms,
            } => s
                .lease_grant(*id, *ttl_secs, *now_ms)
                .map(|()| ResponseBody::LeaseGrant {
                    id: *id,
                    ttl_secs: *ttl_secs,
                }),
            Command::LeaseRevoke { id } => s
                .lease_revoke(*id)
                .map(|deleted| ResponseBody::LeaseRevoke { deleted }),
            Command::LeaseKeepAlive { id, now_ms } => s
                .lease_keep_alive(*id, *now_ms)
                .map(|ttl_secs| ResponseBody::LeaseKeepAlive { id: *id, ttl_secs }),
        };
        Response {
            revision: s.current_revision(),
            result,
        }
    }

    /// Applies one encoded command; a malformed one yields an encoded error response.
    pub fn apply_bytes(&mut self, data: &[u8]) -> Vec<u8> {
        match Command::decode(data) {
            Ok(cmd) => self.apply_command(&cmd).encode(),
            Err(e) => Response {
                revision: self.store.current_revision(),
                result: Err(e),
            }
            .encode(),
        }
    }

    /// Encodes the whole state.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.buf.extend_from_slice(SNAPSHOT_MAGIC);
        w.u32(SNAPSHOT_VERSION);
        self.store.encode_body(&mut w);
        let crc = crc32c::crc32c(&w.buf);
        w.u32(crc);
        w.buf
    }

    /// Decodes a snapshot, checking magic, version, checksum and contents.
    pub fn decode_snapshot(data: &[u8], limits: Limits) -> Result<KvStateMachine> {
        let corrupted = |reason: String| KvError::CorruptedSnapshot { reason };
        if data.len() < SNAPSHOT_MAGIC.len() + 4 + 4 {
            return Err(corrupted(format!("{} bytes is too short", data.len())));
        }
        if &data[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
            return Err(corrupted("bad magic".into()));
        }
        let (framed, crc) = data.split_at(data.len() - 4);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        let computed = crc32c::crc32c(framed);
        if stored != computed {
            return Err(corrupted(format!(
                "checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            )));
        }
        let mut r = Reader::new(&framed[SNAPSHOT_MAGIC.len()..]);
        let version = r.u32("snapshot version")?;
        if version != SNAPSHOT_VERSION {
            return Err(KvError::UnsupportedVersion {
                version,
                supported: SNAPSHOT_VERSION,
            });
        }
        let store = MvccStore::decode_body(&mut r, limits)?;
        r.finish("snapshot")?;
        Ok(KvStateMachine { store })
    }
}

impl Default for KvStateMachine {
    fn default() -> Self {
        KvStateMachine::new(Limits::default())
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, entries: &[AppliedEntry]) -> Vec<Bytes> {
        entries
            .iter()
            .map(|e| Bytes::from(self.apply_bytes(&e.data)))
            .collect()
    }

    fn snapshot(&self) -> Bytes {
        Bytes::from(self.encode_snapshot())
    }

    /// # Panics
    /// On a snapshot that fails its checks: the engine's `restore` cannot fail, and running on
    /// from a state we cannot trust would serve wrong data.
    fn restore(&mut self, data: &Bytes) {
        let limits = self.store.limits().clone();
        if data.is_empty() {
            self.store = MvccStore::new(limits);
            return;
        }
        match KvStateMachine::decode_snapshot(data, limits) {
            Ok(sm) => *self = sm,
            Err(e) => panic!(
                "refusing to restore the KV from a {} byte snapshot: {e}",
                data.len()
            ),
        }
    }
}
