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

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{Mode, NoData, OnTimeout, Rule};

/// Milliseconds since the Unix epoch. The core never reads a clock: drivers
/// pass the time in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_system(t: SystemTime) -> Timestamp {
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_millis() as i64),
            Err(e) => Timestamp(-(e.duration().as_millis() as i64)),
        }
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    pub fn minus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    pub fn to_system(self) -> SystemTime {
        if self.0 >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    /// The first and last instants RFC 3339 can write (years 0000 to 9999).
    const MIN_MS: i64 = -62_167_219_200_000;
    const MAX_MS: i64 = 253_402_300_799_999;

    /// RFC 3339, seconds precision: `2026-11-23T12:48:00Z`. Never panics: a
    /// time outside years 1970–9999 (only a damaged journal holds one) is
    /// written as its milliseconds since the epoch.
    pub fn rfc3339(self) -> String {
        if (0..=Self::MAX_MS).contains(&self.0) {
            humantime::format_rfc3339_seconds(self.to_system()).to_string()
        } else {
            format!("@{}ms", self.0)
        }
    }

    /// Within the years RFC 3339 can write: what a journal may hold.
    pub fn in_range(self) -> bool {
        (Self::MIN_MS..=Self::MAX_MS).contains(&self.0)
    }

    /// `20261123T124800Z`, for incident ids.
    fn compact(self) -> String {
        self.rfc3339().replace(['-', ':'], "")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}

/// One query's result as the driver got it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Sample {
    Value(f64),
    /// The query returned no series.
    Empty,
}

/// One evaluation of a rule: every query's result, or why there are none.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    Samples(BTreeMap<String, Sample>),
    /// Prometheus was unreachable, slow or failing (5xx): every rule holds,
    /// and the driver decides when ripcord is blind.
    Failed(String),
    /// This rule's own query or result cannot be used: a query returned
    /// more than one series, Prometheus refused the query (4xx), or the
    /// result is not a number. The rule holds; past its grace period it
    /// pages that it protects nothing.
    Unevaluable(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionResult {
    Succeeded,
    Failed(String),
    /// The daemon stopped while a step of the action ran; it is never rerun.
    Interrupted,
}

/// Everything that can happen to a rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Evaluate(Observation),
    /// Time passes: approval and verify deadlines, cooldowns.
    Tick,
    Approve {
        by: String,
    },
    Veto {
        by: String,
    },
    ActionFinished {
        incident: String,
        action: String,
        result: ActionResult,
    },
    /// `ripcord fire`: open an incident by hand (a drill).
    Fire {
        by: String,
        dry_run: bool,
    },
}

/// A global pause (`ripcord pause`): incidents still open and page, actions
/// don't run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    pub until: Option<Timestamp>,
    pub reason: String,
}

/// The rolling-hour action budget shared by all rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionBudget {
    pub limit: u32,
    /// When each action in the last hour started, oldest first.
    pub started: VecDeque<Timestamp>,
}

const BUDGET_WINDOW: Duration = Duration::from_secs(3600);

impl ActionBudget {
    pub fn new(limit: u32) -> ActionBudget {
        ActionBudget {
            limit,
            started: VecDeque::new(),
        }
    }

    fn forget_old(&mut self, now: Timestamp) {
        // An entry from the future (a clock set back, a damaged journal)
        // counts as taken now, so it expires within the hour.
        for t in self.started.iter_mut() {
            if *t > now {
                *t = now;
            }
        }
        let horizon = now.minus(BUDGET_WINDOW);
        while self.started.front().is_some_and(|t| *t <= horizon) {
            self.started.pop_front();
        }
    }

    /// Takes one action from the budget, if any is left.
    pub fn try_take(&mut self, now: Timestamp) -> bool {
        self.forget_old(now);
        if (self.started.len() as u64) < u64::from(self.limit) {
            self.started.push_back(now);
            true
        } else {
            false
        }
    }

    pub fn remaining(&mut self, now: Timestamp) -> u32 {
        self.forget_old(now);
        self.limit.saturating_sub(self.started.len() as u32)
    }
}

/// State shared by all rules: the budget, the pause and the global mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub budget: ActionBudget,
    pub pause: Option<Pause>,
    pub mode: Mode,
}

impl Shared {
    pub fn new(max_actions_per_hour: u32, mode: Mode) -> Shared {
        Shared {
            budget: ActionBudget::new(max_actions_per_hour),
            pause: None,
            mode,
        }
    }

