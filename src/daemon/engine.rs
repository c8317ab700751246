//! The engine: the one task that owns every rule's state. It steps the
//! pure core with each input, commits what changed (state, budget and pages
//! in one journal write), hands pages to the outbox and starts actions. It
//! may not wait on I/O other than its own synced journal and outbox writes.
use super::*;

pub(super) struct Engine {
    pub(super) rules: BTreeMap<String, Arc<Rule>>,
    pub(super) actions: BTreeMap<String, Arc<Action>>,
    pub(super) states: BTreeMap<String, RuleState>,
    pub(super) shared: Shared,
    pub(super) journal: Arc<Mutex<Journal>>,
    /// One lock per action: two incidents never run the same action at
    /// once; a waiting one starts when the holder's action is done.
    pub(super) locks: Locks<Start>,
    pub(super) running: JoinSet<()>,
    pub(super) tx: mpsc::Sender<Msg>,
    /// Last no-data or error reason per rule, so a steady condition is
    /// journaled once, not on every evaluation.
    pub(super) last_reason: HashMap<String, String>,
    pub(super) blind: Blindness,
    pub(super) blind_after: Duration,
    pub(super) notifiers: BTreeMap<String, Arc<crate::config::Notifier>>,
    /// The same map, shared with the delivery task (swapped on reload).
    pub(super) shared_notifiers:
        Arc<std::sync::RwLock<BTreeMap<String, Arc<crate::config::Notifier>>>>,
    /// When an evaluation last reported back (the watchdog's evidence).
    pub(super) last_progress: std::time::Instant,
    pub(super) outbox: Arc<Mutex<Outbox>>,
    pub(super) wake: Arc<tokio::sync::Notify>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) last_reload: Option<crate::api::ReloadStatus>,
    /// The state directory, and since when and why it cannot be written.
    pub(super) dir: std::path::PathBuf,
    pub(super) state_problem: Option<(Timestamp, String)>,
    pub(super) last_probe: std::time::Instant,
    /// Set when ripcord begins to stop: running steps finish, no new step
    /// starts.
    pub(super) stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Rules a reload would remove while their incident is open: since when
    /// they have been missing. Held back until `reload.removal_delay`.
    pub(super) pending_removals: BTreeMap<String, Timestamp>,
    /// Incident → the digest of the resolved steps it runs (claimed in
    /// `shared.runs`), until its result comes.
    pub(super) claimed: HashMap<String, String>,
    /// Incident running some steps → the (key, incident, action) of those
    /// that joined that run and wait for its result.
    pub(super) joiners: HashMap<String, Vec<(String, String, String)>>,
    /// Each rule's or instance's state change and last evaluations, as
    /// `status` and the web page show them.
    pub(super) recent: HashMap<String, recent::Recent>,
    /// The group this instance leads, with `ha:`.
    pub(super) ha: Option<Arc<crate::ha::Node>>,
}

/// An action ready to start for an incident, once it holds its lock.
pub(super) struct Start {
    action: Arc<Action>,
    ctx: StepContext,
    dry_run: bool,
}

/// Appends `e` and syncs it, off the async workers (an fsync can take a
/// while on a busy disk; other tasks keep running meanwhile).
pub(super) fn journal_append(journal: &Mutex<Journal>, e: &Entry) -> bool {
    match journal.lock() {
        Ok(mut j) => match crate::fsio::blocking(|| j.append(e)) {
            Ok(()) => true,
            Err(err) => {
                error!("journal write failed: {err}");
                false
            }
        },
        Err(_) => false,
    }
}

impl Engine {
    pub(super) fn journal(&self, e: Entry) -> bool {
        journal_append(&self.journal, &e)
    }

    pub(super) fn event(&self, at: Timestamp, rule: Option<&str>, kind: EventKind, text: String) {
        self.journal(Entry::Event {
            at,
            rule: rule.map(str::to_string),
            kind,
            text,
        });
    }

