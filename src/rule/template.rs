//! Summary templates: `"chat 5xx at {{ rate | percent }}"`.
//!
//! minijinja does the parsing and rendering; ripcord adds the filters SREs
//! know from Prometheus (`percent`, `humanize`, `duration`, plus minijinja's
//! `round`) and checks at load that a template only names the rule's queries
//! and known filters.
//!
//! Every render is bounded: a fuel budget ([`FUEL`] minijinja instructions)
//! stops endless loops, and the output is capped at [`MAX_OUTPUT`] bytes. A
//! template that exceeds either on `check`'s sample values is an error; at
//! run time the page falls back to a plain summary with a note, so a
//! template can never hold up the engine.

use std::collections::BTreeMap;
use std::time::Duration;

use minijinja::{Environment, Value};

/// Variables every template may use besides the rule's queries.
pub const BUILTIN_VARS: &[&str] = &["rule", "severity", "labels"];

#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    source: String,
}

fn number(v: &Value) -> Option<f64> {
    f64::try_from(v.clone()).ok().filter(|f| f.is_finite())
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// 0.0123 → `1.23%`.
pub fn percent(v: Value) -> String {
    match number(&v) {
        Some(f) => format!("{}%", trim_zeros(format!("{:.2}", f * 100.0))),
        None => "no data".into(),
    }
}

/// Like Prometheus's `humanize`: 1234567 → `1.235M`, 0.0012 → `1.2m`.
pub fn humanize(v: Value) -> String {
    let Some(f) = number(&v) else {
        return "no data".into();
    };
    if f == 0.0 {
        return "0".into();
    }
    const BIG: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
    const SMALL: [&str; 7] = ["", "m", "µ", "n", "p", "f", "a"];
    let mut x = f;
    let mut i = 0;
    if f.abs() >= 1.0 {
        while x.abs() >= 1000.0 && i < BIG.len() - 1 {
            x /= 1000.0;
            i += 1;
        }
        format!("{}{}", trim_zeros(format!("{x:.4}")), BIG[i])
    } else {
        while x.abs() < 1.0 && i < SMALL.len() - 1 {
            x *= 1000.0;
            i += 1;
        }
        format!("{}{}", trim_zeros(format!("{x:.4}")), SMALL[i])
    }
}

/// Seconds → `1h 2m 3s`.
pub fn duration(v: Value) -> String {
    match number(&v) {
        Some(f) if f >= 0.0 => {
            let ms = (f * 1000.0).round() as u64;
            humantime::format_duration(Duration::from_millis(ms)).to_string()
        }
        Some(f) => format!("-{}", duration(Value::from(-f))),
        None => "no data".into(),
    }
}

/// minijinja instructions one render may spend.
pub const FUEL: u64 = 20_000;
/// The longest summary, in bytes.
pub const MAX_OUTPUT: usize = 4096;
/// The longest template source, in bytes.
pub const MAX_SOURCE: usize = 4096;

/// The deepest nesting of brackets, and the longest run of unary
/// operators, a template may have: minijinja's parser recurses on both.
pub const MAX_NESTING: usize = 32;

fn check_nesting(source: &str) -> Result<(), String> {
    let deepest = super::limits::bracket_depth(source, &['(', '[', '{'], &[')', ']', '}']);
    // Runs of unary operators (`not`, `-`, `+`, `~`), spaces between them
    // or not.
    let (mut run, mut longest) = (0usize, 0usize);
    for word in source.split_inclusive(|c: char| !c.is_alphanumeric() && c != '_') {
        let w = word.trim_end_matches(|c: char| !c.is_alphanumeric() && c != '_');
        let unary = w == "not" || matches!(word.trim(), "-" | "+" | "~");
        if unary {
            run += 1;
            longest = longest.max(run);
        } else if !word.trim().is_empty() {
            run = 0;
        }
    }
    if deepest > MAX_NESTING || longest > MAX_NESTING {
        return Err(format!(
            "invalid template: nests {} levels deep; the limit is {MAX_NESTING}",
            deepest.max(longest)
        ));
    }
    // A long chain of operators is a deep tree too (minijinja compiles it
    // recursively): count them inside `{{ }}` and `{% %}`.
    let mut operators = 0usize;
    let mut rest = source;
    while let Some(open) = rest.find(['{']) {
        let tag = &rest[open..];
        let close = match tag.get(..2) {
            Some("{{") => "}}",
            Some("{%") => "%}",
            _ => {
                rest = &rest[open + 1..];
                continue;
            }
        };
        let end = tag.find(close).map_or(tag.len(), |e| e + 2);
        let inside = &tag[..end];
        operators += inside
            .chars()
            .filter(|c| "+-*/%~<>=!|".contains(*c))
            .count();
        operators += inside
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .filter(|w| matches!(*w, "and" | "or" | "not" | "in" | "is"))
            .count();
        rest = &tag[end..];
    }
    if operators > MAX_OPERATORS {
        return Err(format!(
            "invalid template: {operators} operators in its tags; the limit is {MAX_OPERATORS}"
        ));
    }
    Ok(())
}

/// The most operators a template's tags may hold together.
pub const MAX_OPERATORS: usize = 128;

/// A writer that refuses to grow past `MAX_OUTPUT`.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT {
            return Err(std::io::Error::other(format!(
                "the summary is longer than {MAX_OUTPUT} bytes"
            )));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One environment for every template (building one registers every
/// builtin: too slow to do per rule when 100 000 are checked).
fn environment() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(new_environment)
}

fn new_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.add_filter("percent", percent);
    env.add_filter("humanize", humanize);
    env.add_filter("duration", duration);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env
}

