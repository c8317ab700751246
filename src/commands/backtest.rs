//! `ripcord backtest`: would this rule have fired, and when?
//!
//! History comes from `/api/v1/query_range` (in chunks, to stay inside
//! Prometheus's 11,000-points-per-series limit) and is fed step by step
//! through the same pure core as `run` and `test` — via the same synchronous
//! driver as `ripcord test` — so the verdicts cannot differ.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Action, Config, Mode, Rule, RuleSet};
use crate::prom::Prom;
use crate::rule::instances::{self, Answer, Evaluation, Labels};
use crate::rule::sim::{Happened, Sim};
use crate::rule::StateName;
use crate::rule::{Record, Shared, Timestamp};

/// Points per query_range request (Prometheus refuses more than 11,000).
const CHUNK: i64 = 10_000;

/// Parses `2026-11-20T10:00:00Z`, `now`, `-7d`, `-1h30m`.
pub fn parse_time(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    let t = s.trim();
    if t == "now" {
        return Ok(now);
    }
    if let Some(rel) = t.strip_prefix('-') {
        return crate::config::raw::parse_duration(rel).map(|d| now.minus(d));
    }
    humantime::parse_rfc3339_weak(t)
        .map(Timestamp::from_system)
        .map_err(|_| {
            format!("invalid time `{s}`: expected RFC 3339 (2026-11-20T10:00:00Z), `now` or `-7d`")
        })
}

#[derive(Debug, Serialize)]
pub struct Event {
    pub at: String,
    pub rule: String,
    pub what: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub rule: String,
    pub incidents: usize,
    pub would_run: Vec<String>,
    /// Seconds with an open incident.
    pub firing_seconds: u64,
    /// The longest the condition held without opening an incident.
    pub longest_pending_seconds: u64,
    pub for_seconds: u64,
    /// Each query's lowest and highest value.
    pub ranges: BTreeMap<String, (f64, f64)>,
    pub no_data_steps: usize,
    pub error_steps: usize,
}

/// One evaluation: (ms, each query's value, the state after it).
pub type Point = (i64, BTreeMap<String, Option<f64>>, StateName);

/// One rule's evaluations, for the plot.
#[derive(Debug, Default)]
pub struct Trace {
    pub condition: String,
    pub points: Vec<Point>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub step_seconds: f64,
    pub timeline: Vec<Event>,
    pub summaries: Vec<Summary>,
    #[serde(skip)]
    pub traces: BTreeMap<String, Trace>,
}

/// Time (ms) → every series the query returned there.
type History = BTreeMap<i64, Vec<(Labels, f64)>>;

/// One query's history: each step's series, split into chunks Prometheus
/// takes.
async fn history(
    prom: &Prom,
    query: &str,
    name: &str,
    from: Timestamp,
    to: Timestamp,
    step: Duration,
) -> Result<History, String> {
    let step_ms = step.as_millis() as i64;
    let mut out: History = BTreeMap::new();
    let mut start = from.0;
    while start <= to.0 {
        let end = (start + step_ms * (CHUNK - 1)).min(to.0);
        let series = prom
            .query_range(query, Timestamp(start), Timestamp(end), step)
            .await
            .map_err(|e| format!("query `{name}`: {e}"))?;
        for (labels, points) in series {
            for (t, v) in points {
                out.entry(t).or_default().push((labels.clone(), v));
            }
        }
        start = end + step_ms;
    }
    Ok(out)
}

/// Why a backtest could not run.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("unknown rule `{0}`")]
    UnknownRule(String),
    #[error("--to must be after --from")]
    EmptyWindow,
    #[error("--step must be greater than 0")]
    ZeroStep,
    #[error("{0}")]
    Prometheus(String),
    #[error(transparent)]
    Output(#[from] std::io::Error),
}

pub async fn run(
    config: &Config,
    rules: &RuleSet,
    names: &[String],
    from: Timestamp,
    to: Timestamp,
    step: Option<Duration>,
) -> Result<Report, BacktestError> {
    if let Some(n) = names.iter().find(|n| rules.rule(n).is_none()) {
        return Err(BacktestError::UnknownRule(n.clone()));
    }
    if to <= from {
        return Err(BacktestError::EmptyWindow);
    }
    let chosen: Vec<Arc<Rule>> = rules
        .rules
        .iter()
        .filter(|r| names.is_empty() || names.contains(&r.name))
        .cloned()
        .collect();
    let step = step.unwrap_or_else(|| {
        chosen
            .iter()
            .filter_map(|r| match r.schedule {
                crate::config::Schedule::Every(d) => Some(d),
                crate::config::Schedule::Cron(..) => None,
            })
            .min()
            .unwrap_or(Duration::from_secs(60))
    });
    let prom = Prom::new(&config.prometheus).map_err(BacktestError::Prometheus)?;
    let shared = Shared::new(config.limits.max_actions_per_hour, Mode::Enforce);
    replay_rules(
        &prom,
        shared,
        config.prometheus.blind_after,
        (&chosen, &rules.actions),
        (from, to),
        step,
    )
    .await
}

