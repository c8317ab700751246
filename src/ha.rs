//! High availability on etcd (`ha:` in ripcord.yaml): instances with the
//! same key prefix form a group, and exactly one of them — the holder of
//! the leader key, which lives on its lease — acts.
//!
//! Keys under the prefix `P`:
//! - `P/leader`: `{name, since}` on the leader's lease. Created only where
//!   absent (a transaction on `create_revision == 0`), so there is never a
//!   second one; its create revision names the leader's term.
//! - `P/last_leader`: who led last and why that ended (`leader_changed`).
//! - `P/members/NAME`: each instance on its own lease (`status`).
//! - `P/state/RULE`, `P/shared`: each rule's (instance's) latest state and
//!   the shared budget, pause and runs, as the journal writes them.
//! - `P/step/INCIDENT/ACTION/STEP`: a step's intent, deleted with its
//!   result; one that is left was interrupted.
//! - `P/page/KEY`: a page committed with a state and not yet finished.
//!
//! Fencing: every journal write of the leader except plain events is first
//! a transaction conditional on `P/leader` still having the create revision
//! of its term ([`Node::commit`]). A leader that cannot commit, or whose
//! lease could not be renewed in time, steps down at once; it never starts
//! a step whose intent is not committed. Every other instance takes over
//! only once the lease is gone, which etcd decides: a process that was
//! paused past its lease finds, on waking, that it may not act
//! ([`Node::may_act`] counts on a monotonic clock from the last renewal
//! *sent*, and the transaction would fail anyway).
//!
//! Everything here is bounded: one key per rule instance, per step running
//! and per page waiting. etcd keeps old revisions until it compacts them:
//! run it with `--auto-compaction-retention` (the README says so).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::clock::{now, Timestamp};
use crate::config::HaConfig;
use crate::journal::{Entry, Fence, QueuedPage};
use crate::rule::RuleState;

/// `P/leader` and `P/members/NAME`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Holder {
    name: String,
    since: Timestamp,
}

/// `P/last_leader`: who led last, and why that ended. A leader writes it
/// when its term starts, with the reason that holds if it dies without a
/// word (its lease expires), and again when it steps down on purpose.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LastLeader {
    pub name: String,
    pub why: String,
    pub at: Timestamp,
}

const EXPIRED: &str = "its lease expired: it stopped renewing it (killed, paused, its host down, or cut off from etcd)";

/// What this instance knows of its group, for `status`, the web page and
/// `/metrics`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HaStatus {
    pub name: String,
    pub prefix: String,
    pub leading: bool,
    /// The leader as last seen (this instance when leading).
    pub leader: Option<String>,
    /// Instances whose membership key is alive, by name.
    pub members: Vec<String>,
    /// Seconds since this instance's lease was granted.
    pub lease_age_seconds: Option<f64>,
    pub lease_ttl_seconds: f64,
    /// Why etcd could not be used, and since when (RFC 3339).
    pub etcd_problem: Option<String>,
    pub etcd_problem_since: Option<String>,
}

/// The group's state as the new leader reads it from etcd.
#[derive(Debug, Default)]
pub struct GroupState {
    /// Journal entries that stand for it: states (the pending pages on the
    /// first), the shared state, and intents left without a result.
    pub entries: Vec<Entry>,
    /// Whether any leader ever wrote the shared state: a new group is
    /// seeded from the first leader's own journal instead.
    pub initialized: bool,
    pub pages: usize,
    pub interrupted: usize,
}

struct Lease {
    id: i64,
    granted: Instant,
    /// Renewals sent before this instant were answered: etcd keeps the
    /// lease at least until then (it counts from when it got the renewal).
    valid_until: Instant,
}

#[derive(Default)]
struct Inner {
    lease: Option<Lease>,
    /// The create revision of `P/leader` while this instance leads.
    term: Option<i64>,
    /// This instance's membership key is on the current lease.
    member: bool,
    leader: Option<String>,
    members: Vec<String>,
    problem: Option<(Timestamp, String)>,
    /// Set when a term starts: who led before it.
    previous: Option<LastLeader>,
    /// When the campaign last finished a round (the watchdog's evidence).
    last_round: Option<Instant>,
}