    pub fn paused(&self, now: Timestamp) -> bool {
        self.pause
            .as_ref()
            .is_some_and(|p| p.until.is_none_or(|u| now < u))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnrecoveredReason {
    /// The condition did not clear within `verify.within`.
    VerifyTimedOut,
    ActionFailed {
        action: String,
        error: String,
    },
    Interrupted {
        action: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HaltReason {
    Vetoed {
        by: String,
    },
    /// Nobody approved in time and the rule says `on_timeout: abort`.
    Aborted,
    BudgetExhausted,
    Paused,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    AwaitingApproval {
        deadline: Timestamp,
    },
    /// Waiting for the result of `rule.actions[index]`.
    Acting {
        index: usize,
    },
    /// Actions done; waiting for the condition to clear.
    Verifying {
        deadline: Option<Timestamp>,
    },
    Unrecovered(UnrecoveredReason),
    /// No (further) action will run; waiting for the condition to clear.
    Halted(HaltReason),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: String,
    pub opened_at: Timestamp,
    /// Actions are resolved and recorded, never run.
    pub dry_run: bool,
    /// Opened by hand (`ripcord fire`).
    pub drill: bool,
    pub phase: Phase,
    /// Actions that finished successfully, in order.
    pub done: Vec<String>,
    /// A veto that came while an action ran: nothing after it runs.
    pub veto: Option<String>,
    /// The query values that opened it.
    pub values: BTreeMap<String, Option<f64>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Verified: the condition cleared after the actions.
    Recovered,
    /// Cleared after a failure, a veto or a halt.
    Closed,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Status {
    #[default]
    Ok,
    Pending {
        since: Timestamp,
        /// The last evaluation that saw the breach (`None` in journals
        /// written before it was kept: `since` stands in).
        #[serde(default)]
        last_breach: Option<Timestamp>,
    },
    Open(Incident),
    /// The last incident closed; no new one opens before `until`.
    Cooldown {
        until: Timestamp,
        outcome: Outcome,
        incident: String,
        /// A breach during the cooldown was recorded already.
        suppressed: bool,
    },
}

/// A rule whose own evaluations fail: since when, why (the first error),
/// and whether its notifiers were paged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unevaluable {
    pub since: Timestamp,
    pub error: String,
    pub paged: bool,
}

/// How long `rule`'s evaluations may fail before it pages: its
/// `unevaluable_after`, else a minute or three intervals, the longer.
pub fn unevaluable_grace(rule: &Rule, since: Timestamp) -> Duration {
    rule.unevaluable_after.unwrap_or_else(|| {
        Duration::from_secs(60).max(rule.schedule.interval_after(since.to_system()) * 3)
    })
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleState {
    pub status: Status,
    pub last_eval: Option<Timestamp>,
    /// Each query's last value; `None` is no data.
    pub last_values: BTreeMap<String, Option<f64>>,
    /// Why the last evaluation could not decide, if it could not.
    pub last_error: Option<String>,
    pub last_incident: Option<String>,
    /// Set while the rule's own evaluations fail.
    #[serde(default)]
    pub unevaluable: Option<Unevaluable>,
}

/// `rate=0.02 baseline=_` (`_` is no data), as logs and tables show values.
pub fn fmt_values(values: &BTreeMap<String, Option<f64>>) -> Vec<String> {
    values
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.map(|f| f.to_string()).unwrap_or_else(|| "_".into())
            )
        })
        .collect()
}

/// Every name [`RuleState::name`] can return.
pub const STATE_NAMES: &[&str] = &[
    "ok",
    "pending",
    "firing",
    "unrecovered",
    "recovered",
    "closed",
];

impl RuleState {
    /// The state's name as users see it in `status`, tests and pages.
    pub fn name(&self) -> &'static str {
        match &self.status {
            Status::Ok => "ok",
            Status::Pending { .. } => "pending",
            Status::Open(i) => match i.phase {
                Phase::Unrecovered(_) => "unrecovered",
                _ => "firing",
            },
            Status::Cooldown {
                outcome: Outcome::Recovered,
                ..
            } => "recovered",
            Status::Cooldown { .. } => "closed",
        }
    }

    /// Every time this state holds is one RFC 3339 can write.
    pub fn times_in_range(&self) -> bool {
        let mut times: Vec<Timestamp> = self.last_eval.into_iter().collect();
        match &self.status {
            Status::Ok => {}
            Status::Pending { since, last_breach } => {
                times.push(*since);
                times.extend(*last_breach);
            }
            Status::Open(i) => {
                times.push(i.opened_at);
                match i.phase {
                    Phase::AwaitingApproval { deadline } => times.push(deadline),
                    Phase::Verifying { deadline } => times.extend(deadline),
                    _ => {}
                }
            }
            Status::Cooldown { until, .. } => times.push(*until),
        }
        times.extend(self.unevaluable.as_ref().map(|u| u.since));
        times.iter().all(|t| t.in_range())
    }

    /// The open incident's phase, or the state's name.
    pub fn phase(&self) -> &'static str {
        match &self.status {
            Status::Open(i) => match &i.phase {
                Phase::AwaitingApproval { .. } => "awaiting_approval",
                Phase::Acting { .. } => "acting",
                Phase::Verifying { .. } => "verifying",
                Phase::Unrecovered(UnrecoveredReason::VerifyTimedOut) => "verify_timed_out",
                Phase::Unrecovered(UnrecoveredReason::ActionFailed { .. }) => "action_failed",
                Phase::Unrecovered(UnrecoveredReason::Interrupted { .. }) => "interrupted",
                Phase::Halted(HaltReason::Vetoed { .. }) => "vetoed",
                Phase::Halted(HaltReason::Aborted) => "aborted",
                Phase::Halted(HaltReason::BudgetExhausted) => "budget_exhausted",
                Phase::Halted(HaltReason::Paused) => "paused",
            },
            _ => self.name(),
        }
    }

