//! The live loop against a real Prometheus (Debian's package) scraping an
//! exporter the test controls every second, with the real ripcord daemon.

use std::time::Duration;

use ripcord::journal::Entry;
use ripcord::rule::{Phase, Status, UnrecoveredReason};

use crate::support::live::*;

const SECS_30: Duration = Duration::from_secs(30);

fn latest_state(rc: &Ripcord, rule: &str) -> Option<Status> {
    rc.journal().into_iter().rev().find_map(|e| match e {
        Entry::State { rule: r, state, .. } if r == rule => Some(state.status),
        _ => None,
    })
}

fn record_action(
    name: &str,
    script: &std::path::Path,
    rec: &std::path::Path,
    sleep: &str,
) -> String {
    format!(
        "  {name}:\n    steps:\n      - exec: {{argv: [\"{}\", \"{name}\", \"{sleep}\"], env: {{REC: \"{}\"}}, timeout: 60s}}\n",
        script.display(),
        rec.display()
    )
}

#[test]
fn a_sustained_breach_runs_the_steps_once_in_order_on_time_and_verifies_recovery() {
    let exp = Exporter::start("demo_errors_ratio 0.001\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.001");
    let tmp = tempfile::tempdir().expect("tmp");
    let script = recorder(tmp.path());
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n  rollback:\n    steps:\n      - exec: {{argv: [\"{s}\", first], env: {{REC: \"{r}\"}}}}\n      - exec: {{argv: [\"{s}\", second], env: {{REC: \"{r}\"}}}}\nrules:\n  - name: errors\n    every: 1s\n    queries: {{ratio: max(demo_errors_ratio)}}\n    condition: ratio > 0.05\n    for: 3s\n    actions: [rollback]\n    verify: {{within: 60s}}\n    cooldown: 1h\n",
        s = script.display(),
        r = rec.display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    rc.wait_log("ripcord running", SECS_30);
    exp.set("demo_errors_ratio 0.2\n");
    wait_until("both steps to finish", SECS_30, || {
        recorded(&rec).len() == 4
    });
    let lines = recorded(&rec);
    let order: Vec<(&str, &str)> = lines
        .iter()
        .map(|(n, e, _)| (n.as_str(), e.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("first", "start"),
            ("first", "end"),
            ("second", "start"),
            ("second", "end")
        ]
    );

    // The first step starts once `for` has elapsed since the breach was
    // first seen, and within one evaluation interval + 1 s after that.
    let pending_at = rc
        .event_at("errors", "ok → pending")
        .expect("pending recorded") as f64
        / 1000.0;
    let started = lines[0].2;
    let after = started - pending_at;
    assert!(
        (3.0..=3.0 + 1.0 + 1.0).contains(&after),
        "first step {after:.3}s after pending (for 3s, every 1s)"
    );

    exp.set("demo_errors_ratio 0.001\n");
    rc.wait_event("errors", "firing → recovered", SECS_30);
    // Still exactly once, a few evaluations later.
    let evaluations = || rc.log().matches("firing → recovered").count();
    assert_eq!(evaluations(), 1);
    exp.set("demo_errors_ratio 0.3\n");
    rc.wait_event("errors", "breach suppressed by cooldown", SECS_30);
    assert_eq!(recorded(&rec).len(), 4, "no second run during the cooldown");
}

#[test]
fn a_blip_shorter_than_for_runs_nothing() {
    let exp = Exporter::start("demo_errors_ratio 0.001\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.001");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n{}rules:\n  - name: errors\n    every: 1s\n    queries: {{ratio: max(demo_errors_ratio)}}\n    condition: ratio > 0.05\n    for: 6s\n    actions: [a]\n    verify: {{within: 1m}}\n",
        record_action("a", &recorder(tmp.path()), &rec, "")
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    exp.set("demo_errors_ratio 0.2\n");
    rc.wait_event("errors", "ok → pending", SECS_30);
    exp.set("demo_errors_ratio 0.001\n");
    rc.wait_event("errors", "pending → ok", SECS_30);
    assert!(rc.intents().is_empty(), "{:?}", rc.intents());
    assert!(recorded(&rec).is_empty());
}

#[test]
fn nan_empty_stale_and_multi_series_run_nothing_and_say_why() {
    let a = Exporter::start("nan_metric NaN\nmulti{i=\"1\"} 1\nmulti{i=\"2\"} 2\n");
    let b = Exporter::start("stale_metric 0.9\n");
    let prom = Prometheus::start(&[a.port(), b.port()]);
    prom.wait_for("nan_metric", "NaN");
    prom.wait_for("stale_metric", "0.9");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    // `for: 0s`: any breach would act on the first evaluation.
    let rule = |name: &str, q: &str, cond: &str| {
        format!("  - name: {name}\n    every: 1s\n    queries: {{x: '{q}'}}\n    condition: {cond}\n    actions: [a]\n")
    };
    let rules = format!(
        "actions:\n{}rules:\n{}{}{}{}",
        record_action("a", &recorder(tmp.path()), &rec, ""),
        rule("nan", "nan_metric", "x > 0.5 || x < 0.5"),
        rule("empty", "no_such_metric", "x > 0.5 || x < 0.5"),
        rule("multi", "multi", "x > 0.5"),
        rule("stale", "stale_metric", "x < 0.5"),
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    rc.wait_event("nan", "no data (x: NaN); no_data: hold", SECS_30);
    rc.wait_event("empty", "no data (x: empty result); no_data: hold", SECS_30);
    rc.wait_event("multi", "query `x` returned 2 series", SECS_30);
    // A scrape that fails makes the series stale: an empty result.
    b.stop();
    rc.wait_event("stale", "no data (x: empty result)", SECS_30);
    assert!(rc.intents().is_empty(), "{:?}", rc.intents());
    for r in ["nan", "empty", "multi", "stale"] {
        assert!(
            matches!(latest_state(&rc, r), None | Some(Status::Ok)),
            "{r}"
        );
    }
}

#[test]
fn prometheus_down_holds_every_state_says_blind_and_resumes_without_acting() {
    let exp = Exporter::start("demo_errors_ratio 0.2\nhealthy 0.1\n");
    let mut prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.2");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n{}rules:\n  - name: slow-burn\n    every: 1s\n    queries: {{x: max(demo_errors_ratio)}}\n    condition: x > 0.05\n    for: 1h\n    actions: [a]\n  - name: quick\n    every: 1s\n    queries: {{x: max(healthy)}}\n    condition: x > 0.5\n    actions: [a]\n",
        record_action("a", &recorder(tmp.path()), &rec, "")
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    rc.wait_event("slow-burn", "ok → pending", SECS_30);
    prom.stop();
    rc.wait_event("slow-burn", "Prometheus unreachable", SECS_30);
    rc.wait_log("ripcord is blind since", SECS_30);
    assert!(matches!(
        latest_state(&rc, "slow-burn"),
        Some(Status::Pending { .. })
    ));
    prom.restart();
    rc.wait_log("ripcord sees again", Duration::from_secs(60));
    assert!(
        matches!(latest_state(&rc, "slow-burn"), Some(Status::Pending { .. })),
        "pending held through the outage"
    );
    assert!(rc.intents().is_empty());
    assert_eq!(
        rc.log().matches("ripcord is blind since").count(),
        1,
        "blind is said once"
    );
}

#[test]
fn prometheus_answering_503_or_too_slowly_holds_and_acts_on_nothing() {
    // A stand-in for an overloaded Prometheus: real Prometheus cannot be made
    // to answer 503 or stall on demand. It answers with the HTTP API's error
    // shape (status "error", errorType, error).
    let fake = FakeServer::start(
        503,
        r#"{"status":"error","errorType":"unavailable","error":"too many queries"}"#,
        Duration::ZERO,
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n{}rules:\n  - name: r\n    every: 1s\n    queries: {{x: up}}\n    condition: x > 0.5\n    actions: [a]\n",
        record_action("a", &recorder(tmp.path()), &rec, "")
    );
    let mut rc = Ripcord::new(&format!("http://127.0.0.1:{}", fake.port), "", &rules);
    rc.start();
    rc.wait_event(
        "r",
        "Prometheus answered 503: unavailable: too many queries",
        SECS_30,
    );
    rc.wait_log("ripcord is blind since", SECS_30);
    // Prometheus comes back with a healthy value: nothing spurious runs.
    fake.set(200, r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.1"]}]}}"#);
    rc.wait_log("ripcord sees again", SECS_30);
    assert!(rc.intents().is_empty());

    let slow = FakeServer::start(
        200,
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"0.9"]}]}}"#,
        Duration::from_secs(5),
    );
    let mut rc = Ripcord::new(&format!("http://127.0.0.1:{}", slow.port), "", &rules);
    rc.start();
    rc.wait_event("r", "Prometheus did not answer within 2s", SECS_30);
    assert!(
        rc.intents().is_empty(),
        "a breach that arrives too late is not acted on"
    );
}

