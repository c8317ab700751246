//! A rule's `condition`: an evalexpr expression over the rule's query values.
//!
//! Compiled once at load; the only variables are the rule's query names, and
//! the expression must yield a boolean. Evaluating it is pure.

use std::collections::BTreeMap;

use evalexpr::{ContextWithMutableVariables, HashMapContext, Node, Value};

#[derive(Clone, Debug)]
pub struct Condition {
    source: String,
    node: Node,
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

impl Condition {
    /// Compiles `source`, allowing exactly `queries` as variables.
    pub fn compile(source: &str, queries: &[&str]) -> Result<Condition, String> {
        let node = evalexpr::build_operator_tree(source)
            .map_err(|e| format!("invalid condition `{source}`: {e}"))?;
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
            node,
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

    /// Evaluates with every query's value. All values must be finite numbers;
    /// missing data is decided before a condition is evaluated.
    pub fn eval(&self, values: &BTreeMap<String, f64>) -> Result<bool, String> {
        let ctx = context(values)?;
        match self.node.eval_with_context(&ctx) {
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
}