    /// Steps the core for `name` and carries out what it decided. The new
    /// state, the shared state and the pages it produced are committed to
    /// the journal in one synced write before anything else happens; only
    /// then do the pages reach the outbox and the actions start. If that
    /// write fails, no action starts: each is reported failed, and pages go
    /// out from memory.
    pub(super) fn apply(&mut self, name: &str, input: Input, at: Timestamp) {
        // `name` is an instance's key: the rule's name, or `rule{...}`.
        let Some(rule) = self.rules.get(instances::rule_of(name)).cloned() else {
            return;
        };
        // Taken, not copied (the hot path with many instances): nothing
        // below reads `states` before the new state is put back.
        let old = self
            .states
            .get_mut(name)
            .map(std::mem::take)
            .unwrap_or_default();
        let old_shared = self.shared.clone();
        let (new, effects) = rule::step(&rule, &old, &mut self.shared, input, at);
        let moved = new.name() != old.name();
        if moved {
            self.metrics.set_state(name, new.name());
        }
        if moved || new.last_eval != old.last_eval {
            let recent = match self.recent.get_mut(name) {
                Some(r) => r,
                None => self.recent.entry(name.to_string()).or_default(),
            };
            if moved {
                recent.since = Some(at);
            }
            if new.last_eval != old.last_eval {
                recent.push(&rule, &new.last_values);
            }
        }
        let started = new
            .incident()
            .or(old.incident())
            .map_or(at, |i| i.opened_at);
        let mut pages = Vec::new();
        let mut rest = Vec::new();
        for e in effects {
            match e {
                Effect::Page(p) => {
                    warn!(rule = name, incident = %p.incident, kind = %p.kind.event(), notifiers = ?p.notifiers, "page: {}", p.summary);
                    let n = page_notification(&rule, &p, started);
                    let targets = if p.notifiers.is_empty() {
                        self.notifiers.keys().cloned().collect()
                    } else {
                        p.notifiers.clone()
                    };
                    pages.extend(self.queued(&targets, &n, ""));
                    rest.push(Effect::Page(p));
                }
                e => rest.push(e),
            }
        }
        let shared_changed = self.shared != old_shared;
        let commits_pages = !pages.is_empty();
        let committed = if new.status != old.status
            || new.last_incident != old.last_incident
            || new.unevaluable != old.unevaluable
            || shared_changed
            || !pages.is_empty()
        {
            self.journal(Entry::State {
                rule: name.to_string(),
                state: Box::new(new.clone()),
                shared: shared_changed.then(|| self.shared.clone()),
                pages: pages.clone(),
            })
        } else {
            true
        };
        if commits_pages {
            crate::notify::outbox::crash_point("state_committed");
        }
        // A phase change inside an open incident (acting → budget_exhausted,
        // → action_failed, → vetoed) is said even when nobody is paged.
        if new.phase() != old.phase() && new.in_incident_phase() {
            let text = format!("phase {} → {}", old.phase(), new.phase());
            info!(rule = name, "{text}");
            self.event(at, Some(name), EventKind::Phase, text);
        }
        // What the effects below need of the new state (most evaluations
        // have none).
        let (values, labels) = if rest.is_empty() {
            Default::default()
        } else {
            (new.values(), new.labels.clone())
        };
        match self.states.get_mut(name) {
            Some(slot) => *slot = new,
            None => {
                self.states.insert(name.to_string(), new);
            }
        }
        self.push_pages(pages);
        if commits_pages {
            crate::notify::outbox::crash_point("pages_pushed");
        }
        // No step runs unless its record can be written: the commit above
        // worked, and the directory takes a new synced file right now (a
        // full disk can still take a few bytes in a file's last block).
        let runs = rest.iter().any(|e| matches!(e, Effect::RunAction { .. }));
        let committed = committed
            && self.state_problem.is_none()
            && (!runs
                || match crate::fsio::blocking(|| state_dir::probe(&self.dir)) {
                    Ok(()) => true,
                    Err(e) => {
                        self.state_dir_failed(
                            at,
                            format!("a probe write failed: {}", state_dir::describe(&e)),
                        );
                        false
                    }
                });
        for e in rest {
            match e {
                Effect::Record(r) => self.record(name, at, r, &values),
                Effect::Page(p) => self.event(
                    at,
                    Some(name),
                    EventKind::Page,
                    format!(
                        "{} → {}: {}",
                        p.kind.event(),
                        p.notifiers.join(","),
                        p.summary
                    ),
                ),
                Effect::RunAction {
                    incident,
                    action,
                    dry_run,
                } if committed => self.start_action(
                    &rule,
                    (name, &labels),
                    incident,
                    action,
                    dry_run,
                    values.clone(),
                    at,
                ),
                Effect::RunAction {
                    incident, action, ..
                } => {
                    let why = self
                        .state_problem
                        .as_ref()
                        .map(|(_, why)| why.clone())
                        .or_else(|| self.journal.lock().ok().and_then(|j| j.failing.clone()))
                        .unwrap_or_else(|| "unknown error".into());
                    error!(rule = name, incident = %incident, "{action} not run: the journal cannot be written ({why})");
                    let _ = self.tx.try_send(Msg::ActionDone {
                        rule: name.to_string(),
                        incident,
                        action,
                        result: ActionResult::Failed(format!(
                            "not run: ripcord cannot write its journal under {} ({why}), and never acts without a durable record",
                            self.dir.display()
                        )),
                    });
                }
            }
        }
        self.check_state_dir(at);
    }

