//! The durable outbox: pages are at-least-once.
//!
//! A page to each notifier is a file in `state_dir/outbox/`, written and
//! synced before the first delivery attempt and removed after a 2xx. The
//! delivery task retries with exponential backoff and jitter, honouring
//! `Retry-After`. Each receiver has its own queue and one attempt in
//! flight, so a receiver that hangs or is down delays only its own pages;
//! within a queue, pages of one incident keep their order. Requests to one
//! receiver are spaced (Slack: one a second); a page is given up after
//! `max_age`; the outbox is bounded: past `max_items` the oldest page is
//! dropped, and that is said. Pages survive a restart.
//!
//! A page has a key (its incident, event and receiver): pushing a key the
//! outbox holds or has finished is a no-op, so the daemon can push again
//! every page its journal holds after a crash without paging twice. A
//! finished page leaves a tombstone (`done/HASH`, a rename of its file)
//! until the journal that could name it again has been compacted
//! ([`Outbox::forget_finished`]). A page that cannot be written (a full or
//! read-only disk) is kept in memory and delivered all the same.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use super::Notifier;
use super::{render, Notification, RenderContext};
use crate::rule::Timestamp;

pub const DEFAULT_MAX_ITEMS: usize = 10_000;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub seq: u64,
    /// What makes this page unique (`""`: nothing; never deduplicated).
    #[serde(default)]
    pub key: String,
    pub notifier: String,
    pub notification: Notification,
    pub created: Timestamp,
    pub attempts: u32,
    pub next_at: Timestamp,
    pub last_error: Option<String>,
}

impl Delivery {
    /// Pages of one incident to one receiver go out in order.
    fn order_key(&self) -> (String, String) {
        (
            self.notifier.clone(),
            self.notification.incident.clone().unwrap_or_default(),
        )
    }
}

/// Counters for logs and /metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub delivered: u64,
    pub retried: u64,
    pub rejected: u64,
    pub given_up: u64,
    pub dropped: u64,
}

/// Told each finished page's key.
pub type FinishedHook = Arc<dyn Fn(&str) + Send + Sync>;

