//! When a rule's data arrives, and where its evaluations go.
//!
//! A new value cannot be seen before Prometheus has scraped it; an
//! evaluation at an arbitrary phase of the scrape sees it up to one scrape
//! interval late. The scheduler asks Prometheus once (and again every few
//! minutes) when the rule's series were last scraped and how often
//! ([`probe_expr`]), learns a [`Phase`] from the answer ([`learn`]) and
//! places each evaluation just after the data is readable, keeping `every:`
//! as the period. Nothing here does I/O or reads a clock.
//!
//! The probe asks about the rule's first selector without `offset` or `@`
//! (an offset selector's data is old by design), per target (`job`,
//! `instance`): the newest sample's timestamp, the newest before a
//! [`window`] ago, the samples in between (their count gives the interval
//! exactly, as Prometheus stamps each scrape with its start) and the
//! target's `scrape_duration_seconds` (how long after its timestamp a
//! sample becomes readable). Recording rules' series work the same way:
//! their samples carry the rule group's evaluation times.

use std::collections::BTreeMap;

use promql_parser::parser::{self, Expr, VectorSelector};

/// The probe's label that tells its four answers apart.
const PART: &str = "ripcord_probe";

/// The probe's look-back, over which the interval is measured: ten of
/// the rule's intervals, at least 10 s (so that a young series is measured
/// soon) and at most 5 m (Prometheus's own look-back).
pub fn window(every: std::time::Duration) -> std::time::Duration {
    (every * 10).clamp(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(300),
    )
}

/// A readable sample is this much after its scrape ended, at least.
const SLACK_MS: f64 = 20.0;

/// Readiness assumed when the target's scrape duration is not known.
const UNKNOWN_DURATION_MS: f64 = 50.0;

/// Labels that name where a series is scraped from: a selector's other
/// matchers pick series within the same targets, so the probe leaves them
/// out and rules over one metric of one job share one probe.
const TARGET_LABELS: &[&str] = &[
    "job",
    "instance",
    "namespace",
    "pod",
    "service",
    "node",
    "cluster",
];

/// The first selector of the rule's queries that reads current data, as
/// PromQL text without offset or `@`, narrowed to its metric name and the
/// matchers on [`TARGET_LABELS`].
pub fn selector<'a>(queries: impl IntoIterator<Item = &'a String>) -> Option<String> {
    queries.into_iter().find_map(|q| {
        let expr = parser::parse(q).ok()?;
        first_current(&expr).map(|vs| {
            let mut vs = vs.clone();
            vs.offset = None;
            vs.at = None;
            if vs.name.is_some() && vs.matchers.or_matchers.is_empty() {
                vs.matchers
                    .matchers
                    .retain(|m| TARGET_LABELS.contains(&m.name.as_str()));
            }
            vs.to_string()
        })
    })
}

fn first_current(expr: &Expr) -> Option<&VectorSelector> {
    let current = |vs: &VectorSelector| vs.offset.is_none() && vs.at.is_none();
    match expr {
        Expr::VectorSelector(vs) => current(vs).then_some(vs),
        Expr::MatrixSelector(m) => current(&m.vs).then_some(&m.vs),
        Expr::Paren(p) => first_current(&p.expr),
        Expr::Unary(u) => first_current(&u.expr),
        Expr::Subquery(s) => first_current(&s.expr),
        Expr::Aggregate(a) => first_current(&a.expr),
        Expr::Call(c) => c.args.args.iter().find_map(|a| first_current(a)),
        Expr::Binary(b) => first_current(&b.lhs).or_else(|| first_current(&b.rhs)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => None,
    }
}

/// One PromQL query that answers, per target of `selector`, the four
/// numbers [`targets`] reads.
pub fn probe_expr(selector: &str, window: std::time::Duration) -> String {
    let w = format!("{}ms", window.as_millis().max(1));
    let part = |name: &str, expr: String| {
        format!(
            "label_replace(max by (job, instance) ({expr}), \"{PART}\", \"{name}\", \"\", \"\")"
        )
    };
    [
        part("last", format!("timestamp({selector})")),
        part("before", format!("timestamp({selector} offset {w})")),
        part("count", format!("count_over_time({selector}[{w}])")),
        part(
            "duration",
            format!(
                "scrape_duration_seconds and on (job, instance) group by (job, instance) ({selector})"
            ),
        ),
    ]
    .join(" or ")
}

/// What the probe says of one target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Target {
    /// The newest sample's timestamp, ms since the epoch.
    pub last_ms: Option<f64>,
    /// The newest sample at least the probe's [`window`] old.
    pub before_ms: Option<f64>,
    /// Samples after `before` up to `last`.
    pub count: Option<f64>,
    /// How long its last scrape took.
    pub duration_ms: Option<f64>,
}

