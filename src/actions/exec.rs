//! `exec`: run a program by argv in its own process group. At the timeout
//! the whole group gets SIGTERM, then SIGKILL after a grace period, so a
//! script's children do not outlive the step. This file owns the kind:
//! its config shape, validation, description and run.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{tail, with_deadline, StepContext, StepKind, StepOutcome};
use crate::config::scalar::{Dur, Scalar};
use crate::config::secrets::SecretString;
use crate::config::source::{is_identifier, positive, At, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    pub argv: Vec<Scalar>,
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub env: BTreeMap<String, SecretString>,
}

#[derive(Clone, Debug)]
pub struct ExecStep {
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub env: BTreeMap<String, SecretString>,
}

impl StepKind for ExecStep {
    const NAME: &'static str = "exec";
    const ON_TIMEOUT: &'static str = PROCESS_KILLED;
    type Raw = RawExec;

    fn validate(cx: &mut Ctx, at: &At, e: &RawExec) -> Option<ExecStep> {
        let at = at.key("exec");
        if e.argv.is_empty() || e.argv[0].0.is_empty() {
            cx.error(&at.key("argv"), "argv needs at least the program to run");
        }
        for k in e.env.keys() {
            if !is_identifier(k) {
                cx.error_key(
                    &at.key("env").key(k),
                    format!("`{k}` is not a valid environment variable name"),
                );
            } else if k.starts_with("RIPCORD_") {
                cx.error_key(
                    &at.key("env").key(k),
                    format!("`{k}`: RIPCORD_* variables are set by ripcord itself"),
                );
            }
        }
        Some(ExecStep {
            argv: e.argv.iter().map(|a| a.0.clone()).collect(),
            timeout: positive(
                cx,
                &at.key("timeout"),
                e.timeout,
                Duration::from_secs(60),
                "timeout",
            ),
            env: e.env.clone(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "exec {:?} (timeout {})",
            self.argv,
            super::fmt_d(self.timeout)
        )
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn with_labels(&self, fill: super::Fill<'_>) -> Result<ExecStep, String> {
        Ok(ExecStep {
            argv: self
                .argv
                .iter()
                .map(|a| fill(a))
                .collect::<Result<_, _>>()?,
            ..self.clone()
        })
    }

    async fn run(&self, ctx: &StepContext) -> StepOutcome {
        let mut env = ctx.env();
        for (k, v) in &self.env {
            match v.resolve() {
                Ok(s) => env.push((k.clone(), s.expose().to_string())),
                Err(e) => return StepOutcome::failed(format!("env {k}: {e}")),
            }
        }
        run_process(&self.argv, &env).await
    }
}

/// Between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// What a process-running step says when its deadline passes.
pub const PROCESS_KILLED: &str = "process group killed";

/// Runs `argv` with extra environment `env`, killed with its process group
/// at `timeout` (through [`with_deadline`], like every step). Exit 0 is
/// success.
pub async fn run_argv(argv: &[String], env: &[(String, String)], timeout: Duration) -> StepOutcome {
    with_deadline(timeout, PROCESS_KILLED, run_process(argv, env)).await
}

/// Stops a process group when dropped while armed: a step whose deadline
/// passes is dropped mid-run ([`with_deadline`]), and its whole group goes
/// with it: SIGTERM, up to [`KILL_GRACE`] for it to go, then SIGKILL, so a
/// script's children do not outlive the step. The group's leader is
/// reaped here; the wait runs off the async workers.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let Some(pg) = self.0.take() else {
            return;
        };
        let _ = killpg(pg, Signal::SIGTERM);
        crate::fsio::blocking(|| {
            let until = std::time::Instant::now() + KILL_GRACE;
            while std::time::Instant::now() < until {
                // Reap the leader if it exited, then ask whether anyone in
                // the group is left.
                let _ = waitpid(pg, Some(WaitPidFlag::WNOHANG));
                if killpg(pg, None).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            // The leader may be gone while others in its group are not.
            let _ = killpg(pg, Signal::SIGKILL);
            let _ = waitpid(pg, None);
        });
    }
}

/// Runs `argv` to its end in its own process group; no deadline of its own.
async fn run_process(argv: &[String], env: &[(String, String)]) -> StepOutcome {
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
    let mut guard = GroupGuard(child.id().map(|id| Pid::from_raw(id as i32)));
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
    let (out, err) = read.await;
    let status = child.wait().await;
    // The leader exited by itself: what it left running is its own affair.
    guard.0 = None;
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