/// Renders a parsed template within the fuel and output budgets.
/// The labels of an alert-style rule's trial render: whatever is asked.
#[derive(Debug)]
struct AnyLabel;

impl minijinja::value::Object for AnyLabel {
    fn get_value(self: &std::sync::Arc<Self>, _key: &Value) -> Option<Value> {
        Some(Value::from("x"))
    }
}

fn render_with(
    tmpl: &minijinja::Template<'_, '_>,
    rule: &str,
    severity: &str,
    labels: &BTreeMap<String, String>,
    values: &BTreeMap<String, Option<f64>>,
) -> Result<String, String> {
    render_ctx(tmpl, rule, severity, Value::from_serialize(labels), values)
}

fn render_ctx(
    tmpl: &minijinja::Template<'_, '_>,
    rule: &str,
    severity: &str,
    labels: Value,
    values: &BTreeMap<String, Option<f64>>,
) -> Result<String, String> {
    let mut ctx: BTreeMap<String, Value> = values
        .iter()
        .map(|(k, v)| (k.clone(), v.map(Value::from).unwrap_or(Value::from(()))))
        .collect();
    ctx.insert("rule".into(), Value::from(rule));
    ctx.insert("severity".into(), Value::from(severity));
    ctx.insert("labels".into(), labels);
    let mut out = Capped(Vec::new());
    let rendered = tmpl.render_captured_to(ctx, &mut out).map(|_| ());
    match rendered {
        Ok(()) => Ok(String::from_utf8_lossy(&out.0).into_owned()),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(format!(
            "rendering takes more than {FUEL} steps (a loop too long?)"
        )),
        Err(e) if e.kind() == minijinja::ErrorKind::WriteFailure => {
            Err(format!("the summary is longer than {MAX_OUTPUT} bytes"))
        }
        Err(e) => Err(match e.detail() {
            Some(d) => d.to_string(),
            None => e.to_string(),
        }),
    }
}

impl Template {
    /// Compiles `source` and checks it against the rule's query names.
    /// Rules made from one pattern share their summary (the default one
    /// above all): a verdict is remembered for the same source and names.
    pub fn compile(source: &str, queries: &[&str]) -> Result<Template, String> {
        Self::compile_with_labels(source, queries, Some(&[]))
    }

