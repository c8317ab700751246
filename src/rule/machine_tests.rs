//! Table-driven tests of the state machine. Each case builds one rule from
//! defaults plus overrides (through the real loader), feeds it inputs at
//! given times through the same synchronous driver as `ripcord test`, and
//! checks the state after each input and the actions and pages at the end.

use std::sync::Arc;

use super::*;
use crate::config::load::load_rule_sources;
use crate::rule::sim::Sim;

#[derive(Clone, Copy, Debug)]
enum In {
    V(f64),
    /// `q` and `b` of a two-query rule.
    V2(Option<f64>, Option<f64>),
    Empty,
    Err,
    /// The rule's own result cannot be used (several series).
    Bad,
    Approve,
    Veto,
    Tick,
    Fire,
    FireDry,
    Pause,
    Resume,
}
use In::*;

const NAN: f64 = f64::NAN;
const INF: f64 = f64::INFINITY;

struct Case {
    name: &'static str,
    /// Rule fields replacing the defaults, `key: value; key: value`.
    rule: &'static str,
    limit: u32,
    global_dry_run: bool,
    fail: &'static [&'static str],
    /// (seconds, input, expected state, expected phase or "").
    steps: &'static [(i64, In, &'static str, &'static str)],
    actions: &'static [&'static str],
    would_run: &'static [&'static str],
    pages: &'static [&'static str],
}

const BASE: Case = Case {
    name: "",
    rule: "",
    limit: 5,
    global_dry_run: false,
    fail: &[],
    steps: &[],
    actions: &[],
    would_run: &[],
    pages: &[],
};

fn build_rule(over: &str) -> Arc<Rule> {
    let mut fields: Vec<(String, String)> = [
        ("name", "r"),
        ("queries", "{q: up}"),
        ("condition", "q > 1"),
        ("for", "0s"),
        ("actions", "[a1]"),
        ("notify", "[n1]"),
        ("cooldown", "0s"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for part in over.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once(':').expect("override is key: value");
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        match fields.iter_mut().find(|(fk, _)| *fk == k) {
            Some(f) => f.1 = v,
            None => fields.push((k, v)),
        }
    }
    let mut text = String::from(
        "notifiers:\n  n1: {webhook: {url: \"http://127.0.0.1:1/hook\"}}\n  n2: {webhook: {url: \"http://127.0.0.1:1/other\"}}\nactions:\n  a1: {steps: [{exec: {argv: [/bin/true]}}]}\n  a2: {steps: [{exec: {argv: [/bin/true]}}]}\nrules:\n",
    );
    for (i, (k, v)) in fields.iter().enumerate() {
        text.push_str(if i == 0 { "  - " } else { "    " });
        text.push_str(&format!("{k}: {v}\n"));
    }
    let loaded = load_rule_sources(&[("test.yaml", &text)]);
    let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "rule does not load: {errors:?}\n{text}");
    loaded.value.expect("loaded").rules[0].clone()
}

fn feed(sim: &mut Sim, input: In, now: Timestamp) {
    let by = "alice".to_string();
    let obs = |pairs: &[(&str, Option<f64>)]| {
        Input::Evaluate(Observation::Samples(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(Sample::Value).unwrap_or(Sample::Empty)))
                .collect(),
        ))
    };
    let input = match input {
        V(v) => obs(&[("q", Some(v))]),
        V2(q, b) => obs(&[("q", q), ("b", b)]),
        Empty => obs(&[("q", None)]),
        Err => Input::Evaluate(Observation::Failed("connection refused".into())),
        Bad => Input::Evaluate(Observation::Unevaluable(
            "query `q` returned 3 series".into(),
        )),
        Approve => Input::Approve { by },
        Veto => Input::Veto { by },
        Tick => Input::Tick,
        Fire => Input::Fire { by, dry_run: false },
        FireDry => Input::Fire { by, dry_run: true },
        Pause => {
            sim.shared.pause = Some(super::Pause {
                until: None,
                reason: "freeze".into(),
            });
            return;
        }
        Resume => {
            sim.shared.pause = None;
            return;
        }
    };
    sim.input("r", input, now).expect("rule exists");
}

