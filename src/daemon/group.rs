//! `ripcord run` with `ha:`: an instance of a group on etcd ([`crate::ha`]).
//!
//! Every instance campaigns for the leader key. A standby is warm: it
//! evaluates every rule on its schedule and mirrors the states, budget and
//! pause the leader committed to etcd, so its `status` and web page show
//! the rules with fresh values; it acts on nothing and feeds no core. It
//! pages, once, when it cannot reach etcd long enough that nobody may be
//! able to act. The instance that wins
//! takes the group's state over from etcd — open incidents, cooldowns,
//! timers, the budget, interrupted steps (reported, never run again) and
//! pages not yet delivered (their keys unchanged) — into its own journal,
//! then runs the engine with every commit fenced on its term. When it no
//! longer leads, the engine stops at once (no new step starts) and the
//! instance is a standby again. It may not decide anything the core
//! decides; it only chooses whether this process's engine runs.

use super::*;
use crate::config::HaConfig;
use crate::ha::Node;

/// A term of this instance as the group's leader.
pub(super) struct Term {
    pub node: Arc<Node>,
    /// The group has no state in etcd yet: this instance's journal seeds it.
    pub seed: bool,
    /// What the takeover found: pages waiting, steps interrupted.
    pub pages: usize,
    pub interrupted: usize,
}

pub(super) async fn run(
    config: &Config,
    rules: RuleSet,
    ha: &HaConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let node = Arc::new(Node::connect(ha).await.map_err(DaemonError::Ha)?);
    state_dir::prepare(&config.state_dir)?;
    info!(name = %node.name, prefix = %node.prefix, lease_ttl = ?node.ttl, endpoints = ?ha.endpoints, "ha: campaigning for the group's leadership");
    let campaign = tokio::spawn(node.clone().campaign());
    // Polled by the standby and by each term; never again once it fired.
    tokio::pin!(shutdown);
    let mut rules = rules;
    let result = loop {
        let standby = match Standby::start(config, &rules, node.clone()).await {
            Ok(s) => s,
            Err(e) => break Err(e),
        };
        sd_notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("standby in {} as {}", node.prefix, node.name)),
        ]);
        let lead = tokio::select! {
            _ = node.became_leader() => true,
            _ = &mut shutdown => false,
        };
        standby.stop().await;
        if !lead {
            break Ok(());
        }
        let term = match take_over(config, &node).await {
            Ok(t) => t,
            Err(e) => {
                node.step_down(&format!("cannot take the group's state over: {e}"));
                continue;
            }
        };
        // The rule files as they are now (a term may start long after
        // the last one); the previous set if they do not load.
        if let Some(r) = load_rules(config) {
            rules = r;
        }
        match run_term(config, rules.clone(), Some(term), &mut shutdown).await {
            Ok(Ended::Shutdown) => break Ok(()),
            Ok(Ended::LostLeadership) => {
                warn!(name = %node.name, "standby again");
            }
            Err(e) => break Err(e),
        }
    };
    node.resign(&format!("{} was stopped (ripcord shut down)", node.name))
        .await;
    campaign.abort();
    result
}

fn load_rules(config: &Config) -> Option<RuleSet> {
    let files = crate::config::load::expand_globs(&config.rule_globs).ok()?;
    let loaded = crate::config::load::load_rule_files_to_run(&files);
    match loaded.value {
        Some(set) => Some(set),
        None => {
            for d in loaded.errors() {
                error!("{d}");
            }
            error!("the rule files have errors: this term runs the rules loaded before");
            None
        }
    }
}

/// Reads the group's state from etcd and makes it this instance's
/// journal, so the engine starts exactly where the last leader stopped.
/// Pages left in this instance's outbox from an earlier term are dropped:
/// the ones still undelivered are in etcd and come back with their keys.
async fn take_over(config: &Config, node: &Arc<Node>) -> Result<Term, String> {
    let group = node.load().await?;
    node.may_act()?;
    let dir = &config.state_dir;
    if group.initialized {
        let entries = group.entries;
        let dir2 = dir.clone();
        crate::fsio::blocking(move || -> std::io::Result<()> {
            health::archive_incidents(&dir2);
            match std::fs::remove_dir_all(dir2.join("outbox")) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            Journal::open_compacted(&dir2, &entries).map(|_| ())
        })
        .map_err(|e| format!("{}: {}", dir.display(), state_dir::describe(&e)))?;
        info!(
            pages = group.pages,
            interrupted = group.interrupted,
            "took the group's state over from etcd"
        );
    } else {
        info!("the group has no state in etcd yet: this instance's journal seeds it");
    }
    Ok(Term {
        node: node.clone(),
        seed: !group.initialized,
        pages: group.pages,
        interrupted: group.interrupted,
    })
}

