//! `ripcord test`: rule unit tests, like `promtool test rules`.
//!
//! A test file names rule files and feeds each rule's queries a value per
//! evaluation step; expectations say what state a rule is in at a time and
//! which actions ran and who was paged up to then. The rules run through the
//! same pure core as the daemon, via [`crate::rule::sim::Sim`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use crate::config::load::{load_rule_files_into, At, Ctx, DEFAULT_BLIND_AFTER};
use crate::config::raw::{RawExpect, RawTestCase, RawTestFile};
use crate::config::{Mode, Rule, RuleSet};
use crate::diag::Diagnostic;
use crate::rule::instances::{Answer, Evaluation, Labels};
use crate::rule::sim::{Happened, Sim};
use crate::rule::{Input, PageEvent, PhaseName, Shared, StateName, Timestamp};

/// One value of a query at one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Num(f64),
    NoData,
    /// The query failed (Prometheus down, an error).
    Error,
    /// The query's result cannot be used: more than one series, a refused
    /// query (the rule cannot be evaluated).
    Bad,
}

/// Parses a series: `"0.001 0.02x3 _ _x2 err 1+1x3 NaN"`.
/// `AxN` is A repeated N times; `A+BxN` is N values from A in steps of B;
/// `_` is no data; `err` is a failed query (Prometheus down); `bad` is a
/// result the rule cannot use (several series, a refused query).
pub fn parse_series(s: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let (base, count) = match tok.rsplit_once('x') {
            Some((b, n))
                if !b.is_empty() && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) =>
            {
                let n: usize = n
                    .parse()
                    .map_err(|_| format!("bad repeat count in `{tok}`"))?;
                if n == 0 || n > 1_000_000 {
                    return Err(format!("bad repeat count in `{tok}`: must be 1..1000000"));
                }
                (b, n)
            }
            _ => (tok, 1),
        };
        let single = |t: &str| -> Result<Value, String> {
            match t {
                "_" => Ok(Value::NoData),
                "err" => Ok(Value::Error),
                "bad" => Ok(Value::Bad),
                "NaN" | "nan" => Ok(Value::Num(f64::NAN)),
                "Inf" | "+Inf" | "inf" | "+inf" => Ok(Value::Num(f64::INFINITY)),
                "-Inf" | "-inf" => Ok(Value::Num(f64::NEG_INFINITY)),
                _ => t.parse::<f64>().map(Value::Num).map_err(|_| {
                    format!("bad value `{tok}`: expected a number, `_` (no data), `err`, NaN, ±Inf, `AxN` or `A+BxN`")
                }),
            }
        };
        // `A+BxN` / `A-BxN`: a sign after the first character that is not an exponent's.
        let split = base
            .char_indices()
            .skip(1)
            .find(|(i, c)| (*c == '+' || *c == '-') && !base[..*i].ends_with(['e', 'E']));
        match split {
            Some((i, _)) if count > 1 || tok.contains('x') => {
                let a: f64 = base[..i]
                    .parse()
                    .map_err(|_| format!("bad start in `{tok}`"))?;
                let b: f64 = base[i..]
                    .trim_start_matches('+')
                    .parse()
                    .map_err(|_| format!("bad step in `{tok}`"))?;
                for k in 0..count {
                    out.push(Value::Num(a + b * k as f64));
                }
            }
            _ => {
                let v = single(base)?;
                out.extend(std::iter::repeat_n(v, count));
            }
        }
    }
    Ok(out)
}

/// `3m30s`, `0s`.
pub fn fmt_offset(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    humantime::format_duration(Duration::from_millis(ms.unsigned_abs()))
        .to_string()
        .replace(' ', "")
}

#[derive(Debug)]
enum InputKind {
    Approve,
    Veto,
    Fire,
    Pause,
    Resume,
}

/// What a test expects at one evaluation time: about one rule, or (without
/// a rule) about ripcord itself.
#[derive(Debug, Default)]
struct Expect {
    rule: Option<String>,
    state: Option<StateName>,
    phase: Option<PhaseName>,
    actions: Option<Vec<String>>,
    would_run: Option<Vec<String>>,
    pages: Option<Vec<String>>,
    events: Option<Vec<PageEvent>>,
}

#[derive(Debug)]
struct Case {
    name: String,
    step: Duration,
    steps: usize,
    /// rule → query → each series' labels and values
    values: Series,
    inputs: Vec<(i64, String, InputKind)>,
    fail_actions: Vec<String>,
    max_actions_per_hour: u32,
    mode: Mode,
    blind_after: Duration,
    expect: Vec<(i64, Expect)>,
}

