//! A synchronous driver of the core for rule tests: it feeds inputs, answers
//! every action at once (succeeded, or failed for the actions told to fail),
//! and logs what happened. `ripcord test`, `ripcord backtest` and the core's
//! unit tests use it, so all exercise exactly the decisions `ripcord run`
//! carries out: the rule machine, blindness ([`super::global::Blindness`]),
//! pause and resume. ripcord's own pages are logged with an empty rule.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use super::global::{blinding, pause, resume, Blindness};
use super::instances::{self, Evaluation};
use super::machine::step;
use super::names::PageEvent;
use super::types::*;
use crate::config::{Action, Rule};

#[derive(Clone, Debug, PartialEq)]
pub enum Happened {
    Action {
        name: String,
        dry_run: bool,
    },
    Page {
        kind: PageEvent,
        notifiers: Vec<String>,
    },
    Record(Record),
    /// The action resolved to steps another incident ran within the
    /// cooldown: this incident took that result and ran nothing.
    Joined {
        name: String,
        with: String,
        ok: bool,
    },
    /// The action's steps could not take the instance's labels: nothing
    /// ran.
    Refused {
        name: String,
        why: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub at: Timestamp,
    pub rule: String,
    pub what: Happened,
}

pub struct Sim {
    rules: BTreeMap<String, Arc<Rule>>,
    states: BTreeMap<String, RuleState>,
    pub shared: Shared,
    /// Actions whose runs are reported as failed.
    pub failing: BTreeSet<String>,
    pub log: Vec<Entry>,
    pub blind: Blindness,
    pub blind_after: std::time::Duration,
    /// The actions' definitions. With them, an action is resolved with
    /// the instance's labels and joins a run of the same steps, as the
    /// daemon does; without them every action start counts as a run.
    pub actions: BTreeMap<String, Arc<Action>>,
}

impl Sim {
    pub fn new(rules: impl IntoIterator<Item = Arc<Rule>>, shared: Shared) -> Sim {
        let rules: BTreeMap<String, Arc<Rule>> =
            rules.into_iter().map(|r| (r.name.clone(), r)).collect();
        let states = rules
            .keys()
            .map(|n| (n.clone(), RuleState::default()))
            .collect();
        Sim {
            rules,
            states,
            shared,
            failing: BTreeSet::new(),
            log: Vec::new(),
            blind: Blindness::default(),
            blind_after: crate::config::load::DEFAULT_BLIND_AFTER,
            actions: BTreeMap::new(),
        }
    }

    /// One evaluation of `rule`: blindness first (as the daemon decides
    /// it, across all rules), then the rule's own step.
    pub fn evaluate(&mut self, rule: &str, obs: Observation, now: Timestamp) -> Result<(), String> {
        self.observe_blindness(blinding(&obs), now);
        self.input(rule, Input::Evaluate(obs), now)
    }

    fn observe_blindness(&mut self, blinding: Option<&str>, now: Timestamp) {
        if let Some(notice) = self.blind.observe(now, blinding, self.blind_after) {
            self.log.push(Entry {
                at: now,
                rule: String::new(),
                what: Happened::Page {
                    kind: notice.event(),
                    notifiers: Vec::new(),
                },
            });
        }
    }

    /// One evaluation of `rule` as Prometheus answered it: split into
    /// instances ([`instances::split`]) and each stepped, as the daemon
    /// does; instances the answers no longer name are forgotten alike.
    pub fn evaluate_answers(
        &mut self,
        rule: &str,
        eval: &Evaluation,
        now: Timestamp,
    ) -> Result<(), String> {
        let r = self
            .rules
            .get(rule)
            .cloned()
            .ok_or_else(|| format!("unknown rule `{rule}`"))?;
        self.observe_blindness(eval.blinding(), now);
        let seen = {
            let known: Vec<&instances::Labels> = instances::of_rule(&self.states, rule)
                .map(|(_, s)| &s.labels)
                .collect();
            instances::split(&r, eval, &known)
        };
        for seen in seen {
            self.states
                .entry(seen.key.clone())
                .or_insert_with(|| RuleState {
                    labels: seen.labels.clone(),
                    ..RuleState::default()
                });
            self.input(&seen.key, Input::Evaluate(seen.obs.clone()), now)?;
            if self
                .states
                .get(&seen.key)
                .is_some_and(|st| instances::forget(&r, &seen, st, now))
            {
                self.states.remove(&seen.key);
            }
        }
        Ok(())
    }

    /// Every instance's state, by key (what the daemon journals).
    pub fn states(&self) -> &BTreeMap<String, RuleState> {
        &self.states
    }

    /// Replaces the states with `states`, as a restart replays them.
    pub fn restore(&mut self, states: BTreeMap<String, RuleState>) {
        self.states = states;
    }

    /// The instance keys of `rule` now (its own key if it has no other).
    pub fn instances(&self, rule: &str) -> Vec<String> {
        let keys: Vec<String> = instances::of_rule(&self.states, rule)
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            vec![rule.to_string()]
        } else {
            keys
        }
    }

    pub fn pause(&mut self, now: Timestamp, duration: Option<std::time::Duration>, reason: &str) {
        pause(&mut self.shared, now, duration, reason);
    }

    pub fn resume(&mut self) {
        let _ = resume(&mut self.shared);
    }

