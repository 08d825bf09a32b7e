//! Test harness shared by the state machine's unit tests: drives a `State` like a Raft log would
//! (increasing indexes, a current term, leader time stamps) and collects its events.

use std::collections::BTreeMap;

use super::command::{
    AcquireCmd, AcquireOutcome, Command, Effects, EntryMeta, Event, PolicyDefaults, Request,
    Response,
};
use super::error::OpError;
use super::state::State;
use super::types::RecordLimits;
use super::types::{
    FencingToken, Grant, InstanceId, Intent, LeaseId, Principal, ReleaseOutcome, RequestId,
    ResourcePath, TaskKey,
};
use crate::audit::AuditRecord;

pub(super) fn res(s: &str) -> ResourcePath {
    ResourcePath::parse(s).expect("test resource path is valid")
}

pub(super) fn who(s: &str) -> Principal {
    Principal::parse(s).expect("test principal is valid")
}

pub(super) fn inst(s: &str) -> InstanceId {
    InstanceId::parse(s).expect("test instance is valid")
}

pub(super) fn rid(s: &str) -> RequestId {
    RequestId::parse(s).expect("test request id is valid")
}

pub(super) fn task(s: &str) -> TaskKey {
    TaskKey::parse(s).expect("test task key is valid")
}

/// An acquire with ttl 10s, no wait, no task, no takeover.
pub(super) fn acq(request: &str, resource: &str, principal: &str, instance: &str) -> AcquireCmd {
    AcquireCmd {
        request_id: rid(request),
        resource: res(resource),
        principal: who(principal),
        instance: inst(instance),
        ttl_ms: 10_000,
        intent: Intent::new("test", BTreeMap::new()).expect("test intent is valid"),
        task_key: None,
        wait_ms: None,
        takeover: false,
        defaults: PolicyDefaults::default(),
    }
}

pub(super) struct Harness {
    pub(super) state: State,
    pub(super) index: u64,
    pub(super) term: u64,
    pub(super) now_ms: u64,
    pub(super) events: Vec<Event>,
    /// Audit records of the last entry.
    pub(super) audit: Vec<AuditRecord>,
}

impl Harness {
    pub(super) fn new() -> Self {
        let mut h = Self::legacy();
        // What every leader of this build does first.
        h.apply(Command::SetRecordLimits(RecordLimits::default()));
        h
    }

    /// A harness whose state follows the older record rules (no `SetRecordLimits` yet).
    pub(super) fn legacy() -> Self {
        let mut h = Self {
            state: State::default(),
            index: 0,
            term: 0,
            now_ms: 1_000,
            events: Vec::new(),
            audit: Vec::new(),
        };
        h.elect();
        h
    }

    fn next_meta(&mut self) -> EntryMeta {
        self.index += 1;
        EntryMeta {
            index: self.index,
            term: self.term,
        }
    }

    /// A new leader: bump the term and apply its blank entry.
    pub(super) fn elect(&mut self) {
        self.term += 1;
        let at = self.next_meta();
        self.state.observe(at);
    }

    pub(super) fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
    }

    /// Apply `cmd`, keeping only this entry's events in `self.events`.
    pub(super) fn apply(&mut self, cmd: Command) -> Response {
        let at = self.next_meta();
        let req = Request {
            now_ms: self.now_ms,
            cmd,
        };
        let mut fx = Effects::default();
        let response = self.state.apply(at, &req, &mut fx);
        self.events = fx.events;
        self.audit = fx.audit;
        response
    }

    pub(super) fn acquire(&mut self, cmd: AcquireCmd) -> AcquireOutcome {
        match self.apply(Command::Acquire(cmd)) {
            Response::Acquire(o) => o,
            other => panic!("acquire answered {other:?}"),
        }
    }

    pub(super) fn grant(&mut self, cmd: AcquireCmd) -> Grant {
        match self.acquire(cmd) {
            AcquireOutcome::Granted(g) => g,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    pub(super) fn release(
        &mut self,
        id: LeaseId,
        principal: &str,
        outcome: Option<ReleaseOutcome>,
    ) -> Result<super::command::ReleaseOk, OpError> {
        match self.apply(Command::Release {
            lease_id: id,
            principal: who(principal),
            outcome,
        }) {
            Response::Release(r) => r,
            other => panic!("release answered {other:?}"),
        }
    }

    pub(super) fn checkpoint(
        &mut self,
        id: LeaseId,
        principal: &str,
        token: FencingToken,
        data: &[u8],
    ) -> Result<(), OpError> {
        match self.apply(Command::Checkpoint {
            lease_id: id,
            principal: who(principal),
            token,
            data: data.to_vec(),
        }) {
            Response::Checkpoint(r) => r,
            other => panic!("checkpoint answered {other:?}"),
        }
    }

    pub(super) fn expire(&mut self, ids: &[LeaseId]) -> Vec<LeaseId> {
        match self.apply(Command::Expire {
            lease_ids: ids.to_vec(),
        }) {
            Response::Expire { expired } => expired,
            other => panic!("expire answered {other:?}"),
        }
    }
}