#[test]
fn a_step_killed_with_ripcord_is_never_run_again_and_the_incident_survives() {
    let exp = Exporter::start("demo_errors_ratio 0.2\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.2");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n{}rules:\n  - name: r\n    every: 1s\n    queries: {{x: max(demo_errors_ratio)}}\n    condition: x > 0.05\n    for: 1s\n    actions: [undo]\n    cooldown: 1h\n",
        record_action("undo", &recorder(tmp.path()), &rec, "20")
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    wait_until("the step to start", SECS_30, || recorded(&rec).len() == 1);
    rc.signal(nix::sys::signal::Signal::SIGKILL);

    rc.start();
    rc.wait_log("was interrupted by a restart: it is not run again", SECS_30);
    rc.wait_event("r", "firing → unrecovered", SECS_30);
    match latest_state(&rc, "r") {
        Some(Status::Open(i)) => assert_eq!(
            i.phase,
            Phase::Unrecovered(UnrecoveredReason::Interrupted {
                action: "undo".into()
            })
        ),
        other => panic!("incident not restored: {other:?}"),
    }
    // The incident closes when the metric recovers, and its cooldown
    // survives another restart: a new breach opens nothing.
    exp.set("demo_errors_ratio 0.001\n");
    rc.wait_event("r", "unrecovered → closed", SECS_30);
    rc.signal(nix::sys::signal::Signal::SIGTERM);
    rc.start();
    exp.set("demo_errors_ratio 0.3\n");
    rc.wait_event("r", "breach suppressed by cooldown", SECS_30);
    let starts = recorded(&rec)
        .iter()
        .filter(|(_, e, _)| e == "start")
        .count();
    assert_eq!(starts, 1, "the interrupted step never ran again");
}

