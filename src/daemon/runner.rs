//! Running one action: its steps in order (the engine has given it the
//! action's lock), the intent synced to the journal before each step and
//! the result after; a failed step stops the action; a stopping ripcord
//! starts no new step. It may not run a step whose intent is not written,
//! nor touch rule state: the result goes back to the engine.
use super::*;

/// Runs one action's steps in order (the engine has given it the action's
/// lock): intent synced before a step, result after; a failed step stops
/// the action.
pub(super) async fn run_action(
    action: &Action,
    ctx: &StepContext,
    dry_run: bool,
    journal: &Mutex<Journal>,
    tx: &mpsc::Sender<Msg>,
    stopping: &std::sync::atomic::AtomicBool,
) -> ActionResult {
    for (i, step) in action.steps.iter().enumerate() {
        if stopping.load(Ordering::SeqCst) {
            warn!(rule = %ctx.rule, incident = %ctx.incident, "ripcord is stopping: {} step {} and after are not started", action.name, i + 1);
            return ActionResult::Failed(format!(
                "ripcord stopped before step {} started: it and the steps after it did not run",
                i + 1
            ));
        }
        let describe = actions::describe(step);
        let intent = Entry::StepIntent {
            at: now(),
            rule: ctx.rule.clone(),
            incident: ctx.incident.clone(),
            action: action.name.clone(),
            step: i,
            describe: describe.clone(),
            dry_run,
        };
        if !journal_append(journal, &intent) {
            return ActionResult::Failed(format!(
                "step {} not run: its intent could not be written to the journal",
                i + 1
            ));
        }
        crate::notify::outbox::crash_point("intent_written");
        // In a group, leadership is checked again right before the step:
        // a leader that lost it since the commit starts nothing (the next
        // leader reports the committed intent as interrupted).
        let fence = journal
            .lock()
            .map_err(|_| "the journal's lock is poisoned".to_string())
            .and_then(|j| j.may_act());
        if let Err(why) = fence {
            error!(rule = %ctx.rule, incident = %ctx.incident, "{} step {} not run: {why}", action.name, i + 1);
            return ActionResult::Failed(format!("step {} not run: {why}", i + 1));
        }
        let outcome = if dry_run {
            info!(rule = %ctx.rule, incident = %ctx.incident, "dry-run: would run {}: {describe}", action.name);
            StepOutcome {
                ok: true,
                summary: format!("dry-run: would run {describe}"),
                output: String::new(),
            }
        } else {
            info!(rule = %ctx.rule, incident = %ctx.incident, "running {} step {}: {describe}", action.name, i + 1);
            let msg = |outcome| Msg::Step {
                rule: ctx.rule.clone(),
                incident: ctx.incident.clone(),
                action: action.name.clone(),
                step: i,
                describe: describe.clone(),
                outcome,
            };
            let _ = tx.send(msg(None)).await;
            let outcome = actions::run_step(step, ctx).await;
            let _ = tx.send(msg(Some(outcome.clone()))).await;
            outcome
        };
        journal_append(
            journal,
            &Entry::StepResult {
                at: now(),
                rule: ctx.rule.clone(),
                incident: ctx.incident.clone(),
                action: action.name.clone(),
                step: i,
                outcome: outcome.clone(),
            },
        );
        if !outcome.ok {
            warn!(rule = %ctx.rule, incident = %ctx.incident, "{} step {} failed: {}", action.name, i + 1, outcome.summary);
            return ActionResult::Failed(format!(
                "step {} ({}) failed: {}",
                i + 1,
                step.kind(),
                outcome.summary
            ));
        }
        info!(rule = %ctx.rule, incident = %ctx.incident, "{} step {} ok: {}", action.name, i + 1, outcome.summary);
    }
    ActionResult::Succeeded
}
