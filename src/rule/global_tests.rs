//! Table tests of the decisions that span rules. Each row is one rule of
//! the decision; changing the rule makes its row fail.

use super::*;
use crate::config::load::load_rule_sources;
use crate::config::Mode;

const S: i64 = 1000;

fn t(secs: i64) -> Timestamp {
    Timestamp(secs * S)
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Fail,
    Answer,
}

#[test]
fn blindness_table() {
    use Ev::*;
    // (name, blind_after in s, [(at s, what Prometheus did, page expected)])
    type Row = (
        &'static str,
        u64,
        &'static [(i64, Ev, Option<&'static str>)],
    );
    let table: &[Row] = &[
        (
            "a failure shorter than blind_after pages nothing, nor its end",
            60,
            &[
                (0, Fail, None),
                (30, Fail, None),
                (59, Fail, None),
                (60, Answer, None),
            ],
        ),
        (
            "blind after blind_after of failures, counted from the first",
            60,
            &[(0, Fail, None), (30, Fail, None), (60, Fail, Some("blind"))],
        ),
        (
            "blind is paged once however long it lasts",
            60,
            &[
                (0, Fail, None),
                (60, Fail, Some("blind")),
                (90, Fail, None),
                (600, Fail, None),
            ],
        ),
        (
            "seeing again is paged once, after a blind page",
            60,
            &[
                (0, Fail, None),
                (61, Fail, Some("blind")),
                (62, Answer, Some("seeing")),
                (63, Answer, None),
            ],
        ),
        (
            "an answer in between starts the count again",
            60,
            &[
                (0, Fail, None),
                (50, Answer, None),
                (70, Fail, None),
                (120, Fail, None),
                (130, Fail, Some("blind")),
            ],
        ),
        (
            "blind_after 0: the first failure is blind",
            0,
            &[(0, Fail, Some("blind")), (1, Answer, Some("seeing"))],
        ),
    ];
    for (name, after, events) in table {
        let mut b = Blindness::default();
        let mut first_failure = None;
        for (at, ev, want) in *events {
            let failure = match ev {
                Fail => Some("connection refused"),
                Answer => None,
            };
            first_failure = match ev {
                Fail => first_failure.or(Some(t(*at))),
                Answer => None,
            };
            let got = b.observe(t(*at), failure, Duration::from_secs(*after));
            assert_eq!(
                got.as_ref().map(|n| n.event().as_str()),
                *want,
                "{name}: at {at}s"
            );
            if let Some(BlindNotice::Blind { since, why }) = &got {
                assert_eq!(
                    Some(*since),
                    first_failure,
                    "{name}: since the first failure"
                );
                assert_eq!(why, "connection refused");
            }
        }
    }
    assert_eq!(blinding(&Observation::Failed("x".into())), Some("x"));
    assert_eq!(blinding(&Observation::Unevaluable("x".into())), None);
}

fn rule(over: &str) -> Arc<Rule> {
    let text = format!(
        "actions:\n  a1: {{steps: [{{exec: {{argv: [/bin/true]}}}}]}}\n  a2: {{steps: [{{exec: {{argv: [/bin/true]}}}}]}}\nrules:\n  - name: r\n    queries: {{q: up}}\n    condition: q > 1\n    actions: [a1, a2]\n    cooldown: 0s\n{over}"
    );
    let loaded = load_rule_sources(&[("t.yaml", &text)]);
    let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    loaded.value.expect("loaded").rules[0].clone()
}

/// `r`'s state after breaching at 0 (and, for `approval`, waiting).
fn state_in(phase: PhaseName) -> RuleState {
    let over = match phase {
        PhaseName::AwaitingApproval | PhaseName::Vetoed => {
            "    approval: {timeout: 5m, on_timeout: abort}\n"
        }
        _ => "",
    };
    let r = rule(over);
    let mut shared = Shared::new(5, Mode::Enforce);
    let breach = Input::Evaluate(Observation::Samples(
        [("q".to_string(), Sample::Value(2.0))].into(),
    ));
    let (mut s, _) = super::super::step(&r, &RuleState::default(), &mut shared, breach, t(0));
    if phase == PhaseName::Vetoed {
        s = super::super::step(&r, &s, &mut shared, Input::Veto { by: "a".into() }, t(1)).0;
    }
    if phase == PhaseName::Ok {
        s = RuleState::default();
    }
    assert_eq!(s.phase(), phase, "setting up {phase}");
    s
}

