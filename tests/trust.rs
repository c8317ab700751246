//! Never silently unprotected, never twice (issue 13), against a real
//! Prometheus scraping an exporter the test controls:
//! - a start that fails leaves the state directory as it found it, and the
//!   next start still has the open incident, the cooldown, the budget and
//!   the interrupted step, which never runs again;
//! - a crash at each write boundary of an incident's opening loses no page
//!   and delivers none twice;
//! - a rule whose query returns two series pages, never acts, and pages
//!   again when it evaluates;
//! - a truncated rule file or a rules directory moved away and back never
//!   loses the incident or runs the rollback again;
//! - a full state directory runs nothing and says why, and work resumes
//!   when space comes back.
//!
//! Receivers: the PagerDuty double enforces the Events API v2 contract
//! (tests/support/receivers.rs); the webhook double records every request.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::live::{
    http_get, recorded, recorder, wait_until, Exporter, Prometheus, Ripcord,
};
use crate::support::receivers::{self, accepted, Double};

const LONG: Duration = Duration::from_secs(60);
const PD_KEY: &str = "0123456789abcdef0123456789abcdef";

fn setup(metrics: &str) -> (Exporter, Prometheus) {
    let exp = Exporter::start(metrics);
    let prom = Prometheus::start(&[exp.port()]);
    (exp, prom)
}

fn status(rc: &Ripcord) -> Value {
    let out = rc.cli(&["status", "--json"], &[]);
    serde_json::from_str(&out.stdout).unwrap_or(Value::Null)
}

fn rule_status(rc: &Ripcord, rule: &str) -> Value {
    status(rc)["rules"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == rule).cloned())
        .unwrap_or(Value::Null)
}

fn starts(rec: &std::path::Path, name: &str) -> usize {
    recorded(rec)
        .iter()
        .filter(|(n, what, _)| n == name && what == "start")
        .count()
}

/// The webhook double's requests as (incident or rule, event) → count.
fn webhook_pages(hook: &Double) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for r in hook.requests() {
        let Ok(v) = serde_json::from_str::<Value>(&r.body) else {
            continue;
        };
        let subject = v["incident"]
            .as_str()
            .or(v["rule"].as_str())
            .unwrap_or("ripcord")
            .to_string();
        let event = v["event"].as_str().unwrap_or_default().to_string();
        *out.entry((subject, event)).or_insert(0) += 1;
    }
    out
}

/// PagerDuty events accepted, as (dedup_key, event or "resolve") → count.
fn pd_pages(pd: &Double) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for e in accepted(pd) {
        let key = e["dedup_key"].as_str().unwrap_or_default().to_string();
        let event = if e["event_action"] == "resolve" {
            "resolve".to_string()
        } else {
            e.pointer("/payload/custom_details/event")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        *out.entry((key, event)).or_insert(0) += 1;
    }
    out
}

/// A webhook receiver and a recording `exec` step, and a rule file with one
/// rule `name` on `max(metric) > 0` that runs it and pages the receiver.
struct Scene {
    hook: Double,
    rec: std::path::PathBuf,
    script: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().expect("tempdir");
        Scene {
            hook: receivers::recorder(),
            rec: dir.path().join("rec"),
            script: recorder(dir.path()),
            _dir: dir,
        }
    }

    fn rules(&self, name: &str, metric: &str, extra: &str) -> String {
        format!(
            "notifiers:\n  hook: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}}}\n\
actions:\n  undo: {{steps: [{{exec: {{argv: [\"{}\", undo]}}}}]}}\n\
rules:\n  - name: {name}\n    every: 1s\n    queries: {{v: max({metric})}}\n    condition: v > 0\n    actions: [undo]\n    notify: [hook]\n{extra}",
            self.hook.port,
            self.script.display()
        )
    }
}