/// The backtest of `chosen` over `window`, one evaluation per `step`,
/// with `shared` as the budget and mode it starts from: what `run` and the
/// web page's rule backtest both do once they have the rules.
pub async fn replay_rules(
    prom: &Prom,
    shared: Shared,
    blind_after: Duration,
    (chosen, actions): (&[Arc<Rule>], &BTreeMap<String, Arc<Action>>),
    window: (Timestamp, Timestamp),
    step: Duration,
) -> Result<Report, BacktestError> {
    let (from, to) = window;
    if to <= from {
        return Err(BacktestError::EmptyWindow);
    }
    if step.is_zero() {
        return Err(BacktestError::ZeroStep);
    }
    // rule → query → time → value
    let mut data: BTreeMap<String, BTreeMap<String, History>> = BTreeMap::new();
    for r in chosen {
        for (q, expr) in &r.queries {
            let h = history(prom, expr, q, from, to, step)
                .await
                .map_err(BacktestError::Prometheus)?;
            data.entry(r.name.clone()).or_default().insert(q.clone(), h);
        }
    }
    // Actions are never run: the driver answers each at once, as `test` does.
    let mut sim = Sim::new(chosen.iter().map(|r| r.evaluated_every(step)), shared);
    sim.blind_after = blind_after;
    sim.actions = actions.clone();
    let mut summaries: BTreeMap<String, Summary> = chosen
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                Summary {
                    rule: r.name.clone(),
                    for_seconds: r.for_.as_secs(),
                    ..Summary::default()
                },
            )
        })
        .collect();
    let mut traces: BTreeMap<String, Trace> = chosen
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                Trace {
                    condition: r.condition.source().to_string(),
                    points: Vec::new(),
                },
            )
        })
        .collect();
    replay(
        &mut sim,
        chosen,
        &data,
        &mut summaries,
        &mut traces,
        from,
        to,
        step,
    );
    let timeline = timeline(&sim, &mut summaries);
    Ok(Report {
        from: from.rfc3339(),
        to: to.rfc3339(),
        step_seconds: step.as_secs_f64(),
        timeline,
        summaries: summaries.into_values().collect(),
        traces,
    })
}

/// What the queries answered at `t`, counted into the rule's summary: the
/// answers the core splits into instances, as `run` does.
fn observe(queries: &BTreeMap<String, History>, sum: &mut Summary, t: i64) -> Evaluation {
    let mut answers = BTreeMap::new();
    let mut empty = false;
    for (q, h) in queries {
        let series = h.get(&t).cloned().unwrap_or_default();
        empty |= series.is_empty();
        for (_, v) in series.iter().filter(|(_, v)| v.is_finite()) {
            let e = sum.ranges.entry(q.clone()).or_insert((*v, *v));
            e.0 = e.0.min(*v);
            e.1 = e.1.max(*v);
        }
        answers.insert(q.clone(), Answer::Vector(series));
    }
    if empty {
        sum.no_data_steps += 1;
    }
    Evaluation::Answers(answers)
}

/// Each query's highest value at `t` over its series (the plot's line for
/// a rule with instances), `None` where it has none.
fn highest(queries: &BTreeMap<String, History>, t: i64) -> BTreeMap<String, Option<f64>> {
    queries
        .iter()
        .map(|(q, h)| {
            let v = h
                .get(&t)
                .into_iter()
                .flatten()
                .map(|(_, v)| *v)
                .filter(|v| v.is_finite())
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            (q.clone(), v)
        })
        .collect()
}

/// The state that says most of a rule's instances: an incident over
/// pending over the rest.
fn worst(states: impl Iterator<Item = StateName>) -> StateName {
    let rank = |s: &StateName| match s {
        StateName::Unrecovered => 5,
        StateName::Firing => 4,
        StateName::Pending => 3,
        StateName::Recovered => 2,
        StateName::Closed => 1,
        StateName::Ok => 0,
    };
    states.max_by_key(rank).unwrap_or_default()
}