    /// Feeds one input to instance `rule` (a rule's name, or an instance's
    /// key), then every action result it causes.
    pub fn input(&mut self, rule: &str, input: Input, now: Timestamp) -> Result<(), String> {
        let r = self
            .rules
            .get(instances::rule_of(rule))
            .cloned()
            .ok_or_else(|| format!("unknown rule `{rule}`"))?;
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let state = self.states.entry(rule.to_string()).or_default();
            let (next, effects) = step(&r, state, &mut self.shared, input, now);
            *state = next;
            for e in effects {
                let what = match e {
                    Effect::RunAction {
                        incident,
                        action,
                        dry_run,
                    } => {
                        let (result, what) =
                            self.run(&r, rule, &incident, action.clone(), dry_run, now);
                        queue.push_back(Input::ActionFinished {
                            incident,
                            action,
                            result,
                        });
                        what
                    }
                    Effect::Page(p) => Happened::Page {
                        kind: p.kind.event(),
                        notifiers: p.notifiers,
                    },
                    Effect::Record(r) => Happened::Record(r),
                };
                self.log.push(Entry {
                    at: now,
                    rule: rule.to_string(),
                    what,
                });
            }
        }
        Ok(())
    }

    /// What running `action` for `incident` of instance `key` comes to:
    /// the same order of decisions as the daemon's (labels, then one run
    /// per resolved steps), every run answered at once.
    fn run(
        &mut self,
        r: &Rule,
        key: &str,
        incident: &str,
        action: String,
        dry_run: bool,
        now: Timestamp,
    ) -> (ActionResult, Happened) {
        let outcome = |failing: &BTreeSet<String>| {
            if failing.contains(&action) {
                ActionResult::Failed("failed (simulated by the test)".into())
            } else {
                ActionResult::Succeeded
            }
        };
        let Some(def) = self.actions.get(&action).cloned() else {
            let result = outcome(&self.failing);
            return (
                result,
                Happened::Action {
                    name: action,
                    dry_run,
                },
            );
        };
        let labels = self.state(key).labels.clone();
        let resolved = match crate::actions::labels::resolve(&def, &labels) {
            Ok(a) => a,
            Err(why) => {
                if !dry_run {
                    self.shared.budget.refund(now);
                }
                return (
                    ActionResult::Failed(why.clone()),
                    Happened::Refused { name: action, why },
                );
            }
        };
        if dry_run {
            return (
                outcome(&self.failing),
                Happened::Action {
                    name: action,
                    dry_run,
                },
            );
        }
        let steps = crate::actions::labels::steps_digest(&resolved);
        match super::global::claim(&mut self.shared, &steps, &action, incident, now, r.cooldown) {
            super::global::Claim::Run => {
                let result = outcome(&self.failing);
                let ok = result == ActionResult::Succeeded;
                super::global::finish(&mut self.shared, &steps, incident, ok);
                (
                    result,
                    Happened::Action {
                        name: action,
                        dry_run,
                    },
                )
            }
            // Every run here is over as soon as it starts, so a join is
            // of a finished run.
            super::global::Claim::AlreadyRan {
                incident: with, ok, ..
            } => {
                self.shared.budget.refund(now);
                let result = if ok {
                    ActionResult::Succeeded
                } else {
                    ActionResult::Failed(format!(
                        "the same steps failed for incident {with}; not run again"
                    ))
                };
                (
                    result,
                    Happened::Joined {
                        name: action,
                        with,
                        ok,
                    },
                )
            }
            super::global::Claim::JoinRunning { incident: with } => {
                self.shared.budget.refund(now);
                (
                    ActionResult::Succeeded,
                    Happened::Joined {
                        name: action,
                        with,
                        ok: true,
                    },
                )
            }
        }
    }

    pub fn state(&self, rule: &str) -> &RuleState {
        static DEFAULT: std::sync::OnceLock<RuleState> = std::sync::OnceLock::new();
        self.states
            .get(rule)
            .unwrap_or_else(|| DEFAULT.get_or_init(RuleState::default))
    }

    fn entries<'a>(
        &'a self,
        rule: &'a str,
        upto: Timestamp,
    ) -> impl Iterator<Item = &'a Happened> + 'a {
        self.log
            .iter()
            .filter(move |e| e.rule == rule && e.at <= upto)
            .map(|e| &e.what)
    }

    /// Actions started for `rule` up to `upto`, real ones or dry-run ones.
    pub fn actions(&self, rule: &str, upto: Timestamp, dry_run: bool) -> Vec<String> {
        self.entries(rule, upto)
            .filter_map(|h| match h {
                Happened::Action { name, dry_run: d } if *d == dry_run => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    /// Notifiers paged for `rule` up to `upto`.
    pub fn pages(&self, rule: &str, upto: Timestamp) -> BTreeSet<String> {
        self.entries(rule, upto)
            .filter_map(|h| match h {
                Happened::Page { notifiers, .. } => Some(notifiers.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Kinds of the pages sent for `rule` up to `upto`, in order.
    pub fn page_events(&self, rule: &str, upto: Timestamp) -> Vec<PageEvent> {
        self.entries(rule, upto)
            .filter_map(|h| match h {
                Happened::Page { kind, .. } => Some(*kind),
                _ => None,
            })
            .collect()
    }
}
