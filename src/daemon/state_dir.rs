//! The state directory: the journal and the outbox live there, and ripcord
//! must not start, nor act, without being able to write it.
//!
//! [`prepare`] runs before anything under the directory changes: it creates
//! it if needed and proves it writable with a synced probe file, so a start
//! that fails leaves the directory exactly as it found it. Errors say which
//! path, what is wrong and what to do, once.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// What is wrong with a path under the state directory, and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}; {hint}")]
pub struct StateError {
    pub path: PathBuf,
    pub problem: String,
    pub hint: String,
}

pub use crate::fsio::{describe, probe};

/// What to do about `e` at `path`.
pub fn hint(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            "make it writable by ripcord's user, or set state_dir to a writable directory (the packaged unit gets one from StateDirectory=)".into()
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "free space on its filesystem; ripcord acts again once it can write there".into()
        }
        ErrorKind::AlreadyExists | ErrorKind::NotADirectory | ErrorKind::IsADirectory => {
            "a file or directory is in the way: move it aside".into()
        }
        _ => "check the path, its permissions and its filesystem".into(),
    }
}

pub fn error(path: &Path, e: &std::io::Error) -> StateError {
    StateError {
        path: path.to_path_buf(),
        problem: describe(e),
        hint: hint(e),
    }
}

/// Creates `dir` if needed and proves it writable: a probe file is written,
/// synced and removed. Nothing else under `dir` is touched.
pub fn prepare(dir: &Path) -> Result<(), StateError> {
    std::fs::create_dir_all(dir).map_err(|e| error(dir, &e))?;
    if !dir.is_dir() {
        return Err(StateError {
            path: dir.to_path_buf(),
            problem: "not a directory".into(),
            hint: "set state_dir to a directory".into(),
        });
    }
    probe(dir).map_err(|e| error(dir, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_the_path_the_problem_once_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state");
        std::fs::write(&file, "x").unwrap();
        let e = prepare(&file).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: ", file.display())), "{e}");
        assert!(
            e.contains("move it aside") || e.contains("directory"),
            "{e}"
        );
        assert_eq!(e.matches("File exists").count().max(1), 1, "{e}");
        assert!(!e.contains("os error"), "{e}");
        prepare(&dir.path().join("new")).unwrap();
        assert!(std::fs::read_dir(dir.path().join("new"))
            .unwrap()
            .next()
            .is_none());
    }
}
