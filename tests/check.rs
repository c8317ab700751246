//! `ripcord check` on good files, on config files, and on several problems
//! at once.

use crate::support::{files, ripcord, ripcord_in};

#[test]
fn the_shipped_runbook_rules_check_clean() {
    let out = ripcord(&["check", "rules/"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.starts_with("ok: "), "{}", out.stdout);
    assert!(out.stdout.contains("22 rules"), "{}", out.stdout);
}

#[test]
fn all_problems_of_a_file_are_reported_in_one_run() {
    let dir = files(&[(
        "r.yaml",
        "rules:\n  - name: x\n    queries: {rate: \"sum(rate(foo[5m]\"}\n    condition: rat > 1\n    for: 2x\n    actions: [nope]\n    colour: red\n",
    )]);
    let out = ripcord_in(dir.path(), &["check", "r.yaml"]);
    assert_eq!(out.code, 1);
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.contains("warning"))
        .collect();
    assert_eq!(
        errors,
        [
            "r.yaml:3:25: invalid PromQL in query `rate`: unclosed left parenthesis",
            "r.yaml:4:16: condition uses `rat`, which is not a query of this rule (queries: rate)",
            "r.yaml:5:10: invalid duration `2x`: expected a number and a unit (ms, s, m, h, d, w), e.g. 30s, 2m, 1h30m",
            "r.yaml:6:15: unknown action `nope` (none are defined)",
            "r.yaml:7:5: unknown field `colour`, expected one of `name`, `every`, `cron`, `queries`, `condition`, `by`, `for`, `no_data`, `severity`, `summary`, `description`, `actions`, `notify`, `approval`, `verify`, `cooldown`, `unevaluable_after`, `mode`, `labels`, `runbook_url`, `dashboard_url`",
        ]
    );
    assert_eq!(out.stdout.trim(), "5 problems in 1 file (0 warnings)");
}

