//! Command-line types (clap derive). Parsing only; `main.rs` dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ripcord",
    version = ripcord::LONG_VERSION,
    about = "Pulls the ripcord during a risky cutover: PromQL rules that roll back, page and verify",
    after_long_help = "Files: /etc/ripcord/ripcord.yaml (the config), /etc/ripcord/rules.d/*.yaml \
        (rule files), /var/lib/ripcord (journal and outbox). The formats are in ripcord.yaml(5); \
        examples in /usr/share/doc/ripcord/examples."
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
    /// Show every rule's state, open incidents and the daemon's health.
    Status {
        /// Print the raw JSON snapshot.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: Api,
    },
    /// Approve an incident that awaits approval: its actions run now.
    Approve {
        incident: String,
        #[command(flatten)]
        api: Api,
    },
    /// Veto an incident: nothing (more) runs for it.
    Veto {
        incident: String,
        #[command(flatten)]
        api: Api,
    },
    /// Stop all actions: incidents still open and page.
    Pause {
        /// For how long, e.g. 1h, at most 3650d (default: until `ripcord resume`).
        #[arg(long = "for", value_name = "DURATION")]
        for_: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        api: Api,
    },
    /// Open an incident by hand on the running daemon: a rollback drill.
    Fire {
        rule: String,
        /// Resolve and record every step, send pages marked as a drill, run nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: Api,
    },
    /// Let actions run again after `ripcord pause`.
    Resume {
        #[command(flatten)]
        api: Api,
    },
    /// Replay history from Prometheus through the rules: would-be incidents and when.
    Backtest {
        /// Start: RFC 3339, `now`, or relative like `-7d`.
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        /// End (default: now).
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        to: String,
        /// Evaluation step (default: the shortest `every:` of the rules).
        #[arg(long)]
        step: Option<String>,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Draw each rule's values, thresholds and incident windows into this SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Rules to replay (default: all).
        rules: Vec<String>,
    },
    /// Run rule unit tests: query values over time in, expected states, actions and pages out.
    Test {
        /// Test files (`*.test.yaml`) or directories holding them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Turn Prometheus alerting rules (rule files, PrometheusRule resources) into ripcord rule files that page only.
    Import {
        /// Write one rule file per input file (and imported-notifiers.yaml) into DIR; default: one file to stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Prometheus rule files or PrometheusRule manifests.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a shell completion script, e.g. `ripcord completions bash > /etc/bash_completion.d/ripcord`.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (ripcord(1), one per subcommand, ripcord.yaml(5)) into DIR. For packagers.
    #[command(hide = true)]
    Manpages {
        #[arg(value_name = "DIR")]
        out: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct Api {
    /// The daemon's API (default: http:// + `listen:` from the config).
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
}
