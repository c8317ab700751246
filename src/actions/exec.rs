//! `exec`: run a program by argv in its own process group. At the timeout
//! the whole group gets SIGTERM, then SIGKILL after a grace period, so a
//! script's children do not outlive the step.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::{fmt_d, tail, StepContext, StepOutcome};
use crate::config::ExecStep;

/// Between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

pub async fn run(step: &ExecStep, ctx: &StepContext) -> StepOutcome {
    let mut env = ctx.env();
    for (k, v) in &step.env {
        match v.resolve() {
            Ok(s) => env.push((k.clone(), s.expose().to_string())),
            Err(e) => return StepOutcome::failed(format!("env {k}: {e}")),
        }
    }
    run_argv(&step.argv, &env, step.timeout).await
}

/// Runs `argv` with extra environment `env`, killed with its process group
/// at `timeout`. Exit 0 is success.
pub async fn run_argv(argv: &[String], env: &[(String, String)], timeout: Duration) -> StepOutcome {
    let Some((program, args)) = argv.split_first() else {
        return StepOutcome::failed("empty argv");
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        // ripcord's own line to systemd is not a step's to use.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return StepOutcome::failed(format!("cannot start {program}: {e}")),
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    // Both pipes are read to the end (bounded in what is kept) so a chatty
    // child never blocks on a full pipe.
    let read = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let a = async {
            if let Some(s) = stdout.as_mut() {
                read_tail(s, &mut out).await;
            }
        };
        let b = async {
            if let Some(s) = stderr.as_mut() {
                read_tail(s, &mut err).await;
            }
        };
        tokio::join!(a, b);
        (out, err)
    };
    let waited = tokio::time::timeout(timeout, async {
        let (out, err) = read.await;
        (child.wait().await, out, err)
    })
    .await;
    match waited {
        Ok((status, out, err)) => {
            let mut output = tail(&out);
            if !err.is_empty() {
                output.push_str(&tail(&err));
            }
            match status {
                Ok(s) if s.success() => StepOutcome {
                    ok: true,
                    summary: "exit 0".into(),
                    output,
                },
                Ok(s) => StepOutcome {
                    ok: false,
                    summary: match s.code() {
                        Some(c) => format!("exit {c}"),
                        None => format!("killed by {s}"),
                    },
                    output,
                },
                Err(e) => StepOutcome::failed(format!("wait for {program}: {e}")),
            }
        }
        Err(_) => {
            if let Some(pg) = pgid {
                let _ = killpg(pg, Signal::SIGTERM);
                let gone = tokio::time::timeout(KILL_GRACE, child.wait()).await.is_ok();
                // The leader may be gone while others in its group are not.
                let _ = killpg(pg, Signal::SIGKILL);
                if !gone {
                    let _ = child.wait().await;
                }
            }
            StepOutcome::failed(format!(
                "timed out after {}: process group killed",
                fmt_d(timeout)
            ))
        }
    }
}

/// Reads `r` to its end, keeping only the last [`super::OUTPUT_LIMIT`]
/// bytes: a step that prints without end (`yes`) costs no memory.
async fn read_tail<R: tokio::io::AsyncRead + Unpin>(r: &mut R, kept: &mut Vec<u8>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * super::OUTPUT_LIMIT {
                    let cut = kept.len() - super::OUTPUT_LIMIT;
                    kept.drain(..cut);
                    kept.splice(0..0, b"[...] ".iter().copied());
                }
            }
        }
    }
}
