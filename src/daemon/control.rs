//! Requests from the control API (status, approve, veto, pause, resume,
//! fire) and the status texts. Whether a request applies is the core's
//! decision (`rule::global`); this file carries it out. It may not change a
//! rule's state other than through the core, nor wait on the network.
use super::*;

impl Engine {
    /// A control request from the API; the answer says what happened.
    pub(super) fn control(&mut self, c: Control) -> Result<String, String> {
        let at = now();
        match c {
            Control::Status => {
                serde_json::to_string(&self.status_snapshot()).map_err(|e| e.to_string())
            }
            Control::Incident { id } => {
                serde_json::to_string(&self.incident_view(&id)?).map_err(|e| e.to_string())
            }
            Control::Rule { name } => {
                serde_json::to_string(&self.rule_view(&name)?).map_err(|e| e.to_string())
            }
            Control::Approve { incident, by } => {
                let (rule, state) = self.incident_state(&incident)?;
                global::may_approve(&incident, &state)?;
                info!(rule = %rule, incident = %incident, by = %by, "approved");
                self.apply(&rule, Input::Approve { by }, at);
                Ok(format!("approved {incident}"))
            }
            Control::Veto { incident, by } => {
                let (rule, state) = self.incident_state(&incident)?;
                let effect = global::may_veto(&incident, &state)?;
                info!(rule = %rule, incident = %incident, by = %by, "vetoed");
                self.apply(&rule, Input::Veto { by }, at);
                Ok(match effect {
                    global::VetoEffect::RunningFinishes => format!(
                        "vetoed {incident}: the running action finishes, nothing after it runs"
                    ),
                    global::VetoEffect::NothingRuns => format!("vetoed {incident}: nothing runs"),
                })
            }
            Control::Pause { for_, reason } => {
                let p = global::pause(&mut self.shared, at, for_, &reason);
                self.journal(Entry::Shared {
                    shared: self.shared.clone(),
                });
                self.event(at, None, EventKind::Pause, format!("paused: {reason}"));
                warn!(until = ?p.until.map(|u| u.rfc3339()), "paused: {reason}");
                Ok(match p.until {
                    Some(u) => {
                        format!("paused until {u}: incidents open and page, actions do not run")
                    }
                    None => {
                        "paused until resumed: incidents open and page, actions do not run".into()
                    }
                })
            }
            Control::Fire { rule, dry_run, by } => {
                let state = self
                    .rules
                    .contains_key(&rule)
                    .then(|| self.states.get(&rule).cloned().unwrap_or_default());
                global::may_fire(&rule, state.as_ref())?;
                warn!(rule = %rule, by = %by, dry_run, "drill: opening an incident by hand");
                self.apply(&rule, Input::Fire { by, dry_run }, at);
                let id = self
                    .states
                    .get(&rule)
                    .and_then(|s| s.incident().map(|i| i.id.clone()))
                    .unwrap_or_default();
                Ok(if dry_run {
                    format!("drill {id} opened (dry-run): steps are resolved and recorded, nothing runs")
                } else {
                    format!("drill {id} opened: the rule's actions run now")
                })
            }
            // Run by the main loop in a task of its own, never here.
            Control::Backtest { .. } => Err("a backtest is not run by the engine".into()),
            Control::Resume => {
                global::resume(&mut self.shared)?;
                self.journal(Entry::Shared {
                    shared: self.shared.clone(),
                });
                self.event(at, None, EventKind::Resume, "resumed".into());
                info!("resumed");
                Ok("resumed".into())
            }
        }
    }

    pub(super) fn status_line(&self) -> String {
        // One pass over the states, each second: a lookup per rule cost
        // 10 000 B-tree searches a second at 10 000 rules (BENCHMARKS.md).
        let (mut firing, mut unevaluable) = (0, 0);
        for (name, s) in &self.states {
            firing += usize::from(s.incident().is_some());
            // A rule's own record, not a `by:` instance's or a removed
            // rule's.
            if s.unevaluable.as_ref().is_some_and(|u| u.paged) && self.rules.contains_key(name) {
                unevaluable += 1;
            }
        }
        let paused = if self.shared.paused(now()) {
            ", PAUSED"
        } else {
            ""
        };
        let mut blind = if self.blind.is_blind() {
            ", Prometheus unreachable".to_string()
        } else {
            String::new()
        };
        if unevaluable > 0 {
            blind.push_str(&format!(", {unevaluable} rule(s) UNEVALUABLE"));
        }
        if let Some((_, why)) = &self.state_problem {
            blind.push_str(&format!(", STATE DIR UNWRITABLE ({why}): nothing runs"));
        }
        if let Some(n) = &self.ha {
            blind.push_str(&format!(", leader of {} as {}", n.prefix, n.name));
        }
        if self.rules.is_empty() {
            return format!("no rules loaded: add rule files and reload{paused}{blind}");
        }
        format!(
            "{} rules, {firing} open incident(s){paused}{blind}",
            self.rules.len()
        )
    }

