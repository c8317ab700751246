//! `ripcord run`: the live driver of the core.
//!
//! An evaluation flows: `scheduler` (one task per rule, on its schedule)
//! → [`evaluate`] (the Prometheus client) → a `Msg` to the `engine` (the
//! one task that owns every rule's state) → `rule::step`, the pure core →
//! effects: one journal commit of the new state, budget and pages, then
//! the pages to the outbox (`notify::outbox`, delivered per receiver) and
//! actions to `runner` (steps in order, intent before, result after).
//!
//! The other rooms: `startup` (what is opened before anything runs, and
//! what a replayed journal means), `reload` (rule files, all or nothing,
//! never losing an incident), `control` (the API's requests and status),
//! `health` (the state directory's writability, compaction), `systemd`
//! (sd_notify), `pages` (page texts and keys), [`state_dir`] (paths and
//! their errors). This file owns the main loop and shutdown: when
//! `shutdown` resolves, evaluations stop, running steps finish within their
//! timeout, no new step starts, and `run` returns.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

mod backtest;
mod control;
mod engine;
mod group;
mod health;
mod pages;
mod recent;
mod reload;
mod runner;
mod scheduler;
mod startup;
pub mod state_dir;
mod systemd;
mod timeline;

use engine::{journal_append, Engine};
use group::Term;
use runner::run_action;
use scheduler::Scheduler;
use startup::{snapshot_entries, Opened};
use systemd::sd_notify;

use pages::{global_notification, page_key, page_notification, rule_notification};

use crate::actions::{self, StepContext, StepOutcome};
use crate::api::{Control, ControlMsg, RuleStatus, Snapshot};
use crate::config::{Action, Config, Rule, RuleSet, Schedule};
use crate::journal::{Entry, Journal, QueuedPage};
use crate::metrics::{ActionLabels, Metrics};
use crate::notify::outbox::Outbox;
use crate::notify::{self, Notification};
use crate::prom::Prom;
use crate::rule::global::{self, BlindNotice, Blindness, Locks};
use crate::rule::instances::{self, Evaluation};
use crate::rule::{
    self, ActionResult, Effect, EventKind, Input, PageEvent, Phase, Record, RuleState, Shared,
    Status, Timestamp,
};

/// Evaluations running at once, across all rules.
pub const MAX_CONCURRENT_EVALUATIONS: usize = 32;

pub use crate::clock::now;

/// Evaluates every query of `rule` at the same instant `at`. A failure
/// that means Prometheus cannot answer is `Evaluation::Failed` (it makes
/// ripcord blind); one of this rule's own is `Unevaluable`. The answers
/// are split into instances by the core ([`rule::instances::split`]).
pub async fn evaluate(prom: &Prom, rule: &Rule, at: Timestamp) -> Evaluation {
    let futs = rule.queries.iter().map(|(name, expr)| async move {
        let r = prom.query_for_rule(expr, at).await;
        (name.clone(), r.and_then(|res| res.into_answer(name)))
    });
    let results = futures_util::future::join_all(futs).await;
    let mut answers = BTreeMap::new();
    for (name, r) in results {
        match r {
            Ok(a) => {
                answers.insert(name, a);
            }
            Err(e) if e.is_blinding() => {
                return Evaluation::Failed(format!("query `{name}`: {e}"));
            }
            Err(e) => return Evaluation::Unevaluable(e.to_string()),
        }
    }
    Evaluation::Answers(answers)
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
        eval: Evaluation,
    },
    ActionDone {
        rule: String,
        incident: String,
        action: String,
        result: ActionResult,
    },
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
    #[error("ha: {0}")]
    Ha(String),
}

/// Runs until `shutdown` resolves, then lets running steps finish. With
/// `ha:`, this instance campaigns and runs the engine only while it leads
/// its group ([`group`]).
pub async fn run(
    config: Config,
    rules: RuleSet,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    match config.ha.clone() {
        None => run_term(&config, rules, None, shutdown).await.map(|_| ()),
        Some(ha) => group::run(&config, rules, &ha, shutdown).await,
    }
}

/// Why a term of the engine ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Shutdown,
    /// This instance no longer leads its group.
    LostLeadership,
}