/// A test file, loaded and checked.
pub struct TestFile {
    pub path: PathBuf,
    rules: RuleSet,
    cases: Vec<Case>,
}

/// The result of one test case.
pub struct Outcome {
    pub name: String,
    pub failures: Vec<String>,
    pub timeline: String,
}

fn aligned(at: Duration, step: Duration) -> bool {
    !step.is_zero() && at.as_millis() % step.as_millis() == 0
}

/// Loads a test file and the rule files it names; all problems are reported
/// as diagnostics.
pub fn load(path: &Path) -> Result<TestFile, Vec<Diagnostic>> {
    let mut cx = Ctx::default();
    let loaded = (|| {
        let (root, v) = cx.read(path)?;
        let raw: RawTestFile = cx.de(&root, &v)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut files = Vec::new();
        for (i, f) in raw.rule_files.iter().enumerate() {
            let full = dir.join(f);
            let pattern = full.to_string_lossy().into_owned();
            match crate::config::load::expand_globs(std::slice::from_ref(&pattern)) {
                Ok(found) if !found.is_empty() => files.extend(found),
                Ok(_) => cx.error(
                    &root.key("rule_files").index(i),
                    format!("no rule file matches `{f}` (looked for {})", full.display()),
                ),
                Err(e) => cx.error(&root.key("rule_files").index(i), e),
            }
        }
        if cx.has_errors() {
            return None;
        }
        let rules = load_rule_files_into(&mut cx, &files)?;
        if cx.has_errors() {
            return None;
        }
        let mut cases = Vec::new();
        for (i, c) in raw.tests.into_iter().enumerate() {
            if let Some(case) = check_case(&mut cx, &root.key("tests").index(i), c, &rules) {
                cases.push(case);
            }
        }
        Some((rules, cases))
    })();
    match loaded {
        Some((rules, cases)) if !cx.has_errors() => Ok(TestFile {
            path: path.to_path_buf(),
            rules,
            cases,
        }),
        _ => {
            let mut d: Vec<Diagnostic> =
                cx.diags.into_iter().filter(Diagnostic::is_error).collect();
            crate::diag::sort(&mut d);
            Err(d)
        }
    }
}

type Series = IndexMap<String, IndexMap<String, Vec<(Labels, Vec<Value>)>>>;

/// `rule` or `rule{label="value",...}`, as a test names an instance: the
/// rule and the instance's labels (in PromQL's selector syntax, parsed by
/// promql-parser; only `=` matchers).
pub fn parse_instance(s: &str) -> Result<(String, Labels), String> {
    let Some((name, rest)) = s.split_once('{') else {
        return Ok((s.to_string(), Labels::new()));
    };
    let expr = promql_parser::parser::parse(&format!("x{{{rest}")).map_err(|e| {
        format!(
            "`{s}`: labels as in PromQL, `{{domain=\"chat\"}}`: {}",
            e.trim()
        )
    })?;
    let promql_parser::parser::Expr::VectorSelector(v) = expr else {
        return Err(format!("`{s}`: expected NAME{{label=\"value\", ...}}"));
    };
    let mut labels = Labels::new();
    for m in &v.matchers.matchers {
        if m.name == "__name__" {
            continue;
        }
        if m.op.to_string() != "=" {
            return Err(format!("`{s}`: only `label=\"value\"` names an instance"));
        }
        labels.insert(m.name.clone(), m.value.clone());
    }
    Ok((name.to_string(), labels))
}