    pub fn incident(&self) -> Option<&Incident> {
        match &self.status {
            Status::Open(i) => Some(i),
            _ => None,
        }
    }
}

/// What a page is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageKind {
    Opened,
    ApprovalRequested {
        deadline: Timestamp,
    },
    Approved {
        by: String,
    },
    Vetoed {
        by: String,
    },
    ApprovalTimedOut {
        proceeding: bool,
    },
    ActionsSucceeded,
    ActionFailed {
        action: String,
        error: String,
    },
    ActionInterrupted {
        action: String,
    },
    BudgetExhausted,
    Paused,
    Recovered,
    Unrecovered,
    Closed,
    /// The rule's evaluations have failed past its grace period: it
    /// protects nothing until they work again. Not about an incident.
    RuleUnevaluable {
        since: Timestamp,
        error: String,
    },
    /// It evaluates again.
    RuleEvaluable {
        since: Timestamp,
    },
}

impl PageKind {
    pub fn name(&self) -> &'static str {
        match self {
            PageKind::Opened => "opened",
            PageKind::ApprovalRequested { .. } => "approval_requested",
            PageKind::Approved { .. } => "approved",
            PageKind::Vetoed { .. } => "vetoed",
            PageKind::ApprovalTimedOut { .. } => "approval_timed_out",
            PageKind::ActionsSucceeded => "actions_succeeded",
            PageKind::ActionFailed { .. } => "action_failed",
            PageKind::ActionInterrupted { .. } => "action_interrupted",
            PageKind::BudgetExhausted => "budget_exhausted",
            PageKind::Paused => "paused",
            PageKind::Recovered => "recovered",
            PageKind::Unrecovered => "unrecovered",
            PageKind::Closed => "closed",
            PageKind::RuleUnevaluable { .. } => "rule_unevaluable",
            PageKind::RuleEvaluable { .. } => "rule_evaluable",
        }
    }

    /// About the rule itself, not an incident.
    pub fn about_rule(&self) -> bool {
        matches!(
            self,
            PageKind::RuleUnevaluable { .. } | PageKind::RuleEvaluable { .. }
        )
    }

    /// The incident is over: PagerDuty resolves, Alertmanager sets `endsAt`.
    pub fn resolves(&self) -> bool {
        matches!(
            self,
            PageKind::Recovered | PageKind::Closed | PageKind::RuleEvaluable { .. }
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub rule: String,
    pub incident: String,
    pub kind: PageKind,
    pub severity: crate::config::Severity,
    pub summary: String,
    pub notifiers: Vec<String>,
    pub values: BTreeMap<String, Option<f64>>,
    pub dry_run: bool,
    pub drill: bool,
    pub at: Timestamp,
}

/// Events worth a log line and a journal entry that are not pages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Transition {
        from: String,
        to: String,
    },
    /// Queries without a usable value, and what the policy made of it.
    NoData {
        queries: Vec<(String, String)>,
        policy: NoData,
    },
    EvaluationFailed {
        error: String,
    },
    /// A breach that a cooldown kept from opening an incident.
    Suppressed {
        until: Timestamp,
    },
    /// An approve, veto, fire or result that did not apply.
    Rejected {
        reason: String,
    },
    VetoPending {
        by: String,
    },
    /// A breach seen again after a gap longer than the rule tolerates:
    /// `for` counts from now.
    PendingRestarted {
        gap: Duration,
    },
}