pub struct Node {
    pub name: String,
    pub prefix: String,
    pub ttl: Duration,
    client: Client,
    handle: tokio::runtime::Handle,
    inner: Mutex<Inner>,
    leading: watch::Sender<bool>,
    /// This instance paged `ha_cannot_act` and has not yet said it can act
    /// again: a standby says so when etcd answers, a leader when it takes
    /// over (the standby that paged may be stopped first).
    pub cannot_act_paged: std::sync::atomic::AtomicBool,
}

/// An error from etcd or a deadline, as one line.
fn etcd_err(e: impl std::fmt::Display) -> String {
    format!("etcd: {e}")
}

impl Node {
    /// Builds the client; connections are made lazily, so an etcd that is
    /// down at start leaves this instance a standby that keeps trying.
    pub async fn connect(cfg: &HaConfig) -> Result<Node, String> {
        let rpc = rpc_timeout(cfg.lease_ttl);
        let mut opts = ConnectOptions::new()
            .with_timeout(rpc)
            .with_connect_timeout(rpc)
            .with_keep_alive(Duration::from_secs(1), rpc)
            .with_keep_alive_while_idle(true)
            // A member cut off from its quorum answers at once, not late.
            .with_require_leader(true);
        if let Some((user, password)) = &cfg.auth {
            let p = password
                .resolve()
                .map_err(|e| format!("ha.etcd.password: {e}"))?;
            opts = opts.with_user(user.clone(), p.expose().to_string());
        }
        if let Some(tls) = &cfg.tls {
            let mut t = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| format!("ha.etcd.ca_file {}: {e}", ca.display()))?;
                t = t.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &tls.identity {
                let c = std::fs::read(cert)
                    .map_err(|e| format!("ha.etcd.cert_file {}: {e}", cert.display()))?;
                let k = std::fs::read(key)
                    .map_err(|e| format!("ha.etcd.key_file {}: {e}", key.display()))?;
                t = t.identity(etcd_client::Identity::from_pem(c, k));
            }
            opts = opts.with_tls(t);
        }
        // With credentials the client asks for a token at once; without,
        // nothing is dialled until the first request.
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(|e| format!("cannot set up the etcd client: {e}"))?;
        Ok(Node {
            name: cfg.name.clone(),
            prefix: cfg.prefix.clone(),
            ttl: cfg.lease_ttl,
            client,
            handle: tokio::runtime::Handle::current(),
            inner: Mutex::new(Inner::default()),
            leading: watch::channel(false).0,
            cannot_act_paged: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}/{k}", self.prefix)
    }

    fn rpc(&self) -> Duration {
        rpc_timeout(self.ttl)
    }

    /// How long before the lease would end the leader stops acting.
    fn margin(&self) -> Duration {
        self.ttl / 4
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it cannot leave it half-changed: every
        // change is one assignment.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_leading(&self) -> bool {
        self.may_act().is_ok()
    }

    /// Ok while this instance leads and its lease is safely alive.
    pub fn may_act(&self) -> Result<(), String> {
        let g = self.inner();
        match (&g.term, &g.lease) {
            (Some(_), Some(l)) if Instant::now() + self.margin() < l.valid_until => Ok(()),
            (Some(_), _) => Err(format!(
                "{} could not renew its etcd lease in time: it does not act",
                self.name
            )),
            (None, _) => Err(format!(
                "{} does not lead its group ({}): it does not act",
                self.name,
                match &g.leader {
                    Some(l) => format!("{l} does"),
                    None => "no leader now".into(),
                }
            )),
        }
    }

