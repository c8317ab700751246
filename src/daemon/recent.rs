//! What `status` and the web page show of each rule or instance beside its
//! state: since when that state holds, and the last [`KEEP`] evaluations of
//! each query for the sparklines, as `f32` (NaN for no data), in the order
//! the rule names its queries. Kept in memory only; a restart starts it
//! again, a changed rule starts its values again. Reads nothing and
//! decides nothing.
use crate::clock::Timestamp;
use crate::config::Rule;

/// Evaluations kept per query.
pub(super) const KEEP: usize = 30;

/// What the engine keeps of one rule or instance for `status` and the web
/// page, beside its state: since when its state holds, and its last values.
/// One allocation for all of its queries' rings.
#[derive(Debug, Default)]
pub(super) struct Recent {
    /// When its state last changed while this process ran.
    pub(super) since: Option<Timestamp>,
    /// `KEEP` slots per query of the rule, in its order: one ring each,
    /// all written at `next`.
    values: Box<[f32]>,
    /// The slot the next evaluation goes to.
    next: u8,
    /// How many evaluations the rings hold (up to `KEEP`).
    filled: u8,
}

impl Recent {
    /// Records one evaluation's values.
    pub(super) fn push(&mut self, rule: &Rule, values: &litemap::LiteMap<String, Option<f64>>) {
        if self.values.len() != rule.queries.len() * KEEP {
            self.clear_values();
            self.values = vec![f32::NAN; rule.queries.len() * KEEP].into_boxed_slice();
        }
        let at = usize::from(self.next);
        for (ring, name) in self.values.chunks_exact_mut(KEEP).zip(rule.queries.keys()) {
            let v = values
                .get(name)
                .copied()
                .flatten()
                .filter(|v| v.is_finite());
            ring[at] = v.map_or(f32::NAN, |v| v as f32);
        }
        self.next = ((at + 1) % KEEP) as u8;
        self.filled = (usize::from(self.filled) + 1).min(KEEP) as u8;
    }

    /// Forgets the values (the rule's queries changed), keeps `since`.
    pub(super) fn clear_values(&mut self) {
        self.values = Box::default();
        self.next = 0;
        self.filled = 0;
    }

    /// Each query's name and values, oldest first (`None`: no data).
    pub(super) fn series(&self, rule: &Rule) -> Vec<(String, Vec<Option<f64>>)> {
        let (filled, next) = (usize::from(self.filled), usize::from(self.next));
        let oldest = (next + KEEP - filled) % KEEP;
        self.values
            .chunks_exact(KEEP)
            .zip(rule.queries.keys())
            .map(|(ring, name)| {
                let vs = (0..filled)
                    .map(|i| ring[(oldest + i) % KEEP])
                    .map(|v| (!v.is_nan()).then_some(f64::from(v)))
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

    #[test]
    fn a_partly_filled_ring_and_changed_queries() {
        let load = |queries: &str| {
            let text =
                format!("rules:\n  - name: r\n    queries: {{{queries}}}\n    condition: a > 1\n");
            let set = crate::config::load::load_rule_sources(&[("r.yaml", text.as_str())]);
            set.value.expect("loads").rules[0].clone()
        };
        let (one, two) = (load("a: up"), load("a: up, b: up"));
        let mut r = Recent {
            since: Some(Timestamp(7)),
            ..Recent::default()
        };
        for i in 0..3 {
            let mut v = litemap::LiteMap::new();
            v.insert("a".to_string(), Some(f64::from(i)));
            r.push(&one, &v);
        }
        assert_eq!(
            r.series(&one),
            vec![("a".to_string(), vec![Some(0.0), Some(1.0), Some(2.0)])]
        );
        // The rule now has two queries: the old values are not shown
        // against the new ones; since when its state holds is kept.
        let mut v = litemap::LiteMap::new();
        v.insert("b".to_string(), Some(5.0));
        r.push(&two, &v);
        assert_eq!(
            r.series(&two),
            vec![
                ("a".to_string(), vec![None]),
                ("b".to_string(), vec![Some(5.0)])
            ]
        );
        r.clear_values();
        assert!(r.series(&two).is_empty());
        assert_eq!(r.since, Some(Timestamp(7)));
    }
}
