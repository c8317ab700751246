//! What `ripcord check` can tell about a query's result without running it:
//! can it return more than one series? A rule without `by:` needs one
//! number, and a query that returns several is an evaluation error at run
//! time (a rule written in staging against one pod, then scaled out), so
//! `check` warns and names the labels that would tell the series apart.

use promql_parser::parser::{Expr, LabelModifier};

/// The result's shape, as far as the expression says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A number, or at most one series: `vector()`, `scalar()`, an
    /// aggregation without grouping, `absent()`.
    One,
    /// Possibly several series, told apart by these labels (`None`: by
    /// every label the series have).
    Many(Option<Vec<String>>),
}

fn grouped(modifier: &Option<LabelModifier>) -> Shape {
    match modifier {
        None => Shape::One,
        Some(LabelModifier::Include(ls)) if ls.labels.is_empty() => Shape::One,
        Some(LabelModifier::Include(ls)) => {
            Shape::Many(Some(ls.labels.iter().map(|l| l.to_string()).collect()))
        }
        Some(LabelModifier::Exclude(_)) => Shape::Many(None),
    }
}

/// The shape of `expr`'s result.
pub fn shape(expr: &Expr) -> Shape {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Shape::One,
        Expr::VectorSelector(_) | Expr::MatrixSelector(_) | Expr::Extension(_) => Shape::Many(None),
        Expr::Paren(p) => shape(&p.expr),
        Expr::Unary(u) => shape(&u.expr),
        Expr::Subquery(s) => shape(&s.expr),
        Expr::Aggregate(a) => match a.op.to_string().as_str() {
            // k series, or one per distinct value.
            "topk" | "bottomk" | "limitk" | "limit_ratio" | "count_values" => {
                match grouped(&a.modifier) {
                    Shape::One => Shape::Many(None),
                    many => many,
                }
            }
            _ => grouped(&a.modifier),
        },
        Expr::Call(c) => match c.func.name {
            "vector" | "scalar" | "time" | "absent" | "absent_over_time" | "pi" => Shape::One,
            // The buckets' `le` is what it folds away.
            "histogram_quantile" => match c.args.args.last().map(|a| shape(a)) {
                Some(Shape::Many(Some(ls))) => {
                    let rest: Vec<String> = ls.into_iter().filter(|l| l != "le").collect();
                    if rest.is_empty() {
                        Shape::One
                    } else {
                        Shape::Many(Some(rest))
                    }
                }
                Some(other) => other,
                None => Shape::One,
            },
            _ => c
                .args
                .args
                .iter()
                .map(|a| shape(a))
                .find(|s| *s != Shape::One)
                .unwrap_or(Shape::One),
        },
        Expr::Binary(b) => match (shape(&b.lhs), shape(&b.rhs)) {
            (Shape::One, Shape::One) => Shape::One,
            (Shape::One, many) | (many, Shape::One) => many,
            (lhs, _) => lhs,
        },
    }
}

/// The warning for a query named `name` of a rule without `by:`, if its
/// result can have more than one series.
pub fn many_series_warning(name: &str, expr: &Expr) -> Option<String> {
    match shape(expr) {
        Shape::One => None,
        Shape::Many(labels) => {
            let keeps = match &labels {
                Some(ls) => format!("it keeps the labels {}", ls.join(", ")),
                None => "it keeps the series' labels".to_string(),
            };
            let by = match labels {
                Some(ls) if !ls.is_empty() => format!("`by: [{}]`", ls.join(", ")),
                _ => "`by: [LABEL, ...]`".to_string(),
            };
            Some(format!(
                "query `{name}` can return more than one series ({keeps}); a rule without `by:` needs one number, and several series make it unevaluable: aggregate it (e.g. max(...) or sum(...)) if one series is meant, or add {by} for one instance per series"
            ))
        }
    }
}

/// Where a query that does not parse goes wrong, as a character offset:
/// the first token after the longest prefix that parses on its own (the
/// parser says what is wrong, not where). 0 if no prefix parses, or the
/// query is too long to search.
pub fn fault_offset(expr: &str) -> usize {
    const MAX: usize = 4096;
    if expr.len() > MAX {
        return 0;
    }
    let ends: Vec<usize> = expr
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .filter(|&e| !expr[..e].ends_with(char::is_whitespace))
        .collect();
    let longest = ends
        .iter()
        .rev()
        .copied()
        .find(|&e| e < expr.len() && promql_parser::parser::parse(&expr[..e]).is_ok());
    match longest {
        None => expr.len() - expr.trim_start().len(),
        Some(e) => {
            let rest = &expr[e..];
            let skip = rest.len() - rest.trim_start().len();
            expr[..e + skip].chars().count()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(q: &str) -> Shape {
        shape(&promql_parser::parser::parse(q).expect("valid PromQL"))
    }

    #[test]
    fn one_number_or_many_series() {
        let one = [
            "sum(rate(http_requests_total{code=~\"5..\"}[5m])) / sum(rate(http_requests_total[5m]))",
            "max(up{job=\"importer\"})",
            "vector(1)",
            "scalar(up)",
            "1 + 2",
            "histogram_quantile(0.95, sum(rate(h_bucket[5m])) by ())",
            "histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m])))",
            "absent(up{job=\"x\"})",
            "sum(x) > 0.5",
            "time() - max(last_success_timestamp)",
        ];
        for q in one {
            assert_eq!(sh(q), Shape::One, "{q}");
        }
        let many: [(&str, Option<&[&str]>); 7] = [
            ("up", None),
            ("up{job=\"importer\"} == 0", None),
            ("rate(x_total[5m])", None),
            (
                "sum by (pod, namespace) (rate(x[5m]))",
                Some(&["pod", "namespace"]),
            ),
            ("sum without (instance) (x)", None),
            ("topk(3, x)", None),
            (
                "histogram_quantile(0.95, sum by (le, job) (rate(h_bucket[5m])))",
                Some(&["job"]),
            ),
        ];
        for (q, labels) in many {
            let want = Shape::Many(labels.map(|l| l.iter().map(|s| s.to_string()).collect()));
            assert_eq!(sh(q), want, "{q}");
        }
    }

    #[test]
    fn the_warning_names_the_query_and_the_labels() {
        let parse = |q| promql_parser::parser::parse(q).expect("valid");
        let w = many_series_warning("v", &parse("sum by (pod) (x)")).expect("warns");
        assert!(w.contains("query `v`") && w.contains("labels pod"), "{w}");
        assert!(many_series_warning("v", &parse("sum(x)")).is_none());
    }

    #[test]
    fn a_fault_is_the_first_token_after_the_longest_prefix_that_parses() {
        for (q, at) in [
            ("sum(rate(x[5m])) by", 17),
            ("foo{a=\"b\"", 3),
            ("sum(rate(foo[5m])", 3),
            ("rate(x[5m]) +", 12),
            (
                "sum(rate(foo[5m]))\n  / on(job) group_left bar{a=\"b\"\n",
                45,
            ),
            ("   )", 3),
        ] {
            assert_eq!(fault_offset(q), at, "{q:?}");
        }
    }
}
