//! Configuration and rule files: raw serde shapes (`raw`), checked domain
//! types (this module), and the loader that turns one into the other
//! (`load`). `ripcord check`, `ripcord test` and the daemon all load files
//! through [`load`], so they can never disagree about what a file means.

pub mod load;
pub mod position;
pub mod raw;
mod rule_check;
pub mod scalar;
pub mod secrets;
pub mod shape;
pub mod source;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

pub use crate::actions::exec::ExecStep;
pub use crate::actions::file::{FileFormat, FileStep};
pub use crate::actions::http::HttpStep;
pub use crate::actions::kubectl::{KubectlStep, KubectlVerb};
pub use crate::actions::systemctl::{SystemctlStep, SystemctlVerb};
pub use crate::actions::Step;
pub use raw::{Mode, NoData, OnTimeout, Severity};
pub use secrets::{Secret, SecretString};

pub use crate::notify::Notifier;
use crate::rule::condition::Condition;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/ripcord/ripcord.yaml";
pub const DEFAULT_RULES: &str = "/etc/ripcord/rules.d/*.yaml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ripcord";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9733";
pub const DEFAULT_EVERY: Duration = Duration::from_secs(30);
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(3600);
pub const DEFAULT_BLIND_AFTER: Duration = Duration::from_secs(60);
use crate::rule::template::Template;
use position::Pos;

/// Where a named thing was defined, for "defined twice" and other messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub pos: Pos,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.file.display(),
            self.pos.line,
            self.pos.col
        )
    }
}

/// The main config file, `ripcord.yaml`.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from; `None` when every default applies.
    pub path: Option<PathBuf>,
    pub prometheus: PrometheusConfig,
    /// Globs of rule files, already resolved against the config's directory.
    pub rule_globs: Vec<String>,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub mode: Mode,
    pub limits: Limits,
    pub outbox: OutboxConfig,
    /// The control API's bearer token; without it, control is refused.
    pub api_token: Option<SecretString>,
    /// A rule with an open incident leaves only after missing this long.
    pub removal_delay: Duration,
    /// Who may read the web page (`web.read`); the default is `token` when
    /// an API token is configured, `open` otherwise.
    pub web_read: raw::WebRead,
    /// High availability on etcd (`ha:`); `None`: one instance.
    pub ha: Option<HaConfig>,
}

/// `ha:`: instances with the same etcd prefix form one group; exactly one,
/// the holder of the leader key's lease, acts.
#[derive(Clone, Debug)]
pub struct HaConfig {
    /// Unique in the group; the host name unless set.
    pub name: String,
    pub endpoints: Vec<String>,
    /// No trailing `/`, e.g. `/ripcord/payments`.
    pub prefix: String,
    pub lease_ttl: Duration,
    pub auth: Option<(String, SecretString)>,
    pub tls: Option<EtcdTls>,
}

#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, both or neither.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// `ha.etcd.lease_ttl`'s default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// `ha.etcd.prefix`'s default.
pub const DEFAULT_HA_PREFIX: &str = "/ripcord/default";

/// `reload: {removal_delay}`'s default: long enough for an editor's save or
/// a directory moved and back, short enough for a deliberate removal.
pub const DEFAULT_REMOVAL_DELAY: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    /// A page not delivered by then is given up (logged and counted).
    pub max_age: Duration,
    /// Past this many undelivered pages, the oldest is dropped (and said).
    pub max_pages: usize,
}

#[derive(Clone, Debug)]
pub struct PrometheusConfig {
    pub url: String,
    pub timeout: Duration,
    pub headers: BTreeMap<String, SecretString>,
    /// Extra CA certificate (PEM) to trust for an https Prometheus.
    pub ca_file: Option<PathBuf>,
    /// Unreachable this long, ripcord says (and pages, once) that it is blind.
    pub blind_after: Duration,
    pub auth: Option<PromAuth>,
    /// The largest answer read; a longer one is an error naming the query.
    pub max_response_bytes: usize,
}

/// `prometheus.max_response_bytes`'s default: 32 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 32 << 20;

#[derive(Clone, Debug)]
pub enum PromAuth {
    Basic {
        username: String,
        password: SecretString,
    },
    Bearer(SecretString),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Past this many actions in a rolling hour, across all rules, ripcord
    /// pages instead of acting.
    pub max_actions_per_hour: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_actions_per_hour: 5,
        }
    }
}

