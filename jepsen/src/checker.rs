//! Checkers: pure functions from a history to a verdict. Each one is sound on its own terms — it
//! reports a violation only when the recorded times prove one (times a process *believed* something
//! are lower bounds, times it *learned* something are upper bounds).
//!
//! - `fenced_register`: no write with a token below the highest previously accepted was accepted.
//! - `token_order`: a grant completed before another was invoked has the smaller token; no token is
//!   granted twice for one resource.
//! - `lease_exclusivity`: no two leases' acted-on intervals overlap on one resource, from the clients'
//!   own view (DESIGN rule 1). A lease's interval runs from the moment its holder learned of the grant
//!   (acquire ok) to its last validity check that passed before a write; only leases that wrote count.
//! - `durability`: after healing, every resource's fence is ≥ every acknowledged token; every grant's
//!   `previous` carries its predecessor's last acknowledged checkpoint (or a later unacknowledged one);
//!   no lease is named as predecessor by two grants.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use serde_json::json;

use crate::history::{Event, Kind, Op};

/// At most this many violations are listed per checker (all are counted).
const MAX_LISTED: usize = 20;

/// One checker's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub valid: bool,
    pub counts: BTreeMap<String, u64>,
    pub violations: Vec<serde_json::Value>,
}

impl Verdict {
    pub(crate) fn new() -> Self {
        Self {
            valid: true,
            counts: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    pub(crate) fn count(&mut self, what: &str) {
        *self.counts.entry(what.to_string()).or_default() += 1;
    }

    pub(crate) fn violation(&mut self, v: serde_json::Value) {
        self.valid = false;
        self.count("violations");
        if self.violations.len() < MAX_LISTED {
            self.violations.push(v);
        }
    }
}

/// Run every checker.
pub fn check_all(events: &[Event]) -> BTreeMap<String, Verdict> {
    let mut out = BTreeMap::new();
    out.insert("fenced_register".to_string(), fenced_register(events));
    out.insert("token_order".to_string(), token_order(events));
    out.insert("lease_exclusivity".to_string(), lease_exclusivity(events));
    out.insert("durability".to_string(), durability(events));
    out.insert(
        "linearizable".to_string(),
        crate::linearizable::check(events),
    );
    out.extend(crate::deploy_check::check_all(events));
    out
}

/// An acknowledged grant, with when it was asked for and when the holder learned of it.
#[derive(Debug, Clone)]
struct Grant<'a> {
    process: u64,
    resource: &'a str,
    token: u64,
    invoke_ns: u64,
    ok_ns: u64,
    ok_index: u64,
    prev_token: Option<u64>,
    prev_checkpoint: Option<&'a str>,
}

/// Pair each acquire ok with its invoke (the same process's latest invoke).
fn grants(events: &[Event]) -> Vec<Grant<'_>> {
    let mut last_invoke: HashMap<u64, &Event> = HashMap::new();
    let mut out = Vec::new();
    for e in events {
        match (e.kind, e.f) {
            (Kind::Invoke, _) => {
                last_invoke.insert(e.process, e);
            }
            (Kind::Ok, Op::Acquire) => {
                let Some(token) = e.token else { continue };
                let invoke_ns = last_invoke
                    .get(&e.process)
                    .filter(|i| i.f == Op::Acquire)
                    .map(|i| i.t_ns)
                    .unwrap_or(0);
                out.push(Grant {
                    process: e.process,
                    resource: &e.resource,
                    token,
                    invoke_ns,
                    ok_ns: e.t_ns,
                    ok_index: e.index,
                    prev_token: e.prev_token,
                    prev_checkpoint: e.prev_checkpoint.as_deref(),
                });
            }
            _ => {}
        }
    }
    out
}

/// (a) The protected registers: recompute each register's highest accepted token from the accepted
/// writes in the order the registers saw them; an accepted write below it is a stale write.
pub fn fenced_register(events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    let mut highest: HashMap<&str, (u64, u64)> = HashMap::new(); // resource -> (token, event index)
    for e in events.iter().filter(|e| e.f == Op::Write) {
        let Some(token) = e.token else { continue };
        match e.kind {
            Kind::Ok => {
                v.count("accepted");
                if let Some(&(h, at)) = highest.get(e.resource.as_str()) {
                    if token < h {
                        v.violation(json!({
                            "what": "stale write accepted",
                            "resource": e.resource, "token": token, "process": e.process,
                            "index": e.index, "highest_accepted": h, "highest_accepted_at": at,
                        }));
                        continue;
                    }
                }
                highest.insert(&e.resource, (token, e.index));
            }
            Kind::Fail => {
                v.count("rejected");
                let h = highest.get(e.resource.as_str()).map(|x| x.0).unwrap_or(0);
                if token >= h {
                    // Not a safety problem, but the register refused a token it should have taken.
                    v.count("rejected_without_cause");
                }
            }
            Kind::Invoke if e.claim == Some(false) => v.count("unchecked_writes"),
            _ => {}
        }
    }
    v
}