#[test]
fn approve_veto_fire_table() {
    use PhaseName::*;
    // (phase, approve ok, veto effect, fire ok)
    let table: &[(PhaseName, bool, Option<VetoEffect>, bool)] = &[
        (AwaitingApproval, true, Some(VetoEffect::NothingRuns), false),
        (Acting, false, Some(VetoEffect::RunningFinishes), false),
        (Vetoed, false, None, false),
        (Ok, false, None, true),
    ];
    for (phase, approve, veto, fire) in table {
        let s = state_in(*phase);
        let a = may_approve("i1", &s);
        assert_eq!(a.is_ok(), *approve, "approve in {phase}: {a:?}");
        if let Err(e) = a {
            assert!(e.contains(phase.as_str()), "says the phase: {e}");
        }
        assert_eq!(may_veto("i1", &s).ok(), *veto, "veto in {phase}");
        assert_eq!(may_fire("r", Some(&s)).is_ok(), *fire, "fire in {phase}");
    }
    assert_eq!(
        may_fire("nope", None),
        Err("unknown rule `nope`".to_string())
    );
}

#[test]
fn pause_table() {
    // (pause for, checked at, paused then)
    let table: &[(Option<u64>, i64, bool)] = &[
        (None, 0, true),
        (None, 86_400 * 365, true),
        (Some(60), 59, true),
        (Some(60), 60, false),
        (Some(60), 61, false),
    ];
    for (dur, at, paused) in table {
        let mut shared = Shared::new(5, Mode::Enforce);
        let p = pause(
            &mut shared,
            t(0),
            dur.map(Duration::from_secs),
            "cutover freeze",
        );
        assert_eq!(p.reason, "cutover freeze");
        assert_eq!(shared.paused(t(*at)), *paused, "pause {dur:?} at {at}s");
    }
    let mut shared = Shared::new(5, Mode::Enforce);
    assert_eq!(resume(&mut shared), Err("ripcord is not paused".into()));
    pause(&mut shared, t(0), None, "x");
    pause(&mut shared, t(5), Some(Duration::from_secs(10)), "y");
    assert_eq!(
        shared.pause.as_ref().map(|p| p.until),
        Some(Some(t(15))),
        "a second pause replaces the first"
    );
    assert!(resume(&mut shared).is_ok());
    assert!(!shared.paused(t(6)));
}

#[test]
fn budget_table() {
    // (limit, start times in s, which were allowed)
    type Row = (u32, &'static [i64], &'static [bool]);
    let table: &[Row] = &[
        (2, &[0, 1, 2], &[true, true, false]),
        (2, &[0, 1, 3600], &[true, true, true]),
        (2, &[0, 1, 3599], &[true, true, false]),
        (0, &[0], &[false]),
        (1, &[0, 1800, 3600, 3601], &[true, false, true, false]),
    ];
    for (limit, starts, allowed) in table {
        let mut b = ActionBudget::new(*limit);
        let got: Vec<bool> = starts.iter().map(|s| b.try_take(t(*s))).collect();
        assert_eq!(&got, allowed, "limit {limit}, starts {starts:?}");
    }
}

