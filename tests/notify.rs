//! Pages through the daemon: contract doubles for PagerDuty and Slack (see
//! `support::receivers` for the contracts they enforce), a webhook receiver
//! that checks the HMAC signature, the outbox across a SIGKILL, and a real
//! Alertmanager (Debian's package) forwarding ripcord's alerts to a webhook.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::live::*;
use crate::support::receivers::{self, accepted};

const PD_KEY: &str = "0123456789abcdef0123456789abcdef";
const LONG: Duration = Duration::from_secs(60);

fn rules(notifiers: &str, notify: &str) -> String {
    format!(
        "notifiers:\n{notifiers}actions:\n  undo:\n    steps: [{{exec: {{argv: [/bin/true]}}}}]\nrules:\n  - name: checkout-errors\n    every: 1s\n    queries: {{ratio: max(demo_errors_ratio)}}\n    condition: ratio > 0.05\n    for: 1s\n    summary: \"checkout errors at {{{{ ratio | percent }}}}\"\n    actions: [undo]\n    notify: [{notify}]\n    verify: {{within: 60s}}\n    cooldown: 1h\n    runbook_url: https://runbooks.example/checkout\n"
    )
}

fn setup() -> (Exporter, Prometheus) {
    let exp = Exporter::start("demo_errors_ratio 0.001\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.001");
    (exp, prom)
}

fn class(e: &Value) -> String {
    e.pointer("/payload/class")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn pagerduty_gets_one_incident_with_a_stable_dedup_key_and_its_resolve() {
    let (exp, prom) = setup();
    // The first two requests are rate limited (429): retried, never doubled.
    let pd = receivers::pagerduty(2);
    let notifiers = format!(
        "  oncall:\n    pagerduty: {{routing_key: \"${{env:PD_KEY}}\", url: \"http://127.0.0.1:{}/v2/enqueue\"}}\n",
        pd.port
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules(&notifiers, "oncall"));
    rc.env.push(("PD_KEY".into(), PD_KEY.into()));
    rc.start();
    exp.set("demo_errors_ratio 0.2\n");
    wait_until("the rollback's page", LONG, || {
        accepted(&pd)
            .iter()
            .any(|e| class(e) == "actions_succeeded")
    });
    exp.set("demo_errors_ratio 0.001\n");
    wait_until("the resolve", LONG, || {
        accepted(&pd).iter().any(|e| e["event_action"] == "resolve")
    });
    assert_eq!(pd.violations(), Vec::<String>::new());
    let events = accepted(&pd);
    let key = events[0]["dedup_key"]
        .as_str()
        .expect("dedup_key")
        .to_string();
    assert!(key.starts_with("checkout-errors-"), "{key}");
    assert!(
        events.iter().all(|e| e["dedup_key"] == key.as_str()),
        "one key for the incident: {events:#?}"
    );
    let classes: Vec<String> = events
        .iter()
        .filter(|e| e["event_action"] == "trigger")
        .map(class)
        .collect();
    assert_eq!(
        classes.iter().filter(|c| *c == "opened").count(),
        1,
        "{classes:?}"
    );
    for c in ["step_started", "step_succeeded", "actions_succeeded"] {
        assert!(
            classes.contains(&c.to_string()),
            "{c} missing from {classes:?}"
        );
    }
    let opened = events
        .iter()
        .find(|e| class(e) == "opened")
        .expect("opened");
    assert_eq!(opened["payload"]["severity"], "critical");
    assert_eq!(opened["payload"]["component"], "checkout-errors");
    assert_eq!(
        opened["payload"]["custom_details"]["values"]["ratio"],
        "0.2"
    );
    assert!(opened["payload"]["summary"]
        .as_str()
        .is_some_and(|s| s.contains("checkout errors at 20%")));
    assert_eq!(
        events.last().map(|e| e["event_action"].clone()),
        Some(Value::from("resolve"))
    );
    assert!(
        pd.requests().len() >= events.len() + 2,
        "the 429s were retried"
    );
    assert!(
        !rc.log().contains(PD_KEY),
        "the routing key leaked into the log"
    );
}

#[test]
fn slack_retry_after_is_honoured_a_revoked_hook_is_not_retried_and_the_url_stays_secret() {
    let (exp, prom) = setup();
    let slack = receivers::slack(1, 2);
    let secret_path = "/services/T000/B000/XXXXSECRETXXXX";
    let notifiers = "  chan:\n    slack: {webhook_url: \"${env:SLACK_URL}\"}\n  gone:\n    slack: {webhook_url: \"${env:SLACK_GONE}\"}\n    events: [opened, recovered]\n";
    let mut rc = Ripcord::new(&prom.url(), "", &rules(notifiers, "chan, gone"));
    rc.env.push((
        "SLACK_URL".into(),
        format!("http://127.0.0.1:{}{secret_path}", slack.port),
    ));
    rc.env.push((
        "SLACK_GONE".into(),
        format!("http://127.0.0.1:{}/gone", slack.port),
    ));
    rc.start();
    exp.set("demo_errors_ratio 0.2\n");
    let to_chan = || {
        slack
            .requests()
            .into_iter()
            .filter(|r| r.path == secret_path)
            .collect::<Vec<_>>()
    };
    wait_until("the opened page after the 429", LONG, || {
        to_chan().len() >= 2
    });
    let reqs = to_chan();
    let gap = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        gap >= Duration::from_millis(1900),
        "Retry-After: 2 not honoured: {gap:?}"
    );
    assert_eq!(
        reqs[0].body, reqs[1].body,
        "the retry resends the same page"
    );
    let first: Value = serde_json::from_str(&reqs[1].body).expect("json");
    let text = first["text"].as_str().expect("text");
    assert!(
        text.starts_with("[CRITICAL] checkout-errors opened: checkout errors at 20%"),
        "{text}"
    );
    let blocks = first["blocks"].to_string();
    assert!(blocks.contains("ripcord veto checkout-errors-"), "{blocks}");
    assert!(blocks.contains("ratio in Prometheus"), "{blocks}");
    assert!(
        blocks.contains("https://runbooks.example/checkout"),
        "{blocks}"
    );
    rc.wait_log(
        "page rejected by the receiver, not retried: HTTP 404: no_service",
        LONG,
    );
    exp.set("demo_errors_ratio 0.001\n");
    wait_until("the recovered page", LONG, || {
        to_chan().iter().any(|r| r.body.contains("recovered"))
    });
    wait_until("the recovered page to the revoked hook", LONG, || {
        slack
            .requests()
            .iter()
            .filter(|r| r.path == "/gone")
            .count()
            == 2
    });
    let gone: Vec<String> = slack
        .requests()
        .into_iter()
        .filter(|r| r.path == "/gone")
        .map(|r| r.body)
        .collect();
    assert_ne!(gone[0], gone[1], "a rejected page was sent again");
    assert_eq!(slack.violations(), Vec::<String>::new());
    assert!(
        !rc.log().contains("XXXXSECRET"),
        "the webhook URL leaked into the log"
    );
}