/// Runs the engine until `shutdown` resolves or, in a group, until this
/// instance no longer leads.
async fn run_term(
    config: &Config,
    rules: RuleSet,
    ha: Option<Term>,
    shutdown: impl Future<Output = ()>,
) -> Result<Ended, DaemonError> {
    let Opened {
        prom,
        tx,
        mut rx,
        control_tx,
        mut control_rx,
        mut engine,
        metrics,
        listener,
        mut hup,
        token,
        dir,
    } = startup::open(config, rules, ha.as_ref()).await?;
    let node = ha.map(|t| t.node);
    // This instance paged that it could not act (as a standby, without
    // etcd) and now leads: it says it can act again.
    if let Some(n) = node
        .as_ref()
        .filter(|n| n.cannot_act_paged.swap(false, Ordering::SeqCst))
    {
        let at = now();
        engine.notify_all(global_notification(
            rule::PageEvent::HaCanAct,
            format!("ripcord in {}: {} reaches etcd again", n.prefix, n.name),
            vec![format!("{} leads", n.name)],
            at,
            at,
        ));
    }
    let lost = async {
        match &node {
            Some(n) => n.lost_leadership().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(lost);
    let mut ended = Ended::Shutdown;

    let (stop_tx, stop_rx) = watch::channel(false);
    let misses = Arc::new(AtomicU64::new(0));
    let mut sched = Scheduler::start(prom.clone(), tx.clone(), misses.clone(), metrics.clone());
    sched.sync(&engine.rules);
    drop(tx);
    for name in engine.rules.keys() {
        let state = engine
            .states
            .get(name)
            .map_or(rule::StateName::Ok, |s| s.name());
        metrics.set_state(name, state);
    }
    let server = serve_api(
        config,
        listener,
        &metrics,
        token,
        control_tx,
        stop_rx.clone(),
    );
    let (deliver_stop_tx, deliver_stop_rx) = watch::channel(false);
    let delivery = spawn_delivery(
        config,
        engine.outbox.clone(),
        engine.shared_notifiers.clone(),
        engine.wake.clone(),
        deliver_stop_rx,
        &metrics,
    );
    // Reload on SIGHUP, and on edits in the rule directories (debounced:
    // editors write, rename and touch in bursts).
    let (_watcher, mut watch_rx) = reload::watch_rule_dirs(&config.rule_globs);
    let mut reload_at: Option<tokio::time::Instant> = None;
    let mut hup_pending = false;

    info!(rules = engine.rules.len(), state_dir = %dir.display(), prometheus = %crate::body::redact_url(&config.prometheus.url), mode = ?config.mode, "ripcord running");
    // Ready means ready: config and rules loaded, every task running.
    sd_notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&engine.status_line()),
    ]);
    let watchdog = sd_notify::watchdog_enabled();
    let mut last_status = String::new();

    // The web page's backtests, one at a time.
    let backtests = Arc::new(Semaphore::new(1));
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
                reload::reload_told(&mut engine, &mut sched, config);
            }
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
                engine.compact_if_due();
            }
            Some(_) = engine.running.join_next(), if !engine.running.is_empty() => {}
            Some((c, reply)) = control_rx.recv() => match c {
                Control::Backtest { rule, from, to } => match engine.rules.get(&rule) {
                    Some(r) => backtest::start(
                        prom.clone(),
                        r.clone(),
                        engine.actions.clone(),
                        (from, to),
                        (config.limits.max_actions_per_hour, config.prometheus.blind_after),
                        backtests.clone(),
                        reply,
                    ),
                    None => {
                        let _ = reply.send(Err(format!("unknown rule `{rule}`")));
                    }
                },
                c => {
                    let _ = reply.send(engine.control(c));
                }
            },
            _ = &mut shutdown => break,
            _ = &mut lost => {
                error!("this instance no longer leads its group: no new step starts; back to standby");
                ended = Ended::LostLeadership;
                break;
            }
        }
    }

    // A former leader delivers nothing more: its waiting pages are in etcd
    // for the next leader, and sending them too could send them twice.
    if ended == Ended::LostLeadership {
        let _ = deliver_stop_tx.send(true);
    }
    wind_down(&mut engine, &mut sched, &mut rx).await;
    let _ = stop_tx.send(true);
    while let Ok(msg) = rx.try_recv() {
        if let Msg::ActionDone { .. } = msg {
            engine.handle(msg);
        }
    }
    if ended == Ended::Shutdown {
        flush_pages(&engine).await;
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
    Ok(ended)
}

/// The pages' delivery task, until `stop` turns true.
fn spawn_delivery(
    config: &Config,
    outbox: Arc<Mutex<Outbox>>,
    notifiers: Arc<std::sync::RwLock<BTreeMap<String, Arc<crate::config::Notifier>>>>,
    wake: Arc<tokio::sync::Notify>,
    stop: watch::Receiver<bool>,
    metrics: &Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(crate::notify::outbox::deliver(
        outbox,
        notifiers,
        crate::notify::RenderContext {
            prometheus_url: crate::body::redact_url(&config.prometheus.url),
            host: hostname(),
        },
        wake,
        stop,
        metrics.clone(),
    ))
}

/// The API token, resolved (an empty one is refused).
fn resolve_token(config: &Config) -> Result<Option<crate::config::Secret>, DaemonError> {
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
    Ok(token)
}

/// Serves the API and the web page until `stop` turns true.
fn serve_api(
    config: &Config,
    listener: tokio::net::TcpListener,
    metrics: &Arc<Metrics>,
    token: Option<crate::config::Secret>,
    control: mpsc::Sender<ControlMsg>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let app = crate::api::router(
        metrics.clone(),
        token,
        control,
        config.web_read,
        crate::body::redact_url(&config.prometheus.url),
    );
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            error!("API listener failed: {e}");
        }
    })
}

/// Stops evaluating and lets running steps finish (each has its timeout);
/// their results are still applied and journaled. systemd is told to wait.
async fn wind_down(engine: &mut Engine, sched: &mut Scheduler, rx: &mut mpsc::Receiver<Msg>) {
    info!("stopping: no new evaluations or steps; waiting for running steps to finish");
    engine.stopping.store(true, Ordering::SeqCst);
    sd_notify(&[sd_notify::NotifyState::Stopping]);
    sched.stop_all().await;
    let mut extend = tokio::time::interval(Duration::from_secs(1));
    while !engine.running.is_empty() {
        tokio::select! {
            Some(msg) = rx.recv() => engine.handle(msg),
            Some(_) = engine.running.join_next() => {}
            _ = extend.tick() => sd_notify(&[sd_notify::NotifyState::ExtendTimeoutUsec(5_000_000)]),
        }
    }
}

/// Pages stay in the outbox on disk; what is due gets a short chance to go
/// out now, the rest is delivered after the next start.
async fn flush_pages(engine: &Engine) {
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
}