/// Feeds the history through the core, step by step, keeping each rule's
/// trace and its time pending and firing.
#[allow(clippy::too_many_arguments)]
fn replay(
    sim: &mut Sim,
    chosen: &[Arc<Rule>],
    data: &BTreeMap<String, BTreeMap<String, History>>,
    summaries: &mut BTreeMap<String, Summary>,
    traces: &mut BTreeMap<String, Trace>,
    from: Timestamp,
    to: Timestamp,
    step: Duration,
) {
    let mut pending_since: BTreeMap<String, i64> = BTreeMap::new();
    let step_ms = step.as_millis() as i64;
    let mut t = from.0;
    while t <= to.0 {
        for r in chosen {
            let (Some(queries), Some(sum)) = (data.get(&r.name), summaries.get_mut(&r.name)) else {
                continue;
            };
            let eval = observe(queries, sum, t);
            let _ = sim.evaluate_answers(&r.name, &eval, Timestamp(t));
            let keys = sim.instances(&r.name);
            let state = worst(keys.iter().map(|k| sim.state(k).name()));
            if keys.iter().any(|k| sim.state(k).last_error.is_some()) {
                sum.error_steps += 1;
            }
            let open = keys.iter().any(|k| sim.state(k).incident().is_some());
            if let Some(tr) = traces.get_mut(&r.name) {
                tr.points.push((t, highest(queries, t), state));
            }
            match state {
                StateName::Pending => {
                    let since = *pending_since.entry(r.name.clone()).or_insert(t);
                    sum.longest_pending_seconds =
                        sum.longest_pending_seconds.max(((t - since) / 1000) as u64);
                }
                _ => {
                    pending_since.remove(&r.name);
                }
            }
            if open {
                sum.firing_seconds += step.as_secs();
            }
        }
        t += step_ms;
    }
}

/// What happened, in order, and the incidents and actions it counts.
fn timeline(sim: &Sim, summaries: &mut BTreeMap<String, Summary>) -> Vec<Event> {
    let mut timeline = Vec::new();
    for e in &sim.log {
        let what = match &e.what {
            Happened::Record(Record::Transition { from, to }) => {
                if *to == StateName::Firing && *from != StateName::Firing {
                    if let Some(s) = summaries.get_mut(instances::rule_of(&e.rule)) {
                        s.incidents += 1;
                    }
                }
                format!("{from} → {to}")
            }
            Happened::Action { name, .. } => {
                if let Some(s) = summaries.get_mut(instances::rule_of(&e.rule)) {
                    s.would_run.push(name.clone());
                }
                format!("would run {name}")
            }
            // ripcord's own pages (blind, seeing) go to every notifier.
            Happened::Page { kind, .. } if e.rule.is_empty() => {
                format!("ripcord would page every notifier ({kind})")
            }
            Happened::Page { kind, notifiers } if !notifiers.is_empty() => {
                format!("would page {} ({kind})", notifiers.join(", "))
            }
            Happened::Record(r @ Record::Suppressed { .. }) => r.to_string(),
            Happened::Joined { name, with, .. } => {
                format!("would join {with}'s run of {name} (the same steps): not run again")
            }
            Happened::Refused { name, why } => format!("would not run {name}: {why}"),
            _ => continue,
        };
        timeline.push(Event {
            at: e.at.rfc3339(),
            rule: e.rule.clone(),
            what,
        });
    }
    timeline
}

pub fn print(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "backtest {} → {} every {}s",
        report.from, report.to, report.step_seconds
    )?;
    if report.timeline.is_empty() {
        writeln!(out, "  nothing would have happened")?;
    }
    for e in &report.timeline {
        writeln!(out, "  {}  {:<24} {}", e.at, e.rule, e.what)?;
    }
    writeln!(out)?;
    for s in &report.summaries {
        let ranges: Vec<String> = s
            .ranges
            .iter()
            .map(|(q, (lo, hi))| format!("{q} {lo}..{hi}"))
            .collect();
        if s.incidents == 0 {
            // How close it came: each compared query's extreme against its threshold.
            let closest: Vec<String> = report
                .traces
                .get(&s.rule)
                .map(|t| thresholds(&t.condition))
                .unwrap_or_default()
                .iter()
                .filter_map(|(q, th)| {
                    let (lo, hi) = s.ranges.get(q)?;
                    let near = if (th - hi).abs() <= (th - lo).abs() {
                        hi
                    } else {
                        lo
                    };
                    Some(format!("{q} came to {near} (threshold {th})"))
                })
                .collect();
            writeln!(
                out,
                "{}: never fired; the condition held at most {}s in a row (for: {}s); {}{}",
                s.rule,
                s.longest_pending_seconds,
                s.for_seconds,
                ranges.join(", "),
                if closest.is_empty() {
                    String::new()
                } else {
                    format!("; closest: {}", closest.join(", "))
                }
            )?;
        } else {
            writeln!(
                out,
                "{}: {} incident(s), {}s with an incident open, would run: {}; {}",
                s.rule,
                s.incidents,
                s.firing_seconds,
                if s.would_run.is_empty() {
                    "nothing".to_string()
                } else {
                    s.would_run.join(", ")
                },
                ranges.join(", ")
            )?;
        }
        if s.no_data_steps > 0 || s.error_steps > 0 {
            writeln!(
                out,
                "  {} step(s) without data, {} with errors",
                s.no_data_steps, s.error_steps
            )?;
        }
    }
    Ok(())
}

