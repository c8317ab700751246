//! The file formats of DESIGN.md as serde types: the only place that knows
//! their exact shape. Unknown keys are rejected everywhere. Validation (names,
//! references, PromQL, conditions, templates) happens in `validate`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use indexmap::IndexMap;
use serde::{de, Deserialize, Deserializer};

use super::secrets::SecretString;

/// Any YAML scalar read as its text, so that `PERCENT: 0` and `PERCENT: "0"`
/// mean the same thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written like Prometheus's: `30s`, `2m`, `1h30m`, `500ms`, `1d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// The longest duration ripcord accepts anywhere (rule keys, `pause --for`,
/// the API): ten years. Every time ripcord computes from one stays far
/// inside what timestamps can hold.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() || !t.starts_with(|c: char| c.is_ascii_digit()) || t.contains(' ') {
        return Err(format!(
            "invalid duration `{s}`: expected a number and a unit (ms, s, m, h, d, w), e.g. 30s, 2m, 1h30m"
        ));
    }
    let d = humantime::parse_duration(t).map_err(|_| {
        format!("invalid duration `{s}`: expected a number and a unit (ms, s, m, h, d, w), e.g. 30s, 2m, 1h30m")
    })?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration `{s}` is too long: the limit is 3650d (ten years)"
        ));
    }
    Ok(d)
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Scalar::deserialize(d)?;
        parse_duration(&s.0).map(Dur).map_err(de::Error::custom)
    }
}

/// One string or a list of them (`rules:` in the main config).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Enforce,
    DryRun,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// Keep the rule's state: neither fire nor clear.
    #[default]
    Hold,
    /// Treat missing data as the condition being false.
    Ok,
    /// Treat missing data as a breach (for heartbeats that must exist).
    Breach,
}

/// PagerDuty's severities, which every notifier maps from.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Error,
    #[default]
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Proceed,
    Abort,
}

// ---------------------------------------------------------------- ripcord.yaml

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub prometheus: RawPrometheus,
    pub rules: Option<OneOrMany>,
    pub state_dir: Option<String>,
    pub listen: Option<String>,
    pub mode: Option<Mode>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub outbox: RawOutbox,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub reload: RawReload,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    /// How long a rule with an open incident must stay missing from the
    /// rule files before a reload removes it.
    pub removal_delay: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// Bearer token for the control API (approve, veto, pause, resume).
    pub token: Option<SecretString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    pub max_age: Option<Dur>,
    pub max_pages: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheus {
    pub url: Option<String>,
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub headers: BTreeMap<String, SecretString>,
    pub ca_file: Option<String>,
    pub blind_after: Option<Dur>,
    pub max_response_bytes: Option<usize>,
    pub basic_auth: Option<RawBasicAuth>,
    pub bearer_token: Option<SecretString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub username: String,
    pub password: SecretString,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_actions_per_hour: Option<u32>,
}

// ---------------------------------------------------------------- notifiers

/// Exactly one kind is set; `validate` checks that.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotifier {
    pub pagerduty: Option<RawPagerduty>,
    pub slack: Option<RawSlack>,
    pub webhook: Option<RawWebhook>,
    pub alertmanager: Option<RawAlertmanager>,
    /// Only these events (default: all).
    pub events: Option<Vec<String>>,
    /// Only pages of at least this severity (default: info, i.e. all).
    pub min_severity: Option<Severity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPagerduty {
    pub routing_key: SecretString,
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlack {
    pub webhook_url: SecretString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: SecretString,
    pub secret: Option<SecretString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertmanager {
    pub urls: Vec<String>,
}

// ---------------------------------------------------------------- actions

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    pub description: Option<String>,
    pub steps: Vec<RawStep>,
}

/// Exactly one kind is set; `validate` checks that.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub exec: Option<RawExec>,
    pub kubectl: Option<RawKubectl>,
    pub systemctl: Option<RawSystemctl>,
    pub file: Option<RawFile>,
    pub http: Option<RawHttp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub argv: Vec<Scalar>,
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub env: BTreeMap<String, SecretString>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubectl {
    pub rollout_undo: Option<String>,
    pub to_revision: Option<u64>,
    pub set_image: Option<RawSetImage>,
    pub scale: Option<RawScale>,
    pub namespace: Option<String>,
    pub context: Option<String>,
    pub kubeconfig: Option<String>,
    pub wait: Option<Dur>,
    pub timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSetImage {
    pub resource: String,
    pub container: String,
    pub image: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScale {
    pub resource: String,
    pub replicas: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSystemctl {
    pub restart: Option<String>,
    pub stop: Option<String>,
    pub start: Option<String>,
    pub reload: Option<String>,
    pub wait: Option<Dur>,
    pub timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub path: String,
    pub set: IndexMap<String, Scalar>,
    pub format: Option<FileFormat>,
    pub timeout: Option<Dur>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Env,
    Yaml,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub method: Option<String>,
    pub url: SecretString,
    #[serde(default)]
    pub headers: BTreeMap<String, SecretString>,
    pub body: Option<SecretString>,
    #[serde(default)]
    pub expect_status: Vec<u16>,
    pub timeout: Option<Dur>,
    pub retries: Option<u32>,
}

// ---------------------------------------------------------------- rules

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub every: Option<Dur>,
    pub cron: Option<String>,
    pub queries: IndexMap<String, String>,
    pub condition: String,
    #[serde(rename = "for")]
    pub for_: Option<Dur>,
    pub no_data: Option<NoData>,
    pub severity: Option<Severity>,
    pub summary: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub actions: Vec<String>,
    #[serde(default)]
    pub notify: Vec<String>,
    pub approval: Option<RawApproval>,
    pub verify: Option<RawVerify>,
    pub cooldown: Option<Dur>,
    pub unevaluable_after: Option<Dur>,
    pub mode: Option<Mode>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub runbook_url: Option<String>,
    pub dashboard_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApproval {
    pub timeout: Dur,
    pub on_timeout: OnTimeout,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub within: Dur,
}

// ---------------------------------------------------------------- rule tests

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestFile {
    pub rule_files: Vec<String>,
    pub tests: Vec<RawTestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestCase {
    pub name: String,
    pub step: Dur,
    pub values: IndexMap<String, Scalar>,
    #[serde(default)]
    pub inputs: Vec<RawTestInput>,
    /// Actions whose run the test reports as failed.
    #[serde(default)]
    pub fail_actions: Vec<String>,
    pub max_actions_per_hour: Option<u32>,
    pub mode: Option<Mode>,
    /// How long failed queries (`err`) last before the blind page, as
    /// `prometheus.blind_after` (default 1m).
    pub blind_after: Option<Dur>,
    pub expect: Vec<RawExpect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTestInput {
    pub at: Dur,
    pub rule: String,
    pub approve: Option<bool>,
    pub veto: Option<bool>,
    pub fire: Option<bool>,
    pub pause: Option<bool>,
    pub resume: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExpect {
    pub at: Dur,
    /// Without a rule, the expectation is about ripcord itself: its own
    /// pages (`events`: blind, seeing).
    pub rule: Option<String>,
    pub state: Option<String>,
    pub phase: Option<String>,
    pub actions: Option<Vec<String>>,
    pub would_run: Option<Vec<String>>,
    pub pages: Option<Vec<String>>,
    pub events: Option<Vec<String>>,
}
