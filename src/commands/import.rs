//! `ripcord import [--out DIR] FILE...`: Prometheus alerting rules as
//! ripcord rules.
//!
//! Reads Prometheus rule files (`groups:` → `rules:` → `alert:`) and
//! PrometheusRule resources (`spec.groups`, several YAML documents per file
//! too) and writes ripcord rule files:
//!
//! - `expr` whose top level compares a vector with a number (`errors /
//!   total > 0.05`) becomes a query and a condition (`value > 0.05`), which
//!   keeps the value for pages and status; any other `expr` becomes an
//!   alert-style rule (one query, every series it returns breaches).
//!   `by:` is what the expression keeps (`sum by (job)` → `[job]`);
//!   without an aggregation an alert-style rule's instances are the
//!   series' own labels.
//! - `for` → `for`; `labels.severity` → `severity`, other static labels →
//!   `labels`; `annotations.summary` → `summary` with Go's templates
//!   translated (`$labels.x` → `labels.x`, `$value` → `value`, `humanize`,
//!   `humanizePercentage` → `percent`, `humanizeDuration` → `duration`,
//!   `printf "%.Nf"` → `round(N)`); `description`, `runbook_url` carried.
//! - No action is invented: every imported rule pages the one notifier
//!   `imported` (an Alertmanager, at its default `http://127.0.0.1:9093`:
//!   where the rules paged before) until a person adds actions.
//! - Names are unique across everything imported together: an alert name
//!   seen before gets its severity, then a number.
//!
//! What cannot be converted is listed per rule with the reason, and the
//! output is checked as one set by the same loader as `ripcord check`
//! before it is written: a rule it refuses is listed, not written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use promql_parser::parser::{self, Expr};
use serde_yaml::{Mapping, Value};

use crate::config::shape::{shape, Shape};

/// The notifier every imported rule pages.
pub const NOTIFIER: &str = "imported";
/// Where the `imported` notifier pages: Alertmanager's own default
/// address, for a person to change.
const ALERTMANAGER: &str = "http://127.0.0.1:9093";
/// The query name of an imported rule (its templates' `$value`).
const QUERY: &str = "value";

/// One alerting rule that was not converted, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub file: PathBuf,
    pub group: String,
    pub alert: String,
    pub why: String,
}

/// Something converted with a loss worth saying.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub rule: String,
    pub what: String,
}

/// What an import made of its files.
#[derive(Debug, Default)]
pub struct Import {
    /// Per input file: its ripcord rules (mappings), in order.
    pub files: Vec<(PathBuf, Vec<Value>)>,
    pub alerts: usize,
    pub converted: usize,
    pub alert_style: usize,
    pub recording: usize,
    pub skipped: Vec<Skipped>,
    pub notes: Vec<Note>,
    /// Problems of the output no rule can be blamed for (a bug): the
    /// output would not load, so the import fails.
    pub problems: Vec<String>,
}

/// A file that could not be read as YAML at all (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {why}")]
pub struct Unreadable {
    pub file: String,
    pub why: String,
}

/// Converts `files`.
pub fn import(files: &[PathBuf]) -> Result<Import, Unreadable> {
    let mut out = Import::default();
    let mut names = Names::default();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| Unreadable {
            file: f.display().to_string(),
            why: crate::fsio::describe(&e),
        })?;
        let mut rules = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).map_err(|e| Unreadable {
                file: f.display().to_string(),
                why: format!("not YAML: {e}"),
            })?;
            for group in groups(&v) {
                convert_group(f, group, &mut names, &mut rules, &mut out);
            }
        }
        out.files.push((f.clone(), rules));
    }
    verify(&mut out);
    Ok(out)
}

use serde::Deserialize as _;

/// The rule groups of one YAML document: a rule file's `groups`, or a
/// PrometheusRule's `spec.groups`; none for anything else.
fn groups(doc: &Value) -> Vec<&Mapping> {
    let list = doc
        .get("groups")
        .or_else(|| doc.get("spec").and_then(|s| s.get("groups")));
    list.and_then(Value::as_sequence)
        .map(|gs| gs.iter().filter_map(Value::as_mapping).collect())
        .unwrap_or_default()
}