#[test]
fn the_webhook_body_is_versioned_and_signed_with_hmac_sha256() {
    let (exp, prom) = setup();
    let hook = receivers::recorder();
    let notifiers = format!(
        "  bot:\n    webhook: {{url: \"http://127.0.0.1:{}/ripcord\", secret: \"${{env:HOOK_SECRET}}\"}}\n    min_severity: error\n",
        hook.port
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules(&notifiers, "bot"));
    rc.env.push(("HOOK_SECRET".into(), "sh4red-s3cret".into()));
    rc.start();
    exp.set("demo_errors_ratio 0.2\n");
    wait_until("the opened page", LONG, || {
        hook.requests()
            .iter()
            .any(|r| r.body.contains("\"event\":\"opened\""))
    });
    let r = hook
        .requests()
        .into_iter()
        .find(|r| r.body.contains("\"event\":\"opened\""))
        .expect("opened");
    assert_eq!(
        r.headers.get("x-ripcord-signature").map(String::as_str),
        Some(ripcord::notify::webhook::sign(b"sh4red-s3cret", r.body.as_bytes()).as_str())
    );
    assert_eq!(
        r.headers.get("x-ripcord-event").map(String::as_str),
        Some("opened")
    );
    let v: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["version"], "1");
    assert_eq!(v["rule"], "checkout-errors");
    assert!(v["incident"]
        .as_str()
        .is_some_and(|i| i.starts_with("checkout-errors-")));
    assert_eq!(v["values"]["ratio"], 0.2);
    assert!(!rc.log().contains("sh4red-s3cret"));
}