#[test]
fn references_resolve_across_files_and_warnings_do_not_fail() {
    let dir = files(&[
        ("rules.d/notifiers.yaml", "notifiers:\n  oncall: {pagerduty: {routing_key: \"${env:PD_KEY}\"}}\n  spare: {slack: {webhook_url: \"https://hooks.slack.example/T/B/X\"}}\n"),
        ("rules.d/chat.yaml", "actions:\n  undo: {steps: [{kubectl: {rollout_undo: deployment/chat}}]}\nrules:\n  - name: chat\n    queries: {q: up}\n    condition: q < 1\n    actions: [undo]\n    notify: [oncall]\n"),
    ]);
    let out = ripcord_in(dir.path(), &["check", "rules.d"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let warnings: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        warnings,
        [
            "rules.d/chat.yaml:4:11: warning: rule `chat` acts on a single breaching evaluation: set `for:` so a blip does not roll back",
            "rules.d/chat.yaml:4:11: warning: rule `chat` has no `verify:`: ripcord will not page if the rollback does not restore the metrics",
            "rules.d/chat.yaml:5:18: warning: query `q` can return more than one series (it keeps the series' labels); a rule without `by:` needs one number, and several series make it unevaluable: aggregate it (e.g. max(...) or sum(...)) if one series is meant, or add `by: [LABEL, ...]` for one instance per series",
            "rules.d/notifiers.yaml:2:37: warning: the PagerDuty routing key cannot be resolved here (environment variable PD_KEY is not set): where ripcord runs, pages to this notifier would fail",
            "rules.d/notifiers.yaml:3:3: warning: notifier `spare` is not used by any rule",
            "rules.d/notifiers.yaml:3:32: warning: the Slack webhook URL is written inline: use ${env:NAME}, ${file:PATH} or ${credential:NAME} so it stays out of the rule file",
        ]
    );
    assert_eq!(
        out.stdout.trim(),
        "ok: 2 files, 1 rule, 1 action, 2 notifiers (6 warnings)"
    );
    // The inline secret never appears in the output.
    assert!(!out.stderr.contains("hooks.slack.example"));
}

#[test]
fn check_without_files_loads_the_config_and_its_rule_globs() {
    let dir = files(&[
        ("etc/ripcord.yaml", "prometheus: {url: \"http://127.0.0.1:9090\", timeout: 5s}\nrules: rules.d/*.yaml\nmode: dry-run\nlimits: {max_actions_per_hour: 3}\n"),
        ("etc/rules.d/a.yaml", "rules:\n  - name: a\n    queries: {q: up}\n    condition: q < 1\n    notify: []\n    actions: []\n"),
    ]);
    let out = ripcord_in(dir.path(), &["check", "-c", "etc/ripcord.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("ok: 2 files, 1 rule"),
        "{}",
        out.stdout
    );

    let out = ripcord_in(dir.path(), &["--config", "etc/ripcord.yaml", "check"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn a_bad_config_is_reported_at_its_line() {
    let dir = files(&[(
        "ripcord.yaml",
        "prometheus:\n  url: localhost:9090\nlisten: everywhere\nmod: dry-run\n",
    )]);
    let out = ripcord_in(dir.path(), &["check", "-c", "ripcord.yaml"]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        [
            "ripcord.yaml:2:8: prometheus url `localhost:9090` must start with http:// or https://",
            "ripcord.yaml:3:9: invalid listen address `everywhere`: expected IP:PORT, e.g. 127.0.0.1:9733",
            "ripcord.yaml:4:1: unknown field `mod`, expected one of `prometheus`, `rules`, `state_dir`, `listen`, `mode`, `limits`, `outbox`, `api`, `reload`, `web`, `ha`",
        ]
    );
}

#[test]
fn a_missing_config_named_explicitly_is_an_error() {
    let dir = files(&[]);
    let out = ripcord_in(dir.path(), &["check", "-c", "nope.yaml"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with("nope.yaml:1:1: cannot read file: "),
        "{}",
        out.stderr
    );
}

#[test]
fn an_empty_directory_is_not_a_silent_success() {
    let dir = files(&[]);
    let out = ripcord_in(dir.path(), &["check", "."]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("no rule files found"), "{}", out.stdout);
}

/// The packaged /etc/ripcord/ripcord.yaml: as shipped (all commented out)
/// it is every default; with each setting uncommented it is valid and still
/// every default, so the comments tell the truth.
#[test]
fn the_packaged_config_is_all_defaults_commented_or_not() {
    use ripcord::config::load::load_config;
    let shipped = crate::support::root().join("packaging/ripcord.yaml");
    let text = std::fs::read_to_string(&shipped).expect("packaging/ripcord.yaml");
    // Past the header (up to the first blank line), `# key:` and `#   key:`
    // are settings; `#   # …` stays a comment.
    let is_setting = |l: &str| {
        let key = l.split(':').next().unwrap_or("");
        l.contains(':')
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    };
    let (header, body) = text.split_once("\n\n").expect("a header");
    assert!(
        header.contains("no rules"),
        "the header says it starts with no rules"
    );
    let uncommented: String = body
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if is_setting(rest) => rest.to_owned(),
            _ => match l.strip_prefix("#   ") {
                Some(rest) if !rest.starts_with('#') => format!("  {rest}"),
                _ => l.to_owned(),
            },
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(uncommented.contains("\nmode: enforce"), "{uncommented}");
    let dir = files(&[("ripcord.yaml", uncommented.as_str())]);
    let describe = |path: &std::path::Path| {
        let loaded = load_config(path, true);
        assert!(
            loaded.diagnostics.is_empty(),
            "{}: {:?}",
            path.display(),
            loaded
                .diagnostics
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
        );
        let mut c = loaded.value.expect("a config");
        c.path = None;
        // The one setting shown with a non-default example value.
        let had_token = c.api_token.take().is_some();
        assert!(had_token == path.starts_with(dir.path()));
        // So is the commented `ha:` block (HA is off by default).
        let had_ha = c.ha.take().is_some();
        assert!(had_ha == path.starts_with(dir.path()), "{:?}", path);
        // web.read's default follows api.token: token with one, open without.
        use ripcord::config::raw::WebRead;
        let want = if had_token {
            WebRead::Token
        } else {
            WebRead::Open
        };
        assert_eq!(c.web_read, want, "{}", path.display());
        c.web_read = WebRead::Open;
        format!("{c:?}")
    };
    let defaults = ripcord::config::load::load_config(
        std::path::Path::new("/nonexistent/ripcord.yaml"),
        false,
    )
    .value
    .map(|mut c| {
        c.path = None;
        format!("{c:?}")
    })
    .expect("defaults");
    assert_eq!(describe(&shipped), defaults);
    assert_eq!(describe(&dir.path().join("ripcord.yaml")), defaults);
}

#[test]
fn a_bad_ha_block_is_reported_at_each_fault() {
    let dir = files(&[(
        "ripcord.yaml",
        "rules: []\nha:\n  name: \"bad name\"\n  etcd:\n    endpoints: [http://127.0.0.1:2379, \"https://u:p@etcd:2379\", ftp://x, https://etcd:2379]\n    prefix: nope\n    lease_ttl: 1s\n    username: u\n",
    )]);
    let out = ripcord_in(dir.path(), &["check", "-c", "ripcord.yaml"]);
    assert_eq!(out.code, 1);
    let lines: Vec<&str> = out.stderr.lines().collect();
    for want in [
        "ripcord.yaml:3:9: ha.name `bad name` must be",
        "ripcord.yaml:5:40: etcd endpoint `https://***@etcd:2379` carries credentials",
        "ripcord.yaml:5:65: etcd endpoint `ftp://x` must start with http:// or https://",
        "ripcord.yaml:5:74: etcd endpoint `https://etcd:2379` is https: set ha.etcd.ca_file",
        "ripcord.yaml:6:13: ha.etcd.prefix `nope` must be a key path",
        "ripcord.yaml:7:16: ha.etcd.lease_ttl 1s must be between 2s and 5m",
        "ripcord.yaml:8:15: ha.etcd.username without ha.etcd.password",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "{want:?} not in:\n{}",
            out.stderr
        );
    }
    assert!(
        !out.stderr.contains("u:p"),
        "no credential shown: {}",
        out.stderr
    );
    // A good block checks clean.
    let dir = files(&[(
        "ripcord.yaml",
        "rules: []\nha: {name: host-a, etcd: {endpoints: [http://127.0.0.1:2379], prefix: /ripcord/x, lease_ttl: 5s}}\n",
    )]);
    let out = ripcord_in(dir.path(), &["check", "-c", "ripcord.yaml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}