/// (b) Token order per resource: real-time order of grants implies token order; tokens are unique.
pub fn token_order(events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    let mut by_resource: BTreeMap<&str, Vec<Grant>> = BTreeMap::new();
    for g in grants(events) {
        by_resource.entry(g.resource).or_default().push(g);
    }
    for (resource, mut gs) in by_resource {
        let mut seen: HashMap<u64, &Grant> = HashMap::new();
        for g in &gs {
            v.count("grants");
            if let Some(first) = seen.get(&g.token) {
                v.violation(json!({
                    "what": "token granted twice",
                    "resource": resource, "token": g.token,
                    "first": {"process": first.process, "ok_index": first.ok_index},
                    "second": {"process": g.process, "ok_index": g.ok_index},
                }));
            } else {
                seen.insert(g.token, g);
            }
        }
        // Sweep: grants by completion time with a running maximum; each grant's invoke time finds the
        // grants that had completed before it was invoked.
        gs.sort_by_key(|g| g.ok_ns);
        let mut prefix_max: Vec<(u64, usize)> = Vec::with_capacity(gs.len());
        for (i, g) in gs.iter().enumerate() {
            let best = match prefix_max.last() {
                Some(&(t, j)) if t >= g.token => (t, j),
                _ => (g.token, i),
            };
            prefix_max.push(best);
        }
        for b in &gs {
            let n = gs.partition_point(|a| a.ok_ns < b.invoke_ns);
            if n == 0 {
                continue;
            }
            let (max_token, j) = prefix_max[n - 1];
            if max_token >= b.token {
                let a = &gs[j];
                v.violation(json!({
                    "what": "a later grant has a token not above an earlier completed grant",
                    "resource": resource,
                    "earlier": {"process": a.process, "token": a.token, "ok_ns": a.ok_ns, "ok_index": a.ok_index},
                    "later": {"process": b.process, "token": b.token, "invoke_ns": b.invoke_ns, "ok_index": b.ok_index},
                }));
            }
        }
    }
    v
}

/// (c) Exclusivity from the holders' own view.
pub fn lease_exclusivity(events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    // (process, resource, token) -> [learned at, last claim]
    let mut intervals: HashMap<(u64, &str, u64), (u64, Option<u64>)> = HashMap::new();
    for g in grants(events) {
        intervals.insert((g.process, g.resource, g.token), (g.ok_ns, None));
    }
    for e in events.iter().filter(|e| {
        e.kind == Kind::Invoke && matches!(e.f, Op::Write | Op::Step) && e.claim == Some(true)
    }) {
        let Some(token) = e.token else { continue };
        v.count("claimed_writes");
        if let Some(iv) = intervals.get_mut(&(e.process, e.resource.as_str(), token)) {
            iv.1 = Some(iv.1.map_or(e.t_ns, |t: u64| t.max(e.t_ns)));
        } else {
            v.count("claims_without_a_recorded_grant");
        }
    }
    let mut by_resource: BTreeMap<&str, Vec<(u64, u64, u64, u64)>> = BTreeMap::new();
    for ((process, resource, token), (start, end)) in intervals {
        if let Some(end) = end {
            by_resource
                .entry(resource)
                .or_default()
                .push((start, end, process, token));
        }
    }
    for (resource, mut ivs) in by_resource {
        ivs.sort();
        let mut reach: Option<(u64, u64, u64, u64)> = None; // the interval reaching furthest so far
        for iv in ivs {
            v.count("acted_on_leases");
            if let Some(r) = reach {
                if iv.0 < r.1 {
                    v.violation(json!({
                        "what": "two holders acted on one resource at the same real time",
                        "resource": resource,
                        "a": {"process": r.2, "token": r.3, "from_ns": r.0, "last_claim_ns": r.1},
                        "b": {"process": iv.2, "token": iv.3, "from_ns": iv.0, "last_claim_ns": iv.1},
                        "overlap_ms": (r.1.min(iv.1) - iv.0) as f64 / 1e6,
                    }));
                }
            }
            if reach.is_none_or(|r| iv.1 > r.1) {
                reach = Some(iv);
            }
        }
    }
    v
}