    /// Compiles `source` for a rule whose pages carry `labels` (its own and
    /// its `by:` labels; `None`: any label, an alert-style rule's series').
    pub fn compile_with_labels(
        source: &str,
        queries: &[&str],
        labels: Option<&[String]>,
    ) -> Result<Template, String> {
        type Key = (String, Vec<String>, Option<Vec<String>>);
        type Verdicts = std::collections::HashMap<Key, Result<(), String>>;
        static SEEN: std::sync::OnceLock<std::sync::Mutex<Verdicts>> = std::sync::OnceLock::new();
        let key = (
            source.to_string(),
            queries.iter().map(|q| q.to_string()).collect::<Vec<_>>(),
            labels.map(<[String]>::to_vec),
        );
        let seen = SEEN.get_or_init(Default::default);
        if let Some(v) = seen.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return v.map(|()| Template {
                source: source.to_string(),
            });
        }
        let verdict = Self::compile_uncached(source, queries, labels).map(|_| ());
        if let Ok(mut m) = seen.lock() {
            if m.len() >= 4096 {
                m.clear();
            }
            m.insert(key, verdict.clone());
        }
        verdict.map(|()| Template {
            source: source.to_string(),
        })
    }

    fn compile_uncached(
        source: &str,
        queries: &[&str],
        labels: Option<&[String]>,
    ) -> Result<Template, String> {
        if source.len() > MAX_SOURCE {
            return Err(format!(
                "invalid template: {} bytes long; the limit is {MAX_SOURCE}",
                source.len()
            ));
        }
        check_nesting(source)?;
        let env = environment();
        let tmpl = env
            .template_from_str(source)
            .map_err(|e| format!("invalid template: {}", e.detail().unwrap_or("syntax error")))?;
        let mut unknown: Vec<String> = tmpl
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !queries.contains(&v.as_str()) && !BUILTIN_VARS.contains(&v.as_str()))
            .collect();
        unknown.sort();
        if let Some(u) = unknown.first() {
            return Err(format!(
                "template uses `{u}`, which is not a query of this rule (queries: {})",
                queries.join(", ")
            ));
        }
        let sample: BTreeMap<String, Option<f64>> = queries
            .iter()
            .map(|q| (q.to_string(), Some(0.0123)))
            .collect();
        let rendered = match labels {
            Some(names) => {
                let l: BTreeMap<String, String> =
                    names.iter().map(|n| (n.clone(), "x".to_string())).collect();
                render_with(&tmpl, "rule", "critical", &l, &sample)
            }
            // Any label may be there: every one is, for the trial.
            None => render_ctx(
                &tmpl,
                "rule",
                "critical",
                Value::from_object(AnyLabel),
                &sample,
            ),
        };
        rendered.map_err(|e| format!("invalid template: {e}"))?;
        Ok(Template {
            source: source.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    fn try_render(
        &self,
        rule: &str,
        severity: &str,
        labels: &BTreeMap<String, String>,
        values: &BTreeMap<String, Option<f64>>,
    ) -> Result<String, String> {
        let tmpl = environment()
            .template_from_str(&self.source)
            .map_err(|e| e.detail().unwrap_or("syntax error").to_string())?;
        render_with(&tmpl, rule, severity, labels, values)
    }

    /// Renders with the latest values (`None` = no data). A template that
    /// passed `compile` cannot fail here; if it somehow does, the page still
    /// goes out with the template's text and the reason.
    pub fn render(
        &self,
        rule: &str,
        severity: &str,
        labels: &BTreeMap<String, String>,
        values: &BTreeMap<String, Option<f64>>,
    ) -> String {
        self.try_render(rule, severity, labels, values)
            .unwrap_or_else(|e| {
                let vals = fmt_values(values).join(" ");
                format!("{rule} breached: {vals} (summary template failed: {e})")
            })
    }
}

/// `rate=0.02 baseline=_` (`_` is no data), as logs and tables show values.
pub fn fmt_values(values: &BTreeMap<String, Option<f64>>) -> Vec<String> {
    values
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.map(|f| f.to_string()).unwrap_or_else(|| "_".into())
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        assert_eq!(percent(Value::from(0.0123)), "1.23%");
        assert_eq!(percent(Value::from(0.005)), "0.5%");
        assert_eq!(percent(Value::from(f64::NAN)), "no data");
        assert_eq!(humanize(Value::from(1234567.0)), "1.2346M");
        assert_eq!(humanize(Value::from(0.0012)), "1.2m");
        assert_eq!(humanize(Value::from(42)), "42");
        assert_eq!(duration(Value::from(3723.0)), "1h 2m 3s");
        assert_eq!(duration(Value::from(0.25)), "250ms");
    }

    #[test]
    fn renders_values_and_no_data() {
        let t = Template::compile(
            "{{ rule }}: 5xx at {{ rate | percent }} (baseline {{ baseline | percent }}), p95 {{ p95 | round(2) }}",
            &["rate", "baseline", "p95"],
        )
        .unwrap();
        let mut v = BTreeMap::new();
        v.insert("rate".to_string(), Some(0.02));
        v.insert("baseline".to_string(), None);
        v.insert("p95".to_string(), Some(0.123456));
        assert_eq!(
            t.render("chat-5xx", "critical", &BTreeMap::new(), &v),
            "chat-5xx: 5xx at 2% (baseline no data), p95 0.12"
        );
    }

    #[test]
    fn rejects_unknown_variables_filters_and_syntax() {
        let e = Template::compile("{{ rat | percent }}", &["rate"]).unwrap_err();
        assert!(e.contains("`rat`"), "{e}");
        let e = Template::compile("{{ rate | percentage }}", &["rate"]).unwrap_err();
        assert!(e.contains("percentage"), "{e}");
        let e = Template::compile("{{ rate ", &["rate"]).unwrap_err();
        assert!(e.starts_with("invalid template"), "{e}");
    }

    #[test]
    fn renders_are_bounded_in_steps_and_size() {
        let t0 = std::time::Instant::now();
        let e = Template::compile(
            "{% for a in 'x' * 100000 %}{% for b in 'x' * 100000 %}{% endfor %}{% endfor %}",
            &["rate"],
        )
        .unwrap_err();
        assert!(e.contains("more than 20000 steps"), "{e}");
        let e = Template::compile("{{ 'x' * 100000 }}", &["rate"]).unwrap_err();
        assert!(e.contains("longer than 4096 bytes"), "{e}");
        let e = Template::compile(&"x".repeat(5000), &["rate"]).unwrap_err();
        assert!(e.contains("limit is 4096"), "{e}");
        let chain = format!("{{% if rate{} > 1 %}}x{{% endif %}}", "*rate".repeat(200));
        let e = Template::compile(&chain, &["rate"]).unwrap_err();
        assert!(e.contains("the limit is 128"), "{e}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        // A template that passed compile but blows up on live values falls
        // back to a plain summary.
        let t = Template::compile("{{ 'x' * (rate * 1000) | int }}", &["rate"]).unwrap();
        let v = BTreeMap::from([("rate".to_string(), Some(100.0))]);
        let s = t.render("r", "critical", &BTreeMap::new(), &v);
        assert!(
            s.starts_with("r breached: rate=100 (summary template failed"),
            "{s}"
        );
    }
}