#[test]
fn two_rules_sharing_an_action_run_it_once_and_the_budget_stops_the_sixth() {
    let exp = Exporter::start("demo_errors_ratio 0.2\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.2");
    let tmp = tempfile::tempdir().expect("tmp");
    let script = recorder(tmp.path());
    let rec = tmp.path().join("rec");
    let rule = |name: &str, action: &str| {
        format!("  - name: {name}\n    every: 1s\n    queries: {{x: max(demo_errors_ratio)}}\n    condition: x > 0.05\n    for: 1s\n    actions: [{action}]\n")
    };
    let rules = format!(
        "actions:\n{}rules:\n{}{}",
        record_action("shared", &script, &rec, "2"),
        rule("one", "shared"),
        rule("two", "shared")
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    // Both rules breach: the same steps run once, the other incident joins.
    for rule in ["one", "two"] {
        rc.wait_event(rule, "phase acting → verifying", SECS_30);
    }
    let l = recorded(&rec);
    assert_eq!(l.len(), 2, "one run, start and end: {l:?}");
    let joined = rc
        .journal()
        .into_iter()
        .filter(
            |e| matches!(e, Entry::Event { text, .. } if text.contains("joined, not run again")),
        )
        .count();
    assert_eq!(joined, 1, "the second incident joined the first one's run");
    drop(rc);

    let rec6 = tmp.path().join("rec6");
    let mut actions = String::new();
    let mut rs = String::new();
    for i in 1..=6 {
        actions.push_str(&record_action(&format!("a{i}"), &script, &rec6, ""));
        rs.push_str(&rule(&format!("r{i}"), &format!("a{i}")));
    }
    let mut rc = Ripcord::new(
        &prom.url(),
        "limits: {max_actions_per_hour: 5}\n",
        &format!("actions:\n{actions}rules:\n{rs}"),
    );
    rc.start();
    let refused = |rc: &Ripcord| {
        (1..=6)
            .filter(|i| {
                matches!(latest_state(rc, &format!("r{i}")),
                    Some(Status::Open(inc)) if inc.phase == Phase::Halted(ripcord::rule::HaltReason::BudgetExhausted))
            })
            .count()
    };
    wait_until("five actions and one refusal", SECS_30, || {
        recorded(&rec6).len() == 10 && refused(&rc) == 1
    });
    let starts = recorded(&rec6)
        .iter()
        .filter(|(_, e, _)| e == "start")
        .count();
    assert_eq!(starts, 5);
    rc.wait_log("phase pending → budget_exhausted", SECS_30);
}

#[test]
fn labels_and_values_reach_commands_only_through_the_environment() {
    let exp =
        Exporter::start("evil_metric{note=\"; rm -rf / $(touch PWNED) `touch PWNED2`\"} 0.9\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("evil_metric", "PWNED");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n  a:\n    steps:\n      - exec: {{argv: [\"{}\", \"$(touch${{IFS}}PWNED3)\"], env: {{REC: \"{}\"}}}}\nrules:\n  - name: evil\n    every: 1s\n    queries: {{rate: 'max by (note) (evil_metric)'}}\n    condition: rate > 0.5\n    actions: [a]\n",
        recorder(tmp.path()).display(),
        rec.display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    wait_until("the step to run", SECS_30, || recorded(&rec).len() == 2);
    assert_eq!(
        recorded(&rec)[0].0,
        "$(touch${IFS}PWNED3)",
        "argv is passed as written, never interpreted"
    );
    let env = std::fs::read_to_string(format!("{}.env", rec.display())).expect("env recorded");
    assert!(env.contains("RIPCORD_VALUE_RATE=0.9\n"), "{env}");
    assert!(env.contains("RIPCORD_RULE=evil\n"), "{env}");
    assert!(env.contains("RIPCORD_INCIDENT=evil-"), "{env}");
    assert!(
        !env.contains("rm -rf"),
        "labels never reach the command: {env}"
    );
    for d in [tmp.path(), rc.dir.path(), std::path::Path::new(".")] {
        for f in ["PWNED", "PWNED2", "PWNED3"] {
            assert!(!d.join(f).exists(), "{f} created in {}", d.display());
        }
    }
}

#[test]
fn dry_run_records_the_resolved_steps_and_runs_nothing_and_eval_acts_on_nothing() {
    let exp = Exporter::start("demo_errors_ratio 0.2\nhealthy 0.01\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.2");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let script = recorder(tmp.path());
    let rule = |name: &str, q: &str, extra: &str| {
        format!("  - name: {name}\n    every: 1s\n    queries: {{x: max({q})}}\n    condition: x > 0.05\n    actions: [a]\n{extra}")
    };
    let rules = format!(
        "actions:\n{}rules:\n{}{}",
        record_action("a", &script, &rec, ""),
        rule("per-rule", "demo_errors_ratio", "    mode: dry-run\n"),
        rule("quiet", "healthy", ""),
    );

    // `eval` prints values and verdicts and touches nothing.
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ripcord"))
        .arg("-c")
        .arg(rc.path("ripcord.yaml"))
        .arg("eval")
        .output()
        .expect("eval runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("per-rule\n  x            = 0.2\n  condition    x > 0.05\n  → true → an incident opens now: would run a; pages nobody"), "{text}");
    assert!(text.contains("quiet\n  x            = 0.01\n  condition    x > 0.05\n  → false → ok: nothing happens"), "{text}");
    assert!(!rc.path("state").exists(), "eval wrote state");
    assert!(!rec.exists());

    // A rule in dry-run: the steps are resolved and journaled, never run.
    rc.start();
    rc.wait_event("per-rule", "phase acting → verifying", SECS_30);
    let dry: Vec<(String, bool)> = rc
        .journal()
        .into_iter()
        .filter_map(|e| match e {
            Entry::StepIntent {
                describe, dry_run, ..
            } => Some((describe, dry_run)),
            _ => None,
        })
        .collect();
    assert_eq!(dry.len(), 1);
    assert!(dry[0].1);
    assert!(
        dry[0]
            .0
            .starts_with(&format!("exec [\"{}\", \"a\", \"\"]", script.display())),
        "{}",
        dry[0].0
    );
    assert!(!rec.exists(), "a dry-run step ran");
    drop(rc);

    // The global kill switch puts every rule without a mode in dry-run.
    let rules = format!(
        "actions:\n{}rules:\n{}",
        record_action("a", &script, &rec, ""),
        rule("global", "demo_errors_ratio", "")
    );
    let mut rc = Ripcord::new(&prom.url(), "mode: dry-run\n", &rules);
    rc.start();
    rc.wait_event("global", "phase acting → verifying", SECS_30);
    assert!(rc.log().contains("dry-run: would run a"), "{}", rc.log());
    assert!(!rec.exists(), "a step ran under the global dry-run");
}

/// The per-action lock, now a decision of the core (`rule::global::Locks`)
/// carried out by the engine: two incidents that breach together and share
/// one action both run it, one after the other, never at once.
#[test]
fn two_incidents_sharing_an_action_run_it_one_after_the_other() {
    // Two instances whose steps resolve differently (their label is in
    // argv): both run, under the action's lock, never at once.
    let exp = Exporter::start(
        "demo_errors_ratio{domain=\"a\"} 0.001\ndemo_errors_ratio{domain=\"b\"} 0.001\n",
    );
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("count(demo_errors_ratio)", "\"2\"");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n  shared:\n    steps:\n      - exec: {{argv: [\"{}\", \"shared-{{{{ labels.domain }}}}\", \"2\"], env: {{REC: \"{}\"}}, timeout: 60s}}\nrules:\n  - name: errors\n    every: 1s\n    queries: {{ratio: max by (domain) (demo_errors_ratio)}}\n    by: [domain]\n    condition: ratio > 0.05\n    actions: [shared]\n    cooldown: 1h\n",
        recorder(tmp.path()).display(),
        rec.display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    exp.set("demo_errors_ratio{domain=\"a\"} 0.2\ndemo_errors_ratio{domain=\"b\"} 0.2\n");
    wait_until("both runs of the shared action to end", SECS_30, || {
        recorded(&rec).iter().filter(|(_, e, _)| e == "end").count() == 2
    });
    let what: Vec<String> = recorded(&rec).into_iter().map(|(_, e, _)| e).collect();
    assert_eq!(
        what,
        ["start", "end", "start", "end"],
        "the second run starts only after the first ended"
    );
    let mut names: Vec<String> = recorded(&rec).into_iter().map(|(n, _, _)| n).collect();
    names.sort();
    names.dedup();
    assert_eq!(names, ["shared-a", "shared-b"]);
    assert!(
        rc.log()
            .contains("waits for another incident's run of it to finish"),
        "the waiting incident says so:\n{}",
        rc.log()
    );
    // Each instance's incident saw its own run finish.
    for domain in ["a", "b"] {
        rc.wait_event(
            &format!("errors{{domain=\"{domain}\"}}"),
            "phase acting → verifying",
            SECS_30,
        );
    }
}

/// A counter's value in a Prometheus text exposition (summed over series
/// whose line contains every one of `with`).
fn counter(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn rules_sharing_a_query_send_it_to_prometheus_once_per_tick() {
    // Twenty rules of one interval ask the same PromQL: they evaluate on
    // one grid of instants, and Prometheus is asked once per instant.
    let exp = Exporter::start("v 1\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("v", "\"1\"");
    let mut rules = String::from("rules:\n");
    for i in 0..20 {
        rules.push_str(&format!(
            "  - name: r{i}\n    every: 1s\n    queries: {{v: max(v)}}\n    condition: v > 5\n"
        ));
    }
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    let evaluations = || {
        http_get(rc.listen, "/metrics")
            .map(|(_, b)| counter(&b, "ripcord_evaluations_total", &[]))
            .unwrap_or(0.0)
    };
    let queries = || {
        http_get(prom.port, "/metrics")
            .map(|(_, b)| {
                counter(
                    &b,
                    "prometheus_http_requests_total",
                    &["handler=\"/api/v1/query\""],
                )
            })
            .unwrap_or(0.0)
    };
    // Past the first evaluation (at start, each at its own instant).
    wait_until("every rule to have evaluated twice", SECS_30, || {
        evaluations() >= 40.0
    });
    let (e0, q0) = (evaluations(), queries());
    wait_until("a hundred more evaluations", SECS_30, || {
        evaluations() >= e0 + 100.0
    });
    let (e1, q1) = (evaluations(), queries());
    let (evals, sent) = (e1 - e0, q1 - q0);
    eprintln!("{sent} queries for {evals} evaluations");
    assert!(
        sent * 5.0 <= evals,
        "{sent} queries reached Prometheus for {evals} evaluations"
    );
}

/// The first sample of `series` with value `value` in the last minute:
/// its timestamp is when Prometheus scraped it (seconds).
fn first_scraped(prom: &Prometheus, series: &str, value: &str) -> Option<f64> {
    let body = prom.query(&format!("{series}[1m]"));
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["values"]
        .as_array()?
        .iter()
        .find(|p| p[1] == value)
        .and_then(|p| p[0].as_f64())
}

/// The offset that a rule's `data_phase` in `status` says it evaluates at,
/// in ms within its period ("… evaluates 0.33s past each 1s").
fn evaluation_offset_ms(phase: &str) -> Option<f64> {
    let rest = phase.split("evaluates ").nth(1)?;
    let secs: f64 = rest.split("s past each").next()?.parse().ok()?;
    Some(secs * 1000.0)
}

#[test]
fn evaluations_go_just_after_the_scrape_so_a_breach_is_acted_on_when_scraped() {
    // Three series that flip at different instants against the scrape;
    // three `every: 1s` rules, each with its own recording step.
    let exp = Exporter::start("v{t=\"0\"} 0\nv{t=\"1\"} 0\nv{t=\"2\"} 0\n");
    let prom = Prometheus::start(&[exp.port()]);
    // History longer than the probe's window (10 s at every: 1s), so the
    // scrape interval is measured at once.
    prom.wait_for("timestamp(v offset 11s)", "\"value\"");
    let tmp = tempfile::tempdir().expect("tmp");
    let script = recorder(tmp.path());
    let rec = tmp.path().join("rec");
    let mut rules = String::from("actions:\n");
    for i in 0..3 {
        rules.push_str(&record_action(&format!("a{i}"), &script, &rec, ""));
    }
    rules.push_str("rules:\n");
    for i in 0..3 {
        rules.push_str(&format!(
            "  - name: r{i}\n    every: 1s\n    queries: {{v: 'max(v{{t=\"{i}\"}})'}}\n    condition: v > 0.5\n    actions: [a{i}]\n"
        ));
    }
    let mut rc = Ripcord::new(&prom.url(), "limits: {max_actions_per_hour: 100}\n", &rules);
    rc.start();
    // Learned: the data is scraped every second, and where.
    let mut phase = String::new();
    wait_until("status to show r0's learned data phase", SECS_30, || {
        let Some((_, body)) = http_get(rc.listen, "/api/v1/status") else {
            return false;
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        phase = v["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == "r0")
            .and_then(|r| r["data_phase"].as_str())
            .unwrap_or_default()
            .to_string();
        phase.contains("scraped every 1s")
    });
    // The rule's web page says it too.
    let page = http_get(rc.listen, "/rules/r0")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(
        page.contains("evaluation timing") && page.contains("scraped every 1s"),
        "{page}"
    );
    // Placed on the data, still every second: not one period skipped.
    let evaluations = || {
        http_get(rc.listen, "/metrics")
            .map(|(_, b)| counter(&b, "ripcord_evaluations_total", &["rule=\"r0\""]))
            .unwrap_or(0.0)
    };
    let (e0, t0) = (evaluations(), std::time::Instant::now());
    wait_until("r0 to evaluate 6 more times", SECS_30, || {
        evaluations() >= e0 + 6.0
    });
    let per_second = (evaluations() - e0) / t0.elapsed().as_secs_f64();
    assert!(
        per_second > 0.8,
        "r0 evaluated {per_second:.2} times a second at every: 1s"
    );
    // Prometheus's own word on when it scrapes the exporter: each
    // sample's timestamp is its scrape's start.
    let scraped: f64 =
        serde_json::from_str::<serde_json::Value>(&prom.query("timestamp(v{t=\"0\"})"))
            .ok()
            .and_then(|v| v["data"]["result"][0]["value"][1].as_str()?.parse().ok())
            .expect("the scrape's timestamp");
    let offset = evaluation_offset_ms(&phase).expect("an offset in the data phase");
    let lag = (offset - (scraped * 1000.0).rem_euclid(1000.0)).rem_euclid(1000.0);
    assert!(
        lag > 0.0 && lag <= 150.0,
        "evaluations at {offset} ms into each second, the scrape at {:.0} ms: {lag} ms after it ({phase})",
        (scraped * 1000.0).rem_euclid(1000.0)
    );

    // Each breach is acted on by the first evaluation after the scrape
    // that saw it (about 30 ms here), not up to a second later as at an
    // arbitrary phase.
    let mut latencies = Vec::new();
    for i in 0..3 {
        // Flips at different instants of the scrape cycle.
        std::thread::sleep(Duration::from_millis(1300 + 300 * i as u64));
        let mut body = String::new();
        for j in 0..3 {
            body.push_str(&format!("v{{t=\"{j}\"}} {}\n", u8::from(j <= i)));
        }
        exp.set(&body);
        let name = format!("a{i}");
        wait_until(&format!("a{i} to start"), SECS_30, || {
            recorded(&rec)
                .iter()
                .any(|(n, e, _)| *n == name && e == "start")
        });
        let started = recorded(&rec)
            .into_iter()
            .find(|(n, e, _)| *n == name && e == "start")
            .map(|(_, _, t)| t)
            .expect("start");
        let seen = first_scraped(&prom, &format!("v{{t=\"{i}\"}}"), "1").expect("the scrape of 1");
        latencies.push(started - seen);
    }
    eprintln!("scrape → step start: {latencies:?} ({phase})");
    assert!(
        latencies.iter().all(|l| *l > 0.0 && *l < 0.25),
        "scrape → step start {latencies:?}: an evaluation placed after the scrape acts within a fraction of it ({phase})"
    );
}
