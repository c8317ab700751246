//! The rule state machine: ripcord's pure core.
//!
//! [`step`] takes a rule's state, one input (an evaluation's query results, a
//! human's approve or veto, an action's result, the passing of time) and the
//! time, and returns the new state and the effects to carry out: run an
//! action, send a page, record an event. It does no I/O and reads no clock,
//! so `ripcord run`, `ripcord test` and `ripcord backtest` reach the same
//! verdicts from the same inputs.
//!
//! ```text
//!   ok ──breach──▶ pending ──held `for`──▶ firing ─┬─ awaiting approval ─▶ acting ─▶ verifying ─┬─ clear ─▶ recovered ─(cooldown)─▶ ok
//!    ▲                │                            │                                              └─ deadline ─▶ unrecovered
//!    └────clear───────┘                            └─ vetoed / aborted / budget exhausted / paused ─ clear ─▶ closed ─(cooldown)─▶ ok
//! ```
//!
//! Missing data (an empty result, NaN, ±Inf) follows the rule's `no_data`
//! policy; a failed query or condition holds the state. Neither can make a
//! rule act unless the rule says `no_data: breach`.

use std::collections::BTreeMap;

use super::types::*;
use crate::config::{Mode, NoData, OnTimeout, Rule};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Breach,
    Clear,
    /// No data under `no_data: hold`, or an error: decide nothing.
    Hold,
}

struct Machine<'a> {
    rule: &'a Rule,
    shared: &'a mut Shared,
    now: Timestamp,
    state: RuleState,
    effects: Vec<Effect>,
}

/// Advances `rule` by one input at time `now`.
pub fn step(
    rule: &Rule,
    state: &RuleState,
    shared: &mut Shared,
    input: Input,
    now: Timestamp,
) -> (RuleState, Vec<Effect>) {
    let before = state.name();
    let mut m = Machine {
        rule,
        shared,
        now,
        state: state.clone(),
        effects: Vec::new(),
    };
    match input {
        Input::Evaluate(obs) => m.evaluate(obs),
        Input::Tick => {
            m.expire_cooldown();
            m.approval_deadline();
            m.verify_deadline();
        }
        Input::Approve { by } => m.approve(by),
        Input::Veto { by } => m.veto(by),
        Input::ActionFinished {
            incident,
            action,
            result,
        } => m.action_finished(&incident, &action, result),
        Input::Fire { by, dry_run } => m.fire(by, dry_run),
    }
    let after = m.state.name();
    if before != after {
        m.effects.insert(
            0,
            Effect::Record(Record::Transition {
                from: before,
                to: after,
            }),
        );
    }
    (m.state, m.effects)
}

