//! ripcord: pulls the ripcord during a risky cutover.
//!
//! Rule files of PromQL thresholds are loaded and checked by [`config`]; the
//! pure rule state machine in [`rule`] decides; drivers (`run`, `test`,
//! `backtest`) feed it and carry out its effects.

/// The version, as `ripcord --version` and `status` print it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this binary was built from (`build.rs`), or `unknown`.
pub const COMMIT: &str = env!("RIPCORD_COMMIT");
/// `0.1.0 (commit 0123456789ab)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("RIPCORD_COMMIT"),
    ")"
);

pub mod actions;
pub mod api;
pub mod archive;
pub mod body;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod diag;
pub mod freshness;
pub mod fsio;
pub mod ha;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod prom;
pub mod rule;
pub mod testing;