fn run(c: &Case) {
    let rule = build_rule(c.rule);
    let mode = if c.global_dry_run {
        Mode::DryRun
    } else {
        Mode::Enforce
    };
    let mut sim = Sim::new([rule], Shared::new(c.limit, mode));
    sim.failing = c.fail.iter().map(|s| s.to_string()).collect();
    let mut last = Timestamp(0);
    for (secs, input, state, phase) in c.steps {
        last = Timestamp(secs * 1000);
        feed(&mut sim, *input, last);
        let st = sim.state("r");
        assert_eq!(
            st.name().as_str(),
            *state,
            "{}: state after {input:?} at {secs}s",
            c.name
        );
        if !phase.is_empty() {
            assert_eq!(
                st.phase().as_str(),
                *phase,
                "{}: phase after {input:?} at {secs}s",
                c.name
            );
        }
    }
    assert_eq!(
        sim.actions("r", last, false),
        c.actions,
        "{}: actions",
        c.name
    );
    assert_eq!(
        sim.actions("r", last, true),
        c.would_run,
        "{}: dry-run actions",
        c.name
    );
    let events: Vec<&str> = sim
        .page_events("r", last)
        .iter()
        .map(|e| e.as_str())
        .collect();
    assert_eq!(events, c.pages, "{}: pages", c.name);
}

const OPEN_ACT: &[&str] = &["opened", "actions_succeeded"];