/// (d) Durability after healing.
pub fn durability(events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    let gs = grants(events);

    // Final fences.
    let mut max_acked: BTreeMap<&str, u64> = BTreeMap::new();
    for g in &gs {
        let m = max_acked.entry(g.resource).or_default();
        *m = (*m).max(g.token);
    }
    let mut fence: HashMap<&str, u64> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.f == Op::Read && e.kind == Kind::Ok)
    {
        if let Some(f) = e.fence {
            fence.insert(&e.resource, f);
        }
    }
    for (resource, acked) in &max_acked {
        match fence.get(resource) {
            None => v.violation(json!({
                "what": "resource could not be read after healing (durability unverified)",
                "resource": resource, "max_acknowledged_token": acked,
            })),
            Some(&f) if f < *acked => v.violation(json!({
                "what": "final fence below an acknowledged token (a grant was lost)",
                "resource": resource, "fence": f, "max_acknowledged_token": acked,
            })),
            Some(_) => v.count("fences_checked"),
        }
    }

    // Checkpoints: per lease (resource, token), the acknowledged and the attempted data, in order.
    let mut acked: HashMap<(&str, u64), Vec<&str>> = HashMap::new();
    let mut attempted: HashMap<(&str, u64), HashSet<&str>> = HashMap::new();
    let mut last_invoke: HashMap<u64, &Event> = HashMap::new();
    for e in events {
        if e.kind == Kind::Invoke {
            last_invoke.insert(e.process, e);
        }
        if e.f != Op::Checkpoint {
            continue;
        }
        let (Some(token), Some(data)) = (e.token, e.value.as_deref()) else {
            continue;
        };
        match e.kind {
            Kind::Invoke => {
                attempted
                    .entry((e.resource.as_str(), token))
                    .or_default()
                    .insert(data);
            }
            Kind::Ok => {
                v.count("checkpoints_acknowledged");
                acked
                    .entry((e.resource.as_str(), token))
                    .or_default()
                    .push(data);
            }
            _ => {}
        }
    }
    let mut successors: HashMap<(&str, u64), u64> = HashMap::new();
    for g in &gs {
        let Some(prev) = g.prev_token else { continue };
        v.count("grants_with_previous");
        if prev >= g.token {
            v.violation(json!({
                "what": "previous holder's token is not below the new token",
                "resource": g.resource, "token": g.token, "prev_token": prev,
            }));
        }
        if let Some(other) = successors.insert((g.resource, prev), g.token) {
            v.violation(json!({
                "what": "one lease named as predecessor by two grants",
                "resource": g.resource, "prev_token": prev, "successors": [other, g.token],
            }));
        }
        let key = (g.resource, prev);
        let Some(last_acked) = acked.get(&key).and_then(|a| a.last()) else {
            continue;
        };
        let seen = g.prev_checkpoint;
        let ok = match seen {
            Some(s) if s == *last_acked => true,
            // A later checkpoint whose answer was lost (info) may have committed too.
            Some(s) => {
                attempted.get(&key).is_some_and(|a| a.contains(s)) && seq(s) > seq(last_acked)
            }
            None => false,
        };
        if ok {
            v.count("previous_checkpoints_checked");
        } else {
            v.violation(json!({
                "what": "a replacement did not see its predecessor's last acknowledged checkpoint",
                "resource": g.resource, "token": g.token, "prev_token": prev,
                "seen": seen, "last_acknowledged": last_acked,
            }));
        }
    }
    v
}

