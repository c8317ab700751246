//! `ripcord status | approve | veto | pause | resume`: talk to the running
//! daemon's API and print what it says.

use std::io::Write;

use crate::api::Snapshot;
use crate::config::Config;

/// Why a control command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot build an HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("cannot reach ripcord at {base} (is `ripcord run` running?): {source}")]
    Unreachable {
        base: String,
        source: reqwest::Error,
    },
    /// What the daemon answered instead of doing it.
    #[error("{0}")]
    Refused(String),
    #[error("unexpected status answer: {0}")]
    Answer(reqwest::Error),
    #[error("api token: {0}")]
    Token(String),
    #[error(transparent)]
    Output(#[from] std::io::Error),
    #[error("cannot encode the status: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Where the daemon listens, and the token to use.
pub struct Target {
    pub base: String,
    /// Resolved only when a control request needs it: `status` works
    /// without access to the token.
    token: Result<Option<String>, String>,
}

impl Target {
    /// `--api` wins over `listen:`; `$RIPCORD_API_TOKEN` over `api.token`.
    pub fn new(config: &Config, api: Option<String>) -> Result<Target, ControlError> {
        let base = api
            .unwrap_or_else(|| format!("http://{}", config.listen))
            .trim_end_matches('/')
            .to_string();
        let token = match std::env::var("RIPCORD_API_TOKEN") {
            Ok(t) => Ok(Some(t)),
            Err(_) => config
                .api_token
                .as_ref()
                .map(|t| t.resolve().map(|s| s.expose().to_string()))
                .transpose()
                .map_err(|e| format!("api.token: {e} (or set RIPCORD_API_TOKEN)")),
        };
        Ok(Target { base, token })
    }
}

fn client() -> Result<reqwest::Client, ControlError> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(ControlError::Client)
}

async fn send(t: &Target, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ControlError> {
    req.send()
        .await
        .map_err(|source| ControlError::Unreachable {
            base: t.base.clone(),
            source,
        })
}

pub async fn status(t: &Target, json: bool, out: &mut dyn Write) -> Result<(), ControlError> {
    let resp = send(t, client()?.get(format!("{}/api/v1/status", t.base))).await?;
    if !resp.status().is_success() {
        return Err(ControlError::Refused(format!(
            "ripcord answered {}",
            resp.status()
        )));
    }
    let snap: Snapshot = resp.json().await.map_err(ControlError::Answer)?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&snap)?)?;
        return Ok(());
    }
    if let Some(ha) = &snap.ha {
        writeln!(
            out,
            "group {}: {} is {}; leader {}; members {}; lease {} (ttl {}s){}",
            ha.prefix,
            ha.name,
            if ha.leading {
                "the LEADER"
            } else {
                "a standby"
            },
            ha.leader.as_deref().unwrap_or("NONE"),
            if ha.members.is_empty() {
                "none seen".to_string()
            } else {
                ha.members.join(", ")
            },
            ha.lease_age_seconds
                .map(|a| format!("{a:.0}s old"))
                .unwrap_or_else(|| "none".into()),
            ha.lease_ttl_seconds,
            match (&ha.etcd_problem, &ha.etcd_problem_since) {
                (Some(p), Some(since)) => format!("; ETCD UNUSABLE since {since}: {p}"),
                (Some(p), None) => format!("; ETCD UNUSABLE: {p}"),
                _ => String::new(),
            }
        )?;
        if !ha.leading {
            writeln!(
                out,
                "a standby acts on nothing: below, the states the leader committed to etcd, with this instance's own evaluations"
            )?;
        }
    }
    let paused = match &snap.paused {
        Some(p) => format!(
            "PAUSED ({}{})",
            p.reason,
            p.until
                .as_ref()
                .map(|u| format!(", until {u}"))
                .unwrap_or_default()
        ),
        None => "running".into(),
    };
    writeln!(
        out,
        "ripcord {}: {paused}, mode {}, {} action(s) left this hour, {} page(s) in the outbox, Prometheus {}",
        snap.version,
        snap.mode,
        snap.actions_left_this_hour,
        snap.outbox_pages,
        match &snap.blind_since {
            Some(s) => format!("UNREACHABLE since {s}"),
            None => "up".into(),
        }
    )?;
    if let Some(p) = &snap.state_dir_problem {
        writeln!(
            out,
            "STATE DIRECTORY UNWRITABLE: {p}; no rollback step runs"
        )?;
    }
    for p in &snap.pending_removals {
        writeln!(out, "removal held back: {p}")?;
    }
    if let Some(r) = snap.last_reload.as_ref().filter(|r| !r.ok) {
        writeln!(
            out,
            "last reload FAILED at {} ({} problem(s)); the rules below are the previous ones:",
            r.at,
            r.problems.len()
        )?;
        for p in &r.problems {
            writeln!(out, "  {p}")?;
        }
    }
    if snap.rules.is_empty() {
        writeln!(
            out,
            "no rules loaded: add rule files where the config's `rules:` points \
             (default /etc/ripcord/rules.d/*.yaml), check them with `ripcord check`, \
             then `systemctl reload ripcord`"
        )?;
        return Ok(());
    }
    let w = snap
        .rules
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:<w$}  {:<11}  {:<17}  {:<36}  VALUES",
        "RULE", "STATE", "PHASE", "INCIDENT"
    )?;
    for r in &snap.rules {
        let mut values: Vec<String> = crate::rule::template::fmt_values(&r.values);
        if let Some(since) = &r.unevaluable_since {
            values.push(format!("UNEVALUABLE since {since}, protects nothing"));
        }
        if let Some(e) = &r.last_error {
            values.push(format!("error: {e}"));
        }
        let phase = if r.phase.as_str() == r.state.as_str() {
            ""
        } else {
            r.phase.as_str()
        };
        writeln!(
            out,
            "{:<w$}  {:<11}  {:<17}  {:<36}  {}",
            r.name,
            r.state,
            phase,
            r.incident.as_deref().unwrap_or("-"),
            values.join(" ")
        )?;
    }
    // Where each rule's evaluations sit against its data's scrapes (once
    // per rule, not per instance).
    let mut timing: Vec<(&str, &str)> = snap
        .rules
        .iter()
        .filter_map(|r| Some((r.rule.as_str(), r.data_phase.as_deref()?)))
        .collect();
    timing.dedup();
    if !timing.is_empty() {
        writeln!(out, "\nevaluation timing:")?;
        for (rule, phase) in timing {
            writeln!(out, "  {rule}: {phase}")?;
        }
    }
    Ok(())
}

/// POSTs a control request; prints the daemon's answer.
pub async fn post(
    t: &Target,
    path: &str,
    body: serde_json::Value,
    out: &mut dyn Write,
) -> Result<(), ControlError> {
    let mut req = client()?.post(format!("{}{path}", t.base)).json(&body);
    if let Some(tok) = t
        .token
        .as_ref()
        .map_err(|e| ControlError::Token(e.clone()))?
    {
        req = req.bearer_auth(tok);
    }
    let resp = send(t, req).await?;
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_success() {
        writeln!(out, "{}", v["ok"].as_str().unwrap_or("ok"))?;
        Ok(())
    } else {
        Err(ControlError::Refused(
            v["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| status.to_string()),
        ))
    }
}

/// Who is acting, for the record.
pub fn who() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "cli".into())
}