#[test]
fn table() {
    let cases = [
        // ------------------------------------------------------------ for
        Case {
            name: "for 0 acts on the first breach",
            steps: &[(0, V(2.0), "firing", "verifying")],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "for 2m: pending until exactly 2m, then firing",
            rule: "for: 2m",
            steps: &[
                (0, V(2.0), "pending", ""),
                (60, V(2.0), "pending", ""),
                (119, V(2.0), "pending", ""),
                (120, V(2.0), "firing", "verifying"),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "for equal to one step fires on the second breach",
            rule: "for: 30s",
            steps: &[(0, V(2.0), "pending", ""), (30, V(2.0), "firing", "")],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "a blip shorter than for runs nothing",
            rule: "for: 2m",
            steps: &[
                (0, V(0.5), "ok", ""),
                (30, V(2.0), "pending", ""),
                (60, V(2.0), "pending", ""),
                (90, V(0.5), "ok", ""),
                (120, V(0.5), "ok", ""),
            ],
            ..BASE
        },
        Case {
            name: "a clear resets the for timer",
            rule: "for: 2m; every: 1m",
            steps: &[
                (0, V(2.0), "pending", ""),
                (60, V(0.0), "ok", ""),
                (90, V(2.0), "pending", ""),
                (180, V(2.0), "pending", ""),
                (210, V(2.0), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        // The gap rule: every 30s, so a breach may go unseen for up to 75s.
        Case {
            name: "blip, long gap, blip: breaches separated by a gap never add up to for",
            rule: "for: 1m; every: 30s; no_data: hold",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, V(2.0), "pending", ""),
                (60, Empty, "pending", ""),
                (90, Empty, "pending", ""),
                (120, Empty, "pending", ""),
                (600, Empty, "pending", ""),
                (630, V(2.0), "pending", ""),
                (660, V(2.0), "pending", ""),
                (690, V(2.0), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "a breach after a gap with no evaluation at all starts for again",
            rule: "for: 1m; every: 30s",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, V(2.0), "pending", ""),
                // ripcord was down for ten minutes: nothing was observed.
                (630, V(2.0), "pending", ""),
                (660, V(2.0), "pending", ""),
                (690, V(2.0), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "one missed evaluation in a sustained breach delays nothing",
            rule: "for: 1m; every: 30s",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, Err, "pending", ""),
                (60, V(2.0), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "gap rule at its boundary: 75s unseen is continuous",
            rule: "for: 2m; every: 30s",
            steps: &[
                (0, V(2.0), "pending", ""),
                (75, V(2.0), "pending", ""),
                (120, V(2.0), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "gap rule just past its boundary: 76s unseen starts for again",
            rule: "for: 2m; every: 30s",
            steps: &[
                (0, V(2.0), "pending", ""),
                (60, V(2.0), "pending", ""),
                (136, V(2.0), "pending", ""),
                (196, V(2.0), "pending", ""),
                (255, V(2.0), "pending", ""),
                (256, V(2.0), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "no data holds pending; a breach just within the gap completes for, just past restarts it",
            rule: "for: 90s; every: 30s",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, Empty, "pending", ""),
                (75, V(2.0), "pending", ""),
                (90, V(2.0), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        // Unevaluable: every 30s, so the grace period is 90s (a minute or
        // three intervals, the longer).
        Case {
            name:
                "unevaluable: pages once past the grace period, never acts, pages when it evaluates",
            rule: "every: 30s; for: 0s",
            steps: &[
                (0, Bad, "ok", ""),
                (60, Bad, "ok", ""),
                (89, Bad, "ok", ""),
                (90, Bad, "ok", ""),
                (120, Bad, "ok", ""),
                (150, V(0.0), "ok", ""),
                (180, V(0.0), "ok", ""),
            ],
            pages: &["rule_unevaluable", "rule_evaluable"],
            ..BASE
        },
        Case {
            name: "unevaluable: a failure shorter than the grace period pages nothing",
            rule: "every: 30s",
            steps: &[
                (0, Bad, "ok", ""),
                (60, Bad, "ok", ""),
                (80, V(0.0), "ok", ""),
                (120, Bad, "ok", ""),
                (200, Bad, "ok", ""),
            ],
            ..BASE
        },
        Case {
            name: "unevaluable: Prometheus down is blindness, not the rule's fault",
            rule: "every: 30s",
            steps: &[
                (0, Err, "ok", ""),
                (300, Err, "ok", ""),
                (330, V(0.0), "ok", ""),
            ],
            ..BASE
        },
        Case {
            name: "unevaluable: no data is an evaluation that worked",
            rule: "every: 30s; unevaluable_after: 1m",
            steps: &[
                (0, Bad, "ok", ""),
                (60, Bad, "ok", ""),
                (90, Empty, "ok", ""),
            ],
            pages: &["rule_unevaluable", "rule_evaluable"],
            ..BASE
        },
        Case {
            name: "unevaluable: an open incident holds and still says it",
            rule: "every: 30s; unevaluable_after: 1m",
            steps: &[
                (0, V(2.0), "firing", "verifying"),
                (30, Bad, "firing", ""),
                (90, Bad, "firing", ""),
                (120, V(0.0), "recovered", ""),
            ],
            actions: &["a1"],
            pages: &[
                "opened",
                "actions_succeeded",
                "rule_unevaluable",
                "rule_evaluable",
                "recovered",
            ],
            ..BASE
        },
        Case {
            name: "flapping every evaluation never fires",
            rule: "for: 1m",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, V(0.0), "ok", ""),
                (60, V(2.0), "pending", ""),
                (90, V(0.0), "ok", ""),
                (120, V(2.0), "pending", ""),
                (150, V(0.0), "ok", ""),
                (180, V(2.0), "pending", ""),
                (210, V(0.0), "ok", ""),
            ],
            ..BASE
        },
        Case {
            name: "the threshold itself is not a breach",
            steps: &[(0, V(1.0), "ok", ""), (30, V(1.0000001), "firing", "")],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        // ------------------------------------------------------------ no data
        Case {
            name: "hold: an empty result in ok stays ok",
            steps: &[(0, Empty, "ok", ""), (30, Empty, "ok", "")],
            ..BASE
        },
        Case {
            name: "hold: NaN is no data",
            steps: &[(0, V(NAN), "ok", ""), (30, V(NAN), "ok", "")],
            ..BASE
        },
        Case {
            name: "hold: +Inf is no data, not a breach",
            steps: &[(0, V(INF), "ok", ""), (30, V(INF), "ok", "")],
            ..BASE
        },
        Case {
            name: "hold: -Inf is no data",
            rule: "condition: q < 1",
            steps: &[(0, V(-INF), "ok", "")],
            ..BASE
        },
        Case {
            name: "hold: no data while pending never completes for",
            rule: "for: 1m",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, Empty, "pending", ""),
                (60, Empty, "pending", ""),
                (90, V(NAN), "pending", ""),
                (120, Empty, "pending", ""),
            ],
            ..BASE
        },
        Case {
            name: "hold: a breach after one missed evaluation completes for",
            rule: "for: 1m",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, Empty, "pending", ""),
                (60, V(2.0), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "ok: no data clears a pending rule",
            rule: "for: 1m; no_data: ok",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, Empty, "ok", ""),
                (60, V(INF), "ok", ""),
            ],
            ..BASE
        },
        Case {
            name: "ok: NaN and -Inf stay ok",
            rule: "no_data: ok",
            steps: &[(0, V(NAN), "ok", ""), (30, V(-INF), "ok", "")],
            ..BASE
        },
        Case {
            name: "breach: an empty result counts as a breach",
            rule: "for: 1m; no_data: breach",
            steps: &[(0, Empty, "pending", ""), (60, Empty, "firing", "")],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "breach: NaN counts as a breach",
            rule: "no_data: breach",
            steps: &[(0, V(NAN), "firing", "")],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "hold: one missing query of two holds",
            rule: "queries: {q: up, b: up}; condition: q > 1 || q > 5 * b",
            steps: &[
                (0, V2(Some(0.5), None), "ok", ""),
                (30, V2(None, Some(0.1)), "ok", ""),
                (60, V2(Some(2.0), Some(0.1)), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "a missing query that cannot change the verdict does not hold",
            rule: "queries: {q: up, b: up}; condition: q > 1 || q > 5 * b; for: 30s",
            steps: &[
                (0, V2(Some(2.0), None), "pending", ""),
                (30, V2(Some(2.0), None), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "a missing query that could change the verdict holds",
            rule: "queries: {q: up, b: up}; condition: q > 1 || q > 5 * b",
            steps: &[
                (0, V2(Some(0.5), None), "ok", ""),
                (30, V2(Some(0.5), None), "ok", ""),
            ],
            ..BASE
        },
        Case {
            name: "a missing query under && holds",
            rule: "queries: {q: up, b: up}; condition: q > 1 && b > 1",
            steps: &[
                (0, V2(Some(2.0), None), "ok", ""),
                (30, V2(None, Some(2.0)), "ok", ""),
            ],
            ..BASE
        },
        Case {
            name: "hold: no data while verifying does not count as recovered",
            rule: "verify: {within: 1m}",
            steps: &[
                (0, V(2.0), "firing", "verifying"),
                (30, Empty, "firing", "verifying"),
                (60, Empty, "unrecovered", "verify_timed_out"),
            ],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "unrecovered"],
            ..BASE
        },
        Case {
            name: "ok: no data while verifying counts as recovered",
            rule: "verify: {within: 1m}; no_data: ok",
            steps: &[
                (0, V(2.0), "firing", "verifying"),
                (30, Empty, "recovered", ""),
            ],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "recovered"],
            ..BASE
        },
        // ------------------------------------------------------------ query errors
        Case {
            name: "an error in ok holds ok",
            steps: &[(0, Err, "ok", ""), (30, Err, "ok", "")],
            ..BASE
        },
        Case {
            name: "errors hold pending and never complete for",
            rule: "for: 1m",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, Err, "pending", ""),
                (60, Err, "pending", ""),
                (90, Err, "pending", ""),
            ],
            ..BASE
        },
        Case {
            name:
                "when Prometheus returns, a continued breach fires without a spurious extra action",
            rule: "for: 1m",
            steps: &[
                (0, V(2.0), "pending", ""),
                (30, Err, "pending", ""),
                (60, V(2.0), "firing", ""),
                (90, Err, "firing", ""),
                (120, V(2.0), "firing", ""),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "an error holds a firing rule; the verify deadline still applies",
            rule: "verify: {within: 1m}",
            steps: &[
                (0, V(2.0), "firing", ""),
                (30, Err, "firing", "verifying"),
                (60, Err, "unrecovered", ""),
            ],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "unrecovered"],
            ..BASE
        },
        // ------------------------------------------------------------ verify
        Case {
            name: "verify: clearing within the window recovers",
            rule: "verify: {within: 2m}",
            steps: &[
                (0, V(2.0), "firing", "verifying"),
                (90, V(0.0), "recovered", ""),
            ],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "recovered"],
            ..BASE
        },
        Case {
            name: "verify: clearing exactly at the deadline recovers",
            rule: "verify: {within: 2m}",
            steps: &[(0, V(2.0), "firing", ""), (120, V(0.0), "recovered", "")],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "recovered"],
            ..BASE
        },
        Case {
            name: "verify: still breaching at the deadline is unrecovered, a later clear closes",
            rule: "verify: {within: 2m}; cooldown: 10m",
            steps: &[
                (0, V(2.0), "firing", ""),
                (60, V(2.0), "firing", "verifying"),
                (120, V(2.0), "unrecovered", "verify_timed_out"),
                (150, V(2.0), "unrecovered", ""),
                (180, V(0.0), "closed", ""),
                (210, V(2.0), "closed", ""),
            ],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "unrecovered", "closed"],
            ..BASE
        },
        Case {
            name: "verify: a tick past the deadline is enough",
            rule: "verify: {within: 1m}",
            steps: &[
                (0, V(2.0), "firing", ""),
                (59, Tick, "firing", ""),
                (60, Tick, "unrecovered", ""),
            ],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "unrecovered"],
            ..BASE
        },
        Case {
            name: "no verify: waits for the clear with no deadline",
            steps: &[
                (0, V(2.0), "firing", ""),
                (86_400, V(2.0), "firing", "verifying"),
                (86_430, V(0.0), "recovered", ""),
            ],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "recovered"],
            ..BASE
        },
        // ------------------------------------------------------------ cooldown
        Case {
            name: "cooldown: a breach during it opens nothing; after it, a new incident",
            rule: "cooldown: 10m",
            steps: &[
                (0, V(2.0), "firing", ""),
                (30, V(0.0), "recovered", ""),
                (60, V(2.0), "recovered", ""),
                (629, V(2.0), "recovered", ""),
                (630, V(2.0), "firing", ""),
            ],
            actions: &["a1", "a1"],
            pages: &[
                "opened",
                "actions_succeeded",
                "recovered",
                "opened",
                "actions_succeeded",
            ],
            ..BASE
        },
        Case {
            name: "cooldown 0: the next breach opens a new incident",
            steps: &[
                (0, V(2.0), "firing", ""),
                (30, V(0.0), "recovered", ""),
                (60, V(2.0), "firing", ""),
            ],
            actions: &["a1", "a1"],
            pages: &[
                "opened",
                "actions_succeeded",
                "recovered",
                "opened",
                "actions_succeeded",
            ],
            ..BASE
        },
        Case {
            name: "cooldown ends into ok on a clear",
            rule: "cooldown: 1m",
            steps: &[
                (0, V(2.0), "firing", ""),
                (30, V(0.0), "recovered", ""),
                (90, V(0.0), "ok", ""),
            ],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "recovered"],
            ..BASE
        },
        // ------------------------------------------------------------ approval
        Case {
            name: "approval: proceeds when nobody answers in time",
            rule: "approval: {timeout: 5m, on_timeout: proceed}",
            steps: &[
                (0, V(2.0), "firing", "awaiting_approval"),
                (299, V(2.0), "firing", "awaiting_approval"),
                (300, V(2.0), "firing", "verifying"),
            ],
            actions: &["a1"],
            pages: &[
                "opened",
                "approval_requested",
                "approval_timed_out",
                "actions_succeeded",
            ],
            ..BASE
        },
        Case {
            name: "approval: aborts when nobody answers in time and the rule says abort",
            rule: "approval: {timeout: 5m, on_timeout: abort}; cooldown: 1h",
            steps: &[
                (0, V(2.0), "firing", "awaiting_approval"),
                (300, Tick, "firing", "aborted"),
                (330, V(2.0), "firing", "aborted"),
                (360, V(0.0), "closed", ""),
            ],
            pages: &[
                "opened",
                "approval_requested",
                "approval_timed_out",
                "closed",
            ],
            ..BASE
        },
        Case {
            name: "approval: approve runs the action at once",
            rule: "approval: {timeout: 5m, on_timeout: abort}",
            steps: &[
                (0, V(2.0), "firing", "awaiting_approval"),
                (10, Approve, "firing", "verifying"),
            ],
            actions: &["a1"],
            pages: &[
                "opened",
                "approval_requested",
                "approved",
                "actions_succeeded",
            ],
            ..BASE
        },
        Case {
            name: "approval: a veto stops every action, even past the timeout",
            rule: "approval: {timeout: 5m, on_timeout: proceed}",
            steps: &[
                (0, V(2.0), "firing", "awaiting_approval"),
                (10, Veto, "firing", "vetoed"),
                (400, V(2.0), "firing", "vetoed"),
                (430, V(0.0), "closed", ""),
            ],
            pages: &["opened", "approval_requested", "vetoed", "closed"],
            ..BASE
        },
        Case {
            name: "approval: a clear before approval closes with nothing run",
            rule: "approval: {timeout: 5m, on_timeout: proceed}",
            steps: &[
                (0, V(2.0), "firing", "awaiting_approval"),
                (30, V(0.0), "ok", ""),
                (400, Tick, "ok", ""),
            ],
            pages: &["opened", "approval_requested", "closed"],
            ..BASE
        },
        Case {
            name: "approve or veto with nothing pending changes nothing",
            steps: &[
                (0, Approve, "ok", ""),
                (1, Veto, "ok", ""),
                (2, V(2.0), "firing", "verifying"),
                (3, Veto, "firing", "verifying"),
            ],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        // ------------------------------------------------------------ budget
        Case {
            name: "budget: past max_actions_per_hour, page and don't act",
            limit: 1,
            steps: &[
                (0, V(2.0), "firing", ""),
                (30, V(0.0), "recovered", ""),
                (60, V(2.0), "firing", "budget_exhausted"),
            ],
            actions: &["a1"],
            pages: &[
                "opened",
                "actions_succeeded",
                "recovered",
                "opened",
                "budget_exhausted",
            ],
            ..BASE
        },
        Case {
            name: "budget: an hour later it is available again",
            limit: 1,
            steps: &[
                (0, V(2.0), "firing", ""),
                (30, V(0.0), "recovered", ""),
                (3601, V(2.0), "firing", "verifying"),
            ],
            actions: &["a1", "a1"],
            pages: &[
                "opened",
                "actions_succeeded",
                "recovered",
                "opened",
                "actions_succeeded",
            ],
            ..BASE
        },
        Case {
            name: "budget: counts each action, the second of two is refused",
            rule: "actions: [a1, a2]",
            limit: 1,
            steps: &[(0, V(2.0), "firing", "budget_exhausted")],
            actions: &["a1"],
            pages: &["opened", "budget_exhausted"],
            ..BASE
        },
        Case {
            name: "budget: a limit of 0 never acts",
            limit: 0,
            steps: &[
                (0, V(2.0), "firing", "budget_exhausted"),
                (30, V(0.0), "closed", ""),
            ],
            pages: &["opened", "budget_exhausted", "closed"],
            ..BASE
        },
        // ------------------------------------------------------------ dry-run
        Case {
            name: "dry-run rule: would run, runs nothing, verifies",
            rule: "mode: dry-run; verify: {within: 1m}",
            steps: &[
                (0, V(2.0), "firing", "verifying"),
                (30, V(0.0), "recovered", ""),
            ],
            would_run: &["a1"],
            pages: &["opened", "actions_succeeded", "recovered"],
            ..BASE
        },
        Case {
            name: "dry-run does not spend the budget",
            rule: "mode: dry-run",
            limit: 0,
            steps: &[(0, V(2.0), "firing", "verifying")],
            would_run: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "global dry-run applies to rules without a mode",
            global_dry_run: true,
            steps: &[(0, V(2.0), "firing", "")],
            would_run: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "a rule's mode: enforce overrides the global dry-run",
            rule: "mode: enforce",
            global_dry_run: true,
            steps: &[(0, V(2.0), "firing", "")],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        // ------------------------------------------------------------ actions
        Case {
            name: "actions run in order",
            rule: "actions: [a2, a1]",
            steps: &[(0, V(2.0), "firing", "verifying")],
            actions: &["a2", "a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "a failed action stops the rest and pages",
            rule: "actions: [a1, a2]",
            fail: &["a1"],
            steps: &[
                (0, V(2.0), "unrecovered", "action_failed"),
                (30, V(0.0), "closed", ""),
            ],
            actions: &["a1"],
            pages: &["opened", "action_failed", "closed"],
            ..BASE
        },
        Case {
            name: "a rule with no actions only pages and waits for the clear",
            rule: "actions: []",
            steps: &[
                (0, V(2.0), "firing", "verifying"),
                (30, V(0.0), "recovered", ""),
            ],
            pages: &["opened", "recovered"],
            ..BASE
        },
        Case {
            name: "a rule with no notifiers acts without pages",
            rule: "notify: []",
            steps: &[(0, V(2.0), "firing", "verifying")],
            actions: &["a1"],
            ..BASE
        },
        // ------------------------------------------------------------ fire and pause
        Case {
            name: "fire opens an incident by hand",
            steps: &[
                (0, Fire, "firing", "verifying"),
                (30, V(0.0), "recovered", ""),
            ],
            actions: &["a1"],
            pages: &["opened", "actions_succeeded", "recovered"],
            ..BASE
        },
        Case {
            name: "fire --dry-run runs nothing",
            steps: &[(0, FireDry, "firing", "verifying")],
            would_run: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "fire while an incident is open is refused",
            steps: &[(0, V(2.0), "firing", ""), (10, Fire, "firing", "")],
            actions: &["a1"],
            pages: OPEN_ACT,
            ..BASE
        },
        Case {
            name: "fire overrides a cooldown",
            rule: "cooldown: 1h",
            steps: &[
                (0, V(2.0), "firing", ""),
                (30, V(0.0), "recovered", ""),
                (60, Fire, "firing", ""),
            ],
            actions: &["a1", "a1"],
            pages: &[
                "opened",
                "actions_succeeded",
                "recovered",
                "opened",
                "actions_succeeded",
            ],
            ..BASE
        },
        Case {
            name: "paused: incidents open and page but nothing runs",
            steps: &[
                (0, Pause, "ok", ""),
                (10, V(2.0), "firing", "paused"),
                (20, Resume, "firing", "paused"),
                (30, V(0.0), "closed", ""),
            ],
            pages: &["opened", "paused", "closed"],
            ..BASE
        },
    ];
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    for c in &cases {
        run(c);
    }
}

// Inputs the synchronous driver cannot produce: an action still running.

fn open_acting(rule: &Rule, shared: &mut Shared) -> (RuleState, String) {
    let obs = Observation::Samples([("q".to_string(), Sample::Value(2.0))].into());
    let (st, effects) = step(
        rule,
        &RuleState::default(),
        shared,
        Input::Evaluate(obs),
        Timestamp(0),
    );
    assert_eq!(st.phase().as_str(), "acting");
    let id = st.incident().expect("open").id.clone();
    assert!(effects.contains(&Effect::RunAction {
        incident: id.clone(),
        action: "a1".into(),
        dry_run: false
    }));
    (st, id)
}

#[test]
fn veto_while_acting_lets_the_running_action_finish_and_stops_the_next() {
    let rule = build_rule("actions: [a1, a2]");
    let mut shared = Shared::new(5, Mode::Enforce);
    let (st, id) = open_acting(&rule, &mut shared);
    let (st, _) = step(
        &rule,
        &st,
        &mut shared,
        Input::Veto { by: "bob".into() },
        Timestamp(1000),
    );
    assert_eq!(st.phase().as_str(), "acting");
    let done = Input::ActionFinished {
        incident: id,
        action: "a1".into(),
        result: ActionResult::Succeeded,
    };
    let (st, effects) = step(&rule, &st, &mut shared, done, Timestamp(2000));
    assert_eq!(st.phase().as_str(), "vetoed");
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::RunAction { .. })));
}

