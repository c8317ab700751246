//! Many series: how one evaluation's answers become each instance's
//! observation. Part of the pure core: no I/O, no clock.
//!
//! A rule without `by:` is one instance, keyed by its name: each query must
//! yield one number (several series make the rule unevaluable). With
//! `by: [label, ...]` each distinct set of those labels in the answers is an
//! *instance* with its own state machine, keyed `rule{label="value",...}`:
//! a series goes to the instance its labels name; a series with none of
//! them (a scalar, or an aggregate without them) applies to every
//! instance; an instance a query has no series for sees no data there, so
//! an instance that disappears follows `no_data`. A rule without
//! `condition:` is alert-style: every series its one query returns is a
//! breaching instance (by its `by:` labels, or by all its labels but
//! `__name__`), and an instance it no longer returns is ok.
//!
//! Problems of the whole rule (Prometheus down, a refused query, too many
//! instances) go to the rule's own key — its name, the one instance of a
//! rule without `by:` — so they page once per rule, not once per instance.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::types::*;
use crate::config::{NoData, Rule};

/// An instance's labels: the `by:` labels of its series (empty: the rule's
/// own instance).
pub type Labels = BTreeMap<String, String>;

/// Instances one rule may have; past it the rule is unevaluable.
pub const MAX_INSTANCES: usize = 20_000;

/// One query's answer, as Prometheus gave it.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Scalar(f64),
    /// Each series' labels and value.
    Vector(Vec<(Labels, f64)>),
}

/// One evaluation of a rule, before it is split into instances.
#[derive(Clone, Debug, PartialEq)]
pub enum Evaluation {
    Answers(BTreeMap<String, Answer>),
    /// Prometheus was unreachable, slow or failing: blinding.
    Failed(String),
    /// The rule's own query or result cannot be used.
    Unevaluable(String),
}

impl Evaluation {
    /// Why Prometheus could not answer, if that is what happened.
    pub fn blinding(&self) -> Option<&str> {
        match self {
            Evaluation::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// `rule` for the rule's own instance, `rule{a="x",b="y"}` for the others
/// (values escaped as PromQL writes them).
pub fn key(rule: &str, labels: &Labels) -> String {
    if labels.is_empty() {
        return rule.to_string();
    }
    let mut k = String::with_capacity(rule.len() + 16 * labels.len());
    k.push_str(rule);
    k.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            k.push(',');
        }
        let _ = write!(k, "{name}=\"");
        for c in value.chars() {
            match c {
                '\\' => k.push_str("\\\\"),
                '"' => k.push_str("\\\""),
                '\n' => k.push_str("\\n"),
                c => k.push(c),
            }
        }
        k.push('"');
    }
    k.push('}');
    k
}

/// The rule an instance key belongs to (rule names hold no `{`).
pub fn rule_of(key: &str) -> &str {
    key.split_once('{').map_or(key, |(r, _)| r)
}

/// The instances of `rule` in `states`: its own key, then `rule{...}`.
pub fn of_rule<'a>(
    states: &'a BTreeMap<String, RuleState>,
    rule: &str,
) -> impl Iterator<Item = (&'a String, &'a RuleState)> + 'a {
    let own = states.get_key_value(rule);
    let lo = format!("{rule}{{");
    // `|` follows `{` in ASCII: the range holds exactly `rule{...}`.
    let hi = format!("{rule}|");
    own.into_iter().chain(states.range(lo..hi))
}

/// Whether `rule` is alert-style (no `condition:`).
pub fn alert_style(rule: &Rule) -> bool {
    rule.condition.is_presence()
}

/// What one instance sees in one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub key: String,
    pub labels: Labels,
    pub obs: Observation,
    /// The answers had a series of its own (always, for the rule's own
    /// instance of a rule without `by:`).
    pub present: bool,
}

