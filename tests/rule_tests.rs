//! `ripcord test`: the shipped runbook tests pass, a failing expectation is
//! reported with what was expected, what happened and a timeline, and a
//! broken test file is reported as file:line:col.

use crate::support::{files, ripcord, ripcord_in};

#[test]
fn the_shipped_runbook_tests_pass() {
    let out = ripcord(&["test", "rules/"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let last = out.stdout.lines().last().unwrap_or_default();
    let passed: usize = last
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed >= 40, "{last}");
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    assert!(!out.stdout.contains("FAIL"));
}

const RULES: &str = r#"
notifiers:
  oncall: {pagerduty: {routing_key: "${env:PD}"}}
actions:
  undo: {steps: [{kubectl: {rollout_undo: deployment/chat}}]}
rules:
  - name: chat-5xx
    queries:
      rate: sum(rate(http_requests_total{code=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))
    condition: rate > 0.005
    for: 1m
    actions: [undo]
    notify: [oncall]
    verify: {within: 5m}
"#;

#[test]
fn a_failing_expectation_says_what_was_expected_and_what_happened() {
    let dir = files(&[
        ("chat.yaml", RULES),
        (
            "chat.test.yaml",
            "rule_files: [chat.yaml]\ntests:\n  - name: \"fires at once (wrong: for is 1m)\"\n    step: 30s\n    values: {chat-5xx.rate: \"0.02x4\"}\n    expect:\n      - {at: 30s, rule: chat-5xx, state: firing, actions: [undo]}\n  - name: fires after 1m\n    step: 30s\n    values: {chat-5xx.rate: \"0.02x4\"}\n    expect:\n      - {at: 1m, rule: chat-5xx, state: firing, actions: [undo], pages: [oncall]}\n",
        ),
    ]);
    let out = ripcord_in(dir.path(), &["test", "chat.test.yaml"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let text = &out.stdout;
    assert!(
        text.contains("  FAIL  fires at once (wrong: for is 1m)"),
        "{text}"
    );
    assert!(
        text.contains("at 30s, chat-5xx: state: expected firing, got pending"),
        "{text}"
    );
    assert!(
        text.contains("at 30s, chat-5xx: actions run so far: expected [\"undo\"], got []"),
        "{text}"
    );
    assert!(text.contains("timeline:"), "{text}");
    assert!(text.contains("  PASS  fires after 1m"), "{text}");
    assert_eq!(text.lines().last(), Some("1 passed, 1 failed"));
}

#[test]
fn a_broken_test_file_is_reported_at_its_line() {
    let dir = files(&[
        ("chat.yaml", RULES),
        (
            "chat.test.yaml",
            "rule_files: [chat.yaml]\ntests:\n  - name: t\n    step: 30s\n    values:\n      chat-5xx.ratio: \"0.02x4\"\n    expect:\n      - {at: 45s, rule: chat-5xx, state: burning}\n",
        ),
        ("missing.test.yaml", "rule_files: [nope.yaml]\ntests: []\n"),
    ]);
    let out = ripcord_in(dir.path(), &["test", "."]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    let text = &out.stdout;
    assert!(
        text.contains("chat.test.yaml:6:7: rule `chat-5xx` has no query `ratio` (queries: rate)"),
        "{text}"
    );
    assert!(
        text.contains("chat.test.yaml:8:14: 45s is not an evaluation time (every 30s)"),
        "{text}"
    );
    assert!(
        text.contains("chat.test.yaml:8:42: unknown state `burning`"),
        "{text}"
    );
    assert!(
        text.contains("missing.test.yaml:1:14: no rule file matches `nope.yaml`"),
        "{text}"
    );
    assert!(
        text.ends_with("0 passed, 0 failed (2 file(s) could not be loaded)\n"),
        "{text}"
    );
    // `check` validates test files too.
    let out = ripcord_in(dir.path(), &["check", "."]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("chat.test.yaml:6:7: rule `chat-5xx` has no query `ratio`"),
        "{}",
        out.stderr
    );
}

#[test]
fn no_test_files_is_a_failure_not_a_silent_pass() {
    let dir = files(&[("chat.yaml", RULES)]);
    let out = ripcord_in(dir.path(), &["test", "."]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("no test files found"), "{}", out.stdout);
}

/// `up == 0` fires on zeros, and `for` counts only continuously observed
/// breach (tests/semantics/semantics.test.yaml says the cases).
#[test]
fn semantics_numeric_conditions_and_the_gap_rule() {
    let out = ripcord(&["test", "tests/semantics/"]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("up == 0 fires on a stream of zeros"));
    assert!(
        out.stdout.trim_end().ends_with("8 passed, 0 failed"),
        "{}",
        out.stdout
    );
}