fn metric(rc: &Ripcord, name: &str) -> Option<f64> {
    let (_, text) = http_get(rc.listen, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_failed_start_changes_nothing_and_the_next_start_keeps_incident_cooldown_budget_and_interrupted_step(
) {
    let (exp, prom) = setup("quick_breach 1\nslow_breach 0\n");
    let hook = receivers::recorder();
    let dir = tempfile::tempdir().expect("tempdir");
    let rec_script = recorder(dir.path());
    let rec = dir.path().join("rec");
    let rules = format!(
        "notifiers:\n  hook: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}}}\n\
actions:\n  quick: {{steps: [{{exec: {{argv: [\"{s}\", quick]}}}}]}}\n  slow: {{steps: [{{exec: {{argv: [\"{s}\", slow, \"60\"], timeout: 2m}}}}]}}\n\
rules:\n  - name: quick\n    every: 1s\n    queries: {{v: max(quick_breach)}}\n    condition: v > 0\n    actions: [quick]\n    notify: [hook]\n    cooldown: 1h\n  - name: slow\n    every: 1s\n    queries: {{v: max(slow_breach)}}\n    condition: v > 0\n    actions: [slow]\n    notify: [hook]\n",
        hook.port,
        s = rec_script.display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.env.push(("REC".into(), rec.display().to_string()));
    prom.wait_for("quick_breach", "\"1\"");
    rc.start();
    // `quick` rolls back and recovers: its cooldown runs for an hour.
    wait_until("quick's step", LONG, || {
        recorded(&rec)
            .iter()
            .any(|(n, w, _)| n == "quick" && w == "end")
    });
    exp.set("quick_breach 0\nslow_breach 0\n");
    wait_until("quick to recover", LONG, || {
        rule_status(&rc, "quick")["state"] == "recovered"
    });
    // `slow` starts its step, and ripcord is killed in the middle of it.
    exp.set("quick_breach 0\nslow_breach 1\n");
    wait_until("slow's step to start", LONG, || starts(&rec, "slow") == 1);
    rc.signal(nix::sys::signal::Signal::SIGKILL);

    let state = rc.path("state");
    let journal = state.join("journal.jsonl");
    let before = std::fs::read(&journal).expect("journal");

    // 1. The outbox path is a file: the start fails, naming it once, and
    //    the journal is left as it was.
    std::fs::rename(state.join("outbox"), state.join("outbox.aside")).expect("move outbox");
    std::fs::write(state.join("outbox"), "in the way").expect("file");
    let (code, err) = rc.start_fails();
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains(&format!("{}:", state.join("outbox").display())),
        "{err}"
    );
    assert!(err.contains("move it aside"), "{err}");
    assert_eq!(
        err.matches("File exists").count(),
        1,
        "the cause once: {err}"
    );
    assert!(!err.contains("os error"), "{err}");
    assert_eq!(
        std::fs::read(&journal).expect("journal"),
        before,
        "journal untouched"
    );
    std::fs::remove_file(state.join("outbox")).expect("rm");
    std::fs::rename(state.join("outbox.aside"), state.join("outbox")).expect("restore");

    // 2. The journal cannot be read: the start fails and changes nothing.
    std::fs::rename(&journal, state.join("journal.aside")).expect("move journal");
    std::fs::create_dir(&journal).expect("dir in the way");
    let (code, err) = rc.start_fails();
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("journal.jsonl: cannot be read"), "{err}");
    std::fs::remove_dir(&journal).expect("rmdir");
    std::fs::rename(state.join("journal.aside"), &journal).expect("restore");
    assert_eq!(std::fs::read(&journal).expect("journal"), before);

    // 3. A crash just before compaction, and a compaction's temp file left
    //    by a crash between its steps: neither loses anything.
    rc.env
        .push(("RIPCORD_TEST_CRASH_AT".into(), "before_compaction".into()));
    // It dies before it says it is running.
    rc.spawn();
    let st = rc.wait_exit(LONG);
    assert!(!st.success(), "killed at the crash point");
    rc.env.retain(|(k, _)| k != "RIPCORD_TEST_CRASH_AT");
    assert_eq!(std::fs::read(&journal).expect("journal"), before);
    std::fs::write(state.join("journal.jsonl.tmp"), "{\"type\":\"sta").expect("torn tmp");

    // A normal start: everything is still there, and nothing runs again.
    rc.start();
    rc.wait_log("was interrupted by a restart", LONG);
    let slow = rule_status(&rc, "slow");
    assert_eq!(slow["state"], "unrecovered", "{slow}");
    assert_eq!(slow["phase"], "interrupted", "{slow}");
    assert!(slow["incident"]
        .as_str()
        .is_some_and(|i| i.starts_with("slow-")));
    assert_eq!(
        rule_status(&rc, "quick")["state"],
        "recovered",
        "cooldown kept"
    );
    assert_eq!(
        status(&rc)["actions_left_this_hour"],
        3,
        "budget kept: two used"
    );
    let evals = |rc: &Ripcord| {
        http_get(rc.listen, "/metrics")
            .map(|(_, t)| {
                t.lines()
                    .filter(|l| l.starts_with("ripcord_evaluations_total{rule=\"slow\"}"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>()
            })
            .unwrap_or(0.0)
    };
    wait_until("three more evaluations of slow", LONG, || evals(&rc) >= 3.0);
    assert_eq!(
        starts(&rec, "slow"),
        1,
        "the interrupted step never runs again"
    );
    assert_eq!(starts(&rec, "quick"), 1);
    wait_until("the interrupted page", LONG, || {
        webhook_pages(&hook)
            .keys()
            .any(|(_, e)| e == "action_interrupted")
    });
}

/// Kills ripcord at `point` while an incident opens, starts it again, and
/// checks every page of the incident arrives exactly once per receiver.
fn crash_at(point: &str) {
    let (_exp, prom) = setup("demo_breach 1\n");
    let pd = receivers::pagerduty(0);
    let hook = receivers::recorder();
    let dir = tempfile::tempdir().expect("tempdir");
    let rec_script = recorder(dir.path());
    let rec = dir.path().join("rec");
    let rules = format!(
        "notifiers:\n  pd: {{pagerduty: {{routing_key: \"${{env:PD_KEY}}\", url: \"http://127.0.0.1:{}/v2/enqueue\"}}}}\n  hook: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}}}\n\
actions:\n  undo: {{steps: [{{exec: {{argv: [\"{}\", undo]}}}}]}}\n\
rules:\n  - name: demo\n    every: 1s\n    queries: {{v: max(demo_breach)}}\n    condition: v > 0\n    actions: [undo]\n    notify: [pd, hook]\n",
        pd.port,
        hook.port,
        rec_script.display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.env.push(("PD_KEY".into(), PD_KEY.into()));
    rc.env.push(("REC".into(), rec.display().to_string()));
    rc.env
        .push(("RIPCORD_TEST_CRASH_AT".into(), point.to_string()));
    prom.wait_for("demo_breach", "\"1\"");
    rc.start();
    let st = rc.wait_exit(LONG);
    assert!(!st.success(), "{point}: killed at the crash point");
    rc.env.retain(|(k, _)| k != "RIPCORD_TEST_CRASH_AT");
    rc.start();
    wait_until(&format!("{point}: the incident's pages"), LONG, || {
        let pages = webhook_pages(&hook);
        pages.keys().any(|(_, e)| e == "opened")
            && pages
                .keys()
                .any(|(_, e)| e == "action_interrupted" || e == "actions_succeeded")
    });
    wait_until(&format!("{point}: an empty outbox"), LONG, || {
        status(&rc)["outbox_pages"] == 0
    });
    // A crash can fall between a receiver's 2xx and the outbox noting it,
    // so a page may be delivered again: that is at-least-once, made
    // exactly-once per dedup key by the receivers' documented contracts.
    // PagerDuty merges triggers with one dedup_key into one alert; ripcord
    // gives each webhook page an `id` that every redelivery repeats. What
    // must never happen: a page lost, or the same event under two ids or
    // two incidents (a second alert).
    let mut ids: BTreeMap<(String, String), std::collections::BTreeSet<String>> = BTreeMap::new();
    for r in hook.requests() {
        let v: Value = serde_json::from_str(&r.body).expect("webhook JSON");
        let subject = v["incident"]
            .as_str()
            .or(v["rule"].as_str())
            .unwrap_or("ripcord");
        let id = v["id"].as_str().unwrap_or_default().to_string();
        assert!(
            !id.is_empty(),
            "{point}: a webhook page without an id: {}",
            r.body
        );
        ids.entry((
            subject.to_string(),
            v["event"].as_str().unwrap_or_default().to_string(),
        ))
        .or_default()
        .insert(id);
    }
    for (what, set) in &ids {
        assert_eq!(
            set.len(),
            1,
            "{point}: {what:?} went out as {} different pages",
            set.len()
        );
    }
    let incidents: std::collections::BTreeSet<&String> = ids
        .keys()
        .filter(|(_, e)| e == "opened")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(incidents.len(), 1, "{point}: one incident: {ids:?}");
    let paged = pd_pages(&pd);
    let keys: std::collections::BTreeSet<&String> = paged.keys().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 1, "{point}: one PagerDuty alert: {paged:?}");
    for event in ["opened", "step_started"] {
        if ids.keys().any(|(_, e)| e == event) {
            assert!(
                paged.keys().any(|(_, e)| e == event),
                "{point}: PagerDuty lost {event}: {paged:?}"
            );
        }
    }
    assert!(
        paged.keys().any(|(_, e)| e == "opened"),
        "{point}: PagerDuty got the opening: {paged:?}"
    );
    assert_eq!(pd.violations(), Vec::<String>::new());
    assert!(starts(&rec, "undo") <= 1, "{point}: the step ran twice");
}

#[test]
fn a_crash_at_each_write_boundary_of_an_opening_loses_no_page_and_doubles_none() {
    // After the state and its pages are journaled; before the first page
    // file is written; after the first of two; after both; after the step's
    // intent.
    for point in [
        "state_committed",
        "outbox_before_write",
        "page_pushed",
        "pages_pushed",
        "intent_written",
    ] {
        crash_at(point);
    }
}

#[test]
fn a_rule_whose_query_returns_two_series_pages_never_acts_and_pages_when_it_evaluates_again() {
    let (exp, prom) = setup("errs{pod=\"a\"} 5\nerrs{pod=\"b\"} 5\n");
    let pd = receivers::pagerduty(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let rec_script = recorder(dir.path());
    let rec = dir.path().join("rec");
    let rules = format!(
        "notifiers:\n  pd: {{pagerduty: {{routing_key: \"${{env:PD_KEY}}\", url: \"http://127.0.0.1:{}/v2/enqueue\"}}}}\n\
actions:\n  undo: {{steps: [{{exec: {{argv: [\"{}\", undo]}}}}]}}\n\
rules:\n  - name: errs\n    every: 1s\n    unevaluable_after: 3s\n    queries: {{v: errs}}\n    condition: v > 1\n    actions: [undo]\n    notify: [pd]\n",
        pd.port,
        rec_script.display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.env.push(("PD_KEY".into(), PD_KEY.into()));
    rc.env.push(("REC".into(), rec.display().to_string()));
    prom.wait_for("count(errs)", "\"2\"");
    rc.start();
    wait_until("the unevaluable page", Duration::from_secs(30), || {
        pd_pages(&pd)
            .keys()
            .any(|(k, e)| k == "ripcord-unevaluable-errs" && e == "rule_unevaluable")
    });
    let page = accepted(&pd)
        .into_iter()
        .find(|e| {
            e.pointer("/payload/custom_details/event") == Some(&Value::from("rule_unevaluable"))
        })
        .expect("page");
    let details = page
        .pointer("/payload/custom_details/details")
        .expect("details")
        .to_string();
    assert!(details.contains("query `v` returned 2 series"), "{details}");
    let st = rule_status(&rc, "errs");
    assert!(st["unevaluable_since"].is_string(), "{st}");
    assert_eq!(
        metric(&rc, "ripcord_rule_unevaluable{rule=\"errs\"}"),
        Some(1.0)
    );
    let text = rc.cli(&["status"], &[]).stdout;
    assert!(text.contains("UNEVALUABLE"), "{text}");

    // One series again (the other goes stale): it evaluates, and says so.
    exp.set("errs{pod=\"a\"} 0\n");
    wait_until("the page that it evaluates again", LONG, || {
        pd_pages(&pd)
            .keys()
            .any(|(k, e)| k == "ripcord-unevaluable-errs" && e == "resolve")
    });
    assert_eq!(
        metric(&rc, "ripcord_rule_unevaluable{rule=\"errs\"}"),
        Some(0.0)
    );
    assert_eq!(starts(&rec, "undo"), 0, "an unevaluable rule never acts");
    let unevaluable_pages = pd_pages(&pd)
        .get(&(
            "ripcord-unevaluable-errs".to_string(),
            "rule_unevaluable".to_string(),
        ))
        .copied();
    assert_eq!(unevaluable_pages, Some(1), "paged once");
    assert_eq!(pd.violations(), Vec::<String>::new());
}

#[test]
fn a_truncated_rule_file_or_a_moved_rules_directory_never_loses_the_incident() {
    let (_exp, prom) = setup("chat_errors 1\nother 0\n");
    let scene = Scene::new();
    let chat = scene.rules("chat", "chat_errors", "");
    let Scene {
        hook, rec, _dir, ..
    } = scene;
    let other = "rules:\n  - name: other\n    every: 1s\n    queries: {v: max(other)}\n    condition: v > 0\n";
    let mut rc = Ripcord::new(&prom.url(), "", &chat);
    std::fs::write(rc.path("rules.d/other.yaml"), other).expect("other rules");
    rc.env.push(("REC".into(), rec.display().to_string()));
    prom.wait_for("chat_errors", "\"1\"");
    rc.start();
    wait_until("the rollback", LONG, || starts(&rec, "undo") == 1);
    let incident = rule_status(&rc, "chat")["incident"]
        .as_str()
        .expect("incident open")
        .to_string();

    // An editor truncates the file, then writes it 1.5 s later.
    let file = rc.path("rules.d/rules.yaml");
    std::fs::write(&file, "").expect("truncate");
    wait_until("the reload to be refused", LONG, || {
        status(&rc)["last_reload"]["ok"] == false
    });
    let problems = status(&rc)["last_reload"]["problems"].to_string();
    assert!(problems.contains("rule chat is missing"), "{problems}");
    assert!(problems.contains(&incident), "{problems}");
    std::thread::sleep(Duration::from_millis(1500)); // the editor's 1.5 s: part of the scenario
    std::fs::write(&file, &chat).expect("write back");
    wait_until("the reload to succeed", LONG, || {
        status(&rc)["last_reload"]["ok"] == true
    });
    assert_eq!(rule_status(&rc, "chat")["incident"], incident.as_str());

    // The whole rules directory moves away, then back.
    let away = rc.path("rules.away");
    std::fs::rename(rc.path("rules.d"), &away).expect("move away");
    rc.hup();
    wait_until("the zero-rule reload to be refused", LONG, || {
        status(&rc)["last_reload"]["problems"]
            .to_string()
            .contains("now hold no rule")
    });
    assert_eq!(metric(&rc, "ripcord_last_reload_successful"), Some(0.0));
    std::fs::rename(&away, rc.path("rules.d")).expect("move back");
    rc.hup();
    wait_until("the reload to succeed", LONG, || {
        status(&rc)["last_reload"]["ok"] == true
    });
    assert_eq!(rule_status(&rc, "chat")["incident"], incident.as_str());
    assert_eq!(rule_status(&rc, "chat")["state"], "firing");
    assert_eq!(starts(&rec, "undo"), 1, "the rollback ran once");
    let pages = webhook_pages(&hook);
    let refused: usize = pages
        .iter()
        .filter(|((_, e), _)| e == "reload_failed")
        .map(|(_, n)| n)
        .sum();
    assert!(refused >= 2, "each refusal paged: {pages:?}");
    assert_eq!(
        pages.get(&(incident.clone(), "opened".to_string())),
        Some(&1),
        "one incident: {pages:?}"
    );
}

/// A tmpfs mounted for the test's state directory, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("mount runs")
            .success();
        assert!(ok, "mount a tmpfs (the tests run as root, as CI does)");
        Tmpfs(at.to_path_buf())
    }

    /// Fills it: writes until the filesystem says it is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("ballast")).expect("ballast");
        let block = vec![0u8; 4096];
        while f.write_all(&block).and_then(|()| f.sync_all()).is_ok() {}
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("ballast")).expect("rm ballast");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a daemon still holding files must not keep it mounted.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_state_directory_runs_nothing_pages_why_and_resumes_when_space_returns() {
    let (exp, prom) = setup("demo_breach 0\n");
    let scene = Scene::new();
    let rules = scene.rules("demo", "demo_breach", "    cooldown: 0s\n");
    let Scene {
        hook, rec, _dir, ..
    } = scene;
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.env.push(("REC".into(), rec.display().to_string()));
    let disk = Tmpfs::mount(&rc.path("state"), "256k");

    // Full at start: ripcord says exactly what to fix, and does not start.
    disk.fill();
    let (code, err) = rc.start_fails();
    assert_ne!(code, 0);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("free space"), "{err}");
    disk.free();

    rc.start();
    prom.wait_for("demo_breach", "\"0\"");
    wait_until("an evaluation", LONG, || {
        rule_status(&rc, "demo")["last_evaluation"].is_string()
    });
    // The disk fills up, then the rule breaches.
    disk.fill();
    exp.set("demo_breach 1\n");
    wait_until("the page saying why nothing runs", LONG, || {
        webhook_pages(&hook)
            .keys()
            .any(|(_, e)| e == "state_unwritable")
    });
    wait_until("the action to be reported not run", LONG, || {
        webhook_pages(&hook)
            .keys()
            .any(|(_, e)| e == "action_failed")
    });
    assert_eq!(
        starts(&rec, "undo"),
        0,
        "nothing runs without a durable record"
    );
    let st = status(&rc);
    assert!(
        st["state_dir_problem"]
            .as_str()
            .is_some_and(|p| p.contains("No space left")),
        "{st}"
    );
    assert_eq!(metric(&rc, "ripcord_state_dir_writable"), Some(0.0));
    let failed = hook
        .requests()
        .into_iter()
        .find(|r| r.body.contains("\"action_failed\""))
        .expect("action_failed page");
    assert!(
        failed.body.contains("never acts without a durable record"),
        "{}",
        failed.body
    );

    // Space comes back: ripcord says so, and the next breach rolls back.
    disk.free();
    wait_until("the page that it can write again", LONG, || {
        webhook_pages(&hook)
            .keys()
            .any(|(_, e)| e == "state_writable")
    });
    assert_eq!(metric(&rc, "ripcord_state_dir_writable"), Some(1.0));
    exp.set("demo_breach 0\n");
    wait_until("the failed incident to close", LONG, || {
        rule_status(&rc, "demo")["incident"].is_null()
    });
    exp.set("demo_breach 1\n");
    wait_until("the rollback", LONG, || starts(&rec, "undo") == 1);
    drop(rc);
}
