//! Checkers for the replacement-mid-deploy workload ([`crate::deploy`]). Deploy events carry a
//! `task_key`; steps (`f = step`) are recorded under the deployment's lock, in the order it saw them.
//!
//! - `deploy_fencing`: per deployment, no step was accepted with a token below the highest token
//!   accepted before it — i.e. once a successor wrote, its fenced-out predecessor never applied a step
//!   again (so steps were applied by one holder at a time). Counts stale steps the fence rejected.
//! - `deploy_once`: per task key, at most one acknowledged Done release; no grant for the key was
//!   invoked after a Done release was acknowledged; every completed key answered the final probe
//!   with AlreadyDone.
//! - `deploy_previous`: every grant's `previous` names the latest earlier acknowledged holder of the
//!   key (or a later unacknowledged one) and carries that lease's last acknowledged checkpoint (or a
//!   later attempted one whose answer was lost); a key held before has a `previous` at all.
//! - `deploy_duplicates`: no step of a key was applied by two tokens unless the earlier
//!   application was never acknowledged (no acknowledged checkpoint of its lease covered it).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::json;

use crate::checker::Verdict;
use crate::history::{Event, Kind, Op};

pub fn check_all(events: &[Event]) -> BTreeMap<String, Verdict> {
    let mut out = BTreeMap::new();
    out.insert("deploy_fencing".to_string(), deploy_fencing(events));
    out.insert("deploy_once".to_string(), deploy_once(events));
    out.insert("deploy_previous".to_string(), deploy_previous(events));
    out.insert("deploy_duplicates".to_string(), deploy_duplicates(events));
    out
}

fn is_deploy(e: &Event) -> bool {
    e.task_key.is_some()
}

fn step_of(e: &Event) -> Option<u64> {
    e.value.as_deref().and_then(|v| v.parse().ok())
}

/// (a) One holder at a time at the deployment; stale steps rejected after the successor's first write.
pub fn deploy_fencing(events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    // resource -> (highest accepted token, its first accepted step's index)
    let mut highest: HashMap<&str, (u64, u64)> = HashMap::new();
    for e in events.iter().filter(|e| e.f == Op::Step && is_deploy(e)) {
        let Some(token) = e.token else { continue };
        match e.kind {
            Kind::Ok => {
                v.count("steps_applied");
                match highest.get(e.resource.as_str()) {
                    Some(&(h, first)) if token < h => {
                        v.violation(json!({
                            "what": "a fenced-out instance applied a step after its successor's first write",
                            "resource": e.resource, "task_key": e.task_key, "step": e.value,
                            "token": token, "process": e.process, "index": e.index,
                            "successor_token": h, "successor_first_write_index": first,
                        }));
                    }
                    Some(&(h, _)) if token == h => {}
                    _ => {
                        highest.insert(&e.resource, (token, e.index));
                    }
                }
            }
            Kind::Fail => v.count("stale_steps_rejected"),
            Kind::Invoke if e.claim == Some(false) => v.count("unchecked_steps_after_pause"),
            _ => {}
        }
    }
    v
}

