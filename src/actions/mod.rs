//! Steps: one file per kind (`exec.rs`, `kubectl.rs`, `systemctl.rs`,
//! `file.rs`, `http.rs`), each owning its config shape, its validation
//! (with positions), its description and its run, behind [`StepKind`].
//! The list in [`step_kinds!`] below makes the rest: the raw `RawStep`
//! with one optional field per kind, the `Step` enum, and the dispatch of
//! validation, description, timeout and run. Adding a kind is one file and
//! one line there; a kind that misses a piece does not compile.
//!
//! No shell is ever involved, and query values and labels reach commands
//! only as environment variables. Every step's timeout is enforced in one
//! place, [`with_deadline`].

pub mod exec;
pub mod file;
pub mod http;
pub mod kubectl;
pub mod labels;
pub mod systemctl;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use crate::config::source::one_of;
use crate::config::source::{At, Ctx};

/// One kind of step.
pub trait StepKind: Sized + Clone + std::fmt::Debug {
    /// Its key in a rule file (`exec:`).
    const NAME: &'static str;
    /// What a timed-out step of this kind says after "timed out after X".
    const ON_TIMEOUT: &'static str;
    /// Its shape in the file, as read (unknown keys are refused).
    type Raw: DeserializeOwned + std::fmt::Debug;
    /// Checks `raw` (at `at`, the step) and reports every problem with its
    /// position; `None` when there was one.
    fn validate(cx: &mut Ctx, at: &At, raw: &Self::Raw) -> Option<Self>;
    /// The step as it would run, for dry-run records, pages and logs.
    /// Secrets appear as written (`${env:TOKEN}`), never resolved.
    fn describe(&self) -> String;
    /// The step is stopped at the end of this ([`with_deadline`]).
    fn timeout(&self) -> Duration;
    /// Runs the step to its end; the deadline is the caller's.
    fn run(&self, ctx: &StepContext) -> impl Future<Output = StepOutcome> + Send;
    /// The step with `fill` applied to each string field that may hold
    /// `{{ labels.NAME }}` ([`labels`]); the first refusal stops it.
    fn with_labels(&self, fill: Fill<'_>) -> Result<Self, String>;
}

/// What [`StepKind::with_labels`] applies to a string field.
pub type Fill<'a> = &'a dyn Fn(&str) -> Result<String, String>;

/// The one place a step's timeout is enforced: past `timeout` the run is
/// dropped (a process group gets SIGTERM, then SIGKILL, from its guard in
/// `exec.rs`) and the step failed with "timed out after X: `what`".
pub async fn with_deadline(
    timeout: Duration,
    what: &str,
    run: impl Future<Output = StepOutcome>,
) -> StepOutcome {
    match tokio::time::timeout(timeout, run).await {
        Ok(outcome) => outcome,
        Err(_) => StepOutcome::failed(format!("timed out after {}: {what}", fmt_d(timeout))),
    }
}

macro_rules! step_kinds {
    ($($key:ident => $variant:ident($ty:ty),)*) => {
        /// A step as written: exactly one kind is set; [`validate_step`]
        /// checks that.
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct RawStep {
            $(pub $key: Option<<$ty as StepKind>::Raw>,)*
        }

        /// A checked step, ready to run.
        #[derive(Clone, Debug)]
        pub enum Step {
            $($variant($ty),)*
        }

        impl Step {
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Step::$variant(_) => <$ty as StepKind>::NAME,)*
                }
            }

            /// The step is stopped at the end of this.
            pub fn timeout(&self) -> Duration {
                match self {
                    $(Step::$variant(s) => s.timeout(),)*
                }
            }

            pub fn describe(&self) -> String {
                match self {
                    $(Step::$variant(s) => s.describe(),)*
                }
            }

            /// The step with an instance's labels in it.
            pub fn with_labels(&self, fill: Fill<'_>) -> Result<Step, String> {
                match self {
                    $(Step::$variant(s) => s.with_labels(fill).map(Step::$variant),)*
                }
            }

