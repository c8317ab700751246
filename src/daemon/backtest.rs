//! The web page's backtest of one rule: the same replay as `ripcord
//! backtest` (`commands::backtest::replay_rules`), run off the engine in a
//! task of its own, one at a time, over at most [`MAX_WINDOW`] and
//! [`MAX_POINTS`] evaluations so a click can't load Prometheus. It reads
//! Prometheus and nothing else: no state, journal or budget of the live
//! rules is touched.
use super::*;
use crate::api::BacktestView;
use crate::commands::backtest;

/// The longest window the page may ask for.
pub(super) const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);
/// Evaluations per backtest at most: a longer window gets a longer step.
pub(super) const MAX_POINTS: u64 = 1_500;

/// The step for `rule` over a window of `span`: its own interval, or
/// longer so that the window holds at most [`MAX_POINTS`] evaluations.
pub(super) fn step_for(rule: &Rule, span: Duration) -> Duration {
    let own = rule
        .schedule
        .interval_after(std::time::SystemTime::now())
        .max(Duration::from_secs(1));
    let least = Duration::from_secs(span.as_secs().div_ceil(MAX_POINTS).max(1));
    own.max(least)
}

/// Backtests `rule` over `from..to` and answers with a [`BacktestView`]
/// (as JSON) when done; `busy` keeps it to one at a time.
pub(super) fn start(
    prom: Prom,
    rule: Arc<Rule>,
    actions: BTreeMap<String, Arc<Action>>,
    window: (Timestamp, Timestamp),
    limits: (u32, Duration),
    busy: Arc<Semaphore>,
    reply: tokio::sync::oneshot::Sender<Result<String, String>>,
) {
    let (from, to) = window;
    if to <= from {
        let _ = reply.send(Err("the window's end must be after its start".into()));
        return;
    }
    let span = to.since(from);
    if span > MAX_WINDOW {
        let _ = reply.send(Err(format!(
            "a window of at most {} from the page (ripcord backtest has no limit)",
            crate::actions::fmt_d(MAX_WINDOW)
        )));
        return;
    }
    let Ok(permit) = busy.try_acquire_owned() else {
        let _ = reply.send(Err(
            "another backtest is running; try again when it is done".into(),
        ));
        return;
    };
    let step = step_for(&rule, span);
    tokio::spawn(async move {
        let _permit = permit;
        let (max_actions, blind_after) = limits;
        let shared = Shared::new(max_actions, crate::config::Mode::Enforce);
        let chosen = [rule];
        let answer = backtest::replay_rules(
            &prom,
            shared,
            blind_after,
            (&chosen, &actions),
            window,
            step,
        )
        .await
        .map_err(|e| e.to_string())
        .and_then(|report| view(&report))
        .and_then(|v| serde_json::to_string(&v).map_err(|e| e.to_string()));
        let _ = reply.send(answer);
    });
}

fn view(report: &backtest::Report) -> Result<BacktestView, String> {
    let s = report.summaries.first();
    Ok(BacktestView {
        from: report.from.clone(),
        to: report.to.clone(),
        step_seconds: report.step_seconds,
        incidents: s.map_or(0, |s| s.incidents),
        would_run: s.map(|s| s.would_run.clone()).unwrap_or_default(),
        firing_seconds: s.map_or(0, |s| s.firing_seconds),
        longest_pending_seconds: s.map_or(0, |s| s.longest_pending_seconds),
        no_data_steps: s.map_or(0, |s| s.no_data_steps),
        error_steps: s.map_or(0, |s| s.error_steps),
        timeline: report
            .timeline
            .iter()
            .map(|e| (e.at.clone(), e.what.clone()))
            .collect(),
        svg: backtest::plot_svg(report)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_window_gets_a_longer_step_a_short_one_the_rules_own() {
        let set = crate::config::load::load_rule_sources(&[(
            "r.yaml",
            "rules:\n  - name: r\n    every: 10s\n    queries: {a: up}\n    condition: a > 1\n",
        )]);
        let rule = set.value.expect("loads").rules[0].clone();
        assert_eq!(
            step_for(&rule, Duration::from_secs(3600)),
            Duration::from_secs(10)
        );
        let week = step_for(&rule, MAX_WINDOW);
        assert_eq!(
            week,
            Duration::from_secs(404),
            "604 800 s / 1 500, rounded up"
        );
        assert!(MAX_WINDOW.as_secs() / week.as_secs() <= MAX_POINTS);
    }
}
