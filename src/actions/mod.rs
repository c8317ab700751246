//! Action runners: one file per kind of step. Each step runs with a timeout
//! and returns its own result; no shell is ever involved, and query values
//! and labels reach commands only as environment variables.

pub mod exec;
pub mod file;
pub mod http;
pub mod kubectl;
pub mod systemctl;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Step;

/// What a step gets to know about the incident it runs for.
#[derive(Clone, Debug, Default)]
pub struct StepContext {
    pub rule: String,
    pub incident: String,
    /// Each query's value at the incident; `None` is no data.
    pub values: BTreeMap<String, Option<f64>>,
}

impl StepContext {
    /// `RIPCORD_RULE`, `RIPCORD_INCIDENT`, `RIPCORD_VALUE_<QUERY>`.
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
    match step {
        Step::Exec(e) => format!("exec {:?} (timeout {})", e.argv, fmt_d(e.timeout)),
        Step::Kubectl(k) => format!(
            "{} (timeout {})",
            kubectl::argv(k).join(" "),
            fmt_d(k.timeout)
        ),
        Step::Systemctl(s) => format!(
            "systemctl {} {} (wait {}, timeout {})",
            s.verb.as_str(),
            s.unit,
            fmt_d(s.wait),
            fmt_d(s.timeout)
        ),
        Step::File(f) => {
            let kv: Vec<String> = f.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!(
                "set {} in {} ({:?})",
                kv.join(" "),
                f.path.display(),
                f.format
            )
        }
        Step::Http(h) => format!(
            "{} {} (timeout {})",
            h.method,
            h.url.as_written(),
            fmt_d(h.timeout)
        ),
    }
}

pub fn fmt_d(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// Runs one step to completion or its timeout.
pub async fn run_step(step: &Step, ctx: &StepContext) -> StepOutcome {
    match step {
        Step::Exec(e) => exec::run(e, ctx).await,
        Step::Kubectl(k) => kubectl::run(k, ctx).await,
        Step::Systemctl(s) => systemctl::run(s, ctx).await,
        Step::File(f) => file::run(f).await,
        Step::Http(h) => http::run(h).await,
    }
}
