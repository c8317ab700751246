//! Writing files durably, below everything that writes them (the journal,
//! the outbox, the state directory's probe, the `file` step): the OS's
//! error words once, directory syncs, and [`blocking`], which keeps a
//! synced write from holding up the async workers that other tasks need.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// `e` as people read it: the OS's words once, without Rust's wrapping.
pub fn describe(e: &std::io::Error) -> String {
    let text = e.to_string();
    // "No space left on device (os error 28)" → "No space left on device".
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Syncs a directory, so a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes, syncs and removes a probe file in `dir`: proof that the
/// directory takes a new synced file right now.
pub fn probe(dir: &Path) -> std::io::Result<()> {
    let p = dir.join(".ripcord-write-probe");
    let result = (|| {
        let mut f = File::create(&p)?;
        f.write_all(&[0u8; 512])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&p);
    result
}

/// Runs `f`, which may wait on the disk (an fsync), without stalling the
/// async runtime: on a multi-threaded runtime the worker hands its other
/// tasks to another thread first. Elsewhere (tests, the current-thread
/// runtime, no runtime) it simply runs `f`.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_says_the_os_words_once() {
        let e = std::io::Error::from_raw_os_error(28);
        assert_eq!(describe(&e), "No space left on device");
    }

    #[test]
    fn blocking_runs_inside_and_outside_a_runtime() {
        assert_eq!(blocking(|| 1), 1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { blocking(|| 2) }), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(async { blocking(|| 3) }), 3);
    }
}