/// (b) Each deploy completes exactly once.
pub fn deploy_once(events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    let mut done: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut already_done: HashSet<&str> = HashSet::new();
    let mut keys: HashSet<&str> = HashSet::new();
    let mut last_probe: HashMap<&str, &Event> = HashMap::new();
    for e in events.iter().filter(|e| is_deploy(e)) {
        let key = e.task_key.as_deref().unwrap_or("");
        match (e.f, e.kind) {
            (Op::Acquire, Kind::Invoke) => {
                keys.insert(key);
            }
            (Op::Release, Kind::Ok) if e.value.as_deref() == Some("done") => {
                done.entry(key).or_default().push(e);
            }
            (Op::Acquire, Kind::Fail) if e.error.as_deref() == Some("already done") => {
                already_done.insert(key);
            }
            (Op::Probe, Kind::Ok) => {
                last_probe.insert(key, e);
            }
            _ => {}
        }
    }
    // Grants whose invoke came after an acknowledged Done.
    let mut last_invoke: HashMap<u64, &Event> = HashMap::new();
    for e in events.iter() {
        if e.kind == Kind::Invoke {
            last_invoke.insert(e.process, e);
        }
        if !(is_deploy(e) && e.kind == Kind::Ok && matches!(e.f, Op::Acquire | Op::Probe)) {
            continue;
        }
        if e.f == Op::Probe && e.value.as_deref() != Some("granted") {
            continue;
        }
        let key = e.task_key.as_deref().unwrap_or("");
        let Some(first_done) = done.get(key).and_then(|d| d.first()) else {
            continue;
        };
        let invoked = last_invoke.get(&e.process).map(|i| i.t_ns).unwrap_or(0);
        if invoked > first_done.t_ns {
            v.violation(json!({
                "what": "a completed deploy was granted again",
                "task_key": key, "resource": e.resource, "token": e.token,
                "process": e.process, "index": e.index,
                "done_index": first_done.index, "done_token": first_done.token,
            }));
        }
    }
    for key in &keys {
        let n = done.get(key).map_or(0, |d| d.len());
        if n > 1 {
            let d = &done[key];
            v.violation(json!({
                "what": "a deploy completed more than once",
                "task_key": key, "done_releases": d.iter().map(|e| json!({"token": e.token, "index": e.index})).collect::<Vec<_>>(),
            }));
        }
        let completed = n > 0 || already_done.contains(key);
        if completed {
            v.count("deploys_completed");
        } else {
            v.count("deploys_not_completed");
        }
        match last_probe.get(key).and_then(|p| p.value.as_deref()) {
            Some("already done") => v.count("probes_already_done"),
            Some(other) if completed => v.violation(json!({
                "what": "a completed deploy did not answer AlreadyDone to the final probe",
                "task_key": key, "probe": other,
            })),
            None if completed => v.violation(json!({
                "what": "a completed deploy could not be probed after healing (unverified)",
                "task_key": key,
            })),
            _ => {}
        }
    }
    v
}

/// Per lease (resource, token): acknowledged checkpoints in order, and every attempted one.
type Checkpoints<'a> = (
    HashMap<(&'a str, u64), Vec<u64>>,
    HashMap<(&'a str, u64), HashSet<u64>>,
);

fn checkpoints(events: &[Event]) -> Checkpoints<'_> {
    let mut acked: HashMap<(&str, u64), Vec<u64>> = HashMap::new();
    let mut attempted: HashMap<(&str, u64), HashSet<u64>> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.f == Op::Checkpoint && is_deploy(e))
    {
        let (Some(token), Some(k)) = (e.token, step_of(e)) else {
            continue;
        };
        let at = (e.resource.as_str(), token);
        match e.kind {
            Kind::Invoke => {
                attempted.entry(at).or_default().insert(k);
            }
            Kind::Ok => acked.entry(at).or_default().push(k),
            _ => {}
        }
    }
    (acked, attempted)
}

/// (c) Each replacement saw its predecessor's last acknowledged checkpoint.
pub fn deploy_previous(events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    let (acked, attempted) = checkpoints(events);
    // Acknowledged grants per (resource, key), in history order.
    let mut grants: HashMap<(&str, &str), Vec<&Event>> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| is_deploy(e) && e.f == Op::Acquire && e.kind == Kind::Ok)
    {
        let Some(token) = e.token else { continue };
        let key = e.task_key.as_deref().unwrap_or("");
        let earlier = grants.entry((e.resource.as_str(), key)).or_default();
        let latest_before = earlier
            .iter()
            .filter_map(|g| g.token)
            .filter(|t| *t < token)
            .max();
        earlier.push(e);
        let Some(latest) = latest_before else {
            if e.prev_token.is_some() {
                v.count("previous_from_unacknowledged_grant");
            } else {
                v.count("first_grants");
            }
            continue;
        };
        v.count("replacements");
        let Some(prev) = e.prev_token else {
            v.violation(json!({
                "what": "a replacement got no previous although the key was held before",
                "resource": e.resource, "task_key": key, "token": token, "index": e.index,
                "earlier_token": latest,
            }));
            continue;
        };
        if prev < latest || prev >= token {
            v.violation(json!({
                "what": "previous does not name the latest earlier holder",
                "resource": e.resource, "task_key": key, "token": token, "index": e.index,
                "prev_token": prev, "latest_earlier_token": latest,
            }));
            continue;
        }
        let lease = (e.resource.as_str(), prev);
        let seen = e.prev_checkpoint.as_deref();
        let last = acked.get(&lease).and_then(|a| a.last().copied());
        let tried = attempted.get(&lease);
        let ok = match (seen.map(|s| s.parse::<u64>()), last) {
            (None, None) => true,
            (Some(Ok(s)), Some(l)) if s == l => true,
            // A later checkpoint whose answer was lost may have committed too.
            (Some(Ok(s)), l) => tried.is_some_and(|t| t.contains(&s)) && l.is_none_or(|l| s > l),
            _ => false,
        };
        if ok {
            v.count("previous_checkpoints_matched");
        } else {
            v.violation(json!({
                "what": "a replacement did not see its predecessor's last acknowledged checkpoint",
                "resource": e.resource, "task_key": key, "token": token, "index": e.index,
                "prev_token": prev, "seen": seen, "last_acknowledged": last,
            }));
        }
    }
    v
}

