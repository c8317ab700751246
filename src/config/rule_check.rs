//! One rule, checked: its schedule, queries (PromQL), condition, summary
//! template, references to actions and notifiers, approval, verify and
//! labels, each problem at its position, and the warnings an SRE would
//! want about a rule that loads.

use std::collections::BTreeSet;
use std::time::Duration;

use super::raw::{self, RawRule};
use super::source::*;
use super::*;
use crate::rule::condition::Condition;
use crate::rule::template::Template;

pub(super) fn validate_rule(cx: &mut Ctx, at: &At, r: RawRule, had_errors: bool) -> Option<Rule> {
    let errors_before = cx.error_count();
    if let Err(e) = check_name("rule", &r.name) {
        cx.error(&at.key("name"), e);
    }
    let schedule = schedule(cx, at, &r);

    check_queries(cx, at, &r);
    let names: Vec<&str> = r.queries.keys().map(String::as_str).collect();
    let condition = match &r.condition {
        Some(src) => match Condition::compile(src, &names) {
            Ok(c) => Some(c),
            Err(e) => {
                if !names.is_empty() {
                    cx.error(&at.key("condition"), e);
                }
                None
            }
        },
        // Alert-style: Prometheus's meaning of an alerting rule.
        None => match names.as_slice() {
            [q] => Some(Condition::presence(q)),
            [] => None,
            _ => {
                cx.error(
                    &at.key("queries"),
                    format!(
                        "rule `{}` has no `condition:`, so it is alert-style: every series of its one query breaches; it has {} queries: keep one, or add a condition",
                        r.name,
                        names.len()
                    ),
                );
                None
            }
        },
    };
    check_by(cx, at, &r);
    let summary_src = r.summary.clone().unwrap_or_else(|| {
        let vals: Vec<String> = names
            .iter()
            .filter(|q| is_identifier(q))
            .map(|q| format!("{q}={{{{ {q} | humanize }}}}"))
            .collect();
        format!("{{{{ rule }}}} breached: {}", vals.join(", "))
    });
    // The labels its pages carry: its own, and its instances' (any, for
    // an alert-style rule without `by:`).
    let page_labels: Option<Vec<String>> = (r.condition.is_some() || !r.by.is_empty())
        .then(|| r.labels.keys().chain(r.by.iter()).cloned().collect());
    let summary = match Template::compile_with_labels(&summary_src, &names, page_labels.as_deref())
    {
        Ok(t) => Some(t),
        Err(e) => {
            cx.error(&at.key("summary"), e);
            None
        }
    };
    // `actions:` and `notify:` name things other files may define: checked
    // once every file is read (`check_refs`).
    let approval = r.approval.as_ref().map(|a| Approval {
        timeout: positive(
            cx,
            &at.key("approval").key("timeout"),
            Some(a.timeout),
            Duration::from_secs(300),
            "approval timeout",
        ),
        on_timeout: a.on_timeout,
    });
    let verify_within = r.verify.as_ref().map(|v| {
        positive(
            cx,
            &at.key("verify").key("within"),
            Some(v.within),
            Duration::from_secs(600),
            "verify within",
        )
    });
    for k in r.labels.keys() {
        if !is_identifier(k) {
            cx.error_key(
                &at.key("labels").key(k),
                format!("`{k}` is not a valid label name"),
            );
        }
    }
    for (key, url) in [
        ("runbook_url", &r.runbook_url),
        ("dashboard_url", &r.dashboard_url),
    ] {
        if let Some(u) = url {
            if !is_http_url(u) {
                cx.error(
                    &at.key(key),
                    format!("{key} `{u}` must start with http:// or https://"),
                );
            }
        }
    }
    let for_ = r.for_.map(|d| d.0).unwrap_or_default();
    let no_data = r.no_data.unwrap_or_default();

    // Values that parse but that an SRE would want to hear about; not worth
    // saying about a rule that has errors to fix first.
    let errors_after = cx.error_count();
    if had_errors || errors_after != errors_before {
        return None;
    }
    warn_risky(cx, at, &r, for_, no_data, verify_within.is_some());

    Some(Rule {
        fingerprint: String::new(),
        file: cx.file_arc(at),
        name: r.name,
        schedule,
        queries: r.queries.into(),
        by: r.by,
        condition: condition?,
        for_,
        no_data,
        severity: r.severity.unwrap_or_default(),
        summary: summary?,
        description: r.description,
        actions: r.actions,
        notify: r.notify,
        approval,
        verify_within,
        cooldown: r.cooldown.map(|d| d.0).unwrap_or(DEFAULT_COOLDOWN),
        unevaluable_after: r.unevaluable_after.map(|d| d.0),
        mode: r.mode,
        labels: r.labels,
        runbook_url: r.runbook_url,
        dashboard_url: r.dashboard_url,
    })
}