#[test]
fn locks_table() {
    #[derive(Debug)]
    enum Op {
        Acquire(&'static str, &'static str),
        Release(&'static str, &'static str),
    }
    use Op::*;
    // (name, ops, what each op hands back to start: the incident, or none)
    type Row = (&'static str, &'static [Op], &'static [Option<&'static str>]);
    let table: &[Row] = &[
        (
            "a free lock is granted",
            &[Acquire("undo", "i1")],
            &[Some("i1")],
        ),
        (
            "a held lock makes the second incident wait",
            &[Acquire("undo", "i1"), Acquire("undo", "i2")],
            &[Some("i1"), None],
        ),
        (
            "release hands the lock to the first waiter, in order",
            &[
                Acquire("undo", "i1"),
                Acquire("undo", "i2"),
                Acquire("undo", "i3"),
                Release("undo", "i1"),
                Release("undo", "i2"),
            ],
            &[Some("i1"), None, None, Some("i2"), Some("i3")],
        ),
        (
            "different actions do not wait for each other",
            &[Acquire("undo", "i1"), Acquire("flag", "i2")],
            &[Some("i1"), Some("i2")],
        ),
        (
            "a release by a non-holder changes nothing",
            &[
                Acquire("undo", "i1"),
                Acquire("undo", "i2"),
                Release("undo", "i2"),
                Acquire("undo", "i3"),
            ],
            &[Some("i1"), None, None, None],
        ),
        (
            "the last release frees the lock",
            &[
                Acquire("undo", "i1"),
                Release("undo", "i1"),
                Acquire("undo", "i2"),
            ],
            &[Some("i1"), None, Some("i2")],
        ),
    ];
    for (name, ops, want) in table {
        let mut locks: Locks<&'static str> = Locks::default();
        let got: Vec<Option<&str>> = ops
            .iter()
            .map(|op| match op {
                Acquire(a, i) => locks.acquire(a, i, *i),
                Release(a, i) => locks.release(a, i),
            })
            .collect();
        assert_eq!(&got, want, "{name}");
    }
    let mut locks: Locks<()> = Locks::default();
    locks.acquire("undo", "i1", ());
    locks.acquire("undo", "i2", ());
    assert_eq!(locks.holder("undo"), Some(("i1", 1)));
}

#[test]
fn step_page_table() {
    type Row<'a> = (Option<(bool, &'a str)>, PageEvent, &'a str);
    let table: &[Row] = &[
        (None, PageEvent::StepStarted, "undo step 2 started"),
        (
            Some((true, "exit 0")),
            PageEvent::StepSucceeded,
            "undo step 2 succeeded: exit 0",
        ),
        (
            Some((false, "exit 1")),
            PageEvent::StepFailed,
            "undo step 2 FAILED: exit 1",
        ),
    ];
    for (outcome, event, text) in table {
        assert_eq!(step_page("undo", 1, *outcome), (*event, text.to_string()));
    }
}