    /// `n` for each of `targets` that wants it, with its outbox key.
    pub(super) fn queued(
        &self,
        targets: &[String],
        n: &Notification,
        extra: &str,
    ) -> Vec<QueuedPage> {
        targets
            .iter()
            .filter(|t| {
                self.notifiers
                    .get(*t)
                    .is_some_and(|notifier| notify::wants(notifier, n))
            })
            .map(|t| {
                let key = page_key(n, extra, t);
                let mut notification = n.clone();
                notification.page_id = crate::notify::outbox::key_hash(&key);
                QueuedPage {
                    key,
                    notifier: t.clone(),
                    notification,
                }
            })
            .collect()
    }

    /// Puts pages in the outbox (synced before any delivery attempt; one
    /// it already has is skipped). A page that cannot be written is still
    /// delivered from memory, and the state directory is reported.
    pub(super) fn push_pages(&mut self, pages: Vec<QueuedPage>) {
        if pages.is_empty() {
            return;
        }
        let mut failed = None;
        if let Ok(mut outbox) = self.outbox.lock() {
            // Each page is a synced file: written off the async workers.
            crate::fsio::blocking(|| {
                for (i, p) in pages.into_iter().enumerate() {
                    let at = p.notification.at;
                    if let Err(e) = outbox.push_keyed(&p.key, &p.notifier, p.notification, at) {
                        error!(notifier = %p.notifier, "cannot write the page to the outbox, delivering it from memory: {}", state_dir::describe(&e));
                        failed = Some(state_dir::describe(&e));
                    }
                    if i == 0 {
                        crate::notify::outbox::crash_point("page_pushed");
                    }
                }
            });
        }
        self.wake.notify_one();
        if let Some(e) = failed {
            self.state_dir_failed(
                crate::clock::now(),
                format!("the outbox cannot be written: {e}"),
            );
        }
    }

    /// Queues `n` for each named notifier that wants it.
    pub(super) fn notify(&mut self, targets: &[String], n: Notification) {
        self.notify_keyed(targets, n, "");
    }

    pub(super) fn notify_keyed(&mut self, targets: &[String], n: Notification, extra: &str) {
        let pages = self.queued(targets, &n, extra);
        self.push_pages(pages);
    }

    /// Every notifier: for events about ripcord itself.
    pub(super) fn notify_all(&mut self, n: Notification) {
        let all: Vec<String> = self.notifiers.keys().cloned().collect();
        self.notify(&all, n);
    }

