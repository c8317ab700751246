//! ripcord: pulls the ripcord during a risky cutover.
//!
//! Rule files of PromQL thresholds are loaded and checked by [`config`]; the
//! pure rule state machine in [`rule`] decides; drivers (`run`, `test`,
//! `backtest`) feed it and carry out its effects.

pub mod actions;
pub mod api;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod diag;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod prom;
pub mod rule;
pub mod testing;
