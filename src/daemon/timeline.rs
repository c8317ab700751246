//! One incident's timeline for the web page, read from the journal: the
//! events of its rule while it was open (transitions, phases, pages), its
//! steps with their command and output, and each page with whether it
//! still waits in the outbox. Reads only; what the journal no longer holds
//! (it is compacted at start and when it grows) is said, not invented.
use super::*;
use crate::api::{IncidentView, RuleView, TimelineRow};

/// A rule's definition (its fingerprint: the canonical JSON of what was
/// written) as YAML, in the order written.
fn as_yaml(fingerprint: &str) -> String {
    serde_json::from_str::<serde_yaml::Value>(fingerprint)
        .ok()
        .and_then(|v| serde_yaml::to_string(&v).ok())
        .unwrap_or_else(|| fingerprint.to_string())
}

impl Engine {
    /// `name` as loaded: settings, queries, actions with their steps as
    /// they would run, and the incidents the journal holds.
    pub(super) fn rule_view(&self, name: &str) -> Result<RuleView, String> {
        let r = self
            .rules
            .get(name)
            .ok_or_else(|| format!("unknown rule `{name}`"))?;
        let state = self.states.get(name).cloned().unwrap_or_default();
        let d = crate::actions::fmt_d;
        let mut settings = vec![
            (
                "schedule".to_string(),
                match &r.schedule {
                    Schedule::Every(e) => format!("every {}", d(*e)),
                    Schedule::Cron(expr, _) => format!("cron {expr}"),
                },
            ),
            ("condition".into(), r.condition.source().to_string()),
            ("for".into(), d(r.for_)),
            ("no_data".into(), format!("{:?}", r.no_data).to_lowercase()),
            ("severity".into(), r.severity.as_str().into()),
            ("summary".into(), r.summary.source().to_string()),
            ("notify".into(), r.notify.join(", ")),
            ("cooldown".into(), d(r.cooldown)),
        ];
        if let Schedule::Every(_) = r.schedule {
            // Where its evaluations go against the data's scrapes.
            settings.insert(
                1,
                (
                    "evaluation timing".into(),
                    self.metrics.data_phase(name).unwrap_or_else(|| {
                        "not learned yet: on the multiples of the interval".into()
                    }),
                ),
            );
        }
        if let Some(a) = &r.approval {
            settings.push((
                "approval".into(),
                format!("within {}, then {:?}", d(a.timeout), a.on_timeout).to_lowercase(),
            ));
        }
        if let Some(v) = r.verify_within {
            settings.push(("verify within".into(), d(v)));
        }
        if let Some(m) = r.mode {
            settings.push(("mode".into(), format!("{m:?}").to_lowercase()));
        }
        for (k, v) in &r.labels {
            settings.push((format!("label {k}"), v.clone()));
        }
        let actions = r
            .actions
            .iter()
            .map(|a| {
                let steps = self
                    .actions
                    .get(a)
                    .map(|act| act.steps.iter().map(|s| s.describe()).collect())
                    .unwrap_or_default();
                (a.clone(), steps)
            })
            .collect();
        let entries = crate::fsio::blocking(|| crate::journal::read_all(&self.dir))
            .map_err(|e| format!("cannot read the journal: {}", state_dir::describe(&e)))?;
        let mut incidents: Vec<String> = Vec::new();
        for e in entries.iter().rev() {
            if let Entry::State { rule, state, .. } = e {
                if let (true, Status::Open(i)) = (rule == name, &state.status) {
                    if !incidents.contains(&i.id) {
                        incidents.push(i.id.clone());
                    }
                }
            }
        }
        for id in crate::fsio::blocking(|| crate::archive::of_rule(&self.dir, name)) {
            if !incidents.contains(&id) {
                incidents.push(id);
            }
        }
        // Newest first: ids end in their opening time.
        incidents.sort_by(|a, b| b.cmp(a));
        incidents.truncate(20);
        Ok(RuleView {
            name: name.to_string(),
            state: state.name().as_str().into(),
            phase: state.phase().as_str().into(),
            incident: state.incident().map(|i| i.id.clone()),
            settings,
            queries: r
                .queries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            actions,
            incidents,
            file: r.file.display().to_string(),
            yaml: as_yaml(&r.fingerprint),
            instances: crate::rule::instances::of_rule(&self.states, name)
                .filter(|(k, _)| k.as_str() != name)
                .take(500)
                .map(|(k, s)| {
                    (
                        k.clone(),
                        s.name().as_str().to_string(),
                        s.incident().map(|i| i.id.clone()),
                    )
                })
                .collect(),
        })
    }