/// Thresholds the condition compares a query with: `rate > 0.005` → (rate, 0.005).
pub fn thresholds(condition: &str) -> Vec<(String, f64)> {
    let tokens: Vec<&str> = condition
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter(|t| !t.is_empty())
        .collect();
    let mut out = Vec::new();
    for w in tokens.windows(3) {
        if ["<", "<=", ">", ">="].contains(&w[1]) {
            if let Ok(v) = w[2].parse::<f64>() {
                out.push((w[0].to_string(), v));
            } else if let Ok(v) = w[0].parse::<f64>() {
                out.push((w[2].to_string(), v));
            }
        }
    }
    out
}

/// Draws one panel per rule into an SVG file: each query's values, dashed
/// thresholds from the condition, pending (amber) and incident (red) windows.
pub fn plot(report: &Report, path: &std::path::Path) -> Result<(), String> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(format!(
            "{}: --plot writes SVG; name the file *.svg",
            path.display()
        ));
    }
    let svg = plot_svg(report)?;
    std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()))
}

/// The plot of [`plot`], as SVG text (the web page serves it).
pub fn plot_svg(report: &Report) -> Result<String, String> {
    let mut out = String::new();
    draw(report, &mut out)?;
    Ok(out)
}

fn draw(report: &Report, out: &mut String) -> Result<(), String> {
    use plotters::prelude::*;
    let n = report.traces.len().max(1);
    let root = SVGBackend::with_string(out, (1200, 320 * n as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((n, 1));
    let colors = [BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for ((name, tr), area) in report.traces.iter().zip(panels.iter()) {
        let (Some(first), Some(last)) = (tr.points.first(), tr.points.last()) else {
            continue;
        };
        let (x0, x1) = (0.0, (last.0 - first.0) as f64 / 60_000.0);
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for (_, vals, _) in &tr.points {
            for v in vals.values().flatten().filter(|v| v.is_finite()) {
                lo = lo.min(*v);
                hi = hi.max(*v);
            }
        }
        let th = thresholds(&tr.condition);
        for (_, v) in &th {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
        if !lo.is_finite() {
            (lo, hi) = (0.0, 1.0);
        }
        let pad = ((hi - lo) * 0.1).max(1e-9);
        let incidents = report
            .summaries
            .iter()
            .find(|s| &s.rule == name)
            .map_or(0, |s| s.incidents);
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{name} — {incidents} incident(s) — {}", tr.condition),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1.max(1.0), (lo - pad)..(hi + pad))
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(format!("minutes after {}", report.from))
            .draw()
            .map_err(|e| e.to_string())?;
        let step_min = report.step_seconds / 60.0;
        for (t, _, state) in &tr.points {
            let color = match *state {
                StateName::Pending => RGBColor(255, 200, 80).mix(0.35),
                StateName::Firing | StateName::Unrecovered => RGBColor(230, 60, 60).mix(0.35),
                _ => continue,
            };
            let x = (t - first.0) as f64 / 60_000.0;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, lo - pad), (x + step_min, hi + pad)],
                    color.filled(),
                )))
                .map_err(|e| e.to_string())?;
        }
        let queries: Vec<String> = first.1.keys().cloned().collect();
        for (i, q) in queries.iter().enumerate() {
            let color = colors[i % colors.len()];
            // A gap in the data is a gap in the line.
            let mut segment: Vec<(f64, f64)> = Vec::new();
            let mut segments = Vec::new();
            for (t, vals, _) in &tr.points {
                match vals.get(q).copied().flatten().filter(|v| v.is_finite()) {
                    Some(v) => segment.push(((t - first.0) as f64 / 60_000.0, v)),
                    None => segments.push(std::mem::take(&mut segment)),
                }
            }
            segments.push(segment);
            for (k, seg) in segments.into_iter().filter(|s| !s.is_empty()).enumerate() {
                let series = chart
                    .draw_series(LineSeries::new(seg, color.stroke_width(2)))
                    .map_err(|e| e.to_string())?;
                if k == 0 {
                    series
                        .label(q.clone())
                        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
                }
            }
            for (_, v) in th.iter().filter(|(tq, _)| tq == q) {
                let v = *v;
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x0, v), (x1, v)],
                        8,
                        6,
                        color.stroke_width(1),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(format!("{q} threshold {v}"))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}
