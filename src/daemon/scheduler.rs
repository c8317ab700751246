//! The scheduler: one task places every rule's evaluations on its
//! schedule (`every:` or `cron:`) in one queue, starts each as a short task
//! within a global bound on concurrent evaluations, never overlapping
//! itself (a tick that comes while the rule's evaluation still runs is
//! skipped and counted), and sends each observation to the engine. `every:`
//! rules are placed just after their data is readable ([`freshness`]). An
//! idle rule costs a queue entry and a slot, not a task. It may not touch
//! rule state.
use super::*;
use crate::freshness::{self, Grid, Phase};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Instant, SystemTime};

/// The next evaluation time after `after`. `every: D` ticks go on the
/// rule's [`Phase`]: on the instant its data is fresh nearest to one
/// interval after `after` (or, before that is known, on the multiples of D
/// since the epoch). Once on the phase, ticks are exactly D apart; when the
/// phase is first learned or changes, one gap may be up to half a period
/// shorter or longer (rounding up always could cost nearly a whole
/// interval). Rules of one interval on the same data evaluate at the same
/// instants, so a query they share is sent once ([`Prom::query_for_rule`]).
fn next_tick(schedule: &Schedule, after: SystemTime, grid: &Grid) -> SystemTime {
    match schedule {
        Schedule::Every(d) => {
            let target = Timestamp::from_system(after + *d).0 as f64;
            let up = grid.at_or_after(target);
            let down = up - grid.period_ms;
            let earliest = Timestamp::from_system(after).0 as f64 + d.as_millis() as f64 / 2.0;
            let next = if down >= earliest && target - down < up - target {
                down
            } else {
                up
            };
            // Whatever a phase says (a skewed or absurd timestamp from
            // Prometheus), a rule is never put off past two intervals.
            let latest = after + *d * 2;
            match Timestamp(next.round() as i64).to_system() {
                t if t > latest || !next.is_finite() => latest,
                t => t.max(after + *d / 2),
            }
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

/// How often a rule's data phase is learned again: scrape intervals and
/// targets change, and a measured interval drifts by its rounding.
const RELEARN: Duration = Duration::from_secs(300);
/// After a probe that taught nothing (no data, an error, an interval not
/// yet measurable), try again.
const RELEARN_SOON: Duration = Duration::from_secs(60);

/// Asks Prometheus when a rule's data arrives ([`freshness`]), as of the
/// whole second after `at`: rules over the same data that ask within that
/// second share one probe. (Not the second before: a probe older than the
/// first scrape of a new target would see nothing.)
async fn learn_phase(prom: &Prom, probe: &str, every: Duration, at: Timestamp) -> Option<Phase> {
    let at = Timestamp(at.0 + (1000 - at.0.rem_euclid(1000)) % 1000);
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

/// One rule's place in the schedule.
struct Slot {
    /// The rule's name, shared with its queue entries.
    name: Arc<str>,
    rule: Arc<Rule>,
    /// The tick it waits for; a queue entry for another instant is stale.
    due: SystemTime,
    /// Not evaluated yet: the first evaluation is at the current instant.
    first: bool,
    /// Its evaluation (and probe) still runs.
    busy: bool,
    /// The tick last started: the next is placed from it.
    last_tick: SystemTime,
    /// Where `every:` ticks go.
    phase: Grid,
    /// When to probe next, if the rule has current data to align to (the
    /// probe's selector is found again then: it is not kept).
    learn_at: Option<Instant>,
    /// Tells this rule's slot from a later one of the same name (a reload
    /// that changed it): a finished evaluation of the old one is ignored.
    generation: u64,
}

/// What an evaluation task reports back to the scheduler.
struct Done {
    rule: String,
    generation: u64,
    /// A probe ran: what it taught (`None`: nothing).
    learned: Option<Option<Phase>>,
}

enum Cmd {
    Sync(BTreeMap<String, Arc<Rule>>),
}

/// What the scheduler task needs to start evaluations.
struct Ctx {
    prom: Prom,
    sem: Arc<Semaphore>,
    tx: mpsc::Sender<Msg>,
    misses: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    /// Test-only: evaluations hang from this instant on, as a wedged
    /// evaluator would, so tests can show the watchdog restarts ripcord.
    wedge_at: Option<Instant>,
}

/// Every rule's slot, sorted by name and found by binary search: a daemon
/// may hold thousands, and a hash table would add two-thirds again of room.
#[derive(Default)]
struct Slots(Vec<Slot>);

impl Slots {
    fn find(&self, name: &str) -> Option<usize> {
        self.0.binary_search_by(|s| (*s.name).cmp(name)).ok()
    }

    fn get(&self, name: &str) -> Option<&Slot> {
        self.0.get(self.find(name)?)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Slot> {
        let i = self.find(name)?;
        self.0.get_mut(i)
    }

    fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn iter(&self) -> std::slice::Iter<'_, Slot> {
        self.0.iter()
    }

    /// Adds slots for rules not here yet, keeping the order.
    fn add(&mut self, new: Vec<Slot>) {
        if !new.is_empty() {
            self.0.extend(new);
            self.0.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        }
        self.0.shrink_to_fit();
    }
}

/// The scheduler task's own state.
struct Queue {
    slots: Slots,
    /// (due, generation, rule), soonest first.
    heap: BinaryHeap<Reverse<(SystemTime, u64, Arc<str>)>>,
    /// Due and waiting for an evaluation permit, in order: (rule,
    /// generation, the tick's instant).
    ready: VecDeque<(Arc<str>, u64, SystemTime)>,
    next_generation: u64,
    /// Phases learned lately, one copy each for the rules that learned
    /// them (rules over the same scrapes learn the same one).
    phases: VecDeque<Arc<Phase>>,
}

impl Queue {
    fn push(&mut self, name: &str) {
        if let Some(s) = self.slots.get(name) {
            self.heap
                .push(Reverse((s.due, s.generation, s.name.clone())));
        }
        // Entries for ticks since moved (a phase learned, a rule replaced)
        // stay until their time: past half again the live ones, the queue
        // is rebuilt from the slots, one entry each.
        if self.heap.len() > self.slots.len() * 3 / 2 + 64 {
            self.heap = self
                .slots
                .iter()
                .map(|s| Reverse((s.due, s.generation, s.name.clone())))
                .collect();
        }
    }

    /// Adds new and changed rules, drops removed ones; unchanged rules keep
    /// their place and phase.
    fn sync(&mut self, rules: &BTreeMap<String, Arc<Rule>>, ctx: &Ctx) {
        let metrics = &ctx.metrics;
        // Query texts several rules ask are sent once per instant.
        let mut seen = std::collections::HashSet::new();
        let mut multi = std::collections::HashSet::new();
        for q in rules.values().flat_map(|r| r.queries.values()) {
            if !seen.insert(q.as_str()) {
                multi.insert(q.clone());
            }
        }
        ctx.prom.set_shared_texts(multi);
        self.slots.0.retain(|s| {
            rules
                .get(&*s.name)
                .is_some_and(|r| r.fingerprint == s.rule.fingerprint)
        });
        self.ready.retain(|(n, ..)| self.slots.contains_key(n));
        metrics.keep_data_phases(|n| self.slots.contains_key(n));
        let now = SystemTime::now();
        let mut added = Vec::new();
        for (name, r) in rules {
            if self.slots.contains_key(name.as_str()) {
                continue;
            }
            self.next_generation += 1;
            let every = match r.schedule {
                Schedule::Every(d) => Some(d),
                Schedule::Cron(..) => None,
            };
            let phase = Phase::epoch(every.map_or(1000.0, |d| d.as_millis() as f64)).grid();
            // `every:` rules evaluate at once, then on their interval; cron
            // rules wait for their first time.
            let due = match every {
                Some(_) => now,
                None => next_tick(&r.schedule, now, &phase),
            };
            let aligns = every.is_some() && freshness::selector(r.queries.values()).is_some();
            added.push(Slot {
                name: Arc::from(name.as_str()),
                rule: r.clone(),
                due,
                first: true,
                busy: false,
                last_tick: due,
                phase,
                learn_at: aligns.then(Instant::now),
                generation: self.next_generation,
            });
        }
        let names: Vec<Arc<str>> = added.iter().map(|s| s.name.clone()).collect();
        self.slots.add(added);
        for name in names {
            self.push(&name);
        }
    }

    /// Moves every due tick to `ready` (or, for a rule still busy, counts
    /// it missed) and schedules each rule's next tick.
    fn take_due(&mut self, ctx: &Ctx) {
        let now = SystemTime::now();
        while let Some(Reverse((due, generation, name))) = self.heap.peek().cloned() {
            if due > now {
                break;
            }
            self.heap.pop();
            let Some(slot) = self.slots.get_mut(&name) else {
                continue;
            };
            if slot.generation != generation || slot.due != due {
                continue; // stale: replaced, or rescheduled
            }
            if slot.busy {
                ctx.misses.fetch_add(1, Ordering::Relaxed);
                ctx.metrics.missed_evaluations.inc();
            } else {
                slot.busy = true;
                slot.last_tick = due;
                self.ready.push_back((name.clone(), generation, due));
            }
            // Ticks already past are skipped, counted.
            let mut next = next_tick(&slot.rule.schedule, due, &slot.phase);
            while next <= now {
                ctx.misses.fetch_add(1, Ordering::Relaxed);
                ctx.metrics.missed_evaluations.inc();
                next = next_tick(&slot.rule.schedule, next, &slot.phase);
            }
            slot.due = next;
            self.push(&name);
        }
    }

    /// Starts ready evaluations while permits last.
    fn start_ready(
        &mut self,
        ctx: &Ctx,
        evals: &mut JoinSet<()>,
        done: &mpsc::UnboundedSender<Done>,
    ) {
        // The first tick of every rule comes at once: room for all of them
        // is not kept once they have started.
        if self.ready.is_empty() && self.ready.capacity() > 1024 {
            self.ready.shrink_to(64);
        }
        while let Some((name, generation, tick)) = self.ready.front().cloned() {
            let Some(slot) = self
                .slots
                .get_mut(&name)
                .filter(|s| s.generation == generation)
            else {
                self.ready.pop_front();
                continue;
            };
            let Ok(permit) = ctx.sem.clone().try_acquire_owned() else {
                return;
            };
            self.ready.pop_front();
            // A tick on time is evaluated at its own instant (the same for
            // every rule on that instant); the first, and a late one, at
            // the current one.
            let at = match slot.rule.schedule {
                Schedule::Every(_) if !slot.first => {
                    let due_at = Timestamp::from_system(tick);
                    if now().since(due_at) < Duration::from_secs(1) {
                        due_at
                    } else {
                        now()
                    }
                }
                _ => now(),
            };
            slot.first = false;
            let probe = match (slot.learn_at, &slot.rule.schedule) {
                (Some(when), Schedule::Every(d)) if Instant::now() >= when => {
                    slot.learn_at = None;
                    Some(*d)
                }
                _ => None,
            };
            let rule = slot.rule.clone();
            let (prom, tx, metrics, done) = (
                ctx.prom.clone(),
                ctx.tx.clone(),
                ctx.metrics.clone(),
                done.clone(),
            );
            let wedged = ctx.wedge_at.is_some_and(|w| Instant::now() >= w);
            evals.spawn(async move {
                if wedged {
                    warn!(rule = %rule.name, "RIPCORD_TEST_WEDGE_EVALUATIONS_AFTER: this evaluation now hangs");
                    std::future::pending::<()>().await;
                }
                let started = Instant::now();
                let eval = evaluate(&prom, &rule, at).await;
                metrics
                    .evaluation_duration
                    .observe(started.elapsed().as_secs_f64());
                drop(permit);
                let name = rule.name.clone();
                let _ = tx.send(Msg::Evaluated { rule: name.clone(), at, eval }).await;
                // After the evaluation (never delaying it): when is the
                // data fresh?
                let learned = match probe {
                    Some(every) => match freshness::selector(rule.queries.values()) {
                        Some(sel) => {
                            let probe = freshness::probe_expr(&sel, freshness::window(every));
                            Some(learn_phase(&prom, &probe, every, at).await)
                        }
                        None => Some(None),
                    },
                    None => None,
                };
                let _ = done.send(Done {
                    rule: name,
                    generation,
                    learned,
                });
            });
        }
    }

    /// An evaluation finished: the rule may be evaluated again, on what
    /// its probe taught.
    fn finished(&mut self, d: Done, metrics: &Metrics) {
        let Some(slot) = self
            .slots
            .get_mut(d.rule.as_str())
            .filter(|s| s.generation == d.generation)
        else {
            return;
        };
        slot.busy = false;
        let Some(learned) = d.learned else {
            return;
        };
        let measured = learned.as_ref().is_some_and(|p| p.interval_ms.is_some());
        slot.learn_at = Some(Instant::now() + if measured { RELEARN } else { RELEARN_SOON });
        let Some(phase) = learned else {
            return;
        };
        let grid = phase.grid();
        metrics.set_data_phase(&d.rule, &shared_phase(&mut self.phases, phase));
        // The next tick, placed anew from the one just evaluated.
        let next = next_tick(&slot.rule.schedule, slot.last_tick, &grid);
        slot.phase = grid;
        if next > SystemTime::now() && next != slot.due {
            slot.due = next;
            self.push(&d.rule);
        }
    }
}

/// `p`, or an equal phase learned lately (kept in `lately`, the last 16).
fn shared_phase(lately: &mut VecDeque<Arc<Phase>>, p: Phase) -> Arc<Phase> {
    if let Some(a) = lately.iter().find(|a| ***a == p) {
        return a.clone();
    }
    let a = Arc::new(p);
    if lately.len() >= 16 {
        lately.pop_front();
    }
    lately.push_back(a.clone());
    a
}

async fn run_queue(mut cmds: mpsc::UnboundedReceiver<Cmd>, ctx: Ctx) {
    let mut q = Queue {
        slots: Slots::default(),
        heap: BinaryHeap::new(),
        ready: VecDeque::new(),
        next_generation: 0,
        phases: VecDeque::new(),
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut evals: JoinSet<()> = JoinSet::new();
    loop {
        q.take_due(&ctx);
        q.start_ready(&ctx, &mut evals, &done_tx);
        let wake = q.heap.peek().map(|Reverse((due, ..))| {
            let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + wait
        });
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Sync(rules)) => q.sync(&rules, &ctx),
                None => {
                    evals.shutdown().await;
                    return;
                }
            },
            Some(d) = done_rx.recv() => q.finished(d, &ctx.metrics),
            Some(_) = evals.join_next(), if !evals.is_empty() => {}
            _ = async { tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)).await }, if wake.is_some() => {}
        }
    }
}