fn text<'a>(m: &'a Mapping, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

fn convert_group(
    file: &Path,
    g: &Mapping,
    names: &mut Names,
    rules: &mut Vec<Value>,
    out: &mut Import,
) {
    let group = text(g, "name").unwrap_or("").to_string();
    let interval = text(g, "interval").map(str::to_string);
    let Some(list) = g.get("rules").and_then(Value::as_sequence) else {
        return;
    };
    for r in list.iter().filter_map(Value::as_mapping) {
        if r.contains_key("record") {
            out.recording += 1;
            continue;
        }
        let Some(alert) = text(r, "alert") else {
            continue;
        };
        out.alerts += 1;
        let skip = |why: String| Skipped {
            file: file.to_path_buf(),
            group: group.clone(),
            alert: alert.to_string(),
            why,
        };
        match convert(alert, r, interval.as_deref(), names) {
            Ok((rule, notes, alert_style)) => {
                out.converted += 1;
                if alert_style {
                    out.alert_style += 1;
                }
                out.notes.extend(notes);
                rules.push(rule);
            }
            Err(why) => out.skipped.push(skip(why)),
        }
    }
}

/// Unique rule names across one import.
#[derive(Default)]
struct Names {
    taken: BTreeSet<String>,
}

impl Names {
    /// `alert` as a ripcord name (letters, digits, `-_.`), unique: with its
    /// severity when the name was seen, then a number.
    fn claim(&mut self, alert: &str, severity: Option<&str>) -> String {
        let base: String = alert
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let base = base.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
        let base = if base.is_empty() { "alert" } else { base };
        let base: String = base.chars().take(100).collect();
        let mut candidates = vec![base.clone()];
        if let Some(s) = severity {
            candidates.push(format!("{base}-{}", slug(s)));
        }
        for c in candidates {
            if self.taken.insert(c.clone()) {
                return c;
            }
        }
        (2..)
            .map(|n| format!("{base}-{n}"))
            .find(|c| self.taken.insert(c.clone()))
            .unwrap_or(base)
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// One alerting rule: the ripcord rule, what was lost, whether it is
/// alert-style.
fn convert(
    alert: &str,
    r: &Mapping,
    interval: Option<&str>,
    names: &mut Names,
) -> Result<(Value, Vec<Note>, bool), String> {
    let expr_text = match r.get("expr") {
        Some(Value::String(s)) => s.trim().to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("no `expr`".into()),
    };
    let expr =
        parser::parse(&expr_text).map_err(|e| format!("expr does not parse: {}", e.trim()))?;
    let labels = r.get("labels").and_then(Value::as_mapping);
    let severity_raw = labels.and_then(|l| text(l, "severity"));
    let name = names.claim(alert, severity_raw);
    let mut notes = Vec::new();
    let mut note = |what: String| {
        notes.push(Note {
            rule: name.clone(),
            what,
        })
    };

    let mut rule = Mapping::new();
    let put = |m: &mut Mapping, k: &str, v: Value| {
        m.insert(Value::String(k.into()), v);
    };
    put(&mut rule, "name", Value::String(name.clone()));
    if let Some(i) = interval {
        put(&mut rule, "every", Value::String(i.to_string()));
    }
    // The query, and a condition when the top level compares with a number.
    let (query, condition, by) = split(&expr);
    let alert_style = condition.is_none();
    let mut queries = Mapping::new();
    queries.insert(Value::String(QUERY.into()), Value::String(query));
    put(&mut rule, "queries", Value::Mapping(queries));
    if !by.is_empty() {
        put(
            &mut rule,
            "by",
            Value::Sequence(by.iter().cloned().map(Value::String).collect()),
        );
    }
    if let Some(c) = &condition {
        put(&mut rule, "condition", Value::String(c.clone()));
    }
    if let Some(f) = text(r, "for") {
        put(&mut rule, "for", Value::String(f.to_string()));
    }
    if let Some(k) = text(r, "keep_firing_for") {
        note(format!(
            "keep_firing_for: {k} is not supported: the incident closes when the breach clears"
        ));
    }
    match severity_raw.map(str::to_ascii_lowercase).as_deref() {
        None => {}
        Some(s @ ("critical" | "error" | "warning" | "info")) => {
            put(&mut rule, "severity", Value::String(s.into()))
        }
        Some("page" | "high") => put(&mut rule, "severity", Value::String("critical".into())),
        Some("low" | "none" | "notice") => put(&mut rule, "severity", Value::String("info".into())),
        Some(other) => note(format!(
            "severity `{other}` has no ripcord equal: critical (kept as a label)"
        )),
    }
    // Labels that tell an instance apart are in every page already; the
    // static ones carry over; templated ones cannot.
    let mut static_labels = Mapping::new();
    for (k, v) in labels.into_iter().flatten() {
        let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
            continue;
        };
        if k == "severity" && severity_raw.is_some_and(known_severity) {
            continue;
        }
        if v.contains("{{") {
            note(format!(
                "label {k} is a template ({v}): ripcord's labels are static; dropped"
            ));
            continue;
        }
        static_labels.insert(Value::String(k.into()), Value::String(v.into()));
    }
    let annotations = r.get("annotations").and_then(Value::as_mapping);
    let page_labels: Option<Vec<String>> = (!alert_style || !by.is_empty()).then(|| {
        static_labels
            .keys()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .chain(by.iter().cloned())
            .collect()
    });
    if let Some(s) = annotations.and_then(|a| text(a, "summary")) {
        match summary(s, page_labels.as_deref()) {
            Ok(t) => put(&mut rule, "summary", Value::String(t)),
            Err(e) => note(format!(
                "summary not converted: {e}; the default summary is used instead of {s:?}"
            )),
        }
    }
    if let Some(d) = annotations.and_then(|a| text(a, "description").or_else(|| text(a, "message")))
    {
        put(&mut rule, "description", Value::String(d.to_string()));
    }
    put(
        &mut rule,
        "notify",
        Value::Sequence(vec![Value::String(NOTIFIER.into())]),
    );
    if !static_labels.is_empty() {
        put(&mut rule, "labels", Value::Mapping(static_labels));
    }
    if let Some(u) = annotations.and_then(|a| text(a, "runbook_url")) {
        put(&mut rule, "runbook_url", Value::String(u.to_string()));
    }
    Ok((Value::Mapping(rule), notes, alert_style))
}

/// A summary in ripcord's templates, checked as the rule will render it:
/// with the labels its pages carry (`None`: any).
fn summary(s: &str, labels: Option<&[String]>) -> Result<String, String> {
    use crate::rule::template::Template;
    let t = translate(s)?;
    match Template::compile_with_labels(&t, &[QUERY], labels) {
        Ok(_) => Ok(t),
        // It works with any label: it names one the expression drops.
        Err(_) if Template::compile_with_labels(&t, &[QUERY], None).is_ok() => Err(format!(
            "it uses a label the expression does not keep (it keeps: {})",
            match labels {
                Some([]) | None => "none".to_string(),
                Some(l) => l.join(", "),
            }
        )),
        Err(e) => Err(e),
    }
}

fn known_severity(s: &str) -> bool {
    matches!(
        s.to_ascii_lowercase().as_str(),
        "critical" | "error" | "warning" | "info" | "page" | "high" | "low" | "none" | "notice"
    )
}

/// The query, the condition (if the top level compares the vector with a
/// number) and the `by:` labels the expression keeps.
fn split(expr: &Expr) -> (String, Option<String>, Vec<String>) {
    // `__name__` tells no instance apart (queries drop it): labels kept
    // besides it, or none known.
    let keeps = |e: &Expr| match shape(e) {
        Shape::One => Some(Vec::new()),
        Shape::Many(Some(ls)) => {
            let ls: Vec<String> = ls.into_iter().filter(|l| l != "__name__").collect();
            (!ls.is_empty()).then_some(ls)
        }
        Shape::Many(None) => None,
    };
    if let Expr::Binary(b) = expr {
        let op = b.op.to_string();
        let comparison = ["<", "<=", ">", ">=", "==", "!="].contains(&op.as_str());
        let returns_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
        let number = |e: &Expr| match unparen(e) {
            Expr::NumberLiteral(n) => Some(n.val),
            _ => None,
        };
        if comparison && !returns_bool {
            let sides = match (number(&b.lhs), number(&b.rhs)) {
                (None, Some(n)) => Some((&b.rhs, &b.lhs, op.clone(), n)),
                (Some(n), None) => Some((&b.lhs, &b.rhs, flip(&op).to_string(), n)),
                _ => None,
            };
            // A split query keeps every series, so its instances must be
            // known labels; with only "its own labels" it stays a filter.
            if let Some((_, vector, op, n)) = sides {
                if let Some(by) = keeps(vector) {
                    return (
                        vector.to_string(),
                        Some(format!("{QUERY} {op} {}", fmt_number(n))),
                        by,
                    );
                }
            }
        }
    }
    (expr.to_string(), None, keeps(expr).unwrap_or_default())
}

fn unparen(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

fn flip(op: &str) -> &str {
    match op {
        "<" => ">",
        "<=" => ">=",
        ">" => "<",
        ">=" => "<=",
        other => other,
    }
}

fn fmt_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{n:.1}")
    } else {
        format!("{n}")
    }
}

