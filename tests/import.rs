//! `ripcord import` over real public rule files (tests/import/corpus, with
//! their origin in SOURCES.md): everything converts, the output passes
//! `ripcord check` as one set and rehearses with `ripcord test`; what
//! cannot be converted is listed with its reason and the exit code says so.

use std::path::PathBuf;

use crate::support::{files, ripcord_in};

fn corpus() -> Vec<PathBuf> {
    let root = crate::support::root().join("tests/import/corpus");
    let mut out = Vec::new();
    for dir in ["awesome-prometheus-alerts", "kube-prometheus", "thanos"] {
        for e in std::fs::read_dir(root.join(dir)).expect("corpus dir") {
            out.push(e.expect("entry").path());
        }
    }
    out.sort();
    out
}

fn args(extra: &[&str], files: &[PathBuf]) -> Vec<String> {
    extra
        .iter()
        .map(|s| s.to_string())
        .chain(files.iter().map(|f| f.display().to_string()))
        .collect()
}

#[test]
fn the_corpus_converts_whole_checks_as_one_set_and_says_its_share() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out_dir = tmp.path().join("imported");
    let a = args(
        &["import", "--out", out_dir.to_str().expect("utf-8")],
        &corpus(),
    );
    let argv: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = ripcord_in(tmp.path(), &argv);
    assert_eq!(out.code, 0, "every rule converts:\n{}", out.stderr);
    let summary = out.stderr.lines().last().unwrap_or_default().to_string();
    assert!(
        summary.starts_with("imported 503 of 503 alerting rules (100.0%;")
            && summary
                .ends_with("from 33 file(s); 0 skipped; 11 recording rule(s) stay in Prometheus"),
        "{summary}"
    );
    // One file per input, and the notifier they page.
    let mut written: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("out dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written.len(),
        34,
        "33 inputs and the notifiers: {written:?}"
    );
    for f in [
        "alertmanager-prometheusRule.yaml",
        "imported-notifiers.yaml",
        "node-exporter.yaml",
        "alerts.yaml",
    ] {
        assert!(written.iter().any(|w| w == f), "{f} in {written:?}");
    }
    let check = ripcord_in(tmp.path(), &["check", "imported"]);
    assert_eq!(check.code, 0, "{}{}", check.stdout, check.stderr);
    assert!(
        check
            .stdout
            .starts_with("ok: 34 files, 503 rules, 0 actions, 1 notifier (0 warnings)"),
        "{}",
        check.stdout
    );
    // No action is invented.
    for f in &written {
        let text = std::fs::read_to_string(out_dir.join(f)).expect("read");
        assert!(!text.contains("actions:"), "{f} invents no action");
    }
    // To stdout: one file, the same rules.
    let a = args(&["import"], &corpus());
    let argv: Vec<&str> = a.iter().map(String::as_str).collect();
    let one = ripcord_in(tmp.path(), &argv);
    assert_eq!(one.code, 0, "{}", one.stderr);
    std::fs::write(tmp.path().join("one.yaml"), &one.stdout).expect("write");
    let check = ripcord_in(tmp.path(), &["check", "one.yaml"]);
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert!(check.stdout.contains("503 rules"), "{}", check.stdout);
    // Names are unique: one alert name, two severities, in one group.
    assert!(one
        .stdout
        .contains("- name: AlertmanagerClusterFailedToSendAlerts\n"));
    assert!(one
        .stdout
        .contains("- name: AlertmanagerClusterFailedToSendAlerts-warning\n"));
    // A comparison with a number keeps its value: query and condition.
    assert!(
        one.stdout.contains("condition: value > 0.01"),
        "{}",
        one.stdout
    );
    assert!(one
        .stdout
        .contains("summary: Host out of memory (instance {{ labels.instance }})"));
}

#[test]
fn imported_rules_rehearse_with_ripcord_test() {
    let tmp = tempfile::tempdir().expect("tmp");
    let a = args(&["import", "--out", "imported"], &corpus());
    let argv: Vec<&str> = a.iter().map(String::as_str).collect();
    assert_eq!(ripcord_in(tmp.path(), &argv).code, 0);
    std::fs::write(
        tmp.path().join("imported/imported.test.yaml"),
        r#"rule_files: [alertmanager-prometheusRule.yaml, node-exporter.yaml, imported-notifiers.yaml]
tests:
  - name: a failing integration pages after 5m, only for its own instance
    step: 1m
    values:
      'AlertmanagerClusterFailedToSendAlerts.value{namespace="monitoring",service="am",integration="slack"}': "0.001 0.02x7"
      'AlertmanagerClusterFailedToSendAlerts.value{namespace="monitoring",service="am",integration="email"}': "0.001x8"
    expect:
      - {at: 5m, rule: 'AlertmanagerClusterFailedToSendAlerts{integration="slack",namespace="monitoring",service="am"}', state: pending}
      - {at: 6m, rule: 'AlertmanagerClusterFailedToSendAlerts{integration="slack",namespace="monitoring",service="am"}', state: firing, actions: [], pages: [imported]}
      - {at: 7m, rule: 'AlertmanagerClusterFailedToSendAlerts{integration="email",namespace="monitoring",service="am"}', state: ok, pages: []}
  - name: an alert-style rule fires for the series its filter returns, after its for
    step: 1m
    values:
      'HostOutOfMemory.value{instance="db-1:9100",nodename="db-1"}': "_x2 4x4"
    expect:
      - {at: 3m, rule: 'HostOutOfMemory{instance="db-1:9100",nodename="db-1"}', state: pending}
      - {at: 4m, rule: 'HostOutOfMemory{instance="db-1:9100",nodename="db-1"}', state: firing, pages: [imported]}
"#,
    )
    .expect("write test");
    let out = ripcord_in(tmp.path(), &["test", "imported/imported.test.yaml"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("2 passed, 0 failed"), "{}", out.stdout);
}

#[test]
fn what_cannot_be_converted_is_listed_and_unreadable_input_is_exit_2() {
    let dir = files(&[
        (
            "mixed.yaml",
            "groups:\n  - name: g\n    rules:\n      - record: job:up:sum\n        expr: sum by (job) (up)\n      - alert: Broken\n        expr: 'sum(rate(x[5m]'\n      - alert: Fine\n        expr: up == 0\n        keep_firing_for: 10m\n        annotations:\n          summary: '{{ with query \"up\" }}{{ . }}{{ end }}'\n",
        ),
        ("not-yaml.yaml", "groups: [\n"),
    ]);
    let out = ripcord_in(dir.path(), &["import", "mixed.yaml"]);
    assert_eq!(out.code, 1, "some skipped: {}", out.stderr);
    assert!(
        out.stderr
            .contains("mixed.yaml: g/Broken: skipped: expr does not parse:"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("Fine: note: keep_firing_for: 10m is not supported"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Fine: note: summary not converted"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("imported 1 of 2 alerting rules (50.0%; 1 alert-style, 0 with a condition) from 1 file(s); 1 skipped; 1 recording rule(s) stay in Prometheus"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("- name: Fine"), "{}", out.stdout);
    assert!(!out.stdout.contains("Broken"), "{}", out.stdout);
    let bad = ripcord_in(dir.path(), &["import", "not-yaml.yaml"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("not-yaml.yaml: not YAML"),
        "{}",
        bad.stderr
    );
    let missing = ripcord_in(dir.path(), &["import", "nope.yaml"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
}
