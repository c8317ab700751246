//! The `ripcord` binary: parse the command line, dispatch, map the outcome to
//! an exit code. Library code returns typed errors; only this file uses
//! anyhow.

mod cli;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use ripcord::commands;
use ripcord::config::load::DEFAULT_CONFIG_PATH;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ripcord: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { files } => {
            let report = if files.is_empty() {
                let explicit = cli.config.is_some();
                let path = cli
                    .config
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
                commands::check::check_config(&path, explicit)
            } else {
                commands::check::check_files(&files)
            };
            let mut err = std::io::stderr().lock();
            for d in &report.diagnostics {
                writeln!(err, "{d}")?;
            }
            println!("{}", report.summary);
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Test { files } => {
            let mut out = std::io::stdout().lock();
            let totals = commands::test::run(&files, &mut out)?;
            writeln!(
                out,
                "{} passed, {} failed{}",
                totals.passed,
                totals.failed,
                if totals.broken > 0 {
                    format!(" ({} file(s) could not be loaded)", totals.broken)
                } else {
                    String::new()
                }
            )?;
            Ok(if totals.failed == 0 && totals.broken == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
