//! Leases: TTL-bound handles keys can be attached to.
//!
//! Time never comes from a clock here: every call that needs "now" takes `now_ms`, which the
//! leader stamps into the replicated command. The leader also decides expiry — it calls
//! [`LeaseTable::expired`] on its own copy and proposes a revoke for each lease listed — so every
//! replica deletes the attached keys at the same revision. Revoking (which deletes keys) lives in
//! [`crate::mvcc::MvccStore::lease_revoke`], because it writes a revision.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{KvError, Result};

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lease id (positive).
    pub id: i64,
    /// TTL granted (and renewed by each keep-alive), in seconds.
    pub ttl_secs: i64,
    /// When it expires, in the leader's milliseconds carried by the last grant or keep-alive.
    pub expiry_ms: i64,
    /// Keys currently attached.
    pub keys: BTreeSet<Vec<u8>>,
}

/// Answer to a time-to-live query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseTimeToLive {
    /// The lease id.
    pub id: i64,
    /// TTL granted, in seconds.
    pub granted_ttl_secs: i64,
    /// Seconds left at `now_ms` (rounded up, 0 when expired).
    pub remaining_ttl_secs: i64,
    /// Attached keys, in order.
    pub keys: Vec<Vec<u8>>,
}

/// All leases, indexed by id and by expiry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseTable {
    leases: BTreeMap<i64, Lease>,
    /// `(expiry_ms, id)` of every lease: `expired` reads a prefix instead of scanning all.
    by_expiry: BTreeSet<(i64, i64)>,
}

impl LeaseTable {
    /// Grants lease `id` for `ttl_secs` from `now_ms`.
    ///
    /// The id must be positive: etcd lets a client pass 0 to mean "pick one", and that choice is
    /// the proposer's (the leader's), made before proposing, so apply stays deterministic.
    pub fn grant(
        &mut self,
        id: i64,
        ttl_secs: i64,
        now_ms: i64,
        max_lease_ttl_secs: i64,
    ) -> Result<()> {
        if id <= 0 {
            return Err(KvError::InvalidArgument {
                reason: format!("lease id {id} must be positive (the proposer picks one for 0)"),
            });
        }
        if ttl_secs < 1 || ttl_secs > max_lease_ttl_secs {
            return Err(KvError::LeaseTtlOutOfRange {
                ttl_secs,
                max_lease_ttl_secs,
            });
        }
        if self.leases.contains_key(&id) {
            return Err(KvError::LeaseExists { id });
        }
        let expiry_ms = expiry(now_ms, ttl_secs);
        self.leases.insert(
            id,
            Lease {
                id,
                ttl_secs,
                expiry_ms,
                keys: BTreeSet::new(),
            },
        );
        self.by_expiry.insert((expiry_ms, id));
        Ok(())
    }

