//! One module per subcommand; each returns the process exit code.

pub mod backtest;
pub mod check;
pub mod control;
pub mod eval;
pub mod import;
pub mod test;