/// Every rule file, loaded and checked as one set: names are global.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub files: Vec<PathBuf>,
    pub rules: Vec<Arc<Rule>>,
    pub actions: BTreeMap<String, Arc<Action>>,
    pub notifiers: BTreeMap<String, Arc<Notifier>>,
}

impl RuleSet {
    pub fn rule(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.name == name)
    }
}

#[derive(Clone, Debug)]
pub enum Schedule {
    Every(Duration),
    /// The expression as written, and its parsed form.
    Cron(String, Box<cron::Schedule>),
}

impl Schedule {
    /// The time between the two evaluations that follow `t` (an hour if a
    /// cron schedule never fires again).
    pub fn interval_after(&self, t: std::time::SystemTime) -> Duration {
        match self {
            Schedule::Every(d) => *d,
            Schedule::Cron(_, s) => {
                // Checked: a damaged journal's time must not panic chrono.
                let secs = match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => i64::try_from(d.as_secs()).ok(),
                    Err(e) => i64::try_from(e.duration().as_secs()).ok().map(|s| -s),
                };
                let Some(dt) = secs.and_then(|s| chrono::DateTime::from_timestamp(s, 0)) else {
                    return Duration::from_secs(3600);
                };
                let mut next = s.after(&dt);
                match (next.next(), next.next()) {
                    (Some(a), Some(b)) => (b - a).to_std().unwrap_or(Duration::from_secs(3600)),
                    _ => Duration::from_secs(3600),
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct Approval {
    pub timeout: Duration,
    pub on_timeout: OnTimeout,
}

/// One rule, checked: every reference resolves, every query parses as
/// PromQL, the condition compiles to a boolean over the query names.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    /// The rule's definition as written (canonical JSON): a reload keeps
    /// the scheduler and state of a rule whose fingerprint is unchanged.
    pub fingerprint: String,
    /// The file the rule was read from.
    pub file: Arc<std::path::Path>,
    pub schedule: Schedule,
    /// Query name → PromQL, in the order written.
    pub queries: Queries,
    /// Labels whose distinct values make instances (empty: one instance).
    pub by: Vec<String>,
    /// [`Condition::presence`] for an alert-style rule.
    pub condition: Condition,
    /// How long the condition must hold before an incident opens.
    pub for_: Duration,
    pub no_data: NoData,
    pub severity: Severity,
    pub summary: Template,
    pub description: Option<String>,
    pub actions: Vec<String>,
    pub notify: Vec<String>,
    pub approval: Option<Approval>,
    /// The condition must clear this long after the actions, or the incident
    /// is unrecovered. `None`: wait for it to clear, with no deadline.
    pub verify_within: Option<Duration>,
    pub cooldown: Duration,
    /// How long the rule's own evaluations may fail before it pages that it
    /// protects nothing. `None`: a minute or three intervals, the longer.
    pub unevaluable_after: Option<Duration>,
    /// `None`: the global mode applies.
    pub mode: Option<Mode>,
    pub labels: BTreeMap<String, String>,
    pub runbook_url: Option<String>,
    pub dashboard_url: Option<String>,
}

/// A rule's queries, name → PromQL, in the order written. A rule has a
/// few and a daemon may hold thousands of rules: a slice searched in order,
/// not a hash table beside it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Queries(Box<[(String, String)]>);

impl Queries {
    pub fn get(&self, name: &str) -> Option<&String> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, q)| q)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(n, _)| n)
    }

    pub fn values(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(_, q)| q)
    }

    pub fn iter(&self) -> <&Queries as IntoIterator>::IntoIter {
        self.into_iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<IndexMap<String, String>> for Queries {
    fn from(m: IndexMap<String, String>) -> Queries {
        Queries(m.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Queries {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(n, q)| (n, q))
    }
}

impl Rule {
    /// This rule as a driver that evaluates it every `step` sees it: `test`
    /// and `backtest` feed one evaluation per step, and the core's gap rule
    /// (see [`crate::rule::machine::gap_limit`]) counts in those.
    pub fn evaluated_every(&self, step: Duration) -> Arc<Rule> {
        Arc::new(Rule {
            schedule: Schedule::Every(step),
            ..self.clone()
        })
    }
}

#[derive(Clone, Debug)]
pub struct Action {
    pub name: String,
    pub description: Option<String>,
    pub steps: Vec<Step>,
    /// What label values put into its steps must match, on top of the
    /// safe set ([`crate::actions::labels`]), anchored at both ends.
    pub label_pattern: Option<regex::Regex>,
}