/// `every:` or `cron:` (not both), checked; the default when neither.
fn schedule(cx: &mut Ctx, at: &At, r: &RawRule) -> Schedule {
    match (&r.every, &r.cron) {
        (Some(_), Some(_)) => {
            cx.error(
                at,
                format!(
                    "rule `{}`: set either `every:` or `cron:`, not both",
                    r.name
                ),
            );
            Schedule::Every(DEFAULT_EVERY)
        }
        (Some(raw::Dur(d)), None) if d.is_zero() => {
            cx.error(&at.key("every"), "every must be greater than 0");
            Schedule::Every(DEFAULT_EVERY)
        }
        (Some(raw::Dur(d)), None) => Schedule::Every(*d),
        (None, Some(expr)) => match expr.parse::<cron::Schedule>() {
            Ok(s) if s.upcoming(chrono::Utc).next().is_none() => {
                cx.error(
                    &at.key("cron"),
                    format!("cron expression `{expr}` never fires (no such date): the rule would never be evaluated"),
                );
                Schedule::Every(DEFAULT_EVERY)
            }
            Ok(s) => Schedule::Cron(expr.clone(), Box::new(s)),
            Err(e) => {
                let fields = expr.split_whitespace().count();
                let why = if !(6..=7).contains(&fields) {
                    format!("has {fields} fields, expected 6 or 7")
                } else {
                    // The cron crate's message quotes the input and a caret
                    // over several lines; keep the words.
                    let msg = e.to_string();
                    let words: Vec<&str> = msg
                        .lines()
                        .map(str::trim)
                        .filter(|l| {
                            !l.is_empty()
                                && *l != expr.trim()
                                && !l.chars().all(|c| c == '^' || c == ' ')
                        })
                        .collect();
                    if words.is_empty() {
                        "cannot be parsed".to_string()
                    } else {
                        words.join(" ")
                    }
                };
                cx.error(
                    &at.key("cron"),
                    format!("invalid cron expression `{expr}`: {why} (fields: sec min hour day-of-month month day-of-week [year], e.g. \"0 */5 * * * *\")"),
                );
                Schedule::Every(DEFAULT_EVERY)
            }
        },
        (None, None) => Schedule::Every(DEFAULT_EVERY),
    }
}

/// Every query: a name the condition can use, PromQL that parses, and a
/// warning when it can return several series.
fn check_queries(cx: &mut Ctx, at: &At, r: &RawRule) {
    if r.queries.is_empty() {
        cx.error(
            &at.key("queries"),
            format!("rule `{}` has no queries", r.name),
        );
    }
    for (name, expr) in &r.queries {
        let qat = at.key("queries").key(name);
        if !is_identifier(name) || matches!(name.as_str(), "true" | "false") {
            cx.error_key(
                &qat,
                format!("query name `{name}` must be an identifier (letters, digits, `_`), as the condition refers to it"),
            );
            continue;
        }
        match promql_parser::parser::parse(expr) {
            Err(e) => cx.error_in(
                &qat,
                expr,
                super::shape::fault_offset(expr),
                format!("invalid PromQL in query `{name}`: {}", e.trim()),
            ),
            Ok(parsed) => {
                // Many series are what `by:` and alert-style rules are for.
                let many_ok = !r.by.is_empty() || r.condition.is_none();
                if let Some(w) =
                    super::shape::many_series_warning(name, &parsed).filter(|_| !many_ok)
                {
                    cx.warn(&qat, w);
                }
            }
        }
    }
}

/// `by:` names distinct Prometheus label names.
fn check_by(cx: &mut Ctx, at: &At, r: &RawRule) {
    let mut seen = BTreeSet::new();
    for (i, l) in r.by.iter().enumerate() {
        let ok = l.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            cx.error(
                &at.key("by").index(i),
                format!("`{l}` is not a label name (letters, digits and `_`, not starting with a digit)"),
            );
        } else if l == "__name__" {
            cx.error(
                &at.key("by").index(i),
                "`__name__` is not a label to tell instances apart: most queries drop it",
            );
        } else if !seen.insert(l) {
            cx.error(&at.key("by").index(i), format!("`{l}` is listed twice"));
        }
    }
}

/// Values that parse but that an SRE would want to hear about.
fn warn_risky(cx: &mut Ctx, at: &At, r: &RawRule, for_: Duration, no_data: NoData, verifies: bool) {
    let rule_at = at.key("name");
    if r.actions.is_empty() && r.notify.is_empty() {
        cx.warn(
            &rule_at,
            format!(
                "rule `{}` does nothing when it fires: no actions and no notify",
                r.name
            ),
        );
    }
    if !r.actions.is_empty() {
        if r.notify.is_empty() {
            cx.warn(
                &rule_at,
                format!(
                    "rule `{}` acts without paging anyone: add `notify:`",
                    r.name
                ),
            );
        }
        if for_.is_zero() {
            cx.warn(&rule_at, format!("rule `{}` acts on a single breaching evaluation: set `for:` so a blip does not roll back", r.name));
        }
        if no_data == NoData::Breach {
            cx.warn(
                &at.key("no_data"),
                format!(
                    "rule `{}` acts when data is missing (`no_data: breach`)",
                    r.name
                ),
            );
        }
        if !verifies {
            cx.warn(&rule_at, format!("rule `{}` has no `verify:`: ripcord will not page if the rollback does not restore the metrics", r.name));
        }
    }
}

/// Each name in `refs` (at `at`) is one `known`, and listed once.
pub(super) fn check_refs(
    cx: &mut Ctx,
    at: &At,
    refs: &[String],
    known: &BTreeSet<String>,
    kind: &str,
) {
    let mut seen = BTreeSet::new();
    for (i, name) in refs.iter().enumerate() {
        if !known.contains(name) {
            cx.error(
                &at.index(i),
                format!("unknown {kind} `{name}` ({})", list(known.iter())),
            );
        } else if !seen.insert(name) {
            cx.error(&at.index(i), format!("{kind} `{name}` is listed twice"));
        }
    }
}