/// A Go template of Prometheus's annotations in ripcord's templates, or
/// why not.
pub fn translate(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "`{{` without `}}`".to_string())?;
        let inner = after[..end]
            .trim_start_matches('-')
            .trim_end_matches('-')
            .trim();
        out.push_str("{{ ");
        out.push_str(&action(inner)?);
        out.push_str(" }}");
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One `{{ ... }}` action.
fn action(a: &str) -> Result<String, String> {
    let filter = |f: &str| -> Result<&'static str, String> {
        match f {
            "humanize" | "humanize1024" => Ok("humanize"),
            "humanizePercentage" => Ok("percent"),
            "humanizeDuration" => Ok("duration"),
            other => Err(format!("`{other}` has no ripcord equal")),
        }
    };
    let operand = |o: &str| -> Result<String, String> {
        let o = o
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .trim();
        if o == "$value" || o == ".Value" {
            Ok(QUERY.into())
        } else if let Some(l) = o
            .strip_prefix("$labels.")
            .or_else(|| o.strip_prefix(".Labels."))
        {
            if l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !l.is_empty() {
                Ok(format!("labels.{l}"))
            } else {
                Err(format!("`{o}` is not a label"))
            }
        } else if o == "$labels" || o == ".Labels" {
            Ok("labels".into())
        } else {
            Err(format!("`{o}` has no ripcord equal"))
        }
    };
    // `X | f`, `f X`, `printf "%.Nf" X`, `X`.
    if let Some((x, f)) = a.split_once('|') {
        if f.contains('|') {
            return Err(format!("`{a}`: a pipeline of more than one function"));
        }
        return Ok(format!("{} | {}", operand(x)?, filter(f.trim())?));
    }
    let words: Vec<&str> = a.split_whitespace().collect();
    match words.as_slice() {
        [x] => operand(x),
        ["printf", fmt, x] => {
            let fmt = fmt.trim_matches('"');
            let digits = fmt
                .strip_prefix("%.")
                .and_then(|r| r.strip_suffix('f'))
                .and_then(|n| n.parse::<u8>().ok())
                .ok_or_else(|| format!("`printf {fmt}` has no ripcord equal"))?;
            Ok(format!("{} | round({digits})", operand(x)?))
        }
        [f, x] => Ok(format!("{} | {}", operand(x)?, filter(f)?)),
        _ => Err(format!("`{{{{ {a} }}}}` has no ripcord equal")),
    }
}

