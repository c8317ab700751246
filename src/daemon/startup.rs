//! Start-up: everything `ripcord run` opens before it evaluates anything.
//!
//! Nothing under `state_dir` changes until every piece of state has opened:
//! the directory is proven writable, the journal replayed, the outbox
//! opened, the API token read and the listener bound; only then do the
//! journal's pages go to the outbox (which skips those it has) and the
//! journal get compacted (a new file, synced, renamed over the old one). A
//! start that fails leaves the directory as it found it. Then what the
//! journal means is carried out: a rule whose state line is unreadable is
//! taken as an open, unrecovered incident, and interrupted steps are
//! reported, never run again.

use super::*;

/// What [`open`] opened, for the main loop.
pub(super) struct Opened {
    pub prom: Prom,
    pub tx: mpsc::Sender<Msg>,
    pub rx: mpsc::Receiver<Msg>,
    pub control_tx: mpsc::Sender<ControlMsg>,
    pub control_rx: mpsc::Receiver<ControlMsg>,
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub listener: tokio::net::TcpListener,
    pub hup: tokio::signal::unix::Signal,
    pub token: Option<crate::config::Secret>,
    pub dir: std::path::PathBuf,
}

/// The journal entries that stand for `states` and `shared`: what a
/// compaction writes.
pub(super) fn snapshot_entries(
    states: &BTreeMap<String, RuleState>,
    shared: &Shared,
) -> Vec<Entry> {
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

pub(super) async fn open(
    config: &Config,
    rules: RuleSet,
    ha: Option<&Term>,
) -> Result<Opened, DaemonError> {
    let prom = Prom::new(&config.prometheus).map_err(DaemonError::Prometheus)?;
    let dir = config.state_dir.clone();
    state_dir::prepare(&dir)?;
    let journal_path = Journal::path(&dir);
    let mut replayed = Journal::replay(&dir).map_err(|e| state_dir::StateError {
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
    let token = resolve_token(config)?;
    let listener = bind_retrying(config.listen).await?;
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| DaemonError::Signal(e.to_string()))?;

    let rule_map: BTreeMap<String, Arc<Rule>> = rules
        .rules
        .iter()
        .map(|r| (r.name.clone(), r.clone()))
        .collect();
    // States of rules no longer configured are kept (not evaluated): a rule
    // that comes back finds its incident and its cooldown.
    let states = std::mem::take(&mut replayed.states);
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
    // Nothing runs yet: a run the journal left unfinished was interrupted.
    global::runs_after_replay(&mut shared);
    shared.mode = config.mode;

    // Everything opened: now the state directory may change. Pages the
    // journal committed reach the outbox first, then the journal is compacted.
    let mut resumed = 0;
    for p in std::mem::take(&mut replayed.pages) {
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
    health::archive_incidents(&dir);
    crate::notify::outbox::crash_point("before_compaction");
    let mut journal = Journal::open_compacted(&dir, &snapshot_entries(&states, &shared))
        .map_err(|e| state_dir::error(&journal_path, &e))?;
    // In a group, every commit from here on is the leader's, fenced.
    if let Some(t) = ha {
        journal.fence = Some(t.node.clone());
        let node = t.node.clone();
        outbox.on_finished = Some(Arc::new(move |key: &str| node.page_finished(key)));
        metrics.ha_leader.set(1);
    }
    // The compacted journal names no page: the outbox's tombstones can go.
    outbox.forget_finished();

    let (tx, rx) = mpsc::channel::<Msg>(256);
    metrics.rules.set(rule_map.len() as i64);
    metrics.last_reload_successful.set(1);
    let (control_tx, control_rx) = mpsc::channel::<ControlMsg>(16);
    let mut engine = Engine {
        rules: rule_map,
        actions: rules.actions.clone(),
        states,
        shared,
        journal: Arc::new(Mutex::new(journal)),
        locks: Locks::default(),
        running: JoinSet::new(),
        tx: tx.clone(),
        last_reason: HashMap::new(),
        blind: Blindness::default(),
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
        recent: HashMap::new(),
        claimed: HashMap::new(),
        joiners: HashMap::new(),
        ha: ha.map(|t| t.node.clone()),
    };
    if let Some(t) = ha {
        group::begin_term(&mut engine, t);
    }

    resume(&mut engine, &replayed.uncertain, &replayed.interrupted);

    Ok(Opened {
        prom,
        tx,
        rx,
        control_tx,
        control_rx,
        engine,
        metrics,
        listener,
        hup,
        token,
        dir,
    })
}

/// Carries out what the replayed journal means, as the core decided it
/// ([`global::after_replay`]): rules taken as open and unrecovered are
/// journaled and paged, interrupted steps are recorded and never run again,
/// interrupted actions are reported to their rules.
fn resume(
    engine: &mut Engine,
    uncertain: &std::collections::BTreeSet<String>,
    interrupted: &[global::Interrupted],
) {
    let at = now();
    let decided = global::after_replay(&engine.rules, &engine.states, uncertain, interrupted, at);
    for d in decided {
        match d {
            global::AfterReplay::TakenAsOpen { rule, state } => {
                let id = state.incident().map(|i| i.id.clone()).unwrap_or_default();
                error!(rule = %rule, incident = %id, "the rule's latest state in the journal is unreadable: taken as an open, unrecovered incident; nothing runs for it before its condition clears");
                engine.journal(Entry::State {
                    rule: rule.clone(),
                    state: state.clone(),
                    shared: None,
                    pages: Vec::new(),
                });
                engine.states.insert(rule.clone(), *state);
                let n = global_notification(
                    PageEvent::JournalDamaged,
                    format!("rule {rule}: its latest state in the journal could not be read; taken as an open, unrecovered incident {id}"),
                    vec![
                        "nothing runs for this rule before its condition clears; check by hand what its actions did".into(),
                    ],
                    at,
                    at,
                );
                engine.notify_all(n);
            }
            global::AfterReplay::StepInterrupted(i) => {
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
            global::AfterReplay::ActionInterrupted {
                rule,
                incident,
                action,
            } => engine.apply(
                &rule,
                Input::ActionFinished {
                    incident,
                    action,
                    result: ActionResult::Interrupted,
                },
                at,
            ),
        }
    }
}

/// Binds the listener; a port still held for a moment (a standby's
/// listener closing as its term begins) is tried again for two seconds.
pub(super) async fn bind_retrying(
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, DaemonError> {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(DaemonError::Listen {
                    addr,
                    problem: state_dir::describe(&e),
                })
            }
        }
    }
}