    pub(super) fn step_page(
        &mut self,
        rule: &str,
        incident: &str,
        action: &str,
        step: usize,
        describe: &str,
        outcome: Option<&StepOutcome>,
    ) {
        let Some(r) = self.rules.get(rule) else {
            return;
        };
        let inc = self.states.get(rule).and_then(|s| s.incident().cloned());
        let (event, summary) =
            global::step_page(action, step, outcome.map(|o| (o.ok, o.summary.as_str())));
        let mut details = vec![describe.to_string()];
        if let Some(o) = outcome.filter(|o| !o.output.is_empty()) {
            let lines: Vec<&str> = o.output.lines().collect();
            let tail = lines[lines.len().saturating_sub(10)..].join("\n");
            details.push(format!("output (tail):\n{tail}"));
        }
        let now = now();
        let mut n = rule_notification(
            r,
            event,
            summary,
            now,
            inc.as_ref().map_or(now, |i| i.opened_at),
        );
        n.incident = Some(incident.to_string());
        n.details = details;
        n.values = inc.map(|i| i.values).unwrap_or_default();
        let targets = r.notify.clone();
        self.notify_keyed(&targets, n, &format!("{action}#{step}"));
    }

    pub(super) fn record(
        &mut self,
        rule: &str,
        at: Timestamp,
        r: Record,
        values: &BTreeMap<String, Option<f64>>,
    ) {
        let vals: Vec<String> = crate::rule::template::fmt_values(values);
        match &r {
            Record::NoData { .. } | Record::EvaluationFailed { .. } => {
                let text = r.to_string();
                if self.last_reason.get(rule) != Some(&text) {
                    warn!(rule, "{text}");
                    self.event(at, Some(rule), EventKind::Hold, text.clone());
                    self.last_reason.insert(rule.to_string(), text);
                }
                return;
            }
            Record::Transition { .. } => info!(rule, values = %vals.join(" "), "{r}"),
            _ => info!(rule, "{r}"),
        }
        self.last_reason.remove(rule);
        self.event(
            at,
            Some(rule),
            EventKind::Record,
            format!("{r} ({})", vals.join(" ")),
        );
    }

