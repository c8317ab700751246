//! The `ripcord` binary: parse the command line, dispatch, map the outcome to
//! an exit code. Library code returns typed errors; only this file uses
//! anyhow.

mod cli;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

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

/// The daemon allocates from one glibc arena, not one per thread that ever
/// allocated: what a load's worker threads or a tokio worker freed is then
/// reused by the others instead of held per thread. At 10 000 rules that was
/// 60 → 50 MB of RSS for the same heap (BENCHMARKS.md, *Memory*; the CPU
/// numbers there are measured with it). `MALLOC_ARENA_MAX` set in the
/// environment is left to decide.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a glibc tunable; called before the
        // daemon starts any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// Loads the config (the default path may be missing: all defaults) and
/// every rule file it names; prints problems and fails on any error.
fn load(
    config: Option<PathBuf>,
) -> anyhow::Result<(ripcord::config::Config, ripcord::config::RuleSet)> {
    use ripcord::config::load;
    let explicit = config.is_some();
    let path = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let loaded = load::load_config(&path, explicit);
    for d in &loaded.diagnostics {
        eprintln!("{d}");
    }
    let config = loaded
        .value
        .ok_or_else(|| anyhow::anyhow!("{}: the config has errors", path.display()))?;
    let files = load::expand_globs(&config.rule_globs).map_err(anyhow::Error::msg)?;
    // Errors only: `ripcord check` is where warnings are read.
    let rules = load::load_rule_files_to_run(&files);
    for d in rules.diagnostics.iter().filter(|d| d.is_error()) {
        eprintln!("{d}");
    }
    let rules = rules
        .value
        .ok_or_else(|| anyhow::anyhow!("the rule files have errors; run `ripcord check`"))?;
    if rules.rules.is_empty() {
        eprintln!(
            "ripcord: no rules loaded (rules: {})",
            config.rule_globs.join(", ")
        );
    }
    Ok((config, rules))
}

/// Runs a control command against the daemon named by the config.
fn control<F, Fut>(config: Option<PathBuf>, api: Option<String>, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce(commands::control::Target) -> Fut,
    Fut: std::future::Future<Output = Result<(), commands::control::ControlError>>,
{
    use ripcord::config::load;
    let explicit = config.is_some();
    let path = config.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let loaded = load::load_config(&path, explicit);
    let config = loaded.value.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the config has errors; run `ripcord check`",
            path.display()
        )
    })?;
    let target = commands::control::Target::new(&config, api)?;
    runtime()?.block_on(f(target))?;
    Ok(ExitCode::SUCCESS)
}

fn logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => {
            logging();
            one_malloc_arena();
            let (config, rules) = load(cli.config)?;
            runtime()?.block_on(ripcord::daemon::run(config, rules, stop_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, api } => control(cli.config, api.api, |t| async move {
            let out = &mut std::io::stdout();
            commands::control::status(&t, json, out).await
        }),
        Command::Approve { incident, api } => control(cli.config, api.api, |t| async move {
            let out = &mut std::io::stdout();
            let body = serde_json::json!({"by": commands::control::who()});
            commands::control::post(
                &t,
                &format!("/api/v1/incidents/{incident}/approve"),
                body,
                out,
            )
            .await
        }),
        Command::Veto { incident, api } => control(cli.config, api.api, |t| async move {
            let out = &mut std::io::stdout();
            let body = serde_json::json!({"by": commands::control::who()});
            commands::control::post(&t, &format!("/api/v1/incidents/{incident}/veto"), body, out)
                .await
        }),
        Command::Pause { for_, reason, api } => control(cli.config, api.api, |t| async move {
            let out = &mut std::io::stdout();
            let body =
                serde_json::json!({"for": for_, "reason": reason, "by": commands::control::who()});
            commands::control::post(&t, "/api/v1/pause", body, out).await
        }),
        Command::Fire { rule, dry_run, api } => control(cli.config, api.api, |t| async move {
            let out = &mut std::io::stdout();
            let body = serde_json::json!({"dry_run": dry_run, "by": commands::control::who()});
            commands::control::post(&t, &format!("/api/v1/rules/{rule}/fire"), body, out).await
        }),
        Command::Resume { api } => control(cli.config, api.api, |t| async move {
            let out = &mut std::io::stdout();
            commands::control::post(&t, "/api/v1/resume", serde_json::json!({}), out).await
        }),
        Command::Backtest {
            from,
            to,
            step,
            json,
            plot,
            rules: names,
        } => {
            let (config, rules) = load(cli.config)?;
            let now = ripcord::clock::now();
            let from = commands::backtest::parse_time(&from, now).map_err(anyhow::Error::msg)?;
            let to = commands::backtest::parse_time(&to, now).map_err(anyhow::Error::msg)?;
            let step = step
                .map(|s| ripcord::config::raw::parse_duration(&s))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let report = runtime()?.block_on(commands::backtest::run(
                &config, &rules, &names, from, to, step,
            ))?;
            if let Some(p) = &plot {
                commands::backtest::plot(&report, p).map_err(anyhow::Error::msg)?;
            }
            let mut out = std::io::stdout().lock();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                commands::backtest::print(&report, &mut out)?;
                if let Some(p) = &plot {
                    writeln!(out, "plot: {}", p.display())?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { rules: names } => {
            let (config, rules) = load(cli.config)?;
            let mut out = std::io::stdout().lock();
            let ok = runtime()?.block_on(commands::eval::run(&config, &rules, &names, &mut out))?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
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
        Command::Import { out, files } => {
            let imported = match commands::import::import(&files) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::from(2));
                }
            };
            match &out {
                None => print!("{}", commands::import::render_one(&imported)),
                Some(dir) => {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        anyhow::anyhow!("{}: {}", dir.display(), ripcord::fsio::describe(&e))
                    })?;
                    for (name, text) in commands::import::render_dir(&imported) {
                        let path = dir.join(name);
                        std::fs::write(&path, text).map_err(|e| {
                            anyhow::anyhow!("{}: {}", path.display(), ripcord::fsio::describe(&e))
                        })?;
                    }
                }
            }
            eprint!("{}", commands::import::report(&imported));
            Ok(ExitCode::from(commands::import::exit_code(&imported)))
        }
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "ripcord", &mut std::io::stdout().lock());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manpages { out } => {
            std::fs::create_dir_all(&out)?;
            let mut cmd = Cli::command().disable_help_subcommand(true);
            cmd.build();
            write_manpages(&cmd, &out)?;
            let formats = out.join("ripcord.yaml.5");
            std::fs::write(&formats, FORMATS_MANPAGE)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// ripcord.yaml(5): the config, rule and rule test file formats.
const FORMATS_MANPAGE: &str = include_str!("../packaging/man/ripcord.yaml.5");

/// ripcord(1) and ripcord-SUBCOMMAND(1) for each visible subcommand.
fn write_manpages(cmd: &clap::Command, out: &std::path::Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_manpages(sub, out)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .manual("ripcord manual")
        .source(format!("ripcord {}", ripcord::VERSION));
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(out.join(man.get_filename()), page)
}
