//! Decisions that span rules, as pure as [`super::step`]: when ripcord is
//! blind, whether an approve, veto, fire, pause or resume applies, which
//! incident holds an action's lock, which page a step produces, and what a
//! replayed journal means. Each takes the time as an argument and reads no
//! clock, does no I/O; the daemon (`ripcord run`), `ripcord test` and
//! `ripcord backtest` carry out what they decide, so all three agree.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use super::names::{PageEvent, PhaseName};
use super::types::*;
use crate::config::Rule;

// ---------------------------------------------------------------- blindness

/// Whether ripcord can see: every failed query (Prometheus unreachable,
/// slow, 5xx) keeps it blind from the first failure; past `blind_after`
/// that is paged once, and seeing again is paged once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blindness {
    /// The first failure of the current run of failures.
    pub since: Option<Timestamp>,
    /// The blind page went out for this run of failures.
    pub reported: bool,
}

/// What a change in blindness tells on-call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlindNotice {
    Blind { since: Timestamp, why: String },
    Seeing { since: Timestamp },
}

impl BlindNotice {
    pub fn event(&self) -> PageEvent {
        match self {
            BlindNotice::Blind { .. } => PageEvent::Blind,
            BlindNotice::Seeing { .. } => PageEvent::Seeing,
        }
    }
}

impl Blindness {
    /// One evaluation's result: `failure` is the error of a query that
    /// failed because Prometheus could not answer, `None` when it did
    /// answer (with data or not).
    pub fn observe(
        &mut self,
        at: Timestamp,
        failure: Option<&str>,
        blind_after: Duration,
    ) -> Option<BlindNotice> {
        match failure {
            Some(why) => {
                let since = *self.since.get_or_insert(at);
                if !self.reported && at.since(since) >= blind_after {
                    self.reported = true;
                    return Some(BlindNotice::Blind {
                        since,
                        why: why.to_string(),
                    });
                }
                None
            }
            None => {
                let since = self.since.take()?;
                std::mem::take(&mut self.reported).then_some(BlindNotice::Seeing { since })
            }
        }
    }

    pub fn is_blind(&self) -> bool {
        self.since.is_some()
    }
}

/// The failure an observation holds that makes ripcord blind, if any.
pub fn blinding(obs: &Observation) -> Option<&str> {
    match obs {
        Observation::Failed(e) => Some(e),
        Observation::Samples(_) | Observation::Unevaluable(_) => None,
    }
}

// ------------------------------------------------------------ human inputs

/// What a veto does, given the phase it arrives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VetoEffect {
    /// Nothing has run yet: nothing runs.
    NothingRuns,
    /// An action is running: it finishes, nothing after it runs.
    RunningFinishes,
}

/// Whether `incident`, in `state`, can be approved now.
pub fn may_approve(incident: &str, state: &RuleState) -> Result<(), String> {
    match state.phase() {
        PhaseName::AwaitingApproval => Ok(()),
        phase => Err(format!(
            "incident {incident} is not awaiting approval (it is {phase})"
        )),
    }
}

/// Whether `incident`, in `state`, can be vetoed now, and what that does.
pub fn may_veto(incident: &str, state: &RuleState) -> Result<VetoEffect, String> {
    match state.phase() {
        PhaseName::AwaitingApproval => Ok(VetoEffect::NothingRuns),
        PhaseName::Acting => Ok(VetoEffect::RunningFinishes),
        phase => Err(format!(
            "incident {incident}: nothing left to veto (it is {phase})"
        )),
    }
}

/// Whether a drill can open an incident for `rule` (known: `state` is
/// `Some`) now.
pub fn may_fire(rule: &str, state: Option<&RuleState>) -> Result<(), String> {
    let Some(state) = state else {
        return Err(format!("unknown rule `{rule}`"));
    };
    match state.incident() {
        Some(i) => Err(format!(
            "rule {rule} already has an open incident: {}",
            i.id
        )),
        None => Ok(()),
    }
}

/// Pauses every action from `at` for `duration` (or until resumed):
/// incidents still open and page. A second pause replaces the first.
pub fn pause(
    shared: &mut Shared,
    at: Timestamp,
    duration: Option<Duration>,
    reason: &str,
) -> Pause {
    let p = Pause {
        until: duration.map(|d| at.plus(d)),
        reason: reason.to_string(),
    };
    shared.pause = Some(p.clone());
    p
}