    /// Starts `action_name` for `incident` once it holds the action's lock
    /// (at once if nobody else runs that action).
    /// Starts `action_name` for `incident` of instance `key`: its steps
    /// with the instance's labels in them (a refused label value fails the
    /// action: nothing runs), then — unless another incident runs or ran
    /// the same resolved steps, which it joins — under the action's lock.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_action(
        &mut self,
        rule: &Rule,
        (key, labels): (&str, &BTreeMap<String, String>),
        incident: String,
        action_name: String,
        dry_run: bool,
        values: BTreeMap<String, Option<f64>>,
        at: Timestamp,
    ) {
        let done = |result: ActionResult| Msg::ActionDone {
            rule: key.to_string(),
            incident: incident.clone(),
            action: action_name.clone(),
            result,
        };
        let Some(action) = self.actions.get(&action_name).cloned() else {
            // Cannot happen for a loaded rule set; reported, not panicked on.
            let _ = self.tx.try_send(done(ActionResult::Failed(format!(
                "unknown action {action_name}"
            ))));
            return;
        };
        let action = match actions::labels::resolve(&action, labels) {
            Ok(a) => a,
            Err(why) => {
                error!(rule = %key, incident = %incident, "{action_name} not run: {why}");
                self.refund(at, dry_run);
                let _ = self.tx.try_send(done(ActionResult::Failed(why)));
                return;
            }
        };
        if !dry_run {
            let steps = actions::labels::steps_digest(&action);
            match global::claim(
                &mut self.shared,
                &steps,
                &action_name,
                &incident,
                at,
                rule.cooldown,
            ) {
                global::Claim::Run => {
                    self.journal(Entry::Shared {
                        shared: self.shared.clone(),
                    });
                    self.claimed.insert(incident.clone(), steps);
                }
                global::Claim::JoinRunning { incident: with } => {
                    let text = format!("{action_name}: the same steps run now for incident {with}: joined, not run again");
                    info!(rule = %key, incident = %incident, "{text}");
                    self.event(at, Some(key), EventKind::Record, text);
                    self.refund(at, dry_run);
                    self.joiners.entry(with).or_default().push((
                        key.to_string(),
                        incident.clone(),
                        action_name.clone(),
                    ));
                    return;
                }
                global::Claim::AlreadyRan {
                    incident: with,
                    at: ran,
                    ok,
                } => {
                    let text = format!(
                        "{action_name}: the same steps ran at {} for incident {with} ({}): joined, not run again",
                        ran.rfc3339(),
                        if ok { "succeeded" } else { "failed" }
                    );
                    info!(rule = %key, incident = %incident, "{text}");
                    self.event(at, Some(key), EventKind::Record, text);
                    self.refund(at, dry_run);
                    let result = if ok {
                        ActionResult::Succeeded
                    } else {
                        ActionResult::Failed(format!(
                            "the same steps failed for incident {with} at {}; not run again",
                            ran.rfc3339()
                        ))
                    };
                    let _ = self.tx.try_send(done(result));
                    return;
                }
            }
        }
        let start = Start {
            action,
            ctx: StepContext {
                rule: rule.name.clone(),
                key: key.to_string(),
                labels: labels.clone(),
                incident: incident.clone(),
                values,
            },
            dry_run,
        };
        match self.locks.acquire(&action_name, &incident, start) {
            Some(start) => self.spawn_action(start),
            None => {
                info!(rule = %key, incident = %incident, "{action_name} waits for another incident's run of it to finish")
            }
        }
    }

    /// Gives back the budget an action start took at `at` when it runs
    /// nothing, and commits it.
    fn refund(&mut self, at: Timestamp, dry_run: bool) {
        if dry_run {
            return;
        }
        self.shared.budget.refund(at);
        self.journal(Entry::Shared {
            shared: self.shared.clone(),
        });
    }

    fn spawn_action(&mut self, start: Start) {
        let tx = self.tx.clone();
        let journal = self.journal.clone();
        let stopping = self.stopping.clone();
        self.running.spawn(async move {
            let Start {
                action,
                ctx,
                dry_run,
            } = start;
            let result = run_action(&action, &ctx, dry_run, &journal, &tx, &stopping).await;
            let _ = tx
                .send(Msg::ActionDone {
                    rule: ctx.key,
                    incident: ctx.incident,
                    action: action.name.clone(),
                    result,
                })
                .await;
        });
    }

    pub(super) fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Step {
                rule,
                incident,
                action,
                step,
                describe,
                outcome,
            } => self.step_page(&rule, &incident, &action, step, &describe, outcome.as_ref()),
            Msg::Evaluated { rule, at, eval } => self.evaluated(&rule, at, &eval),
            Msg::ActionDone {
                rule,
                incident,
                action,
                result,
            } => {
                let r = match &result {
                    ActionResult::Succeeded => "succeeded",
                    ActionResult::Failed(_) => "failed",
                    ActionResult::Interrupted => "interrupted",
                };
                self.metrics
                    .actions
                    .get_or_create(&ActionLabels {
                        action: action.clone(),
                        result: r.into(),
                    })
                    .inc();
                // Incidents that joined this run get its result too.
                if let Some(steps) = self.claimed.remove(&incident) {
                    let ok = matches!(result, ActionResult::Succeeded);
                    global::finish(&mut self.shared, &steps, &incident, ok);
                    self.journal(Entry::Shared {
                        shared: self.shared.clone(),
                    });
                }
                for (key, joined, act) in self.joiners.remove(&incident).unwrap_or_default() {
                    let r = match &result {
                        ActionResult::Succeeded => ActionResult::Succeeded,
                        ActionResult::Failed(e) => ActionResult::Failed(format!(
                            "the run it joined (incident {incident}) failed: {e}"
                        )),
                        ActionResult::Interrupted => ActionResult::Interrupted,
                    };
                    self.apply(
                        &key,
                        Input::ActionFinished {
                            incident: joined,
                            action: act,
                            result: r,
                        },
                        now(),
                    );
                }
                self.apply(
                    &rule,
                    Input::ActionFinished {
                        incident: incident.clone(),
                        action: action.clone(),
                        result,
                    },
                    now(),
                );
                if let Some(next) = self.locks.release(&action, &incident) {
                    self.spawn_action(next);
                }
            }
        }
    }

    /// One evaluation of `rule`: blindness, metrics, then each instance's
    /// step; instances the answers no longer name are forgotten once
    /// nothing of them is open or counting.
    fn evaluated(&mut self, rule: &str, at: Timestamp, eval: &Evaluation) {
        self.last_progress = std::time::Instant::now();
        self.blindness(at, eval.blinding());
        self.metrics
            .count_evaluation(rule, !matches!(eval, Evaluation::Answers(_)));
        self.metrics
            .prometheus_up
            .set(i64::from(eval.blinding().is_none()));
        let Some(r) = self.rules.get(rule).cloned() else {
            return;
        };
        let seen = {
            let known: Vec<&BTreeMap<String, String>> = instances::of_rule(&self.states, rule)
                .map(|(_, s)| &s.labels)
                .collect();
            instances::split(&r, eval, &known)
        };
        for mut seen in seen {
            if !self.states.contains_key(&seen.key) {
                self.states.insert(
                    seen.key.clone(),
                    RuleState {
                        labels: seen.labels.clone(),
                        ..RuleState::default()
                    },
                );
            }
            let obs = std::mem::replace(&mut seen.obs, rule::Observation::Samples(BTreeMap::new()));
            self.apply(&seen.key, Input::Evaluate(obs), at);
            let forget = self
                .states
                .get(&seen.key)
                .is_some_and(|st| instances::forget(&r, &seen, st, at));
            if forget {
                self.states.remove(&seen.key);
                if let Some(n) = &self.ha {
                    if let Err(e) = crate::fsio::blocking(|| n.forget_state(&seen.key)) {
                        error!(rule = %seen.key, "{e}");
                    }
                }
                self.recent.remove(&seen.key);
                self.metrics.forget_state(&seen.key);
            }
        }
        let paged = self
            .states
            .get(rule)
            .and_then(|s| s.unevaluable.as_ref())
            .is_some_and(|u| u.paged);
        self.metrics.set_unevaluable(rule, paged);
    }

    /// The watchdog is fed only while evaluations keep reporting back, so a
    /// wedged evaluator gets the service restarted.
    pub(super) fn progressing(&self, timeout: Duration) -> bool {
        let shortest = self
            .rules
            .values()
            .filter_map(|r| match r.schedule {
                Schedule::Every(d) => Some(d),
                Schedule::Cron(..) => None,
            })
            .min();
        match shortest {
            None => true,
            Some(d) => self.last_progress.elapsed() <= d * 2 + timeout + Duration::from_secs(10),
        }
    }

    /// Blindness is decided by the core ([`Blindness::observe`]); this
    /// logs, journals and pages what it decided.
    pub(super) fn blindness(&mut self, at: Timestamp, blinding: Option<&str>) {
        let Some(notice) = self.blind.observe(at, blinding, self.blind_after) else {
            return;
        };
        let n = match &notice {
            BlindNotice::Blind { since, why } => {
                error!("ripcord is blind since {since}: every rule holds its state ({why})");
                self.event(
                    at,
                    None,
                    EventKind::Blind,
                    format!("blind since {since}: {why}"),
                );
                global_notification(
                    PageEvent::Blind,
                    format!(
                        "ripcord cannot query Prometheus since {since}: every rule holds its state"
                    ),
                    vec![why.clone()],
                    *since,
                    at,
                )
            }
            BlindNotice::Seeing { since } => {
                info!("ripcord sees again (blind since {since})");
                self.event(
                    at,
                    None,
                    EventKind::Seeing,
                    format!("sees again; was blind since {since}"),
                );
                global_notification(
                    PageEvent::Seeing,
                    format!("ripcord can query Prometheus again (blind since {since})"),
                    vec![],
                    *since,
                    at,
                )
            }
        };
        self.notify_all(n);
    }

    /// Time-based transitions: approval and verify deadlines, cooldowns.
    pub(super) fn tick(&mut self) {
        let pages = self.outbox.lock().map(|o| o.len()).unwrap_or(0);
        self.metrics.outbox_pages.set(pages as i64);
        let at = now();
        let due: Vec<String> = self
            .states
            .iter()
            .filter(|(_, s)| match &s.status {
                Status::Open(i) => matches!(
                    i.phase,
                    Phase::AwaitingApproval { .. } | Phase::Verifying { deadline: Some(_) }
                ),
                Status::Cooldown { .. } => true,
                _ => false,
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.apply(&name, Input::Tick, at);
        }
    }
}
