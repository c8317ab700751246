//! `ripcord run`: the live driver of the core.
//!
//! One task per rule evaluates it on its schedule (`every:` or `cron:`),
//! within a global bound on concurrent evaluations, and never overlaps
//! itself: an evaluation still running when the next is due makes that one a
//! counted miss. Results go to the engine, the one task that owns every rule
//! state: it steps the pure core, journals what changed, and carries out the
//! effects (actions in their own tasks, one at a time per action).
//!
//! Shutdown is a parameter: when it resolves, evaluations stop, running
//! steps finish within their timeout, and `run` returns.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::actions::{self, StepContext, StepOutcome};
use crate::api::{Control, ControlMsg, RuleStatus, Snapshot};
use crate::config::{Action, Config, Rule, RuleSet, Schedule};
use crate::journal::{Entry, Journal};
use crate::metrics::{ActionLabels, Metrics, RuleLabel};
use crate::notify::outbox::Outbox;
use crate::notify::{self, Notification};
use crate::prom::Prom;
use crate::rule::{
    self, ActionResult, Effect, Input, Observation, Page, PageKind, Phase, Record, RuleState,
    Shared, Status, Timestamp,
};

/// Evaluations running at once, across all rules.
pub const MAX_CONCURRENT_EVALUATIONS: usize = 32;

pub fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

/// Evaluates every query of `rule` at the same instant `at`.
/// Returns the observation and whether a failure means Prometheus is down.
pub async fn evaluate(prom: &Prom, rule: &Rule, at: Timestamp) -> (Observation, bool) {
    let futs = rule.queries.iter().map(|(name, expr)| async move {
        let r = prom.query(expr, at).await;
        (name.clone(), r.and_then(|res| res.to_sample(name)))
    });
    let results = futures_util::future::join_all(futs).await;
    let mut samples = BTreeMap::new();
    for (name, r) in results {
        match r {
            Ok(s) => {
                samples.insert(name, s);
            }
            Err(e) => {
                let blinding = e.is_blinding();
                return (
                    Observation::Failed(format!("query `{name}`: {e}")),
                    blinding,
                );
            }
        }
    }
    (Observation::Samples(samples), false)
}

enum Msg {
    /// A step is about to run (`outcome: None`) or has run.
    Step {
        rule: String,
        incident: String,
        action: String,
        step: usize,
        describe: String,
        outcome: Option<StepOutcome>,
    },
    Evaluated {
        rule: String,
        at: Timestamp,
        obs: Observation,
        blinding: bool,
    },
    ActionDone {
        rule: String,
        incident: String,
        action: String,
        result: ActionResult,
    },
}

/// The next evaluation time after `after`.
fn next_tick(schedule: &Schedule, after: SystemTime) -> SystemTime {
    match schedule {
        Schedule::Every(d) => after + *d,
        Schedule::Cron(_, s) => {
            let dt: chrono_free::Utc = after.into();
            s.after(&dt.0)
                .next()
                .map(chrono_free::to_system)
                .unwrap_or(after + Duration::from_secs(3600))
        }
    }
}

/// The cron crate speaks chrono; these helpers keep that at this edge.
mod chrono_free {
    use std::time::SystemTime;
    pub struct Utc(pub chrono::DateTime<chrono::Utc>);
    impl From<SystemTime> for Utc {
        fn from(t: SystemTime) -> Utc {
            Utc(t.into())
        }
    }
    pub fn to_system(t: chrono::DateTime<chrono::Utc>) -> SystemTime {
        t.into()
    }
}

async fn rule_loop(
    rule: Arc<Rule>,
    prom: Prom,
    sem: Arc<Semaphore>,
    tx: mpsc::Sender<Msg>,
    mut stop: watch::Receiver<bool>,
    misses: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
) {
    // `every:` rules evaluate at once, then on their interval; cron rules
    // wait for their first time.
    let mut due = match rule.schedule {
        Schedule::Every(_) => SystemTime::now(),
        Schedule::Cron(..) => next_tick(&rule.schedule, SystemTime::now()),
    };
    // Test-only switch: evaluations hang after this many seconds, as a
    // wedged evaluator would, so tests can show the watchdog restarts ripcord.
    let wedge_after = std::env::var("RIPCORD_TEST_WEDGE_EVALUATIONS_AFTER")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = std::time::Instant::now();
    loop {
        if wedge_after.is_some_and(|w| started.elapsed() >= w) {
            warn!(rule = %rule.name, "RIPCORD_TEST_WEDGE_EVALUATIONS_AFTER: this evaluation loop now hangs");
            std::future::pending::<()>().await;
        }
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let Ok(permit) = sem.acquire().await else {
            return;
        };
        let at = now();
        let started = std::time::Instant::now();
        let (obs, blinding) = evaluate(&prom, &rule, at).await;
        metrics
            .evaluation_duration
            .observe(started.elapsed().as_secs_f64());
        drop(permit);
        if tx
            .send(Msg::Evaluated {
                rule: rule.name.clone(),
                at,
                obs,
                blinding,
            })
            .await
            .is_err()
        {
            return;
        }
        // Ticks that passed while this evaluation ran are skipped, counted.
        let finished = SystemTime::now();
        due = next_tick(&rule.schedule, due);
        while due <= finished {
            misses.fetch_add(1, Ordering::Relaxed);
            metrics.missed_evaluations.inc();
            due = next_tick(&rule.schedule, due);
        }
    }
}