/// Checkpoint data is `"<token>:<seq>"`; seq orders one lease's checkpoints.
fn seq(data: &str) -> u64 {
    data.rsplit(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    //! The checkers must be able to fail: hand-made bad histories, each flagged by its checker.
    use super::*;

    struct H {
        events: Vec<Event>,
        t: u64,
    }

    impl H {
        fn new() -> Self {
            Self {
                events: Vec::new(),
                t: 0,
            }
        }
        fn push(&mut self, mut e: Event) -> &mut Self {
            self.t += 1_000_000;
            e.t_ns = self.t;
            e.index = self.events.len() as u64;
            self.events.push(e);
            self
        }
        fn acquire(&mut self, p: u64, r: &str, token: u64) -> &mut Self {
            self.push(Event::new(Kind::Invoke, Op::Acquire, p, r));
            self.push(Event::new(Kind::Ok, Op::Acquire, p, r).token(token))
        }
        fn write(&mut self, p: u64, r: &str, token: u64, accepted: bool) -> &mut Self {
            let mut inv = Event::new(Kind::Invoke, Op::Write, p, r).token(token);
            inv.claim = Some(true);
            self.push(inv);
            let kind = if accepted { Kind::Ok } else { Kind::Fail };
            self.push(Event::new(kind, Op::Write, p, r).token(token))
        }
        fn zombie_write(&mut self, p: u64, r: &str, token: u64, accepted: bool) -> &mut Self {
            let mut inv = Event::new(Kind::Invoke, Op::Write, p, r).token(token);
            inv.claim = Some(false);
            self.push(inv);
            let kind = if accepted { Kind::Ok } else { Kind::Fail };
            self.push(Event::new(kind, Op::Write, p, r).token(token))
        }
        fn read(&mut self, r: &str, fence: u64) -> &mut Self {
            self.push(Event::new(Kind::Invoke, Op::Read, 99, r));
            let mut e = Event::new(Kind::Ok, Op::Read, 99, r);
            e.fence = Some(fence);
            self.push(e)
        }
    }

    fn good() -> H {
        let mut h = H::new();
        h.acquire(1, "r", 1).write(1, "r", 1, true);
        h.push(Event::new(Kind::Invoke, Op::Release, 1, "r").token(1));
        h.push(Event::new(Kind::Ok, Op::Release, 1, "r").token(1));
        h.acquire(2, "r", 3).write(2, "r", 3, true);
        h.zombie_write(1, "r", 1, false); // a paused process's write, rejected
        h.read("r", 4);
        h
    }

    #[test]
    fn a_good_history_passes_every_checker() {
        let h = good();
        for (name, v) in check_all(&h.events) {
            assert!(v.valid, "{name}: {v:?}");
        }
    }

    #[test]
    fn an_accepted_stale_write_is_flagged() {
        let mut h = good();
        h.zombie_write(1, "r", 1, true);
        let v = fenced_register(&h.events);
        assert!(!v.valid);
        assert_eq!(v.violations[0]["what"], "stale write accepted");
    }

    #[test]
    fn token_reuse_is_flagged() {
        let mut h = good();
        h.acquire(3, "r", 3);
        let v = token_order(&h.events);
        assert!(!v.valid);
        assert!(v
            .violations
            .iter()
            .any(|x| x["what"] == "token granted twice"));
    }

    #[test]
    fn a_later_grant_with_a_lower_token_is_flagged() {
        let mut h = good();
        h.acquire(3, "r", 2);
        let v = token_order(&h.events);
        assert!(!v.valid, "{v:?}");
    }

    #[test]
    fn concurrent_grants_may_come_in_either_order() {
        let mut h = H::new();
        h.push(Event::new(Kind::Invoke, Op::Acquire, 1, "r"));
        h.push(Event::new(Kind::Invoke, Op::Acquire, 2, "r"));
        h.push(Event::new(Kind::Ok, Op::Acquire, 2, "r").token(5));
        h.push(Event::new(Kind::Ok, Op::Acquire, 1, "r").token(7));
        assert!(token_order(&h.events).valid);
    }

    #[test]
    fn overlapping_holders_are_flagged() {
        let mut h = H::new();
        h.acquire(1, "r", 1).write(1, "r", 1, true);
        h.acquire(2, "r", 3).write(2, "r", 3, true);
        // Process 1 still believes it holds the lease after process 2 learned of its grant.
        h.write(1, "r", 1, false);
        let v = lease_exclusivity(&h.events);
        assert!(!v.valid, "{v:?}");
        assert_eq!(
            v.violations[0]["what"],
            "two holders acted on one resource at the same real time"
        );
    }

    #[test]
    fn a_zombie_write_without_a_claim_is_not_an_exclusivity_violation() {
        let mut h = H::new();
        h.acquire(1, "r", 1).write(1, "r", 1, true);
        h.acquire(2, "r", 3).write(2, "r", 3, true);
        h.zombie_write(1, "r", 1, false);
        assert!(lease_exclusivity(&h.events).valid);
        assert!(fenced_register(&h.events).valid);
    }

    #[test]
    fn a_lost_grant_is_flagged() {
        let mut h = good();
        h.read("r", 2); // the final fence is below token 3, which was acknowledged
        let v = durability(&h.events);
        assert!(!v.valid);
    }

    #[test]
    fn an_unreadable_resource_is_flagged() {
        let mut h = H::new();
        h.acquire(1, "r", 1);
        assert!(!durability(&h.events).valid);
    }

    #[test]
    fn a_lost_checkpoint_is_flagged() {
        let mut h = H::new();
        h.acquire(1, "r", 1);
        for (kind, data) in [
            (Kind::Invoke, "1:1"),
            (Kind::Ok, "1:1"),
            (Kind::Invoke, "1:2"),
            (Kind::Ok, "1:2"),
        ] {
            let mut e = Event::new(kind, Op::Checkpoint, 1, "r").token(1);
            e.value = Some(data.into());
            h.push(e);
        }
        h.push(Event::new(Kind::Invoke, Op::Acquire, 2, "r"));
        let mut ok = Event::new(Kind::Ok, Op::Acquire, 2, "r").token(3);
        ok.prev_token = Some(1);
        ok.prev_checkpoint = Some("1:1".into());
        h.push(ok);
        h.read("r", 3);
        let v = durability(&h.events);
        assert!(!v.valid, "{v:?}");
        // Seeing the last acknowledged checkpoint passes.
        h.events[7].prev_checkpoint = Some("1:2".into());
        assert!(durability(&h.events).valid);
    }
}