/// Each `RULE.QUERY: series` of a case, checked against the rules; every
/// query of a tested rule needs one, and all have the same length.
fn check_values(cx: &mut Ctx, at: &At, c: &RawTestCase, rules: &RuleSet) -> (Series, usize) {
    let mut values: Series = IndexMap::new();
    let mut lengths: Vec<(String, usize)> = Vec::new();
    for (key, series) in &c.values {
        let vat = at.key("values").key(key);
        // `RULE.QUERY` or `RULE.QUERY{label="value",...}`: one series.
        let (base, labels) = match key.split_once('{') {
            Some((b, _)) => match parse_instance(key) {
                Ok((_, l)) => (b, l),
                Err(e) => {
                    cx.error_key(&vat, e);
                    continue;
                }
            },
            None => (key.as_str(), Labels::new()),
        };
        let Some((rule, query)) = base.rsplit_once('.') else {
            cx.error_key(
                &vat,
                format!("`{key}` must be RULE.QUERY or RULE.QUERY{{label=\"value\"}}, e.g. chat-5xx.rate"),
            );
            continue;
        };
        let Some(r) = rules.rule(rule) else {
            cx.error_key(&vat, format!("unknown rule `{rule}` in `{key}`"));
            continue;
        };
        if !r.queries.contains_key(query) {
            let qs: Vec<&str> = r.queries.keys().map(String::as_str).collect();
            cx.error_key(
                &vat,
                format!(
                    "rule `{rule}` has no query `{query}` (queries: {})",
                    qs.join(", ")
                ),
            );
            continue;
        }
        match parse_series(&series.0) {
            Ok(v) if v.is_empty() => cx.error(&vat, "a series needs at least one value"),
            Ok(v) => {
                lengths.push((key.clone(), v.len()));
                values
                    .entry(rule.to_string())
                    .or_default()
                    .entry(query.to_string())
                    .or_default()
                    .push((labels, v));
            }
            Err(e) => cx.error(&vat, e),
        }
    }
    for (rule, qs) in &values {
        if let Some(r) = rules.rule(rule) {
            for q in r.queries.keys() {
                if !qs.contains_key(q) {
                    cx.error(&at.key("values"), format!("no values for `{rule}.{q}`: every query of a tested rule needs a series"));
                }
            }
        }
    }
    let steps = lengths.iter().map(|(_, n)| *n).max().unwrap_or(0);
    if let Some((k, n)) = lengths.iter().find(|(_, n)| *n != steps) {
        cx.error(
            &at.key("values").key(k),
            format!("`{k}` has {n} values but the longest series has {steps}: give every series the same length"),
        );
    }
    (values, steps)
}

/// The evaluation times of a case: an `at:` must be one of them.
struct Times {
    step: Duration,
    last: i64,
}

impl Times {
    fn check(&self, cx: &mut Ctx, a: &At, d: Duration) -> Option<i64> {
        let ms = d.as_millis() as i64;
        if !aligned(d, self.step) {
            cx.error(
                a,
                format!(
                    "{} is not an evaluation time (every {})",
                    fmt_offset(ms),
                    fmt_offset(self.step.as_millis() as i64)
                ),
            );
            None
        } else if ms > self.last {
            cx.error(
                a,
                format!(
                    "{} is after the last evaluation ({})",
                    fmt_offset(ms),
                    fmt_offset(self.last)
                ),
            );
            None
        } else {
            Some(ms)
        }
    }
}

fn check_inputs(
    cx: &mut Ctx,
    at: &At,
    c: &RawTestCase,
    rules: &RuleSet,
    times: &Times,
) -> Vec<(i64, String, InputKind)> {
    let mut inputs = Vec::new();
    for (i, inp) in c.inputs.iter().enumerate() {
        let iat = at.key("inputs").index(i);
        if let Err(e) = parse_instance(&inp.rule) {
            cx.error(&iat.key("rule"), e);
        } else if rules.rule(&instance_rule(&inp.rule)).is_none() {
            cx.error(&iat.key("rule"), format!("unknown rule `{}`", inp.rule));
        }
        let kinds: Vec<InputKind> = [
            (inp.approve, InputKind::Approve),
            (inp.veto, InputKind::Veto),
            (inp.fire, InputKind::Fire),
            (inp.pause, InputKind::Pause),
            (inp.resume, InputKind::Resume),
        ]
        .into_iter()
        .filter_map(|(b, k)| (b == Some(true)).then_some(k))
        .collect();
        if kinds.len() != 1 {
            cx.error(&iat, "an input needs exactly one of `approve: true`, `veto: true`, `fire: true`, `pause: true`, `resume: true`");
            continue;
        }
        if let (Some(ms), Some(k)) = (
            times.check(cx, &iat.key("at"), inp.at.0),
            kinds.into_iter().next(),
        ) {
            // The instance's key as ripcord writes it.
            let key = match parse_instance(&inp.rule) {
                Ok((name, labels)) => crate::rule::instances::key(&name, &labels),
                Err(_) => inp.rule.clone(),
            };
            inputs.push((ms, key, k));
        }
    }
    for (i, a) in c.fail_actions.iter().enumerate() {
        if !rules.actions.contains_key(a) {
            cx.error(
                &at.key("fail_actions").index(i),
                format!("unknown action `{a}`"),
            );
        }
    }
    inputs
}