/// The per-rule evaluation tasks; each rule can be stopped and started on
/// its own, so a reload leaves unchanged rules' schedules alone.
struct Scheduler {
    prom: Prom,
    sem: Arc<Semaphore>,
    tx: mpsc::Sender<Msg>,
    misses: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    tasks: JoinSet<()>,
    running: HashMap<String, (watch::Sender<bool>, String)>,
}

impl Scheduler {
    fn start(&mut self, r: &Arc<Rule>) {
        let (stop, stop_rx) = watch::channel(false);
        self.tasks.spawn(rule_loop(
            r.clone(),
            self.prom.clone(),
            self.sem.clone(),
            self.tx.clone(),
            stop_rx,
            self.misses.clone(),
            self.metrics.clone(),
        ));
        self.running
            .insert(r.name.clone(), (stop, r.fingerprint.clone()));
    }

    /// Stops the loops of removed or changed rules, starts new ones.
    fn sync(&mut self, rules: &BTreeMap<String, Arc<Rule>>) {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(n, (_, fp))| rules.get(*n).is_none_or(|r| &r.fingerprint != fp))
            .map(|(n, _)| n.clone())
            .collect();
        for n in stale {
            if let Some((stop, _)) = self.running.remove(&n) {
                let _ = stop.send(true);
            }
        }
        for r in rules.values() {
            if !self.running.contains_key(&r.name) {
                self.start(r);
            }
        }
    }

    async fn stop_all(&mut self) {
        for (_, (stop, _)) in self.running.drain() {
            let _ = stop.send(true);
        }
        self.tasks.shutdown().await;
    }
}

/// Directories to watch for rule edits: the fixed part of each glob.
fn watch_dirs(globs: &[String]) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = globs
        .iter()
        .map(|g| {
            let mut p = std::path::PathBuf::new();
            for c in std::path::Path::new(g).components() {
                if c.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
                    break;
                }
                p.push(c);
            }
            if p.is_file() {
                p.pop();
            }
            p
        })
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Tells the service manager `states`, without ever stalling the caller.
///
/// A datagram send blocks while the manager's socket queue is full (10
/// messages by default), and the engine must not wait on that: messages go,
/// in order, through one thread. If the manager stops reading, up to
/// `NOTIFY_QUEUE` messages wait and later ones are dropped (and said); the
/// watchdog pings among them stop, as they should when the manager and
/// ripcord cannot talk. Not under systemd (NOTIFY_SOCKET unset), nothing.
fn sd_notify(states: &[sd_notify::NotifyState]) {
    use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
    const NOTIFY_QUEUE: usize = 64;
    static SENDER: std::sync::OnceLock<Option<SyncSender<String>>> = std::sync::OnceLock::new();
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let sender = SENDER.get_or_init(|| {
        let (tx, rx) = sync_channel::<String>(NOTIFY_QUEUE);
        std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for msg in rx {
                    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Custom(&msg)]) {
                        warn!("sd_notify failed: {e}");
                    }
                }
            })
            .map_err(|e| error!("cannot start the sd_notify thread: {e}"))
            .ok()
            .map(|_| tx)
    });
    let msg = states
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    match sender.as_ref().map(|tx| tx.try_send(msg)) {
        Some(Ok(())) => {}
        Some(Err(TrySendError::Full(msg))) => {
            warn!("the service manager is not reading notifications; dropped: {msg}")
        }
        Some(Err(TrySendError::Disconnected(_))) | None => {}
    }
}

struct Engine {
    rules: BTreeMap<String, Arc<Rule>>,
    actions: BTreeMap<String, Arc<Action>>,
    states: BTreeMap<String, RuleState>,
    shared: Shared,
    journal: Arc<Mutex<Journal>>,
    /// One lock per action: two incidents never run the same action at once.
    locks: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
    running: JoinSet<()>,
    tx: mpsc::Sender<Msg>,
    /// Last no-data or error reason per rule, so a steady condition is
    /// journaled once, not on every evaluation.
    last_reason: HashMap<String, String>,
    blind_since: Option<Timestamp>,
    blind_reported: bool,
    blind_after: Duration,
    notifiers: BTreeMap<String, Arc<crate::config::Notifier>>,
    /// The same map, shared with the delivery task (swapped on reload).
    shared_notifiers: Arc<std::sync::RwLock<BTreeMap<String, Arc<crate::config::Notifier>>>>,
    /// When an evaluation last reported back (the watchdog's evidence).
    last_progress: std::time::Instant,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<tokio::sync::Notify>,
    metrics: Arc<Metrics>,
    last_reload: Option<crate::api::ReloadStatus>,
}

