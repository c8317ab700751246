//! The daemon's HTTP listener and the CLI commands that use it.

use std::time::Duration;

use crate::support::live::*;

const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "t0p-s3cret-api-token";

#[test]
fn metrics_status_approve_veto_pause_and_resume() {
    let exp = Exporter::start("a_ratio 0.001\nb_ratio 0.001\nc_ratio 0.001\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("c_ratio", "0.001");
    let tmp = tempfile::tempdir().expect("tmp");
    let script = recorder(tmp.path());
    let rec = tmp.path().join("rec");
    let action = |name: &str| {
        format!("  {name}:\n    steps: [{{exec: {{argv: [\"{}\", \"{name}\"], env: {{REC: \"{}\"}}}}}}]\n", script.display(), rec.display())
    };
    let rule = |name: &str, metric: &str, action: &str| {
        format!("  - name: {name}\n    every: 1s\n    queries: {{x: max({metric})}}\n    condition: x > 0.05\n    actions: [{action}]\n    approval: {{timeout: 10m, on_timeout: abort}}\n")
    };
    let rules = format!(
        "actions:\n{}{}{}rules:\n{}{}{}",
        action("undo-a"),
        action("undo-b"),
        action("undo-c"),
        rule("rule-a", "a_ratio", "undo-a"),
        rule("rule-b", "b_ratio", "undo-b"),
        rule("rule-c", "c_ratio", "undo-c")
            .replace("    approval: {timeout: 10m, on_timeout: abort}\n", ""),
    );
    let mut rc = Ripcord::new(&prom.url(), "api: {token: \"${env:API_TOKEN}\"}\n", &rules);
    rc.env.push(("API_TOKEN".into(), TOKEN.into()));
    rc.start();
    let port = rc.listen;

    assert_eq!(http_get(port, "/healthz"), Some((200, "ok".into())));
    wait_until("metrics of the first evaluations", LONG, || {
        http_get(port, "/metrics")
            .is_some_and(|(_, b)| b.contains("ripcord_evaluations_total{rule=\"rule-a\"}"))
    });
    let (_, metrics) = http_get(port, "/metrics").expect("metrics");
    for want in [
        "ripcord_rule_state{rule=\"rule-a\",state=\"ok\"} 1",
        "ripcord_rule_state{rule=\"rule-a\",state=\"firing\"} 0",
        "ripcord_prometheus_up 1",
        "ripcord_last_reload_successful 1",
        "ripcord_rules 3",
        "ripcord_evaluation_duration_seconds_bucket",
        "ripcord_build_info{version=\"",
        "ripcord_outbox_pages 0",
    ] {
        assert!(metrics.contains(want), "{want} missing:\n{metrics}");
    }

    // Two incidents await approval.
    exp.set("a_ratio 0.2\nb_ratio 0.2\nc_ratio 0.001\n");
    let incident_of = |rule: &str| -> Option<String> {
        let out = rc.cli(&["status", "--json"], &[]);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        v["rules"]
            .as_array()?
            .iter()
            .find(|r| r["name"] == rule && r["phase"] == "awaiting_approval")?["incident"]
            .as_str()
            .map(str::to_string)
    };
    wait_until("both incidents to await approval", LONG, || {
        incident_of("rule-a").is_some() && incident_of("rule-b").is_some()
    });
    let (a, b) = (
        incident_of("rule-a").expect("a"),
        incident_of("rule-b").expect("b"),
    );
    let table = rc.cli(&["status"], &[]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("running, mode enforce"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.lines().any(|l| l.starts_with("rule-a")
            && l.contains("firing")
            && l.contains("awaiting_approval")
            && l.contains(&a)
            && l.contains("x=0.2")),
        "{}",
        table.stdout
    );

    // Without the token nothing happens.
    let out = rc.cli(&["approve", &a], &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("api.token: environment variable API_TOKEN is not set"),
        "{}",
        out.stderr
    );
    let out = rc.cli(&["approve", &a], &[("RIPCORD_API_TOKEN", "wrong")]);
    assert!(
        out.stderr.contains("missing or wrong API token"),
        "{}",
        out.stderr
    );
    let out = rc.cli(&["approve", &a], &[("RIPCORD_API_TOKEN", "wrong")]);
    assert_eq!(out.code, 1);
    assert!(recorded(&rec).is_empty());

    let tok = [("RIPCORD_API_TOKEN", TOKEN)];
    let out = rc.cli(&["approve", &a], &tok);
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, format!("approved {a}").as_str()),
        "{}",
        out.stderr
    );
    wait_until("rule-a's action", LONG, || {
        recorded(&rec)
            .iter()
            .any(|(n, e, _)| n == "undo-a" && e == "end")
    });
    let out = rc.cli(&["veto", &b], &tok);
    assert_eq!(
        (out.code, out.stdout.trim()),
        (0, format!("vetoed {b}: nothing runs").as_str()),
        "{}",
        out.stderr
    );
    let out = rc.cli(&["approve", &b], &tok);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("is not awaiting approval (it is vetoed)"),
        "{}",
        out.stderr
    );
    let out = rc.cli(&["veto", "no-such-incident"], &tok);
    assert!(
        out.stderr.contains("no open incident no-such-incident"),
        "{}",
        out.stderr
    );

    // Paused: an incident opens and pages, its action does not run.
    let out = rc.cli(&["pause", "--for", "1h", "--reason", "change freeze"], &tok);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("paused until "), "{}", out.stdout);
    wait_until("status to say paused", LONG, || {
        rc.cli(&["status"], &[])
            .stdout
            .contains("PAUSED (change freeze, until ")
    });
    exp.set("a_ratio 0.2\nb_ratio 0.2\nc_ratio 0.2\n");
    wait_until("rule-c to open paused", LONG, || {
        rc.cli(&["status"], &[])
            .stdout
            .lines()
            .any(|l| l.starts_with("rule-c") && l.contains("paused"))
    });
    assert!(
        !recorded(&rec).iter().any(|(n, ..)| n == "undo-c"),
        "an action ran while paused"
    );
    let out = rc.cli(&["resume"], &tok);
    assert_eq!((out.code, out.stdout.trim()), (0, "resumed"));
    let out = rc.cli(&["resume"], &tok);
    assert!(
        out.stderr.contains("ripcord is not paused"),
        "{}",
        out.stderr
    );
    assert!(
        !rc.log().contains(TOKEN),
        "the API token leaked into the log"
    );

    let (_, metrics) = http_get(port, "/metrics").expect("metrics");
    assert!(
        metrics.contains("ripcord_actions_total{action=\"undo-a\",result=\"succeeded\"} 1"),
        "{metrics}"
    );
    // The exposition is valid for Prometheus's own checker.
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Mutating calls without the token: 401.
    for path in [
        "/api/v1/resume".to_string(),
        "/api/v1/pause".to_string(),
        format!("/api/v1/incidents/{b}/veto"),
    ] {
        assert_eq!(http_post(port, &path).map(|(s, _)| s), Some(401), "{path}");
    }
}