/// Ends a pause; refused when there is none.
pub fn resume(shared: &mut Shared) -> Result<Pause, String> {
    shared
        .pause
        .take()
        .ok_or_else(|| "ripcord is not paused".to_string())
}

// -------------------------------------------------------------------- locks

/// One lock per action: two incidents never run the same action at once.
/// The first to ask holds it; the others wait in order, each with what it
/// needs to start (`W`), and the next one is handed the lock on release.
#[derive(Clone, Debug)]
pub struct Locks<W> {
    /// action → (holding incident, waiting incidents with their payload)
    held: BTreeMap<String, (String, VecDeque<(String, W)>)>,
}

impl<W> Default for Locks<W> {
    fn default() -> Self {
        Locks {
            held: BTreeMap::new(),
        }
    }
}

impl<W> Locks<W> {
    /// `incident` asks for `action`'s lock: `Some(w)` when it holds it now
    /// and may start; `None` when it waits behind the holder.
    pub fn acquire(&mut self, action: &str, incident: &str, w: W) -> Option<W> {
        match self.held.get_mut(action) {
            Some((_, waiting)) => {
                waiting.push_back((incident.to_string(), w));
                None
            }
            None => {
                self.held
                    .insert(action.to_string(), (incident.to_string(), VecDeque::new()));
                Some(w)
            }
        }
    }

    /// `incident` is done with `action`: the next waiter now holds the lock
    /// and is returned to start. A release by anyone but the holder (an
    /// action that never started) changes nothing.
    pub fn release(&mut self, action: &str, incident: &str) -> Option<W> {
        let (holder, waiting) = self.held.get_mut(action)?;
        if holder != incident {
            return None;
        }
        match waiting.pop_front() {
            Some((next, w)) => {
                *holder = next;
                Some(w)
            }
            None => {
                self.held.remove(action);
                None
            }
        }
    }

    /// The incident holding `action`'s lock, and how many wait for it.
    pub fn holder(&self, action: &str) -> Option<(&str, usize)> {
        self.held
            .get(action)
            .map(|(h, waiting)| (h.as_str(), waiting.len()))
    }
}

// -------------------------------------------------------------- step pages

/// The page a step produces: when it starts (`outcome: None`) and when it
/// ends (`Some((ok, summary))`).
pub fn step_page(action: &str, step: usize, outcome: Option<(bool, &str)>) -> (PageEvent, String) {
    let n = step + 1;
    match outcome {
        None => (PageEvent::StepStarted, format!("{action} step {n} started")),
        Some((true, summary)) => (
            PageEvent::StepSucceeded,
            format!("{action} step {n} succeeded: {summary}"),
        ),
        Some((false, summary)) => (
            PageEvent::StepFailed,
            format!("{action} step {n} FAILED: {summary}"),
        ),
    }
}

// ------------------------------------------------------------------ replay

/// A step that had an intent and no result when the journal was replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interrupted {
    pub rule: String,
    pub incident: String,
    pub action: String,
    pub step: usize,
    pub describe: String,
}

/// What a replayed journal means, to be carried out before anything runs.
#[derive(Clone, Debug, PartialEq)]
pub enum AfterReplay {
    /// A rule whose latest state could not be read may have had an
    /// incident open: it is taken as an open, unrecovered one, so nothing
    /// runs again before its condition clears, and on-call hears of it.
    TakenAsOpen { rule: String, state: Box<RuleState> },
    /// A step that was running when ripcord stopped: recorded as
    /// interrupted, never run again.
    StepInterrupted(Interrupted),
    /// An action that was running: its rule is told it was interrupted
    /// (the incident becomes unrecovered; nothing after it runs).
    ActionInterrupted {
        rule: String,
        incident: String,
        action: String,
    },
}

