//! A rule's `condition`: an evalexpr expression over the rule's query values.
//!
//! Compiled once at load; the only variables are the rule's query names, and
//! the expression must yield a boolean. Evaluating it is pure.
//!
//! Every number is a float: query values are bound as floats and every
//! integer literal is turned into a float when the condition is compiled, so
//! `up == 0` holds for a value of 0, `v != 0` does not, and `v > 1/2` means
//! `v > 0.5` (evalexpr alone compares `0.0 == 0` as false and divides
//! integers as integers). `==` and `!=` compare exactly, as IEEE 754 does:
//! right for values that are counts or flags (`up == 0`), wrong for computed
//! ratios; write `v < 0.0001` rather than `v == 0` for those.
//!
//! A condition is at most [`MAX_LEN`] bytes and [`MAX_DEPTH`] levels deep,
//! checked before it is parsed, so no rule file can exhaust the stack.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use evalexpr::{ContextWithMutableVariables, HashMapContext, Node, Value};

/// Compiled conditions by text, so rules with the same condition share one
/// tree (a tree is ~450 bytes; rule sets written from a template repeat
/// their conditions thousands of times). Weak: a tree no rule holds goes.
static COMPILED: Mutex<Option<HashMap<String, Weak<Node>>>> = Mutex::new(None);

/// `node`, compiled from `source`, or the tree already compiled from the
/// same text.
fn shared(source: &str, node: Node) -> Arc<Node> {
    let Ok(mut guard) = COMPILED.lock() else {
        return Arc::new(node);
    };
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(n) = map.get(source).and_then(Weak::upgrade) {
        return n;
    }
    // Trees of removed rules leave dead entries: drop them as the map grows.
    if map.len() >= 1024 && map.len().is_power_of_two() {
        map.retain(|_, w| w.strong_count() > 0);
    }
    let n = Arc::new(node);
    map.insert(source.to_string(), Arc::downgrade(&n));
    n
}

#[derive(Clone, Debug)]
pub struct Condition {
    source: String,
    /// `None`: alert-style, every series the query returns breaches.
    /// Shared by every rule with the same condition text.
    node: Option<Arc<Node>>,
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

fn context(values: &BTreeMap<String, f64>) -> Result<HashMapContext, String> {
    let mut ctx = HashMapContext::new();
    for (k, v) in values {
        ctx.set_value(k.clone(), Value::Float(*v))
            .map_err(|e| e.to_string())?;
    }
    Ok(ctx)
}

/// The longest condition accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// The deepest nesting accepted: parentheses, and unary operators in a row.
pub const MAX_DEPTH: usize = 64;
/// The most tokens (names, numbers, operators) a condition may have.
pub const MAX_TOKENS: usize = 256;

/// Refuses sources whose tree would be too deep to parse or evaluate safely:
/// nested parentheses and runs of unary operators count as depth; so does a
/// long chain of binary operators (evalexpr builds it as a chain), bounded
/// by the length limit.
fn check_size(source: &str) -> Result<(), String> {
    if source.len() > MAX_LEN {
        return Err(format!(
            "condition is {} bytes long; the limit is {MAX_LEN}: split it into queries",
            source.len()
        ));
    }
    let deepest = super::limits::bracket_depth(source, &['('], &[')']);
    let (mut unary_run, mut max_unary) = (0usize, 0usize);
    for c in source.chars() {
        match c {
            '!' | '-' => {
                unary_run += 1;
                max_unary = max_unary.max(unary_run);
                continue;
            }
            c if c.is_whitespace() => continue,
            _ => {}
        }
        unary_run = 0;
    }
    if deepest > MAX_DEPTH || max_unary > MAX_DEPTH {
        return Err(format!(
            "condition nests {} levels deep; the limit is {MAX_DEPTH}",
            deepest.max(max_unary)
        ));
    }
    // evalexpr's parser recurses once per token: bound the tokens (runs
    // of word characters, and every other character that is not a space).
    let mut tokens = 0usize;
    let mut in_word = false;
    for c in source.chars() {
        let word = c.is_alphanumeric() || c == '_' || c == '.';
        if word && !in_word || !word && !c.is_whitespace() {
            tokens += 1;
        }
        in_word = word;
    }
    if tokens > MAX_TOKENS {
        return Err(format!(
            "condition has {tokens} tokens; the limit is {MAX_TOKENS}: split it into queries"
        ));
    }
    Ok(())
}

/// Turns every integer constant into a float, so comparisons and
/// arithmetic are numeric whatever literal the user wrote. Iterative: the
/// tree's depth is bounded by [`check_size`], but no recursion is needed.
fn floats_only(node: &mut Node) {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        if let evalexpr::Operator::Const { value } = n.operator_mut() {
            if let Value::Int(i) = value {
                *value = Value::Float(*i as f64);
            }
        }
        stack.extend(n.children_mut().iter_mut());
    }
}