/// Splits `eval` into the observation of each instance: those the answers
/// name and those `known` (the instances in the state). A failure of the
/// whole rule goes to the rule's own instance alone.
pub fn split(rule: &Rule, eval: &Evaluation, known: &[&Labels]) -> Vec<Seen> {
    let own = |obs: Observation| {
        vec![Seen {
            key: rule.name.clone(),
            labels: Labels::new(),
            obs,
            present: true,
        }]
    };
    let answers = match eval {
        Evaluation::Failed(e) => return own(Observation::Failed(e.clone())),
        Evaluation::Unevaluable(e) => return own(Observation::Unevaluable(e.clone())),
        Evaluation::Answers(a) => a,
    };
    if alert_style(rule) {
        return split_alerts(rule, answers, known);
    }
    if rule.by.is_empty() {
        return own(single(answers));
    }
    split_by(rule, answers, known)
}

/// A rule without `by:`: one number per query.
fn single(answers: &BTreeMap<String, Answer>) -> Observation {
    let mut samples = BTreeMap::new();
    for (q, a) in answers {
        let s = match a {
            Answer::Scalar(v) => Sample::Value(*v),
            Answer::Vector(v) if v.is_empty() => Sample::Empty,
            Answer::Vector(v) if v.len() == 1 => Sample::Value(v[0].1),
            Answer::Vector(v) => {
                return Observation::Unevaluable(format!(
                    "query `{q}` returned {} series; a rule's query must yield one number: aggregate it (e.g. sum() or max()), or tell the series apart with `by:` ({})",
                    v.len(),
                    label_names(v)
                ))
            }
        };
        samples.insert(q.clone(), s);
    }
    Observation::Samples(samples)
}

/// The label names series carry, for messages: `pod, namespace`.
fn label_names(series: &[(Labels, f64)]) -> String {
    let mut names: Vec<&str> = series
        .iter()
        .flat_map(|(l, _)| l.keys().map(String::as_str))
        .filter(|n| *n != "__name__")
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        "the series carry no labels".into()
    } else {
        format!("their labels: {}", names.join(", "))
    }
}

/// The `by:` labels of `labels`; `None` if it has none of them.
fn project(labels: &Labels, by: &[String]) -> Option<Labels> {
    let l: Labels = by
        .iter()
        .filter_map(|b| labels.get(b).map(|v| (b.clone(), v.clone())))
        .collect();
    (!l.is_empty()).then_some(l)
}

fn too_many(rule: &Rule, n: usize) -> Vec<Seen> {
    vec![Seen {
        key: rule.name.clone(),
        labels: Labels::new(),
        obs: Observation::Unevaluable(format!(
            "the answers name {n} instances, more than {MAX_INSTANCES}: narrow the queries or the `by:` labels"
        )),
        present: true,
    }]
}

/// Per query: the values of an instance's own series.
type OwnValues<'a> = BTreeMap<&'a str, Vec<f64>>;

fn split_by(rule: &Rule, answers: &BTreeMap<String, Answer>, known: &[&Labels]) -> Vec<Seen> {
    // Per instance, per query: the values of its own series.
    let mut own: BTreeMap<Labels, OwnValues> = BTreeMap::new();
    // Per query: values that apply to every instance.
    let mut every: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (q, a) in answers {
        match a {
            Answer::Scalar(v) => every.entry(q).or_default().push(*v),
            Answer::Vector(series) => {
                for (labels, v) in series {
                    match project(labels, &rule.by) {
                        Some(l) => own.entry(l).or_default().entry(q).or_default().push(*v),
                        None => every.entry(q).or_default().push(*v),
                    }
                }
            }
        }
    }
    // Every instance: those the answers name (with their values, moved, not
    // copied: a `by:` rule may have thousands) and those known before.
    let mut instances: BTreeMap<Labels, (bool, Option<OwnValues>)> = own
        .into_iter()
        .map(|(l, values)| (l, (true, Some(values))))
        .collect();
    for l in known {
        if !instances.contains_key(*l) {
            instances.insert((*l).clone(), (false, None));
        }
    }
    // The rule's own instance stands in while no other is named: a rule
    // whose queries name no instance still shows, and follows no_data.
    // Once others are, it is one the answers no longer name.
    if !instances.keys().any(|l| !l.is_empty()) {
        instances.insert(Labels::new(), (true, None));
    }
    if instances.len() > MAX_INSTANCES {
        return too_many(rule, instances.len());
    }
    let shared_problem = every.iter().find(|(_, vs)| vs.len() > 1).map(|(q, vs)| {
        format!(
            "query `{q}` returned {} series without the `by:` labels ({}): each applies to every instance, so they must be one",
            vs.len(),
            rule.by.join(", ")
        )
    });
    instances
        .into_iter()
        .map(|(labels, (present, mine))| {
            let obs = match &shared_problem {
                Some(p) => Observation::Unevaluable(p.clone()),
                None => instance_obs(rule, &labels, mine.as_ref(), &every),
            };
            Seen {
                key: key(&rule.name, &labels),
                labels,
                obs,
                present,
            }
        })
        .collect()
}

