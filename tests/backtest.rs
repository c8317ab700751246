//! `ripcord backtest` against a real Prometheus holding history the test
//! wrote, and the same series through `ripcord test`: one core, two drivers.

use std::time::Duration;

use crate::support::live::*;

/// The history, minute by minute from its start: `None` is no sample.
fn value_at(minute: f64) -> Option<f64> {
    match minute {
        m if (10.0..11.0).contains(&m) => Some(0.2), // a 1-minute blip
        m if (20.0..26.0).contains(&m) => Some(0.2), // a sustained breach
        m if (30.0..33.0).contains(&m) => Some(0.3), // again, inside the cooldown
        m if (40.0..50.0).contains(&m) => None,      // the exporter was down
        _ => Some(0.001),
    }
}

const RULES: &str = "actions:\n  undo: {steps: [{exec: {argv: [/bin/false]}}]}\nrules:\n  - name: errors\n    every: 30s\n    queries: {ratio: max(demo_errors_ratio)}\n    condition: ratio > 0.05\n    for: 2m\n    actions: [undo]\n    cooldown: 10m\n  - name: quiet\n    every: 30s\n    queries: {ratio: max(demo_errors_ratio)}\n    condition: ratio > 0.5\n    for: 1m\n    actions: [undo]\n";

/// The start of the test's history: a whole minute three hours ago.
fn history_start() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    (now - 3 * 3600) / 60 * 60
}

fn rfc(s: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s)).to_string()
}

/// Seconds since the epoch of a timeline entry's `at`.
fn epoch_secs(entry: &serde_json::Value) -> u64 {
    humantime::parse_rfc3339(entry["at"].as_str().expect("at"))
        .expect("time")
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs()
}