pub struct Outbox {
    dir: PathBuf,
    items: BTreeMap<u64, Delivery>,
    /// Each receiver's own queue (sequence numbers, oldest first): a
    /// receiver is served from its queue alone, so one that is slow or
    /// dead holds back only its own pages.
    queues: BTreeMap<String, BTreeSet<u64>>,
    /// Hashes of the keys of finished pages (their tombstones).
    finished: HashSet<String>,
    /// Keys of the pages held: pushing many at start stays linear.
    keys: HashSet<String>,
    /// Pages that could not be written: kept, and tried, in memory only.
    volatile: HashSet<u64>,
    next_seq: u64,
    pub max_items: usize,
    pub max_age: Duration,
    pub stats: Stats,
    /// Where drops are counted (deliveries are counted by `deliver`).
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Told the key of each keyed page once it is finished (HA: the shared
    /// copy of the page in etcd is deleted).
    pub on_finished: Option<FinishedHook>,
}

impl Outbox {
    /// Opens `dir`, loading what an earlier run left undelivered.
    pub fn open(dir: &Path) -> std::io::Result<Outbox> {
        std::fs::create_dir_all(dir)?;
        let mut items = BTreeMap::new();
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Delivery>(&b).ok())
            {
                Some(d) => {
                    items.insert(d.seq, d);
                }
                None => warn!("outbox: unreadable page {} left aside", p.display()),
            }
        }
        let done = dir.join("done");
        std::fs::create_dir_all(&done)?;
        let mut finished = HashSet::new();
        for e in std::fs::read_dir(&done)? {
            finished.insert(e?.file_name().to_string_lossy().into_owned());
        }
        let next_seq = items.keys().next_back().map_or(1, |s| s + 1);
        if !items.is_empty() {
            info!(pages = items.len(), "outbox: resuming undelivered pages");
        }
        let keys = items
            .values()
            .filter(|d| !d.key.is_empty())
            .map(|d| d.key.clone())
            .collect();
        let mut queues: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for d in items.values() {
            queues.entry(d.notifier.clone()).or_default().insert(d.seq);
        }
        Ok(Outbox {
            dir: dir.to_path_buf(),
            items,
            queues,
            finished,
            keys,
            volatile: HashSet::new(),
            next_seq,
            max_items: DEFAULT_MAX_ITEMS,
            max_age: DEFAULT_MAX_AGE,
            stats: Stats::default(),
            metrics: None,
            on_finished: None,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    fn write(&self, d: &Delivery) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(d).map_err(std::io::Error::other)?;
        crate::actions::file::write_atomic(&self.path(d.seq), &bytes)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The page under `key`, if it still waits: its attempts and last error.
    pub fn waiting(&self, key: &str) -> Option<(u32, Option<String>)> {
        if key.is_empty() || !self.keys.contains(key) {
            return None;
        }
        self.items
            .values()
            .find(|d| d.key == key)
            .map(|d| (d.attempts, d.last_error.clone()))
    }

    /// Pages held only in memory because they could not be written.
    pub fn volatile(&self) -> usize {
        self.volatile.len()
    }

    /// Has a page with this key been pushed (and not forgotten)?
    pub fn knows(&self, key: &str) -> bool {
        !key.is_empty() && (self.keys.contains(key) || self.finished.contains(&key_hash(key)))
    }

    /// Forgets the tombstones of finished pages: call only once no journal
    /// that names them can be replayed again (right after a compaction).
    pub fn forget_finished(&mut self) {
        let done = self.dir.join("done");
        for h in self.finished.drain() {
            let _ = std::fs::remove_file(done.join(h));
        }
    }

    /// Stores a page for `notifier`, synced, before any attempt.
    pub fn push(&mut self, notifier: &str, n: Notification, now: Timestamp) -> std::io::Result<()> {
        self.push_keyed("", notifier, n, now).map(|_| ())
    }

    /// Stores a page under `key` unless the outbox holds or has finished
    /// it (`Ok(false)`). If it cannot be written, it is still delivered from
    /// memory and the write error is returned.
    pub fn push_keyed(
        &mut self,
        key: &str,
        notifier: &str,
        n: Notification,
        now: Timestamp,
    ) -> std::io::Result<bool> {
        if self.knows(key) {
            return Ok(false);
        }
        while self.items.len() >= self.max_items {
            let Some((&seq, old)) = self.items.iter().next() else {
                break;
            };
            error!(notifier = %old.notifier, event = %old.notification.event, "outbox full ({} pages): dropping the oldest page", self.max_items);
            let notifier = old.notifier.clone();
            self.remove(seq);
            self.stats.dropped += 1;
            if let Some(m) = &self.metrics {
                m.notifications
                    .get_or_create(&crate::metrics::NotifierLabels {
                        notifier,
                        result: "dropped".into(),
                    })
                    .inc();
            }
        }
        let d = Delivery {
            seq: self.next_seq,
            key: key.to_string(),
            notifier: notifier.to_string(),
            notification: n,
            created: now,
            attempts: 0,
            next_at: now,
            last_error: None,
        };
        self.next_seq += 1;
        crash_point("outbox_before_write");
        let written = self.write(&d);
        if written.is_err() {
            self.volatile.insert(d.seq);
        }
        if !d.key.is_empty() {
            self.keys.insert(d.key.clone());
        }
        self.queues
            .entry(d.notifier.clone())
            .or_default()
            .insert(d.seq);
        self.items.insert(d.seq, d);
        written.map(|()| true)
    }

    /// A page is finished (delivered, refused, given up or dropped): its
    /// file becomes its tombstone, so a replayed journal cannot push it again.
    fn remove(&mut self, seq: u64) {
        let Some(d) = self.items.remove(&seq) else {
            return;
        };
        if let Some(q) = self.queues.get_mut(&d.notifier) {
            q.remove(&seq);
            if q.is_empty() {
                self.queues.remove(&d.notifier);
            }
        }
        self.keys.remove(&d.key);
        let path = self.path(seq);
        if self.volatile.remove(&seq) || d.key.is_empty() {
            let _ = std::fs::remove_file(&path);
            if d.key.is_empty() {
                return;
            }
        }
        if let Some(f) = &self.on_finished {
            f(&d.key);
        }
        let h = key_hash(&d.key);
        let tomb = self.dir.join("done").join(&h);
        if std::fs::rename(&path, &tomb).is_err() {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::write(&tomb, b"");
        }
        let _ = File::open(self.dir.join("done")).and_then(|f| f.sync_all());
        self.finished.insert(h);
    }

    /// The next page to try now: due, its receiver not busy, and the oldest
    /// pending one of its incident for that receiver.
    pub fn next_due(&self, now: Timestamp, busy: &HashSet<String>) -> Option<Delivery> {
        self.queues
            .iter()
            .filter(|(notifier, _)| !busy.contains(*notifier))
            .filter_map(|(_, queue)| self.due_in(queue, now))
            .min_by_key(|d| d.seq)
            .cloned()
    }

    /// The oldest page of one receiver's queue that is due and not behind
    /// an earlier, not yet due page of the same incident.
    fn due_in(&self, queue: &BTreeSet<u64>, now: Timestamp) -> Option<&Delivery> {
        let mut blocked: HashSet<(String, String)> = HashSet::new();
        for d in queue.iter().filter_map(|seq| self.items.get(seq)) {
            let key = d.order_key();
            if blocked.contains(&key) {
                continue;
            }
            if d.next_at <= now {
                return Some(d);
            }
            blocked.insert(key);
        }
        None
    }

    /// When the next page falls due.
    pub fn next_time(&self) -> Option<Timestamp> {
        self.items.values().map(|d| d.next_at).min()
    }

    fn delivered(&mut self, seq: u64) {
        self.remove(seq);
        self.stats.delivered += 1;
    }

    fn failed(&mut self, seq: u64, now: Timestamp, error: String, retry_after: Option<Duration>) {
        let Some(mut d) = self.items.get(&seq).cloned() else {
            return;
        };
        if now.since(d.created) >= self.max_age {
            error!(notifier = %d.notifier, event = %d.notification.event, attempts = d.attempts + 1, "giving up on a page older than {:?}: {error}", self.max_age);
            self.remove(seq);
            self.stats.given_up += 1;
            return;
        }
        d.attempts += 1;
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << d.attempts.min(16))
            .min(MAX_BACKOFF);
        // Jitter: up to a quarter of the backoff, so receivers coming back
        // are not hit by every ripcord at once.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = backoff.mul_f64(f64::from(nanos % 1000) / 4000.0);
        let wait = retry_after.map_or(backoff + jitter, |r| r.max(Duration::from_millis(100)));
        d.next_at = now.plus(wait);
        d.last_error = Some(error.clone());
        warn!(notifier = %d.notifier, event = %d.notification.event, attempt = d.attempts, "page not delivered, retrying in {wait:?}: {error}");
        match self.write(&d) {
            Ok(()) => {
                self.volatile.remove(&seq);
            }
            Err(e) if !self.volatile.contains(&seq) => error!("outbox write failed: {e}"),
            Err(_) => {}
        }
        self.items.insert(seq, d);
        self.stats.retried += 1;
    }

    fn rejected(&mut self, seq: u64, error: String) {
        if let Some(d) = self.items.get(&seq) {
            error!(notifier = %d.notifier, event = %d.notification.event, "page rejected by the receiver, not retried: {error}");
        }
        self.remove(seq);
        self.stats.rejected += 1;
    }
}

/// A short stable hash of a page key: tombstone names and page ids.
pub fn key_hash(key: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16])
}

