//! The file formats of DESIGN.md as serde types: the only place that knows
//! their exact shape. Unknown keys are rejected everywhere. Validation (names,
//! references, PromQL, conditions, templates) happens in `validate`.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde::Deserialize;

use super::secrets::SecretString;

pub use super::scalar::{
    parse_duration, Dur, Mode, NoData, OnTimeout, Scalar, Severity, MAX_DURATION,
};
pub use crate::actions::RawStep;
pub use crate::notify::RawNotifier;

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
    #[serde(default)]
    pub web: RawWeb,
    /// High availability on etcd; absent: one instance, local journal only.
    pub ha: Option<RawHa>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHa {
    /// This instance's name in its group (default: the host name).
    pub name: Option<String>,
    pub etcd: RawEtcd,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcd {
    pub endpoints: OneOrMany,
    /// Every key ripcord writes lives under it; one group per prefix.
    pub prefix: Option<String>,
    pub lease_ttl: Option<Dur>,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// PEM files for https endpoints: the CA to trust, and a client
    /// certificate and key if etcd asks for one.
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeb {
    /// Who may read the web page: `open`, or `token` (after logging in).
    pub read: Option<WebRead>,
}

/// Who may read the web page and `GET /api/v1/...`-like views of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebRead {
    /// Anyone who can reach the listener.
    Open,
    /// Only after logging in with the API token.
    Token,
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

// ---------------------------------------------------------------- actions

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    pub description: Option<String>,
    pub steps: Vec<RawStep>,
    /// A label value put into a step must match this too (a regex, whole
    /// value): only ever stricter than the built-in safe set.
    pub label_pattern: Option<String>,
}

// ---------------------------------------------------------------- rules

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: String,
    pub every: Option<Dur>,
    pub cron: Option<String>,
    pub queries: IndexMap<String, String>,
    /// None: alert-style (one query, every series it returns breaches).
    pub condition: Option<String>,
    /// Labels that tell instances apart.
    #[serde(default)]
    pub by: Vec<String>,
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
