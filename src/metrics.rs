//! ripcord's own metrics, in the Prometheus exposition format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifierLabels {
    pub notifier: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
    pub commit: String,
}

use crate::freshness::Phase;
use crate::rule::StateName;
use std::sync::Arc;

/// What ripcord exports per rule (and per instance, for `rule_state`),
/// one row per name: a rule costs a row, not a labelled series per
/// (rule, state) in hash maps (at 10 000 rules the families took 8.7 MB,
/// this table under 1 MB). Written by [`RuleTable::write_text`] as
/// `evaluations_total`, `evaluation_failures_total`, `rule_state` and
/// `rule_unevaluable`.
#[derive(Debug, Default)]
struct Row {
    /// Evaluations and failed ones; the counters appear with the first.
    evaluations: u64,
    failures: u64,
    /// The current state; `None` with `has_state`: a removed rule, every
    /// state 0.
    state: Option<StateName>,
    has_state: bool,
    /// Its own evaluations have failed past its grace period, and paged.
    unevaluable: bool,
    /// Not exported: where its evaluations go against the data's scrapes,
    /// as the scheduler learned it ([`crate::freshness`]), for `status`.
    /// Shared: rules over the same scrapes learn the same phase.
    phase: Option<Arc<Phase>>,
}

#[derive(Debug, Default)]
pub struct RuleTable {
    rows: std::sync::Mutex<std::collections::BTreeMap<Box<str>, Row>>,
}

impl RuleTable {
    /// `f` on `name`'s row, made on first use.
    fn with<R>(&self, name: &str, f: impl FnOnce(&mut Row) -> R) -> Option<R> {
        let mut rows = self.rows.lock().ok()?;
        Some(match rows.get_mut(name) {
            Some(r) => f(r),
            None => f(rows.entry(name.into()).or_default()),
        })
    }
}

/// A per-rule series: its name, type, help and value.
type PerRule = (&'static str, &'static str, &'static str, fn(&Row) -> u64);

impl RuleTable {
    /// The table in the Prometheus text format (0.0.4), written straight
    /// into `out`: at 10 000 rules these are 90 000 lines, and going through
    /// an OpenMetrics text first and converting it cost twice their size
    /// on every scrape.
    fn write_text(&self, out: &mut String) {
        use std::fmt::Write;
        let Ok(rows) = self.rows.lock() else {
            return;
        };
        let evaluated = || rows.iter().filter(|(_, r)| r.evaluations > 0);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = write!(
                out,
                "# HELP ripcord_{name} {help}\n# TYPE ripcord_{name} {kind}\n"
            );
        };
        let per_rule: [PerRule; 3] = [
            ("evaluations_total", "counter", "Rule evaluations", |r| r.evaluations),
            (
                "evaluation_failures_total",
                "counter",
                "Evaluations that could not decide (Prometheus errors, bad results)",
                |r| r.failures,
            ),
            (
                "rule_unevaluable",
                "gauge",
                "1 while a rule's own evaluations have failed past its grace period (it protects nothing)",
                |r| u64::from(r.unevaluable),
            ),
        ];
        if evaluated().next().is_some() {
            for (name, kind, help, value) in per_rule {
                family(out, name, kind, help);
                for (rule, r) in evaluated() {
                    let _ = writeln!(
                        out,
                        "ripcord_{name}{{rule=\"{}\"}} {}",
                        Escaped(rule),
                        value(r)
                    );
                }
            }
        }
        if rows.values().any(|r| r.has_state) {
            family(
                out,
                "rule_state",
                "gauge",
                "1 for each rule's current state",
            );
            for (rule, r) in rows.iter().filter(|(_, r)| r.has_state) {
                for s in StateName::ALL {
                    let _ = writeln!(
                        out,
                        "ripcord_rule_state{{rule=\"{}\",state=\"{}\"}} {}",
                        Escaped(rule),
                        s.as_str(),
                        u8::from(r.state == Some(*s))
                    );
                }
            }
        }
    }
}