/// Test-only crash points (`RIPCORD_TEST_CRASH_AT=NAME`): the process kills
/// itself with SIGKILL the first time it reaches `name`, so tests can show
/// that a crash at each write boundary loses nothing and repeats nothing.
pub fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("RIPCORD_TEST_CRASH_AT").ok());
    if at.as_deref() == Some(name) {
        error!("RIPCORD_TEST_CRASH_AT={name}: killing myself");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// How one attempt ended.
enum Attempt {
    Delivered,
    /// Worth another try (429, 5xx, 408, a network error).
    Retry(String, Option<Duration>),
    /// The receiver refused the page itself (another 4xx).
    Rejected(String),
}

fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = humantime::parse_rfc3339_weak(v.trim())
        .ok()
        .or_else(|| httpdate(v.trim()))?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`.
fn httpdate(v: &str) -> Option<std::time::SystemTime> {
    let t = chrono::DateTime::parse_from_rfc2822(&v.replace("GMT", "+0000")).ok()?;
    Some(t.with_timezone(&chrono::Utc).into())
}

async fn attempt(
    client: &reqwest::Client,
    d: &Delivery,
    notifier: &Notifier,
    ctx: &RenderContext,
) -> Attempt {
    let requests = match render(&notifier.kind, &d.notification, ctx) {
        Ok(r) => r,
        Err(e) => return Attempt::Retry(e, None),
    };
    let mut last = Attempt::Delivered;
    let mut any_ok = false;
    for r in requests {
        let mut req = client.post(r.url.expose()).body(r.body);
        for (k, v) in r.headers {
            req = req.header(k, v);
        }
        last = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let after = retry_after(resp.headers());
                let head = crate::body::read_head(resp, 1024).await;
                let text = crate::body::one_line(&String::from_utf8_lossy(&head));
                let text = super::truncate(text.trim(), 200);
                match status {
                    200..=299 => {
                        any_ok = true;
                        Attempt::Delivered
                    }
                    408 | 429 | 500..=599 => {
                        Attempt::Retry(format!("HTTP {status}: {text}"), after)
                    }
                    _ => Attempt::Rejected(format!("HTTP {status}: {text}")),
                }
            }
            // Never with the URL: a Slack webhook URL is a secret.
            Err(e) => Attempt::Retry(crate::body::error_chain(&e.without_url()), None),
        };
    }
    // Several Alertmanagers: delivered when one of them took it.
    if any_ok {
        Attempt::Delivered
    } else {
        last
    }
}

/// Delivers pages until `stop`; `wake` is notified when a page is pushed.
pub async fn deliver(
    outbox: Arc<Mutex<Outbox>>,
    notifiers: Arc<std::sync::RwLock<BTreeMap<String, Arc<Notifier>>>>,
    ctx: RenderContext,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let client = match reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            error!("notifier HTTP client: {e}");
            return;
        }
    };
    let mut last_sent: HashMap<String, std::time::Instant> = HashMap::new();
    // One attempt in flight per receiver: a receiver that hangs delays its
    // own pages, never another's; its own stay in order.
    let mut in_flight: tokio::task::JoinSet<(Delivery, Attempt)> = tokio::task::JoinSet::new();
    let mut flying: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        loop {
            let now = crate::clock::now();
            let mut busy: HashSet<String> = last_sent
                .iter()
                .filter(|(n, t)| {
                    notifiers
                        .read()
                        .ok()
                        .and_then(|m| m.get(*n).cloned())
                        .is_some_and(|nf| t.elapsed() < super::min_interval(&nf.kind))
                })
                .map(|(n, _)| n.clone())
                .collect();
            busy.extend(flying.values().cloned());
            let Some(d) = outbox.lock().ok().and_then(|o| o.next_due(now, &busy)) else {
                break;
            };
            let notifier = notifiers
                .read()
                .ok()
                .and_then(|m| m.get(&d.notifier).cloned());
            let Some(notifier) = notifier else {
                if let Ok(mut o) = outbox.lock() {
                    o.rejected(
                        d.seq,
                        format!("notifier {} is no longer configured", d.notifier),
                    );
                }
                continue;
            };
            last_sent.insert(d.notifier.clone(), std::time::Instant::now());
            let name = d.notifier.clone();
            let (client, ctx) = (client.clone(), ctx.clone());
            let handle = in_flight.spawn(async move {
                let result = attempt(&client, &d, &notifier, &ctx).await;
                (d, result)
            });
            flying.insert(handle.id(), name);
        }
        let now = crate::clock::now();
        let wait = outbox
            .lock()
            .ok()
            .and_then(|o| o.next_time())
            .map(|t| Duration::from_millis(t.0.saturating_sub(now.0).clamp(50, 1000) as u64))
            .unwrap_or(Duration::from_secs(1));
        tokio::select! {
            Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                match done {
                    Ok((id, (d, result))) => {
                        flying.remove(&id);
                        // Removing or rewriting the page's file syncs: off
                        // the async workers.
                        crate::fsio::blocking(|| settle(&outbox, &metrics, &d, result));
                    }
                    Err(e) => {
                        flying.remove(&e.id());
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Records how an attempt ended, in the outbox and in /metrics.
fn settle(
    outbox: &Mutex<Outbox>,
    metrics: &crate::metrics::Metrics,
    d: &Delivery,
    result: Attempt,
) {
    let now = crate::clock::now();
    let label = |r: &str| crate::metrics::NotifierLabels {
        notifier: d.notifier.clone(),
        result: r.into(),
    };
    if let Ok(mut o) = outbox.lock() {
        let before = o.stats.clone();
        match result {
            Attempt::Delivered => {
                info!(notifier = %d.notifier, event = %d.notification.event, incident = ?d.notification.incident, "page delivered");
                o.delivered(d.seq)
            }
            Attempt::Retry(e, after) => o.failed(d.seq, now, e, after),
            Attempt::Rejected(e) => o.rejected(d.seq, e),
        }
        let after = &o.stats;
        for (name, b, a) in [
            ("delivered", before.delivered, after.delivered),
            ("retried", before.retried, after.retried),
            ("rejected", before.rejected, after.rejected),
            ("given_up", before.given_up, after.given_up),
        ] {
            if a > b {
                metrics
                    .notifications
                    .get_or_create(&label(name))
                    .inc_by(a - b);
            }
        }
        metrics.outbox_pages.set(o.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::PageEvent;

    fn page(incident: &str) -> Notification {
        Notification {
            event: PageEvent::Opened,
            rule: Some("r".into()),
            incident: Some(incident.into()),
            severity: crate::config::Severity::Critical,
            summary: String::new(),
            details: Vec::new(),
            values: BTreeMap::new(),
            condition: None,
            queries: BTreeMap::new(),
            labels: BTreeMap::new(),
            runbook_url: None,
            dashboard_url: None,
            resolve: false,
            dry_run: false,
            drill: false,
            started: Timestamp(0),
            at: Timestamp(0),
            page_id: String::new(),
        }
    }

    /// What `deliver` would send, in turn, marking each receiver busy.
    fn due(o: &Outbox, now: Timestamp, busy: &[&str]) -> Vec<(String, String)> {
        let mut busy: HashSet<String> = busy.iter().map(|s| s.to_string()).collect();
        let mut out = Vec::new();
        while let Some(d) = o.next_due(now, &busy) {
            busy.insert(d.notifier.clone());
            out.push((d.notifier, d.notification.incident.unwrap_or_default()));
        }
        out
    }

    #[test]
    fn each_receiver_is_served_from_its_own_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        let t0 = Timestamp(1_000);
        // The dead receiver's pages are older and many.
        for i in 0..50 {
            o.push("dead", page(&format!("i{i}")), t0).unwrap();
        }
        o.push("slack", page("i0"), t0).unwrap();
        o.push("hook", page("i0"), t0).unwrap();
        // The dead receiver has a request in flight: the others go anyway.
        assert_eq!(
            due(&o, t0, &["dead"]),
            [("slack".into(), "i0".into()), ("hook".into(), "i0".into())]
        );
        // Its pages back off after failures: that holds back only its queue.
        let seqs: Vec<u64> = o.queues["dead"].iter().copied().collect();
        for seq in seqs {
            o.failed(seq, t0, "timed out".into(), None);
        }
        assert_eq!(
            due(&o, t0, &[]),
            [("slack".into(), "i0".into()), ("hook".into(), "i0".into())]
        );
    }

    #[test]
    fn one_incidents_pages_keep_their_order_within_a_receiver() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path()).unwrap();
        let t0 = Timestamp(1_000);
        o.push("hook", page("a"), t0).unwrap();
        o.push("hook", page("a"), t0).unwrap();
        o.push("hook", page("b"), t0).unwrap();
        let first = *o.queues["hook"].iter().next().unwrap();
        o.failed(first, t0, "503".into(), None);
        // a's second page waits behind a's first; b's goes.
        assert_eq!(due(&o, t0, &[]), [("hook".into(), "b".into())]);
        // Reopened from disk, the queues are rebuilt the same.
        drop(o);
        let o = Outbox::open(dir.path()).unwrap();
        assert_eq!(o.queues["hook"].len(), 3);
    }
}