    pub(super) fn incident_view(&self, id: &str) -> Result<IncidentView, String> {
        // What the archive kept from before the journal's compactions, then
        // the journal.
        let mut entries =
            crate::fsio::blocking(|| crate::archive::read(&self.dir, id)).map_err(|e| {
                format!(
                    "cannot read the incident archive: {}",
                    state_dir::describe(&e)
                )
            })?;
        let journal = crate::fsio::blocking(|| crate::journal::read_all(&self.dir))
            .map_err(|e| format!("cannot read the journal: {}", state_dir::describe(&e)))?;
        // The compacted journal repeats the incident's latest state line,
        // without pages: it adds no row twice.
        entries.extend(journal);
        let (rule, opened_at, values) = entries
            .iter()
            .find_map(|e| match e {
                Entry::State { rule, state, .. } => match &state.status {
                    Status::Open(i) if i.id == id => {
                        Some((rule.clone(), i.opened_at, i.values.clone()))
                    }
                    _ => None,
                },
                _ => None,
            })
            .ok_or_else(|| format!("no incident {id} in the journal or the incident archive (which keeps the newest {})", crate::archive::KEEP))?;
        // The rule's next incident, if any, ends this one's window of events.
        let next_opened = entries.iter().find_map(|e| match e {
            Entry::State { rule: r, state, .. } if *r == rule => match &state.status {
                Status::Open(i) if i.id != id && i.opened_at > opened_at => Some(i.opened_at),
                _ => None,
            },
            _ => None,
        });
        let mut rows: Vec<(Timestamp, TimelineRow)> = Vec::new();
        let row = |kind: &str, what: String, detail: String, ok: Option<bool>| TimelineRow {
            at: String::new(),
            kind: kind.into(),
            what,
            detail,
            ok,
        };
        let outbox = self.outbox.lock().ok();
        let mut first_event = None;
        for e in &entries {
            match e {
                Entry::Event {
                    at,
                    rule: Some(r),
                    kind,
                    text,
                } if *r == rule
                    && *at >= opened_at
                    && next_opened.is_none_or(|n| *at < n)
                    && *kind != EventKind::Hold =>
                {
                    first_event.get_or_insert(*at);
                    rows.push((*at, row("event", text.clone(), String::new(), None)));
                }
                Entry::StepIntent {
                    at,
                    incident,
                    action,
                    step,
                    describe,
                    dry_run,
                    ..
                } if incident == id => rows.push((
                    *at,
                    row(
                        "step",
                        format!(
                            "{action} step {} {}",
                            step + 1,
                            if *dry_run {
                                "resolved (dry-run)"
                            } else {
                                "started"
                            }
                        ),
                        describe.clone(),
                        None,
                    ),
                )),
                Entry::StepResult {
                    at,
                    incident,
                    action,
                    step,
                    outcome,
                    ..
                } if incident == id => rows.push((
                    *at,
                    row(
                        "step",
                        format!(
                            "{action} step {} {}: {}",
                            step + 1,
                            if outcome.ok { "succeeded" } else { "FAILED" },
                            outcome.summary
                        ),
                        outcome.output.clone(),
                        Some(outcome.ok),
                    ),
                )),
                Entry::State { pages, .. } => {
                    for p in pages
                        .iter()
                        .filter(|p| p.notification.incident.as_deref() == Some(id))
                    {
                        let delivery = match outbox.as_ref().and_then(|o| o.waiting(&p.key)) {
                            Some((attempts, err)) => format!(
                                "waiting in the outbox ({attempts} failed attempts{})",
                                err.map(|e| format!("; last: {e}")).unwrap_or_default()
                            ),
                            None => "sent (or given up: see the log)".into(),
                        };
                        rows.push((
                            p.notification.at,
                            row(
                                "page",
                                format!("page {} → {}", p.notification.event, p.notifier),
                                delivery,
                                None,
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        rows.sort_by_key(|(at, _)| *at);
        let current = self
            .states
            .get(&rule)
            .filter(|s| s.incident().is_some_and(|i| i.id == id));
        let r = self.rules.get(crate::rule::instances::rule_of(&rule));
        Ok(IncidentView {
            id: id.to_string(),
            rule: rule.clone(),
            opened_at: opened_at.rfc3339(),
            state: current.map(|s| s.name().as_str().to_string()),
            phase: current.map(|s| s.phase().as_str().to_string()),
            values: crate::rule::template::fmt_values(&values).join(" "),
            condition: r
                .map(|r| r.condition.source().to_string())
                .unwrap_or_default(),
            queries: r
                .map(|r| {
                    r.queries
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            partial: first_event.is_none_or(|t| t > opened_at.plus(Duration::from_secs(60))),
            rows: rows
                .into_iter()
                .map(|(at, mut r)| {
                    r.at = at.rfc3339();
                    r
                })
                .collect(),
        })
    }
}