/// Called by start-up once the engine exists and its commits are fenced:
/// seeds a new group, and pages that the leadership changed.
pub(super) fn begin_term(engine: &mut Engine, t: &Term) {
    let at = now();
    if t.seed {
        for e in snapshot_entries(&engine.states, &engine.shared) {
            if !engine.journal(e) {
                error!("could not seed the group's state in etcd");
                break;
            }
        }
    }
    let me = t.node.name.clone();
    let Some(previous) = t.node.take_previous() else {
        engine.event(
            at,
            None,
            EventKind::Leader,
            format!("{me} leads {} (the first leader)", t.node.prefix),
        );
        return;
    };
    let summary = format!(
        "ripcord leader of {} changed: {} → {me}",
        t.node.prefix, previous.name
    );
    warn!("{summary} ({})", previous.why);
    engine.event(
        at,
        None,
        EventKind::Leader,
        format!("{summary}: {}", previous.why),
    );
    let n = global_notification(
        PageEvent::LeaderChanged,
        summary,
        vec![
            format!("from: {}", previous.name),
            format!("to: {me}"),
            format!("why: {}", previous.why),
            format!(
                "taken over: {} interrupted step(s) (reported, not run again), {} page(s) not yet delivered",
                t.interrupted, t.pages
            ),
        ],
        at,
        at,
    );
    engine.notify_all(n);
}

/// One instance as a standby last evaluated it: when, each query's value,
/// and why not if it could not.
type Seen = (Timestamp, BTreeMap<String, Option<f64>>, Option<String>);

/// What a standby shows: the group's states as the leader committed them
/// (read from etcd every few seconds) and its own evaluations' values.
#[derive(Default)]
struct Mirror {
    states: BTreeMap<String, RuleState>,
    shared: Option<Shared>,
    /// Instance key → when this standby last evaluated it, the values, the
    /// error if it could not.
    seen: HashMap<String, Seen>,
    /// The last evaluation could not reach Prometheus.
    blind: bool,
}

impl Mirror {
    fn load(&mut self, entries: Vec<Entry>) {
        self.states.clear();
        for e in entries {
            match e {
                Entry::State { rule, state, .. } => {
                    self.states.insert(rule, *state);
                }
                Entry::Shared { shared } => self.shared = Some(shared),
                _ => {}
            }
        }
    }

    fn saw(&mut self, rule: &Rule, at: Timestamp, eval: &Evaluation) {
        self.blind = eval.blinding().is_some();
        let known: Vec<&BTreeMap<String, String>> = instances::of_rule(&self.states, &rule.name)
            .map(|(_, s)| &s.labels)
            .collect();
        for seen in instances::split(rule, eval, &known) {
            let (values, error) = match &seen.obs {
                rule::Observation::Samples(m) => (
                    m.iter()
                        .map(|(q, s)| {
                            let v = match s {
                                rule::Sample::Value(v) => Some(*v),
                                rule::Sample::Empty => None,
                            };
                            (q.clone(), v)
                        })
                        .collect(),
                    None,
                ),
                rule::Observation::Failed(e) | rule::Observation::Unevaluable(e) => {
                    (BTreeMap::new(), Some(e.clone()))
                }
            };
            self.seen.insert(seen.key, (at, values, error));
        }
    }