/// Checks the converted set as `ripcord check` would, and drops (and
/// lists) what it refuses, so what is written always loads.
fn verify(out: &mut Import) {
    loop {
        let text = render_one(out);
        let loaded = crate::config::load::load_rule_sources(&[("import.yaml", &text)]);
        let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
        if errors.is_empty() {
            return;
        }
        // Drop each rule an error points into; stop if none can be named.
        let mut dropped = false;
        for (file, rules) in &mut out.files {
            let mut keep = Vec::new();
            for r in rules.drain(..) {
                let name = r
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                match errors
                    .iter()
                    .find(|e| e.contains(&format!("`{name}`")) || mentions(&text, e, &name))
                {
                    Some(e) => {
                        out.converted -= 1;
                        out.skipped.push(Skipped {
                            file: file.clone(),
                            group: String::new(),
                            alert: name,
                            why: format!(
                                "refused by ripcord's check: {}",
                                e.split_once(": ").map_or(e.as_str(), |x| x.1)
                            ),
                        });
                        dropped = true;
                    }
                    None => keep.push(r),
                }
            }
            *rules = keep;
        }
        if !dropped {
            out.problems = errors;
            return;
        }
    }
}

/// Whether diagnostic `e` (`import.yaml:LINE:COL: ...`) points into the
/// lines of rule `name` in `text`.
fn mentions(text: &str, e: &str, name: &str) -> bool {
    let Some(line) = e
        .strip_prefix("import.yaml:")
        .and_then(|r| r.split(':').next())
        .and_then(|l| l.parse::<usize>().ok())
    else {
        return false;
    };
    let lines: Vec<&str> = text.lines().collect();
    // The rule that starts at or before the line.
    let start = (0..line.min(lines.len()))
        .rev()
        .find(|&i| lines[i].trim_start().starts_with("- name:"));
    start.is_some_and(|i| {
        lines[i]
            .trim_start()
            .trim_start_matches("- name:")
            .trim()
            .trim_matches('\'')
            == name
    })
}

