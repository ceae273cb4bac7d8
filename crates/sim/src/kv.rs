//! The replicated register store the simulated clients use: a tiny deterministic state
//! machine over `u64` keys and values, with its command and snapshot encodings.

use std::collections::BTreeMap;

use bytes::Bytes;

/// A write command carried in a log entry. Reads use ReadIndex and never enter the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// Issuing client.
    pub client: u64,
    /// Client-local operation number (with `client`, unique in a run).
    pub seq: u64,
    /// Register.
    pub key: u64,
    /// What to do.
    pub op: WriteOp,
}

/// A write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Set the register.
    Put(u64),
    /// Set the register to `new` iff it currently holds `expected`.
    Cas {
        /// Value the register must hold (None: absent).
        expected: Option<u64>,
        /// Value to store.
        new: u64,
    },
}

/// Result of applying a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// A put was applied.
    Put,
    /// Whether a CAS succeeded.
    Cas(bool),
}

const CMD_BYTES: usize = 1 + 8 * 5;

impl Command {
    /// Fixed-size little-endian encoding: tag, client, seq, key, a, b.
    pub fn encode(&self) -> Bytes {
        let (tag, a, b) = match self.op {
            WriteOp::Put(v) => (0u8, v, 0),
            WriteOp::Cas {
                expected: None,
                new,
            } => (1, 0, new),
            WriteOp::Cas {
                expected: Some(e),
                new,
            } => (2, e, new),
        };
        let mut out = Vec::with_capacity(CMD_BYTES);
        out.push(tag);
        for x in [self.client, self.seq, self.key, a, b] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        Bytes::from(out)
    }

    /// Decodes [`Command::encode`]'s output; `None` for anything else (e.g. a leader's no-op).
    pub fn decode(data: &[u8]) -> Option<Command> {
        if data.len() != CMD_BYTES {
            return None;
        }
        let word = |i: usize| u64::from_le_bytes(data[1 + 8 * i..9 + 8 * i].try_into().unwrap());
        let (client, seq, key, a, b) = (word(0), word(1), word(2), word(3), word(4));
        let op = match data[0] {
            0 => WriteOp::Put(a),
            1 => WriteOp::Cas {
                expected: None,
                new: b,
            },
            2 => WriteOp::Cas {
                expected: Some(a),
                new: b,
            },
            _ => return None,
        };
        Some(Command {
            client,
            seq,
            key,
            op,
        })
    }
}

/// The state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    values: BTreeMap<u64, u64>,
}

impl Registers {
    /// Applies one write.
    pub fn apply(&mut self, cmd: &Command) -> WriteResult {
        match cmd.op {
            WriteOp::Put(v) => {
                self.values.insert(cmd.key, v);
                WriteResult::Put
            }
            WriteOp::Cas { expected, new } => {
                let ok = self.values.get(&cmd.key).copied() == expected;
                if ok {
                    self.values.insert(cmd.key, new);
                }
                WriteResult::Cas(ok)
            }
        }
    }

    /// Current value of `key`.
    pub fn get(&self, key: u64) -> Option<u64> {
        self.values.get(&key).copied()
    }

    /// Snapshot image: pairs of little-endian `u64`s.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(16 * self.values.len());
        for (k, v) in &self.values {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        Bytes::from(out)
    }

    /// Restores from [`Registers::encode`]'s output.
    pub fn decode(data: &[u8]) -> Registers {
        assert_eq!(
            data.len() % 16,
            0,
            "snapshot image is a whole number of pairs"
        );
        let values = data
            .chunks_exact(16)
            .map(|c| {
                let k = u64::from_le_bytes(c[..8].try_into().unwrap());
                let v = u64::from_le_bytes(c[8..].try_into().unwrap());
                (k, v)
            })
            .collect();
        Registers { values }
    }

    /// A stable fingerprint of the contents (FNV-1a over the encoding).
    pub fn fingerprint(&self) -> u64 {
        fnv1a(&self.encode())
    }
}

/// FNV-1a, for cheap deterministic fingerprints in invariant checks and traces.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for op in [
            WriteOp::Put(7),
            WriteOp::Cas {
                expected: None,
                new: 3,
            },
            WriteOp::Cas {
                expected: Some(0),
                new: 3,
            },
        ] {
            let c = Command {
                client: 1,
                seq: 2,
                key: 3,
                op,
            };
            assert_eq!(Command::decode(&c.encode()), Some(c));
        }
        assert_eq!(
            Command::decode(b""),
            None,
            "a leader's no-op is not a command"
        );
    }

    #[test]
    fn cas_only_applies_on_match_and_snapshots_round_trip() {
        let mut r = Registers::default();
        let cas = |expected, new| Command {
            client: 0,
            seq: 0,
            key: 1,
            op: WriteOp::Cas { expected, new },
        };
        assert_eq!(r.apply(&cas(Some(1), 2)), WriteResult::Cas(false));
        assert_eq!(r.apply(&cas(None, 2)), WriteResult::Cas(true));
        assert_eq!(r.get(1), Some(2));
        assert_eq!(Registers::decode(&r.encode()), r);
    }
}