    fn snapshot(
        &self,
        rules: &BTreeMap<String, Arc<Rule>>,
        mode: &str,
        ha: crate::ha::HaStatus,
        metrics: &Metrics,
    ) -> Snapshot {
        let at = now();
        let mut rows = Vec::new();
        for (name, r) in rules {
            let mut keys: Vec<String> = instances::of_rule(&self.states, name)
                .map(|(k, _)| k.clone())
                .collect();
            for k in self.seen.keys() {
                if instances::rule_of(k) == name && !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
            if keys.is_empty() {
                keys.push(name.clone());
            }
            keys.sort();
            for key in keys {
                let s = self.states.get(&key).cloned().unwrap_or_default();
                let seen = self.seen.get(&key);
                rows.push(RuleStatus {
                    file: r.file.display().to_string(),
                    condition: r.condition.source().to_string(),
                    rule: r.name.clone(),
                    labels: s.labels.clone(),
                    state: s.name(),
                    phase: s.phase(),
                    incident: s.incident().map(|i| i.id.clone()),
                    opened_at: s.incident().map(|i| i.opened_at.rfc3339()),
                    last_evaluation: seen
                        .map(|x| x.0.rfc3339())
                        .or(s.last_eval.map(|t| t.rfc3339())),
                    values: seen.map(|x| x.1.clone()).unwrap_or_else(|| s.values()),
                    last_error: seen.and_then(|x| x.2.clone()),
                    data_phase: metrics.data_phase(&r.name),
                    name: key,
                    ..RuleStatus::default()
                });
            }
        }
        let mut shared = self.shared.clone();
        Snapshot {
            version: crate::LONG_VERSION.into(),
            mode: mode.into(),
            rules: rows,
            actions_left_this_hour: shared.as_mut().map_or(0, |s| s.budget.remaining(at)),
            paused: shared
                .as_ref()
                .and_then(|s| s.pause.as_ref().filter(|_| s.paused(at)))
                .map(|p| crate::api::PauseStatus {
                    until: p.until.map(|u| u.rfc3339()),
                    reason: p.reason.clone(),
                }),
            prometheus_up: !self.blind,
            ha: Some(ha),
            ..Snapshot::default()
        }
    }
}

/// A standby's listener and pages.
struct Standby {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Standby {
    async fn start(
        config: &Config,
        rules: &RuleSet,
        node: Arc<Node>,
    ) -> Result<Standby, DaemonError> {
        let token = resolve_token(config)?;
        // The term that just ended may still hold the port for a moment.
        let listener = startup::bind_retrying(config.listen).await?;
        let metrics = Arc::new(Metrics::new());
        metrics.ha_leader.set(0);
        metrics.rules.set(rules.rules.len() as i64);
        let (control_tx, mut control_rx) = mpsc::channel::<ControlMsg>(16);
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = serve_api(
            config,
            listener,
            &metrics,
            token,
            control_tx,
            stop_rx.clone(),
        );
        let outbox_dir = config.state_dir.join("ha-outbox");
        let outbox = Outbox::open(&outbox_dir).map_err(|e| state_dir::error(&outbox_dir, &e))?;
        let outbox = Arc::new(Mutex::new(outbox));
        let notifiers = rules.notifiers.clone();
        let wake = Arc::new(tokio::sync::Notify::new());
        let delivery = spawn_delivery(
            config,
            outbox.clone(),
            Arc::new(std::sync::RwLock::new(notifiers.clone())),
            wake.clone(),
            stop_rx.clone(),
            &metrics,
        );
        let mode = match config.mode {
            crate::config::Mode::Enforce => "enforce",
            crate::config::Mode::DryRun => "dry-run",
        };
        let mut stop = stop_rx.clone();
        let watchdog = sd_notify::watchdog_enabled().is_some();
        // Warm: every rule is evaluated on its schedule, for the status.
        let rule_map: BTreeMap<String, Arc<Rule>> = rules
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        let (tx, mut rx) = mpsc::channel::<Msg>(256);
        let mut sched = Scheduler::start(
            Prom::new(&config.prometheus).map_err(DaemonError::Prometheus)?,
            tx,
            Arc::new(AtomicU64::new(0)),
            metrics.clone(),
        );
        sched.sync(&rule_map);
        let answer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut mirror = Mirror::default();
            let mut paged = node.cannot_act_paged.load(Ordering::SeqCst);
            let mut rounds = 0u64;
            loop {
                tokio::select! {
                    Some(msg) = rx.recv() => {
                        if let Msg::Evaluated { rule, at, eval } = msg {
                            if let Some(r) = rule_map.get(&rule) {
                                mirror.saw(r, at, &eval);
                            }
                        }
                    }
                    Some((c, reply)) = control_rx.recv() => {
                        let st = node.status();
                        let _ = reply.send(match c {
                            Control::Status => serde_json::to_string(&mirror.snapshot(&rule_map, mode, st, &metrics))
                            .map_err(|e| e.to_string()),
                            _ => Err(format!(
                                "{} is a standby of {}: {}; send this to the leader",
                                node.name,
                                node.prefix,
                                match &st.leader {
                                    Some(l) => format!("{l} leads"),
                                    None => "no instance leads now".into(),
                                }
                            )),
                        });
                    }
                    _ = tick.tick() => {
                        rounds += 1;
                        // The leader's committed states, every few seconds.
                        if rounds % 3 == 1 && node.problem_since().is_none() {
                            if let Ok(g) = node.load().await {
                                mirror.load(g.entries);
                            }
                        }
                        paged = page_cannot_act(&node, paged, &outbox, &notifiers, &wake);
                        node.cannot_act_paged.store(paged, Ordering::SeqCst);
                        // A standby is healthy while it campaigns.
                        if watchdog && node.campaigning() {
                            sd_notify(&[sd_notify::NotifyState::Watchdog]);
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
            // Stopped to lead (it reached etcd) or to end: an instance that
            // paged `ha_cannot_act` says `ha_can_act` before it goes, or
            // nobody might (the other instance may never have paged).
            sched.stop_all().await;
        });
        Ok(Standby {
            stop: stop_tx,
            tasks: vec![server, delivery, answer],
        })
    }

    /// Ends the standby's tasks and frees its port: within two seconds
    /// together, then whatever is left is aborted (a takeover waits on it).
    async fn stop(self) {
        let _ = self.stop.send(true);
        let aborts: Vec<_> = self.tasks.iter().map(|t| t.abort_handle()).collect();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(Duration::from_secs(2), all)
            .await
            .is_err()
        {
            for a in aborts {
                a.abort();
            }
        }
    }
}

/// Pages `ha_cannot_act` once when etcd has been unusable for a lease's
/// length (then no instance may be able to act), and `ha_can_act` when it
/// answers again. Every instance that sees it pages; PagerDuty and
/// Alertmanager fold them into one alert by its group-wide key.
fn page_cannot_act(
    node: &Node,
    paged: bool,
    outbox: &Mutex<Outbox>,
    notifiers: &BTreeMap<String, Arc<crate::config::Notifier>>,
    wake: &tokio::sync::Notify,
) -> bool {
    let at = now();
    let (event, summary, details) = match (node.problem_since(), paged) {
        (Some((since, why)), false) if at.since(since) >= node.ttl => (
            PageEvent::HaCannotAct,
            format!(
                "ripcord in {} may not be able to act: {} cannot use etcd",
                node.prefix, node.name
            ),
            vec![
                format!("since {}: {why}", since.rfc3339()),
                "without etcd's quorum no instance acts: rollbacks do not run until it is back"
                    .into(),
            ],
        ),
        (None, true) => (
            PageEvent::HaCanAct,
            format!(
                "ripcord in {}: {} reaches etcd again",
                node.prefix, node.name
            ),
            vec![match node.status().leader {
                Some(l) => format!("{l} leads"),
                None => "an instance is about to lead".into(),
            }],
        ),
        _ => return paged,
    };
    warn!("{summary}");
    let n = global_notification(event, summary, details, at, at);
    if let Ok(mut o) = outbox.lock() {
        for (name, notifier) in notifiers {
            if notify::wants(notifier, &n) {
                let key = format!("ha/{}/{}/{}/{name}", node.name, event.as_str(), at.0);
                let mut page = n.clone();
                page.page_id = crate::notify::outbox::key_hash(&key);
                if let Err(e) = crate::fsio::blocking(|| o.push_keyed(&key, name, page, at)) {
                    error!("cannot queue the page: {}", state_dir::describe(&e));
                }
            }
        }
    }
    wake.notify_one();
    event == PageEvent::HaCannotAct
}