/// `text` (at `key`) as one of the names `parse` knows; an unknown one is
/// an error that lists them.
fn parse_name<T>(
    cx: &mut Ctx,
    at: &At,
    key: &str,
    text: Option<&str>,
    parse: fn(&str) -> Option<T>,
    list: fn() -> String,
) -> Option<T> {
    let text = text?;
    let parsed = parse(text);
    if parsed.is_none() {
        cx.error(
            &at.key(key),
            format!("unknown {key} `{text}` ({key}s: {})", list()),
        );
    }
    parsed
}

/// One expectation, its names parsed; `tested` says whether its rule gets
/// values or inputs in this case (`None`: do not check, the values had
/// errors).
fn check_expect(
    cx: &mut Ctx,
    eat: &At,
    e: RawExpect,
    rules: &RuleSet,
    tested: Option<bool>,
) -> Expect {
    let parse_list =
        |cx: &mut Ctx, key: &str, names: Option<Vec<String>>| -> Option<Vec<PageEvent>> {
            let names = names?;
            let mut out = Vec::new();
            for (i, n) in names.iter().enumerate() {
                match PageEvent::parse(n) {
                    Some(ev) => out.push(ev),
                    None => cx.error(
                        &eat.key(key).index(i),
                        format!("unknown page event `{n}` (events: {})", PageEvent::list()),
                    ),
                }
            }
            Some(out)
        };
    match &e.rule {
        None => {
            if e.state.is_some()
                || e.phase.is_some()
                || e.actions.is_some()
                || e.would_run.is_some()
                || e.pages.is_some()
            {
                cx.error(eat, "without `rule`, an expectation is about ripcord's own pages: only `events` (e.g. [blind, seeing])");
            }
        }
        Some(rule) if parse_instance(rule).is_err() => {
            if let Err(e) = parse_instance(rule) {
                cx.error(&eat.key("rule"), e);
            }
        }
        Some(rule) if rules.rule(&instance_rule(rule)).is_none() => {
            cx.error(&eat.key("rule"), format!("unknown rule `{rule}`"));
        }
        Some(rule) if tested == Some(false) => {
            cx.error(
                &eat.key("rule"),
                format!("rule `{rule}` gets no values in this test"),
            );
        }
        Some(_) => {}
    }
    let state = parse_name(
        cx,
        eat,
        "state",
        e.state.as_deref(),
        StateName::parse,
        StateName::list,
    );
    let phase = parse_name(
        cx,
        eat,
        "phase",
        e.phase.as_deref(),
        PhaseName::parse,
        PhaseName::list,
    );
    let events = parse_list(cx, "events", e.events);
    Expect {
        // The instance's key as ripcord writes it.
        rule: e.rule.map(|r| match parse_instance(&r) {
            Ok((name, labels)) => crate::rule::instances::key(&name, &labels),
            Err(_) => r,
        }),
        state,
        phase,
        actions: e.actions,
        would_run: e.would_run,
        pages: e.pages,
        events,
    }
}

fn check_case(cx: &mut Ctx, at: &At, c: RawTestCase, rules: &RuleSet) -> Option<Case> {
    let errors_before = cx.error_count();
    let step = c.step.0;
    if step.is_zero() {
        cx.error(&at.key("step"), "step must be greater than 0");
        return None;
    }
    let (values, steps) = check_values(cx, at, &c, rules);
    let values_ok = cx.error_count() == errors_before;
    let times = Times {
        step,
        last: step.as_millis() as i64 * steps.saturating_sub(1) as i64,
    };
    let inputs = check_inputs(cx, at, &c, rules, &times);
    let mut expect = Vec::new();
    for (i, e) in c.expect.into_iter().enumerate() {
        let eat = at.key("expect").index(i);
        let tested = values_ok.then(|| {
            e.rule.as_ref().map(|r| instance_rule(r)).is_none_or(|r| {
                values.contains_key(&r) || inputs.iter().any(|(_, ir, _)| instance_rule(ir) == r)
            })
        });
        let when = times.check(cx, &eat.key("at"), e.at.0);
        let parsed = check_expect(cx, &eat, e, rules, tested);
        if let Some(ms) = when {
            expect.push((ms, parsed));
        }
    }
    (cx.error_count() == errors_before).then(|| Case {
        name: c.name,
        step,
        steps,
        values,
        inputs,
        fail_actions: c.fail_actions,
        max_actions_per_hour: c.max_actions_per_hour.unwrap_or(5),
        mode: c.mode.unwrap_or_default(),
        blind_after: c.blind_after.map_or(DEFAULT_BLIND_AFTER, |d| d.0),
        expect,
    })
}

