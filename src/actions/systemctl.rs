//! `systemctl`: restart, stop, start or reload a unit, then wait until it is
//! active (inactive after a stop) or the wait runs out. A unit that hits its
//! start limit fails `systemctl restart`: that is a failed step, not a loop.

use std::time::{Duration, Instant};

use super::exec::run_argv;
use super::{fmt_d, StepContext, StepOutcome};
use crate::config::{SystemctlStep, SystemctlVerb};

const POLL: Duration = Duration::from_millis(250);

pub async fn run(step: &SystemctlStep, ctx: &StepContext) -> StepOutcome {
    let start = Instant::now();
    let env = ctx.env();
    let argv: Vec<String> = vec![
        "systemctl".into(),
        step.verb.as_str().into(),
        step.unit.clone(),
    ];
    let change = run_argv(&argv, &env, step.timeout).await;
    if !change.ok {
        return StepOutcome {
            summary: format!(
                "systemctl {} {}: {}",
                step.verb.as_str(),
                step.unit,
                change.summary
            ),
            ..change
        };
    }
    let want = if step.verb == SystemctlVerb::Stop {
        "inactive"
    } else {
        "active"
    };
    let deadline = start + step.wait.min(step.timeout);
    let mut last;
    loop {
        let left = step
            .timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(100));
        let probe = run_argv(
            &["systemctl".into(), "is-active".into(), step.unit.clone()],
            &env,
            left.min(Duration::from_secs(10)),
        )
        .await;
        last = probe.output.trim().to_string();
        if last == want {
            return StepOutcome {
                ok: true,
                summary: format!("{} is {want}", step.unit),
                output: change.output,
            };
        }
        if last == "failed" && want == "active" {
            return StepOutcome {
                ok: false,
                summary: format!("{} failed after {}", step.unit, step.verb.as_str()),
                output: change.output,
            };
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    StepOutcome {
        ok: false,
        summary: format!("{} still {last} after {}", step.unit, fmt_d(step.wait)),
        output: change.output,
    }
}
