//! `ripcord check`: validate config and rule files offline.
//!
//! With file or directory arguments it checks those rule files (and test
//! files, `*.test.yaml`) and needs no config. Without arguments it loads the
//! config and its rule globs exactly as the daemon does.

use std::path::{Path, PathBuf};

use crate::config::load::{self, Loaded};
use crate::diag::{self, Diagnostic};
use crate::testing;

pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
    pub summary: String,
}

impl Report {
    pub fn ok(&self) -> bool {
        !self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

fn summarize(files: usize, set: Option<&crate::config::RuleSet>, diags: &[Diagnostic]) -> String {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let warnings = diags.len() - errors;
    let bad_files: std::collections::BTreeSet<&Path> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.file.as_path())
        .collect();
    if errors > 0 {
        return format!(
            "{errors} problem{} in {} file{} ({warnings} warning{})",
            if errors == 1 { "" } else { "s" },
            bad_files.len(),
            if bad_files.len() == 1 { "" } else { "s" },
            if warnings == 1 { "" } else { "s" },
        );
    }
    let (r, a, n) = set
        .map(|s| (s.rules.len(), s.actions.len(), s.notifiers.len()))
        .unwrap_or_default();
    format!(
        "ok: {files} file{}, {r} rule{}, {a} action{}, {n} notifier{} ({warnings} warning{})",
        if files == 1 { "" } else { "s" },
        if r == 1 { "" } else { "s" },
        if a == 1 { "" } else { "s" },
        if n == 1 { "" } else { "s" },
        if warnings == 1 { "" } else { "s" },
    )
}

/// Checks the files under `args`.
pub fn check_files(args: &[PathBuf]) -> Report {
    let (rule_files, test_files) = match load::collect_files(args) {
        Ok(f) => f,
        Err(e) => {
            return Report {
                diagnostics: vec![Diagnostic::error(
                    args.first().map(PathBuf::as_path).unwrap_or(Path::new(".")),
                    crate::config::position::Pos::START,
                    format!("cannot read: {e}"),
                )],
                summary: "1 problem".into(),
            }
        }
    };
    let Loaded {
        value,
        mut diagnostics,
    } = load::load_rule_files(&rule_files);
    for t in &test_files {
        if let Err(d) = testing::load(t) {
            diagnostics.extend(d);
        }
    }
    diagnostics.dedup();
    diag::sort(&mut diagnostics);
    let mut summary = summarize(
        rule_files.len() + test_files.len(),
        value.as_ref(),
        &diagnostics,
    );
    // A one-shot command: freeing 100 000 rules at exit is wasted time.
    std::mem::forget(value);
    if rule_files.is_empty() && test_files.is_empty() {
        summary = "no rule files found (looked for *.yaml and *.yml)".into();
        diagnostics.push(Diagnostic::error(
            args.first().map(PathBuf::as_path).unwrap_or(Path::new(".")),
            crate::config::position::Pos::START,
            "no rule files found",
        ));
    }
    Report {
        diagnostics,
        summary,
    }
}

/// Checks the config at `path` and the rule files it names.
pub fn check_config(path: &Path, explicit: bool) -> Report {
    let loaded = load::load_config(path, explicit);
    let mut diagnostics = loaded.diagnostics;
    let Some(config) = loaded.value else {
        diag::sort(&mut diagnostics);
        let summary = summarize(1, None, &diagnostics);
        return Report {
            diagnostics,
            summary,
        };
    };
    let files = match load::expand_globs(&config.rule_globs) {
        Ok(f) => f,
        Err(e) => {
            diagnostics.push(Diagnostic::error(
                path,
                crate::config::position::Pos::START,
                e,
            ));
            Vec::new()
        }
    };
    let rules = load::load_rule_files(&files);
    diagnostics.extend(rules.diagnostics);
    diag::sort(&mut diagnostics);
    let mut summary = summarize(files.len() + 1, rules.value.as_ref(), &diagnostics);
    std::mem::forget(rules.value);
    if files.is_empty() {
        summary.push_str(&format!(
            "; no rule files match {}: ripcord would run with no rules",
            config.rule_globs.join(", ")
        ));
    }
    Report {
        diagnostics,
        summary,
    }
}
