//! The scheduler: one task per rule evaluates it on its schedule (`every:`
//! or `cron:`), within a global bound on concurrent evaluations, never
//! overlapping itself, and sends each observation to the engine. It may not
//! touch rule state.
use super::*;
use crate::freshness::{self, Phase};
use std::time::SystemTime;

/// The next evaluation time after `after`. `every: D` ticks go on the
/// rule's [`Phase`]: at least D after `after`, on the first instant its
/// data is fresh (or, before that is known, on the multiples of D since
/// the epoch). Rules of one interval on the same data evaluate at the same
/// instants, so a query they share is sent once ([`Prom::query_shared`]);
/// no rule is evaluated more often than asked.
fn next_tick(schedule: &Schedule, after: SystemTime, phase: &Phase) -> SystemTime {
    match schedule {
        Schedule::Every(d) => {
            let t = Timestamp::from_system(after + *d).0 as f64;
            let next = phase.at_or_after(t).round();
            Timestamp(next as i64).to_system().max(after + *d)
        }
        Schedule::Cron(_, s) => {
            let dt: chrono_free::Utc = after.into();
            s.after(&dt.0)
                .next()
                .map(chrono_free::to_system)
                .unwrap_or(after + Duration::from_secs(3600))
        }
    }
}

/// How often a rule's data phase is learned again: scrape intervals and
/// targets change, and a measured interval drifts by its rounding.
const RELEARN: Duration = Duration::from_secs(300);
/// After a probe that taught nothing (no data, an error), try again.
const RELEARN_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Asks Prometheus when `rule`'s data arrives ([`freshness`]), at the
/// evaluation instant `at` (rules on one instant share the probe).
async fn learn_phase(prom: &Prom, probe: &str, every: Duration, at: Timestamp) -> Option<Phase> {
    match prom.query_shared(probe, at).await {
        Ok(crate::prom::QueryResult::Vector(v)) => freshness::learn(
            &freshness::targets(&v),
            every.as_millis() as f64,
            at.0 as f64,
        ),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("data phase probe failed: {e}");
            None
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
    // `every:` rules evaluate at once, then on their interval, placed just
    // after their data is scraped once that is learned; cron rules wait
    // for their first time.
    let every = match rule.schedule {
        Schedule::Every(d) => Some(d),
        Schedule::Cron(..) => None,
    };
    let mut phase = Phase::epoch(every.map_or(1000.0, |d| d.as_millis() as f64));
    let probe = every.and_then(|d| {
        freshness::selector(rule.queries.values())
            .map(|sel| freshness::probe_expr(&sel, freshness::window(d)))
    });
    let mut learn_at = probe.as_ref().map(|_| std::time::Instant::now());
    let mut due = match rule.schedule {
        Schedule::Every(_) => SystemTime::now(),
        Schedule::Cron(..) => next_tick(&rule.schedule, SystemTime::now(), &phase),
    };
    // Test-only switch: evaluations hang after this many seconds, as a
    // wedged evaluator would, so tests can show the watchdog restarts ripcord.
    let wedge_after = std::env::var("RIPCORD_TEST_WEDGE_EVALUATIONS_AFTER")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_secs);
    let started = std::time::Instant::now();
    let mut first = true;
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
        // A tick on time is evaluated at its own instant (the same for every
        // rule on the grid); the first, and a late one, at the current one.
        let at = match rule.schedule {
            Schedule::Every(_) if first => now(),
            Schedule::Every(_) => {
                let due_at = Timestamp::from_system(due);
                if now().since(due_at) < Duration::from_secs(1) {
                    due_at
                } else {
                    now()
                }
            }
            Schedule::Cron(..) => now(),
        };
        first = false;
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
        // After the evaluation (never delaying it): when is the data fresh?
        if let (Some(every), Some(probe), Some(when)) = (every, &probe, learn_at) {
            if std::time::Instant::now() >= when {
                let learned = learn_phase(&prom, probe, every, at).await;
                let again = if learned.is_some() {
                    RELEARN
                } else {
                    RELEARN_AFTER_FAILURE
                };
                learn_at = Some(std::time::Instant::now() + again);
                if let Some(p) = learned {
                    if let Ok(mut m) = metrics.data_phase.lock() {
                        m.insert(rule.name.clone(), p.describe());
                    }
                    phase = p;
                }
            }
        }
        // Ticks that passed while this evaluation ran are skipped, counted.
        let finished = SystemTime::now();
        due = next_tick(&rule.schedule, due, &phase);
        while due <= finished {
            misses.fetch_add(1, Ordering::Relaxed);
            metrics.missed_evaluations.inc();
            due = next_tick(&rule.schedule, due, &phase);
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
        if let Ok(mut m) = self.metrics.data_phase.lock() {
            m.retain(|n, _| rules.contains_key(n));
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
        // On the 30 s grid, at least 30 s later: 11:06:47 → 11:07:30.
        let epoch = Phase::epoch(30_000.0);
        assert_eq!(
            next_tick(&Schedule::Every(Duration::from_secs(30)), t, &epoch),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_050)
        );
        // From a grid point, exactly one interval.
        let on = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_050);
        assert_eq!(
            next_tick(&Schedule::Every(Duration::from_secs(30)), on, &epoch),
            on + Duration::from_secs(30)
        );
        // On a learned phase: data readable at .330 of each second, the
        // rule every 5 s → 5 s later, then up to the next fresh instant.
        let fresh = Phase {
            anchor_ms: 1_795_000_050_330.0,
            period_ms: 1000.0,
            interval_ms: Some(1000.0),
            ready_after_ms: 30.0,
            targets: 1,
        };
        assert_eq!(
            next_tick(&Schedule::Every(Duration::from_secs(5)), on, &fresh),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_055_330)
        );
        let cron: cron::Schedule = "0 */5 * * * *".parse().expect("cron");
        let next = next_tick(
            &Schedule::Cron("0 */5 * * * *".into(), Box::new(cron)),
            t,
            &epoch,
        );
        // 1_795_000_007 is 11:06:47; the next 5-minute mark is 11:10:00.
        assert_eq!(
            next,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_200)
        );
    }
}
