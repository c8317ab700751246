//! ripcord's own metrics, in the Prometheus exposition format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleStateLabels {
    pub rule: String,
    /// Static: six series per instance, no allocation for the state.
    pub state: &'static str,
}

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

use crate::rule::StateName;

pub struct Metrics {
    pub registry: Registry,
    pub evaluations: Family<RuleLabel, Counter>,
    pub evaluation_failures: Family<RuleLabel, Counter>,
    pub evaluation_duration: Histogram,
    pub missed_evaluations: Counter,
    pub rule_state: Family<RuleStateLabels, Gauge>,
    pub actions: Family<ActionLabels, Counter>,
    pub notifications: Family<NotifierLabels, Counter>,
    pub outbox_pages: Gauge,
    pub prometheus_up: Gauge,
    pub last_reload_successful: Gauge,
    pub rules: Gauge,
    pub rule_unevaluable: Family<RuleLabel, Gauge>,
    pub state_dir_writable: Gauge,
    /// 1 while this instance may act: always on a single instance, only
    /// while it leads its group with `ha:`.
    pub ha_leader: Gauge,
    /// Not exported: where each rule's evaluations are placed against its
    /// data's scrapes, as the scheduler learned it (`crate::freshness`),
    /// for `status`.
    pub data_phase: std::sync::Mutex<std::collections::HashMap<String, crate::freshness::Phase>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// What the scheduler learned of `rule`'s data phase, if anything.
    pub fn data_phase(&self, rule: &str) -> Option<String> {
        self.data_phase.lock().ok()?.get(rule).map(|p| p.describe())
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ripcord");
        let m = Metrics {
            evaluations: Family::default(),
            evaluation_failures: Family::default(),
            evaluation_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            missed_evaluations: Counter::default(),
            rule_state: Family::default(),
            actions: Family::default(),
            notifications: Family::default(),
            outbox_pages: Gauge::default(),
            prometheus_up: Gauge::default(),
            last_reload_successful: Gauge::default(),
            rules: Gauge::default(),
            rule_unevaluable: Family::default(),
            state_dir_writable: Gauge::default(),
            ha_leader: Gauge::default(),
            data_phase: Default::default(),
            registry: Registry::default(),
        };
        registry.register("evaluations", "Rule evaluations", m.evaluations.clone());
        registry.register(
            "evaluation_failures",
            "Evaluations that could not decide (Prometheus errors, bad results)",
            m.evaluation_failures.clone(),
        );
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
        registry.register(
            "rule_state",
            "1 for each rule's current state",
            m.rule_state.clone(),
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
            "rule_unevaluable",
            "1 while a rule's own evaluations have failed past its grace period (it protects nothing)",
            m.rule_unevaluable.clone(),
        );
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
        for s in StateName::ALL {
            self.rule_state
                .get_or_create(&RuleStateLabels {
                    rule: rule.to_string(),
                    state: s.as_str(),
                })
                .set(i64::from(*s == state));
        }
    }

    /// An instance of a `by:` or alert-style rule the answers no longer
    /// name: its series go (a removed rule's stay, at 0).
    pub fn forget_state(&self, instance: &str) {
        for s in StateName::ALL {
            self.rule_state.remove(&RuleStateLabels {
                rule: instance.to_string(),
                state: s.as_str(),
            });
        }
    }

    /// A removed rule: every state gauge 0.
    pub fn clear_state(&self, rule: &str) {
        for s in StateName::ALL {
            self.rule_state
                .get_or_create(&RuleStateLabels {
                    rule: rule.to_string(),
                    state: s.as_str(),
                })
                .set(0);
        }
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
        out
    }
}