impl Target {
    /// The scrape interval, in whole ms (Prometheus's own unit).
    pub fn interval_ms(&self) -> Option<f64> {
        let (last, before, n) = (self.last_ms?, self.before_ms?, self.count?);
        (n >= 1.0 && last > before).then(|| ((last - before) / n).round().max(1.0))
    }

    /// When a scrape's samples can be read, after its timestamp.
    fn ready_after_ms(&self) -> f64 {
        self.duration_ms.unwrap_or(UNKNOWN_DURATION_MS) * 2.0 + SLACK_MS
    }
}

/// The probe's answer, per target (`job`, `instance`).
pub fn targets(answer: &[(BTreeMap<String, String>, f64)]) -> Vec<Target> {
    let mut by: BTreeMap<(String, String), Target> = BTreeMap::new();
    for (labels, v) in answer {
        if !v.is_finite() {
            continue;
        }
        let key = |l: &str| labels.get(l).cloned().unwrap_or_default();
        let t = by.entry((key("job"), key("instance"))).or_default();
        match labels.get(PART).map(String::as_str) {
            Some("last") => t.last_ms = Some(v * 1000.0),
            Some("before") => t.before_ms = Some(v * 1000.0),
            Some("count") => t.count = Some(*v),
            Some("duration") => t.duration_ms = Some(v * 1000.0),
            _ => {}
        }
    }
    by.into_values().filter(|t| t.last_ms.is_some()).collect()
}

/// The instants `anchor + k × period` (ms since the epoch).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Grid {
    pub anchor_ms: f64,
    pub period_ms: f64,
}

impl Grid {
    /// The first instant at or after `t_ms`.
    pub fn at_or_after(&self, t_ms: f64) -> f64 {
        let k = ((t_ms - self.anchor_ms) / self.period_ms).ceil();
        self.anchor_ms + k * self.period_ms
    }
}

/// Where a rule's evaluations go: the instants `anchor + k × period`, and
/// what they were learned from.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    /// An instant (ms since the epoch) when the data is fresh and readable.
    pub anchor_ms: f64,
    /// The spacing of the candidate instants, ms.
    pub period_ms: f64,
    /// The data's own interval, if the probe could measure it.
    pub interval_ms: Option<f64>,
    /// How long after the scrape's timestamp the anchor is.
    pub ready_after_ms: f64,
    /// How many targets the data comes from.
    pub targets: usize,
}

impl Phase {
    /// Without knowledge of the data: the multiples of `every` since the
    /// epoch, the same instants for every rule of that interval (so rules
    /// that share a query send it once).
    pub fn epoch(every_ms: f64) -> Phase {
        Phase {
            anchor_ms: 0.0,
            period_ms: every_ms.max(1.0),
            interval_ms: None,
            ready_after_ms: 0.0,
            targets: 0,
        }
    }

    /// The first candidate instant at or after `t_ms`.
    pub fn at_or_after(&self, t_ms: f64) -> f64 {
        self.grid().at_or_after(t_ms)
    }

