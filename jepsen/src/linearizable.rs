//! `linearizable`: the lease operations on each resource, checked against a sequential lock model with
//! the Wing–Gong–Lowe search (linearize each operation as early as possible, backtrack when a completed
//! operation cannot be placed, memoise on (operations linearized, model state)).
//!
//! The model, per resource: a holder (free, a token, or a token nobody learned) and the highest token
//! granted.
//! - a grant of token `t` (acquire ok) is legal when `t` is above every token granted before it. It
//!   does not need the resource free: a lease may have expired silently, and expiry is not an
//!   operation anyone observes (exclusivity in time is `lease_exclusivity`'s job);
//! - a busy answer (acquire fail `busy`) is legal only while someone holds the resource: a busy
//!   answered from a stale state (after the holder released, with no grant since) is a violation;
//! - a release that answered ok is legal only while its own token holds the resource, and frees it.
//!
//! Other failures (wait ended, refused, lease already ended) claim nothing and are left out. An
//! operation whose outcome is unknown (`info`, or never answered) may take effect at any point after
//! its invocation, or never. An acquire of unknown outcome that took effect holds the resource with a
//! token nobody learned.
//!
//! Bounded: each resource's search stops after `STEP_BUDGET` steps and is reported as unchecked
//! (counted, not a violation), so the checker always finishes. Neither todc-utils (unbounded, and no
//! operations of unknown outcome) nor stateright (a model checker, not a history checker) fits that.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::json;

use crate::checker::Verdict;
use crate::history::{Event, Kind, Op};

/// Search steps per resource before giving up on it.
pub const STEP_BUDGET: u64 = 5_000_000;

/// A lease operation as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOp {
    /// Acquire ok with this token; `None`: an acquire of unknown outcome.
    Grant(Option<u64>),
    /// Acquire answered busy.
    Busy,
    /// Release of this token answered ok.
    Release(u64),
}

/// Who holds the resource in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Holder {
    Free,
    Token(u64),
    /// Granted by an acquire of unknown outcome: nobody learned the token.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Lock {
    holder: Holder,
    highest: u64,
}

impl Lock {
    fn step(self, op: LockOp) -> Option<Lock> {
        match op {
            LockOp::Grant(Some(t)) if t > self.highest => Some(Lock {
                holder: Holder::Token(t),
                highest: t,
            }),
            LockOp::Grant(Some(_)) => None,
            LockOp::Grant(None) => Some(Lock {
                holder: Holder::Unknown,
                ..self
            }),
            LockOp::Busy if self.holder != Holder::Free => Some(self),
            LockOp::Busy => None,
            LockOp::Release(t) if self.holder == Holder::Token(t) => Some(Lock {
                holder: Holder::Free,
                ..self
            }),
            LockOp::Release(_) => None,
        }
    }
}

/// One operation of the history: what it did, when it was invoked and answered (`None`: unknown
/// outcome), and the history index of its answer (or invocation) for the report.
#[derive(Debug, Clone)]
pub struct Operation {
    pub op: LockOp,
    pub invoke_ns: u64,
    pub complete_ns: Option<u64>,
    pub index: u64,
}

/// The outcome of one resource's search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    /// No order exists; the operation that could not be placed (its position in the input) and how
    /// many operations were placed before it at best.
    Violation {
        stuck: usize,
        placed: usize,
    },
    /// The step budget ran out.
    Unchecked,
}