/// How long a pending breach may go unseen (no data, NaN, a failed query, or
/// no evaluation at all) and still count as continuous: two and a half of
/// the rule's intervals, so one missed evaluation in a sustained breach
/// delays nothing and two in a row start `for` again at the next breach.
/// The state itself holds through the gap (it stays pending, as every state
/// holds while Prometheus is unreachable). For a cron rule the interval is
/// the one between the two runs after `from`.
pub fn gap_limit(rule: &Rule, from: Timestamp) -> Duration {
    rule.schedule.interval_after(from.to_system()).mul_f64(2.5)
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Transition { from, to } => write!(f, "{from} → {to}"),
            Record::NoData { queries, policy } => {
                let qs: Vec<String> = queries
                    .iter()
                    .map(|(q, why)| format!("{q}: {why}"))
                    .collect();
                let policy = match policy {
                    NoData::Hold => "hold",
                    NoData::Ok => "ok",
                    NoData::Breach => "breach",
                };
                write!(f, "no data ({}); no_data: {policy}", qs.join(", "))
            }
            Record::EvaluationFailed { error } => {
                write!(f, "evaluation failed, state held: {error}")
            }
            Record::Suppressed { until } => {
                write!(f, "breach suppressed by cooldown until {until}")
            }
            Record::Rejected { reason } => write!(f, "rejected: {reason}"),
            Record::VetoPending { by } => {
                write!(
                    f,
                    "veto by {by}: the running action finishes, nothing after it runs"
                )
            }
            Record::PendingRestarted { gap } => write!(
                f,
                "breach seen again after {} without one: `for` starts again",
                humantime::format_duration(*gap)
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Run (or, when `dry_run`, resolve and record) one action of the rule.
    /// The driver answers with [`Input::ActionFinished`].
    RunAction {
        incident: String,
        action: String,
        dry_run: bool,
    },
    Page(Page),
    Record(Record),
}

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
                from: before.into(),
                to: after.into(),
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
        let summary = r.summary.render(
            &r.name,
            r.severity.as_str(),
            &r.labels,
            &self.state.last_values,
        );
        self.effects.push(Effect::Page(Page {
            rule: r.name.clone(),
            incident: incident.to_string(),
            kind,
            severity: r.severity,
            summary,
            notifiers: r.notify.clone(),
            values: self.state.last_values.clone(),
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
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        self.state.last_values.clear();
        for q in self.rule.queries.keys() {
            let why = match samples.get(q) {
                Some(Sample::Value(v)) if v.is_finite() => {
                    values.insert(q.clone(), *v);
                    self.state.last_values.insert(q.clone(), Some(*v));
                    continue;
                }
                Some(Sample::Value(v)) if v.is_nan() => "NaN",
                Some(Sample::Value(v)) if *v > 0.0 => "+Inf",
                Some(Sample::Value(_)) => "-Inf",
                Some(Sample::Empty) => "empty result",
                None => "no result",
            };
            self.state.last_values.insert(q.clone(), None);
            missing.push((q.clone(), why.to_string()));
        }
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

    /// One more evaluation that failed for the rule's own reasons: past the
    /// grace period its notifiers are paged, once.
    fn unevaluable(&mut self, error: String) {
        let u = self.state.unevaluable.get_or_insert(Unevaluable {
            since: self.now,
            error,
            paged: false,
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
        let mut id = format!("{}-{}", self.rule.name, self.now.compact());
        if self.state.last_incident.as_deref() == Some(id.as_str()) {
            id = format!("{id}.{}", self.now.0.rem_euclid(1000));
        }
        let mode = self.rule.mode.unwrap_or(self.shared.mode);
        self.state.last_incident = Some(id.clone());
        self.state.status = Status::Open(Incident {
            id,
            opened_at: self.now,
            dry_run: force_dry_run || mode == Mode::DryRun,
            drill: drill_by.is_some(),
            phase: Phase::Acting { index: 0 },
            done: Vec::new(),
            veto: None,
            values: self.state.last_values.clone(),
        });
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