/// A label value as the text format writes it: `\`, `"` and newlines
/// escaped.
struct Escaped<'a>(&'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// Per rule: evaluations, failures, state, unevaluable, data phase.
    rule_table: RuleTable,
    pub evaluation_duration: Histogram,
    pub missed_evaluations: Counter,
    pub actions: Family<ActionLabels, Counter>,
    pub notifications: Family<NotifierLabels, Counter>,
    pub outbox_pages: Gauge,
    pub prometheus_up: Gauge,
    pub last_reload_successful: Gauge,
    pub rules: Gauge,
    pub state_dir_writable: Gauge,
    /// 1 while this instance may act: always on a single instance, only
    /// while it leads its group with `ha:`.
    pub ha_leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// What the scheduler learned of `rule`'s data phase, if anything.
    pub fn data_phase(&self, rule: &str) -> Option<String> {
        let rows = self.rule_table.rows.lock().ok()?;
        rows.get(rule)?.phase.as_ref().map(|p| p.describe())
    }

    /// The scheduler learned where `rule`'s data arrives.
    pub fn set_data_phase(&self, rule: &str, phase: &Arc<Phase>) {
        self.rule_table
            .with(rule, |r| r.phase = Some(phase.clone()));
    }

    /// Drops the data phases of rules the scheduler no longer runs.
    pub fn keep_data_phases(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut rows) = self.rule_table.rows.lock() {
            for (name, r) in rows.iter_mut() {
                if !keep(name) {
                    r.phase = None;
                }
            }
        }
    }

    /// One evaluation of `rule`, failed or not.
    pub fn count_evaluation(&self, rule: &str, failed: bool) {
        self.rule_table.with(rule, |r| {
            r.evaluations += 1;
            r.failures += u64::from(failed);
        });
    }

    /// Whether `rule` has paged that its own evaluations fail.
    pub fn set_unevaluable(&self, rule: &str, paged: bool) {
        self.rule_table.with(rule, |r| r.unevaluable = paged);
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ripcord");
        let m = Metrics {
            rule_table: Default::default(),
            evaluation_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            missed_evaluations: Counter::default(),
            actions: Family::default(),
            notifications: Family::default(),
            outbox_pages: Gauge::default(),
            prometheus_up: Gauge::default(),
            last_reload_successful: Gauge::default(),
            rules: Gauge::default(),
            state_dir_writable: Gauge::default(),
            ha_leader: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "evaluation_duration_seconds",
            "Time to query one rule's values",
            m.evaluation_duration.clone(),
        );
        registry.register(
            "missed_evaluations",
            "Evaluations skipped because the previous one of the rule still ran",
            m.missed_evaluations.clone(),
        );
        registry.register("actions", "Actions run, by result", m.actions.clone());
        registry.register(
            "notifications",
            "Page deliveries, by notifier and result",
            m.notifications.clone(),
        );
        registry.register(
            "outbox_pages",
            "Pages waiting in the outbox",
            m.outbox_pages.clone(),
        );
        registry.register(
            "prometheus_up",
            "1 if the last evaluation reached Prometheus",
            m.prometheus_up.clone(),
        );
        registry.register(
            "last_reload_successful",
            "1 if the last (re)load of the rules succeeded",
            m.last_reload_successful.clone(),
        );
        registry.register("rules", "Rules loaded", m.rules.clone());
        registry.register(
            "state_dir_writable",
            "1 if the journal and outbox can be written (0: no step runs)",
            m.state_dir_writable.clone(),
        );
        m.state_dir_writable.set(1);
        registry.register(
            "ha_leader",
            "1 while this instance acts (with ha: only while it leads its group)",
            m.ha_leader.clone(),
        );
        m.ha_leader.set(1);
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: crate::VERSION.into(),
                commit: crate::COMMIT.into(),
            })
            .set(1);
        registry.register(
            "build_info",
            "ripcord's version and the git commit it was built from",
            build,
        );
        Metrics { registry, ..m }
    }

    /// Sets the state gauges of `rule`: 1 for `state`, 0 for the others.
    pub fn set_state(&self, rule: &str, state: StateName) {
        self.rule_table.with(rule, |r| {
            r.state = Some(state);
            r.has_state = true;
        });
    }

    /// An instance of a `by:` or alert-style rule the answers no longer
    /// name: its series go (a removed rule's stay, at 0).
    pub fn forget_state(&self, instance: &str) {
        if let Ok(mut rows) = self.rule_table.rows.lock() {
            rows.remove(instance);
        }
    }

    /// A removed rule: every state gauge 0.
    pub fn clear_state(&self, rule: &str) {
        self.rule_table.with(rule, |r| {
            r.state = None;
            r.has_state = true;
        });
    }

    /// The Prometheus text format (0.0.4), which Prometheus scrapes and
    /// `promtool check metrics` checks. prometheus-client writes OpenMetrics,
    /// where a counter's HELP and TYPE name the family (`x`) rather than the
    /// sample (`x_total`) and the text ends with `# EOF`.
    pub fn encode(&self) -> String {
        let mut om = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut om, &self.registry);
        let counters: std::collections::HashSet<String> = om
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .map(str::to_string)
            .collect();
        let mut out = String::with_capacity(om.len());
        for line in om.lines() {
            if line == "# EOF" {
                continue;
            }
            let header = line
                .strip_prefix("# HELP ")
                .map(|r| ("# HELP ", r))
                .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
            match header {
                Some((kind, rest)) => {
                    let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                    if counters.contains(name) {
                        out.push_str(&format!("{kind}{name}_total {tail}\n"));
                    } else {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        self.rule_table.write_text(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(m: &Metrics, prefix: &str) -> Vec<String> {
        m.encode()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn per_rule_rows_export_counters_states_and_unevaluable() {
        let m = Metrics::new();
        assert!(
            lines(&m, "ripcord_evaluations").is_empty(),
            "nothing before a rule runs"
        );
        m.count_evaluation("b", false);
        m.count_evaluation("a", false);
        m.count_evaluation("a", true);
        m.set_unevaluable("a", true);
        let text = m.encode();
        assert!(
            text.contains("# TYPE ripcord_evaluations_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ripcord_rule_unevaluable gauge\n"),
            "{text}"
        );
        assert_eq!(
            lines(&m, "ripcord_evaluations_total{"),
            [
                "ripcord_evaluations_total{rule=\"a\"} 2",
                "ripcord_evaluations_total{rule=\"b\"} 1"
            ]
        );
        assert_eq!(
            lines(&m, "ripcord_evaluation_failures_total{"),
            [
                "ripcord_evaluation_failures_total{rule=\"a\"} 1",
                "ripcord_evaluation_failures_total{rule=\"b\"} 0"
            ]
        );
        assert_eq!(
            lines(&m, "ripcord_rule_unevaluable{"),
            [
                "ripcord_rule_unevaluable{rule=\"a\"} 1",
                "ripcord_rule_unevaluable{rule=\"b\"} 0"
            ]
        );

        // Six state series per instance, one of them 1.
        m.set_state("a", StateName::Firing);
        m.set_state("a{host=\"x\"}", StateName::Pending);
        let a = lines(&m, "ripcord_rule_state{rule=\"a\",");
        assert_eq!(a.len(), StateName::ALL.len());
        assert_eq!(
            a.iter().filter(|l| l.ends_with(" 1")).collect::<Vec<_>>(),
            ["ripcord_rule_state{rule=\"a\",state=\"firing\"} 1"]
        );
        assert!(
            lines(
                &m,
                "ripcord_rule_state{rule=\"a{host=\\\"x\\\"}\",state=\"pending\"} 1"
            )
            .len()
                == 1
        );

        // A forgotten instance's series go; a removed rule's stay at 0.
        m.forget_state("a{host=\"x\"}");
        assert!(lines(&m, "ripcord_rule_state{rule=\"a{").is_empty());
        m.clear_state("a");
        let a = lines(&m, "ripcord_rule_state{rule=\"a\",");
        assert_eq!(a.len(), StateName::ALL.len());
        assert!(a.iter().all(|l| l.ends_with(" 0")), "{a:?}");
        assert_eq!(lines(&m, "ripcord_evaluations_total{rule=\"a\"}").len(), 1);
    }

    #[test]
    fn data_phases_are_kept_for_running_rules_only() {
        let m = Metrics::new();
        let p = Arc::new(Phase::epoch(1000.0));
        m.set_data_phase("a", &p);
        m.set_data_phase("b", &p);
        assert_eq!(m.data_phase("a"), Some(p.describe()));
        m.keep_data_phases(|n| n == "b");
        assert_eq!(m.data_phase("a"), None);
        assert_eq!(m.data_phase("b"), Some(p.describe()));
        assert!(!m.encode().contains("phase"), "the phase is not exported");
    }
}
