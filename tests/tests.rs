//! Integration tests: one binary, shared helpers in `support`. They run the
//! real `ripcord` binary (CARGO_BIN_EXE_ripcord) against files on disk.

mod support;

mod api;
mod backtest;
mod check;
mod fuzz;
mod ha;
mod hostile;
mod import;
mod instances;
mod live;
mod malformed;
mod notify;
mod packaging;
mod reload;
mod robustness;
mod rule_tests;
mod runners;
mod systemd;
mod trust;
mod unit_file;
mod web;