/// The lease operations of `events`, by resource.
pub fn operations<'a>(events: &'a [Event]) -> BTreeMap<&'a str, Vec<Operation>> {
    let mut open: HashMap<u64, &Event> = HashMap::new();
    let mut out: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    let mut push = |e: &'a Event, op: LockOp, invoke_ns: u64, complete_ns: Option<u64>| {
        out.entry(e.resource.as_str()).or_default().push(Operation {
            op,
            invoke_ns,
            complete_ns,
            index: e.index,
        })
    };
    for e in events {
        let lease_op = matches!(e.f, Op::Acquire | Op::Release);
        if e.kind == Kind::Invoke {
            // A process that invoked again gave up on its previous operation: unknown outcome.
            if let Some(prev) = open.remove(&e.process) {
                if let Some(op) = unknown(prev) {
                    push(prev, op, prev.t_ns, None);
                }
            }
            if lease_op {
                open.insert(e.process, e);
            }
            continue;
        }
        if !lease_op {
            continue;
        }
        let Some(inv) = open.remove(&e.process).filter(|i| i.f == e.f) else {
            continue;
        };
        let op = match (e.f, e.kind) {
            (Op::Acquire, Kind::Ok) => e.token.map(|t| LockOp::Grant(Some(t))),
            (Op::Acquire, Kind::Fail) if e.error.as_deref() == Some("busy") => Some(LockOp::Busy),
            (Op::Release, Kind::Ok) => inv.token.or(e.token).map(LockOp::Release),
            (_, Kind::Info) => unknown(inv),
            _ => None,
        };
        let complete = (e.kind != Kind::Info).then_some(e.t_ns);
        if let Some(op) = op {
            push(e, op, inv.t_ns, complete);
        }
    }
    for inv in open.into_values() {
        if let Some(op) = unknown(inv) {
            push(inv, op, inv.t_ns, None);
        }
    }
    for ops in out.values_mut() {
        ops.sort_by_key(|o| (o.invoke_ns, o.index));
    }
    out
}

/// What an invocation of unknown outcome may have done.
fn unknown(inv: &Event) -> Option<LockOp> {
    match inv.f {
        Op::Acquire => Some(LockOp::Grant(None)),
        Op::Release => inv.token.map(LockOp::Release),
        _ => None,
    }
}

/// Wing–Gong–Lowe over `ops` (one resource), at most `budget` steps.
pub fn search(ops: &[Operation], budget: u64) -> Outcome {
    // The history as a doubly linked list of call and return entries in time order; an operation of
    // unknown outcome has no return entry. At equal times returns come first (they happened before).
    #[derive(Clone, Copy)]
    struct Entry {
        op: usize,
        is_call: bool,
        prev: usize,
        next: usize,
    }
    let mut timed: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, o) in ops.iter().enumerate() {
        timed.push((o.invoke_ns, true, i));
        if let Some(c) = o.complete_ns {
            timed.push((c.max(o.invoke_ns), false, i));
        }
    }
    timed.sort_by_key(|&(t, is_call, i)| (t, is_call, i));
    const HEAD: usize = 0;
    let mut list = vec![Entry {
        op: usize::MAX,
        is_call: false,
        prev: HEAD,
        next: 1,
    }];
    let mut call_at = vec![0; ops.len()];
    let mut return_at = vec![None; ops.len()];
    for (n, &(_, is_call, i)) in timed.iter().enumerate() {
        let at = n + 1;
        list.push(Entry {
            op: i,
            is_call,
            prev: at - 1,
            next: if at == timed.len() {
                usize::MAX
            } else {
                at + 1
            },
        });
        if is_call {
            call_at[i] = at;
        } else {
            return_at[i] = Some(at);
        }
    }
    if timed.is_empty() {
        list[HEAD].next = usize::MAX;
    }
    let unlink = |list: &mut Vec<Entry>, at: usize| {
        let (p, n) = (list[at].prev, list[at].next);
        list[p].next = n;
        if n != usize::MAX {
            list[n].prev = p;
        }
    };
    let relink = |list: &mut Vec<Entry>, at: usize| {
        let (p, n) = (list[at].prev, list[at].next);
        list[p].next = at;
        if n != usize::MAX {
            list[n].prev = at;
        }
    };

    let words = ops.len().div_ceil(64);
    let mut placed = vec![0u64; words];
    let mut seen: HashSet<(Vec<u64>, Lock)> = HashSet::new();
    let mut state = Lock {
        holder: Holder::Free,
        highest: 0,
    };
    let mut stack: Vec<(usize, Lock)> = Vec::new();
    let mut returns_left = return_at.iter().filter(|r| r.is_some()).count();
    let mut best = (0usize, usize::MAX);
    let mut steps = 0u64;
    let mut at = list[HEAD].next;
    loop {
        if returns_left == 0 {
            return Outcome::Linearizable;
        }
        steps += 1;
        if steps > budget {
            return Outcome::Unchecked;
        }
        match (at != usize::MAX).then(|| list[at]) {
            Some(e) if e.is_call => {
                let i = e.op;
                if let Some(next) = state.step(ops[i].op) {
                    placed[i / 64] |= 1 << (i % 64);
                    if seen.insert((placed.clone(), next)) {
                        stack.push((at, state));
                        state = next;
                        unlink(&mut list, at);
                        if let Some(r) = return_at[i] {
                            unlink(&mut list, r);
                            returns_left -= 1;
                        }
                        at = list[HEAD].next;
                        continue;
                    }
                    placed[i / 64] &= !(1 << (i % 64));
                }
                at = e.next;
                continue;
            }
            // A completed operation that could not be placed before its answer: remember the
            // deepest such point for the report.
            Some(e) if stack.len() >= best.0 => best = (stack.len(), e.op),
            // A shallower one, or only calls of unknown outcome were left to try here.
            _ => {}
        }
        // Back up: undo the last placement and try what follows it.
        let Some((call, before)) = stack.pop() else {
            return Outcome::Violation {
                stuck: best.1.min(ops.len().saturating_sub(1)),
                placed: best.0,
            };
        };
        let i = list[call].op;
        state = before;
        placed[i / 64] &= !(1 << (i % 64));
        // In the reverse order of unlinking.
        if let Some(r) = return_at[i] {
            relink(&mut list, r);
            returns_left += 1;
        }
        relink(&mut list, call);
        at = list[call].next;
    }
}