/// The handle the daemon keeps: rules go in with [`Scheduler::sync`].
pub(super) struct Scheduler {
    cmds: Option<mpsc::UnboundedSender<Cmd>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Scheduler {
    pub(super) fn start(
        prom: Prom,
        tx: mpsc::Sender<Msg>,
        misses: Arc<AtomicU64>,
        metrics: Arc<Metrics>,
    ) -> Scheduler {
        let wedge_at = std::env::var("RIPCORD_TEST_WEDGE_EVALUATIONS_AFTER")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(|s| Instant::now() + Duration::from_secs(s));
        let ctx = Ctx {
            prom,
            sem: Arc::new(Semaphore::new(MAX_CONCURRENT_EVALUATIONS)),
            tx,
            misses,
            metrics,
            wedge_at,
        };
        let (cmds, rx) = mpsc::unbounded_channel();
        Scheduler {
            cmds: Some(cmds),
            task: Some(tokio::spawn(run_queue(rx, ctx))),
        }
    }

    /// Stops the schedules of removed or changed rules, starts new ones;
    /// unchanged rules keep theirs.
    pub(super) fn sync(&mut self, rules: &BTreeMap<String, Arc<Rule>>) {
        if let Some(c) = &self.cmds {
            let _ = c.send(Cmd::Sync(rules.clone()));
        }
    }

    /// Stops scheduling; evaluations in flight are dropped.
    pub(super) async fn stop_all(&mut self) {
        self.cmds = None;
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_ticks_do_not_grow_the_queue_and_each_rule_keeps_its_entry() {
        let set = crate::config::load::load_rule_sources(&[(
            "r.yaml",
            "rules:\n  - {name: a, queries: {v: sum(up)}, condition: v > 1}\n  - {name: b, queries: {v: sum(up)}, condition: v > 1}\n",
        )])
        .value
        .expect("loads");
        let mut q = Queue {
            slots: Slots::default(),
            heap: BinaryHeap::new(),
            ready: VecDeque::new(),
            next_generation: 0,
            phases: VecDeque::new(),
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        for (i, r) in set.rules.iter().enumerate() {
            q.slots.add(vec![Slot {
                name: Arc::from(r.name.as_str()),
                rule: r.clone(),
                due: t0,
                first: false,
                busy: false,
                last_tick: t0,
                phase: Phase::epoch(1000.0).grid(),
                learn_at: None,
                generation: i as u64,
            }]);
            q.push(&r.name);
        }
        // Each rule's tick moved a thousand times (phases learned anew):
        // the stale entries are dropped as they pile up.
        for k in 1..=1000u64 {
            for name in ["a", "b"] {
                let slot = q.slots.get_mut(name).expect("slot");
                slot.due = t0 + Duration::from_millis(k);
                q.push(name);
            }
            assert!(q.heap.len() <= 2 * 3 / 2 + 64 + 1, "{}", q.heap.len());
        }
        // What is due is each rule's latest tick, once.
        let live: Vec<(SystemTime, u64, String)> = q
            .heap
            .iter()
            .map(|Reverse((d, g, n))| (*d, *g, n.to_string()))
            .filter(|(d, g, n)| {
                q.slots
                    .get(n.as_str())
                    .is_some_and(|s| s.due == *d && s.generation == *g)
            })
            .collect();
        assert_eq!(live.len(), 2, "{live:?}");
        assert!(live
            .iter()
            .all(|(d, ..)| *d == t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn slots_stay_sorted_and_found_and_equal_phases_are_shared() {
        let set = crate::config::load::load_rule_sources(&[(
            "r.yaml",
            "rules:\n  - {name: m, queries: {v: up}, condition: v > 1}\n  - {name: b, queries: {v: up}, condition: v > 1}\n  - {name: x, queries: {v: up}, condition: v > 1}\n  - {name: a, queries: {v: up}, condition: v > 1}\n",
        )])
        .value
        .expect("loads");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let slot = |r: &Arc<Rule>| Slot {
            name: Arc::from(r.name.as_str()),
            rule: r.clone(),
            due: t0,
            first: true,
            busy: false,
            last_tick: t0,
            phase: Phase::epoch(1000.0).grid(),
            learn_at: None,
            generation: 0,
        };
        let mut slots = Slots::default();
        // Added in two batches, out of order.
        slots.add(set.rules[..2].iter().map(slot).collect());
        slots.add(set.rules[2..].iter().map(slot).collect());
        let names: Vec<&str> = slots.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["a", "b", "m", "x"]);
        for n in ["a", "b", "m", "x"] {
            assert_eq!(slots.get(n).map(|s| &*s.rule.name), Some(n));
        }
        assert!(!slots.contains_key("c"));
        slots.0.retain(|s| &*s.name != "b");
        assert!(slots.get("a").is_some() && slots.get("b").is_none() && slots.get("x").is_some());

        let mut lately = VecDeque::new();
        let p = |anchor_ms| Phase {
            anchor_ms,
            ..Phase::epoch(5000.0)
        };
        let one = shared_phase(&mut lately, p(330.0));
        let two = shared_phase(&mut lately, p(330.0));
        assert!(Arc::ptr_eq(&one, &two), "an equal phase is the same copy");
        let other = shared_phase(&mut lately, p(660.0));
        assert!(!Arc::ptr_eq(&one, &other));
        for i in 0..40 {
            shared_phase(&mut lately, p(f64::from(i)));
        }
        assert_eq!(lately.len(), 16, "only the latest are kept to share");
    }

    #[test]
    fn next_tick_for_every_and_cron() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_007);
        // On the 30 s grid, at least 30 s later: 11:06:47 → 11:07:30.
        let epoch = Phase::epoch(30_000.0);
        assert_eq!(
            next_tick(&Schedule::Every(Duration::from_secs(30)), t, &epoch.grid()),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_050)
        );
        // From a grid point, exactly one interval.
        let on = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_050);
        assert_eq!(
            next_tick(&Schedule::Every(Duration::from_secs(30)), on, &epoch.grid()),
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
            next_tick(&Schedule::Every(Duration::from_secs(5)), on, &fresh.grid()),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_055_330)
        );
        // A phase learned with the rule's own period (interval not yet
        // measured): the fresh instant nearest one interval on, not the
        // one after it (that cost a whole interval at start).
        let coarse = Phase {
            anchor_ms: 1_795_000_040_000.0,
            period_ms: 50_000.0,
            interval_ms: None,
            ready_after_ms: 50.0,
            targets: 1,
        };
        let started = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_047_000);
        assert_eq!(
            next_tick(
                &Schedule::Every(Duration::from_secs(50)),
                started,
                &coarse.grid()
            ),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_090_000)
        );
        // A phase from absurd timestamps never stops the rule.
        let absurd = Phase {
            anchor_ms: 1e300,
            ..coarse.clone()
        };
        let next = next_tick(
            &Schedule::Every(Duration::from_secs(50)),
            started,
            &absurd.grid(),
        );
        assert!(next > started && next <= started + Duration::from_secs(100));
        // Never less than half an interval after the last.
        let late = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_066_000);
        assert_eq!(
            next_tick(
                &Schedule::Every(Duration::from_secs(50)),
                late,
                &coarse.grid()
            ),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_140_000)
        );
        let cron: cron::Schedule = "0 */5 * * * *".parse().expect("cron");
        let next = next_tick(
            &Schedule::Cron("0 */5 * * * *".into(), Box::new(cron)),
            t,
            &epoch.grid(),
        );
        // 1_795_000_007 is 11:06:47; the next 5-minute mark is 11:10:00.
        assert_eq!(
            next,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_200)
        );
    }
}