    /// The instants alone, what a scheduler keeps of the phase.
    pub fn grid(&self) -> Grid {
        Grid {
            anchor_ms: self.anchor_ms,
            period_ms: self.period_ms,
        }
    }

    /// The instant's place in its period, for people: `2.245 s past each
    /// 5 s` reads better than an epoch offset.
    pub fn offset_ms(&self) -> f64 {
        self.anchor_ms.rem_euclid(self.period_ms)
    }

    /// One line for `status`.
    pub fn describe(&self) -> String {
        let secs = |ms: f64| {
            let s = format!("{:.3}", ms / 1000.0);
            format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
        };
        match self.interval_ms {
            None if self.targets == 0 => format!(
                "data phase not known yet: evaluates {} past each {}",
                secs(self.offset_ms()),
                secs(self.period_ms)
            ),
            None => format!(
                "data last scraped at an unmeasured interval ({} target(s)): evaluates {} past each {}, {} after a scrape",
                self.targets,
                secs(self.offset_ms()),
                secs(self.period_ms),
                secs(self.ready_after_ms)
            ),
            Some(i) => format!(
                "data scraped every {} ({} target(s)), readable {} after the scrape: evaluates {} past each {}",
                secs(i),
                self.targets,
                secs(self.ready_after_ms),
                secs(self.offset_ms()),
                secs(self.period_ms)
            ),
        }
    }
}

/// The phase for a rule evaluated every `every_ms`, from its targets as
/// seen at `now_ms`; `None` when no target has recent data.
///
/// With one target, evaluations go just after its samples become
/// readable. With several, just after the last target of the scrape cycle
/// (the one the longest quiet gap follows), so that every target's newest
/// sample is as young as it can be for all of them at once. The period
/// is the data's interval when `every` is at least that (the scheduler
/// takes the fresh instant nearest one `every` on), and `every` when the
/// rule is evaluated more often than the data changes.
pub fn learn(targets: &[Target], every_ms: f64, now_ms: f64) -> Option<Phase> {
    // Targets still being scraped: a last sample older than three of its
    // intervals (or than the look-back with no interval) is a gone target.
    // A newest sample from the future beyond a clock's plausible skew (a
    // minute) is not believed.
    let live: Vec<&Target> = targets
        .iter()
        .filter(|t| {
            let Some(last) = t.last_ms else { return false };
            let stale_after = t.interval_ms().map_or(300_000.0, |i| 3.0 * i);
            now_ms - last <= stale_after && last - now_ms <= 60_000.0
        })
        .collect();
    if live.is_empty() {
        return None;
    }
    let interval = live
        .iter()
        .filter_map(|t| t.interval_ms())
        .fold(None, |m: Option<f64>, i| Some(m.map_or(i, |m| m.max(i))));
    // Each target's first readable instant after its newest scrape.
    let ready: Vec<(f64, f64)> = live
        .iter()
        .filter_map(|t| Some((t.last_ms? + t.ready_after_ms(), t.ready_after_ms())))
        .collect();
    let (anchor, ready_after) = match interval {
        Some(i) if ready.len() > 1 => last_of_cycle(&ready, i),
        _ => ready
            .iter()
            .copied()
            .fold((f64::MIN, 0.0), |a, r| if r.0 > a.0 { r } else { a }),
    };
    let period = match interval {
        Some(i) if i <= every_ms => i,
        _ => every_ms,
    };
    Some(Phase {
        // Whole ms, like the periods: every candidate instant is then a
        // whole ms, and one rounded to be scheduled is still a candidate.
        anchor_ms: anchor.round(),
        period_ms: period.max(1.0),
        interval_ms: interval,
        ready_after_ms: ready_after,
        targets: live.len(),
    })
}