/// The `linearizable` checker over a whole history.
pub fn check(events: &[Event]) -> Verdict {
    let mut v = Verdict::new();
    for (resource, ops) in operations(events) {
        for o in &ops {
            v.count(match (o.op, o.complete_ns) {
                (_, None) => "ops_unknown_outcome",
                (LockOp::Grant(_), _) => "grants",
                (LockOp::Busy, _) => "busy_answers",
                (LockOp::Release(_), _) => "releases",
            });
        }
        match search(&ops, STEP_BUDGET) {
            Outcome::Linearizable => v.count("resources_linearizable"),
            Outcome::Unchecked => v.count("resources_unchecked"),
            Outcome::Violation { stuck, placed } => {
                let o = &ops[stuck];
                v.violation(json!({
                    "resource": resource,
                    "index": o.index,
                    "op": format!("{:?}", o.op),
                    "invoke_ns": o.invoke_ns,
                    "complete_ns": o.complete_ns,
                    "placed_before": placed,
                    "what": "no order of the lease operations on this resource agrees with the \
                             lock model and with real time; this operation could not be placed",
                }));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: LockOp, invoke: u64, complete: Option<u64>) -> Operation {
        Operation {
            op,
            invoke_ns: invoke,
            complete_ns: complete,
            index: invoke,
        }
    }

    use LockOp::{Busy, Grant, Release};

    #[test]
    fn a_sequential_lock_history_is_linearizable() {
        let ops = [
            op(Grant(Some(1)), 0, Some(1)),
            op(Busy, 2, Some(3)),
            op(Release(1), 4, Some(5)),
            op(Grant(Some(5)), 6, Some(7)),
        ];
        assert_eq!(search(&ops, 1000), Outcome::Linearizable);
    }

    #[test]
    fn concurrent_operations_may_be_ordered_either_way() {
        // The busy overlaps the release and a later grant: placed before the release (or after the
        // grant), it is legal.
        let ops = [
            op(Grant(Some(1)), 0, Some(1)),
            op(Release(1), 2, Some(6)),
            op(Busy, 3, Some(8)),
            op(Grant(Some(2)), 4, Some(5)),
        ];
        assert_eq!(search(&ops, 1000), Outcome::Linearizable);
    }

    #[test]
    fn a_busy_answer_from_a_stale_state_is_caught() {
        // Released at 2..3, nothing granted since, and busy answered at 4..5.
        let ops = [
            op(Grant(Some(1)), 0, Some(1)),
            op(Release(1), 2, Some(3)),
            op(Busy, 4, Some(5)),
        ];
        assert!(matches!(
            search(&ops, 1000),
            Outcome::Violation { stuck: 2, .. }
        ));
        // An acquire of unknown outcome in between may have taken the resource: then it is legal.
        let mut with_unknown = ops.to_vec();
        with_unknown.push(op(Grant(None), 3, None));
        with_unknown.sort_by_key(|o| o.invoke_ns);
        assert_eq!(search(&with_unknown, 1000), Outcome::Linearizable);
    }

    #[test]
    fn a_token_that_goes_back_or_a_release_after_a_newer_grant_is_caught() {
        let back = [
            op(Grant(Some(5)), 0, Some(1)),
            op(Grant(Some(3)), 2, Some(3)),
        ];
        assert!(matches!(search(&back, 1000), Outcome::Violation { .. }));
        // Concurrent, the smaller token may come first.
        let overlap = [
            op(Grant(Some(5)), 0, Some(3)),
            op(Grant(Some(3)), 1, Some(2)),
        ];
        assert_eq!(search(&overlap, 1000), Outcome::Linearizable);
        // Token 1's release answered ok after token 2 was granted: two live leases in the state.
        let late_release = [
            op(Grant(Some(1)), 0, Some(1)),
            op(Grant(Some(2)), 2, Some(3)),
            op(Release(1), 4, Some(5)),
        ];
        assert!(matches!(
            search(&late_release, 1000),
            Outcome::Violation { stuck: 2, .. }
        ));
    }

    #[test]
    fn the_search_is_bounded() {
        // Many concurrent unknown acquires and busies: a wide search, cut off by the budget.
        let mut ops = vec![op(Grant(Some(1)), 0, Some(1))];
        for i in 0..40 {
            ops.push(op(Grant(None), 2 + i, None));
            ops.push(op(Release(1), 2 + i, None));
        }
        ops.push(op(Busy, 100, Some(101)));
        ops.push(op(Grant(Some(0)), 102, Some(103)));
        assert_eq!(search(&ops, 10_000), Outcome::Unchecked);
    }

    #[test]
    fn operations_are_read_from_the_history() {
        let mut events = Vec::new();
        let mut push = |kind, f, process, token: Option<u64>, error: Option<&str>, t| {
            let mut e = Event::new(kind, f, process, "r");
            e.token = token;
            e.error = error.map(str::to_string);
            e.t_ns = t;
            e.index = t;
            events.push(e);
        };
        push(Kind::Invoke, Op::Acquire, 1, None, None, 0);
        push(Kind::Ok, Op::Acquire, 1, Some(7), None, 1);
        push(Kind::Invoke, Op::Acquire, 2, None, None, 2);
        push(Kind::Fail, Op::Acquire, 2, None, Some("busy"), 3);
        push(Kind::Invoke, Op::Acquire, 2, None, None, 4);
        push(Kind::Fail, Op::Acquire, 2, None, Some("wait ended"), 5);
        push(Kind::Invoke, Op::Release, 1, Some(7), None, 6);
        push(Kind::Ok, Op::Release, 1, Some(7), None, 7);
        push(Kind::Invoke, Op::Acquire, 3, None, None, 8);
        let ops = &operations(&events)["r"];
        let got: Vec<_> = ops.iter().map(|o| (o.op, o.complete_ns)).collect();
        assert_eq!(
            got,
            [
                (Grant(Some(7)), Some(1)),
                (Busy, Some(3)),
                (Release(7), Some(7)),
                (Grant(None), None)
            ]
        );
        assert!(check(&events).valid);
    }
}
