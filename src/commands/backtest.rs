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

use crate::config::{Config, Mode, Rule, RuleSet};
use crate::prom::Prom;
use crate::rule::sim::{Happened, Sim};
use crate::rule::{Input, Observation, Record, Sample, Shared, Timestamp};

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

#[derive(Debug, Serialize)]
pub struct Report {
    pub from: String,
    pub to: String,
    pub step_seconds: f64,
    pub timeline: Vec<Event>,
    pub summaries: Vec<Summary>,
}

/// Time (ms) → the query's value there, or why there is none usable.
type History = BTreeMap<i64, Result<f64, String>>;

/// One query's history at each step: a value, nothing, or an error.
async fn history(
    prom: &Prom,
    query: &str,
    name: &str,
    from: Timestamp,
    to: Timestamp,
    step: Duration,
) -> Result<History, String> {
    let step_ms = step.as_millis() as i64;
    let mut out: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    let mut start = from.0;
    while start <= to.0 {
        let end = (start + step_ms * (CHUNK - 1)).min(to.0);
        let series = prom
            .query_range(query, Timestamp(start), Timestamp(end), step)
            .await
            .map_err(|e| format!("query `{name}`: {e}"))?;
        for (_, points) in series {
            for (t, v) in points {
                out.entry(t).or_default().push(v);
            }
        }
        start = end + step_ms;
    }
    Ok(out
        .into_iter()
        .map(|(t, vs)| {
            let r = if vs.len() == 1 {
                Ok(vs[0])
            } else {
                Err(format!("query `{name}` returned {} series", vs.len()))
            };
            (t, r)
        })
        .collect())
}

pub async fn run(
    config: &Config,
    rules: &RuleSet,
    names: &[String],
    from: Timestamp,
    to: Timestamp,
    step: Option<Duration>,
) -> anyhow::Result<Report> {
    for n in names {
        if rules.rule(n).is_none() {
            anyhow::bail!("unknown rule `{n}`");
        }
    }
    if to <= from {
        anyhow::bail!("--to must be after --from");
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
    if step.is_zero() {
        anyhow::bail!("--step must be greater than 0");
    }
    let prom = Prom::new(&config.prometheus).map_err(anyhow::Error::msg)?;
    // rule → query → time → value
    let mut data: BTreeMap<String, BTreeMap<String, History>> = BTreeMap::new();
    for r in &chosen {
        for (q, expr) in &r.queries {
            let h = history(&prom, expr, q, from, to, step)
                .await
                .map_err(anyhow::Error::msg)?;
            data.entry(r.name.clone()).or_default().insert(q.clone(), h);
        }
    }
    // Actions are never run: the driver answers each at once, as `test` does.
    let mut sim = Sim::new(
        chosen.iter().cloned(),
        Shared::new(config.limits.max_actions_per_hour, Mode::Enforce),
    );
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
    let mut pending_since: BTreeMap<String, i64> = BTreeMap::new();
    let step_ms = step.as_millis() as i64;
    let mut t = from.0;
    while t <= to.0 {
        for r in &chosen {
            let queries = &data[&r.name];
            let sum = summaries
                .get_mut(&r.name)
                .expect("a summary per chosen rule");
            let mut samples = BTreeMap::new();
            let mut failed = None;
            for (q, h) in queries {
                match h.get(&t) {
                    Some(Ok(v)) => {
                        let e = sum.ranges.entry(q.clone()).or_insert((*v, *v));
                        if v.is_finite() {
                            e.0 = e.0.min(*v);
                            e.1 = e.1.max(*v);
                        }
                        samples.insert(q.clone(), Sample::Value(*v));
                    }
                    Some(Err(e)) => failed = Some(e.clone()),
                    None => {
                        samples.insert(q.clone(), Sample::Empty);
                    }
                }
            }
            let obs = match failed {
                Some(e) => {
                    sum.error_steps += 1;
                    Observation::Failed(e)
                }
                None => {
                    if samples.values().any(|s| *s == Sample::Empty) {
                        sum.no_data_steps += 1;
                    }
                    Observation::Samples(samples)
                }
            };
            let _ = sim.input(&r.name, Input::Evaluate(obs), Timestamp(t));
            let st = sim.state(&r.name);
            match st.name() {
                "pending" => {
                    let since = *pending_since.entry(r.name.clone()).or_insert(t);
                    sum.longest_pending_seconds =
                        sum.longest_pending_seconds.max(((t - since) / 1000) as u64);
                }
                _ => {
                    pending_since.remove(&r.name);
                }
            }
            if st.incident().is_some() {
                sum.firing_seconds += step.as_secs();
            }
        }
        t += step_ms;
    }
    let mut timeline = Vec::new();
    for e in &sim.log {
        let what = match &e.what {
            Happened::Record(Record::Transition { from, to }) => {
                if to == "firing" && from != "firing" {
                    if let Some(s) = summaries.get_mut(&e.rule) {
                        s.incidents += 1;
                    }
                }
                format!("{from} → {to}")
            }
            Happened::Action { name, .. } => {
                if let Some(s) = summaries.get_mut(&e.rule) {
                    s.would_run.push(name.clone());
                }
                format!("would run {name}")
            }
            Happened::Page { kind, notifiers } if !notifiers.is_empty() => {
                format!("would page {} ({kind})", notifiers.join(", "))
            }
            Happened::Record(r @ Record::Suppressed { .. }) => r.to_string(),
            _ => continue,
        };
        timeline.push(Event {
            at: e.at.rfc3339(),
            rule: e.rule.clone(),
            what,
        });
    }
    Ok(Report {
        from: from.rfc3339(),
        to: to.rfc3339(),
        step_seconds: step.as_secs_f64(),
        timeline,
        summaries: summaries.into_values().collect(),
    })
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
            writeln!(
                out,
                "{}: never fired; the condition held at most {}s in a row (for: {}s); {}",
                s.rule,
                s.longest_pending_seconds,
                s.for_seconds,
                ranges.join(", ")
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
