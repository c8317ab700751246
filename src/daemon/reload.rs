//! Reloading the rule files: all or nothing, never losing an incident, and
//! the directories to watch for edits. A failed reload keeps every rule
//! and state as it was; it may not touch a state other than by keeping or
//! dropping it whole.
use super::*;

/// Directories to watch for rule edits: the fixed part of each glob.
pub(super) fn watch_dirs(globs: &[String]) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = globs
        .iter()
        .map(|g| {
            let mut p = std::path::PathBuf::new();
            for c in std::path::Path::new(g).components() {
                if c.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
                    break;
                }
                p.push(c);
            }
            if p.is_file() {
                p.pop();
            }
            p
        })
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

impl Engine {
    /// Loads every rule file again and swaps the whole set in at once; on
    /// any error the running rules stay, and the failure is logged, paged and
    /// exposed as `ripcord_last_reload_successful 0`. Returns whether the
    /// new set is in force.
    ///
    /// A reload never loses an incident: one that would leave no rule at
    /// all is refused, and one that would remove a rule whose incident is
    /// open is refused until the rule has been missing for `removal_delay`
    /// (an editor's truncate-then-write, or a directory moved away and back,
    /// is over long before). Even then the state is kept, not evaluated: a
    /// rule that comes back finds its incident and its cooldown.
    pub(super) fn reload(
        &mut self,
        globs: &[String],
        removal_delay: Duration,
        retry: bool,
    ) -> bool {
        let at = now();
        let files = match crate::config::load::expand_globs(globs) {
            Ok(f) => f,
            Err(e) => return self.reload_failed(at, vec![e], retry),
        };
        let loaded = crate::config::load::load_rule_files_to_run(&files);
        let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
        let Some(set) = loaded.value else {
            return self.reload_failed(at, errors, retry);
        };
        let new_rules: BTreeMap<String, Arc<Rule>> = set
            .rules
            .iter()
            .map(|r| (r.name.clone(), r.clone()))
            .collect();
        if new_rules.is_empty() && !self.rules.is_empty() {
            let why = format!(
                "the rule files ({}) now hold no rule: refused, ripcord never drops to zero rules on a reload; to run without rules, stop the service",
                globs.join(", ")
            );
            return self.reload_failed(at, vec![why], retry);
        }
        let missing_open: BTreeMap<String, String> = self
            .rules
            .keys()
            .filter(|n| !new_rules.contains_key(*n))
            .filter_map(|n| {
                let id = self.states.get(n)?.incident()?.id.clone();
                Some((n.clone(), id))
            })
            .collect();
        self.pending_removals
            .retain(|n, _| missing_open.contains_key(n));
        let mut held = Vec::new();
        for (name, incident) in &missing_open {
            let since = *self.pending_removals.entry(name.clone()).or_insert(at);
            if at.since(since) < removal_delay {
                held.push(format!(
                    "rule {name} is missing from the rule files while its incident {incident} is open: kept until {} (reload.removal_delay); restore the rule, or let the incident end",
                    since.plus(removal_delay)
                ));
            }
        }
        if !held.is_empty() {
            return self.reload_failed(at, held, retry);
        }
        self.pending_removals.clear();
        let (mut added, mut changed, mut removed) = (0, 0, 0);
        for name in self.rules.keys() {
            if !new_rules.contains_key(name) {
                removed += 1;
                if let Some(i) = self.states.get(name).and_then(|s| s.incident()) {
                    warn!(rule = %name, incident = %i.id, "rule removed while its incident is open: the incident is kept and resumes if the rule comes back");
                }
                self.metrics.clear_state(name);
                self.recent.remove(name);
            }
        }
        for (name, r) in &new_rules {
            match self.rules.get(name) {
                None => added += 1,
                Some(old) if old.fingerprint != r.fingerprint => {
                    changed += 1;
                    // Its sparkline would mix the old queries with the new.
                    if let Some(r) = self.recent.get_mut(name) {
                        r.clear_values();
                    }
                    // A changed condition makes a pending timer meaningless;
                    // open incidents, cooldowns and the rest are kept.
                    if let Some(st) = self.states.get_mut(name) {
                        if matches!(st.status, Status::Pending { .. }) {
                            st.status = Status::Ok;
                            let state = st.clone();
                            self.journal(Entry::State {
                                rule: name.clone(),
                                state: Box::new(state),
                                shared: None,
                                pages: Vec::new(),
                            });
                        }
                    }
                }
                Some(_) => {}
            }
        }
        self.rules = new_rules;
        self.actions = set.actions;
        self.notifiers = set.notifiers;
        if let Ok(mut n) = self.shared_notifiers.write() {
            *n = self.notifiers.clone();
        }
        self.metrics.rules.set(self.rules.len() as i64);
        self.metrics.last_reload_successful.set(1);
        for name in self.rules.keys() {
            let state = self
                .states
                .get(name)
                .map_or(rule::StateName::Ok, |s| s.name());
            self.metrics.set_state(name, state);
        }
        self.last_reload = Some(crate::api::ReloadStatus {
            ok: true,
            at: at.rfc3339(),
            problems: Vec::new(),
        });
        let text = format!(
            "reloaded: {} rules ({added} added, {changed} changed, {removed} removed)",
            self.rules.len()
        );
        info!("{text}");
        self.event(at, None, EventKind::Reload, text);
        true
    }