impl TestFile {
    pub fn run(&self) -> Vec<Outcome> {
        self.cases
            .iter()
            .map(|c| run_case(&self.rules, c))
            .collect()
    }
}

fn fmt_value(v: Option<f64>) -> String {
    match v {
        Some(f) => format!("{f}"),
        None => "_".into(),
    }
}

/// The rule named in `r` (`rule` or `rule{...}`).
fn instance_rule(r: &str) -> String {
    crate::rule::instances::rule_of(r).to_string()
}

/// What the rule's queries answered at step `k`: each series with a
/// value is in the answer, one without (`_`) is not.
fn evaluation(series: &IndexMap<String, Vec<(Labels, Vec<Value>)>>, k: usize) -> Evaluation {
    let mut answers = BTreeMap::new();
    let (mut failed, mut bad) = (false, None);
    for (q, all) in series {
        let mut vector = Vec::new();
        for (labels, s) in all {
            match s[k] {
                Value::Num(v) => vector.push((labels.clone(), v)),
                Value::NoData => {}
                Value::Error => failed = true,
                Value::Bad => bad = Some(q.clone()),
            }
        }
        answers.insert(q.clone(), Answer::Vector(vector));
    }
    match (failed, bad) {
        (true, _) => Evaluation::Failed("query failed (simulated by the test)".into()),
        (false, Some(q)) => Evaluation::Unevaluable(format!(
            "query `{q}` cannot be used (simulated by the test)"
        )),
        (false, None) => Evaluation::Answers(answers),
    }
}

/// The inputs due at `t`, through the same decisions as the daemon.
fn feed_inputs(sim: &mut Sim, c: &Case, now: Timestamp) {
    for (_, rule, kind) in c.inputs.iter().filter(|(at, ..)| *at == now.0) {
        let by = "test".to_string();
        let input = match kind {
            InputKind::Approve => Some(Input::Approve { by }),
            InputKind::Veto => Some(Input::Veto { by }),
            InputKind::Fire => Some(Input::Fire { by, dry_run: false }),
            InputKind::Pause => {
                sim.pause(now, None, "test");
                None
            }
            InputKind::Resume => {
                sim.resume();
                None
            }
        };
        if let Some(i) = input {
            let _ = sim.input(rule, i, now);
        }
    }
}

/// One timeline line per rule for step `t`: state, phase, values and what
/// happened since `log_start`.
fn timeline_lines(sim: &Sim, used: &BTreeSet<&String>, log_start: usize, t: i64, out: &mut String) {
    for e in sim.log[log_start..].iter().filter(|e| e.rule.is_empty()) {
        if let Happened::Page { kind, .. } = &e.what {
            let _ = writeln!(
                out,
                "{:>8}  {:<24} page {kind} → every notifier",
                fmt_offset(t),
                "(ripcord)"
            );
        }
    }
    let keys: Vec<String> = used.iter().flat_map(|r| sim.instances(r)).collect();
    for rule in &keys {
        let st = sim.state(rule);
        let vals: Vec<String> = st
            .last_values
            .iter()
            .map(|(q, v)| format!("{q}={}", fmt_value(*v)))
            .collect();
        let mut notes: Vec<String> = Vec::new();
        for e in sim.log[log_start..].iter().filter(|e| &e.rule == rule) {
            match &e.what {
                Happened::Action { name, dry_run } => notes.push(format!(
                    "{} {name}",
                    if *dry_run { "would run" } else { "ran" }
                )),
                Happened::Page { kind, notifiers } => {
                    notes.push(format!("page {kind} → {}", notifiers.join(",")))
                }
                Happened::Record(r) => match r {
                    crate::rule::Record::Transition { .. } => {}
                    other => notes.push(other.to_string()),
                },
                Happened::Joined { name, with, ok } => notes.push(format!(
                    "joined {name} of {with} ({})",
                    if *ok { "succeeded" } else { "failed" }
                )),
                Happened::Refused { name, why } => notes.push(format!("{name} not run: {why}")),
            }
        }
        let _ = writeln!(
            out,
            "{:>8}  {:<24} {:<11} {:<16} {}",
            fmt_offset(t),
            rule,
            st.name(),
            st.phase(),
            [vals.join(" "), notes.join("; ")]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("  ")
        );
    }
}

