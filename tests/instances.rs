//! Many series on a real Prometheus (Debian's package) scraping an exporter
//! the test controls: `by:` rules act per instance with the instance's
//! labels in argv and environment, instances whose steps resolve the same
//! run them once, an unsafe label value runs nothing and pages, and an
//! alert-style rule acts for the series its filter returns.
//!
//! The page receiver is the test double of the webhook contract (JSON body
//! with `event`, `incident`, `labels`, `details`; 2xx accepted).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::live::*;
use crate::support::receivers;

const LONG: Duration = Duration::from_secs(40);

/// (name, start|end) lines the recorder wrote, names only, in order.
fn starts(rec: &std::path::Path) -> Vec<String> {
    recorded(rec)
        .into_iter()
        .filter(|(_, e, _)| e == "start")
        .map(|(n, _, _)| n)
        .collect()
}

/// Evaluations of `rule` so far, from /metrics.
fn evaluations(rc: &Ripcord, rule: &str) -> f64 {
    http_get(rc.listen, "/metrics")
        .map(|(_, t)| {
            t.lines()
                .filter(|l| l.starts_with(&format!("ripcord_evaluations_total{{rule=\"{rule}\"}}")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        })
        .unwrap_or(0.0)
}

/// Waits for `n` more evaluations of `rule`: time enough for anything
/// that would happen to happen.
fn more_evaluations(rc: &Ripcord, rule: &str, n: f64) {
    let from = evaluations(rc, rule);
    wait_until(&format!("{n} more evaluations of {rule}"), LONG, || {
        evaluations(rc, rule) >= from + n
    });
}

/// An exporter serving `metrics`, and a Prometheus that has scraped it
/// once `count` answers `n`.
fn setup(metrics: &str, count: &str, n: usize) -> (Exporter, Prometheus) {
    let exp = Exporter::start(metrics);
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for(&format!("count({count})"), &format!("\"{n}\""));
    (exp, prom)
}

#[test]
fn a_by_rule_acts_for_the_instance_that_breaches_with_its_label_in_argv_and_environment() {
    let ok = "edge_errors{domain=\"identity\"} 0.001\nedge_errors{domain=\"match\"} 0.001\nedge_errors{domain=\"chat\"} 0.001\n";
    let (exp, prom) = setup(ok, "edge_errors", 3);
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n  to-legacy:\n    steps: [{{exec: {{argv: [\"{}\", \"flag-{{{{ labels.domain }}}}\"]}}}}]\nrules:\n  - name: edge\n    every: 1s\n    queries: {{v: max by (domain) (edge_errors)}}\n    by: [domain]\n    condition: v > 0.05\n    summary: \"{{{{ labels.domain }}}} at {{{{ v }}}}\"\n    actions: [to-legacy]\n    cooldown: 1h\n",
        recorder(tmp.path()).display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.env.push(("REC".into(), rec.display().to_string()));
    rc.start();
    // Three instances, all ok, nothing runs.
    wait_until("three instances in status", LONG, || {
        let s = rc.cli(&["status", "--json"], &[]);
        let v: Value = serde_json::from_str(&s.stdout).unwrap_or(Value::Null);
        v["rules"].as_array().is_some_and(|rs| {
            rs.iter()
                .filter(|r| {
                    r["rule"] == "edge" && r["state"] == "ok" && r["labels"]["domain"].is_string()
                })
                .count()
                == 3
        })
    });
    assert!(starts(&rec).is_empty());

    // chat breaches: its instance acts, once, with `chat` in argv and env.
    exp.set(&ok.replace("domain=\"chat\"} 0.001", "domain=\"chat\"} 0.2"));
    wait_until("chat's rollback", LONG, || starts(&rec) == ["flag-chat"]);
    more_evaluations(&rc, "edge", 3.0);
    assert_eq!(starts(&rec), ["flag-chat"], "once, for chat only");
    let env = std::fs::read_to_string(tmp.path().join("rec.env")).expect("env");
    assert!(env.contains("RIPCORD_LABEL_DOMAIN=chat"), "{env}");
    assert!(env.contains("RIPCORD_RULE=edge"), "{env}");

    // identity breaches too: a second instance acts on its own.
    exp.set(
        &ok.replace("domain=\"chat\"} 0.001", "domain=\"chat\"} 0.2")
            .replace("domain=\"identity\"} 0.001", "domain=\"identity\"} 0.3"),
    );
    wait_until("identity's rollback", LONG, || {
        starts(&rec) == ["flag-chat", "flag-identity"]
    });
    more_evaluations(&rc, "edge", 3.0);
    assert_eq!(starts(&rec), ["flag-chat", "flag-identity"]);
    // Status names the instances and their incidents.
    let s = rc.cli(&["status", "--json"], &[]);
    let v: Value = serde_json::from_str(&s.stdout).expect("status json");
    let firing: BTreeMap<String, String> = v["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["state"] == "firing")
        .map(|r| {
            (
                r["labels"]["domain"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["incident"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        firing.keys().collect::<Vec<_>>(),
        ["chat", "identity"],
        "{v}"
    );
    assert_ne!(firing["chat"], firing["identity"], "an incident each");
}

#[test]
fn instances_whose_step_resolves_the_same_run_it_once_and_the_others_join() {
    let ok = "pod_errors{deployment=\"chat\",pod=\"chat-a\"} 0.001\npod_errors{deployment=\"chat\",pod=\"chat-b\"} 0.001\npod_errors{deployment=\"chat\",pod=\"chat-c\"} 0.001\n";
    let (exp, prom) = setup(ok, "pod_errors", 3);
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let hook = receivers::recorder();
    let rules = format!(
        "notifiers:\n  hook: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}}}\nactions:\n  undo:\n    steps: [{{exec: {{argv: [\"{}\", \"undo-deployment/{{{{ labels.deployment }}}}\", \"2\"]}}}}]\nrules:\n  - name: pods\n    every: 1s\n    queries: {{v: 'max by (deployment, pod) (pod_errors)'}}\n    by: [deployment, pod]\n    condition: v > 0.05\n    actions: [undo]\n    notify: [hook]\n    cooldown: 1h\n",
        hook.port,
        recorder(tmp.path()).display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.env.push(("REC".into(), rec.display().to_string()));
    rc.start();
    more_evaluations(&rc, "pods", 2.0);
    // All three pods of one deployment breach at once.
    exp.set(&ok.replace("0.001", "0.2"));
    wait_until("the rollback to start", LONG, || !starts(&rec).is_empty());
    // Each pod's incident finishes: one ran it, two joined.
    wait_until("three incidents told the steps succeeded", LONG, || {
        hook.requests()
            .iter()
            .filter(|r| r.body.contains("\"event\":\"actions_succeeded\""))
            .count()
            == 3
    });
    more_evaluations(&rc, "pods", 3.0);
    assert_eq!(
        starts(&rec),
        ["undo-deployment/chat"],
        "one rollback for the one thing rolled back"
    );
    let joined = rc
        .journal()
        .into_iter()
        .filter(|e| matches!(e, ripcord::journal::Entry::Event { text, .. } if text.contains("joined, not run again")))
        .count();
    assert_eq!(joined, 2, "the other two incidents joined it");
    // The budget counts the one run: four of five left.
    let s = rc.cli(&["status", "--json"], &[]);
    let v: Value = serde_json::from_str(&s.stdout).expect("status json");
    assert_eq!(v["actions_left_this_hour"], 4, "{v}");
    // Every page names its pod.
    let opened: Vec<String> = hook
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .filter(|v| v["event"] == "opened")
        .map(|v| v["labels"]["pod"].as_str().unwrap_or_default().to_string())
        .collect();
    let mut sorted = opened.clone();
    sorted.sort();
    assert_eq!(sorted, ["chat-a", "chat-b", "chat-c"], "{opened:?}");
}

#[test]
fn a_label_value_with_a_space_or_a_semicolon_runs_nothing_and_pages_why() {
    let metrics = "edge_errors{domain=\"chat; rm -rf /\"} 0.2\nedge_errors{domain=\"a b\"} 0.2\n";
    let (_exp, prom) = setup(metrics, "edge_errors", 2);
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let hook = receivers::recorder();
    let rules = format!(
        "notifiers:\n  hook: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}}}\nactions:\n  to-legacy:\n    steps: [{{exec: {{argv: [\"{}\", \"{{{{ labels.domain }}}}\"]}}}}]\nrules:\n  - name: edge\n    every: 1s\n    queries: {{v: max by (domain) (edge_errors)}}\n    by: [domain]\n    condition: v > 0.05\n    actions: [to-legacy]\n    notify: [hook]\n",
        hook.port,
        recorder(tmp.path()).display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.env.push(("REC".into(), rec.display().to_string()));
    rc.start();
    wait_until(
        "both incidents paged that their step was refused",
        LONG,
        || {
            hook.requests()
                .iter()
                .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
                .filter(|v| v["event"] == "action_failed")
                .filter(|v| {
                    v["details"]
                        .to_string()
                        .contains("not safe to put into a step")
                })
                .count()
                == 2
        },
    );
    more_evaluations(&rc, "edge", 3.0);
    assert!(starts(&rec).is_empty(), "nothing ran: {:?}", starts(&rec));
    assert!(
        !tmp.path().join("rec.env").exists(),
        "the recorder never started"
    );
    assert!(
        rc.log().contains("not safe to put into a step"),
        "{}",
        rc.log()
    );
}

#[test]
fn an_alert_style_rule_acts_for_each_series_its_filter_returns() {
    let ok = "restarts{pod=\"api-1\"} 0\nrestarts{pod=\"api-2\"} 0\n";
    let (exp, prom) = setup(ok, "restarts", 2);
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n  bounce:\n    steps: [{{exec: {{argv: [\"{}\", \"bounce-{{{{ labels.pod }}}}\"]}}}}]\nrules:\n  - name: crashloop\n    every: 1s\n    queries: {{r: 'max by (pod) (restarts) > 3'}}\n    by: [pod]\n    actions: [bounce]\n    cooldown: 1h\n",
        recorder(tmp.path()).display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.env.push(("REC".into(), rec.display().to_string()));
    rc.start();
    more_evaluations(&rc, "crashloop", 3.0);
    // A healthy system returns nothing: ok, not "no data".
    let s = rc.cli(&["status", "--json"], &[]);
    let v: Value = serde_json::from_str(&s.stdout).expect("status json");
    let rows: Vec<&Value> = v["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["rule"] == "crashloop")
        .collect();
    assert!(
        rows.iter()
            .all(|r| r["state"] == "ok" && r["last_error"].is_null()),
        "{v}"
    );
    assert!(starts(&rec).is_empty());
    exp.set("restarts{pod=\"api-1\"} 0\nrestarts{pod=\"api-2\"} 7\n");
    wait_until("api-2 bounced", LONG, || starts(&rec) == ["bounce-api-2"]);
    more_evaluations(&rc, "crashloop", 3.0);
    assert_eq!(
        starts(&rec),
        ["bounce-api-2"],
        "only the series the filter returns"
    );
}