    /// One instance's row of the status.
    fn rule_status(&self, rule: &Rule, key: String, s: RuleState) -> RuleStatus {
        let since = match &s.status {
            Status::Pending { since, .. } => Some(*since),
            Status::Open(i) => Some(i.opened_at),
            _ => self.recent.get(&key).and_then(|r| r.since),
        };
        RuleStatus {
            data_phase: self.metrics.data_phase(&rule.name),
            file: rule.file.display().to_string(),
            condition: rule.condition.source().to_string(),
            since: since.map(|t| t.rfc3339()),
            recent: self
                .recent
                .get(&key)
                .map(|r| r.series(rule))
                .unwrap_or_default(),
            rule: rule.name.clone(),
            labels: s.labels.clone(),
            name: key,
            state: s.name(),
            phase: s.phase(),
            incident: s.incident().map(|i| i.id.clone()),
            opened_at: s.incident().map(|i| i.opened_at.rfc3339()),
            last_evaluation: s.last_eval.map(|t| t.rfc3339()),
            values: s.values(),
            last_error: s.last_error.clone(),
            unevaluable_since: s
                .unevaluable
                .as_ref()
                .filter(|u| u.paged)
                .map(|u| u.since.rfc3339()),
        }
    }

    /// The rule whose open incident is `incident`, and its state.
    pub(super) fn incident_state(&self, incident: &str) -> Result<(String, RuleState), String> {
        self.states
            .iter()
            .find(|(_, s)| s.incident().is_some_and(|i| i.id == incident))
            .map(|(n, s)| (n.clone(), s.clone()))
            .ok_or_else(|| format!("no open incident {incident}"))
    }

    /// What `status` shows, built when asked: with 10 000 rules a snapshot
    /// is megabytes, too much to rebuild every second for nobody.
    pub(super) fn status_snapshot(&self) -> Snapshot {
        let at = now();
        let outbox_pages = self.outbox.lock().map(|o| o.len()).unwrap_or(0);
        Snapshot {
            ha: self.ha.as_ref().map(|n| n.status()),
            version: crate::LONG_VERSION.into(),
            rules: self
                .rules
                .iter()
                .flat_map(|(name, rule)| {
                    // Each instance; a rule not evaluated yet shows as one.
                    let mut rows: Vec<(String, RuleState)> =
                        crate::rule::instances::of_rule(&self.states, name)
                            .map(|(k, s)| (k.clone(), s.clone()))
                            .collect();
                    if rows.is_empty() {
                        rows.push((name.clone(), RuleState::default()));
                    }
                    rows.into_iter()
                        .map(|(key, s)| self.rule_status(rule, key, s))
                        .collect::<Vec<_>>()
                })
                .collect(),
            paused: self
                .shared
                .pause
                .as_ref()
                .filter(|_| self.shared.paused(at))
                .map(|p| crate::api::PauseStatus {
                    until: p.until.map(|u| u.rfc3339()),
                    reason: p.reason.clone(),
                }),
            mode: match self.shared.mode {
                crate::config::Mode::Enforce => "enforce".into(),
                crate::config::Mode::DryRun => "dry-run".into(),
            },
            actions_left_this_hour: self.shared.budget.clone().remaining(at),
            outbox_pages,
            prometheus_up: !self.blind.is_blind(),
            blind_since: self.blind.since.map(|t| t.rfc3339()),
            last_reload: self.last_reload.clone(),
            state_dir_problem: self
                .state_problem
                .as_ref()
                .map(|(since, why)| format!("since {since}: {why}")),
            pending_removals: self
                .pending_removals
                .iter()
                .map(|(rule, since)| {
                    format!("rule {rule} (missing since {since}): its incident is open")
                })
                .collect(),
        }
    }
}