#[test]
fn an_interrupted_action_is_never_rerun_and_pages() {
    let rule = build_rule("");
    let mut shared = Shared::new(5, Mode::Enforce);
    let (st, id) = open_acting(&rule, &mut shared);
    let done = Input::ActionFinished {
        incident: id,
        action: "a1".into(),
        result: ActionResult::Interrupted,
    };
    let (st, effects) = step(&rule, &st, &mut shared, done, Timestamp(5000));
    assert_eq!(
        (st.name().as_str(), st.phase().as_str()),
        ("unrecovered", "interrupted")
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Page(p) if p.kind.event().as_str() == "action_interrupted")));
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::RunAction { .. })));
}

#[test]
fn a_result_for_another_incident_is_rejected() {
    let rule = build_rule("");
    let mut shared = Shared::new(5, Mode::Enforce);
    let (st, _) = open_acting(&rule, &mut shared);
    let stale = Input::ActionFinished {
        incident: "r-old".into(),
        action: "a1".into(),
        result: ActionResult::Succeeded,
    };
    let (after, effects) = step(&rule, &st, &mut shared, stale, Timestamp(1000));
    assert_eq!(after, st);
    assert!(matches!(
        effects.as_slice(),
        [Effect::Record(Record::Rejected { .. })]
    ));
}

