//! `timeline.svg`: the run drawn so a violation can be seen, not only read.
//!
//! - One row per resource. Each lease is a bar from its grant (acquire ok) to the moment its holder
//!   stopped believing it held it: release invoked, lapse seen, instance killed, client pause begun,
//!   or the holder's next acquire. Bars that overlap in time go to extra lanes below, so two
//!   holders at once show as two stacked bars. The bar's label is the token.
//! - Ticks under the bars: accepted writes and deploy steps (green), rejected ones (red).
//! - Faults from the nemesis timeline are shaded across every row, coloured by kind and labelled.
//! - Each checker violation is marked in red in its resource's row, labelled with the checker: two
//!   holders at once as the span they overlapped, others at the times and history indexes they name,
//!   and one that names no moment (a final-state check) across the whole row.
//!
//! Every element has a `<title>`, so hovering in a browser shows the details.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::checker::Verdict;
use crate::history::{Event, Kind, Op};
use crate::nemesis::{Fault, NemesisEvent};

const LEFT: f64 = 170.0;
const TOP: f64 = 40.0;
const LANE: f64 = 18.0;
const ROW_GAP: f64 = 14.0;
/// Horizontal scale bounds: at least this many pixels per second, and the picture at most this wide.
const MIN_PX_PER_S: f64 = 8.0;
const MAX_WIDTH: f64 = 16_000.0;

/// A lease as its holder saw it.
struct Bar {
    process: u64,
    token: Option<u64>,
    lease: Option<String>,
    from: u64,
    to: u64,
    ended_by: &'static str,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fault_colour(f: Option<Fault>) -> &'static str {
    match f {
        Some(Fault::Kill) => "#d62728",
        Some(Fault::Pause) => "#9467bd",
        Some(Fault::Partition) => "#ff7f0e",
        Some(Fault::Bridge) => "#bcbd22",
        Some(Fault::Ring) => "#17becf",
        Some(Fault::Clock) => "#8c564b",
        Some(Fault::Membership) => "#2ca02c",
        Some(Fault::ClientPause) => "#e377c2",
        Some(Fault::Loss) => "#aec7e8",
        Some(Fault::Wipe) => "#393b79",
        None => "#7f7f7f",
    }
}

/// A stable, distinct-enough colour per process.
fn process_colour(p: u64) -> String {
    let hue = (p.wrapping_mul(137) % 360) as f64;
    format!("hsl({hue:.0},55%,55%)")
}

/// The leases of the history, per resource, from each holder's view.
fn bars(events: &[Event], end: u64) -> BTreeMap<String, Vec<Bar>> {
    let mut open: BTreeMap<u64, Bar> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<Bar>> = BTreeMap::new();
    let mut resource_of: BTreeMap<u64, String> = BTreeMap::new();
    for e in events {
        let ends = match (e.f, e.kind) {
            (Op::Release, Kind::Invoke) => Some("released"),
            (Op::Lapse, _) => Some("lapse seen"),
            (Op::Kill, _) => Some("killed"),
            (Op::Pause, _) => Some("paused"),
            (Op::Acquire, Kind::Invoke) => Some("next acquire"),
            _ => None,
        };
        if let Some(why) = ends {
            if let Some(mut bar) = open.remove(&e.process) {
                bar.to = e.t_ns;
                bar.ended_by = why;
                let r = resource_of.remove(&e.process).unwrap_or_default();
                out.entry(r).or_default().push(bar);
            }
        }
        if e.f == Op::Acquire && e.kind == Kind::Ok {
            resource_of.insert(e.process, e.resource.clone());
            open.insert(
                e.process,
                Bar {
                    process: e.process,
                    token: e.token,
                    lease: e.lease_id.clone(),
                    from: e.t_ns,
                    to: end,
                    ended_by: "end of run",
                },
            );
        }
    }
    for (p, bar) in open {
        let r = resource_of.remove(&p).unwrap_or_default();
        out.entry(r).or_default().push(bar);
    }
    out
}

/// Where a violation happened: the times it names (keys ending in `_ns`, and history indexes such
/// as `index` / `ok_index` looked up in `events`), at any depth.
fn violation_times(v: &serde_json::Value, events: &[Event], out: &mut Vec<u64>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if let Some(n) = x.as_u64() {
                    if k.ends_with("_ns") {
                        out.push(n);
                    } else if k == "index" || k.ends_with("_index") {
                        if let Ok(i) = events.binary_search_by_key(&n, |e| e.index) {
                            out.push(events[i].t_ns);
                        }
                    }
                }
                violation_times(x, events, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| violation_times(x, events, out)),
        _ => {}
    }
}

