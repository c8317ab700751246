//! Table tests of instances: how answers split, and instances' lives
//! through the same driver `ripcord test` uses.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::config::Mode;
use crate::rule::sim::Sim;
use crate::rule::StateName;

fn rule(yaml: &str) -> Arc<Rule> {
    let loaded = crate::config::load::load_rule_sources(&[("r.yaml", yaml)]);
    let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    loaded.value.expect("loads").rules[0].clone()
}

fn by_domain() -> Arc<Rule> {
    rule("actions:\n  undo:\n    steps: [{exec: {argv: [/bin/true, '{{ labels.domain }}']}}]\nrules:\n  - name: e\n    every: 10s\n    queries: {v: x, base: y}\n    by: [domain]\n    condition: v > 0.01 || v > 5 * base\n    for: 20s\n    cooldown: 1m\n    actions: [undo]\n")
}

fn alerts() -> Arc<Rule> {
    rule("rules:\n  - name: a\n    every: 10s\n    queries: {restarts: 'increase(r[10m]) > 3'}\n    by: [pod]\n")
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn vector(series: &[(&[(&str, &str)], f64)]) -> Answer {
    Answer::Vector(series.iter().map(|(ls, v)| (l(ls), *v)).collect())
}

fn answers(qs: &[(&str, Answer)]) -> Evaluation {
    Evaluation::Answers(qs.iter().map(|(q, a)| (q.to_string(), a.clone())).collect())
}

fn samples(seen: &Seen) -> BTreeMap<String, Sample> {
    match &seen.obs {
        Observation::Samples(s) => s.clone(),
        other => panic!("{}: not samples: {other:?}", seen.key),
    }
}

#[test]
fn keys_are_the_rule_and_its_labels_escaped() {
    assert_eq!(key("r", &Labels::new()), "r");
    assert_eq!(
        key("r", &l(&[("pod", "a\"b\\c"), ("domain", "chat")])),
        r#"r{domain="chat",pod="a\"b\\c"}"#
    );
    assert_eq!(rule_of(r#"r{domain="chat"}"#), "r");
    assert_eq!(rule_of("r"), "r");
}

#[test]
fn split_table() {
    let r = by_domain();
    let chat = l(&[("domain", "chat")]);
    let id = l(&[("domain", "identity")]);
    struct Row {
        what: &'static str,
        eval: Evaluation,
        known: Vec<Labels>,
        /// (instance labels, present, v, base) — `None`: empty.
        want: Vec<(Labels, bool, Option<f64>, Option<f64>)>,
    }
    let rows = vec![
        Row {
            what: "each series goes to its instance; a scalar applies to every one",
            eval: answers(&[
                (
                    "v",
                    vector(&[
                        (&[("domain", "chat")], 0.02),
                        (&[("domain", "identity")], 0.001),
                    ]),
                ),
                ("base", Answer::Scalar(0.001)),
            ]),
            known: vec![],
            want: vec![
                (chat.clone(), true, Some(0.02), Some(0.001)),
                (id.clone(), true, Some(0.001), Some(0.001)),
            ],
        },
        Row {
            what: "an aggregate without the by label applies to every instance",
            eval: answers(&[
                ("v", vector(&[(&[("domain", "chat")], 0.02)])),
                ("base", vector(&[(&[("job", "edge")], 0.004)])),
            ]),
            known: vec![],
            want: vec![(chat.clone(), true, Some(0.02), Some(0.004))],
        },
        Row {
            what: "a known instance the answers no longer name sees no data",
            eval: answers(&[
                ("v", vector(&[(&[("domain", "chat")], 0.02)])),
                ("base", vector(&[(&[("domain", "chat")], 0.001)])),
            ]),
            known: vec![id.clone()],
            want: vec![
                (chat.clone(), true, Some(0.02), Some(0.001)),
                (id.clone(), false, None, None),
            ],
        },
        Row {
            what: "a query without a series for an instance is no data there",
            eval: answers(&[
                ("v", vector(&[(&[("domain", "chat")], 0.02)])),
                ("base", vector(&[(&[("domain", "identity")], 0.001)])),
            ]),
            known: vec![],
            want: vec![
                (chat.clone(), true, Some(0.02), None),
                (id.clone(), true, None, Some(0.001)),
            ],
        },
        Row {
            what: "no series at all: the rule's own instance stands in, with no data",
            eval: answers(&[("v", vector(&[])), ("base", vector(&[]))]),
            known: vec![],
            want: vec![(Labels::new(), true, None, None)],
        },
        Row {
            what: "once instances appear, the stand-in is one the answers no longer name",
            eval: answers(&[
                ("v", vector(&[(&[("domain", "chat")], 0.02)])),
                ("base", vector(&[])),
            ]),
            known: vec![Labels::new()],
            want: vec![
                (Labels::new(), false, None, None),
                (chat.clone(), true, Some(0.02), None),
            ],
        },
    ];
    for row in rows {
        let known: Vec<&Labels> = row.known.iter().collect();
        let seen = split(&r, &row.eval, &known);
        let got: Vec<(Labels, bool, Option<f64>, Option<f64>)> = seen
            .iter()
            .map(|s| {
                let m = samples(s);
                let v = |q: &str| match m.get(q) {
                    Some(Sample::Value(v)) => Some(*v),
                    _ => None,
                };
                (s.labels.clone(), s.present, v("v"), v("base"))
            })
            .collect();
        assert_eq!(got, row.want, "{}", row.what);
        for s in &seen {
            assert_eq!(s.key, key("e", &s.labels), "{}", row.what);
        }
    }
}

#[test]
fn what_cannot_be_told_apart_is_unevaluable_where_it_belongs() {
    let r = by_domain();
    // Two series of one instance: that instance alone.
    let seen = split(
        &r,
        &answers(&[
            (
                "v",
                vector(&[
                    (&[("domain", "chat"), ("pod", "a")], 0.02),
                    (&[("domain", "chat"), ("pod", "b")], 0.03),
                    (&[("domain", "match")], 0.0),
                ]),
            ),
            ("base", Answer::Scalar(0.001)),
        ]),
        &[],
    );
    let chat = seen
        .iter()
        .find(|s| s.labels == l(&[("domain", "chat")]))
        .expect("chat");
    assert!(
        matches!(&chat.obs, Observation::Unevaluable(e) if e.contains("2 series for e{domain=\"chat\"}")),
        "{:?}",
        chat.obs
    );
    let m = seen
        .iter()
        .find(|s| s.labels == l(&[("domain", "match")]))
        .expect("match");
    assert!(matches!(m.obs, Observation::Samples(_)));
    // Two series without the label: every instance.
    let seen = split(
        &r,
        &answers(&[
            ("v", vector(&[(&[("domain", "chat")], 0.02)])),
            (
                "base",
                vector(&[(&[("job", "a")], 1.0), (&[("job", "b")], 2.0)]),
            ),
        ]),
        &[],
    );
    assert!(seen.iter().all(
        |s| matches!(&s.obs, Observation::Unevaluable(e) if e.contains("without the `by:` labels"))
    ));
    // A failure of the whole rule goes to the rule's own instance only.
    let chat = l(&[("domain", "chat")]);
    let known = vec![&chat];
    for eval in [
        Evaluation::Failed("down".into()),
        Evaluation::Unevaluable("400".into()),
    ] {
        let seen = split(&r, &eval, &known);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].key, "e");
    }
    // A rule without `by:` and two series: unevaluable, naming the labels.
    let single = rule("rules:\n  - name: s\n    queries: {v: x}\n    condition: v > 1\n");
    let seen = split(
        &single,
        &answers(&[(
            "v",
            vector(&[(&[("pod", "a")], 1.0), (&[("pod", "b")], 2.0)]),
        )]),
        &[],
    );
    assert!(
        matches!(&seen[0].obs, Observation::Unevaluable(e) if e.contains("returned 2 series") && e.contains("pod")),
        "{:?}",
        seen[0].obs
    );
}

#[test]
fn alert_style_every_series_breaches_and_an_empty_answer_is_ok() {
    let r = alerts();
    let old = l(&[("pod", "old")]);
    let known = vec![&old];
    let seen = split(
        &r,
        &answers(&[(
            "restarts",
            vector(&[
                (&[("pod", "p1"), ("ns", "x")], 4.0),
                (&[("pod", "p2")], f64::NAN),
            ]),
        )]),
        &known,
    );
    let got: Vec<(String, bool)> = seen.iter().map(|s| (s.key.clone(), s.present)).collect();
    assert_eq!(
        got,
        [
            (r#"a{pod="old"}"#.to_string(), false),
            (r#"a{pod="p1"}"#.to_string(), true),
            (r#"a{pod="p2"}"#.to_string(), true),
        ]
    );
    // Without `by:` an instance is every label but the name.
    let r2 = rule("rules:\n  - name: b\n    queries: {up: 'up == 0'}\n");
    let seen = split(
        &r2,
        &answers(&[(
            "up",
            vector(&[(
                &[("__name__", "up"), ("instance", "h:9100"), ("job", "node")],
                0.0,
            )]),
        )]),
        &[],
    );
    assert_eq!(seen[0].key, r#"b{instance="h:9100",job="node"}"#);
    // The states the core makes of it: a series breaches, NaN too; none is ok.
    let mut sim = Sim::new([r.clone()], Shared::new(5, Mode::Enforce));
    let t = |s: i64| Timestamp(s * 1000);
    sim.evaluate_answers(
        "a",
        &answers(&[("restarts", vector(&[(&[("pod", "p1")], f64::NAN)]))]),
        t(0),
    )
    .expect("evaluates");
    assert_eq!(sim.state(r#"a{pod="p1"}"#).name(), StateName::Firing);
    sim.evaluate_answers("a", &answers(&[("restarts", vector(&[]))]), t(10))
        .expect("evaluates");
    assert_eq!(
        sim.state(r#"a{pod="p1"}"#).name(),
        StateName::Recovered,
        "no series: ok, the incident recovers"
    );
    assert!(sim.state("a").last_error.is_none());
}

/// Instances over time, as `ripcord test` and `run` step them.
#[test]
fn instances_appear_breach_disappear_recover_and_survive_a_restart() {
    let r = by_domain();
    let t = |s: i64| Timestamp(1_800_000_000_000 + s * 1000);
    let chat = r#"e{domain="chat"}"#;
    let id = r#"e{domain="identity"}"#;
    let m = r#"e{domain="match"}"#;
    let eval = |series: &[(&str, f64)]| {
        let v: Vec<(Labels, f64)> = series
            .iter()
            .map(|(d, x)| (l(&[("domain", d)]), *x))
            .collect();
        Evaluation::Answers(BTreeMap::from([
            ("v".to_string(), Answer::Vector(v)),
            ("base".to_string(), Answer::Scalar(0.001)),
        ]))
    };
    struct Step {
        at: i64,
        series: Vec<(&'static str, f64)>,
        want: Vec<(&'static str, Option<StateName>)>,
    }
    use StateName::*;
    let steps = [
        // chat and identity appear; chat breaches.
        Step {
            at: 0,
            series: vec![("chat", 0.02), ("identity", 0.0)],
            want: vec![(chat, Some(Pending)), (id, Some(Ok)), ("e", None)],
        },
        Step {
            at: 10,
            series: vec![("chat", 0.02), ("identity", 0.02), ("match", 0.0)],
            want: vec![(chat, Some(Pending)), (id, Some(Pending)), (m, Some(Ok))],
        },
        // chat fires and acts while identity is still pending.
        Step {
            at: 20,
            series: vec![("chat", 0.02), ("identity", 0.02)],
            want: vec![(chat, Some(Firing)), (id, Some(Pending)), (m, None)],
        },
        Step {
            at: 30,
            series: vec![("chat", 0.02), ("identity", 0.02)],
            want: vec![(chat, Some(Firing)), (id, Some(Firing))],
        },
        // chat recovers; identity disappears while firing: it holds.
        Step {
            at: 40,
            series: vec![("chat", 0.0)],
            want: vec![(chat, Some(Recovered)), (id, Some(Firing))],
        },
    ];
    let mut sim = Sim::new([r.clone()], Shared::new(5, Mode::Enforce));
    for s in &steps {
        sim.evaluate_answers("e", &eval(&s.series), t(s.at))
            .expect("evaluates");
        for (k, want) in &s.want {
            let got = sim.states().get(*k).map(|st| st.name());
            assert_eq!(got, *want, "at {}s, {k}", s.at);
        }
    }
    assert_eq!(
        sim.actions(chat, t(20), false),
        ["undo"],
        "chat acted at 20s"
    );
    assert!(
        sim.actions(id, t(20), false).is_empty(),
        "while identity was pending"
    );
    assert_eq!(sim.actions(id, t(30), false), ["undo"]);
    // A restart: the states come back from their JSON (the journal's
    // lines), labels and all, and identity goes on where it was.
    let json = serde_json::to_string(sim.states()).expect("serializes");
    let back: BTreeMap<String, RuleState> = serde_json::from_str(&json).expect("parses");
    assert_eq!(back[id].labels, l(&[("domain", "identity")]));
    let mut again = Sim::new([r.clone()], Shared::new(5, Mode::Enforce));
    again.restore(back);
    again
        .evaluate_answers("e", &eval(&[("chat", 0.0), ("identity", 0.0)]), t(50))
        .expect("evaluates");
    assert_eq!(
        again.state(id).name(),
        Recovered,
        "identity's incident continued and recovered"
    );
    assert_eq!(again.state(chat).name(), Recovered, "chat's cooldown kept");
    let incident = again.state(id).last_incident.clone().expect("an incident");
    assert!(
        incident.starts_with("e-") && incident.len() > "e-20270115T080000Z".len(),
        "instance ids carry a digest: {incident}"
    );
}