#[test]
fn evaluations_while_acting_change_nothing() {
    let rule = build_rule("");
    let mut shared = Shared::new(5, Mode::Enforce);
    let (st, _) = open_acting(&rule, &mut shared);
    let clear = Observation::Samples([("q".to_string(), Sample::Value(0.0))].into());
    let (after, effects) = step(
        &rule,
        &st,
        &mut shared,
        Input::Evaluate(clear),
        Timestamp(1000),
    );
    assert_eq!(after.phase().as_str(), "acting");
    assert!(!effects
        .iter()
        .any(|e| matches!(e, Effect::RunAction { .. } | Effect::Page(_))));
}

#[test]
fn incident_ids_are_the_rule_and_the_opening_time() {
    let rule = build_rule("");
    let mut shared = Shared::new(5, Mode::Enforce);
    let obs = Observation::Samples([("q".to_string(), Sample::Value(2.0))].into());
    let (st, _) = step(
        &rule,
        &RuleState::default(),
        &mut shared,
        Input::Evaluate(obs),
        Timestamp(1_795_000_000_000),
    );
    assert_eq!(st.incident().expect("open").id, "r-20261118T110640Z");
}

#[test]
fn pages_carry_the_rendered_summary_and_values() {
    let rule = build_rule(r#"summary: "q at {{ q | percent }}""#);
    let mut shared = Shared::new(5, Mode::Enforce);
    let obs = Observation::Samples([("q".to_string(), Sample::Value(2.5))].into());
    let (_, effects) = step(
        &rule,
        &RuleState::default(),
        &mut shared,
        Input::Evaluate(obs),
        Timestamp(0),
    );
    let page = effects
        .iter()
        .find_map(|e| match e {
            Effect::Page(p) => Some(p),
            _ => None,
        })
        .expect("a page");
    assert_eq!(page.summary, "q at 250%");
    assert_eq!(page.values.get("q"), Some(&Some(2.5)));
    assert_eq!(page.notifiers, vec!["n1".to_string()]);
}

#[test]
fn no_data_and_errors_are_recorded_with_their_reason() {
    let rule = build_rule("");
    let mut shared = Shared::new(5, Mode::Enforce);
    let nan = Observation::Samples([("q".to_string(), Sample::Value(f64::NAN))].into());
    let (_, effects) = step(
        &rule,
        &RuleState::default(),
        &mut shared,
        Input::Evaluate(nan),
        Timestamp(0),
    );
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Record(Record::NoData { queries, .. }) if queries == &vec![("q".to_string(), "NaN".to_string())])));
    let (st, effects) = step(
        &rule,
        &RuleState::default(),
        &mut shared,
        Input::Evaluate(Observation::Failed("query `q` returned 3 series".into())),
        Timestamp(0),
    );
    assert_eq!(
        st.last_error.as_deref(),
        Some("query `q` returned 3 series")
    );
    assert!(effects
        .iter()
        .any(|e| matches!(e, Effect::Record(Record::EvaluationFailed { .. }))));
}