fn notifiers() -> Value {
    let mut am = Mapping::new();
    am.insert(
        Value::String("urls".into()),
        Value::Sequence(vec![Value::String(ALERTMANAGER.into())]),
    );
    let mut kind = Mapping::new();
    kind.insert(Value::String("alertmanager".into()), Value::Mapping(am));
    let mut n = Mapping::new();
    n.insert(Value::String(NOTIFIER.into()), Value::Mapping(kind));
    Value::Mapping(n)
}

fn document(notifiers_too: bool, rules: &[Value]) -> String {
    let mut m = Mapping::new();
    if notifiers_too {
        m.insert(Value::String("notifiers".into()), notifiers());
    }
    if !rules.is_empty() {
        m.insert(
            Value::String("rules".into()),
            Value::Sequence(rules.to_vec()),
        );
    }
    serde_yaml::to_string(&Value::Mapping(m)).unwrap_or_default()
}

const HEADER: &str = "# Imported by `ripcord import` from Prometheus alerting rules: these rules\n# page the `imported` notifier only (an Alertmanager at its default address:\n# point it at yours). Add actions (and mode: dry-run first) once a person\n# has decided what each should do.\n";

/// Everything as one rule file (for stdout).
pub fn render_one(out: &Import) -> String {
    let rules: Vec<Value> = out
        .files
        .iter()
        .flat_map(|(_, r)| r.iter().cloned())
        .collect();
    format!("{HEADER}{}", document(true, &rules))
}