impl Machine<'_> {
    fn record(&mut self, r: Record) {
        self.effects.push(Effect::Record(r));
    }

    fn incident_mut(&mut self) -> Option<&mut Incident> {
        match &mut self.state.status {
            Status::Open(i) => Some(i),
            _ => None,
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        if let Some(i) = self.incident_mut() {
            i.phase = phase;
        }
    }

    fn page(&mut self, kind: PageKind) {
        let Some(inc) = self.state.incident().cloned() else {
            return;
        };
        self.page_for(&inc.id, inc.dry_run, inc.drill, kind);
    }

    fn page_for(&mut self, incident: &str, dry_run: bool, drill: bool, kind: PageKind) {
        // A rule without notifiers still says it stopped protecting: the
        // driver sends those pages to every notifier.
        if self.rule.notify.is_empty() && !kind.about_rule() {
            return;
        }
        let r = self.rule;
        // The rule's labels, and the instance's over them.
        let mut labels = r.labels.clone();
        labels.extend(
            self.state
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        let summary = r
            .summary
            .render(&r.name, r.severity.as_str(), &labels, &self.state.values());
        self.effects.push(Effect::Page(Page {
            rule: r.name.clone(),
            incident: incident.to_string(),
            kind,
            severity: r.severity,
            summary,
            notifiers: r.notify.clone(),
            values: self.state.values(),
            labels: self.state.labels.clone(),
            dry_run,
            drill,
            at: self.now,
        }));
    }

    fn evaluate(&mut self, obs: Observation) {
        self.state.last_eval = Some(self.now);
        self.expire_cooldown();
        self.approval_deadline();
        let verdict = self.verdict(obs);
        match self.state.status.clone() {
            Status::Ok => {
                if verdict == Verdict::Breach {
                    if self.rule.for_.is_zero() {
                        self.open(None, false);
                    } else {
                        self.state.status = Status::Pending {
                            since: self.now,
                            last_breach: Some(self.now),
                        };
                    }
                }
            }
            Status::Pending { since, last_breach } => {
                let last = last_breach.unwrap_or(since);
                let gap = self.now.since(last);
                let limit = gap_limit(self.rule, last);
                match verdict {
                    Verdict::Breach if gap > limit => {
                        // Breaches separated by a gap never add up to `for`.
                        self.record(Record::PendingRestarted { gap });
                        self.state.status = Status::Pending {
                            since: self.now,
                            last_breach: Some(self.now),
                        };
                        if self.rule.for_.is_zero() {
                            self.open(None, false);
                        }
                    }
                    Verdict::Breach => {
                        self.state.status = Status::Pending {
                            since,
                            last_breach: Some(self.now),
                        };
                        if self.now.since(since) >= self.rule.for_ {
                            self.open(None, false)
                        }
                    }
                    Verdict::Clear => self.state.status = Status::Ok,
                    // The state holds through a gap; the gap still breaks
                    // the count: the next breach starts `for` again.
                    Verdict::Hold => {}
                }
            }
            Status::Open(inc) => {
                if verdict == Verdict::Clear {
                    match inc.phase {
                        Phase::AwaitingApproval { .. } => {
                            // Nothing ran: no cooldown needed.
                            self.page(PageKind::Closed);
                            self.state.status = Status::Ok;
                        }
                        Phase::Acting { .. } => {}
                        Phase::Verifying { .. } => self.close(Outcome::Recovered),
                        Phase::Unrecovered(_) | Phase::Halted(_) => self.close(Outcome::Closed),
                    }
                }
            }
            Status::Cooldown {
                until, suppressed, ..
            } => {
                if verdict == Verdict::Breach && !suppressed {
                    self.record(Record::Suppressed { until });
                    if let Status::Cooldown { suppressed, .. } = &mut self.state.status {
                        *suppressed = true;
                    }
                }
            }
        }
        self.verify_deadline();
    }

    fn verdict(&mut self, obs: Observation) -> Verdict {
        let samples = match obs {
            Observation::Failed(error) => {
                self.state.last_error = Some(error.clone());
                self.record(Record::EvaluationFailed { error });
                return Verdict::Hold;
            }
            Observation::Unevaluable(error) => {
                self.unevaluable(error.clone());
                self.state.last_error = Some(error.clone());
                self.record(Record::EvaluationFailed { error });
                return Verdict::Hold;
            }
            Observation::Samples(s) => s,
        };
        self.state.last_error = None;
        if self.rule.condition.is_presence() {
            return self.presence(&samples);
        }
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for q in self.rule.queries.keys() {
            let why = match samples.get(q) {
                Some(Sample::Value(v)) if v.is_finite() => {
                    values.insert(q.clone(), *v);
                    self.set_value(q, Some(*v));
                    continue;
                }
                Some(Sample::Value(v)) if v.is_nan() => "NaN",
                Some(Sample::Value(v)) if *v > 0.0 => "+Inf",
                Some(Sample::Value(_)) => "-Inf",
                Some(Sample::Empty) => "empty result",
                None => "no result",
            };
            self.set_value(q, None);
            missing.push((q.clone(), why.to_string()));
        }
        self.prune_values();
        if !missing.is_empty() {
            // The queries answered: no data is an evaluation that worked.
            self.evaluable();
            let policy = self.rule.no_data;
            // `rate > 0.005 || rate > 5 * baseline` with no baseline still
            // breaches on `rate` alone: if the condition holds whatever the
            // missing values are, the data present decides.
            if !values.is_empty() && self.breaches_whatever(&values, &missing) {
                return Verdict::Breach;
            }
            self.record(Record::NoData {
                queries: missing,
                policy,
            });
            return match policy {
                NoData::Hold => Verdict::Hold,
                NoData::Ok => Verdict::Clear,
                NoData::Breach => Verdict::Breach,
            };
        }
        match self.rule.condition.eval(&values) {
            Ok(b) => {
                self.evaluable();
                if b {
                    Verdict::Breach
                } else {
                    Verdict::Clear
                }
            }
            Err(error) => {
                self.unevaluable(error.clone());
                self.state.last_error = Some(error.clone());
                self.record(Record::EvaluationFailed { error });
                Verdict::Hold
            }
        }
    }

    /// Sets query `q`'s last value in place: after the first evaluation
    /// nothing is allocated.
    fn set_value(&mut self, q: &str, v: Option<f64>) {
        match self.state.last_values.get_mut(q) {
            Some(slot) => *slot = v,
            None => {
                let values = &mut self.state.last_values;
                if values.is_empty() {
                    *values = litemap::LiteMap::with_capacity(self.rule.queries.len());
                }
                values.insert(q.to_string(), v);
            }
        }
    }

    /// Drops the values of queries the rule no longer has (a changed rule
    /// keeps its state).
    fn prune_values(&mut self) {
        if self.state.last_values.len() != self.rule.queries.len() {
            let queries = &self.rule.queries;
            self.state
                .last_values
                .retain(|q, _| queries.contains_key(q));
        }
    }

    /// An alert-style rule: a series is a breach whatever its value (NaN
    /// too, as in Prometheus); no series is ok, not missing data.
    fn presence(&mut self, samples: &BTreeMap<String, Sample>) -> Verdict {
        self.evaluable();
        let mut breach = false;
        for q in self.rule.queries.keys() {
            let v = match samples.get(q) {
                Some(Sample::Value(v)) => {
                    breach = true;
                    v.is_finite().then_some(*v)
                }
                _ => None,
            };
            self.set_value(q, v);
        }
        self.prune_values();
        if breach {
            Verdict::Breach
        } else {
            Verdict::Clear
        }
    }

    /// One more evaluation that failed for the rule's own reasons: past the
    /// grace period its notifiers are paged, once.
    fn unevaluable(&mut self, error: String) {
        let u = self.state.unevaluable.get_or_insert_with(|| {
            Box::new(Unevaluable {
                since: self.now,
                error,
                paged: false,
            })
        });
        if u.paged || self.now.since(u.since) < unevaluable_grace(self.rule, u.since) {
            return;
        }
        u.paged = true;
        let kind = PageKind::RuleUnevaluable {
            since: u.since,
            error: u.error.clone(),
        };
        self.page_for("", false, false, kind);
    }

    /// An evaluation that decided: an unevaluable rule that was paged about
    /// pages that it protects again.
    fn evaluable(&mut self) {
        if let Some(u) = self.state.unevaluable.take() {
            if u.paged {
                self.page_for("", false, false, PageKind::RuleEvaluable { since: u.since });
            }
        }
    }

    /// True if the condition is true for every probe value of the missing
    /// queries (very negative, negative, zero, positive, very positive).
    fn breaches_whatever(
        &self,
        present: &BTreeMap<String, f64>,
        missing: &[(String, String)],
    ) -> bool {
        [-1e300, -1.0, 0.0, 1.0, 1e300].iter().all(|probe| {
            let mut all = present.clone();
            for (q, _) in missing {
                all.insert(q.clone(), *probe);
            }
            self.rule.condition.eval(&all) == Ok(true)
        })
    }

    fn expire_cooldown(&mut self) {
        if let Status::Cooldown { until, .. } = self.state.status {
            if self.now >= until {
                self.state.status = Status::Ok;
            }
        }
    }

    fn approval_deadline(&mut self) {
        let Some(inc) = self.state.incident() else {
            return;
        };
        let Phase::AwaitingApproval { deadline } = inc.phase else {
            return;
        };
        if self.now < deadline {
            return;
        }
        let Some(approval) = &self.rule.approval else {
            return;
        };
        match approval.on_timeout {
            OnTimeout::Proceed => {
                self.page(PageKind::ApprovalTimedOut { proceeding: true });
                self.start_action(0);
            }
            OnTimeout::Abort => {
                self.set_phase(Phase::Halted(HaltReason::Aborted));
                self.page(PageKind::ApprovalTimedOut { proceeding: false });
            }
        }
    }

    fn verify_deadline(&mut self) {
        let Some(inc) = self.state.incident() else {
            return;
        };
        if let Phase::Verifying {
            deadline: Some(deadline),
        } = inc.phase
        {
            if self.now >= deadline {
                self.set_phase(Phase::Unrecovered(UnrecoveredReason::VerifyTimedOut));
                self.page(PageKind::Unrecovered);
            }
        }
    }

    fn open(&mut self, drill_by: Option<String>, force_dry_run: bool) {
        // An instance's incidents carry a short digest of its labels: two
        // instances opening in the same second get distinct ids, and no
        // label value reaches an id (ids name files and URLs).
        let mut id = if self.state.labels.is_empty() {
            format!("{}-{}", self.rule.name, self.now.compact())
        } else {
            let k = super::instances::key(&self.rule.name, &self.state.labels);
            format!("{}-{}-{}", self.rule.name, digest(&k), self.now.compact())
        };
        if self.state.last_incident.as_deref() == Some(id.as_str()) {
            id = format!("{id}.{}", self.now.0.rem_euclid(1000));
        }
        let mode = self.rule.mode.unwrap_or(self.shared.mode);
        self.state.last_incident = Some(id.clone());
        self.state.status = Status::Open(Box::new(Incident {
            id,
            opened_at: self.now,
            dry_run: force_dry_run || mode == Mode::DryRun,
            drill: drill_by.is_some(),
            phase: Phase::Acting { index: 0 },
            done: Vec::new(),
            veto: None,
            values: self.state.values(),
        }));
        self.page(PageKind::Opened);
        match &self.rule.approval {
            Some(a) => {
                let deadline = self.now.plus(a.timeout);
                self.set_phase(Phase::AwaitingApproval { deadline });
                self.page(PageKind::ApprovalRequested { deadline });
            }
            None => self.start_action(0),
        }
    }

    fn verify(&mut self) {
        let deadline = self.rule.verify_within.map(|w| self.now.plus(w));
        self.set_phase(Phase::Verifying { deadline });
    }

    /// Starts `rule.actions[index]`, or verification when none is left.
    fn start_action(&mut self, index: usize) {
        let Some(action) = self.rule.actions.get(index).cloned() else {
            self.verify();
            return;
        };
        let Some(inc) = self.state.incident().cloned() else {
            return;
        };
        if !inc.dry_run {
            if self.shared.paused(self.now) {
                self.set_phase(Phase::Halted(HaltReason::Paused));
                self.page(PageKind::Paused);
                return;
            }
            if !self.shared.budget.try_take(self.now) {
                self.set_phase(Phase::Halted(HaltReason::BudgetExhausted));
                self.page(PageKind::BudgetExhausted);
                return;
            }
        }
        self.set_phase(Phase::Acting { index });
        self.effects.push(Effect::RunAction {
            incident: inc.id,
            action,
            dry_run: inc.dry_run,
        });
    }

    fn action_finished(&mut self, id: &str, action: &str, result: ActionResult) {
        let acting = self.state.incident().and_then(|i| match i.phase {
            Phase::Acting { index } if i.id == id => Some((index, i.veto.clone())),
            _ => None,
        });
        let Some((index, veto)) = acting
            .filter(|(index, _)| self.rule.actions.get(*index).map(String::as_str) == Some(action))
        else {
            self.record(Record::Rejected {
                reason: format!(
                    "result of action {action} for incident {id}, which is not running it"
                ),
            });
            return;
        };
        match result {
            ActionResult::Succeeded => {
                if let Some(i) = self.incident_mut() {
                    i.done.push(action.to_string());
                }
                let last = index + 1 >= self.rule.actions.len();
                if let Some(by) = veto.filter(|_| !last) {
                    self.set_phase(Phase::Halted(HaltReason::Vetoed { by: by.clone() }));
                    self.page(PageKind::Vetoed { by });
                } else if last {
                    self.verify();
                    self.page(PageKind::ActionsSucceeded);
                } else {
                    self.start_action(index + 1);
                }
            }
            ActionResult::Failed(error) => {
                self.set_phase(Phase::Unrecovered(UnrecoveredReason::ActionFailed {
                    action: action.to_string(),
                    error: error.clone(),
                }));
                self.page(PageKind::ActionFailed {
                    action: action.to_string(),
                    error,
                });
            }
            ActionResult::Interrupted => {
                self.set_phase(Phase::Unrecovered(UnrecoveredReason::Interrupted {
                    action: action.to_string(),
                }));
                self.page(PageKind::ActionInterrupted {
                    action: action.to_string(),
                });
            }
        }
    }

    fn approve(&mut self, by: String) {
        match self.state.incident().map(|i| &i.phase) {
            Some(Phase::AwaitingApproval { .. }) => {
                self.page(PageKind::Approved { by });
                self.start_action(0);
            }
            _ => self.record(Record::Rejected {
                reason: format!("{} has no incident awaiting approval", self.rule.name),
            }),
        }
    }

    fn veto(&mut self, by: String) {
        match self.state.incident().map(|i| i.phase.clone()) {
            Some(Phase::AwaitingApproval { .. }) => {
                self.set_phase(Phase::Halted(HaltReason::Vetoed { by: by.clone() }));
                self.page(PageKind::Vetoed { by });
            }
            Some(Phase::Acting { .. }) => {
                if let Some(i) = self.incident_mut() {
                    i.veto = Some(by.clone());
                }
                self.record(Record::VetoPending { by });
            }
            Some(_) => self.record(Record::Rejected {
                reason: format!(
                    "{}: nothing left to veto, no action is pending",
                    self.rule.name
                ),
            }),
            None => self.record(Record::Rejected {
                reason: format!("{} has no open incident", self.rule.name),
            }),
        }
    }

    fn fire(&mut self, by: String, dry_run: bool) {
        if let Some(i) = self.state.incident() {
            let reason = format!("incident {} is already open", i.id);
            self.record(Record::Rejected { reason });
            return;
        }
        self.open(Some(by), dry_run);
    }

    fn close(&mut self, outcome: Outcome) {
        let Some(inc) = self.state.incident().cloned() else {
            return;
        };
        self.page(match outcome {
            Outcome::Recovered => PageKind::Recovered,
            Outcome::Closed => PageKind::Closed,
        });
        self.state.status = Status::Cooldown {
            until: self.now.plus(self.rule.cooldown),
            outcome,
            incident: inc.id,
            suppressed: false,
        };
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;

/// Eight hex digits of `key`'s SHA-256.
fn digest(key: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..4])
}
