//! The malformed-file corpus under `tests/malformed/`: each file (or
//! directory) must make `ripcord check` exit 1 with exactly the expected
//! errors, each as `file:line:col: message`, and never panic.

use crate::support::ripcord_in;

/// (case, expected error lines: `file:line:col: start of the message`).
const CASES: &[(&str, &[&str])] = &[
    ("yaml-unclosed-flow.yaml", &["yaml-unclosed-flow.yaml:4:14: invalid YAML: did not find expected ',' or '}'"]),
    ("yaml-tab-indent.yaml", &["yaml-tab-indent.yaml:3:1: invalid YAML: found a tab character that violates indentation"]),
    ("yaml-bad-alias.yaml", &["yaml-bad-alias.yaml:3:14: invalid YAML: unknown anchor"]),
    ("yaml-duplicate-key.yaml", &["yaml-duplicate-key.yaml:2:5: invalid YAML: rules[0]: duplicate entry with key \"for\""]),
    ("yaml-two-documents.yaml", &["yaml-two-documents.yaml:1:1: invalid YAML: deserializing from YAML containing more than one document"]),
    ("not-utf8.yaml", &["not-utf8.yaml:1:1: not UTF-8 text"]),
    ("top-level-list.yaml", &["top-level-list.yaml:1:1: a rule file must be a mapping"]),
    ("unknown-top-level-key.yaml", &["unknown-top-level-key.yaml:5:1: unknown key `rulez` in a rule file"]),
    ("rules-not-a-list.yaml", &["rules-not-a-list.yaml:2:3: `rules:` must be a list of rules"]),
    ("unknown-rule-key.yaml", &["unknown-rule-key.yaml:5:5: unknown field `fro`, expected one of `name`"]),
    ("wrong-type-for.yaml", &["wrong-type-for.yaml:5:10: invalid type: sequence, expected a string, number or boolean"]),
    ("bad-duration-unit.yaml", &["bad-duration-unit.yaml:5:10: invalid duration `2x`"]),
    ("bad-duration-words.yaml", &["bad-duration-words.yaml:5:15: invalid duration `two hours`"]),
    ("every-zero.yaml", &["every-zero.yaml:5:12: every must be greater than 0"]),
    ("bad-cron.yaml", &["bad-cron.yaml:5:11: invalid cron expression `*/5 * * *`: has 4 fields, expected 6 or 7"]),
    ("every-and-cron.yaml", &["every-and-cron.yaml:2:5: rule `r`: set either `every:` or `cron:`, not both"]),
    ("bad-promql-paren.yaml", &["bad-promql-paren.yaml:4:16: invalid PromQL in query `rate`: unclosed left parenthesis"]),
    ("bad-promql-type.yaml", &["bad-promql-type.yaml:4:17: invalid PromQL in query `rate`: expected type matrix in call to function 'rate', got vector"]),
    ("bad-condition-syntax.yaml", &["bad-condition-syntax.yaml:4:16: invalid condition `rate > (0.5`"]),
    ("condition-not-boolean.yaml", &["condition-not-boolean.yaml:4:16: condition `rate * 2` must be true or false, but gives a number"]),
    ("condition-unknown-query.yaml", &["condition-unknown-query.yaml:4:16: condition uses `rat`, which is not a query of this rule (queries: rate)"]),
    ("condition-assignment.yaml", &["condition-assignment.yaml:4:16: invalid condition `rate = 0.5`: assigns to `rate`"]),
    ("alert-style-two-queries.yaml", &["alert-style-two-queries.yaml:3:15: rule `r` has no `condition:`, so it is alert-style: every series of its one query breaches; it has 2 queries: keep one, or add a condition"]),
    ("step-template-not-a-label.yaml", &["step-template-not-a-label.yaml:3:14: `{{ rule }}`: `{{ rule }}` is not `{{ labels.NAME }}`, the only substitution a step takes"]),
    ("by-bad-label.yaml", &[
        "by-bad-label.yaml:4:15: `1x` is not a label name (letters, digits and `_`, not starting with a digit)",
        "by-bad-label.yaml:4:21: `pod` is listed twice",
    ]),
    ("label-pattern-bad-regex.yaml", &["label-pattern-bad-regex.yaml:3:20: label_pattern `a(` is not a regular expression: unclosed group"]),
    ("missing-queries.yaml", &["missing-queries.yaml:2:5: missing field `queries`"]),
    ("empty-queries.yaml", &["empty-queries.yaml:3:14: rule `r` has no queries"]),
    ("bad-query-name.yaml", &[
        "bad-query-name.yaml:4:7: query name `5xx` must be an identifier",
        "bad-query-name.yaml:5:16: condition uses `rate`, which is not a query of this rule (queries: 5xx)",
    ]),
    ("bad-rule-name.yaml", &["bad-rule-name.yaml:2:11: invalid rule name `chat 5xx`"]),
    ("unknown-action.yaml", &["unknown-action.yaml:5:15: unknown action `rollback` (none are defined)"]),
    ("unknown-notifier.yaml", &["unknown-notifier.yaml:5:14: unknown notifier `oncall` (none are defined)"]),
    ("action-listed-twice.yaml", &["action-listed-twice.yaml:7:18: action `a` is listed twice"]),
    ("template-unknown-variable.yaml", &["template-unknown-variable.yaml:5:14: template uses `ratio`, which is not a query of this rule"]),
    ("template-unknown-filter.yaml", &["template-unknown-filter.yaml:5:14: invalid template: filter percentage is unknown"]),
    ("template-syntax.yaml", &["template-syntax.yaml:5:14: invalid template: unexpected end of input"]),
    ("no-data-bad-variant.yaml", &["no-data-bad-variant.yaml:5:14: unknown variant `skip`, expected one of `hold`, `ok`, `breach`"]),
    ("severity-bad-variant.yaml", &["severity-bad-variant.yaml:5:15: unknown variant `high`, expected one of `info`, `warning`, `error`, `critical`"]),
    ("approval-bad-on-timeout.yaml", &["approval-bad-on-timeout.yaml:5:41: unknown variant `maybe`, expected `proceed` or `abort`"]),
    ("approval-missing-timeout.yaml", &["approval-missing-timeout.yaml:5:16: missing field `timeout`"]),
    ("secret-empty-env.yaml", &["secret-empty-env.yaml:3:30: malformed secret reference `${env:}`"]),
    ("secret-unknown-source.yaml", &["secret-unknown-source.yaml:3:30: malformed secret reference `${vault:pd/key}`: unknown source `vault`"]),
    ("secret-unterminated.yaml", &["secret-unterminated.yaml:3:26: malformed secret reference: `${` without a closing `}`"]),
    ("secret-relative-file.yaml", &["secret-relative-file.yaml:3:26: malformed secret reference `${file:slack-url}`: the file path must be absolute"]),
    ("notifier-two-kinds.yaml", &["notifier-two-kinds.yaml:3:5: notifier `oncall` needs exactly one of `pagerduty`, `slack`, `webhook`, `alertmanager`"]),
    ("notifier-unknown-kind.yaml", &["notifier-unknown-kind.yaml:3:5: unknown field `email`, expected one of `pagerduty`, `slack`, `webhook`, `alertmanager`"]),
    ("step-no-kind.yaml", &["step-no-kind.yaml:4:9: a step needs one of `exec`, `kubectl`, `systemctl`, `file`, `http`"]),
    ("step-unknown-kind.yaml", &["step-unknown-kind.yaml:4:9: unknown field `ssh`, expected one of `exec`"]),
    ("action-no-steps.yaml", &["action-no-steps.yaml:3:12: action `a` has no steps"]),
    ("kubectl-no-verb.yaml", &["kubectl-no-verb.yaml:4:19: a kubectl step needs one of `rollout_undo`, `set_image`, `scale`"]),
    ("kubectl-bad-resource.yaml", &["kubectl-bad-resource.yaml:4:33: resource `chat` must be KIND/NAME"]),
    ("systemctl-two-verbs.yaml", &["systemctl-two-verbs.yaml:4:21: a systemctl step needs exactly one of `restart`, `stop`, `start`, `reload`, found `restart`, `stop`"]),
    ("systemctl-wait-over-timeout.yaml", &["systemctl-wait-over-timeout.yaml:4:47: wait is longer than the step's timeout"]),
    ("file-relative-path.yaml", &["file-relative-path.yaml:4:22: path `etc/default/app` must be absolute"]),
    ("exec-empty-argv.yaml", &["exec-empty-argv.yaml:4:22: argv needs at least the program to run"]),
    ("exec-reserved-env.yaml", &["exec-reserved-env.yaml:4:41: `RIPCORD_RULE`: RIPCORD_* variables are set by ripcord itself"]),
    ("http-bad-method.yaml", &["http-bad-method.yaml:4:24: unknown HTTP method `FETCH`"]),
    ("http-bad-status.yaml", &["http-bad-status.yaml:4:69: 999 is not an HTTP status code"]),
    ("duplicate-across-files", &[
        "duplicate-across-files/b.yaml:2:3: action `undo` is defined twice: first at duplicate-across-files/a.yaml:2:3",
        "duplicate-across-files/b.yaml:4:5: rule `r` is defined twice: first at duplicate-across-files/a.yaml:4:5",
    ]),
];

#[test]
fn every_malformed_file_is_reported_at_its_line_and_column() {
    let dir = crate::support::root().join("tests/malformed");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("corpus")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = CASES.iter().map(|(c, _)| c.to_string()).collect();
    listed.sort();
    assert_eq!(
        on_disk, listed,
        "every corpus file has expectations, and only those"
    );
    assert!(CASES.len() >= 30);

    let mut failures = Vec::new();
    for (case, expected) in CASES {
        let out = ripcord_in(&dir, &["check", case]);
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.contains(": warning: "))
            .collect();
        if out.code != 1 {
            failures.push(format!(
                "{case}: exit {} (want 1)\n{}",
                out.code, out.stderr
            ));
        }
        if out.stderr.contains("panicked") {
            failures.push(format!("{case}: panicked\n{}", out.stderr));
        }
        if errors.len() != expected.len()
            || !errors
                .iter()
                .zip(expected.iter())
                .all(|(got, want)| got.starts_with(want))
        {
            failures.push(format!(
                "{case}:\n  want: {expected:#?}\n  got:  {errors:#?}"
            ));
        }
        assert!(
            out.stdout.contains("problem"),
            "{case}: summary line: {}",
            out.stdout
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
