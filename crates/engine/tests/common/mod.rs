//! Shared by the engine's integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flotilla_engine::{AppliedEntry, StateMachine};

/// Records every applied payload in order; its snapshot is that list.
pub struct Recorder {
    pub log: Arc<Mutex<Vec<Bytes>>>,
}

impl StateMachine for Recorder {
    fn apply(&mut self, entries: &[AppliedEntry]) -> Vec<Bytes> {
        let mut log = self.log.lock().unwrap();
        entries
            .iter()
            .map(|e| {
                log.push(e.data.clone());
                Bytes::from(format!("applied at {}", e.index))
            })
            .collect()
    }

    fn snapshot(&self) -> Bytes {
        let log = self.log.lock().unwrap();
        let mut out = Vec::new();
        for d in log.iter() {
            out.extend_from_slice(&(d.len() as u32).to_le_bytes());
            out.extend_from_slice(d);
        }
        Bytes::from(out)
    }

    fn restore(&mut self, data: &Bytes) {
        let mut log = self.log.lock().unwrap();
        log.clear();
        let mut rest = &data[..];
        while rest.len() >= 4 {
            let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            log.push(Bytes::copy_from_slice(&rest[4..4 + n]));
            rest = &rest[4 + n..];
        }
    }
}

/// True once every replica's applied log is the same and holds every acknowledged payload;
/// then also asserts each acknowledged payload was applied exactly once.
pub fn converged(logs: &[Vec<Bytes>], acked: &[Bytes]) -> bool {
    let same = logs.windows(2).all(|w| w[0] == w[1]);
    if !same || !acked.iter().all(|a| logs[0].contains(a)) {
        return false;
    }
    for a in acked {
        assert_eq!(
            logs[0].iter().filter(|x| *x == a).count(),
            1,
            "{a:?} applied twice"
        );
    }
    true
}