fn journal_append(journal: &Mutex<Journal>, e: &Entry) -> bool {
    match journal.lock() {
        Ok(mut j) => match j.append(e) {
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
    fn journal(&self, e: Entry) -> bool {
        journal_append(&self.journal, &e)
    }

    fn event(&self, at: Timestamp, rule: Option<&str>, kind: &str, text: String) {
        self.journal(Entry::Event {
            at,
            rule: rule.map(str::to_string),
            kind: kind.into(),
            text,
        });
    }

    fn apply(&mut self, name: &str, input: Input, at: Timestamp) {
        let Some(rule) = self.rules.get(name).cloned() else {
            return;
        };
        let old = self.states.get(name).cloned().unwrap_or_default();
        let old_shared = self.shared.clone();
        let (new, effects) = rule::step(&rule, &old, &mut self.shared, input, at);
        if new.name() != old.name() {
            self.metrics.set_state(name, new.name());
        }
        if new.status != old.status || new.last_incident != old.last_incident {
            self.journal(Entry::State {
                rule: name.to_string(),
                state: new.clone(),
            });
        }
        if self.shared != old_shared {
            self.journal(Entry::Shared {
                shared: self.shared.clone(),
            });
        }
        // A phase change inside an open incident (acting → budget_exhausted,
        // → action_failed, → vetoed) is said even when nobody is paged.
        if new.phase() != old.phase() && new.incident().is_some() && new.phase() != new.name() {
            let text = format!("phase {} → {}", old.phase(), new.phase());
            info!(rule = name, "{text}");
            self.event(at, Some(name), "phase", text);
        }
        let values = new.last_values.clone();
        self.states.insert(name.to_string(), new);
        for e in effects {
            match e {
                Effect::Record(r) => self.record(name, at, r, &values),
                Effect::Page(p) => {
                    warn!(rule = name, incident = %p.incident, kind = p.kind.name(), notifiers = ?p.notifiers, "page: {}", p.summary);
                    self.event(
                        at,
                        Some(name),
                        "page",
                        format!(
                            "{} → {}: {}",
                            p.kind.name(),
                            p.notifiers.join(","),
                            p.summary
                        ),
                    );
                    let started = self
                        .states
                        .get(name)
                        .and_then(|s| s.incident().map(|i| i.opened_at))
                        .unwrap_or(at);
                    let n = page_notification(&rule, &p, started);
                    self.notify(&p.notifiers, n);
                }
                Effect::RunAction {
                    incident,
                    action,
                    dry_run,
                } => self.start_action(&rule, incident, action, dry_run, values.clone()),
            }
        }
    }

    /// Queues `n` for each named notifier that wants it (synced to the
    /// outbox before any delivery attempt).
    fn notify(&self, targets: &[String], n: Notification) {
        let Ok(mut outbox) = self.outbox.lock() else {
            return;
        };
        let at = n.at;
        for t in targets {
            let Some(notifier) = self.notifiers.get(t) else {
                continue;
            };
            if !notify::wants(notifier, &n) {
                continue;
            }
            if let Err(e) = outbox.push(t, n.clone(), at) {
                error!(notifier = %t, "cannot write the page to the outbox: {e}");
            }
        }
        drop(outbox);
        self.wake.notify_one();
    }

    fn step_page(
        &self,
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
        let (event, summary) = match outcome {
            None => (
                "step_started",
                format!("{action} step {} started", step + 1),
            ),
            Some(o) if o.ok => (
                "step_succeeded",
                format!("{action} step {} succeeded: {}", step + 1, o.summary),
            ),
            Some(o) => (
                "step_failed",
                format!("{action} step {} FAILED: {}", step + 1, o.summary),
            ),
        };
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
        self.notify(&r.notify, n);
    }

    fn record(
        &mut self,
        rule: &str,
        at: Timestamp,
        r: Record,
        values: &BTreeMap<String, Option<f64>>,
    ) {
        let vals: Vec<String> = crate::rule::machine::fmt_values(values);
        match &r {
            Record::NoData { .. } | Record::EvaluationFailed { .. } => {
                let text = r.to_string();
                if self.last_reason.get(rule) != Some(&text) {
                    warn!(rule, "{text}");
                    self.event(at, Some(rule), "hold", text.clone());
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
            "record",
            format!("{r} ({})", vals.join(" ")),
        );
    }

    fn start_action(
        &mut self,
        rule: &Rule,
        incident: String,
        action_name: String,
        dry_run: bool,
        values: BTreeMap<String, Option<f64>>,
    ) {
        let tx = self.tx.clone();
        let rule_name = rule.name.clone();
        let Some(action) = self.actions.get(&action_name).cloned() else {
            // Cannot happen for a loaded rule set; reported, not panicked on.
            let _ = tx.try_send(Msg::ActionDone {
                rule: rule_name,
                incident,
                action: action_name.clone(),
                result: ActionResult::Failed(format!("unknown action {action_name}")),
            });
            return;
        };
        let lock = self.locks.entry(action_name.clone()).or_default().clone();
        let journal = self.journal.clone();
        let ctx = StepContext {
            rule: rule_name.clone(),
            incident: incident.clone(),
            values,
        };
        self.running.spawn(async move {
            let result = run_action(&action, &ctx, dry_run, &journal, &lock, &tx).await;
            let _ = tx
                .send(Msg::ActionDone {
                    rule: rule_name,
                    incident,
                    action: action_name,
                    result,
                })
                .await;
        });
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Step {
                rule,
                incident,
                action,
                step,
                describe,
                outcome,
            } => self.step_page(&rule, &incident, &action, step, &describe, outcome.as_ref()),
            Msg::Evaluated {
                rule,
                at,
                obs,
                blinding,
            } => {
                self.last_progress = std::time::Instant::now();
                self.blindness(at, blinding, &obs);
                let label = RuleLabel { rule: rule.clone() };
                self.metrics.evaluations.get_or_create(&label).inc();
                if matches!(obs, Observation::Failed(_)) {
                    self.metrics.evaluation_failures.get_or_create(&label).inc();
                }
                self.metrics.prometheus_up.set(i64::from(!blinding));
                self.apply(&rule, Input::Evaluate(obs), at);
            }
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
                self.apply(
                    &rule,
                    Input::ActionFinished {
                        incident,
                        action,
                        result,
                    },
                    now(),
                );
            }
        }
    }

    /// A control request from the API; the answer says what happened.
    fn control(&mut self, c: Control) -> Result<String, String> {
        let at = now();
        match c {
            Control::Status => {
                serde_json::to_string(&self.status_snapshot()).map_err(|e| e.to_string())
            }
            Control::Approve { incident, by } => {
                let rule = self.rule_of(&incident)?;
                let phase = self.states.get(&rule).map(|s| s.phase()).unwrap_or("ok");
                if phase != "awaiting_approval" {
                    return Err(format!(
                        "incident {incident} is not awaiting approval (it is {phase})"
                    ));
                }
                info!(rule = %rule, incident = %incident, by = %by, "approved");
                self.apply(&rule, Input::Approve { by }, at);
                Ok(format!("approved {incident}"))
            }
            Control::Veto { incident, by } => {
                let rule = self.rule_of(&incident)?;
                let phase = self.states.get(&rule).map(|s| s.phase()).unwrap_or("ok");
                if phase != "awaiting_approval" && phase != "acting" {
                    return Err(format!(
                        "incident {incident}: nothing left to veto (it is {phase})"
                    ));
                }
                info!(rule = %rule, incident = %incident, by = %by, "vetoed");
                self.apply(&rule, Input::Veto { by }, at);
                Ok(if phase == "acting" {
                    format!("vetoed {incident}: the running action finishes, nothing after it runs")
                } else {
                    format!("vetoed {incident}: nothing runs")
                })
            }
            Control::Pause { for_, reason } => {
                let until = for_.map(|d| at.plus(d));
                self.shared.pause = Some(rule::Pause {
                    until,
                    reason: reason.clone(),
                });
                self.journal(Entry::Shared {
                    shared: self.shared.clone(),
                });
                self.event(at, None, "pause", format!("paused: {reason}"));
                warn!(until = ?until.map(|u| u.rfc3339()), "paused: {reason}");
                Ok(match until {
                    Some(u) => {
                        format!("paused until {u}: incidents open and page, actions do not run")
                    }
                    None => {
                        "paused until resumed: incidents open and page, actions do not run".into()
                    }
                })
            }
            Control::Fire { rule, dry_run, by } => {
                if !self.rules.contains_key(&rule) {
                    return Err(format!("unknown rule `{rule}`"));
                }
                if let Some(i) = self.states.get(&rule).and_then(|s| s.incident()) {
                    return Err(format!(
                        "rule {rule} already has an open incident: {}",
                        i.id
                    ));
                }
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
            Control::Resume => {
                if self.shared.pause.take().is_none() {
                    return Err("ripcord is not paused".into());
                }
                self.journal(Entry::Shared {
                    shared: self.shared.clone(),
                });
                self.event(at, None, "resume", "resumed".into());
                info!("resumed");
                Ok("resumed".into())
            }
        }
    }

    /// Loads every rule file again and swaps the whole set in at once; on
    /// any error the running rules stay, and the failure is logged, paged and
    /// exposed as `ripcord_last_reload_successful 0`. Returns whether the
    /// new set is in force.
    fn reload(&mut self, globs: &[String]) -> bool {
        let at = now();
        let files = match crate::config::load::expand_globs(globs) {
            Ok(f) => f,
            Err(e) => return self.reload_failed(at, vec![e]),
        };
        let loaded = crate::config::load::load_rule_files(&files);
        let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
        let Some(set) = loaded.value else {
            return self.reload_failed(at, errors);
        };
        let new_rules: BTreeMap<String, Arc<Rule>> = set
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        let (mut added, mut changed, mut removed) = (0, 0, 0);
        for name in self.rules.keys() {
            if !new_rules.contains_key(name) {
                removed += 1;
                if let Some(i) = self.states.get(name).and_then(|s| s.incident()) {
                    warn!(rule = %name, incident = %i.id, "rule removed while its incident is open: the incident is dropped");
                }
                self.states.remove(name);
                self.metrics.set_state(name, "");
            }
        }
        for (name, r) in &new_rules {
            match self.rules.get(name) {
                None => added += 1,
                Some(old) if old.fingerprint != r.fingerprint => {
                    changed += 1;
                    // A changed condition makes a pending timer meaningless;
                    // open incidents, cooldowns and the rest are kept.
                    if let Some(st) = self.states.get_mut(name) {
                        if matches!(st.status, Status::Pending { .. }) {
                            st.status = Status::Ok;
                            let state = st.clone();
                            self.journal(Entry::State {
                                rule: name.clone(),
                                state,
                            });
                        }
                    }
                }
                Some(_) => {}
            }
        }
        self.rules = new_rules;
        self.actions = set.actions;
        self.notifiers = set.notifiers;
        if let Ok(mut n) = self.shared_notifiers.write() {
            *n = self.notifiers.clone();
        }
        self.metrics.rules.set(self.rules.len() as i64);
        self.metrics.last_reload_successful.set(1);
        for name in self.rules.keys() {
            let state = self.states.get(name).map(|s| s.name()).unwrap_or("ok");
            self.metrics.set_state(name, state);
        }
        self.last_reload = Some(crate::api::ReloadStatus {
            ok: true,
            at: at.rfc3339(),
            problems: Vec::new(),
        });
        let text = format!(
            "reloaded: {} rules ({added} added, {changed} changed, {removed} removed)",
            self.rules.len()
        );
        info!("{text}");
        self.event(at, None, "reload", text);
        true
    }

    fn reload_failed(&mut self, at: Timestamp, errors: Vec<String>) -> bool {
        self.metrics.last_reload_successful.set(0);
        self.last_reload = Some(crate::api::ReloadStatus {
            ok: false,
            at: at.rfc3339(),
            problems: errors.clone(),
        });
        for e in &errors {
            error!("reload: {e}");
        }
        let summary = format!(
            "rule reload failed with {} problem(s): the previous {} rules keep running",
            errors.len(),
            self.rules.len()
        );
        error!("{summary}");
        self.event(
            at,
            None,
            "reload_failed",
            format!("{summary}: {}", errors.join("; ")),
        );
        let details: Vec<String> = errors.into_iter().take(10).collect();
        let n = global_notification("reload_failed", summary, details, at, at);
        let all: Vec<String> = self.notifiers.keys().cloned().collect();
        self.notify(&all, n);
        false
    }

    /// The watchdog is fed only while evaluations keep reporting back, so a
    /// wedged evaluator gets the service restarted.
    fn progressing(&self, timeout: Duration) -> bool {
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

    fn status_line(&self) -> String {
        let firing = self
            .states
            .values()
            .filter(|s| s.incident().is_some())
            .count();
        let paused = if self.shared.paused(now()) {
            ", PAUSED"
        } else {
            ""
        };
        let blind = if self.blind_since.is_some() {
            ", Prometheus unreachable"
        } else {
            ""
        };
        if self.rules.is_empty() {
            return format!("no rules loaded: add rule files and reload{paused}{blind}");
        }
        format!(
            "{} rules, {firing} open incident(s){paused}{blind}",
            self.rules.len()
        )
    }

    fn rule_of(&self, incident: &str) -> Result<String, String> {
        self.states
            .iter()
            .find(|(_, s)| s.incident().is_some_and(|i| i.id == incident))
            .map(|(n, _)| n.clone())
            .ok_or_else(|| format!("no open incident {incident}"))
    }

    /// What `status` shows, built when asked: with 10 000 rules a snapshot
    /// is megabytes, too much to rebuild every second for nobody.
    fn status_snapshot(&self) -> Snapshot {
        let at = now();
        let outbox_pages = self.outbox.lock().map(|o| o.len()).unwrap_or(0);
        Snapshot {
            version: crate::LONG_VERSION.into(),
            rules: self
                .rules
                .keys()
                .map(|name| {
                    let s = self.states.get(name).cloned().unwrap_or_default();
                    RuleStatus {
                        name: name.clone(),
                        state: s.name().into(),
                        phase: s.phase().into(),
                        incident: s.incident().map(|i| i.id.clone()),
                        opened_at: s.incident().map(|i| i.opened_at.rfc3339()),
                        last_evaluation: s.last_eval.map(|t| t.rfc3339()),
                        values: s.last_values.clone(),
                        last_error: s.last_error.clone(),
                    }
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
            prometheus_up: self.blind_since.is_none(),
            blind_since: self.blind_since.map(|t| t.rfc3339()),
            last_reload: self.last_reload.clone(),
        }
    }

    fn blindness(&mut self, at: Timestamp, blinding: bool, obs: &Observation) {
        if blinding {
            let since = *self.blind_since.get_or_insert(at);
            if !self.blind_reported && at.since(since) >= self.blind_after {
                self.blind_reported = true;
                let why = match obs {
                    Observation::Failed(e) => e.clone(),
                    Observation::Samples(_) => String::new(),
                };
                error!("ripcord is blind since {since}: every rule holds its state ({why})");
                self.event(at, None, "blind", format!("blind since {since}: {why}"));
                let n = global_notification(
                    "blind",
                    format!(
                        "ripcord cannot query Prometheus since {since}: every rule holds its state"
                    ),
                    vec![why],
                    since,
                    at,
                );
                let all: Vec<String> = self.notifiers.keys().cloned().collect();
                self.notify(&all, n);
            }
        } else if let Some(since) = self.blind_since.take() {
            if std::mem::take(&mut self.blind_reported) {
                info!("ripcord sees again (blind since {since})");
                self.event(
                    at,
                    None,
                    "seeing",
                    format!("sees again; was blind since {since}"),
                );
                let n = global_notification(
                    "seeing",
                    format!("ripcord can query Prometheus again (blind since {since})"),
                    vec![],
                    since,
                    at,
                );
                let all: Vec<String> = self.notifiers.keys().cloned().collect();
                self.notify(&all, n);
            }
        }
    }

    /// Time-based transitions: approval and verify deadlines, cooldowns.
    fn tick(&mut self) {
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

    fn snapshot(&self) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .states
            .iter()
            .map(|(rule, state)| Entry::State {
                rule: rule.clone(),
                state: state.clone(),
            })
            .collect();
        out.push(Entry::Shared {
            shared: self.shared.clone(),
        });
        out
    }
}

/// Runs one action's steps in order under its lock: intent synced before a
/// step, result after; a failed step stops the action.
async fn run_action(
    action: &Action,
    ctx: &StepContext,
    dry_run: bool,
    journal: &Mutex<Journal>,
    lock: &tokio::sync::Mutex<()>,
    tx: &mpsc::Sender<Msg>,
) -> ActionResult {
    let _guard = lock.lock().await;
    for (i, step) in action.steps.iter().enumerate() {
        let describe = actions::describe(step);
        let intent = Entry::StepIntent {
            at: now(),
            rule: ctx.rule.clone(),
            incident: ctx.incident.clone(),
            action: action.name.clone(),
            step: i,
            describe: describe.clone(),
            dry_run,
        };
        if !journal_append(journal, &intent) {
            return ActionResult::Failed(format!(
                "step {} not run: its intent could not be written to the journal",
                i + 1
            ));
        }
        let outcome = if dry_run {
            info!(rule = %ctx.rule, incident = %ctx.incident, "dry-run: would run {}: {describe}", action.name);
            StepOutcome {
                ok: true,
                summary: format!("dry-run: would run {describe}"),
                output: String::new(),
            }
        } else {
            info!(rule = %ctx.rule, incident = %ctx.incident, "running {} step {}: {describe}", action.name, i + 1);
            let msg = |outcome| Msg::Step {
                rule: ctx.rule.clone(),
                incident: ctx.incident.clone(),
                action: action.name.clone(),
                step: i,
                describe: describe.clone(),
                outcome,
            };
            let _ = tx.send(msg(None)).await;
            let outcome = actions::run_step(step, ctx).await;
            let _ = tx.send(msg(Some(outcome.clone()))).await;
            outcome
        };
        journal_append(
            journal,
            &Entry::StepResult {
                at: now(),
                rule: ctx.rule.clone(),
                incident: ctx.incident.clone(),
                action: action.name.clone(),
                step: i,
                outcome: outcome.clone(),
            },
        );
        if !outcome.ok {
            warn!(rule = %ctx.rule, incident = %ctx.incident, "{} step {} failed: {}", action.name, i + 1, outcome.summary);
            return ActionResult::Failed(format!(
                "step {} ({}) failed: {}",
                i + 1,
                step.kind(),
                outcome.summary
            ));
        }
        info!(rule = %ctx.rule, incident = %ctx.incident, "{} step {} ok: {}", action.name, i + 1, outcome.summary);
    }
    ActionResult::Succeeded
}

/// A notification about `rule` with its queries, condition and links.
fn rule_notification(
    r: &Rule,
    event: &str,
    summary: String,
    at: Timestamp,
    started: Timestamp,
) -> Notification {
    Notification {
        event: event.to_string(),
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
    }
}

/// The core's page, as a notification with what it is about.
fn page_notification(r: &Rule, p: &Page, started: Timestamp) -> Notification {
    let mut n = rule_notification(r, p.kind.name(), p.summary.clone(), p.at, started);
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
    };
    n
}

fn global_notification(
    event: &str,
    summary: String,
    details: Vec<String>,
    started: Timestamp,
    at: Timestamp,
) -> Notification {
    Notification {
        event: event.into(),
        rule: None,
        incident: None,
        severity: match event {
            "blind" => crate::config::Severity::Critical,
            "reload_failed" => crate::config::Severity::Error,
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
        resolve: event == "seeing",
        dry_run: false,
        drill: false,
        started,
        at,
    }
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Prometheus(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("api.token: {0}")]
    Token(String),
}

/// Runs until `shutdown` resolves, then lets running steps finish.
pub async fn run(
    config: Config,
    rules: RuleSet,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let prom = Prom::new(&config.prometheus).map_err(DaemonError::Prometheus)?;
    let dir = config.state_dir.clone();
    let state_err = |source| DaemonError::StateDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(state_err)?;
    let replayed = Journal::replay(&dir).map_err(state_err)?;
    if replayed.skipped > 0 {
        warn!(
            "journal: skipped {} unreadable line(s) (a write cut short by a crash)",
            replayed.skipped
        );
    }
    let rule_map: BTreeMap<String, Arc<Rule>> = rules
        .rules
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    let mut states = BTreeMap::new();
    for (name, state) in replayed.states {
        if rule_map.contains_key(&name) {
            states.insert(name, state);
        } else {
            info!(rule = %name, "rule no longer configured: its state is dropped");
        }
    }
    let mut shared = replayed
        .shared
        .unwrap_or_else(|| Shared::new(config.limits.max_actions_per_hour, config.mode));
    shared.budget.limit = config.limits.max_actions_per_hour;
    shared.mode = config.mode;

    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let metrics = Arc::new(Metrics::new());
    metrics.rules.set(rule_map.len() as i64);
    metrics.last_reload_successful.set(1);
    let (control_tx, mut control_rx) = mpsc::channel::<ControlMsg>(16);
    let token = config
        .api_token
        .as_ref()
        .map(|t| t.resolve())
        .transpose()
        .map_err(|e| DaemonError::Token(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.listen,
            source,
        })?;
    let mut engine = Engine {
        rules: rule_map.clone(),
        actions: rules.actions.clone(),
        states,
        shared,
        journal: Arc::new(Mutex::new(
            Journal::open_compacted(&dir, &[]).map_err(state_err)?,
        )),
        locks: HashMap::new(),
        running: JoinSet::new(),
        tx: tx.clone(),
        last_reason: HashMap::new(),
        blind_since: None,
        blind_reported: false,
        blind_after: config.prometheus.blind_after,
        notifiers: rules.notifiers.clone(),
        shared_notifiers: Arc::new(std::sync::RwLock::new(rules.notifiers.clone())),
        last_progress: std::time::Instant::now(),
        outbox: Arc::new(Mutex::new({
            let mut o = Outbox::open(&dir.join("outbox")).map_err(state_err)?;
            o.max_age = config.outbox.max_age;
            o.max_items = config.outbox.max_pages;
            o.metrics = Some(metrics.clone());
            o
        })),
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: metrics.clone(),
        last_reload: None,
    };
    // Rewrite the journal as one snapshot of what was replayed.
    let snap = engine.snapshot();
    *engine
        .journal
        .lock()
        .map_err(|_| state_err(std::io::Error::other("journal lock poisoned")))? =
        Journal::open_compacted(&dir, &snap).map_err(state_err)?;

    // Steps that were running when ripcord last stopped are never run again.
    let at = now();
    for i in &replayed.interrupted {
        error!(rule = %i.rule, incident = %i.incident, "step {} of {} was interrupted by a restart: it is not run again ({})", i.step + 1, i.action, i.describe);
        engine.journal(Entry::StepResult {
            at,
            rule: i.rule.clone(),
            incident: i.incident.clone(),
            action: i.action.clone(),
            step: i.step,
            outcome: StepOutcome::failed(
                "interrupted: ripcord stopped while this step ran; not run again",
            ),
        });
    }
    let acting: Vec<(String, String, String)> = engine
        .states
        .iter()
        .filter_map(|(name, s)| match &s.status {
            Status::Open(inc) => match inc.phase {
                Phase::Acting { index } => {
                    let action = engine.rules.get(name)?.actions.get(index)?.clone();
                    Some((name.clone(), inc.id.clone(), action))
                }
                _ => None,
            },
            _ => None,
        })
        .collect();
    for (rule, incident, action) in acting {
        engine.apply(
            &rule,
            Input::ActionFinished {
                incident,
                action,
                result: ActionResult::Interrupted,
            },
            at,
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let misses = Arc::new(AtomicU64::new(0));
    let mut sched = Scheduler {
        prom: prom.clone(),
        sem: Arc::new(Semaphore::new(MAX_CONCURRENT_EVALUATIONS)),
        tx: tx.clone(),
        misses: misses.clone(),
        metrics: metrics.clone(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    sched.sync(&engine.rules);
    drop(tx);
    for name in rule_map.keys() {
        let state = engine.states.get(name).map(|s| s.name()).unwrap_or("ok");
        metrics.set_state(name, state);
    }
    let app = crate::api::router(metrics.clone(), token, control_tx);
    let mut api_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = api_stop.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            error!("API listener failed: {e}");
        }
    });
    let (deliver_stop_tx, deliver_stop_rx) = watch::channel(false);
    let delivery = tokio::spawn(crate::notify::outbox::deliver(
        engine.outbox.clone(),
        engine.shared_notifiers.clone(),
        crate::notify::RenderContext {
            prometheus_url: config.prometheus.url.clone(),
            host: hostname(),
        },
        engine.wake.clone(),
        deliver_stop_rx,
        metrics.clone(),
    ));
    // Reload on SIGHUP, and on edits in the rule directories (debounced:
    // editors write, rename and touch in bursts).
    let mut hup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(|e| {
            DaemonError::Listen {
                addr: config.listen,
                source: e,
            }
        })?;
    let (watch_tx, mut watch_rx) = mpsc::unbounded_channel::<()>();
    let _watcher = {
        use ::notify::Watcher;
        let mut w = ::notify::recommended_watcher(move |ev: ::notify::Result<::notify::Event>| {
            if ev.is_ok_and(|e| !matches!(e.kind, ::notify::EventKind::Access(_))) {
                let _ = watch_tx.send(());
            }
        });
        if let Ok(w) = &mut w {
            for d in watch_dirs(&config.rule_globs) {
                if let Err(e) = w.watch(&d, ::notify::RecursiveMode::NonRecursive) {
                    warn!(
                        "cannot watch {} for rule changes (SIGHUP still reloads): {e}",
                        d.display()
                    );
                }
            }
        }
        w.ok()
    };
    let mut reload_at: Option<tokio::time::Instant> = None;
    let mut hup_pending = false;

    info!(rules = rule_map.len(), state_dir = %dir.display(), prometheus = %config.prometheus.url, mode = ?config.mode, "ripcord running");
    // Ready means ready: config and rules loaded, every task running.
    sd_notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&engine.status_line()),
    ]);
    let watchdog = sd_notify::watchdog_enabled();
    let mut last_status = String::new();

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(msg) = rx.recv() => engine.handle(msg),
            _ = hup.recv() => {
                info!("SIGHUP: reloading the rules");
                reload_at = Some(tokio::time::Instant::now());
                hup_pending = true;
            }
            // Edits settle for 500 ms before a reload; a pending SIGHUP
            // reload is not put off by them.
            Some(()) = watch_rx.recv(), if !hup_pending => {
                reload_at = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
            _ = async { tokio::time::sleep_until(reload_at.unwrap_or_else(tokio::time::Instant::now)).await }, if reload_at.is_some() => {
                reload_at = None;
                hup_pending = false;
                let mut states = vec![sd_notify::NotifyState::Reloading];
                if let Ok(m) = sd_notify::NotifyState::monotonic_usec_now() {
                    states.push(m);
                }
                sd_notify(&states);
                if engine.reload(&config.rule_globs) {
                    sched.sync(&engine.rules);
                }
                sd_notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&engine.status_line())]);
            }
            Some(_) = sched.tasks.join_next(), if !sched.tasks.is_empty() => {}
            _ = tick.tick() => {
                engine.tick();
                let status = engine.status_line();
                if status != last_status {
                    sd_notify(&[sd_notify::NotifyState::Status(&status)]);
                    last_status = status;
                }
                if watchdog.is_some() {
                    if engine.progressing(config.prometheus.timeout) {
                        sd_notify(&[sd_notify::NotifyState::Watchdog]);
                    } else {
                        error!("no evaluation has reported back for too long: not feeding the watchdog");
                    }
                }
                if engine.journal.lock().map(|j| j.appended > crate::journal::COMPACT_AFTER).unwrap_or(false) {
                    let snap = engine.snapshot();
                    if let Ok(mut j) = engine.journal.lock() {
                        match Journal::open_compacted(&dir, &snap) {
                            Ok(new) => *j = new,
                            Err(e) => error!("journal compaction failed: {e}"),
                        }
                    }
                }
            }
            Some(_) = engine.running.join_next(), if !engine.running.is_empty() => {}
            Some((c, reply)) = control_rx.recv() => {
                let _ = reply.send(engine.control(c));
            }
            _ = &mut shutdown => break,
        }
    }

    info!("stopping: no new evaluations; waiting for running steps to finish");
    sd_notify(&[sd_notify::NotifyState::Stopping]);
    sched.stop_all().await;
    // Running actions finish (each step has its own timeout); their results
    // are still applied and journaled. systemd is told to wait for them.
    let mut extend = tokio::time::interval(Duration::from_secs(1));
    while !engine.running.is_empty() {
        tokio::select! {
            Some(msg) = rx.recv() => engine.handle(msg),
            Some(_) = engine.running.join_next() => {}
            _ = extend.tick() => sd_notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(5_000_000)]),
        }
    }
    let _ = stop_tx.send(true);
    while let Ok(msg) = rx.try_recv() {
        if let Msg::ActionDone { .. } = msg {
            engine.handle(msg);
        }
    }
    // Pages stay in the outbox on disk; what is due gets a short chance to
    // go out now, the rest is delivered after the next start.
    let flush_until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < flush_until {
        let due = engine
            .outbox
            .lock()
            .map(|o| o.next_due(now(), &Default::default()).is_some())
            .unwrap_or(false);
        if !due {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = deliver_stop_tx.send(true);
    let _ = delivery.await;
    let _ = server.await;
    if let Ok(o) = engine.outbox.lock() {
        info!(
            undelivered = o.len(),
            delivered = o.stats.delivered,
            "outbox"
        );
    }
    let missed = misses.load(Ordering::Relaxed);
    info!(missed_evaluations = missed, "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_tick_for_every_and_cron() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_007);
        assert_eq!(
            next_tick(&Schedule::Every(Duration::from_secs(30)), t),
            t + Duration::from_secs(30)
        );
        let cron: cron::Schedule = "0 */5 * * * *".parse().expect("cron");
        let next = next_tick(&Schedule::Cron("0 */5 * * * *".into(), Box::new(cron)), t);
        // 1_795_000_007 is 11:06:47; the next 5-minute mark is 11:10:00.
        assert_eq!(
            next,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_200)
        );
    }
}