/// What differs from `e` at `now`.
fn problems(sim: &Sim, e: &Expect, now: Timestamp) -> Vec<String> {
    let mut out = Vec::new();
    let rule = e.rule.as_deref().unwrap_or_default();
    let st = sim.state(rule);
    if let Some(want) = e.state.filter(|w| *w != st.name()) {
        out.push(format!("state: expected {want}, got {}", st.name()));
    }
    if let Some(want) = e.phase.filter(|w| *w != st.phase()) {
        out.push(format!("phase: expected {want}, got {}", st.phase()));
    }
    let mut differs =
        |what: &str, want: &dyn std::fmt::Debug, got: &dyn std::fmt::Debug, same: bool| {
            if !same {
                out.push(format!("{what} so far: expected {want:?}, got {got:?}"));
            }
        };
    if let Some(want) = &e.actions {
        let got = sim.actions(rule, now, false);
        differs("actions run", want, &got, *want == got);
    }
    if let Some(want) = &e.would_run {
        let got = sim.actions(rule, now, true);
        differs("dry-run actions", want, &got, *want == got);
    }
    if let Some(want) = &e.pages {
        let want: BTreeSet<String> = want.iter().cloned().collect();
        let got = sim.pages(rule, now);
        differs("notifiers paged", &want, &got, want == got);
    }
    if let Some(want) = &e.events {
        let want: Vec<&str> = want.iter().map(|e| e.as_str()).collect();
        let got: Vec<&str> = sim
            .page_events(rule, now)
            .iter()
            .map(|e| e.as_str())
            .collect();
        differs("page events", &want, &got, want == got);
    }
    out
}

fn run_case(rules: &RuleSet, c: &Case) -> Outcome {
    let inputs: Vec<String> = c.inputs.iter().map(|(_, r, _)| instance_rule(r)).collect();
    let used: BTreeSet<&String> = c.values.keys().chain(inputs.iter()).collect();
    let rule_list: Vec<Arc<Rule>> = used
        .iter()
        .filter_map(|n| rules.rule(n).map(|r| r.evaluated_every(c.step)))
        .collect();
    let mut sim = Sim::new(rule_list, Shared::new(c.max_actions_per_hour, c.mode));
    sim.failing = c.fail_actions.iter().cloned().collect();
    sim.blind_after = c.blind_after;
    sim.actions = rules.actions.clone();
    let mut failures = Vec::new();
    let mut timeline = String::new();
    let step_ms = c.step.as_millis() as i64;
    for k in 0..c.steps {
        let t = k as i64 * step_ms;
        let now = Timestamp(t);
        let log_start = sim.log.len();
        for (rule, series) in &c.values {
            // The rule exists: check_case verified every name.
            let _ = sim.evaluate_answers(rule, &evaluation(series, k), now);
        }
        feed_inputs(&mut sim, c, now);
        timeline_lines(&sim, &used, log_start, t, &mut timeline);
        for (_, e) in c.expect.iter().filter(|(at, _)| *at == t) {
            let who = e.rule.as_deref().unwrap_or("ripcord");
            for p in problems(&sim, e, now) {
                failures.push(format!("at {}, {who}: {p}", fmt_offset(t)));
            }
        }
    }
    Outcome {
        name: c.name.clone(),
        failures,
        timeline,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_notation() {
        assert_eq!(
            parse_series("1 2").unwrap(),
            vec![Value::Num(1.0), Value::Num(2.0)]
        );
        assert_eq!(parse_series("0.001x3").unwrap(), vec![Value::Num(0.001); 3]);
        assert_eq!(
            parse_series("_x2 err").unwrap(),
            vec![Value::NoData, Value::NoData, Value::Error]
        );
        assert_eq!(
            parse_series("1+2x3 10-1x2").unwrap(),
            vec![
                Value::Num(1.0),
                Value::Num(3.0),
                Value::Num(5.0),
                Value::Num(10.0),
                Value::Num(9.0)
            ]
        );
        assert_eq!(
            parse_series("1e-3 -2").unwrap(),
            vec![Value::Num(0.001), Value::Num(-2.0)]
        );
        assert!(matches!(parse_series("NaN").unwrap()[0], Value::Num(v) if v.is_nan()));
        assert_eq!(
            parse_series("-Inf").unwrap(),
            vec![Value::Num(f64::NEG_INFINITY)]
        );
        assert!(parse_series("abc").unwrap_err().contains("bad value `abc`"));
        assert!(parse_series("1x0").unwrap_err().contains("repeat count"));
    }

    #[test]
    fn offsets() {
        assert_eq!(fmt_offset(0), "0s");
        assert_eq!(fmt_offset(210_000), "3m30s");
        assert_eq!(fmt_offset(3_600_000), "1h");
    }
}
