//! The HTTP listener on `listen:`: `/metrics`, `/healthz`, the API the
//! `status`, `approve`, `veto`, `pause` and `resume` commands call, and the
//! web page (`web.rs`).
//!
//! Reads ask the engine for a status snapshot (a message, like control
//! requests); they never reach into live state. Control requests need
//! `Authorization: Bearer <api.token>` and go to the engine as messages.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::config::Secret;
use crate::metrics::Metrics;

mod web;

/// What `status` shows: one entry per rule, and the daemon's own state.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub version: String,
    pub rules: Vec<RuleStatus>,
    pub paused: Option<PauseStatus>,
    pub mode: String,
    pub actions_left_this_hour: u32,
    pub outbox_pages: usize,
    pub prometheus_up: bool,
    pub blind_since: Option<String>,
    /// The last reload, if there was one since start.
    pub last_reload: Option<ReloadStatus>,
    /// Why the journal or outbox cannot be written (no step runs), if so.
    #[serde(default)]
    pub state_dir_problem: Option<String>,
    /// Rules whose removal a reload held back, and why.
    #[serde(default)]
    pub pending_removals: Vec<String>,
    /// The group, when ripcord runs with `ha:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<crate::ha::HaStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadStatus {
    pub ok: bool,
    pub at: String,
    /// `file:line:col: message` for each problem of a failed reload.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RuleStatus {
    /// The instance's key: the rule's name, or `rule{label="value",...}`
    /// for an instance of a `by:` or alert-style rule.
    pub name: String,
    /// The rule it is an instance of.
    #[serde(default)]
    pub rule: String,
    /// The instance's labels (empty for a rule without `by:`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    pub state: crate::rule::StateName,
    pub phase: crate::rule::PhaseName,
    pub incident: Option<String>,
    pub opened_at: Option<String>,
    pub last_evaluation: Option<String>,
    pub values: std::collections::BTreeMap<String, Option<f64>>,
    pub last_error: Option<String>,
    /// Since when the rule's own evaluations fail, once past its grace
    /// period: it protects nothing.
    #[serde(default)]
    pub unevaluable_since: Option<String>,
    /// The rule file it was read from.
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub condition: String,
    /// Since when it has been in this state, if known (pending, an
    /// incident, or a change seen by this process).
    #[serde(default)]
    pub since: Option<String>,
    /// Each query's last evaluations, oldest first (`null`: no data).
    #[serde(default)]
    pub recent: Vec<(String, Vec<Option<f64>>)>,
    /// Where its evaluations are placed against its data's scrapes
    /// (`every:` rules), once learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_phase: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PauseStatus {
    pub until: Option<String>,
    pub reason: String,
}

/// One incident's timeline, as the web page shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IncidentView {
    pub id: String,
    pub rule: String,
    pub opened_at: String,
    /// The rule's state and phase now, if this is still its incident.
    pub state: Option<String>,
    pub phase: Option<String>,
    pub values: String,
    pub condition: String,
    pub queries: Vec<(String, String)>,
    pub rows: Vec<TimelineRow>,
    /// The journal was compacted after the incident opened: earlier rows
    /// are gone.
    pub partial: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TimelineRow {
    pub at: String,
    /// `event`, `step` or `page`.
    pub kind: String,
    pub what: String,
    /// A step's command and output tail, a page's delivery state.
    pub detail: String,
    pub ok: Option<bool>,
}

/// One rule as loaded, for the web page.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RuleView {
    pub name: String,
    pub state: String,
    pub phase: String,
    pub incident: Option<String>,
    /// `key: value` lines of the rule's settings, as ripcord reads them.
    pub settings: Vec<(String, String)>,
    pub queries: Vec<(String, String)>,
    /// Each action with its steps as they would run (secrets as written).
    pub actions: Vec<(String, Vec<String>)>,
    /// Incidents of this rule the journal holds, newest first.
    pub incidents: Vec<String>,
    /// The file it was read from, and its definition there as YAML
    /// (anchors and merge keys resolved; secrets as written).
    #[serde(default)]
    pub file: String,
    #[serde(default)]
    pub yaml: String,
    /// A `by:` or alert-style rule's instances: key, state, incident.
    #[serde(default)]
    pub instances: Vec<(String, String, Option<String>)>,
}

/// A backtest of one rule from the web page.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BacktestView {
    pub from: String,
    pub to: String,
    pub step_seconds: f64,
    pub incidents: usize,
    pub would_run: Vec<String>,
    pub firing_seconds: u64,
    pub longest_pending_seconds: u64,
    pub no_data_steps: usize,
    pub error_steps: usize,
    /// (when, what) as `ripcord backtest` prints it.
    pub timeline: Vec<(String, String)>,
    /// The plot `ripcord backtest --plot` draws.
    pub svg: String,
}

/// A control request, answered by the engine.
#[derive(Debug)]
pub enum Control {
    /// The status snapshot, as JSON.
    Status,
    /// One incident's timeline from the journal, as JSON.
    Incident {
        id: String,
    },
    /// One rule as loaded, as JSON.
    Rule {
        name: String,
    },
    Approve {
        incident: String,
        by: String,
    },
    Veto {
        incident: String,
        by: String,
    },
    Pause {
        for_: Option<std::time::Duration>,
        reason: String,
    },
    Resume,
    /// A backtest of one rule over a window, as JSON ([`BacktestView`]):
    /// answered when done, from a task of its own.
    Backtest {
        rule: String,
        from: crate::rule::Timestamp,
        to: crate::rule::Timestamp,
    },
    /// `ripcord fire`: open an incident by hand (a drill).
    Fire {
        rule: String,
        dry_run: bool,
        by: String,
    },
}

