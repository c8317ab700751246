//! Page texts: the core's pages and the daemon's own events (steps,
//! blindness, reloads, unevaluable rules, an unwritable state directory) as
//! [`Notification`]s, and the key that makes each page to each receiver
//! unique, so the outbox can drop a page it already has. Rendering only:
//! which page goes out is decided by the core, and nothing here does I/O.

use std::collections::BTreeMap;

use crate::actions;
use crate::config::Rule;
use crate::notify::Notification;
use crate::rule::{Page, PageEvent, PageKind, Timestamp};

/// The outbox key of `n` to `notifier`: the incident (or the rule, or the
/// event's start for global events), the event, what distinguishes repeats
/// of that event (`extra`: a step), and the receiver.
pub fn page_key(n: &Notification, extra: &str, notifier: &str) -> String {
    let subject = n
        .incident
        .clone()
        .or_else(|| n.rule.clone())
        .unwrap_or_else(|| "ripcord".into());
    format!(
        "{subject}/{}/{}/{extra}/{notifier}",
        n.event.as_str(),
        n.started.0
    )
}

/// A notification about `rule` with its queries, condition and links.
pub fn rule_notification(
    r: &Rule,
    event: PageEvent,
    summary: String,
    at: Timestamp,
    started: Timestamp,
) -> Notification {
    Notification {
        event,
        rule: Some(r.name.clone()),
        incident: None,
        severity: r.severity,
        summary,
        details: Vec::new(),
        values: BTreeMap::new(),
        condition: Some(r.condition.source().to_string()),
        queries: r
            .queries
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        labels: r.labels.clone(),
        runbook_url: r.runbook_url.clone(),
        dashboard_url: r.dashboard_url.clone(),
        resolve: false,
        dry_run: false,
        drill: false,
        started,
        at,
        page_id: String::new(),
    }
}

/// The core's page, as a notification with what it is about.
pub fn page_notification(r: &Rule, p: &Page, started: Timestamp) -> Notification {
    let mut n = rule_notification(r, p.kind.event(), p.summary.clone(), p.at, started);
    // The instance's labels over the rule's: every receiver shows them.
    n.labels
        .extend(p.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    match &p.kind {
        PageKind::RuleUnevaluable { since, error } => {
            n.summary = format!(
                "rule {} cannot be evaluated since {since}: it protects nothing until it can",
                r.name
            );
            n.severity = r.severity.max(crate::config::Severity::Error);
            n.started = *since;
            n.details = vec![
                error.clone(),
                "nothing runs for this rule while it cannot be evaluated".into(),
            ];
            return n;
        }
        PageKind::RuleEvaluable { since } => {
            n.summary = format!(
                "rule {} evaluates again (could not since {since}): it protects again",
                r.name
            );
            n.started = *since;
            n.resolve = true;
            return n;
        }
        _ => {}
    }
    n.incident = Some(p.incident.clone());
    n.values = p.values.clone();
    n.resolve = p.kind.resolves();
    n.dry_run = p.dry_run;
    n.drill = p.drill;
    let id = &p.incident;
    let acts = if r.actions.is_empty() {
        "no actions".to_string()
    } else {
        r.actions.join(", ")
    };
    n.details = match &p.kind {
        PageKind::Opened => vec![format!("incident {id} opened; ripcord will run: {acts}")],
        PageKind::ApprovalRequested { deadline } => vec![
            format!("waiting for approval to run {acts}"),
            format!("approve: ripcord approve {id}    veto: ripcord veto {id}"),
            format!(
                "{} at {deadline} if nobody answers",
                match r.approval.as_ref().map(|a| a.on_timeout) {
                    Some(crate::config::OnTimeout::Abort) => "aborts",
                    _ => "proceeds",
                }
            ),
        ],
        PageKind::Approved { by } => vec![format!("approved by {by}: running {acts}")],
        PageKind::Vetoed { by } => vec![format!("vetoed by {by}: nothing (more) runs")],
        PageKind::ApprovalTimedOut { proceeding: true } => vec![format!("nobody answered: running {acts}")],
        PageKind::ApprovalTimedOut { proceeding: false } => vec!["nobody answered: aborted, nothing runs".into()],
        PageKind::ActionsSucceeded => vec![
            format!("{} {acts}", if p.dry_run { "would have run (dry-run):" } else { "ran:" }),
            match r.verify_within {
                Some(w) => format!("verifying: the condition must clear within {}", actions::fmt_d(w)),
                None => "waiting for the condition to clear".into(),
            },
        ],
        PageKind::ActionFailed { action, error } => {
            vec![format!("{action} failed: {error}"), "later actions were not run".into()]
        }
        PageKind::ActionInterrupted { action } => vec![format!(
            "ripcord stopped while {action} ran; the step is not run again: check its effect by hand"
        )],
        PageKind::BudgetExhausted => vec!["max_actions_per_hour reached: paging instead of acting".into()],
        PageKind::Paused => vec!["ripcord is paused: nothing runs".into()],
        PageKind::Recovered => vec!["the condition cleared: recovered".into()],
        PageKind::Unrecovered => vec!["the condition did not clear after the rollback".into()],
        PageKind::Closed => vec!["the condition cleared; incident closed".into()],
        PageKind::RuleUnevaluable { .. } | PageKind::RuleEvaluable { .. } => vec![],
    };
    n
}

pub fn global_notification(
    event: PageEvent,
    summary: String,
    details: Vec<String>,
    started: Timestamp,
    at: Timestamp,
) -> Notification {
    Notification {
        event,
        rule: None,
        incident: None,
        severity: match event {
            PageEvent::Blind | PageEvent::StateUnwritable | PageEvent::HaCannotAct => {
                crate::config::Severity::Critical
            }
            PageEvent::ReloadFailed | PageEvent::JournalDamaged => crate::config::Severity::Error,
            _ => crate::config::Severity::Info,
        },
        summary,
        details,
        values: BTreeMap::new(),
        condition: None,
        queries: BTreeMap::new(),
        labels: BTreeMap::new(),
        runbook_url: None,
        dashboard_url: None,
        resolve: matches!(
            event,
            PageEvent::Seeing | PageEvent::StateWritable | PageEvent::HaCanAct
        ),
        dry_run: false,
        drill: false,
        started,
        at,
        page_id: String::new(),
    }
}
