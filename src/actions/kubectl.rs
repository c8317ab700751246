//! `kubectl`: undo a rollout, set an image or scale, then wait with
//! `kubectl rollout status`. kubectl is found on PATH.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::exec::{run_argv, PROCESS_KILLED};
use super::{fmt_d, one_of, StepContext, StepKind, StepOutcome};
use crate::config::scalar::Dur;
use crate::config::source::{positive, At, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubectl {
    pub rollout_undo: Option<String>,
    pub to_revision: Option<u64>,
    pub set_image: Option<RawSetImage>,
    pub scale: Option<RawScale>,
    pub namespace: Option<String>,
    pub context: Option<String>,
    pub kubeconfig: Option<String>,
    pub wait: Option<Dur>,
    pub timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSetImage {
    pub resource: String,
    pub container: String,
    pub image: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScale {
    pub resource: String,
    pub replicas: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubectlVerb {
    RolloutUndo {
        resource: String,
        to_revision: Option<u64>,
    },
    SetImage {
        resource: String,
        container: String,
        image: String,
    },
    Scale {
        resource: String,
        replicas: u32,
    },
}

#[derive(Clone, Debug)]
pub struct KubectlStep {
    pub verb: KubectlVerb,
    pub namespace: Option<String>,
    pub context: Option<String>,
    pub kubeconfig: Option<PathBuf>,
    /// Wait with `kubectl rollout status` this long after the change.
    pub wait: Option<Duration>,
    pub timeout: Duration,
}

impl StepKind for KubectlStep {
    const NAME: &'static str = "kubectl";
    const ON_TIMEOUT: &'static str = PROCESS_KILLED;
    type Raw = RawKubectl;

    fn validate(cx: &mut Ctx, at: &At, k: &RawKubectl) -> Option<KubectlStep> {
        let at = at.key("kubectl");
        let verb = one_of(
            cx,
            &at,
            "a kubectl step",
            &[
                (
                    "rollout_undo",
                    k.rollout_undo.clone().map(|r| KubectlVerb::RolloutUndo {
                        resource: r,
                        to_revision: k.to_revision,
                    }),
                ),
                (
                    "set_image",
                    k.set_image.as_ref().map(|s| KubectlVerb::SetImage {
                        resource: s.resource.clone(),
                        container: s.container.clone(),
                        image: s.image.clone(),
                    }),
                ),
                (
                    "scale",
                    k.scale.as_ref().map(|s| KubectlVerb::Scale {
                        resource: s.resource.clone(),
                        replicas: s.replicas,
                    }),
                ),
            ],
        );
        if k.to_revision.is_some() && k.rollout_undo.is_none() {
            cx.error(
                &at.key("to_revision"),
                "to_revision only applies to rollout_undo",
            );
        }
        let (verb_name, verb) = verb?;
        let resource = match &verb {
            KubectlVerb::RolloutUndo { resource, .. }
            | KubectlVerb::SetImage { resource, .. }
            | KubectlVerb::Scale { resource, .. } => resource.clone(),
        };
        if !resource.contains('/')
            || resource.starts_with('/')
            || resource.ends_with('/')
            || resource.starts_with('-')
        {
            cx.error(
                &at.key(verb_name),
                format!("resource `{resource}` must be KIND/NAME, e.g. deployment/chat"),
            );
        }
        let wait = k.wait.map(|d| d.0);
        let default_timeout = wait.unwrap_or_default() + Duration::from_secs(60);
        let timeout = positive(
            cx,
            &at.key("timeout"),
            k.timeout,
            default_timeout,
            "timeout",
        );
        if wait.is_some_and(|w| w > timeout) {
            cx.error(&at.key("wait"), "wait is longer than the step's timeout");
        }
        Some(KubectlStep {
            verb,
            namespace: k.namespace.clone(),
            context: k.context.clone(),
            kubeconfig: k.kubeconfig.clone().map(PathBuf::from),
            wait,
            timeout,
        })
    }

    fn describe(&self) -> String {
        format!("{} (timeout {})", argv(self).join(" "), fmt_d(self.timeout))
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn with_labels(&self, fill: super::Fill<'_>) -> Result<KubectlStep, String> {
        let verb = match &self.verb {
            KubectlVerb::RolloutUndo {
                resource,
                to_revision,
            } => KubectlVerb::RolloutUndo {
                resource: fill(resource)?,
                to_revision: *to_revision,
            },
            KubectlVerb::SetImage {
                resource,
                container,
                image,
            } => KubectlVerb::SetImage {
                resource: fill(resource)?,
                container: fill(container)?,
                image: fill(image)?,
            },
            KubectlVerb::Scale { resource, replicas } => KubectlVerb::Scale {
                resource: fill(resource)?,
                replicas: *replicas,
            },
        };
        Ok(KubectlStep {
            verb,
            namespace: self.namespace.as_deref().map(fill).transpose()?,
            context: self.context.as_deref().map(fill).transpose()?,
            ..self.clone()
        })
    }

    async fn run(&self, ctx: &StepContext) -> StepOutcome {
        run(self, ctx).await
    }
}

fn common(step: &KubectlStep) -> Vec<String> {
    let mut argv = vec!["kubectl".to_string()];
    if let Some(k) = &step.kubeconfig {
        argv.push(format!("--kubeconfig={}", k.display()));
    }
    if let Some(c) = &step.context {
        argv.push(format!("--context={c}"));
    }
    if let Some(n) = &step.namespace {
        argv.push(format!("--namespace={n}"));
    }
    argv
}

fn resource(step: &KubectlStep) -> &str {
    match &step.verb {
        KubectlVerb::RolloutUndo { resource, .. }
        | KubectlVerb::SetImage { resource, .. }
        | KubectlVerb::Scale { resource, .. } => resource,
    }
}

/// The change, as argv.
pub fn argv(step: &KubectlStep) -> Vec<String> {
    let mut argv = common(step);
    match &step.verb {
        KubectlVerb::RolloutUndo {
            resource,
            to_revision,
        } => {
            argv.extend(["rollout".into(), "undo".into(), resource.clone()]);
            if let Some(r) = to_revision {
                argv.push(format!("--to-revision={r}"));
            }
        }
        KubectlVerb::SetImage {
            resource,
            container,
            image,
        } => argv.extend([
            "set".into(),
            "image".into(),
            resource.clone(),
            format!("{container}={image}"),
        ]),
        KubectlVerb::Scale { resource, replicas } => argv.extend([
            "scale".into(),
            resource.clone(),
            format!("--replicas={replicas}"),
        ]),
    }
    argv
}

/// The wait, as argv.
pub fn status_argv(step: &KubectlStep, wait: Duration) -> Vec<String> {
    let mut argv = common(step);
    argv.extend([
        "rollout".into(),
        "status".into(),
        resource(step).to_string(),
        format!("--timeout={}s", wait.as_secs().max(1)),
    ]);
    argv
}

async fn run(step: &KubectlStep, ctx: &StepContext) -> StepOutcome {
    let start = Instant::now();
    let env = ctx.env();
    let change = run_argv(&argv(step), &env, step.timeout).await;
    if !change.ok {
        return change;
    }
    let Some(wait) = step.wait else {
        return change;
    };
    // Scaling a non-rollout resource has nothing to wait for.
    if matches!(step.verb, KubectlVerb::Scale { .. }) && !resource(step).starts_with("deployment") {
        return change;
    }
    let left = step.timeout.saturating_sub(start.elapsed());
    let status = run_argv(&status_argv(step, wait.min(left)), &env, left).await;
    StepOutcome {
        ok: status.ok,
        summary: if status.ok {
            "rolled out".into()
        } else {
            format!("rollout status: {}", status.summary)
        },
        output: format!("{}{}", change.output, status.output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(verb: KubectlVerb) -> KubectlStep {
        KubectlStep {
            verb,
            namespace: Some("prod".into()),
            context: None,
            kubeconfig: Some("/etc/ripcord/kubeconfig".into()),
            wait: Some(Duration::from_secs(300)),
            timeout: Duration::from_secs(360),
        }
    }

    #[test]
    fn argv_for_each_verb() {
        let s = step(KubectlVerb::SetImage {
            resource: "deployment/chat".into(),
            container: "chat".into(),
            image: "registry/chat:node-abc".into(),
        });
        assert_eq!(
            argv(&s).join(" "),
            "kubectl --kubeconfig=/etc/ripcord/kubeconfig --namespace=prod set image deployment/chat chat=registry/chat:node-abc"
        );
        assert_eq!(
            status_argv(&s, Duration::from_secs(300)).join(" "),
            "kubectl --kubeconfig=/etc/ripcord/kubeconfig --namespace=prod rollout status deployment/chat --timeout=300s"
        );
        let s = step(KubectlVerb::Scale {
            resource: "deployment/chat-go".into(),
            replicas: 0,
        });
        assert_eq!(
            argv(&s).join(" "),
            "kubectl --kubeconfig=/etc/ripcord/kubeconfig --namespace=prod scale deployment/chat-go --replicas=0"
        );
    }
}