pub type ControlMsg = (Control, oneshot::Sender<Result<String, String>>);

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    token: Option<Arc<Secret>>,
    control: mpsc::Sender<ControlMsg>,
    /// Who may read the web page.
    web_read: crate::config::raw::WebRead,
    sessions: Arc<web::Sessions>,
    /// The last backtest plots the rule pages drew.
    plots: Arc<web::Plots>,
    /// Prometheus's URL without credentials, for graph links.
    prometheus_url: Arc<str>,
}

#[derive(Debug, Deserialize, Default)]
pub struct PauseBody {
    /// A duration like `1h`; none: until resumed.
    #[serde(rename = "for")]
    pub for_: Option<String>,
    pub reason: Option<String>,
    pub by: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct ByBody {
    pub by: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct FireBody {
    #[serde(default)]
    pub dry_run: bool,
    pub by: Option<String>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"error": msg.into()}))).into_response()
}

/// The refusal, unless the request carries the API token.
fn refused(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &state.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "control API disabled: set api.token in ripcord.yaml",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    // Compare in constant time: the token is a secret.
    let ok = given.is_some_and(|g| {
        let (a, b) = (g.as_bytes(), token.expose().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    });
    (!ok).then(|| error(StatusCode::UNAUTHORIZED, "missing or wrong API token"))
}

async fn ask(state: &AppState, c: Control) -> Response {
    let (tx, rx) = oneshot::channel();
    if state.control.send((c, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "ripcord is stopping");
    }
    match rx.await {
        Ok(Ok(msg)) => (StatusCode::OK, Json(serde_json::json!({"ok": msg}))).into_response(),
        Ok(Err(msg)) => error(StatusCode::CONFLICT, msg),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "ripcord is stopping"),
    }
}

async fn serve_metrics(State(s): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

/// The engine's status snapshot (built on request).
async fn snapshot(s: &AppState) -> Result<Snapshot, Response> {
    let (tx, rx) = oneshot::channel();
    let stopping = || error(StatusCode::SERVICE_UNAVAILABLE, "ripcord is stopping");
    if s.control.send((Control::Status, tx)).await.is_err() {
        return Err(stopping());
    }
    match rx.await {
        Ok(Ok(json)) => serde_json::from_str(&json)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Ok(Err(e)) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Err(_) => Err(stopping()),
    }
}

async fn status(State(s): State<AppState>) -> Response {
    match snapshot(&s).await {
        Ok(snap) => Json(snap).into_response(),
        Err(r) => r,
    }
}

async fn incidents(State(s): State<AppState>) -> Response {
    let snap = match snapshot(&s).await {
        Ok(snap) => snap,
        Err(r) => return r,
    };
    let open: Vec<RuleStatus> = snap
        .rules
        .into_iter()
        .filter(|r| r.incident.is_some())
        .collect();
    Json(open).into_response()
}

/// Approve or veto: the incident id from the path, `by` from the body.
async fn decide(
    s: AppState,
    headers: HeaderMap,
    id: String,
    body: Option<Json<ByBody>>,
    control: fn(String, String) -> Control,
) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let by = body.and_then(|b| b.0.by).unwrap_or_else(|| "api".into());
    ask(&s, control(id, by)).await
}

async fn approve(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<ByBody>>,
) -> Response {
    decide(s, headers, id, body, |incident, by| Control::Approve {
        incident,
        by,
    })
    .await
}

async fn veto(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<ByBody>>,
) -> Response {
    decide(s, headers, id, body, |incident, by| Control::Veto {
        incident,
        by,
    })
    .await
}

async fn fire(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(rule): Path<String>,
    body: Option<Json<FireBody>>,
) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let b = body.map(|b| b.0).unwrap_or_default();
    let by = b.by.unwrap_or_else(|| "api".into());
    ask(
        &s,
        Control::Fire {
            rule,
            dry_run: b.dry_run,
            by,
        },
    )
    .await
}

async fn pause(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Option<Json<PauseBody>>,
) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    let b = body.map(|b| b.0).unwrap_or_default();
    let for_ = match b
        .for_
        .as_deref()
        .map(crate::config::raw::parse_duration)
        .transpose()
    {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let reason = b
        .reason
        .unwrap_or_else(|| format!("paused by {}", b.by.unwrap_or_else(|| "api".into())));
    ask(&s, Control::Pause { for_, reason }).await
}

async fn resume(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&s, &headers) {
        return r;
    }
    ask(&s, Control::Resume).await
}

pub fn router(
    metrics: Arc<Metrics>,
    token: Option<Secret>,
    control: mpsc::Sender<ControlMsg>,
    web_read: crate::config::raw::WebRead,
    prometheus_url: String,
) -> Router {
    let state = AppState {
        metrics,
        token: token.map(Arc::new),
        control,
        web_read,
        sessions: Arc::new(web::Sessions::default()),
        plots: Arc::new(web::Plots::default()),
        prometheus_url: Arc::from(prometheus_url),
    };
    Router::new()
        .route("/", get(web::overview))
        .route("/login", get(web::login_form).post(web::login))
        .route("/logout", post(web::logout))
        .route("/incidents/{id}", get(web::incident))
        .route("/rules/{name}", get(web::rule))
        .route("/rules/{name}/backtest.svg", get(web::backtest_svg))
        .route("/web/rules/{name}/drill", post(web::drill))
        .route("/web/incidents/{id}/{verb}", post(web::incident_control))
        .route("/web/pause", post(web::pause))
        .route("/web/resume", post(web::resume))
        .route("/static/{name}", get(web::static_file))
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/status", get(status))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/incidents/{id}/approve", post(approve))
        .route("/api/v1/incidents/{id}/veto", post(veto))
        .route("/api/v1/rules/{rule}/fire", post(fire))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .with_state(state)
}