            /// Runs the step to completion or its timeout.
            pub async fn run(&self, ctx: &StepContext) -> StepOutcome {
                match self {
                    $(Step::$variant(s) => {
                        with_deadline(s.timeout(), <$ty as StepKind>::ON_TIMEOUT, s.run(ctx)).await
                    })*
                }
            }
        }

        /// Checks one step of an action: exactly one kind, then that kind's
        /// own validation.
        pub fn validate_step(cx: &mut Ctx, at: &At, s: &RawStep) -> Option<Step> {
            let set = [$((<$ty as StepKind>::NAME, s.$key.as_ref().map(|_| ())),)*];
            one_of(cx, at, "a step", &set)?;
            let errors_before = cx.error_count();
            let step = None
                $(.or_else(|| s.$key.as_ref().map(|raw| {
                    <$ty as StepKind>::validate(cx, at, raw).map(Step::$variant)
                })))*
                .flatten();
            let step = step.filter(|_| cx.error_count() == errors_before)?;
            // `{{ labels.NAME }}` is the only substitution a step takes.
            if let Err(e) = step.with_labels(&|s| labels::names(s).map(|_| s.to_string())) {
                cx.error(at, e);
                return None;
            }
            Some(step)
        }
    };
}

step_kinds! {
    exec => Exec(exec::ExecStep),
    kubectl => Kubectl(kubectl::KubectlStep),
    systemctl => Systemctl(systemctl::SystemctlStep),
    file => File(file::FileStep),
    http => Http(http::HttpStep),
}

/// What a step gets to know about the incident it runs for.
#[derive(Clone, Debug, Default)]
pub struct StepContext {
    pub rule: String,
    /// The instance's key (the rule's name for a rule without `by:`).
    pub key: String,
    /// The instance's labels.
    pub labels: BTreeMap<String, String>,
    pub incident: String,
    /// Each query's value at the incident; `None` is no data.
    pub values: BTreeMap<String, Option<f64>>,
}

impl StepContext {
    /// `RIPCORD_RULE`, `RIPCORD_INCIDENT`, `RIPCORD_VALUE_<QUERY>`,
    /// `RIPCORD_LABEL_<NAME>`.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("RIPCORD_RULE".to_string(), self.rule.clone()),
            ("RIPCORD_INCIDENT".to_string(), self.incident.clone()),
        ];
        for (q, v) in &self.values {
            env.push((
                format!("RIPCORD_VALUE_{}", q.to_ascii_uppercase()),
                v.map(|f| f.to_string()).unwrap_or_default(),
            ));
        }
        env.extend(labels::env(&self.labels));
        env
    }
}

/// A step's result, recorded in the journal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepOutcome {
    pub ok: bool,
    /// One line: `exit 0`, `HTTP 204`, `timed out after 2m`.
    pub summary: String,
    /// The tail of what it printed or answered (bounded).
    pub output: String,
}

impl StepOutcome {
    pub fn failed(summary: impl Into<String>) -> StepOutcome {
        StepOutcome {
            ok: false,
            summary: summary.into(),
            output: String::new(),
        }
    }
}

/// Output kept per step: the tail, where the error usually is.
pub const OUTPUT_LIMIT: usize = 16 * 1024;

pub fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(OUTPUT_LIMIT);
    let mut s = String::from_utf8_lossy(&bytes[start..]).into_owned();
    if start > 0 {
        s.insert_str(0, "[…] ");
    }
    s
}

/// A step as it would run, for dry-run records and logs. Secrets appear as
/// written (`${env:TOKEN}`), never resolved.
pub fn describe(step: &Step) -> String {
    step.describe()
}

pub fn fmt_d(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// Runs one step to completion or its timeout.
pub async fn run_step(step: &Step, ctx: &StepContext) -> StepOutcome {
    step.run(ctx).await
}
