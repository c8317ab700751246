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

mod pages;
pub mod state_dir;

use pages::{global_notification, page_key, page_notification, rule_notification};

use crate::actions::{self, StepContext, StepOutcome};
use crate::api::{Control, ControlMsg, RuleStatus, Snapshot};
use crate::config::{Action, Config, Rule, RuleSet, Schedule};
use crate::journal::{Entry, Journal, QueuedPage};
use crate::metrics::{ActionLabels, Metrics, RuleLabel};
use crate::notify::outbox::Outbox;
use crate::notify::{self, Notification};
use crate::prom::Prom;
use crate::rule::{
    self, ActionResult, Effect, Input, Observation, Phase, Record, RuleState, Shared, Status,
    Timestamp,
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
            Err(e) if e.is_blinding() => {
                return (Observation::Failed(format!("query `{name}`: {e}")), true);
            }
            Err(e) => return (Observation::Unevaluable(e.to_string()), false),
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
    /// The state directory, and since when and why it cannot be written.
    dir: std::path::PathBuf,
    state_problem: Option<(Timestamp, String)>,
    last_probe: std::time::Instant,
    /// Set when ripcord begins to stop: running steps finish, no new step
    /// starts.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Rules a reload would remove while their incident is open: since when
    /// they have been missing. Held back until `reload.removal_delay`.
    pending_removals: BTreeMap<String, Timestamp>,
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

    /// Steps the core for `name` and carries out what it decided. The new
    /// state, the shared state and the pages it produced are committed to
    /// the journal in one synced write before anything else happens; only
    /// then do the pages reach the outbox and the actions start. If that
    /// write fails, no action starts: each is reported failed, and pages go
    /// out from memory.
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
        let started = new
            .incident()
            .or(old.incident())
            .map_or(at, |i| i.opened_at);
        let mut pages = Vec::new();
        let mut rest = Vec::new();
        for e in effects {
            match e {
                Effect::Page(p) => {
                    warn!(rule = name, incident = %p.incident, kind = p.kind.name(), notifiers = ?p.notifiers, "page: {}", p.summary);
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
        if new.phase() != old.phase() && new.incident().is_some() && new.phase() != new.name() {
            let text = format!("phase {} → {}", old.phase(), new.phase());
            info!(rule = name, "{text}");
            self.event(at, Some(name), "phase", text);
        }
        let values = new.last_values.clone();
        self.states.insert(name.to_string(), new);
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
                || match state_dir::probe(&self.dir) {
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
                    "page",
                    format!(
                        "{} → {}: {}",
                        p.kind.name(),
                        p.notifiers.join(","),
                        p.summary
                    ),
                ),
                Effect::RunAction {
                    incident,
                    action,
                    dry_run,
                } if committed => {
                    self.start_action(&rule, incident, action, dry_run, values.clone())
                }
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
    fn queued(&self, targets: &[String], n: &Notification, extra: &str) -> Vec<QueuedPage> {
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
    fn push_pages(&mut self, pages: Vec<QueuedPage>) {
        if pages.is_empty() {
            return;
        }
        let mut failed = None;
        if let Ok(mut outbox) = self.outbox.lock() {
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
        }
        self.wake.notify_one();
        if let Some(e) = failed {
            self.state_dir_failed(
                crate::daemon::now(),
                format!("the outbox cannot be written: {e}"),
            );
        }
    }

    /// Queues `n` for each named notifier that wants it.
    fn notify(&mut self, targets: &[String], n: Notification) {
        self.notify_keyed(targets, n, "");
    }

    fn notify_keyed(&mut self, targets: &[String], n: Notification, extra: &str) {
        let pages = self.queued(targets, &n, extra);
        self.push_pages(pages);
    }

    /// Every notifier: for events about ripcord itself.
    fn notify_all(&mut self, n: Notification) {
        let all: Vec<String> = self.notifiers.keys().cloned().collect();
        self.notify(&all, n);
    }

    /// The state directory could not be written: said once per episode, by
    /// a page to every notifier (from memory), in status, /metrics and
    /// sd_notify's STATUS.
    fn state_dir_failed(&mut self, at: Timestamp, why: String) {
        if self.state_problem.is_some() {
            return;
        }
        error!(
            "state directory {} cannot be written: {why}; no step runs until it can",
            self.dir.display()
        );
        self.state_problem = Some((at, why.clone()));
        self.metrics.state_dir_writable.set(0);
        let hint = "free space or fix the state directory's filesystem; ripcord acts again once it can write there";
        let n = global_notification(
            "state_unwritable",
            format!(
                "ripcord cannot write its state directory {}: no rollback step runs until it can",
                self.dir.display()
            ),
            vec![why, hint.into()],
            at,
            at,
        );
        self.notify_all(n);
    }

    /// Looks at the journal's health after writes; while the directory is
    /// failing, probes it every few seconds and says when it recovers.
    fn check_state_dir(&mut self, at: Timestamp) {
        let failing = self.journal.lock().ok().and_then(|j| j.failing.clone());
        if let Some(why) = failing {
            self.state_dir_failed(at, format!("the journal cannot be written: {why}"));
            return;
        }
        let Some((since, _)) = self.state_problem.clone() else {
            return;
        };
        if self.last_probe.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_probe = std::time::Instant::now();
        if state_dir::probe(&self.dir).is_err() {
            return;
        }
        let ok = self.journal(Entry::Event {
            at,
            rule: None,
            kind: "state_dir".into(),
            text: format!("writable again (failing since {since})"),
        });
        if !ok {
            return;
        }
        self.state_problem = None;
        self.metrics.state_dir_writable.set(1);
        info!(
            "state directory {} is writable again (failing since {since})",
            self.dir.display()
        );
        let n = global_notification(
            "state_writable",
            format!(
                "ripcord can write its state directory {} again: rollbacks run as configured",
                self.dir.display()
            ),
            vec![],
            since,
            at,
        );
        self.notify_all(n);
    }

    fn step_page(
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
        let targets = r.notify.clone();
        self.notify_keyed(&targets, n, &format!("{action}#{step}"));
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
        let stopping = self.stopping.clone();
        let ctx = StepContext {
            rule: rule_name.clone(),
            incident: incident.clone(),
            values,
        };
        self.running.spawn(async move {
            let result = run_action(&action, &ctx, dry_run, &journal, &lock, &tx, &stopping).await;
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
                if matches!(obs, Observation::Failed(_) | Observation::Unevaluable(_)) {
                    self.metrics.evaluation_failures.get_or_create(&label).inc();
                }
                self.metrics.prometheus_up.set(i64::from(!blinding));
                self.apply(&rule, Input::Evaluate(obs), at);
                let paged = self
                    .states
                    .get(&rule)
                    .and_then(|s| s.unevaluable.as_ref())
                    .is_some_and(|u| u.paged);
                self.metrics
                    .rule_unevaluable
                    .get_or_create(&label)
                    .set(i64::from(paged));
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
    ///
    /// A reload never loses an incident: one that would leave no rule at
    /// all is refused, and one that would remove a rule whose incident is
    /// open is refused until the rule has been missing for `removal_delay`
    /// (an editor's truncate-then-write, or a directory moved away and back,
    /// is over long before). Even then the state is kept, not evaluated: a
    /// rule that comes back finds its incident and its cooldown.
    fn reload(&mut self, globs: &[String], removal_delay: Duration, retry: bool) -> bool {
        let at = now();
        let files = match crate::config::load::expand_globs(globs) {
            Ok(f) => f,
            Err(e) => return self.reload_failed(at, vec![e], retry),
        };
        let loaded = crate::config::load::load_rule_files(&files);
        let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
        let Some(set) = loaded.value else {
            return self.reload_failed(at, errors, retry);
        };
        let new_rules: BTreeMap<String, Arc<Rule>> = set
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        if new_rules.is_empty() && !self.rules.is_empty() {
            let why = format!(
                "the rule files ({}) now hold no rule: refused, ripcord never drops to zero rules on a reload; to run without rules, stop the service",
                globs.join(", ")
            );
            return self.reload_failed(at, vec![why], retry);
        }
        let missing_open: BTreeMap<String, String> = self
            .rules
            .keys()
            .filter(|n| !new_rules.contains_key(*n))
            .filter_map(|n| {
                let id = self.states.get(n)?.incident()?.id.clone();
                Some((n.clone(), id))
            })
            .collect();
        self.pending_removals
            .retain(|n, _| missing_open.contains_key(n));
        let mut held = Vec::new();
        for (name, incident) in &missing_open {
            let since = *self.pending_removals.entry(name.clone()).or_insert(at);
            if at.since(since) < removal_delay {
                held.push(format!(
                    "rule {name} is missing from the rule files while its incident {incident} is open: kept until {} (reload.removal_delay); restore the rule, or let the incident end",
                    since.plus(removal_delay)
                ));
            }
        }
        if !held.is_empty() {
            return self.reload_failed(at, held, retry);
        }
        self.pending_removals.clear();
        let (mut added, mut changed, mut removed) = (0, 0, 0);
        for name in self.rules.keys() {
            if !new_rules.contains_key(name) {
                removed += 1;
                if let Some(i) = self.states.get(name).and_then(|s| s.incident()) {
                    warn!(rule = %name, incident = %i.id, "rule removed while its incident is open: the incident is kept and resumes if the rule comes back");
                }
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
                                state: Box::new(state),
                                shared: None,
                                pages: Vec::new(),
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

    /// A refused reload: logged, journaled, paged (a retry that finds the
    /// same problems is not paged again) and in status and /metrics.
    fn reload_failed(&mut self, at: Timestamp, errors: Vec<String>, retry: bool) -> bool {
        let same = self
            .last_reload
            .as_ref()
            .is_some_and(|r| !r.ok && r.problems == errors);
        if retry && same {
            return false;
        }
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
        self.notify_all(n);
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
        let mut blind = if self.blind_since.is_some() {
            ", Prometheus unreachable".to_string()
        } else {
            String::new()
        };
        let unevaluable = self
            .rules
            .keys()
            .filter(|n| {
                self.states
                    .get(*n)
                    .and_then(|s| s.unevaluable.as_ref())
                    .is_some_and(|u| u.paged)
            })
            .count();
        if unevaluable > 0 {
            blind.push_str(&format!(", {unevaluable} rule(s) UNEVALUABLE"));
        }
        if let Some((_, why)) = &self.state_problem {
            blind.push_str(&format!(", STATE DIR UNWRITABLE ({why}): nothing runs"));
        }
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
                        unevaluable_since: s
                            .unevaluable
                            .as_ref()
                            .filter(|u| u.paged)
                            .map(|u| u.since.rfc3339()),
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

    fn blindness(&mut self, at: Timestamp, blinding: bool, obs: &Observation) {
        if blinding {
            let since = *self.blind_since.get_or_insert(at);
            if !self.blind_reported && at.since(since) >= self.blind_after {
                self.blind_reported = true;
                let why = match obs {
                    Observation::Failed(e) | Observation::Unevaluable(e) => e.clone(),
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
                self.notify_all(n);
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
                self.notify_all(n);
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
    stopping: &std::sync::atomic::AtomicBool,
) -> ActionResult {
    let _guard = lock.lock().await;
    for (i, step) in action.steps.iter().enumerate() {
        if stopping.load(Ordering::SeqCst) {
            warn!(rule = %ctx.rule, incident = %ctx.incident, "ripcord is stopping: {} step {} and after are not started", action.name, i + 1);
            return ActionResult::Failed(format!(
                "ripcord stopped before step {} started: it and the steps after it did not run",
                i + 1
            ));
        }
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
        crate::notify::outbox::crash_point("intent_written");
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

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A path under the state directory: which, what is wrong, what to do.
    #[error(transparent)]
    StateDir(#[from] state_dir::StateError),
    #[error("{0}")]
    Prometheus(String),
    #[error("cannot listen on {addr}: {problem}")]
    Listen {
        addr: std::net::SocketAddr,
        problem: String,
    },
    #[error("api.token: {0}")]
    Token(String),
    #[error("cannot install the SIGHUP handler: {0}")]
    Signal(String),
}

/// The journal entries that stand for `states` and `shared`: what a
/// compaction writes.
fn snapshot_entries(states: &BTreeMap<String, RuleState>, shared: &Shared) -> Vec<Entry> {
    let mut out: Vec<Entry> = states
        .iter()
        .map(|(rule, state)| Entry::State {
            rule: rule.clone(),
            state: Box::new(state.clone()),
            shared: None,
            pages: Vec::new(),
        })
        .collect();
    out.push(Entry::Shared {
        shared: shared.clone(),
    });
    out
}

/// Runs until `shutdown` resolves, then lets running steps finish.
///
/// Start-up changes nothing under `state_dir` until every piece of state
/// has opened: the directory is proven writable, the journal replayed, the
/// outbox opened, the API token read and the listener bound; only then do
/// the journal's pages go to the outbox (which skips those it has) and the
/// journal get compacted (a new file, synced, renamed over the old one). A
/// start that fails leaves the directory as it found it.
pub async fn run(
    config: Config,
    rules: RuleSet,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let prom = Prom::new(&config.prometheus).map_err(DaemonError::Prometheus)?;
    let dir = config.state_dir.clone();
    state_dir::prepare(&dir)?;
    let journal_path = Journal::path(&dir);
    let replayed = Journal::replay(&dir).map_err(|e| state_dir::StateError {
        path: journal_path.clone(),
        problem: format!("cannot be read: {}", state_dir::describe(&e)),
        hint: "ripcord will not start without its journal (open incidents, interrupted steps, cooldowns and the action budget are in it): fix or restore the file".into(),
    })?;
    if replayed.torn {
        warn!(
            "journal: its last line was cut short by a crash and is dropped (it committed nothing)"
        );
    }
    if replayed.skipped > 0 {
        error!(
            "journal: skipped {} unreadable line(s) in the middle of {}; rules whose state was among them are kept on the safe side",
            replayed.skipped,
            journal_path.display()
        );
    }
    if replayed.out_of_range > 0 {
        error!(
            "journal: {} state(s) hold a time outside years 0-9999 (damaged); kept as they are",
            replayed.out_of_range
        );
    }
    let outbox_dir = dir.join("outbox");
    let metrics = Arc::new(Metrics::new());
    let mut outbox = Outbox::open(&outbox_dir).map_err(|e| state_dir::error(&outbox_dir, &e))?;
    outbox.max_age = config.outbox.max_age;
    outbox.max_items = config.outbox.max_pages;
    outbox.metrics = Some(metrics.clone());
    let token = config
        .api_token
        .as_ref()
        .map(|t| t.resolve())
        .transpose()
        .map_err(|e| DaemonError::Token(e.to_string()))?;
    if token.as_ref().is_some_and(|t| t.expose().trim().is_empty()) {
        return Err(DaemonError::Token(
            "resolves to an empty string: no request could ever match it; put a long random token in it (e.g. `openssl rand -hex 32`)".into(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| DaemonError::Listen {
            addr: config.listen,
            problem: state_dir::describe(&e),
        })?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| DaemonError::Signal(e.to_string()))?;

    let rule_map: BTreeMap<String, Arc<Rule>> = rules
        .rules
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    // States of rules no longer configured are kept (not evaluated): a rule
    // that comes back finds its incident and its cooldown.
    let states = replayed.states;
    for (name, s) in &states {
        if !rule_map.contains_key(name) {
            match s.incident() {
                Some(i) => {
                    warn!(rule = %name, incident = %i.id, "rule no longer configured while its incident is open: the incident is kept and resumes if the rule comes back")
                }
                None => info!(rule = %name, "rule no longer configured: its state is kept"),
            }
        }
    }
    let mut shared = replayed
        .shared
        .unwrap_or_else(|| Shared::new(config.limits.max_actions_per_hour, config.mode));
    shared.budget.limit = config.limits.max_actions_per_hour;
    shared.mode = config.mode;

    // Everything opened: now the state directory may change. Pages the
    // journal committed reach the outbox first, then the journal is compacted.
    let mut resumed = 0;
    for p in replayed.pages {
        let at = p.notification.at;
        if outbox
            .push_keyed(&p.key, &p.notifier, p.notification, at)
            .map_err(|e| state_dir::error(&outbox_dir, &e))?
        {
            resumed += 1;
        }
    }
    if resumed > 0 {
        info!(
            pages = resumed,
            "outbox: pages the journal committed before a crash are queued again"
        );
    }
    crate::notify::outbox::crash_point("before_compaction");
    let journal = Journal::open_compacted(&dir, &snapshot_entries(&states, &shared))
        .map_err(|e| state_dir::error(&journal_path, &e))?;
    // The compacted journal names no page: the outbox's tombstones can go.
    outbox.forget_finished();

    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    metrics.rules.set(rule_map.len() as i64);
    metrics.last_reload_successful.set(1);
    let (control_tx, mut control_rx) = mpsc::channel::<ControlMsg>(16);
    let mut engine = Engine {
        rules: rule_map.clone(),
        actions: rules.actions.clone(),
        states,
        shared,
        journal: Arc::new(Mutex::new(journal)),
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
        outbox: Arc::new(Mutex::new(outbox)),
        wake: Arc::new(tokio::sync::Notify::new()),
        metrics: metrics.clone(),
        last_reload: None,
        dir: dir.clone(),
        state_problem: None,
        last_probe: std::time::Instant::now(),
        pending_removals: BTreeMap::new(),
        stopping: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };

    // A rule whose latest state could not be read may have had an incident
    // open: it is taken as open and unrecovered, so nothing runs again
    // before the condition clears, and on-call hears of it.
    let at = now();
    for rule in &replayed.uncertain {
        if engine
            .states
            .get(rule)
            .is_some_and(|s| s.incident().is_some())
        {
            continue;
        }
        let mut state = engine.states.get(rule).cloned().unwrap_or_default();
        let id = format!("{rule}-journal-{}", at.0);
        state.last_incident = Some(id.clone());
        state.status = Status::Open(rule::Incident {
            id: id.clone(),
            opened_at: at,
            dry_run: false,
            drill: false,
            phase: Phase::Unrecovered(rule::UnrecoveredReason::Interrupted {
                action: "unknown (its journal line is damaged)".into(),
            }),
            done: Vec::new(),
            veto: None,
            values: BTreeMap::new(),
        });
        error!(rule = %rule, incident = %id, "the rule's latest state in the journal is unreadable: taken as an open, unrecovered incident; nothing runs for it before its condition clears");
        engine.journal(Entry::State {
            rule: rule.clone(),
            state: Box::new(state.clone()),
            shared: None,
            pages: Vec::new(),
        });
        engine.states.insert(rule.clone(), state);
        let n = global_notification(
            "journal_damaged",
            format!("rule {rule}: its latest state in the journal could not be read; taken as an open, unrecovered incident {id}"),
            vec![
                "nothing runs for this rule before its condition clears; check by hand what its actions did".into(),
            ],
            at,
            at,
        );
        engine.notify_all(n);
    }

    // Steps that were running when ripcord last stopped are never run again.
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
            prometheus_url: crate::body::redact_url(&config.prometheus.url),
            host: hostname(),
        },
        engine.wake.clone(),
        deliver_stop_rx,
        metrics.clone(),
    ));
    // Reload on SIGHUP, and on edits in the rule directories (debounced:
    // editors write, rename and touch in bursts).
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

    info!(rules = rule_map.len(), state_dir = %dir.display(), prometheus = %crate::body::redact_url(&config.prometheus.url), mode = ?config.mode, "ripcord running");
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
                if engine.reload(&config.rule_globs, config.removal_delay, false) {
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
                engine.check_state_dir(now());
                // A held-back removal takes effect once it is due, without
                // waiting for another edit.
                let due = engine.pending_removals.values().min().is_some_and(|since| now().since(*since) >= config.removal_delay);
                if due && engine.reload(&config.rule_globs, config.removal_delay, true) {
                    sched.sync(&engine.rules);
                }
                if engine.journal.lock().map(|j| j.appended > crate::journal::COMPACT_AFTER).unwrap_or(false) {
                    let snap = snapshot_entries(&engine.states, &engine.shared);
                    let compacted = match engine.journal.lock() {
                        Ok(mut j) => match Journal::open_compacted(&dir, &snap) {
                            Ok(new) => {
                                *j = new;
                                true
                            }
                            Err(e) => {
                                error!("journal compaction failed: {}", state_dir::describe(&e));
                                false
                            }
                        },
                        Err(_) => false,
                    };
                    // Every page the old journal named reached the outbox
                    // right after its commit: the tombstones can go.
                    if compacted {
                        if let Ok(mut o) = engine.outbox.lock() {
                            o.forget_finished();
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

    info!("stopping: no new evaluations or steps; waiting for running steps to finish");
    engine.stopping.store(true, Ordering::SeqCst);
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
