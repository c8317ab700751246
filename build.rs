//! Records the git commit ripcord is built from, for `ripcord --version`,
//! `ripcord_build_info` and `status`. A build outside a git checkout (a
//! source tarball) may set `RIPCORD_GIT_COMMIT`; otherwise it says `unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=RIPCORD_GIT_COMMIT");
    let commit = std::env::var("RIPCORD_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RIPCORD_COMMIT={commit}");

    // Build again when HEAD moves: HEAD itself (a checkout) and the file of
    // the branch it points to (a commit), or packed-refs.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = PathBuf::from(dir);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("packed-refs").display()
        );
        if let Some(head) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", dir.join(head).display());
        }
    }

    symbol_order();
}

/// A release build places the functions the daemon runs while it waits
/// (packaging/symbol-order.txt, from `scripts/bench --symbol-order`)
/// together, so that a waiting daemon keeps few pages of code resident
/// (BENCHMARKS.md, *Footprint*). The option is lld's, the linker Rust uses
/// on x86_64 Linux; `RIPCORD_SYMBOL_ORDER=0` leaves it out for a build with
/// another linker. Names the binary no longer has are skipped.
fn symbol_order() {
    println!("cargo:rerun-if-env-changed=RIPCORD_SYMBOL_ORDER");
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", file.display());
    let var = |name| std::env::var(name).unwrap_or_default();
    if var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("RIPCORD_SYMBOL_ORDER") == "0"
        || !file.exists()
    {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=ripcord=-Wl,--symbol-ordering-file={}",
        file.display()
    );
    println!("cargo:rustc-link-arg-bin=ripcord=-Wl,--no-warn-symbol-ordering");
}
