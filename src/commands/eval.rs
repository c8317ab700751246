//! `ripcord eval [RULE…]`: evaluate once against live Prometheus and show
//! each query's value, the condition's verdict and what would happen. It
//! acts on nothing and journals nothing.

use std::io::Write;

use crate::config::{Config, Mode, RuleSet};
use crate::daemon::{evaluate, now};
use crate::prom::Prom;
use crate::rule::instances::{self, Evaluation};
use crate::rule::{self, Effect, Input, Observation, RuleState, Sample, Shared};

/// Evaluates the named rules (all when empty). Returns false if any failed.
pub async fn run(
    config: &Config,
    rules: &RuleSet,
    names: &[String],
    out: &mut dyn Write,
) -> Result<bool, super::backtest::BacktestError> {
    for n in names {
        if rules.rule(n).is_none() {
            return Err(super::backtest::BacktestError::UnknownRule(n.clone()));
        }
    }
    let prom = Prom::new(&config.prometheus).map_err(super::backtest::BacktestError::Prometheus)?;
    let at = now();
    let mut all_ok = true;
    for r in rules
        .rules
        .iter()
        .filter(|r| names.is_empty() || names.contains(&r.name))
    {
        let eval = evaluate(&prom, r, at).await;
        writeln!(out, "{}", r.name)?;
        if let Evaluation::Failed(e) | Evaluation::Unevaluable(e) = &eval {
            all_ok = false;
            writeln!(out, "  error: {e}")?;
            writeln!(out, "  → state would be held: nothing happens")?;
            continue;
        }
        let seen = instances::split(r, &eval, &[]);
        if seen.is_empty() {
            writeln!(out, "  no series: every instance is ok")?;
        }
        for s in seen {
            if !s.labels.is_empty() {
                writeln!(out, " {}", s.key)?;
            }
            if !instance(r, s, at, out)? {
                all_ok = false;
            }
        }
    }
    Ok(all_ok)
}

/// One instance's values and what the core makes of them, from a fresh
/// state: pure, no I/O. False if it could not be evaluated.
fn instance(
    r: &crate::config::Rule,
    seen: instances::Seen,
    at: crate::rule::Timestamp,
    out: &mut dyn Write,
) -> std::io::Result<bool> {
    let obs = seen.obs;
    {
        match &obs {
            Observation::Failed(e) | Observation::Unevaluable(e) => {
                writeln!(out, "  error: {e}")?;
                writeln!(out, "  → state would be held: nothing happens")?;
                return Ok(false);
            }
            Observation::Samples(s) => {
                for q in r.queries.keys() {
                    let v = match s.get(q) {
                        Some(Sample::Value(v)) => v.to_string(),
                        _ => "no data (empty result)".into(),
                    };
                    writeln!(out, "  {q:<12} = {v}")?;
                }
            }
        }
        // What the core makes of it, from a fresh state: pure, no I/O.
        let mut shared = Shared::new(u32::MAX, Mode::DryRun);
        let (state, effects) = rule::step(
            r,
            &RuleState {
                labels: seen.labels,
                ..RuleState::default()
            },
            &mut shared,
            Input::Evaluate(obs),
            at,
        );
        let verdict = match (state.name(), &state.last_error) {
            (_, Some(e)) => format!("error: {e}"),
            (rule::StateName::Ok, _)
                if effects
                    .iter()
                    .any(|e| matches!(e, Effect::Record(rule::Record::NoData { .. }))) =>
            {
                format!(
                    "no data → no_data: {}: nothing happens",
                    match r.no_data {
                        crate::config::NoData::Hold => "hold",
                        crate::config::NoData::Ok => "ok",
                        crate::config::NoData::Breach => "breach",
                    }
                )
            }
            (rule::StateName::Ok, _) => "false → ok: nothing happens".into(),
            (rule::StateName::Pending, _) => format!(
                "true → pending: an incident opens if it holds for {}",
                crate::actions::fmt_d(r.for_)
            ),
            _ => {
                let acts = if r.actions.is_empty() {
                    "no actions".to_string()
                } else {
                    format!("would run {}", r.actions.join(", "))
                };
                let approval = if r.approval.is_some() {
                    " after approval"
                } else {
                    ""
                };
                format!(
                    "true → an incident opens now: {acts}{approval}; pages {}",
                    if r.notify.is_empty() {
                        "nobody".into()
                    } else {
                        r.notify.join(", ")
                    }
                )
            }
        };
        writeln!(out, "  condition    {}", r.condition.source())?;
        writeln!(out, "  → {verdict}")?;
    }
    Ok(true)
}
