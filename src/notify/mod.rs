//! Pages: what on-call learns from ripcord. A [`Notification`] is built from
//! the core's page effects and the daemon's own events (steps, blindness),
//! kept in the durable [`outbox::Outbox`] and delivered by one small module
//! per kind of receiver, each turning it into HTTP requests.

pub mod alertmanager;
pub mod outbox;
pub mod pagerduty;
pub mod slack;
pub mod webhook;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::scalar::Severity;
use crate::config::secrets::Secret;
use crate::config::source::{one_of, At, Ctx};

/// One kind of receiver: its config shape, validation and rendering live
/// in its own file, and the list in [`notifier_kinds!`] makes the rest
/// (the raw notifier's field, the [`NotifierKind`] variant, the dispatch).
pub trait ReceiverKind: Sized + Clone + std::fmt::Debug {
    /// Its key in a rule file (`slack:`).
    const NAME: &'static str;
    /// Its shape in the file, as read (unknown keys are refused).
    type Raw: DeserializeOwned + std::fmt::Debug;
    /// Checks `raw` (at `at`, the kind's key) and reports every problem
    /// with its position.
    fn validate(cx: &mut Ctx, at: &At, raw: &Self::Raw) -> Self;
    /// The HTTP requests that deliver `n`; `Err` only when a secret cannot
    /// be resolved.
    fn render(&self, n: &Notification, ctx: &RenderContext) -> Result<Vec<Request>, String>;
    /// The smallest gap between two requests to one receiver.
    fn min_interval(&self) -> Duration {
        Duration::ZERO
    }
}

macro_rules! notifier_kinds {
    ($($key:ident => $variant:ident($ty:ty),)*) => {
        /// A notifier as written: exactly one kind, and its filters.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawNotifier {
            $(pub $key: Option<<$ty as ReceiverKind>::Raw>,)*
            /// Only these events (default: all).
            pub events: Option<Vec<String>>,
            /// Only pages of at least this severity (default: info, i.e. all).
            pub min_severity: Option<Severity>,
        }

        #[derive(Clone, Debug)]
        pub enum NotifierKind {
            $($variant($ty),)*
        }

        impl NotifierKind {
            pub fn render(&self, n: &Notification, ctx: &RenderContext) -> Result<Vec<Request>, String> {
                match self {
                    $(NotifierKind::$variant(k) => k.render(n, ctx),)*
                }
            }

            pub fn min_interval(&self) -> Duration {
                match self {
                    $(NotifierKind::$variant(k) => k.min_interval(),)*
                }
            }
        }

        /// Exactly one kind, then that kind's own validation.
        pub fn validate_kind(cx: &mut Ctx, at: &At, name: &str, r: &RawNotifier) -> Option<NotifierKind> {
            let set = [$((<$ty as ReceiverKind>::NAME, r.$key.as_ref().map(|_| ())),)*];
            one_of(cx, at, &format!("notifier `{name}`"), &set)?;
            None
                $(.or_else(|| r.$key.as_ref().map(|raw| {
                    NotifierKind::$variant(<$ty as ReceiverKind>::validate(cx, &at.key(stringify!($key)), raw))
                })))*
        }
    };
}

/// A notifier, checked.
#[derive(Clone, Debug)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifierKind,
    /// `None`: every event.
    pub events: Option<std::collections::BTreeSet<PageEvent>>,
    pub min_severity: Severity,
}

notifier_kinds! {
    pagerduty => Pagerduty(pagerduty::Pagerduty),
    slack => Slack(slack::Slack),
    webhook => Webhook(webhook::Webhook),
    alertmanager => Alertmanager(alertmanager::Alertmanager),
}
use crate::rule::{PageEvent, Timestamp};

/// One page, as stored in the outbox and rendered for each receiver.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub event: PageEvent,
    pub rule: Option<String>,
    pub incident: Option<String>,
    pub severity: Severity,
    /// One line.
    pub summary: String,
    /// What ripcord did and what came of it, a line each.
    pub details: Vec<String>,
    pub values: BTreeMap<String, Option<f64>>,
    pub condition: Option<String>,
    /// Query name → PromQL, for graph links.
    pub queries: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub runbook_url: Option<String>,
    pub dashboard_url: Option<String>,
    /// The incident is over: resolve it where the receiver can.
    pub resolve: bool,
    pub dry_run: bool,
    pub drill: bool,
    /// When the incident opened (or the event happened).
    pub started: Timestamp,
    pub at: Timestamp,
    /// The same for every delivery of this page to this receiver, retries
    /// and redeliveries after a crash included: receivers deduplicate on
    /// it (webhook `id`; PagerDuty uses the incident's `dedup_key`).
    #[serde(default)]
    pub page_id: String,
}

/// What rendering needs besides the notification.
#[derive(Clone, Debug, Default)]
pub struct RenderContext {
    /// Prometheus's URL, for graph links.
    pub prometheus_url: String,
    /// This host, as PagerDuty's `source`.
    pub host: String,
}

/// One HTTP request to deliver.
pub struct Request {
    pub url: Secret,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Notification {
    /// `[CRITICAL] chat-5xx opened: chat 5xx at 2%` (with drill/dry-run marks).
    pub fn title(&self) -> String {
        let mut t = format!("[{}] ", self.severity.as_str().to_ascii_uppercase());
        if self.drill {
            t.push_str("[DRILL] ");
        }
        if self.dry_run {
            t.push_str("[DRY-RUN] ");
        }
        if let Some(r) = &self.rule {
            t.push_str(r);
            t.push(' ');
        }
        t.push_str(&self.event.as_str().replace('_', " "));
        t.push_str(": ");
        t.push_str(&self.summary);
        t
    }

    /// A Prometheus graph link per query.
    pub fn graph_links(&self, prometheus_url: &str) -> Vec<(String, String)> {
        self.queries
            .iter()
            .map(|(name, q)| (name.clone(), graph_link(prometheus_url, q)))
            .collect()
    }

    /// How to stop ripcord, for the page.
    pub fn stop_commands(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let (Some(id), false) = (&self.incident, self.resolve) {
            v.push(format!("ripcord veto {id}"));
        }
        v.push("ripcord pause --for 1h --reason \"...\"".into());
        v
    }
}

/// Does `notifier` want this notification?
pub fn wants(notifier: &Notifier, n: &Notification) -> bool {
    // A resolve goes wherever the page it ends could have gone.
    (n.resolve || n.severity >= notifier.min_severity)
        && notifier
            .events
            .as_ref()
            .is_none_or(|e| e.contains(&n.event))
}

/// Renders for one receiver; `Err` only when a secret cannot be resolved.
pub fn render(
    kind: &NotifierKind,
    n: &Notification,
    ctx: &RenderContext,
) -> Result<Vec<Request>, String> {
    kind.render(n, ctx)
}

/// The smallest gap between two requests to one receiver.
pub fn min_interval(kind: &NotifierKind) -> Duration {
    kind.min_interval()
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

pub fn fmt_value(v: Option<f64>) -> String {
    v.map(|f| f.to_string()).unwrap_or_else(|| "no data".into())
}

/// Prometheus's graph page for `expr`.
pub fn graph_link(prometheus_url: &str, expr: &str) -> String {
    let q = serde_urlencoded::to_string([("g0.expr", expr), ("g0.tab", "0")]).unwrap_or_default();
    format!("{}/graph?{q}", prometheus_url.trim_end_matches('/'))
}