    /// Renews lease `id` for its TTL from `now_ms`; returns the TTL.
    pub fn keep_alive(&mut self, id: i64, now_ms: i64) -> Result<i64> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(KvError::LeaseNotFound { id })?;
        let removed = self.by_expiry.remove(&(lease.expiry_ms, id));
        assert!(removed, "lease {id} missing from the expiry index");
        lease.expiry_ms = expiry(now_ms, lease.ttl_secs);
        self.by_expiry.insert((lease.expiry_ms, id));
        Ok(lease.ttl_secs)
    }

    /// Removes lease `id` and returns it (its keys are the caller's to delete).
    pub(crate) fn remove(&mut self, id: i64) -> Result<Lease> {
        let lease = self
            .leases
            .remove(&id)
            .ok_or(KvError::LeaseNotFound { id })?;
        let removed = self.by_expiry.remove(&(lease.expiry_ms, id));
        assert!(removed, "lease {id} missing from the expiry index");
        Ok(lease)
    }

    /// Up to `max` leases whose expiry is at or before `now_ms`, soonest first. The leader
    /// proposes a revoke for each; followers never act on this.
    pub fn expired(&self, now_ms: i64, max: usize) -> Vec<i64> {
        self.by_expiry
            .iter()
            .take_while(|(expiry_ms, _)| *expiry_ms <= now_ms)
            .take(max)
            .map(|(_, id)| *id)
            .collect()
    }

    /// The time-to-live of lease `id` seen at `now_ms`.
    pub fn time_to_live(&self, id: i64, now_ms: i64) -> Result<LeaseTimeToLive> {
        let lease = self.leases.get(&id).ok_or(KvError::LeaseNotFound { id })?;
        let remaining_ms = lease.expiry_ms.saturating_sub(now_ms).max(0);
        Ok(LeaseTimeToLive {
            id,
            granted_ttl_secs: lease.ttl_secs,
            remaining_ttl_secs: remaining_ms.saturating_add(999) / 1000,
            keys: lease.keys.iter().cloned().collect(),
        })
    }

    /// Ids of all leases, ascending.
    pub fn leases(&self) -> Vec<i64> {
        self.leases.keys().copied().collect()
    }

    /// Lease `id`, if it exists.
    pub fn get(&self, id: i64) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Whether lease `id` exists.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there are no leases.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    pub(crate) fn attach(&mut self, id: i64, key: &[u8]) {
        let lease = self
            .leases
            .get_mut(&id)
            .expect("attach to a lease that was checked to exist");
        lease.keys.insert(key.to_vec());
    }

    pub(crate) fn detach(&mut self, id: i64, key: &[u8]) {
        // The lease may be gone already: revoke removes it before deleting its keys.
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.keys.remove(key);
        }
    }

    /// Inserts a lease as read from a snapshot.
    pub(crate) fn insert_restored(&mut self, lease: Lease) -> std::result::Result<(), String> {
        if lease.id <= 0 || self.leases.contains_key(&lease.id) {
            return Err(format!("lease id {} is not positive or repeated", lease.id));
        }
        self.by_expiry.insert((lease.expiry_ms, lease.id));
        self.leases.insert(lease.id, lease);
        Ok(())
    }

    /// All leases in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }
}

fn expiry(now_ms: i64, ttl_secs: i64) -> i64 {
    now_ms.saturating_add(ttl_secs.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_TTL: i64 = 1000;

    #[test]
    fn keep_alive_pushes_expiry_forward() {
        let mut t = LeaseTable::default();
        t.grant(7, 10, 1_000, MAX_TTL).unwrap();
        assert_eq!(t.expired(10_999, 10), Vec::<i64>::new());
        assert_eq!(t.expired(11_000, 10), vec![7]);
        assert_eq!(t.keep_alive(7, 5_000).unwrap(), 10);
        assert_eq!(t.expired(11_000, 10), Vec::<i64>::new());
        assert_eq!(t.expired(15_000, 10), vec![7]);
    }

    #[test]
    fn expired_lists_soonest_first_and_respects_max() {
        let mut t = LeaseTable::default();
        t.grant(1, 30, 0, MAX_TTL).unwrap();
        t.grant(2, 10, 0, MAX_TTL).unwrap();
        t.grant(3, 20, 0, MAX_TTL).unwrap();
        assert_eq!(t.expired(100_000, 10), vec![2, 3, 1]);
        assert_eq!(t.expired(100_000, 2), vec![2, 3]);
    }

    #[test]
    fn grant_refuses_bad_ids_ttls_and_duplicates() {
        let mut t = LeaseTable::default();
        assert!(matches!(
            t.grant(0, 10, 0, MAX_TTL),
            Err(KvError::InvalidArgument { .. })
        ));
        assert_eq!(
            t.grant(1, MAX_TTL + 1, 0, MAX_TTL),
            Err(KvError::LeaseTtlOutOfRange {
                ttl_secs: MAX_TTL + 1,
                max_lease_ttl_secs: MAX_TTL
            })
        );
        t.grant(1, 10, 0, MAX_TTL).unwrap();
        assert_eq!(
            t.grant(1, 10, 0, MAX_TTL),
            Err(KvError::LeaseExists { id: 1 })
        );
        assert_eq!(t.keep_alive(2, 0), Err(KvError::LeaseNotFound { id: 2 }));
    }

    #[test]
    fn time_to_live_rounds_remaining_up() {
        let mut t = LeaseTable::default();
        t.grant(5, 10, 0, MAX_TTL).unwrap();
        let ttl = t.time_to_live(5, 1).unwrap();
        assert_eq!((ttl.granted_ttl_secs, ttl.remaining_ttl_secs), (10, 10));
        assert_eq!(t.time_to_live(5, 9_000).unwrap().remaining_ttl_secs, 1);
        assert_eq!(t.time_to_live(5, 20_000).unwrap().remaining_ttl_secs, 0);
        assert_eq!(t.leases(), vec![5]);
    }
}
