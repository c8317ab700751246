//! The core's vocabulary: what a rule's state is (status, phase,
//! incident), what can happen to it (inputs), what it decides (effects:
//! pages, records, actions to run) and the daemon-wide state every rule
//! shares (the action budget, a pause). Data only; the decisions are in
//! [`super::machine`] and [`super::global`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

pub use crate::clock::Timestamp;

use serde::{Deserialize, Serialize};

use super::names::{PageEvent, PhaseName, StateName};
use crate::config::{Mode, NoData, Rule};

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

    /// Gives back the action taken at `at` (an incident that joined
    /// another's run of the same steps runs nothing).
    pub fn refund(&mut self, at: Timestamp) {
        if let Some(i) = self.started.iter().rposition(|t| *t == at) {
            self.started.remove(i);
        }
    }
}

/// One run of an action's resolved steps, which other incidents whose
/// steps resolve the same join instead of running them again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedRun {
    /// A digest of the resolved steps: same kind, same fields.
    pub steps: String,
    pub action: String,
    /// The incident that ran it.
    pub incident: String,
    pub at: Timestamp,
    /// `None` while it runs; whether it succeeded once done.
    pub ok: Option<bool>,
}

/// State shared by all rules: the budget, the pause and the global mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub budget: ActionBudget,
    pub pause: Option<Pause>,
    pub mode: Mode,
    /// Runs of resolved steps in the last day, for incidents to join.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<SharedRun>,
}

impl Shared {
    pub fn new(max_actions_per_hour: u32, mode: Mode) -> Shared {
        Shared {
            budget: ActionBudget::new(max_actions_per_hour),
            pause: None,
            mode,
            runs: Vec::new(),
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
    /// Boxed: most states are not open, and a state is kept per rule and
    /// instance (an incident inline made every state 160 bytes larger).
    Open(Box<Incident>),
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
    /// (A sorted vector: a B-tree allocates room for eleven entries for
    /// the one or two a rule has, 456 bytes a state.)
    pub last_values: litemap::LiteMap<String, Option<f64>>,
    /// Why the last evaluation could not decide, if it could not.
    pub last_error: Option<String>,
    pub last_incident: Option<String>,
    /// Set while the rule's own evaluations fail.
    /// (Boxed: rare, and a state is kept per rule and instance.)
    #[serde(default)]
    pub unevaluable: Option<Box<Unevaluable>>,
    /// The instance's labels, for a `by:` or alert-style rule (empty: the
    /// rule's own instance).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl RuleState {
    /// The last values as a sorted map, for pages, records and status.
    pub fn values(&self) -> BTreeMap<String, Option<f64>> {
        self.last_values
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The state's name as users see it in `status`, tests and pages.
    pub fn name(&self) -> StateName {
        match &self.status {
            Status::Ok => StateName::Ok,
            Status::Pending { .. } => StateName::Pending,
            Status::Open(i) => match i.phase {
                Phase::Unrecovered(_) => StateName::Unrecovered,
                _ => StateName::Firing,
            },
            Status::Cooldown {
                outcome: Outcome::Recovered,
                ..
            } => StateName::Recovered,
            Status::Cooldown { .. } => StateName::Closed,
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
    pub fn phase(&self) -> PhaseName {
        match &self.status {
            Status::Open(i) => match &i.phase {
                Phase::AwaitingApproval { .. } => PhaseName::AwaitingApproval,
                Phase::Acting { .. } => PhaseName::Acting,
                Phase::Verifying { .. } => PhaseName::Verifying,
                Phase::Unrecovered(UnrecoveredReason::VerifyTimedOut) => PhaseName::VerifyTimedOut,
                Phase::Unrecovered(UnrecoveredReason::ActionFailed { .. }) => {
                    PhaseName::ActionFailed
                }
                Phase::Unrecovered(UnrecoveredReason::Interrupted { .. }) => PhaseName::Interrupted,
                Phase::Halted(HaltReason::Vetoed { .. }) => PhaseName::Vetoed,
                Phase::Halted(HaltReason::Aborted) => PhaseName::Aborted,
                Phase::Halted(HaltReason::BudgetExhausted) => PhaseName::BudgetExhausted,
                Phase::Halted(HaltReason::Paused) => PhaseName::Paused,
            },
            Status::Ok => PhaseName::Ok,
            Status::Pending { .. } => PhaseName::Pending,
            Status::Cooldown {
                outcome: Outcome::Recovered,
                ..
            } => PhaseName::Recovered,
            Status::Cooldown { .. } => PhaseName::Closed,
        }
    }

    /// The phase is the incident's own, not the state's name.
    pub fn in_incident_phase(&self) -> bool {
        matches!(self.status, Status::Open(_))
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
    pub fn event(&self) -> PageEvent {
        match self {
            PageKind::Opened => PageEvent::Opened,
            PageKind::ApprovalRequested { .. } => PageEvent::ApprovalRequested,
            PageKind::Approved { .. } => PageEvent::Approved,
            PageKind::Vetoed { .. } => PageEvent::Vetoed,
            PageKind::ApprovalTimedOut { .. } => PageEvent::ApprovalTimedOut,
            PageKind::ActionsSucceeded => PageEvent::ActionsSucceeded,
            PageKind::ActionFailed { .. } => PageEvent::ActionFailed,
            PageKind::ActionInterrupted { .. } => PageEvent::ActionInterrupted,
            PageKind::BudgetExhausted => PageEvent::BudgetExhausted,
            PageKind::Paused => PageEvent::Paused,
            PageKind::Recovered => PageEvent::Recovered,
            PageKind::Unrecovered => PageEvent::Unrecovered,
            PageKind::Closed => PageEvent::Closed,
            PageKind::RuleUnevaluable { .. } => PageEvent::RuleUnevaluable,
            PageKind::RuleEvaluable { .. } => PageEvent::RuleEvaluable,
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
    /// The instance's labels (empty for a rule without `by:`).
    pub labels: BTreeMap<String, String>,
    pub dry_run: bool,
    pub drill: bool,
    pub at: Timestamp,
}

/// Events worth a log line and a journal entry that are not pages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Transition {
        from: StateName,
        to: StateName,
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
