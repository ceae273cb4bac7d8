//! # flotilla-sim
//!
//! Deterministic simulation of whole Flotilla Raft clusters in one thread: a simulated
//! network (latency, loss, duplication, reordering, symmetric and asymmetric partitions), a
//! simulated disk (a crash loses whatever a `Ready` had not yet persisted), a nemesis that
//! crashes, partitions, changes membership and transfers leadership while clients run, and
//! checkers: invariants at every step and a linearizability check of the client history.
//!
//! It must not read wall-clock time, use real sockets or thread-local randomness: one seed
//! determines a run completely, so any failure replays exactly.
//!
//! # Layout
//! - [`kv`]: the replicated register store the clients use.
//! - [`cluster`]: the simulated cluster ([`cluster::Sim`]) and its invariant checks.
//! - [`nemesis`]: the randomized run: faults, then heal, then the liveness check.
//! - [`linearizability`]: a Wing–Gong / Porcupine-style checker, partitioned per key.
//! - [`store`]: the nodes' durable storage seam (`MemStorage`, or a real log engine).
#![warn(missing_docs)]

pub mod cluster;
pub mod kv;
pub mod linearizability;
pub mod nemesis;
pub mod store;

pub use cluster::{Sim, SimConfig};
pub use nemesis::{run_seed, run_seed_with, RunOptions, RunReport};
pub use store::{MemStores, SimStore, StoreFactory};