/// `ripcord backtest --json` over `[from, from + secs]` at 30 s steps, once
/// the history is queryable (freshly loaded blocks can take a moment): the
/// first answer that exits 0 and shows an incident, within a deadline.
fn backtest_json(rc: &Ripcord, from: u64, secs: u64) -> serde_json::Value {
    let (from, to) = (rfc(from), rfc(from + secs));
    let args = [
        "backtest", "--from", &from, "--to", &to, "--step", "30s", "--json",
    ];
    let mut out = rc.cli(&args, &[]);
    wait_until(
        "the history to be queryable",
        Duration::from_secs(30),
        || {
            if out.code == 0 && out.stdout.contains("→ firing") {
                return true;
            }
            out = rc.cli(&args, &[]);
            false
        },
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("json")
}

#[test]
fn backtest_reports_the_incidents_the_core_predicts_and_matches_ripcord_test() {
    // An hour of 15 s samples, ending two hours ago.
    let start = history_start();
    let mut om = String::from("# TYPE demo_errors_ratio gauge\n");
    for i in 0..=240u64 {
        let t = start + i * 15;
        if let Some(v) = value_at(i as f64 / 4.0) {
            om.push_str(&format!("demo_errors_ratio {v} {t}\n"));
        }
    }
    om.push_str("# EOF\n");
    let prom = Prometheus::with_history(&om);
    let rc = Ripcord::new(&prom.url(), "", RULES);
    let v = backtest_json(&rc, start, 3600);
    let at = |what: &str| -> Vec<u64> {
        v["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .filter(|e| e["what"] == what)
            .map(|e| epoch_secs(e) - start)
            .collect()
    };
    // The blip at 10m went pending and back; the breach at 20m opened the
    // one incident at 22m (for: 2m) and recovered at 26m; the breach at 30m
    // fell in the cooldown; the gap held.
    assert_eq!(at("ok → pending"), [600, 1200], "{v:#}");
    assert_eq!(at("pending → ok"), [660], "{v:#}");
    assert_eq!(at("pending → firing"), [1320], "{v:#}");
    assert_eq!(at("would run undo"), [1320], "{v:#}");
    assert_eq!(at("firing → recovered"), [1560], "{v:#}");
    let suppressed = v["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| {
            e["what"]
                .as_str()
                .is_some_and(|w| w.starts_with("breach suppressed by cooldown"))
        })
        .count();
    assert_eq!(suppressed, 1, "{v:#}");
    let s = &v["summaries"][0];
    assert_eq!(s["rule"], "errors");
    assert_eq!(v["summaries"][1]["incidents"], 0);
    assert_eq!(s["incidents"], 1);
    assert_eq!(s["would_run"], serde_json::json!(["undo"]));
    // 45:00 to 49:30: past the 5-minute lookback, no data.
    assert_eq!(s["no_data_steps"], 10, "{s:#}");
    assert_eq!(s["ranges"]["ratio"], serde_json::json!([0.001, 0.3]));

    // The plot: one panel per rule, readable text.
    let svg = rc.path("backtest.svg");
    let out = rc.cli(
        &[
            "backtest",
            "--from",
            &rfc(start),
            "--to",
            &rfc(start + 3600),
            "--step",
            "30s",
            "--plot",
            &svg.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("errors: 1 incident(s), 240s with an incident open, would run: undo"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("quiet: never fired; the condition held at most 0s in a row (for: 60s)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("closest: ratio came to 0.3 (threshold 0.5)"),
        "{}",
        out.stdout
    );
    let text = std::fs::read_to_string(&svg).expect("plot written");
    // To look at it: RIPCORD_KEEP_PLOT=/tmp/plot.svg cargo test backtest
    if let Some(keep) = std::env::var_os("RIPCORD_KEEP_PLOT") {
        std::fs::write(keep, &text).expect("keep the plot");
    }
    assert!(
        text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
        "not an SVG"
    );
    assert_eq!(text.matches("incident(s) — ").count(), 2, "two panels");
    assert!(
        text.contains("errors — 1 incident(s) — ratio &gt; 0.05")
            || text.contains("errors — 1 incident(s) — ratio > 0.05"),
        "caption"
    );
    assert!(text.contains("ratio threshold 0.05"), "threshold legend");

    // The same series, as Prometheus evaluates it every 30 s, through `ripcord test`.
    let mut series = Vec::new();
    for k in 0..=120u64 {
        let t = k as f64 * 0.5;
        // Lookback: the latest sample at most 5 minutes old.
        let latest = (0..=20).map(|back| t - back as f64 * 0.25).find_map(|m| {
            if m >= 0.0 {
                value_at(m).map(|v| (m, v))
            } else {
                None
            }
        });
        series.push(match latest {
            Some((m, v)) if t - m < 5.0 => v.to_string(),
            _ => "_".into(),
        });
    }
    std::fs::write(rc.path("rules.d/rules.test.yaml"), format!(
        "rule_files: [rules.yaml]\ntests:\n  - name: the same hour\n    step: 30s\n    values: {{errors.ratio: \"{}\"}}\n    expect:\n      - {{at: 10m, rule: errors, state: pending}}\n      - {{at: 11m, rule: errors, state: ok, actions: []}}\n      - {{at: 22m, rule: errors, state: firing, actions: [undo]}}\n      - {{at: 26m, rule: errors, state: recovered}}\n      - {{at: 33m, rule: errors, state: recovered, actions: [undo]}}\n      - {{at: 60m, rule: errors, actions: [undo], events: []}}\n",
        series.join(" ")
    )).expect("test file");
    let t = rc.cli(
        &[
            "test",
            &rc.path("rules.d/rules.test.yaml").display().to_string(),
        ],
        &[],
    );
    assert_eq!(t.code, 0, "{}", t.stdout);
    assert!(t.stdout.contains("1 passed, 0 failed"), "{}", t.stdout);
}

#[test]
fn backtest_times_and_errors_are_clear() {
    let rc = Ripcord::new("http://127.0.0.1:1", "", RULES);
    let out = rc.cli(&["backtest", "--from", "yesterday"], &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("invalid time `yesterday`: expected RFC 3339"),
        "{}",
        out.stderr
    );
    let out = rc.cli(&["backtest", "--from", "-1h", "--to", "-2h"], &[]);
    assert!(
        out.stderr.contains("--to must be after --from"),
        "{}",
        out.stderr
    );
    let out = rc.cli(&["backtest", "--from", "-1h", "nope"], &[]);
    assert!(out.stderr.contains("unknown rule `nope`"), "{}", out.stderr);
    let out = rc.cli(&["backtest", "--from", "-1h"], &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("Prometheus unreachable"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_by_rule_backtests_per_instance() {
    // Half an hour of 15 s samples for two domains; `b` breaches from 10m
    // to 20m, `a` never.
    let start = history_start();
    let mut om = String::from("# TYPE demo_errors_ratio gauge\n");
    for i in 0..=120u64 {
        let t = start + i * 15;
        let b = if (40..80).contains(&i) { 0.2 } else { 0.001 };
        om.push_str(&format!("demo_errors_ratio{{domain=\"a\"}} 0.001 {t}\n"));
        om.push_str(&format!("demo_errors_ratio{{domain=\"b\"}} {b} {t}\n"));
    }
    om.push_str("# EOF\n");
    let prom = Prometheus::with_history(&om);
    let rc = Ripcord::new(
        &prom.url(),
        "",
        "rules:\n  - name: errors\n    every: 30s\n    queries: {ratio: max by (domain) (demo_errors_ratio)}\n    by: [domain]\n    condition: ratio > 0.05\n    for: 2m\n",
    );
    let v = backtest_json(&rc, start, 1800);
    let firing: Vec<(String, u64)> = v["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| e["what"] == "pending → firing")
        .map(|e| {
            let at = epoch_secs(e);
            (
                e["rule"].as_str().unwrap_or_default().to_string(),
                at - start,
            )
        })
        .collect();
    assert_eq!(
        firing,
        [("errors{domain=\"b\"}".to_string(), 720)],
        "b alone fires, 2m after its breach began: {v:#}"
    );
    assert_eq!(v["summaries"][0]["incidents"], 1, "{v:#}");
    assert_eq!(
        v["summaries"][0]["error_steps"], 0,
        "several series are instances, not errors"
    );
}