#[test]
fn undelivered_pages_survive_a_sigkill_and_go_out_after_the_restart() {
    let (exp, prom) = setup();
    let port = free_port();
    let notifiers = format!(
        "  oncall:\n    pagerduty: {{routing_key: \"${{env:PD_KEY}}\", url: \"http://127.0.0.1:{port}/v2/enqueue\"}}\n"
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules(&notifiers, "oncall"));
    rc.env.push(("PD_KEY".into(), PD_KEY.into()));
    rc.start();
    exp.set("demo_errors_ratio 0.2\n");
    // PagerDuty is unreachable: the page waits in the outbox on disk.
    rc.wait_log("page not delivered, retrying", LONG);
    let outbox = rc.path("state/outbox");
    let pages = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                    .count()
            })
            .unwrap_or(usize::MAX)
    };
    assert!(pages(&outbox) > 0);
    rc.signal(nix::sys::signal::Signal::SIGKILL);

    let pd = receivers::pagerduty_on(
        std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind"),
        0,
    );
    rc.start();
    rc.wait_log("outbox: resuming undelivered pages", LONG);
    wait_until("the opened page", LONG, || {
        accepted(&pd).iter().any(|e| class(e) == "opened")
    });
    wait_until("the outbox to drain", LONG, || pages(&outbox) == 0);
    let opened = accepted(&pd)
        .iter()
        .filter(|e| class(e) == "opened")
        .count();
    assert_eq!(opened, 1);
    assert_eq!(pd.violations(), Vec::<String>::new());
}

struct Alertmanager {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alertmanager(hook_port: u16) -> Alertmanager {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("am.yml"),
        format!("route: {{receiver: hook, group_by: [alertname, incident], group_wait: 0s, group_interval: 1s, repeat_interval: 1h}}\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: \"http://127.0.0.1:{hook_port}/hook\", send_resolved: true}}]\n"),
    )
    .expect("config");
    let port = free_port();
    let child = Command::new("prometheus-alertmanager")
        .arg(format!(
            "--config.file={}",
            dir.path().join("am.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager runs (apt-get install prometheus-alertmanager)");
    wait_until("Alertmanager to be ready", LONG, || {
        http_get(port, "/-/ready").is_some_and(|(s, _)| s == 200)
    });
    Alertmanager {
        port,
        child,
        _dir: dir,
    }
}

#[test]
fn a_real_alertmanager_forwards_ripcords_alert_and_its_resolve() {
    let (exp, prom) = setup();
    let hook = receivers::recorder();
    let am = alertmanager(hook.port);
    let notifiers = format!(
        "  team-am:\n    alertmanager: {{urls: [\"http://127.0.0.1:{}\"]}}\n    events: [opened, recovered, closed]\n",
        am.port
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules(&notifiers, "team-am"));
    rc.start();
    exp.set("demo_errors_ratio 0.2\n");
    let forwarded = |status: &str| -> Option<Value> {
        hook.requests().into_iter().rev().find_map(|r| {
            let v: Value = serde_json::from_str(&r.body).ok()?;
            (v["status"] == status).then_some(v)
        })
    };
    wait_until("Alertmanager to forward the firing alert", LONG, || {
        forwarded("firing").is_some()
    });
    let firing = forwarded("firing").expect("firing");
    let alert = &firing["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "checkout-errors");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["labels"]["source"], "ripcord");
    assert!(alert["labels"]["incident"]
        .as_str()
        .is_some_and(|i| i.starts_with("checkout-errors-")));
    assert_eq!(alert["annotations"]["summary"], "checkout errors at 20%");
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "https://runbooks.example/checkout"
    );
    assert!(alert["generatorURL"]
        .as_str()
        .is_some_and(|u| u.starts_with(&prom.url())));

    exp.set("demo_errors_ratio 0.001\n");
    wait_until("Alertmanager to forward the resolve", LONG, || {
        forwarded("resolved").is_some()
    });
    let resolved = forwarded("resolved").expect("resolved");
    assert_eq!(
        resolved["alerts"][0]["labels"]["incident"],
        alert["labels"]["incident"]
    );
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
}

/// A receiver that accepts connections, reads the request and never
/// answers, until the test ends.
fn hung_receiver() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(conn);
        }
    });
    (port, accepted)
}

#[test]
fn a_receiver_that_never_answers_delays_only_its_own_pages() {
    let (exp, prom) = setup();
    let (hung, accepted) = hung_receiver();
    let hook = receivers::recorder();
    // The hung receiver is first: its page is queued before the other's.
    let notifiers = format!(
        "  hung: {{webhook: {{url: \"http://127.0.0.1:{hung}/hook\"}}}}\n  hook: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}}}\n",
        hook.port
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules(&notifiers, "hung, hook"));
    rc.start();
    exp.set("demo_errors_ratio 0.2\n");
    wait_until("the hung receiver to hold a request", LONG, || {
        accepted.load(std::sync::atomic::Ordering::SeqCst) > 0
    });
    // A request to a receiver times out after 10 s: only a delivery that
    // does not wait behind the hung one arrives within a second or two of
    // the hung receiver taking its copy of the same page.
    wait_until(
        "the other receiver's opened page while the first still hangs",
        Duration::from_secs(2),
        || {
            hook.requests()
                .iter()
                .any(|r| r.body.contains("\"event\":\"opened\""))
        },
    );
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the hung receiver still holds its one request"
    );
}