fn instance_obs(
    rule: &Rule,
    labels: &Labels,
    mine: Option<&BTreeMap<&str, Vec<f64>>>,
    every: &BTreeMap<&str, Vec<f64>>,
) -> Observation {
    let mut samples = BTreeMap::new();
    for q in rule.queries.keys() {
        let own = mine.and_then(|m| m.get(q.as_str()));
        let s = match (own.map(Vec::as_slice), every.get(q.as_str()).map(Vec::as_slice)) {
            (Some([v]), _) => Sample::Value(*v),
            (Some(vs), _) if vs.len() > 1 => {
                return Observation::Unevaluable(format!(
                    "query `{q}` returned {} series for {}: `by:` must tell them apart (add the label that differs)",
                    vs.len(),
                    key(&rule.name, labels)
                ))
            }
            (_, Some([v])) => Sample::Value(*v),
            _ => Sample::Empty,
        };
        samples.insert(q.clone(), s);
    }
    Observation::Samples(samples)
}

fn split_alerts(rule: &Rule, answers: &BTreeMap<String, Answer>, known: &[&Labels]) -> Vec<Seen> {
    let Some((q, a)) = answers.iter().next() else {
        return Vec::new();
    };
    let series = match a {
        Answer::Vector(s) => s,
        Answer::Scalar(_) => {
            return vec![Seen {
                key: rule.name.clone(),
                labels: Labels::new(),
                obs: Observation::Unevaluable(format!(
                    "query `{q}` returned a scalar: an alert-style rule (no `condition:`) needs a vector, whose every series breaches"
                )),
                present: true,
            }]
        }
    };
    let mut firing: BTreeMap<Labels, f64> = BTreeMap::new();
    for (labels, v) in series {
        let l = if rule.by.is_empty() {
            labels
                .iter()
                .filter(|(k, _)| *k != "__name__")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        } else {
            project(labels, &rule.by).unwrap_or_default()
        };
        // Several series of one instance: the highest is shown.
        let e = firing.entry(l).or_insert(*v);
        if *v > *e || e.is_nan() {
            *e = *v;
        }
    }
    let mut instances: BTreeMap<Labels, Option<f64>> =
        firing.into_iter().map(|(l, v)| (l, Some(v))).collect();
    for l in known {
        instances.entry((*l).clone()).or_insert(None);
    }
    if instances.len() > MAX_INSTANCES {
        return too_many(rule, instances.len());
    }
    instances
        .into_iter()
        .map(|(labels, v)| {
            let sample = v.map_or(Sample::Empty, Sample::Value);
            Seen {
                key: key(&rule.name, &labels),
                obs: Observation::Samples(BTreeMap::from([(q.clone(), sample)])),
                labels,
                present: v.is_some(),
            }
        })
        .collect()
}

/// Whether an instance the answers no longer name can be forgotten after
/// it was stepped: nothing of it is open or counting (ok, or pending with
/// its last breach older than the gap that restarts `for` anyway), and
/// missing data cannot make it breach. The rule's own instance of a rule
/// without `by:` is never forgotten.
pub fn forget(rule: &Rule, seen: &Seen, state: &RuleState, now: Timestamp) -> bool {
    if seen.present || (seen.labels.is_empty() && rule.by.is_empty() && !alert_style(rule)) {
        return false;
    }
    if rule.no_data == NoData::Breach && !alert_style(rule) {
        return false;
    }
    match &state.status {
        Status::Ok => state.unevaluable.is_none(),
        Status::Pending { since, last_breach } => {
            let last = last_breach.unwrap_or(*since);
            now.since(last) > gap_limit(rule, last)
        }
        _ => false,
    }
}

#[cfg(test)]
#[path = "instances_tests.rs"]
mod tests;