/// (resource, task key, step index).
type StepAt<'a> = (&'a str, &'a str, u64);

/// (d) Duplicate execution: a step applied by two tokens only if the earlier was never acknowledged.
pub fn deploy_duplicates(events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    let (acked, _) = checkpoints(events);
    // (resource, key, step) -> applications (token, index), in the deployment's order.
    let mut applied: BTreeMap<StepAt, Vec<(u64, u64)>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.f == Op::Step && e.kind == Kind::Ok && is_deploy(e))
    {
        let (Some(token), Some(k)) = (e.token, step_of(e)) else {
            continue;
        };
        let key = e.task_key.as_deref().unwrap_or("");
        applied
            .entry((e.resource.as_str(), key, k))
            .or_default()
            .push((token, e.index));
    }
    for ((resource, key, step), apps) in &applied {
        v.count("steps");
        if apps.len() > 1 {
            v.count("steps_reapplied");
        }
        for (i, &(token, index)) in apps.iter().enumerate() {
            let Some(&(later_token, later_index)) = apps[i + 1..].iter().find(|a| a.0 != token)
            else {
                continue;
            };
            let acknowledged = acked
                .get(&(*resource, token))
                .is_some_and(|a| a.iter().any(|c| *c >= *step));
            if acknowledged {
                v.violation(json!({
                    "what": "an acknowledged step was executed again by another holder",
                    "resource": resource, "task_key": key, "step": step,
                    "first": {"token": token, "index": index},
                    "again": {"token": later_token, "index": later_index},
                }));
            } else {
                v.count("unacknowledged_steps_redone");
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    //! Hand-made bad histories; each must be flagged by its checker.
    use super::*;

    struct H {
        events: Vec<Event>,
    }

    const R: &str = "jepsen/deploy/0";
    const K: &str = "deploy-0-0";

    impl H {
        fn new() -> Self {
            Self { events: Vec::new() }
        }
        fn push(&mut self, mut e: Event) -> &mut Self {
            e.index = self.events.len() as u64;
            e.t_ns = (e.index + 1) * 1_000_000;
            e.task_key = Some(K.into());
            self.events.push(e);
            self
        }
        fn grant(&mut self, p: u64, token: u64, prev: Option<(u64, Option<&str>)>) -> &mut Self {
            self.push(Event::new(Kind::Invoke, Op::Acquire, p, R));
            let mut e = Event::new(Kind::Ok, Op::Acquire, p, R).token(token);
            if let Some((t, c)) = prev {
                e.prev_token = Some(t);
                e.prev_checkpoint = c.map(String::from);
            }
            self.push(e)
        }
        fn step(&mut self, p: u64, token: u64, k: u64, kind: Kind) -> &mut Self {
            let mut inv = Event::new(Kind::Invoke, Op::Step, p, R).token(token);
            inv.value = Some(k.to_string());
            inv.claim = Some(true);
            self.push(inv);
            let mut e = Event::new(kind, Op::Step, p, R).token(token);
            e.value = Some(k.to_string());
            self.push(e)
        }
        fn ckpt(&mut self, p: u64, token: u64, k: u64) -> &mut Self {
            for kind in [Kind::Invoke, Kind::Ok] {
                let mut e = Event::new(kind, Op::Checkpoint, p, R).token(token);
                e.value = Some(k.to_string());
                self.push(e);
            }
            self
        }
        fn done(&mut self, p: u64, token: u64) -> &mut Self {
            self.push(Event::new(Kind::Invoke, Op::Release, p, R).token(token));
            let mut e = Event::new(Kind::Ok, Op::Release, p, R).token(token);
            e.value = Some("done".into());
            self.push(e)
        }
        fn probe(&mut self, answer: &str) -> &mut Self {
            self.push(Event::new(Kind::Invoke, Op::Probe, 99, R));
            let mut e = Event::new(Kind::Ok, Op::Probe, 99, R);
            e.value = Some(answer.into());
            self.push(e)
        }
    }

    /// Instance 1 does steps 1–2 and is paused; instance 2 takes over at step 3 and completes; the
    /// paused instance's late step is rejected.
    fn good() -> H {
        let mut h = H::new();
        h.grant(1, 5, None);
        h.step(1, 5, 1, Kind::Ok).ckpt(1, 5, 1);
        h.step(1, 5, 2, Kind::Ok).ckpt(1, 5, 2);
        h.grant(2, 7, Some((5, Some("2"))));
        h.ckpt(2, 7, 2);
        h.step(2, 7, 3, Kind::Ok);
        h.step(1, 5, 3, Kind::Fail); // the fenced-out predecessor, rejected
        h.ckpt(2, 7, 3);
        h.step(2, 7, 4, Kind::Ok).ckpt(2, 7, 4);
        h.step(2, 7, 5, Kind::Ok).ckpt(2, 7, 5);
        h.done(2, 7);
        h.probe("already done");
        h
    }

    #[test]
    fn a_good_deploy_passes() {
        for (name, v) in check_all(&good().events) {
            assert!(v.valid, "{name}: {v:?}");
        }
        assert_eq!(
            deploy_fencing(&good().events).counts["stale_steps_rejected"],
            1
        );
    }

    #[test]
    fn a_stale_step_after_the_successor_wrote_is_flagged() {
        let mut h = good();
        let i = h
            .events
            .iter()
            .position(|e| e.kind == Kind::Fail && e.f == Op::Step)
            .unwrap();
        h.events[i].kind = Kind::Ok;
        let v = deploy_fencing(&h.events);
        assert!(!v.valid, "{v:?}");
    }

    #[test]
    fn a_second_done_is_flagged() {
        let mut h = good();
        h.done(2, 7);
        assert!(!deploy_once(&h.events).valid);
    }

    #[test]
    fn a_grant_after_done_or_a_granting_probe_is_flagged() {
        let mut h = good();
        h.grant(3, 9, Some((7, None)));
        assert!(!deploy_once(&h.events).valid);
        let mut h = good();
        h.probe("granted");
        assert!(!deploy_once(&h.events).valid);
        let mut h = good();
        h.events.truncate(h.events.len() - 2); // no probe
        assert!(!deploy_once(&h.events).valid);
    }

    #[test]
    fn a_lost_checkpoint_in_previous_is_flagged() {
        let mut h = good();
        let i = h.events.iter().position(|e| e.token == Some(7)).unwrap();
        h.events[i].prev_checkpoint = Some("1".into());
        assert!(!deploy_previous(&h.events).valid);
        h.events[i].prev_checkpoint = None;
        assert!(!deploy_previous(&h.events).valid);
        h.events[i].prev_token = None;
        assert!(!deploy_previous(&h.events).valid);
    }

    #[test]
    fn an_acknowledged_step_executed_twice_is_flagged() {
        let mut h = good();
        h.step(2, 7, 2, Kind::Ok); // step 2 was acknowledged by token 5
        let v = deploy_duplicates(&h.events);
        assert!(!v.valid, "{v:?}");
        // Redoing a step whose checkpoint never came back is allowed.
        let mut h = H::new();
        h.grant(1, 5, None);
        h.step(1, 5, 1, Kind::Ok);
        h.grant(2, 7, Some((5, None)));
        h.step(2, 7, 1, Kind::Ok);
        let v = deploy_duplicates(&h.events);
        assert!(v.valid, "{v:?}");
        assert_eq!(v.counts["unacknowledged_steps_redone"], 1);
    }
}