    /// A refused reload: logged, journaled, paged (a retry that finds the
    /// same problems is not paged again) and in status and /metrics.
    pub(super) fn reload_failed(
        &mut self,
        at: Timestamp,
        errors: Vec<String>,
        retry: bool,
    ) -> bool {
        let same = self
            .last_reload
            .as_ref()
            .is_some_and(|r| !r.ok && r.problems == errors);
        if retry && same {
            return false;
        }
        self.metrics.last_reload_successful.set(0);
        self.last_reload = Some(crate::api::ReloadStatus {
            ok: false,
            at: at.rfc3339(),
            problems: errors.clone(),
        });
        for e in &errors {
            error!("reload: {e}");
        }
        let summary = format!(
            "rule reload failed with {} problem(s): the previous {} rules keep running",
            errors.len(),
            self.rules.len()
        );
        error!("{summary}");
        self.event(
            at,
            None,
            EventKind::ReloadFailed,
            format!("{summary}: {}", errors.join("; ")),
        );
        let details: Vec<String> = errors.into_iter().take(10).collect();
        let n = global_notification(PageEvent::ReloadFailed, summary, details, at, at);
        self.notify_all(n);
        false
    }
}

/// A reload as systemd is told of it: RELOADING, the reload, READY with the
/// new status line.
pub(super) fn reload_told(engine: &mut Engine, sched: &mut Scheduler, config: &Config) {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(m) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(m);
    }
    sd_notify(&states);
    if engine.reload(&config.rule_globs, config.removal_delay, false) {
        sched.sync(&engine.rules);
    }
    sd_notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&engine.status_line()),
    ]);
}

/// Watches the directories of the rule files for edits; each edit (other
/// than a read) sends a `()`. A directory that cannot be watched is said
/// once (SIGHUP still reloads).
pub(super) fn watch_rule_dirs(
    globs: &[String],
) -> (
    Option<::notify::RecommendedWatcher>,
    mpsc::UnboundedReceiver<()>,
) {
    use ::notify::Watcher;
    let (watch_tx, watch_rx) = mpsc::unbounded_channel::<()>();
    let mut w = ::notify::recommended_watcher(move |ev: ::notify::Result<::notify::Event>| {
        if ev.is_ok_and(|e| !matches!(e.kind, ::notify::EventKind::Access(_))) {
            let _ = watch_tx.send(());
        }
    });
    if let Ok(w) = &mut w {
        for d in watch_dirs(globs) {
            if let Err(e) = w.watch(&d, ::notify::RecursiveMode::NonRecursive) {
                warn!(
                    "cannot watch {} for rule changes (SIGHUP still reloads): {e}",
                    d.display()
                );
            }
        }
    }
    (w.ok(), watch_rx)
}
