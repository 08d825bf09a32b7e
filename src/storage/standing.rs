//! A node's standing in its cluster: may it vote? (DESIGN rule 6: a node never votes from a state
//! it has lost.)
//!
//! Raft's safety rests on every voter remembering its vote and every entry it acknowledged. A node
//! whose data directory is new cannot tell "I never joined" from "I joined, acknowledged entries
//! and voted, then lost my disk". So a node that starts on an empty data directory without
//! bootstrapping is **joining**: it grants no vote and never stands for election until it is
//! admitted, which happens only when
//! - the bootstrap node tells it it is a *founding* member that has not been told so before (the
//!   bootstrap node keeps the set of founding members not yet told, below), or
//! - the leader adds it afresh with `add-node` (it is no member), or lists it as a learner.
//!
//! A joining node that the leader lists as a voter lost its data: it retires with a message that
//! says how to replace it (`server::standing`).
//!
//! Both records are written with fsync before they take effect: a crash can leave a node joining
//! that was about to be admitted (it asks again), never the reverse.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{cf, decode, encode, sync_write, Db, Error, CF_META};

const JOINING_KEY: &[u8] = b"joining";
const FOUNDING_KEY: &[u8] = b"founding";

/// This node's standing, shared by the Raft transport (which refuses votes while joining) and the
/// node (which asks to be admitted).
#[derive(Clone)]
pub struct Standing {
    db: Arc<Db>,
    joining: Arc<AtomicBool>,
    /// On the bootstrap node: founding members not yet told they are.
    founding: Arc<Mutex<BTreeSet<u64>>>,
}

impl Standing {
    pub(super) fn load(db: Arc<Db>) -> Result<Self, Error> {
        let meta = cf(&db, CF_META);
        let joining = db.get_cf(meta, JOINING_KEY)?.is_some();
        let founding = match db.get_cf(meta, FOUNDING_KEY)? {
            Some(bytes) => decode(&bytes)?,
            None => BTreeSet::new(),
        };
        Ok(Self {
            db,
            joining: Arc::new(AtomicBool::new(joining)),
            founding: Arc::new(Mutex::new(founding)),
        })
    }

    /// Record (synced) that this node started on an empty data directory and may not vote yet.
    pub(super) fn mark_joining(db: &Db) -> Result<(), Error> {
        db.put_cf_opt(cf(db, CF_META), JOINING_KEY, b"", &sync_write())?;
        Ok(())
    }

    /// True while this node may neither vote nor stand for election.
    pub fn is_joining(&self) -> bool {
        self.joining.load(Ordering::SeqCst)
    }

    /// Admit this node (synced): from now on it votes like any member.
    pub fn admit(&self) -> Result<(), Error> {
        self.db
            .delete_cf_opt(cf(&self.db, CF_META), JOINING_KEY, &sync_write())?;
        self.joining.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// On the bootstrap node, before it initialises the cluster: the founding members to tell.
    pub fn set_founding(&self, ids: BTreeSet<u64>) -> Result<(), Error> {
        let mut founding = self.founding.lock().unwrap_or_else(|p| p.into_inner());
        self.db.put_cf_opt(
            cf(&self.db, CF_META),
            FOUNDING_KEY,
            encode(&ids),
            &sync_write(),
        )?;
        *founding = ids;
        Ok(())
    }

    /// True, once, for a founding member not told yet: the removal is on disk before the answer
    /// goes out, so no node is told twice (a node that lost its data after being told is then
    /// found out as a voter that lost its data, not admitted again).
    pub fn take_founding(&self, id: u64) -> Result<bool, Error> {
        let mut founding = self.founding.lock().unwrap_or_else(|p| p.into_inner());
        if !founding.contains(&id) {
            return Ok(false);
        }
        let mut rest = founding.clone();
        rest.remove(&id);
        self.db.put_cf_opt(
            cf(&self.db, CF_META),
            FOUNDING_KEY,
            encode(&rest),
            &sync_write(),
        )?;
        *founding = rest;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joining_and_founding_survive_a_reopen_and_a_founding_member_is_told_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = super::super::open_db(dir.path()).unwrap();
            Standing::mark_joining(&db).unwrap();
            let s = Standing::load(db).unwrap();
            assert!(s.is_joining());
            s.set_founding([2, 3].into()).unwrap();
            assert!(s.take_founding(2).unwrap());
            assert!(!s.take_founding(2).unwrap());
        }
        let db = super::super::open_db(dir.path()).unwrap();
        let s = Standing::load(db.clone()).unwrap();
        assert!(s.is_joining(), "joining is on disk");
        assert!(!s.take_founding(2).unwrap(), "2 was told before the reopen");
        assert!(s.take_founding(3).unwrap());
        s.admit().unwrap();
        assert!(!s.is_joining());
        assert!(
            !Standing::load(db).unwrap().is_joining(),
            "admission is on disk"
        );
    }
}