/// Two holders at once (`a` and `b` with `from_ns` and `last_claim_ns`): the overlap.
fn overlap(v: &serde_json::Value) -> Option<(u64, u64)> {
    let get = |side: &str, k: &str| v.get(side)?.get(k)?.as_u64();
    let from = get("a", "from_ns")?.max(get("b", "from_ns")?);
    let to = get("a", "last_claim_ns")?.min(get("b", "last_claim_ns")?);
    Some((from, to.max(from)))
}

/// Draw the run.
pub fn render(
    events: &[Event],
    faults: &[NemesisEvent],
    checkers: &BTreeMap<String, Verdict>,
) -> String {
    let end = events
        .iter()
        .map(|e| e.t_ns)
        .chain(faults.iter().map(|f| f.t_ns))
        .max()
        .unwrap_or(0)
        .max(1);
    let seconds = end as f64 / 1e9;
    let px_per_s = (MAX_WIDTH / seconds.max(1.0)).min(MIN_PX_PER_S.max(1200.0 / seconds.max(1.0)));
    let x = |t: u64| LEFT + t as f64 / 1e9 * px_per_s;
    let width = x(end) + 40.0;

    // Lay out: each resource gets as many lanes as it has overlapping bars.
    let mut rows = Vec::new();
    let mut y = TOP + 20.0;
    for (resource, mut list) in bars(events, end) {
        list.sort_by_key(|b| b.from);
        let mut lane_end: Vec<u64> = Vec::new();
        let mut placed = Vec::new();
        for bar in list {
            let lane = match lane_end.iter().position(|&t| t <= bar.from) {
                Some(l) => l,
                None => {
                    lane_end.push(0);
                    lane_end.len() - 1
                }
            };
            lane_end[lane] = bar.to;
            placed.push((lane, bar));
        }
        let lanes = lane_end.len().max(1);
        rows.push((resource, y, lanes, placed));
        y += lanes as f64 * LANE + ROW_GAP + 8.0;
    }
    let height = y + 30.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // Faults first, so bars are drawn over the shading.
    let mut starts: BTreeMap<(Option<Fault>, Vec<u64>), &NemesisEvent> = BTreeMap::new();
    let shade = |from: &NemesisEvent, to_t: u64, s: &mut String| {
        let (x0, x1) = (x(from.t_ns), x(to_t.max(from.t_ns)));
        let colour = fault_colour(from.fault);
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.1}" y="{TOP:.0}" width="{:.1}" height="{:.0}" fill="{colour}" opacity="0.15"><title>{}</title></rect>"#,
            (x1 - x0).max(1.0),
            height - TOP - 20.0,
            esc(&from.detail)
        );
        let label = from.fault.map(crate::nemesis::name).unwrap_or_default();
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.0}" fill="{colour}">{} {}</text>"#,
            x0 + 2.0,
            TOP - 4.0,
            esc(&label),
            esc(&from
                .nodes
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","))
        );
    };
    for f in faults {
        let key = (f.fault, f.nodes.clone());
        match f.phase.as_str() {
            "start" => {
                starts.insert(key, f);
            }
            "end" | "error" => {
                if let Some(st) = starts.remove(&key) {
                    shade(st, f.t_ns, &mut s);
                }
            }
            _ => {}
        }
    }
    for st in starts.into_values() {
        shade(st, end, &mut s);
    }
    // Time axis: a tick every 10 s (every second for short runs).
    let step = if seconds > 60.0 { 10 } else { 1 };
    let mut t = 0u64;
    while (t as f64) <= seconds {
        let tx = x(t * 1_000_000_000);
        let _ = writeln!(
            s,
            r##"<line x1="{tx:.1}" y1="{:.0}" x2="{tx:.1}" y2="{:.0}" stroke="#ddd"/><text x="{tx:.1}" y="{:.0}" fill="#555">{t}s</text>"##,
            TOP + 10.0,
            height - 20.0,
            height - 6.0
        );
        t += step;
    }
    // Rows.
    let ticks: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.f, Op::Write | Op::Step) && e.kind != Kind::Invoke)
        .collect();
    for (resource, y0, lanes, placed) in &rows {
        let _ = writeln!(
            s,
            r##"<text x="6" y="{:.0}" fill="#222">{}</text>"##,
            y0 + 12.0,
            esc(resource)
        );
        for (lane, b) in placed {
            let (x0, x1) = (x(b.from), x(b.to));
            let yb = y0 + *lane as f64 * LANE;
            let token = b.token.map(|t| t.to_string()).unwrap_or_default();
            let _ = writeln!(
                s,
                r#"<rect x="{x0:.1}" y="{yb:.1}" width="{:.1}" height="{:.0}" fill="{}" stroke="{}" opacity="0.85"><title>process {} token {} lease {} from {:.3}s to {:.3}s ({})</title></rect>"#,
                (x1 - x0).max(1.0),
                LANE - 3.0,
                process_colour(b.process),
                if *lane > 0 { "red" } else { "none" },
                b.process,
                token,
                esc(b.lease.as_deref().unwrap_or("?")),
                b.from as f64 / 1e9,
                b.to as f64 / 1e9,
                b.ended_by
            );
            if x1 - x0 > 7.0 * token.len() as f64 + 4.0 {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" fill="white">{token}</text>"#,
                    x0 + 2.0,
                    yb + 11.0
                );
            }
        }
        let yt = y0 + *lanes as f64 * LANE;
        for e in ticks.iter().filter(|e| &e.resource == resource) {
            let colour = if e.kind == Kind::Ok {
                "#2ca02c"
            } else {
                "#d62728"
            };
            let tx = x(e.t_ns);
            let _ = writeln!(
                s,
                r#"<line x1="{tx:.1}" y1="{yt:.1}" x2="{tx:.1}" y2="{:.1}" stroke="{colour}"><title>{:?} {:?} by process {} token {}</title></line>"#,
                yt + 6.0,
                e.f,
                e.kind,
                e.process,
                e.token.map(|t| t.to_string()).unwrap_or_default()
            );
        }
    }
    // Violations: in their resource's row when they name one, else across the picture.
    for (name, v) in checkers {
        for violation in &v.violations {
            let row = violation
                .get("resource")
                .and_then(|r| r.as_str())
                .and_then(|r| rows.iter().find(|row| row.0 == r));
            let (y0, y1) = match row {
                Some((_, y, lanes, _)) => (*y - 3.0, *y + *lanes as f64 * LANE + 6.0),
                None => (TOP, height - 20.0),
            };
            let title = format!("{name}: {violation}");
            let mut spans = Vec::new();
            match overlap(violation) {
                Some(band) => spans.push(band),
                None => {
                    let mut times = Vec::new();
                    violation_times(violation, events, &mut times);
                    times.sort_unstable();
                    times.dedup();
                    spans.extend(times.into_iter().map(|t| (t, t)));
                }
            }
            if spans.is_empty() {
                // A violation of the final state names no moment: mark the whole row (or picture).
                spans.push((0, end));
            }
            for (from, to) in spans {
                let (x0, x1) = (x(from), x(to));
                let _ = writeln!(
                    s,
                    r#"<rect x="{:.1}" y="{y0:.1}" width="{:.1}" height="{:.1}" fill="red" fill-opacity="0.35" stroke="red" stroke-width="1.5"><title>{}</title></rect><text x="{:.1}" y="{:.1}" fill="red" font-weight="bold">{}</text>"#,
                    x0 - 1.0,
                    (x1 - x0).max(0.0) + 2.0,
                    y1 - y0,
                    esc(&title),
                    x0 + 3.0,
                    y0 - 1.0,
                    esc(name)
                );
            }
        }
    }
    let _ = writeln!(s, "</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(index: u64, kind: Kind, f: Op, process: u64, token: Option<u64>, t_s: f64) -> Event {
        serde_json::from_value(serde_json::json!({
            "index": index, "type": kind, "f": f, "process": process, "resource": "r",
            "token": token, "t_ns": (t_s * 1e9) as u64, "wall_ms": 0
        }))
        .unwrap()
    }

    #[test]
    fn overlapping_holders_are_drawn_in_two_lanes_and_violations_are_marked() {
        use Kind::*;
        let events = vec![
            ev(0, Ok, Op::Acquire, 1, Some(5), 1.0),
            ev(1, Ok, Op::Acquire, 2, Some(6), 2.0),
            ev(2, Invoke, Op::Release, 1, Some(5), 3.0),
            ev(3, Ok, Op::Write, 2, Some(6), 3.5),
            ev(4, Invoke, Op::Release, 2, Some(6), 4.0),
        ];
        let b = bars(&events, 10);
        assert_eq!(b["r"].len(), 2);
        assert_eq!(b["r"][0].ended_by, "released");

        let mut checkers = BTreeMap::new();
        let mut v = Verdict::new();
        v.violations
            .push(serde_json::json!({"what": "two holders", "resource": "r",
            "a": {"from_ns": 1_000_000_000u64, "last_claim_ns": 3_000_000_000u64},
            "b": {"from_ns": 2_000_000_000u64, "last_claim_ns": 3_500_000_000u64}}));
        assert_eq!(
            overlap(&v.violations[0]),
            Some((2_000_000_000, 3_000_000_000))
        );
        let mut times = Vec::new();
        violation_times(&serde_json::json!({"ok_index": 3}), &events, &mut times);
        assert_eq!(times, vec![3_500_000_000]);
        checkers.insert("lease_exclusivity".to_string(), v);
        let svg = render(&events, &[], &checkers);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        // The second holder overlaps the first: drawn in a second lane, outlined in red.
        assert!(svg.contains(r#"stroke="red" opacity"#));
        assert!(svg.contains("lease_exclusivity"));
    }
}
