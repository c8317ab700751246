//! Each rule's recent values, for the web page's sparklines: the last
//! [`KEEP`] evaluations of each query, as `f32` (NaN for no data), in the
//! order the rule names its queries. Kept in memory only; a restart or a
//! changed rule starts it again. Reads nothing and decides nothing.
use std::collections::VecDeque;

use crate::config::Rule;

/// Evaluations kept per query.
pub(super) const KEEP: usize = 30;

#[derive(Debug, Default)]
pub(super) struct Recent {
    /// One ring per query of the rule, in its order.
    rings: Vec<VecDeque<f32>>,
}

impl Recent {
    /// Records one evaluation's values.
    pub(super) fn push(&mut self, rule: &Rule, values: &litemap::LiteMap<String, Option<f64>>) {
        if self.rings.len() != rule.queries.len() {
            self.rings = vec![VecDeque::with_capacity(KEEP); rule.queries.len()];
        }
        for (ring, name) in self.rings.iter_mut().zip(rule.queries.keys()) {
            if ring.len() == KEEP {
                ring.pop_front();
            }
            let v = values
                .get(name)
                .copied()
                .flatten()
                .filter(|v| v.is_finite());
            ring.push_back(v.map_or(f32::NAN, |v| v as f32));
        }
    }

    /// Each query's name and values, oldest first (`None`: no data).
    pub(super) fn series(&self, rule: &Rule) -> Vec<(String, Vec<Option<f64>>)> {
        self.rings
            .iter()
            .zip(rule.queries.keys())
            .map(|(ring, name)| {
                let vs = ring
                    .iter()
                    .map(|v| (!v.is_nan()).then_some(f64::from(*v)))
                    .collect();
                (name.clone(), vs)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_evaluations_in_order_with_gaps() {
        let set = crate::config::load::load_rule_sources(&[(
            "r.yaml",
            "rules:\n  - name: r\n    queries: {a: up, b: up}\n    condition: a > 1\n",
        )]);
        let rule = set.value.expect("loads").rules[0].clone();
        let mut r = Recent::default();
        for i in 0..(KEEP + 5) {
            let mut v = litemap::LiteMap::new();
            v.insert("a".to_string(), Some(i as f64));
            v.insert("b".to_string(), (i % 2 == 0).then_some(1.0));
            r.push(&rule, &v);
        }
        let s = r.series(&rule);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "a");
        assert_eq!(s[0].1.len(), KEEP);
        assert_eq!(s[0].1[0], Some(5.0));
        assert_eq!(s[0].1[KEEP - 1], Some((KEEP + 4) as f64));
        assert_eq!(s[1].1[0], None, "5 is odd: no data");
        assert_eq!(s[1].1[1], Some(1.0));
    }
}
