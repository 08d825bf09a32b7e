//! A node's standing in its cluster: may it vote? (DESIGN rule 6: a node never votes from a state
//! it has lost.)
//!
//! Raft's safety rests on every voter remembering its vote and every entry it acknowledged. A node
//! whose data directory is new cannot tell "I never joined" from "I joined, acknowledged entries
//! and voted, then lost my disk". So a node that starts on an empty data directory without
//! checking with its peers is **joining**: it grants no vote, never stands for election and
//! accepts no log entry until it is admitted, which happens only when
//! - the bootstrap node tells it it is a *founding* member that never held data (the bootstrap
//!   node records which incarnation of each founding member it told, below), or
//! - the leader adds it afresh with `add-node` (it is no member), or lists it as a learner.
//!
//! A joining node that the leader lists as a voter lost its data: it retires with a message that
//! says how to replace it (`server::standing`).
//!
//! Both records are written with fsync before they take effect: a crash can leave a node joining
//! that was about to be admitted (it asks again), never the reverse.

use std::collections::{BTreeMap, BTreeSet};
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
    /// While joining: this data directory's incarnation, a random nonce written with the marker.
    /// A directory that is wiped again gets another one.
    incarnation: Arc<Mutex<String>>,
    /// On the bootstrap node: the founding members, each with the incarnation it was first told
    /// it is founding (None: not told yet). Told again only to that same incarnation (an answer
    /// lost on the way), never to another (a founding member that lost its data since).
    founding: Arc<Mutex<BTreeMap<u64, Option<String>>>>,
}

impl Standing {
    pub(super) fn load(db: Arc<Db>) -> Result<Self, Error> {
        let meta = cf(&db, CF_META);
        let marker = db.get_cf(meta, JOINING_KEY)?;
        let joining = marker.is_some();
        let incarnation = String::from_utf8_lossy(&marker.unwrap_or_default()).into_owned();
        let founding = match db.get_cf(meta, FOUNDING_KEY)? {
            Some(bytes) => decode(&bytes)?,
            None => BTreeMap::new(),
        };
        Ok(Self {
            db,
            joining: Arc::new(AtomicBool::new(joining)),
            incarnation: Arc::new(Mutex::new(incarnation)),
            founding: Arc::new(Mutex::new(founding)),
        })
    }

    /// Record (synced) that this node started on an empty data directory and may not vote yet,
    /// with a fresh incarnation nonce.
    pub(super) fn mark_joining(db: &Db) -> Result<(), Error> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        db.put_cf_opt(
            cf(db, CF_META),
            JOINING_KEY,
            nonce.as_bytes(),
            &sync_write(),
        )?;
        Ok(())
    }

    /// True while this node may neither vote, stand for election nor accept log entries.
    pub fn is_joining(&self) -> bool {
        self.joining.load(Ordering::SeqCst)
    }

    /// This data directory's incarnation while joining (empty once admitted).
    pub fn incarnation(&self) -> String {
        self.incarnation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Admit this node (synced): from now on it votes like any member.
    pub fn admit(&self) -> Result<(), Error> {
        self.db
            .delete_cf_opt(cf(&self.db, CF_META), JOINING_KEY, &sync_write())?;
        self.joining.store(false, Ordering::SeqCst);
        self.incarnation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// On the bootstrap node, before it initialises the cluster: the founding members to tell.
    pub fn set_founding(&self, ids: BTreeSet<u64>) -> Result<(), Error> {
        let mut founding = self.founding.lock().unwrap_or_else(|p| p.into_inner());
        let table: BTreeMap<u64, Option<String>> = ids.into_iter().map(|id| (id, None)).collect();
        self.write_founding(&mut founding, table)
    }

    /// Put `table` on disk (synced), then in memory.
    fn write_founding(
        &self,
        founding: &mut BTreeMap<u64, Option<String>>,
        table: BTreeMap<u64, Option<String>>,
    ) -> Result<(), Error> {
        self.db.put_cf_opt(
            cf(&self.db, CF_META),
            FOUNDING_KEY,
            encode(&table),
            &sync_write(),
        )?;
        *founding = table;
        Ok(())
    }

    /// Is member `id`, asking as `incarnation`, a founding member that never held data? True for
    /// the first incarnation that asks (recorded on disk before the answer goes out) and again
    /// for that same one; false for any other, so a founding member that lost its data after it
    /// was told is found out as a voter that lost its data, never admitted again.
    pub fn take_founding(&self, id: u64, incarnation: &str) -> Result<bool, Error> {
        let mut founding = self.founding.lock().unwrap_or_else(|p| p.into_inner());
        match founding.get(&id) {
            None => Ok(false),
            Some(Some(told)) => Ok(!incarnation.is_empty() && told == incarnation),
            Some(None) if incarnation.is_empty() => Ok(false),
            Some(None) => {
                let mut table = founding.clone();
                table.insert(id, Some(incarnation.to_string()));
                self.write_founding(&mut founding, table)?;
                Ok(true)
            }
        }
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
            assert_eq!(s.incarnation().len(), 32);
            s.set_founding([2, 3].into()).unwrap();
            assert!(s.take_founding(2, "first").unwrap());
            assert!(
                s.take_founding(2, "first").unwrap(),
                "the same incarnation again"
            );
            assert!(!s.take_founding(2, "wiped").unwrap(), "another incarnation");
            assert!(
                !s.take_founding(3, "").unwrap(),
                "no incarnation, no answer"
            );
        }
        let db = super::super::open_db(dir.path()).unwrap();
        let s = Standing::load(db.clone()).unwrap();
        assert!(s.is_joining(), "joining is on disk");
        assert!(
            !s.take_founding(2, "wiped").unwrap(),
            "2 was told before the reopen"
        );
        assert!(s.take_founding(2, "first").unwrap());
        assert!(s.take_founding(3, "third").unwrap());
        assert!(!s.take_founding(4, "x").unwrap(), "not a founding member");
        s.admit().unwrap();
        assert!(!s.is_joining());
        assert_eq!(s.incarnation(), "");
        assert!(
            !Standing::load(db).unwrap().is_joining(),
            "admission is on disk"
        );
    }
}
