//! The value types of ripcord's files: any YAML scalar read as text,
//! durations written like Prometheus's, and the small enums (mode,
//! no_data, severity, on_timeout). Below the raw shapes and the
//! secret references that both use them.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

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