/// What the journal's `states`, the rules whose state line was damaged
/// (`uncertain`) and the steps left without a result (`interrupted`) mean
/// at `at`. Timers (pending since, approval and verify deadlines,
/// cooldowns) are absolute times in the states and hold as they are: the
/// first tick settles the ones that ran out while ripcord was down.
pub fn after_replay(
    rules: &BTreeMap<String, Arc<Rule>>,
    states: &BTreeMap<String, RuleState>,
    uncertain: &BTreeSet<String>,
    interrupted: &[Interrupted],
    at: Timestamp,
) -> Vec<AfterReplay> {
    let mut out = Vec::new();
    for rule in uncertain {
        if states.get(rule).is_some_and(|s| s.incident().is_some()) {
            continue;
        }
        let mut state = states.get(rule).cloned().unwrap_or_default();
        let id = format!("{rule}-journal-{}", at.0);
        state.last_incident = Some(id.clone());
        state.status = Status::Open(Box::new(Incident {
            id,
            opened_at: at,
            dry_run: false,
            drill: false,
            phase: Phase::Unrecovered(UnrecoveredReason::Interrupted {
                action: "unknown (its journal line is damaged)".into(),
            }),
            done: Vec::new(),
            veto: None,
            values: BTreeMap::new(),
        }));
        out.push(AfterReplay::TakenAsOpen {
            rule: rule.clone(),
            state: Box::new(state),
        });
    }
    out.extend(
        interrupted
            .iter()
            .cloned()
            .map(AfterReplay::StepInterrupted),
    );
    // A rule taken as open above is unrecovered, not acting.
    for (name, s) in states {
        if let Status::Open(inc) = &s.status {
            if let Phase::Acting { index } = inc.phase {
                if let Some(action) = rules.get(name).and_then(|r| r.actions.get(index)) {
                    out.push(AfterReplay::ActionInterrupted {
                        rule: name.clone(),
                        incident: inc.id.clone(),
                        action: action.clone(),
                    });
                }
            }
        }
    }
    out
}

// ------------------------------------------------------------ shared runs

/// How long a finished run is remembered for incidents to join at most.
pub const RUNS_KEPT: std::time::Duration = std::time::Duration::from_secs(86_400);

/// What an incident whose action resolved to `steps` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Nobody ran these steps lately: it runs them (and the run is
    /// recorded for others to join).
    Run,
    /// Another incident runs them now: it waits for that result.
    JoinRunning { incident: String },
    /// Another incident ran them within `window`: that result is its own.
    AlreadyRan {
        incident: String,
        at: Timestamp,
        ok: bool,
    },
}

/// One rollback per thing rolled back: several instances whose action
/// resolves to the same steps run them once. `window` is how long after a
/// run the same steps count as done (the rule's cooldown).
pub fn claim(
    shared: &mut Shared,
    steps: &str,
    action: &str,
    incident: &str,
    now: Timestamp,
    window: std::time::Duration,
) -> Claim {
    shared
        .runs
        .retain(|r| r.ok.is_none() || now.since(r.at) <= RUNS_KEPT);
    let last = shared
        .runs
        .iter()
        .rev()
        .find(|r| r.steps == steps && r.incident != incident);
    match last {
        Some(r) if r.ok.is_none() => Claim::JoinRunning {
            incident: r.incident.clone(),
        },
        Some(r) if now.since(r.at) <= window => Claim::AlreadyRan {
            incident: r.incident.clone(),
            at: r.at,
            ok: r.ok == Some(true),
        },
        _ => {
            shared.runs.push(SharedRun {
                steps: steps.to_string(),
                action: action.to_string(),
                incident: incident.to_string(),
                at: now,
                ok: None,
            });
            Claim::Run
        }
    }
}

/// `incident`'s run of `steps` is over.
pub fn finish(shared: &mut Shared, steps: &str, incident: &str, ok: bool) {
    if let Some(r) = shared
        .runs
        .iter_mut()
        .rev()
        .find(|r| r.steps == steps && r.incident == incident && r.ok.is_none())
    {
        r.ok = Some(ok);
    }
}

/// After a restart nothing is running: a run the journal left unfinished
/// was interrupted, and counts as failed for whoever would join it.
pub fn runs_after_replay(shared: &mut Shared) {
    for r in &mut shared.runs {
        if r.ok.is_none() {
            r.ok = Some(false);
        }
    }
}

#[cfg(test)]
#[path = "global_tests.rs"]
mod tests;