#[test]
fn replay_table() {
    let r = rule("");
    let rules: BTreeMap<String, Arc<Rule>> = [("r".to_string(), r.clone())].into();
    let acting = state_in(PhaseName::Acting);
    let step = Interrupted {
        rule: "r".into(),
        incident: "r-1".into(),
        action: "a1".into(),
        step: 0,
        describe: "exec".into(),
    };
    type Row = (
        &'static str,
        Vec<(String, RuleState)>,
        Vec<&'static str>,
        Vec<Interrupted>,
        Vec<&'static str>,
    );
    let table: Vec<Row> = vec![
        (
            "a clean journal means nothing",
            vec![("r".into(), RuleState::default())],
            vec![],
            vec![],
            vec![],
        ),
        (
            "an action that was running is interrupted, and its step reported",
            vec![("r".into(), acting.clone())],
            vec![],
            vec![step.clone()],
            vec!["step r/a1#0", "action r/a1"],
        ),
        (
            "an unreadable state without an incident is taken as open and unrecovered",
            vec![("r".into(), RuleState::default())],
            vec!["r"],
            vec![],
            vec!["open r"],
        ),
        (
            "an unreadable state with an incident keeps it, and its running action is interrupted",
            vec![("r".into(), acting.clone())],
            vec!["r"],
            vec![],
            vec!["action r/a1"],
        ),
        (
            "a rule no longer loaded is left as it is",
            vec![("gone".into(), acting.clone())],
            vec![],
            vec![],
            vec![],
        ),
    ];
    for (name, states, uncertain, interrupted, want) in table {
        let states: BTreeMap<String, RuleState> = states.into_iter().collect();
        let uncertain: BTreeSet<String> = uncertain.into_iter().map(String::from).collect();
        let got: Vec<String> = after_replay(&rules, &states, &uncertain, &interrupted, t(100))
            .into_iter()
            .map(|d| match d {
                AfterReplay::TakenAsOpen { rule, state } => {
                    assert_eq!(state.phase(), PhaseName::Interrupted, "{name}");
                    assert_eq!(state.incident().map(|i| i.opened_at), Some(t(100)));
                    format!("open {rule}")
                }
                AfterReplay::StepInterrupted(i) => {
                    format!("step {}/{}#{}", i.rule, i.action, i.step)
                }
                AfterReplay::ActionInterrupted { rule, action, .. } => {
                    format!("action {rule}/{action}")
                }
            })
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn restored_timers_table() {
    // A state replayed from the journal keeps its absolute times: what ran
    // out while ripcord was down ends at the first tick, the rest holds.
    let over = "    approval: {timeout: 5m, on_timeout: abort}\n";
    let r = rule(over);
    let waiting = state_in(PhaseName::AwaitingApproval);
    let cooling = RuleState {
        status: Status::Cooldown {
            until: t(600),
            outcome: Outcome::Recovered,
            incident: "r-1".into(),
            suppressed: false,
        },
        ..RuleState::default()
    };
    // (name, replayed state, first tick at s, phase after it)
    let table: Vec<(&str, RuleState, i64, PhaseName)> = vec![
        (
            "a cooldown still running holds",
            cooling.clone(),
            599,
            PhaseName::Recovered,
        ),
        ("a cooldown that ran out ends", cooling, 600, PhaseName::Ok),
        (
            "an approval still open waits",
            waiting.clone(),
            299,
            PhaseName::AwaitingApproval,
        ),
        (
            "an approval that timed out while down aborts",
            waiting,
            300,
            PhaseName::Aborted,
        ),
    ];
    for (name, state, at, want) in table {
        let rules: BTreeMap<String, Arc<Rule>> = [("r".to_string(), r.clone())].into();
        let states: BTreeMap<String, RuleState> = [("r".to_string(), state.clone())].into();
        assert_eq!(
            after_replay(&rules, &states, &BTreeSet::new(), &[], t(at)),
            vec![],
            "{name}: nothing to carry out"
        );
        let mut shared = Shared::new(5, Mode::Enforce);
        let (after, _) = super::super::step(&r, &state, &mut shared, Input::Tick, t(at));
        assert_eq!(after.phase(), want, "{name}");
    }
}

#[test]
fn shared_runs_table() {
    let hour = std::time::Duration::from_secs(3600);
    let mut shared = Shared::new(5, Mode::Enforce);
    // (what, steps, incident, at, want)
    let rows: Vec<(&str, &str, &str, i64, Claim)> = vec![
        (
            "the first incident runs the steps",
            "undo-chat",
            "i1",
            0,
            Claim::Run,
        ),
        (
            "another incident with the same steps joins the running one",
            "undo-chat",
            "i2",
            5,
            Claim::JoinRunning {
                incident: "i1".into(),
            },
        ),
        ("different steps run", "undo-match", "i3", 6, Claim::Run),
    ];
    for (what, steps, incident, at, want) in rows {
        assert_eq!(
            claim(&mut shared, steps, "a", incident, t(at), hour),
            want,
            "{what}"
        );
    }
    finish(&mut shared, "undo-chat", "i1", true);
    assert_eq!(
        claim(&mut shared, "undo-chat", "a", "i4", t(600), hour),
        Claim::AlreadyRan {
            incident: "i1".into(),
            at: t(0),
            ok: true
        },
        "within the window a finished run counts as done"
    );
    assert_eq!(
        claim(&mut shared, "undo-chat", "a", "i5", t(3601), hour),
        Claim::Run,
        "past the window the steps run again"
    );
    // After a restart nothing runs: the unfinished run failed for joiners.
    runs_after_replay(&mut shared);
    assert_eq!(
        claim(&mut shared, "undo-match", "a", "i6", t(3700), hour),
        Claim::Run,
        "undo-match's run was interrupted long ago: past the window"
    );
    let mut fresh = Shared::new(5, Mode::Enforce);
    assert_eq!(claim(&mut fresh, "s", "a", "x", t(0), hour), Claim::Run);
    runs_after_replay(&mut fresh);
    assert_eq!(
        claim(&mut fresh, "s", "a", "y", t(1), hour),
        Claim::AlreadyRan {
            incident: "x".into(),
            at: t(0),
            ok: false
        },
        "an interrupted run is never run again by a joiner within the window"
    );
    // A day later runs are forgotten.
    claim(&mut fresh, "other", "a", "z", t(90_000), hour);
    assert!(fresh.runs.iter().all(|r| r.steps != "s"));
    // The budget an action start took comes back when it runs nothing.
    let mut b = ActionBudget::new(2);
    assert!(b.try_take(t(1)) && b.try_take(t(2)));
    b.refund(t(2));
    assert!(b.try_take(t(3)), "the refunded action is available again");
}
