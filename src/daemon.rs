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
use crate::config::{Action, Config, Rule, RuleSet, Schedule};
use crate::journal::{Entry, Journal};
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
) {
    // `every:` rules evaluate at once, then on their interval; cron rules
    // wait for their first time.
    let mut due = match rule.schedule {
        Schedule::Every(_) => SystemTime::now(),
        Schedule::Cron(..) => next_tick(&rule.schedule, SystemTime::now()),
    };
    loop {
        let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let Ok(permit) = sem.acquire().await else {
            return;
        };
        let at = now();
        let (obs, blinding) = evaluate(&prom, &rule, at).await;
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
            due = next_tick(&rule.schedule, due);
        }
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
                }
                Effect::RunAction {
                    incident,
                    action,
                    dry_run,
                } => self.start_action(&rule, incident, action, dry_run, values.clone()),
            }
        }
    }

    fn record(
        &mut self,
        rule: &str,
        at: Timestamp,
        r: Record,
        values: &BTreeMap<String, Option<f64>>,
    ) {
        let vals: Vec<String> = values
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    v.map(|f| f.to_string()).unwrap_or_else(|| "_".into())
                )
            })
            .collect();
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
            let result = run_action(&action, &ctx, dry_run, &journal, &lock).await;
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
            Msg::Evaluated {
                rule,
                at,
                obs,
                blinding,
            } => {
                self.blindness(at, blinding, &obs);
                self.apply(&rule, Input::Evaluate(obs), at);
            }
            Msg::ActionDone {
                rule,
                incident,
                action,
                result,
            } => self.apply(
                &rule,
                Input::ActionFinished {
                    incident,
                    action,
                    result,
                },
                now(),
            ),
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
            }
        }
    }

    /// Time-based transitions: approval and verify deadlines, cooldowns.
    fn tick(&mut self) {
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
            actions::run_step(step, ctx).await
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

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Prometheus(String),
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
    let sem = Arc::new(Semaphore::new(MAX_CONCURRENT_EVALUATIONS));
    let misses = Arc::new(AtomicU64::new(0));
    let mut loops = JoinSet::new();
    for r in rule_map.values() {
        loops.spawn(rule_loop(
            r.clone(),
            prom.clone(),
            sem.clone(),
            tx.clone(),
            stop_rx.clone(),
            misses.clone(),
        ));
    }
    drop(tx);
    info!(rules = rule_map.len(), state_dir = %dir.display(), prometheus = %config.prometheus.url, mode = ?config.mode, "ripcord running");

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(msg) = rx.recv() => engine.handle(msg),
            _ = tick.tick() => {
                engine.tick();
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
            _ = &mut shutdown => break,
        }
    }

    info!("stopping: no new evaluations; waiting for running steps to finish");
    let _ = stop_tx.send(true);
    loops.shutdown().await;
    // Running actions finish (each step has its own timeout); their results
    // are still applied and journaled.
    while !engine.running.is_empty() {
        tokio::select! {
            Some(msg) = rx.recv() => engine.handle(msg),
            Some(_) = engine.running.join_next() => {}
        }
    }
    while let Ok(msg) = rx.try_recv() {
        if let Msg::ActionDone { .. } = msg {
            engine.handle(msg);
        }
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
