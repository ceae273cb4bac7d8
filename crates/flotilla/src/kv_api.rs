//! The KV server this crate runs: `flotilla_kv::server`, re-exported so the rest of the crate
//! names it in one place.

pub use flotilla_kv::server::{KvServer, KvServerConfig, MemberInfo, RequestCount};
