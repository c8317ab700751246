//! `systemctl`: restart, stop, start or reload a unit, then wait until it is
//! active (inactive after a stop) or the wait runs out. A unit that hits its
//! start limit fails `systemctl restart`: that is a failed step, not a loop.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::exec::{run_argv, PROCESS_KILLED};
use super::{fmt_d, one_of, StepContext, StepKind, StepOutcome};
use crate::config::scalar::Dur;
use crate::config::source::{positive, At, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSystemctl {
    pub restart: Option<String>,
    pub stop: Option<String>,
    pub start: Option<String>,
    pub reload: Option<String>,
    pub wait: Option<Dur>,
    pub timeout: Option<Dur>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemctlVerb {
    Restart,
    Stop,
    Start,
    Reload,
}

impl SystemctlVerb {
    pub fn as_str(self) -> &'static str {
        match self {
            SystemctlVerb::Restart => "restart",
            SystemctlVerb::Stop => "stop",
            SystemctlVerb::Start => "start",
            SystemctlVerb::Reload => "reload",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SystemctlStep {
    pub verb: SystemctlVerb,
    pub unit: String,
    /// Wait this long for the unit to reach its expected state.
    pub wait: Duration,
    pub timeout: Duration,
}

impl StepKind for SystemctlStep {
    const NAME: &'static str = "systemctl";
    const ON_TIMEOUT: &'static str = PROCESS_KILLED;
    type Raw = RawSystemctl;

    fn validate(cx: &mut Ctx, at: &At, sc: &RawSystemctl) -> Option<SystemctlStep> {
        let at = at.key("systemctl");
        let (verb_name, (verb, unit)) = one_of(
            cx,
            &at,
            "a systemctl step",
            &[
                (
                    "restart",
                    sc.restart.clone().map(|u| (SystemctlVerb::Restart, u)),
                ),
                ("stop", sc.stop.clone().map(|u| (SystemctlVerb::Stop, u))),
                ("start", sc.start.clone().map(|u| (SystemctlVerb::Start, u))),
                (
                    "reload",
                    sc.reload.clone().map(|u| (SystemctlVerb::Reload, u)),
                ),
            ],
        )?;
        // A placeholder stands for one safe value: check the rest.
        let shape = super::labels::blank(&unit);
        if shape.is_empty()
            || shape.starts_with('-')
            || shape.contains(char::is_whitespace)
            || shape.contains('/')
        {
            cx.error(&at.key(verb_name), format!("`{unit}` is not a unit name"));
        }
        let wait = positive(
            cx,
            &at.key("wait"),
            sc.wait,
            Duration::from_secs(60),
            "wait",
        );
        let timeout = positive(
            cx,
            &at.key("timeout"),
            sc.timeout,
            wait + Duration::from_secs(30),
            "timeout",
        );
        if wait > timeout {
            cx.error(&at.key("wait"), "wait is longer than the step's timeout");
        }
        Some(SystemctlStep {
            verb,
            unit,
            wait,
            timeout,
        })
    }

    fn describe(&self) -> String {
        format!(
            "systemctl {} {} (wait {}, timeout {})",
            self.verb.as_str(),
            self.unit,
            fmt_d(self.wait),
            fmt_d(self.timeout)
        )
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn with_labels(&self, fill: super::Fill<'_>) -> Result<SystemctlStep, String> {
        let unit = fill(&self.unit)?;
        if unit.contains('/') {
            return Err(format!(
                "the unit with the instance's labels, `{unit}`, is not a unit name: the step was refused and nothing ran"
            ));
        }
        Ok(SystemctlStep {
            unit,
            ..self.clone()
        })
    }

    async fn run(&self, ctx: &StepContext) -> StepOutcome {
        run(self, ctx).await
    }
}

const POLL: Duration = Duration::from_millis(250);

async fn run(step: &SystemctlStep, ctx: &StepContext) -> StepOutcome {
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
