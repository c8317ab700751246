//! Time, below everything that uses it: [`Timestamp`] (what the pure core
//! and the journal speak) and [`now`], the one place the wall clock is
//! read. The core never calls `now`; drivers do and pass the time in.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The wall clock, now.
pub fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

/// Milliseconds since the Unix epoch. The core never reads a clock: drivers
/// pass the time in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_system(t: SystemTime) -> Timestamp {
        match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => Timestamp(d.as_millis() as i64),
            Err(e) => Timestamp(-(e.duration().as_millis() as i64)),
        }
    }

    pub fn plus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    pub fn minus(self, d: Duration) -> Timestamp {
        Timestamp(
            self.0
                .saturating_sub(d.as_millis().min(i64::MAX as u128) as i64),
        )
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }

    pub fn to_system(self) -> SystemTime {
        if self.0 >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_millis(self.0 as u64)
        } else {
            SystemTime::UNIX_EPOCH - Duration::from_millis(self.0.unsigned_abs())
        }
    }

    /// The first and last instants RFC 3339 can write (years 0000 to 9999).
    const MIN_MS: i64 = -62_167_219_200_000;
    const MAX_MS: i64 = 253_402_300_799_999;

    /// RFC 3339, seconds precision: `2026-11-23T12:48:00Z`. Never panics: a
    /// time outside years 1970–9999 (only a damaged journal holds one) is
    /// written as its milliseconds since the epoch.
    pub fn rfc3339(self) -> String {
        if (0..=Self::MAX_MS).contains(&self.0) {
            humantime::format_rfc3339_seconds(self.to_system()).to_string()
        } else {
            format!("@{}ms", self.0)
        }
    }

    /// Within the years RFC 3339 can write: what a journal may hold.
    pub fn in_range(self) -> bool {
        (Self::MIN_MS..=Self::MAX_MS).contains(&self.0)
    }

    /// `20261123T124800Z`, for incident ids.
    pub(crate) fn compact(self) -> String {
        self.rfc3339().replace(['-', ':'], "")
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc3339())
    }
}