#[test]
fn state_survives_a_serde_round_trip() {
    let rule = build_rule("approval: {timeout: 5m, on_timeout: abort}");
    let mut shared = Shared::new(5, Mode::Enforce);
    let obs = Observation::Samples([("q".to_string(), Sample::Value(2.0))].into());
    let (st, _) = step(
        &rule,
        &RuleState::default(),
        &mut shared,
        Input::Evaluate(obs),
        Timestamp(0),
    );
    let json = serde_json::to_string(&st).expect("serializes");
    let back: RuleState = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, st);
    let json = serde_json::to_string(&shared).expect("serializes");
    assert_eq!(
        serde_json::from_str::<Shared>(&json).expect("deserializes"),
        shared
    );
}

#[test]
fn a_budget_entry_from_the_future_counts_as_now_and_expires_within_the_hour() {
    let mut b = ActionBudget::new(1);
    // A clock set back, or a damaged journal: an entry dated next year.
    b.started.push_back(Timestamp(1_000_000_000_000_000));
    let now = Timestamp(1_800_000_000_000);
    assert!(!b.try_take(now), "the entry still counts");
    assert!(b.try_take(now.plus(std::time::Duration::from_secs(3601))));
}

#[test]
fn last_values_follow_the_rules_queries_in_place() {
    let rule = build_rule("");
    let mut shared = Shared::new(5, Mode::Enforce);
    // A state kept from an earlier version of the rule, with another query.
    let mut st = RuleState::default();
    st.last_values.insert("gone".into(), Some(1.0));
    let eval = |v: Option<f64>| {
        Input::Evaluate(Observation::Samples(
            v.map(|v| ("q".to_string(), Sample::Value(v)))
                .into_iter()
                .collect(),
        ))
    };
    let (st, _) = step(&rule, &st, &mut shared, eval(Some(0.5)), Timestamp(1000));
    assert_eq!(st.values(), [("q".to_string(), Some(0.5))].into());
    let (st, _) = step(&rule, &st, &mut shared, eval(Some(0.25)), Timestamp(2000));
    assert_eq!(st.values(), [("q".to_string(), Some(0.25))].into());
    let (st, _) = step(&rule, &st, &mut shared, eval(None), Timestamp(3000));
    assert_eq!(st.values(), [("q".to_string(), None)].into());
}