#[test]
fn status_without_a_daemon_is_a_clear_error() {
    let rc = Ripcord::new("http://127.0.0.1:1", "", "rules: []\n");
    let out = rc.cli(&["status"], &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("cannot reach ripcord at http://127.0.0.1:"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("is `ripcord run` running?"),
        "{}",
        out.stderr
    );
}

#[test]
fn fire_drills_the_rollback_dry_run_first_then_for_real() {
    let exp = Exporter::start("demo_errors_ratio 0.001\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.001");
    let hook = crate::support::receivers::recorder();
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "notifiers:\n  bot: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}}}\nactions:\n  undo:\n    steps: [{{exec: {{argv: [\"{}\", undo], env: {{REC: \"{}\"}}}}}}]\nrules:\n  - name: r\n    every: 1s\n    queries: {{x: max(demo_errors_ratio)}}\n    condition: x > 0.5\n    actions: [undo]\n    notify: [bot]\n    cooldown: 1h\n",
        hook.port,
        recorder(tmp.path()).display(),
        rec.display()
    );
    let mut rc = Ripcord::new(&prom.url(), "api: {token: \"${env:API_TOKEN}\"}\n", &rules);
    rc.env.push(("API_TOKEN".into(), TOKEN.into()));
    rc.start();
    let tok = [("RIPCORD_API_TOKEN", TOKEN)];

    let out = rc.cli(&["fire", "r", "--dry-run"], &tok);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("opened (dry-run): steps are resolved and recorded, nothing runs"),
        "{}",
        out.stdout
    );
    wait_until("the drill's page", LONG, || {
        hook.requests().iter().any(|r| {
            r.body.contains("\"event\":\"opened\"")
                && r.body.contains("\"drill\":true")
                && r.body.contains("\"dry_run\":true")
        })
    });
    let intents: Vec<bool> = rc
        .journal()
        .into_iter()
        .filter_map(|e| match e {
            ripcord::journal::Entry::StepIntent { dry_run, .. } => Some(dry_run),
            _ => None,
        })
        .collect();
    assert_eq!(intents, [true]);
    assert!(!rec.exists(), "a dry-run drill ran a step");
    // The metric is fine, so the drill recovers at once; it cost no budget.
    wait_until("the drill to recover", LONG, || {
        rc.log().contains("firing → recovered")
    });
    let status = rc.cli(&["status", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).expect("json");
    assert_eq!(v["actions_left_this_hour"], 5);

    // A real drill runs the steps, even during the cooldown.
    let out = rc.cli(&["fire", "r"], &tok);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("opened: the rule's actions run now"),
        "{}",
        out.stdout
    );
    wait_until("the step to run", LONG, || recorded(&rec).len() == 2);
    let out = rc.cli(&["fire", "nope"], &tok);
    assert!(out.stderr.contains("unknown rule `nope`"), "{}", out.stderr);
    assert_eq!(recorded(&rec).len(), 2, "ran once");
}
