//! Helpers shared by the integration tests.

pub mod etcd;
pub mod live;
pub mod net;
pub mod receivers;

use std::path::{Path, PathBuf};
use std::process::Command;

/// What a run of the binary printed and how it exited.
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `ripcord ARGS` in `dir` with no config in the environment.
pub fn ripcord_in(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ripcord"))
        .args(args)
        .current_dir(dir)
        .env_remove("RIPCORD_CONFIG")
        .output()
        .expect("the ripcord binary runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn ripcord(args: &[&str]) -> Output {
    ripcord_in(&root(), args)
}

/// A temporary directory with the given files.
pub fn files(list: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in list {
        let p = dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write");
    }
    dir
}