/// Of several targets' readable instants on an `interval` cycle, the one
/// that the longest gap follows.
fn last_of_cycle(ready: &[(f64, f64)], interval: f64) -> (f64, f64) {
    let mut phases: Vec<(f64, (f64, f64))> = ready
        .iter()
        .map(|r| (r.0.rem_euclid(interval), *r))
        .collect();
    phases.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = phases.len();
    let mut best = (f64::MIN, phases[n - 1].1);
    for k in 0..n {
        let next = if k + 1 < n {
            phases[k + 1].0
        } else {
            phases[0].0 + interval
        };
        let gap = next - phases[k].0;
        if gap > best.0 {
            best = (gap, phases[k].1);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(last_s: f64, interval_s: f64, duration_s: Option<f64>) -> Target {
        Target {
            last_ms: Some(last_s * 1000.0),
            before_ms: Some((last_s - 300.0) * 1000.0),
            count: Some(300.0 / interval_s),
            duration_ms: duration_s.map(|d| d * 1000.0),
        }
    }

    #[test]
    fn the_selector_is_the_first_reading_current_data() {
        let q = |s: &str| vec![s.to_string()];
        // The metric and the matchers that pick its targets.
        let s = selector(&q("sum(rate(http_requests_total{job=\"chat\",code=~\"5..\"}[5m])) / sum(rate(http_requests_total{job=\"chat\"}[5m]))"));
        assert_eq!(s.as_deref(), Some("http_requests_total{job=\"chat\"}"));
        assert_eq!(
            selector(&q("bench_value{i=\"7\"} > 3")).as_deref(),
            Some("bench_value")
        );
        // Without a metric name, every matcher stays.
        let s = selector(&q("{__name__=~\"a|b\", i=\"7\"}")).expect("a selector");
        assert!(s.contains("__name__") && s.contains("i=\"7\""), "{s}");
        // An offset selector is skipped for the next one.
        assert_eq!(
            selector(&q("rate(x[5m] offset 1d) < 2 * rate(y[5m])")),
            Some("y".to_string())
        );
        // Only old data, or none: nothing to align to.
        assert_eq!(selector(&q("rate(x[5m] offset 1d)")), None);
        assert_eq!(selector(&q("vector(1)")), None);
        // Several queries: the first that has one.
        let qs = ["vector(1)".to_string(), "up{job=\"a\"} == 0".to_string()];
        assert_eq!(selector(&qs), Some("up{job=\"a\"}".to_string()));
    }

    #[test]
    fn the_probe_parses_and_its_answer_is_read_per_target() {
        let p = probe_expr("up{job=\"a\"}", window(std::time::Duration::from_secs(1)));
        assert!(
            p.contains("offset 10000ms") && p.contains("[10000ms]"),
            "{p}"
        );
        assert!(parser::parse(&p).is_ok(), "{p}");
        let l = |part: &str, inst: &str| -> BTreeMap<String, String> {
            [
                ("job".to_string(), "a".to_string()),
                ("instance".to_string(), inst.to_string()),
                (PART.to_string(), part.to_string()),
            ]
            .into()
        };
        let answer = vec![
            (l("last", "h1"), 1000.2),
            (l("before", "h1"), 700.2),
            (l("count", "h1"), 300.0),
            (l("duration", "h1"), 0.004),
            (l("last", "h2"), 999.9),
            (l("count", "h2"), f64::NAN),
            // A part without its `last`: not a target.
            (l("count", "h3"), 3.0),
        ];
        let ts = targets(&answer);
        assert_eq!(ts.len(), 2);
        assert_eq!(ts[0].interval_ms(), Some(1000.0));
        assert_eq!(ts[0].duration_ms, Some(4.0));
        // No `before` (a target younger than the window): no interval.
        assert_eq!(ts[1].interval_ms(), None);
    }

    #[test]
    fn phases_from_targets() {
        // (targets, every, now) → (offset in period, period, interval)
        type Case = (
            &'static str,
            Vec<Target>,
            f64,
            f64,
            Option<(f64, f64, Option<f64>)>,
        );
        let cases: Vec<Case> = vec![
            (
                "one target every 1s, rule every 5s: just after each scrape, every second a candidate",
                vec![target(1000.300, 1.0, Some(0.005))],
                5000.0,
                1_000_800.0,
                Some((330.0, 1000.0, Some(1000.0))),
            ),
            (
                "unknown scrape duration: 50 ms assumed",
                vec![target(1000.300, 1.0, None)],
                5000.0,
                1_000_800.0,
                Some((420.0, 1000.0, Some(1000.0))),
            ),
            (
                "rule more often than the data: its own period, through a fresh instant",
                vec![target(1000.300, 15.0, Some(0.005))],
                5000.0,
                1_000_800.0,
                Some((330.0, 5000.0, Some(15000.0))),
            ),
            (
                "two targets, 0.1 s and 0.3 s into the second: after the one the long gap follows",
                vec![target(999.100, 1.0, Some(0.0)), target(999.300, 1.0, Some(0.0))],
                1000.0,
                999_900.0,
                Some((320.0, 1000.0, Some(1000.0))),
            ),
            (
                "the gap wraps: 0.9 s and 0.2 s, after 0.2 s",
                vec![target(999.900, 1.0, Some(0.0)), target(999.200, 1.0, Some(0.0))],
                1000.0,
                999_950.0,
                Some((220.0, 1000.0, Some(1000.0))),
            ),
            (
                "a gone target is left out",
                vec![target(999.300, 1.0, Some(0.0)), target(900.000, 1.0, Some(0.0))],
                1000.0,
                999_500.0,
                Some((320.0, 1000.0, Some(1000.0))),
            ),
            (
                "no interval measured: the newest scrape, on the rule's period",
                vec![Target {
                    last_ms: Some(999_300.0),
                    duration_ms: Some(0.0),
                    ..Target::default()
                }],
                2000.0,
                999_500.0,
                Some((1320.0, 2000.0, None)),
            ),
            ("no target", vec![], 1000.0, 0.0, None),
            (
                "a sample from far in the future is not believed",
                vec![target(1e12, 1.0, None)],
                1000.0,
                999_500.0,
                None,
            ),
            (
                "only gone targets",
                vec![target(100.0, 1.0, None)],
                1000.0,
                999_500.0,
                None,
            ),
        ];
        for (name, ts, every, now, want) in cases {
            let got = learn(&ts, every, now).map(|p| {
                (
                    (p.offset_ms() * 1000.0).round() / 1000.0,
                    p.period_ms,
                    p.interval_ms,
                )
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn candidates_keep_the_period_and_never_come_early() {
        let p = Phase {
            anchor_ms: 1_000_330.0,
            period_ms: 1000.0,
            interval_ms: Some(1000.0),
            ready_after_ms: 30.0,
            targets: 1,
        };
        assert_eq!(p.at_or_after(1_005_000.0), 1_005_330.0);
        assert_eq!(p.at_or_after(1_005_330.0), 1_005_330.0);
        assert_eq!(p.at_or_after(1_005_331.0), 1_006_330.0);
        // Before the anchor too.
        assert_eq!(p.at_or_after(990_000.0), 990_330.0);
        let e = Phase::epoch(30_000.0);
        assert_eq!(e.at_or_after(1_795_000_007_000.0), 1_795_000_020_000.0);
        // A learned anchor is a whole ms: an instant scheduled from it,
        // plus the period, is the next candidate, not the one after.
        let l =
            learn(&[target(1000.3001, 1.0, Some(0.0123))], 1000.0, 1_000_500.0).expect("learned");
        assert_eq!(l.anchor_ms.fract(), 0.0);
        // (The scheduler rounds each instant to a whole ms.)
        let t = l.at_or_after(1_005_000.0).round();
        assert_eq!(l.at_or_after(t + 1000.0).round(), t + 1000.0);
        assert!(p.describe().contains("every 1s"), "{}", p.describe());
        assert!(
            p.describe().contains("0.33s past each 1s"),
            "{}",
            p.describe()
        );
    }
}
