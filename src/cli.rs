//! Command-line types (clap derive). Parsing only; `main.rs` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ripcord",
    version,
    about = "Pulls the ripcord during a risky cutover: PromQL rules that roll back, page and verify"
)]
pub struct Cli {
    /// Main config file.
    #[arg(
        short,
        long,
        global = true,
        env = "RIPCORD_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate config and rule files offline; one `file:line:col: message` per problem.
    Check {
        /// Rule files or directories (default: the config and the rules it names).
        files: Vec<PathBuf>,
    },
    /// The daemon: evaluate rules on their schedule and act on breaches (foreground).
    Run,
    /// Evaluate once against live Prometheus; print values, verdicts and what would happen. Acts on nothing.
    Eval {
        /// Rules to evaluate (default: all).
        rules: Vec<String>,
    },
    /// Run rule unit tests: query values over time in, expected states, actions and pages out.
    Test {
        /// Test files (`*.test.yaml`) or directories holding them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}