/// One rule file per input file, and `imported-notifiers.yaml`, as
/// (file name, text).
pub fn render_dir(out: &Import) -> Vec<(String, String)> {
    let mut files = vec![(
        "imported-notifiers.yaml".to_string(),
        format!("{HEADER}{}", document(true, &[])),
    )];
    let mut used = BTreeSet::new();
    for (path, rules) in &out.files {
        if rules.is_empty() {
            continue;
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rules".into());
        let mut name = format!("{stem}.yaml");
        let mut n = 2;
        while !used.insert(name.clone()) {
            name = format!("{stem}-{n}.yaml");
            n += 1;
        }
        files.push((
            name,
            format!(
                "{HEADER}# from {}\n{}",
                path.display(),
                document(false, rules)
            ),
        ));
    }
    files
}

/// The report for stderr: each skipped rule and each note, then totals.
pub fn report(out: &Import) -> String {
    let mut s = String::new();
    for k in &out.skipped {
        let group = if k.group.is_empty() {
            String::new()
        } else {
            format!("{}/", k.group)
        };
        s.push_str(&format!(
            "{}: {group}{}: skipped: {}\n",
            k.file.display(),
            k.alert,
            k.why
        ));
    }
    for n in &out.notes {
        s.push_str(&format!("{}: note: {}\n", n.rule, n.what));
    }
    for p in &out.problems {
        s.push_str(&format!("the output does not load: {p}\n"));
    }
    let share = if out.alerts == 0 {
        0.0
    } else {
        100.0 * out.converted as f64 / out.alerts as f64
    };
    s.push_str(&format!(
        "imported {} of {} alerting rules ({share:.1}%; {} alert-style, {} with a condition) from {} file(s); {} skipped; {} recording rule(s) stay in Prometheus\n",
        out.converted,
        out.alerts,
        out.alert_style,
        out.converted - out.alert_style.min(out.converted),
        out.files.len(),
        out.skipped.len(),
        out.recording
    ));
    s
}

/// The import's exit code: 0 all converted, 1 some skipped, 2 when the
/// output would not load.
pub fn exit_code(out: &Import) -> u8 {
    if !out.problems.is_empty() {
        2
    } else {
        u8::from(!out.skipped.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_templates_become_ripcords_or_say_why_not() {
        let ok = [
            (
                "Host out of memory (instance {{ $labels.instance }})",
                "Host out of memory (instance {{ labels.instance }})",
            ),
            (
                "{{ $value | humanizePercentage }} errors",
                "{{ value | percent }} errors",
            ),
            ("{{ humanize $value }}", "{{ value | humanize }}"),
            ("{{ printf \"%.2f\" $value }}%", "{{ value | round(2) }}%"),
            (
                "took {{ $value | humanizeDuration }}",
                "took {{ value | duration }}",
            ),
            ("{{- $labels.job -}}", "{{ labels.job }}"),
            ("no template", "no template"),
        ];
        for (go, want) in ok {
            assert_eq!(translate(go).as_deref(), Ok(want), "{go}");
        }
        for bad in [
            "{{ with query \"up\" }}{{ . }}{{ end }}",
            "{{ $externalLabels.cluster }}",
            "{{ $value | humanize | toUpper }}",
            "{{ printf \"%d\" $value }}",
        ] {
            assert!(translate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_comparison_with_a_number_splits_and_anything_else_stays_a_filter() {
        let cases = [
            (
                "sum by (job) (rate(errors[5m])) / sum by (job) (rate(total[5m])) > 0.05",
                Some("value > 0.05"),
                vec!["job"],
            ),
            ("0.9 < max(up)", Some("value > 0.9"), vec![]),
            ("up == 0", None, vec![]),
            ("sum by (instance) (x) > bool 3", None, vec!["instance"]),
            ("absent(up{job=\"api\"})", None, vec![]),
            (
                "(a > 1) * on(instance) group_left(nodename) b",
                None,
                vec![],
            ),
        ];
        for (expr, cond, by) in cases {
            let e = parser::parse(expr).expect("parses");
            let (_, c, b) = split(&e);
            assert_eq!(c.as_deref(), cond, "{expr}");
            assert_eq!(b, by, "{expr}");
        }
    }

    #[test]
    fn names_are_unique_with_severity_then_a_number() {
        let mut n = Names::default();
        assert_eq!(n.claim("HighErrors", Some("warning")), "HighErrors");
        assert_eq!(
            n.claim("HighErrors", Some("critical")),
            "HighErrors-critical"
        );
        assert_eq!(n.claim("HighErrors", Some("critical")), "HighErrors-2");
        assert_eq!(n.claim("Kube API: down!", None), "Kube-API--down-");
    }
}
