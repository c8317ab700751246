//! The state directory's health, as the engine sees it: a failed journal or
//! outbox write stops every step and pages (from memory) that ripcord
//! cannot act; a probe every few seconds says when it can again; the
//! journal is compacted when due. It may not start or stop actions.
use super::*;

impl Engine {
    /// The state directory could not be written: said once per episode, by
    /// a page to every notifier (from memory), in status, /metrics and
    /// sd_notify's STATUS.
    pub(super) fn state_dir_failed(&mut self, at: Timestamp, why: String) {
        if self.state_problem.is_some() {
            return;
        }
        error!(
            "state directory {} cannot be written: {why}; no step runs until it can",
            self.dir.display()
        );
        self.state_problem = Some((at, why.clone()));
        self.metrics.state_dir_writable.set(0);
        let hint = "free space or fix the state directory's filesystem; ripcord acts again once it can write there";
        let n = global_notification(
            PageEvent::StateUnwritable,
            format!(
                "ripcord cannot write its state directory {}: no rollback step runs until it can",
                self.dir.display()
            ),
            vec![why, hint.into()],
            at,
            at,
        );
        self.notify_all(n);
    }

    /// Looks at the journal's health after writes; while the directory is
    /// failing, probes it every few seconds and says when it recovers.
    pub(super) fn check_state_dir(&mut self, at: Timestamp) {
        let failing = self.journal.lock().ok().and_then(|j| j.failing.clone());
        if let Some(why) = failing {
            self.state_dir_failed(at, format!("the journal cannot be written: {why}"));
            return;
        }
        let Some((since, _)) = self.state_problem.clone() else {
            return;
        };
        if self.last_probe.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_probe = std::time::Instant::now();
        if crate::fsio::blocking(|| state_dir::probe(&self.dir)).is_err() {
            return;
        }
        let ok = self.journal(Entry::Event {
            at,
            rule: None,
            kind: EventKind::StateDir,
            text: format!("writable again (failing since {since})"),
        });
        if !ok {
            return;
        }
        self.state_problem = None;
        self.metrics.state_dir_writable.set(1);
        info!(
            "state directory {} is writable again (failing since {since})",
            self.dir.display()
        );
        let n = global_notification(
            PageEvent::StateWritable,
            format!(
                "ripcord can write its state directory {} again: rollbacks run as configured",
                self.dir.display()
            ),
            vec![],
            since,
            at,
        );
        self.notify_all(n);
    }

    /// Past `COMPACT_AFTER` appends, rewrites the journal as one snapshot;
    /// then the outbox's tombstones can go (every page the old journal named
    /// reached the outbox right after its commit).
    pub(super) fn compact_if_due(&mut self) {
        let due = self
            .journal
            .lock()
            .map(|j| j.appended > crate::journal::COMPACT_AFTER)
            .unwrap_or(false);
        if !due {
            return;
        }
        let snap = snapshot_entries(&self.states, &self.shared);
        crate::fsio::blocking(|| archive_incidents(&self.dir));
        let compacted = match self.journal.lock() {
            Ok(mut j) => {
                match crate::fsio::blocking(|| Journal::open_compacted(&self.dir, &snap)) {
                    Ok(mut new) => {
                        new.fence = j.fence.take();
                        *j = new;
                        true
                    }
                    Err(e) => {
                        error!("journal compaction failed: {}", state_dir::describe(&e));
                        false
                    }
                }
            }
            Err(_) => false,
        };
        if compacted {
            if let Ok(mut o) = self.outbox.lock() {
                o.forget_finished();
            }
        }
    }
}

/// Keeps each incident's journal entries in the incident archive before a
/// compaction drops them. History for people: a failure is logged, and the
/// compaction goes on.
pub(super) fn archive_incidents(dir: &std::path::Path) {
    let stored =
        crate::journal::read_all(dir).and_then(|entries| crate::archive::store(dir, &entries));
    match stored {
        Ok(0) => {}
        Ok(n) => info!(incidents = n, "incident history archived before compaction"),
        Err(e) => warn!(
            "cannot archive incident history under {}: {}; the journal's compaction drops it",
            crate::archive::dir(dir).display(),
            state_dir::describe(&e)
        ),
    }
}
