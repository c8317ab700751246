//! `kubectl`: undo a rollout, set an image or scale, then wait with
//! `kubectl rollout status`. kubectl is found on PATH.

use std::time::{Duration, Instant};

use super::exec::run_argv;
use super::{StepContext, StepOutcome};
use crate::config::{KubectlStep, KubectlVerb};

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

pub async fn run(step: &KubectlStep, ctx: &StepContext) -> StepOutcome {
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
