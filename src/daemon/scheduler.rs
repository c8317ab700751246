//! The scheduler: one task per rule evaluates it on its schedule (`every:`
//! or `cron:`), within a global bound on concurrent evaluations, never
//! overlapping itself, and sends each observation to the engine. It may not
//! touch rule state.
use super::*;
use std::time::SystemTime;

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
        let eval = evaluate(&prom, &rule, at).await;
        metrics
            .evaluation_duration
            .observe(started.elapsed().as_secs_f64());
        drop(permit);
        if tx
            .send(Msg::Evaluated {
                rule: rule.name.clone(),
                at,
                eval,
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
pub(super) struct Scheduler {
    pub(super) prom: Prom,
    pub(super) sem: Arc<Semaphore>,
    pub(super) tx: mpsc::Sender<Msg>,
    pub(super) misses: Arc<AtomicU64>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) tasks: JoinSet<()>,
    pub(super) running: HashMap<String, (watch::Sender<bool>, String)>,
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
    pub(super) fn sync(&mut self, rules: &BTreeMap<String, Arc<Rule>>) {
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

    pub(super) async fn stop_all(&mut self) {
        for (_, (stop, _)) in self.running.drain() {
            let _ = stop.send(true);
        }
        self.tasks.shutdown().await;
    }
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
