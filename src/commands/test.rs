//! `ripcord test`: run rule unit-test files and report each test.

use std::io::Write;
use std::path::PathBuf;

use crate::config::load;
use crate::testing;

/// Totals of one run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    /// Files that could not be loaded.
    pub broken: usize,
}

/// Runs every test file under `args`, writing a report to `out`.
pub fn run(args: &[PathBuf], out: &mut dyn Write) -> std::io::Result<Totals> {
    let mut totals = Totals::default();
    let files: Vec<PathBuf> = match load::collect_files(args) {
        Ok((rule_files, tests)) => {
            // A test file passed by name runs whatever it is called.
            let explicit: Vec<PathBuf> = rule_files
                .into_iter()
                .filter(|f| args.contains(f))
                .collect();
            tests.into_iter().chain(explicit).collect()
        }
        Err(e) => {
            writeln!(out, "error: {e}")?;
            totals.broken += 1;
            return Ok(totals);
        }
    };
    if files.is_empty() {
        writeln!(
            out,
            "error: no test files found (test files are named *.test.yaml)"
        )?;
        totals.broken += 1;
    }
    for f in &files {
        writeln!(out, "{}", f.display())?;
        match testing::load(f) {
            Err(diags) => {
                totals.broken += 1;
                for d in diags {
                    writeln!(out, "  {d}")?;
                }
            }
            Ok(tf) => {
                for o in tf.run() {
                    if o.failures.is_empty() {
                        totals.passed += 1;
                        writeln!(out, "  PASS  {}", o.name)?;
                    } else {
                        totals.failed += 1;
                        writeln!(out, "  FAIL  {}", o.name)?;
                        for fl in &o.failures {
                            writeln!(out, "          {fl}")?;
                        }
                        writeln!(out, "        timeline:")?;
                        for line in o.timeline.lines() {
                            writeln!(out, "          {line}")?;
                        }
                    }
                }
            }
        }
    }
    Ok(totals)
}