    /// Resolves once this instance leads.
    pub async fn became_leader(&self) {
        let mut rx = self.leading.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Resolves once this instance no longer leads.
    pub async fn lost_leadership(&self) {
        let mut rx = self.leading.subscribe();
        let _ = rx.wait_for(|l| !*l).await;
    }

    /// Who led before this term, and why that ended (taken once).
    pub fn take_previous(&self) -> Option<LastLeader> {
        self.inner().previous.take()
    }

    pub fn status(&self) -> HaStatus {
        let g = self.inner();
        HaStatus {
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            leading: g.term.is_some(),
            leader: if g.term.is_some() {
                Some(self.name.clone())
            } else {
                g.leader.clone()
            },
            members: g.members.clone(),
            lease_age_seconds: g.lease.as_ref().map(|l| l.granted.elapsed().as_secs_f64()),
            lease_ttl_seconds: self.ttl.as_secs_f64(),
            etcd_problem: g.problem.as_ref().map(|p| p.1.clone()),
            etcd_problem_since: g.problem.as_ref().map(|p| p.0.rfc3339()),
        }
    }

    /// The campaign keeps going (each round is bounded by timeouts).
    pub fn campaigning(&self) -> bool {
        self.inner()
            .last_round
            .is_some_and(|t| t.elapsed() < self.ttl * 2 + Duration::from_secs(10))
    }

    /// Since when etcd could not be used (no answer, no quorum), if so.
    pub fn problem_since(&self) -> Option<(Timestamp, String)> {
        self.inner().problem.clone()
    }

    /// Stops leading at once: no further commit succeeds, the daemon winds
    /// its engine down. The lease is given up (best effort), so the next
    /// leader need not wait for it to expire when etcd is reachable.
    pub fn step_down(&self, why: &str) {
        let (lease, was) = {
            let mut g = self.inner();
            let was = g.term.take().is_some();
            g.member = false;
            (g.lease.take(), was)
        };
        if was {
            error!(name = %self.name, "no longer the leader: {why}");
        }
        self.leading.send_replace(false);
        if let Some(l) = lease {
            let mut c = self.client.clone();
            let rpc = self.rpc();
            self.handle.spawn(async move {
                let _ = tokio::time::timeout(rpc, c.lease_revoke(l.id)).await;
            });
        }
    }

    /// Ends this term on purpose (ripcord stops): `P/last_leader` says why,
    /// and the leader key goes with the lease, so another instance takes
    /// over at once.
    pub async fn resign(&self, why: &str) {
        let (term, lease) = {
            let mut g = self.inner();
            g.member = false;
            (g.term.take(), g.lease.take())
        };
        self.leading.send_replace(false);
        let mut c = self.client.clone();
        if let Some(rev) = term {
            let last = LastLeader {
                name: self.name.clone(),
                why: why.to_string(),
                at: now(),
            };
            if let Ok(v) = serde_json::to_vec(&last) {
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        self.key("leader"),
                        CompareOp::Equal,
                        rev,
                    )])
                    .and_then([
                        TxnOp::put(self.key("last_leader"), v, None),
                        TxnOp::delete(self.key("leader"), None),
                    ]);
                match tokio::time::timeout(self.rpc(), c.txn(txn)).await {
                    Ok(Ok(_)) => info!(name = %self.name, "resigned as leader: {why}"),
                    Ok(Err(e)) => {
                        warn!("could not resign in etcd ({e}): the lease expires instead")
                    }
                    Err(_) => warn!("could not resign in etcd in time: the lease expires instead"),
                }
            }
        }
        if let Some(l) = lease {
            let _ = tokio::time::timeout(self.rpc(), c.lease_revoke(l.id)).await;
        }
    }

    /// Keeps the lease, the membership and the campaign going, forever.
    pub async fn campaign(self: Arc<Self>) {
        let tick = (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut keeper: Option<(i64, LeaseKeeper, LeaseKeepAliveStream)> = None;
        let mut last_sent: Option<Instant> = None;
        let mut rounds: u64 = 0;
        loop {
            let r = self.round(&mut keeper, &mut last_sent, rounds).await;
            rounds += 1;
            match r {
                Ok(()) => {
                    let mut g = self.inner();
                    if let Some((since, _)) = g.problem.take() {
                        info!(since = %since.rfc3339(), "etcd answers again");
                    }
                }
                Err(e) => {
                    let mut g = self.inner();
                    if g.problem.is_none() {
                        warn!("{e}");
                        g.problem = Some((now(), e));
                    } else if let Some(p) = g.problem.as_mut() {
                        p.1 = e;
                    }
                }
            }
            self.expire();
            self.inner().last_round = Some(Instant::now());
            tokio::time::sleep(tick).await;
        }
    }

    /// A lease not renewed in time is given up; a leader steps down a
    /// margin before it would end.
    fn expire(&self) {
        let (leading, lease_left) = {
            let g = self.inner();
            (
                g.term.is_some(),
                g.lease
                    .as_ref()
                    .map(|l| l.valid_until.saturating_duration_since(Instant::now())),
            )
        };
        match lease_left {
            Some(left) if leading && left <= self.margin() => {
                self.step_down("its etcd lease could not be renewed and would end soon")
            }
            Some(left) if left.is_zero() => {
                let mut g = self.inner();
                g.lease = None;
                g.member = false;
            }
            _ => {}
        }
    }

    async fn round(
        &self,
        keeper: &mut Option<(i64, LeaseKeeper, LeaseKeepAliveStream)>,
        last_sent: &mut Option<Instant>,
        rounds: u64,
    ) -> Result<(), String> {
        let mut c = self.client.clone();
        let rpc = self.rpc();
        let ttl_secs = i64::try_from(self.ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = self.inner().lease.as_ref().map(|l| l.id);
        let id = match lease {
            Some(id) => id,
            None => {
                let sent = Instant::now();
                let r = tokio::time::timeout(rpc, c.lease_grant(ttl_secs, None))
                    .await
                    .map_err(|_| etcd_err("no answer to a lease grant in time"))?
                    .map_err(etcd_err)?;
                let granted = Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0));
                self.inner().lease = Some(Lease {
                    id: r.id(),
                    granted: sent,
                    valid_until: sent + granted,
                });
                *last_sent = Some(sent);
                r.id()
            }
        };
        if keeper.as_ref().is_some_and(|k| k.0 != id) {
            *keeper = None;
        }
        // Renew a third of the way through.
        if last_sent.is_none_or(|t| t.elapsed() >= self.ttl / 3) {
            self.renew(&mut c, id, keeper, last_sent).await?;
        }
        if !self.inner().member {
            self.join(&mut c, id).await?;
        }
        let term = self.inner().term;
        match term {
            None => self.try_lead(&mut c, id).await?,
            // The key is still this term's (an operator may have deleted
            // it, or a bug elsewhere): checked now and then, not only when
            // a commit finds out.
            Some(rev) if rounds % 3 == 0 => {
                let r = tokio::time::timeout(rpc, c.get(self.key("leader"), None))
                    .await
                    .map_err(|_| etcd_err("no answer in time"))?
                    .map_err(etcd_err)?;
                if r.kvs().first().map(|kv| kv.create_revision()) != Some(rev) {
                    self.step_down("the leader key is no longer this term's");
                }
            }
            Some(_) => {}
        }
        if rounds % 5 == 0 {
            let r = tokio::time::timeout(
                rpc,
                c.get(self.key("members/"), Some(GetOptions::new().with_prefix())),
            )
            .await
            .map_err(|_| etcd_err("no answer in time"))?
            .map_err(etcd_err)?;
            let names = r
                .kvs()
                .iter()
                .filter_map(|kv| serde_json::from_slice::<Holder>(kv.value()).ok())
                .map(|h| h.name)
                .collect();
            self.inner().members = names;
        }
        Ok(())
    }

    async fn renew(
        &self,
        c: &mut Client,
        id: i64,
        keeper: &mut Option<(i64, LeaseKeeper, LeaseKeepAliveStream)>,
        last_sent: &mut Option<Instant>,
    ) -> Result<(), String> {
        let rpc = self.rpc();
        if keeper.is_none() {
            let (k, s) = tokio::time::timeout(rpc, c.lease_keep_alive(id))
                .await
                .map_err(|_| etcd_err("no answer to a lease renewal in time"))?
                .map_err(etcd_err)?;
            *keeper = Some((id, k, s));
        }
        let Some((_, k, s)) = keeper.as_mut() else {
            return Ok(());
        };
        let sent = Instant::now();
        let answer = async {
            k.keep_alive().await?;
            s.message().await
        };
        match tokio::time::timeout(rpc, answer).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                let ttl = Duration::from_secs(u64::try_from(r.ttl()).unwrap_or(0));
                if let Some(l) = self.inner().lease.as_mut().filter(|l| l.id == id) {
                    l.valid_until = l.valid_until.max(sent + ttl);
                }
                *last_sent = Some(sent);
                Ok(())
            }
            Ok(Ok(Some(_))) => {
                *keeper = None;
                self.step_down("etcd says its lease has expired");
                let mut g = self.inner();
                g.lease = None;
                g.member = false;
                Err(etcd_err("the lease had expired; a new one is asked for"))
            }
            Ok(Ok(None)) => {
                *keeper = None;
                Err(etcd_err("the lease renewal stream ended"))
            }
            Ok(Err(e)) => {
                *keeper = None;
                Err(etcd_err(e))
            }
            Err(_) => {
                *keeper = None;
                Err(etcd_err("no answer to a lease renewal in time"))
            }
        }
    }

    /// Puts `P/members/NAME` on this lease, unless another lease holds it:
    /// a second instance of the same name, or this one before a restart
    /// (its lease then expires within the TTL).
    async fn join(&self, c: &mut Client, id: i64) -> Result<(), String> {
        let key = self.key(&format!("members/{}", self.name));
        let v = serde_json::to_vec(&Holder {
            name: self.name.clone(),
            since: now(),
        })
        .map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                v.clone(),
                Some(PutOptions::new().with_lease(id)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = tokio::time::timeout(self.rpc(), c.txn(txn))
            .await
            .map_err(|_| etcd_err("no answer in time"))?
            .map_err(etcd_err)?;
        let held_by_us = r.succeeded()
            || r.op_responses().iter().any(|o| match o {
                TxnOpResponse::Get(g) => g.kvs().iter().any(|kv| kv.lease() == id),
                _ => false,
            });
        if held_by_us {
            self.inner().member = true;
            Ok(())
        } else {
            Err(format!(
                "ha.name `{}` is held in etcd by another lease: a second instance with this name, or this one before a restart (then it frees within {}); not campaigning until it is free",
                self.name,
                humantime::format_duration(self.ttl)
            ))
        }
    }

    /// Creates `P/leader` on this lease if nobody holds it; reads who does
    /// otherwise.
    async fn try_lead(&self, c: &mut Client, id: i64) -> Result<(), String> {
        let since = now();
        let holder = serde_json::to_vec(&Holder {
            name: self.name.clone(),
            since,
        })
        .map_err(|e| e.to_string())?;
        let last = serde_json::to_vec(&LastLeader {
            name: self.name.clone(),
            why: EXPIRED.into(),
            at: since,
        })
        .map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                self.key("leader"),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::get(self.key("last_leader"), None),
                TxnOp::put(
                    self.key("leader"),
                    holder,
                    Some(PutOptions::new().with_lease(id)),
                ),
                TxnOp::put(self.key("last_leader"), last, None),
            ])
            .or_else([TxnOp::get(self.key("leader"), None)]);
        let r = tokio::time::timeout(self.rpc(), c.txn(txn))
            .await
            .map_err(|_| etcd_err("no answer in time"))?
            .map_err(etcd_err)?;
        let first_get = r.op_responses().into_iter().find_map(|o| match o {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        if r.succeeded() {
            let rev = r.header().map(|h| h.revision()).unwrap_or_default();
            let previous = first_get.and_then(|v| serde_json::from_slice::<LastLeader>(&v).ok());
            {
                let mut g = self.inner();
                // The lease may have gone while the answer travelled.
                if g.lease.as_ref().map(|l| l.id) != Some(id) {
                    return Ok(());
                }
                g.term = Some(rev);
                g.leader = Some(self.name.clone());
                g.previous = previous.clone();
            }
            match &previous {
                Some(p) => {
                    info!(name = %self.name, previous = %p.name, "now the leader of {} (before: {}, {})", self.prefix, p.name, p.why)
                }
                None => info!(name = %self.name, "now the leader of {} (the first)", self.prefix),
            }
            self.leading.send_replace(true);
        } else {
            let leader = first_get
                .and_then(|v| serde_json::from_slice::<Holder>(&v).ok())
                .map(|h| h.name);
            self.inner().leader = leader;
        }
        Ok(())
    }

    /// The group's state, read at one revision.
    pub async fn load(&self) -> Result<GroupState, String> {
        let mut c = self.client.clone();
        let base = self.key("");
        let r = tokio::time::timeout(
            self.rpc() * 4,
            c.get(base.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|_| etcd_err("no answer in time reading the group's state"))?
        .map_err(etcd_err)?;
        let mut states = Vec::new();
        let mut shared = None;
        let mut intents = Vec::new();
        let mut pages: Vec<QueuedPage> = Vec::new();
        let mut unreadable = 0usize;
        for kv in r.kvs() {
            let Some(k) = kv.key().strip_prefix(base.as_bytes()) else {
                continue;
            };
            let parse = || serde_json::from_slice::<Entry>(kv.value());
            if k.starts_with(b"state/") {
                match parse() {
                    Ok(e @ Entry::State { .. }) => states.push(e),
                    _ => unreadable += 1,
                }
            } else if k == b"shared" {
                match parse() {
                    Ok(e @ Entry::Shared { .. }) => shared = Some(e),
                    _ => unreadable += 1,
                }
            } else if k.starts_with(b"step/") {
                match parse() {
                    Ok(e @ Entry::StepIntent { .. }) => intents.push(e),
                    _ => unreadable += 1,
                }
            } else if k.starts_with(b"page/") {
                match serde_json::from_slice::<QueuedPage>(kv.value()) {
                    Ok(p) => pages.push(p),
                    Err(_) => unreadable += 1,
                }
            }
        }
        if unreadable > 0 {
            error!(
                "etcd: {unreadable} key(s) under {} could not be read; they are skipped",
                self.prefix
            );
        }
        let initialized = shared.is_some();
        let n_pages = pages.len();
        let n_intents = intents.len();
        pages.sort_by_key(|p| p.notification.at);
        if let Some(Entry::State { pages: first, .. }) = states.first_mut() {
            *first = pages;
        }
        let mut entries = states;
        entries.extend(shared);
        entries.extend(intents);
        Ok(GroupState {
            entries,
            initialized,
            pages: n_pages,
            interrupted: n_intents,
        })
    }

    /// Deletes the shared copy of a finished page (best effort: a page left
    /// behind may be delivered again by the next leader, with the same key).
    pub fn page_finished(&self, key: &str) {
        let mut c = self.client.clone();
        let k = self.key(&format!("page/{key}"));
        let rpc = self.rpc();
        self.handle.spawn(async move {
            let _ = tokio::time::timeout(rpc, c.delete(k, None)).await;
        });
    }

    /// Deletes a forgotten instance's state (an `ok` instance gone from the
    /// results), so the keyspace follows what the rules return now. Fenced
    /// and waited for like every commit: a later state of the same instance
    /// can never be overtaken by this delete.
    pub fn forget_state(&self, key: &str) -> Result<(), String> {
        self.commit_ops(vec![TxnOp::delete(self.key(&format!("state/{key}")), None)])
    }

    /// What a journal entry changes in etcd; `None` for plain events, which
    /// only this instance's journal keeps.
    fn ops_for(&self, e: &Entry) -> Result<Option<Vec<TxnOp>>, String> {
        Ok(Some(match e {
            Entry::State {
                rule,
                state,
                shared,
                pages,
            } => {
                let mut ops = vec![TxnOp::put(
                    self.key(&format!("state/{rule}")),
                    json(&StateRef {
                        kind: "state",
                        rule,
                        state,
                    })?,
                    None,
                )];
                if let Some(s) = shared {
                    ops.push(TxnOp::put(
                        self.key("shared"),
                        json(&SharedRef {
                            kind: "shared",
                            shared: s,
                        })?,
                        None,
                    ));
                }
                for p in pages {
                    ops.push(TxnOp::put(
                        self.key(&format!("page/{}", p.key)),
                        json(p)?,
                        None,
                    ));
                }
                ops
            }
            Entry::Shared { .. } => vec![TxnOp::put(self.key("shared"), json(e)?, None)],
            Entry::StepIntent {
                incident,
                action,
                step,
                ..
            } => vec![TxnOp::put(
                self.key(&format!("step/{incident}/{action}/{step}")),
                json(e)?,
                None,
            )],
            Entry::StepResult {
                incident,
                action,
                step,
                ..
            } => vec![TxnOp::delete(
                self.key(&format!("step/{incident}/{action}/{step}")),
                None,
            )],
            Entry::Event { .. } => return Ok(None),
        }))
    }

    /// Runs `ops` as transactions conditional on this term, waiting from
    /// a thread that may block (the journal's writer runs in
    /// `block_in_place`). Any failure steps down.
    fn commit_ops(&self, ops: Vec<TxnOp>) -> Result<(), String> {
        self.may_act()?;
        let Some(rev) = self.inner().term else {
            return Err(format!("{} does not lead its group", self.name));
        };
        let rpc = self.rpc();
        // etcd allows 128 operations per transaction by default.
        let mut ops = ops;
        while !ops.is_empty() {
            let rest = ops.split_off(ops.len().min(100));
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.key("leader"),
                    CompareOp::Equal,
                    rev,
                )])
                .and_then(ops);
            let mut c = self.client.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            self.handle.spawn(async move {
                let r = tokio::time::timeout(rpc, c.txn(txn)).await;
                let _ = tx.send(r);
            });
            let why = match rx.recv_timeout(rpc + Duration::from_millis(200)) {
                Ok(Ok(Ok(r))) if r.succeeded() => None,
                Ok(Ok(Ok(_))) => Some("the leader key is no longer this term's (its lease ended and another instance may lead)".to_string()),
                Ok(Ok(Err(e))) => Some(etcd_err(e)),
                Ok(Err(_)) | Err(_) => Some(etcd_err("no answer to a commit in time")),
            };
            if let Some(why) = why {
                self.step_down(&format!("a commit failed: {why}"));
                return Err(format!(
                    "not committed to etcd ({why}): {} stops acting",
                    self.name
                ));
            }
            ops = rest;
        }
        Ok(())
    }
}

impl Fence for Node {
    fn commit(&self, e: &Entry) -> Result<(), String> {
        match self.ops_for(e)? {
            Some(ops) => self.commit_ops(ops),
            None => Ok(()),
        }
    }

    fn may_act(&self) -> Result<(), String> {
        Node::may_act(self)
    }
}

/// A journal `state` entry without its pages (they have keys of their own).
#[derive(Serialize)]
struct StateRef<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    rule: &'a str,
    state: &'a RuleState,
}

#[derive(Serialize)]
struct SharedRef<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    shared: &'a crate::rule::Shared,
}

fn json<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| e.to_string())
}

/// Each call to etcd gets this long: a quarter of the lease, within
/// 250 ms .. 2 s, so a leader learns it cannot commit well before its
/// lease could end.
fn rpc_timeout(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(2))
}
