//! One module per subcommand; each returns the process exit code.

pub mod check;
pub mod eval;
pub mod test;