impl Condition {
    /// Compiles `source`, allowing exactly `queries` as variables.
    pub fn compile(source: &str, queries: &[&str]) -> Result<Condition, String> {
        check_size(source)?;
        let mut node = evalexpr::build_operator_tree(source)
            .map_err(|e| format!("invalid condition `{source}`: {e}"))?;
        floats_only(&mut node);
        if let Some(w) = node.iter_write_variable_identifiers().next() {
            return Err(format!(
                "invalid condition `{source}`: assigns to `{w}`; a condition only compares values"
            ));
        }
        let mut unknown: Vec<&str> = node
            .iter_read_variable_identifiers()
            .filter(|v| !queries.contains(v))
            .collect();
        unknown.dedup();
        if let Some(u) = unknown.first() {
            return Err(format!(
                "condition uses `{u}`, which is not a query of this rule (queries: {})",
                queries.join(", ")
            ));
        }
        if node.iter_read_variable_identifiers().next().is_none() {
            return Err(format!(
                "condition `{source}` uses no query: it would always be {}",
                node.eval_boolean()
                    .map(|b| b.to_string())
                    .unwrap_or_else(|_| "the same".into())
            ));
        }
        let c = Condition {
            source: source.to_string(),
            node: Some(shared(source, node)),
        };
        // Try it on sample values: this catches non-boolean results, unknown
        // functions and type errors before production does.
        for sample in [1.0, 0.0, 0.5] {
            let values = queries.iter().map(|q| (q.to_string(), sample)).collect();
            c.eval(&values)?;
        }
        Ok(c)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// An alert-style rule's condition (no `condition:`): a series of
    /// `query` in the answer breaches, whatever its value.
    pub fn presence(query: &str) -> Condition {
        Condition {
            source: format!("every series of {query} breaches (alert-style)"),
            node: None,
        }
    }

    /// Whether this is an alert-style rule's [`Condition::presence`].
    pub fn is_presence(&self) -> bool {
        self.node.is_none()
    }

    /// Evaluates with every query's value. All values must be finite numbers;
    /// missing data is decided before a condition is evaluated.
    pub fn eval(&self, values: &BTreeMap<String, f64>) -> Result<bool, String> {
        let Some(node) = &self.node else {
            return Ok(true);
        };
        let ctx = context(values)?;
        match node.eval_with_context(&ctx) {
            Ok(Value::Boolean(b)) => Ok(b),
            Ok(other) => Err(format!(
                "condition `{}` must be true or false, but gives {} ({other})",
                self.source,
                type_name(&other)
            )),
            Err(e) => Err(format!("condition `{}` failed: {e}", self.source)),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Float(_) | Value::Int(_) => "a number",
        Value::Boolean(_) => "a boolean",
        Value::Tuple(_) => "a tuple",
        Value::Empty => "nothing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn rules_with_the_same_condition_share_its_tree() {
        let a = Condition::compile("v > 0.25", &["v"]).unwrap();
        let b = Condition::compile("v > 0.25", &["v", "w"]).unwrap();
        let c = Condition::compile("v > 0.5", &["v"]).unwrap();
        let (na, nb, nc) = (
            a.node.clone().unwrap(),
            b.node.clone().unwrap(),
            c.node.clone().unwrap(),
        );
        assert!(Arc::ptr_eq(&na, &nb));
        assert!(!Arc::ptr_eq(&na, &nc));
        // Shared, they still decide on their own values.
        assert!(a.eval(&vals(&[("v", 0.3)])).unwrap());
        assert!(!c.eval(&vals(&[("v", 0.3)])).unwrap());
        // A tree no rule holds is compiled anew.
        drop((a, b, na, nb));
        let d = Condition::compile("v > 0.25", &["v"]).unwrap();
        assert!(d.eval(&vals(&[("v", 0.3)])).unwrap());
    }

    #[test]
    fn evaluates_mixed_int_and_float() {
        let c = Condition::compile("rate > 0.005 || rate > 5 * baseline", &["rate", "baseline"])
            .unwrap();
        assert!(c
            .eval(&vals(&[("rate", 0.02), ("baseline", 0.001)]))
            .unwrap());
        assert!(!c
            .eval(&vals(&[("rate", 0.001), ("baseline", 0.001)]))
            .unwrap());
        assert!(c
            .eval(&vals(&[("rate", 0.004), ("baseline", 0.0001)]))
            .unwrap());
        let c = Condition::compile("stuck > 10", &["stuck"]).unwrap();
        assert!(c.eval(&vals(&[("stuck", 11.0)])).unwrap());
        assert!(!c.eval(&vals(&[("stuck", 10.0)])).unwrap());
    }

    #[test]
    fn rejects_unknown_variables_non_boolean_and_assignment() {
        let e = Condition::compile("rat > 1", &["rate"]).unwrap_err();
        assert!(e.contains("`rat`"), "{e}");
        let e = Condition::compile("rate * 2", &["rate"]).unwrap_err();
        assert!(e.contains("must be true or false"), "{e}");
        let e = Condition::compile("rate = 2", &["rate"]).unwrap_err();
        assert!(e.contains("assigns"), "{e}");
        let e = Condition::compile("rate >", &["rate"]).unwrap_err();
        assert!(e.contains("`rate >`"), "{e}");
        let e = Condition::compile("rate > (1", &["rate"]).unwrap_err();
        assert!(e.starts_with("invalid condition"), "{e}");
        let e = Condition::compile("1 > 0", &["rate"]).unwrap_err();
        assert!(e.contains("uses no query"), "{e}");
        let e = Condition::compile("nosuchfn(rate) > 1", &["rate"]).unwrap_err();
        assert!(e.contains("failed"), "{e}");
    }

    /// Every comparison × an integer or a float literal × a value equal to,
    /// below and above it: the verdict is the numeric one.
    #[test]
    fn comparisons_are_numeric_whatever_the_literal() {
        type Op = (&'static str, fn(f64, f64) -> bool);
        let ops: [Op; 6] = [
            ("==", |a, b| a == b),
            ("!=", |a, b| a != b),
            ("<", |a, b| a < b),
            ("<=", |a, b| a <= b),
            (">", |a, b| a > b),
            (">=", |a, b| a >= b),
        ];
        let literals: [(&str, f64); 6] = [
            ("0", 0.0),
            ("0.0", 0.0),
            ("3", 3.0),
            ("3.0", 3.0),
            ("-2", -2.0),
            ("0.25", 0.25),
        ];
        let mut cases = 0;
        for (op, truth) in ops {
            for (lit, num) in literals {
                let c = Condition::compile(&format!("v {op} {lit}"), &["v"]).unwrap();
                for value in [num, num - 1.0, num + 1.0, num - 0.125, num + 0.125] {
                    let got = c.eval(&vals(&[("v", value)])).unwrap();
                    assert_eq!(got, truth(value, num), "v={value}: v {op} {lit}");
                    cases += 1;
                }
                // The literal on the left.
                let c = Condition::compile(&format!("{lit} {op} v"), &["v"]).unwrap();
                for value in [num, num - 1.0, num + 1.0] {
                    let got = c.eval(&vals(&[("v", value)])).unwrap();
                    assert_eq!(got, truth(num, value), "v={value}: {lit} {op} v");
                }
            }
        }
        assert_eq!(cases, 6 * 6 * 5);
    }

    #[test]
    fn arithmetic_mixing_integers_and_floats_is_float_arithmetic() {
        // 1/2 is 0.5, not integer 0; 5 * baseline mixes an integer and a float.
        let c = Condition::compile("v > 1/2", &["v"]).unwrap();
        assert!(c.eval(&vals(&[("v", 0.6)])).unwrap());
        assert!(!c.eval(&vals(&[("v", 0.4)])).unwrap());
        let c = Condition::compile("v == 2 * 3 - 1", &["v"]).unwrap();
        assert!(c.eval(&vals(&[("v", 5.0)])).unwrap());
        let c = Condition::compile("v % 2 == 1", &["v"]).unwrap();
        assert!(c.eval(&vals(&[("v", 3.0)])).unwrap());
        assert!(!c.eval(&vals(&[("v", 4.0)])).unwrap());
        let c = Condition::compile("up == 0 || up != 1", &["up"]).unwrap();
        assert!(c.eval(&vals(&[("up", 0.0)])).unwrap());
        assert!(!c.eval(&vals(&[("up", 1.0)])).unwrap());
    }

    #[test]
    fn long_and_deep_conditions_are_refused_before_parsing() {
        let long = format!("q{}", " + q".repeat(50_000));
        let e = Condition::compile(&format!("{long} > 1"), &["q"]).unwrap_err();
        assert!(e.contains("limit is 4096"), "{e}");
        let e = Condition::compile(&format!("q{} > 1", " + q".repeat(200)), &["q"]).unwrap_err();
        assert!(e.contains("the limit is 256"), "{e}");
        let e = Condition::compile(&format!("q > 1 {}", ": ".repeat(1000)), &["q"]).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        let e = Condition::compile(&format!("{}q > 1", "!".repeat(2000)), &["q"]).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        let deep = format!("{}q{} > 1", "(".repeat(100), ")".repeat(100));
        let e = Condition::compile(&deep, &["q"]).unwrap_err();
        assert!(e.contains("nests 100 levels"), "{e}");
        let ok = format!("{}q{} > 1", "(".repeat(60), ")".repeat(60));
        Condition::compile(&ok, &["q"]).unwrap();
    }
}
