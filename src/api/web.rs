//! The web page on the listen address: the overview of every rule and of
//! ripcord's own health, and the controls (approve, veto, pause, resume)
//! for whoever has logged in with the API token.
//!
//! Rendered on the server (minijinja, templates in `templates/`), readable
//! with JavaScript off; one small script of its own (`/static/refresh.js`)
//! refreshes the table and the health line without losing scroll. Nothing
//! is loaded from outside the host, and the Content-Security-Policy says so
//! to the browser.
//!
//! Reading follows `web.read` (`open`, or `token`: after logging in).
//! Controls always need a session: a login form takes a name and the API
//! token and sets a cookie (HttpOnly, SameSite=Strict); every control form
//! carries the session's CSRF token, and what it does is journaled with who
//! pressed it and from where. The page may not change state other than
//! through the same control messages the CLI sends.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::{context, Environment};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{AppState, Control, Snapshot};
use crate::config::raw::WebRead;
use crate::rule::StateName;

const COOKIE: &str = "ripcord_session";
/// A login lasts a working day.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Sessions of logged-in people, in memory: a restart logs everyone out.
#[derive(Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

#[derive(Clone)]
struct Session {
    who: String,
    csrf: String,
    expires: Instant,
}

impl Sessions {
    fn start(&self, who: &str) -> Option<(String, Session)> {
        let session = Session {
            who: who.to_string(),
            csrf: random_hex()?,
            expires: Instant::now() + SESSION_TTL,
        };
        let id = random_hex()?;
        let mut map = self.map.lock().ok()?;
        map.retain(|_, s| s.expires > Instant::now());
        map.insert(id.clone(), session.clone());
        Some((id, session))
    }

    fn get(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, COOKIE)?;
        let map = self.map.lock().ok()?;
        map.get(&id)
            .filter(|s| s.expires > Instant::now())
            .map(|s| (id.clone(), s.clone()))
    }

    fn end(&self, id: &str) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(id);
        }
    }
}

/// 32 random bytes as hex, from the OS.
fn random_hex() -> Option<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).ok()?;
    Some(hex::encode(b))
}

/// The value of cookie `name` in the request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Compares in constant time: the token is a secret.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
    for (name, src) in [
        ("page.html", include_str!("templates/page.html")),
        ("overview.html", include_str!("templates/overview.html")),
        ("health.html", include_str!("templates/health.html")),
        ("rules.html", include_str!("templates/rules.html")),
        ("login.html", include_str!("templates/login.html")),
        ("incident.html", include_str!("templates/incident.html")),
        ("rule.html", include_str!("templates/rule.html")),
    ] {
        // The templates are part of the binary and checked by the tests.
        if let Err(e) = env.add_template(name, src) {
            tracing::error!("web template {name}: {e}");
        }
    }
    env
}

fn env() -> &'static Environment<'static> {
    static ENV: std::sync::OnceLock<Environment<'static>> = std::sync::OnceLock::new();
    ENV.get_or_init(templates)
}

/// A response of `kind` with headers that keep it on this host: `csp` as
/// its Content-Security-Policy, no sniffing, no referrer, no caching.
fn hardened(mut r: Response, kind: &'static str, csp: &'static str) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A page: HTML with headers that keep it on this host.
fn html(status: StatusCode, body: String) -> Response {
    hardened(
        (status, body).into_response(),
        "text/html; charset=utf-8",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
}

fn render(name: &str, ctx: minijinja::Value) -> Response {
    render_status(StatusCode::OK, name, ctx)
}

fn render_status(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    match env().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(body) => html(status, body),
        Err(e) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("template {name}: {e}"),
        ),
    }
}

/// Why a request was not let through.
enum Refusal {
    /// Reading needs a login (`web.read: token`).
    LogIn,
    /// A control without a session.
    NoSession,
    /// A control whose CSRF token is not the session's.
    Stale,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::LogIn => Redirect::to("/login").into_response(),
            Refusal::NoSession => html(
                StatusCode::FORBIDDEN,
                "refused: log in first (controls need a session)".into(),
            ),
            Refusal::Stale => html(
                StatusCode::FORBIDDEN,
                "refused: the form is stale or not from this page (CSRF token)".into(),
            ),
        }
    }
}

/// Whether this request may read, and who is logged in.
fn reader(s: &AppState, headers: &HeaderMap) -> Result<Option<Session>, Refusal> {
    let session = s.sessions.get(headers).map(|(_, s)| s);
    match (s.web_read, &session) {
        (WebRead::Token, None) => Err(Refusal::LogIn),
        _ => Ok(session),
    }
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct OverviewQuery {
    /// Only rules in this state.
    state: Option<String>,
    /// Only rules read from this file.
    file: Option<String>,
    /// `rules` or `health`: that part alone, for the refresh script.
    part: Option<String>,
    /// What the last control did (shown once).
    msg: Option<String>,
}

/// A state as people see it at a glance: a shape and a word, not only a
/// colour.
fn symbol(state: StateName) -> &'static str {
    match state {
        StateName::Ok => "✓",
        StateName::Pending => "◐",
        StateName::Firing => "▲",
        StateName::Unrecovered => "✖",
        StateName::Recovered => "↺",
        StateName::Closed => "■",
    }
}

/// The overview's filters: a state, a file, or both.
#[derive(Clone, Copy, Default)]
struct Filter<'a> {
    state: Option<StateName>,
    file: Option<&'a str>,
}

impl Filter<'_> {
    fn keeps(&self, r: &super::RuleStatus) -> bool {
        self.state.is_none_or(|f| r.state == f) && self.file.is_none_or(|f| r.file == f)
    }
}

fn rules_context(snap: &Snapshot, filter: Filter<'_>, now: SystemTime) -> Vec<minijinja::Value> {
    snap.rules
        .iter()
        .filter(|r| filter.keeps(r))
        .map(|r| {
            let values = crate::rule::template::fmt_values(&r.values).join(" ");
            let thresholds = crate::commands::backtest::thresholds(&r.condition);
            let sparks: Vec<minijinja::Value> = r
                .recent
                .iter()
                .map(|(q, vs)| {
                    let th = thresholds.iter().find(|(tq, _)| tq == q).map(|(_, v)| *v);
                    sparkline(q, vs, th)
                })
                .collect();
            let labels: Vec<String> = r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            context! {
                name => r.name,
                rule => if r.rule.is_empty() { r.name.clone() } else { r.rule.clone() },
                labels => labels,
                state => r.state.as_str(),
                symbol => symbol(r.state),
                phase => (r.phase.as_str() != r.state.as_str()).then(|| r.phase.as_str()),
                incident => r.incident,
                opened_at => r.opened_at,
                values => values,
                condition => r.condition,
                file => r.file,
                for_ => r.since.as_deref().and_then(|t| age(t, now)),
                since => r.since,
                sparks => sparks,
                last_evaluation => r.last_evaluation,
                last_error => r.last_error,
                unevaluable_since => r.unevaluable_since,
                can_approve => r.phase == crate::rule::PhaseName::AwaitingApproval,
                can_veto => matches!(r.phase, crate::rule::PhaseName::AwaitingApproval | crate::rule::PhaseName::Acting),
            }
        })
        .collect()
}

/// How long ago RFC 3339 time `t` was, as `3m12s`.
fn age(t: &str, now: SystemTime) -> Option<String> {
    let then = humantime::parse_rfc3339_weak(t).ok()?;
    let d = now.duration_since(then).unwrap_or_default();
    Some(crate::actions::fmt_d(Duration::from_secs(d.as_secs())))
}

/// A value in a few significant digits (the sparkline's values were kept
/// as `f32`: `0.001`, not `0.0010000000474974513`).
fn compact(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Sparkline width and height, in the SVG's own units (the template's
/// `viewBox`).
const SPARK_W: f64 = 120.0;
const SPARK_H: f64 = 24.0;

/// One query's recent values as an inline SVG sparkline: a polyline per
/// run of data (a gap is a gap), scaled to the values and the threshold
/// the condition compares the query with, which is drawn dashed.
fn sparkline(query: &str, values: &[Option<f64>], threshold: Option<f64>) -> minijinja::Value {
    let seen: Vec<f64> = values.iter().flatten().copied().chain(threshold).collect();
    let lo = seen.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = seen.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let data: Vec<f64> = values.iter().flatten().copied().collect();
    if data.is_empty() || !lo.is_finite() || !hi.is_finite() {
        return context! { query => query, segments => Vec::<String>::new(), label => format!("{query}: no data yet") };
    }
    let span = if hi > lo { hi - lo } else { 1.0 };
    let y = |v: f64| SPARK_H - 2.0 - (v - lo) / span * (SPARK_H - 4.0);
    let n = values.len().max(2) - 1;
    let x = |i: usize| i as f64 * SPARK_W / n as f64;
    let mut segments: Vec<String> = Vec::new();
    let mut current: Vec<String> = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => current.push(format!("{:.1},{:.1}", x(i), y(*v))),
            None if !current.is_empty() => segments.push(std::mem::take(&mut current).join(" ")),
            None => {}
        }
    }
    if !current.is_empty() {
        segments.push(current.join(" "));
    }
    // A lone point is drawn as a short dash.
    let segments: Vec<String> = segments
        .into_iter()
        .map(|s| match s.split_once(',') {
            Some((px, py)) if !s.contains(' ') => {
                let px: f64 = px.parse().unwrap_or(0.0);
                format!("{s} {:.1},{py}", (px + 2.0).min(SPARK_W))
            }
            _ => s,
        })
        .collect();
    let (dlo, dhi) = data
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(*v), b.max(*v))
        });
    let fmt = compact;
    let mut label = format!(
        "{query}: last {} evaluations, from {} to {}",
        values.len(),
        fmt(dlo),
        fmt(dhi)
    );
    if let Some(t) = threshold {
        label.push_str(&format!("; threshold {}", fmt(t)));
    }
    context! {
        query => query,
        segments => segments,
        threshold_y => threshold.map(|t| format!("{:.1}", y(t))),
        label => label,
    }
}

pub(super) async fn overview(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<OverviewQuery>,
) -> Response {
    let session = match reader(&s, &headers) {
        Ok(session) => session,
        Err(r) => return r.into_response(),
    };
    let snap = match super::snapshot(&s).await {
        Ok(snap) => snap,
        Err(r) => return r,
    };
    let state = q.state.as_deref().and_then(StateName::parse);
    let file = q.file.as_deref().filter(|f| !f.is_empty());
    let filter = Filter { state, file };
    let counts: Vec<minijinja::Value> = StateName::ALL
        .iter()
        .map(|st| {
            let keep = Filter {
                state: Some(*st),
                file,
            };
            context! {
                state => st.as_str(),
                symbol => symbol(*st),
                count => snap.rules.iter().filter(|r| keep.keeps(r)).count(),
                href => filter_href(Some(st.as_str()), file),
            }
        })
        .collect();
    let mut files: Vec<(String, usize)> = Vec::new();
    for r in &snap.rules {
        match files.iter_mut().find(|(f, _)| *f == r.file) {
            Some((_, n)) => *n += 1,
            None => files.push((r.file.clone(), 1)),
        }
    }
    files.sort();
    let files: Vec<minijinja::Value> = files
        .into_iter()
        .map(|(f, n)| {
            let short = std::path::Path::new(&f)
                .file_name()
                .map_or_else(|| f.clone(), |b| b.to_string_lossy().into_owned());
            context! {
                href => filter_href(state.map(|s| s.as_str()), Some(&f)),
                current => Some(f.as_str()) == file,
                short => short,
                file => f,
                count => n,
            }
        })
        .collect();
    let shown = snap.rules.iter().filter(|r| filter.keeps(r)).count();
    let ctx = context! {
        version => snap.version,
        snap => snap,
        rules => rules_context(&snap, filter, SystemTime::now()),
        counts => counts,
        files => files,
        shown => shown,
        all_states_href => filter_href(None, file),
        all_files_href => filter_href(state.map(|s| s.as_str()), None),
        filter => state.map(|f| f.as_str()),
        file_filter => file,
        who => session.as_ref().map(|s| s.who.clone()),
        csrf => session.as_ref().map(|s| s.csrf.clone()),
        msg => q.msg,
        controls => s.token.is_some(),
    };
    match q.part.as_deref() {
        Some("rules") => render("rules.html", ctx),
        Some("health") => render("health.html", ctx),
        _ => render("overview.html", ctx),
    }
}

/// The overview's address with these filters.
fn filter_href(state: Option<&str>, file: Option<&str>) -> String {
    let mut q: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = state {
        q.push(("state", s));
    }
    if let Some(f) = file {
        q.push(("file", f));
    }
    match serde_urlencoded::to_string(q) {
        Ok(q) if !q.is_empty() => format!("/?{q}"),
        _ => "/".into(),
    }
}

/// Why a view could not be had from the engine.
enum Fetch {
    /// The engine says there is no such thing (an unknown rule, an
    /// incident the journal no longer holds).
    Missing(String),
    /// Stopping, or an answer that does not parse: the response to give.
    Failed(Response),
}

/// Asks the engine for a view (`Control::Rule`, `Control::Incident`),
/// answered as JSON.
async fn fetch<T: serde::de::DeserializeOwned>(s: &AppState, c: Control) -> Result<T, Fetch> {
    let stopping = || {
        Fetch::Failed(html(
            StatusCode::SERVICE_UNAVAILABLE,
            "ripcord is stopping".into(),
        ))
    };
    let (tx, rx) = oneshot::channel();
    if s.control.send((c, tx)).await.is_err() {
        return Err(stopping());
    }
    match rx.await {
        Ok(Ok(json)) => serde_json::from_str(&json)
            .map_err(|e| Fetch::Failed(html(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))),
        Ok(Err(e)) => Err(Fetch::Missing(e)),
        Err(_) => Err(stopping()),
    }
}

/// The last backtest plots drawn for rule pages, so the page's `<img>`
/// does not run the backtest again.
#[derive(Default)]
pub(super) struct Plots {
    last: Mutex<VecDeque<(String, String)>>,
}

impl Plots {
    const KEEP: usize = 4;

    fn key(rule: &str, from: &str, to: &str) -> String {
        format!("{rule}\n{from}\n{to}")
    }

    fn put(&self, key: String, svg: String) {
        if let Ok(mut l) = self.last.lock() {
            l.retain(|(k, _)| *k != key);
            if l.len() == Self::KEEP {
                l.pop_front();
            }
            l.push_back((key, svg));
        }
    }

    fn get(&self, key: &str) -> Option<String> {
        let l = self.last.lock().ok()?;
        l.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct BacktestQuery {
    /// `-1h`, `now` or RFC 3339, as `ripcord backtest --from` takes.
    from: Option<String>,
    to: Option<String>,
}

/// The window a backtest form asks for, as absolute times.
fn window(q: &BacktestQuery) -> Result<(crate::rule::Timestamp, crate::rule::Timestamp), String> {
    let now = crate::clock::now();
    let parse = crate::commands::backtest::parse_time;
    let from = parse(q.from.as_deref().unwrap_or("-1h"), now)?;
    let to = parse(q.to.as_deref().unwrap_or("now"), now)?;
    Ok((from, to))
}

/// Backtests `rule` over `from..to` through the engine's backtest task;
/// the plot is kept for the page's `<img>`.
async fn backtest(
    s: &AppState,
    rule: &str,
    from: crate::rule::Timestamp,
    to: crate::rule::Timestamp,
) -> Result<super::BacktestView, String> {
    let c = Control::Backtest {
        rule: rule.to_string(),
        from,
        to,
    };
    match fetch::<super::BacktestView>(s, c).await {
        Ok(v) => {
            s.plots.put(
                Plots::key(rule, &from.rfc3339(), &to.rfc3339()),
                v.svg.clone(),
            );
            Ok(v)
        }
        Err(Fetch::Missing(e)) => Err(e),
        Err(Fetch::Failed(_)) => Err("ripcord is stopping, or its answer did not parse".into()),
    }
}

/// `/rules/NAME/backtest.svg?from=..&to=..`: the plot of a backtest the
/// rule page ran (again, if it is no longer kept).
pub(super) async fn backtest_svg(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BacktestQuery>,
) -> Response {
    if let Err(r) = reader(&s, &headers) {
        return r.into_response();
    }
    let (from, to) = match window(&q) {
        Ok(w) => w,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let key = Plots::key(&name, &from.rfc3339(), &to.rfc3339());
    let svg = match s.plots.get(&key) {
        Some(svg) => svg,
        None => match backtest(&s, &name, from, to).await {
            Ok(v) => v.svg,
            Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
        },
    };
    hardened(
        svg.into_response(),
        "image/svg+xml",
        "default-src 'none'; style-src 'unsafe-inline'",
    )
}

/// `/rules/NAME`: the rule as loaded, its actions' steps, its incidents,
/// a backtest over a chosen window, and a dry-run drill for a logged-in
/// person.
pub(super) async fn rule(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<BacktestQuery>,
) -> Response {
    let session = match reader(&s, &headers) {
        Ok(session) => session,
        Err(r) => return r.into_response(),
    };
    let view: super::RuleView = match fetch(&s, Control::Rule { name: name.clone() }).await {
        Ok(v) => v,
        Err(Fetch::Missing(e)) => {
            return render_status(
                StatusCode::NOT_FOUND,
                "rule.html",
                context! { missing => e, name => name },
            )
        }
        Err(Fetch::Failed(r)) => return r,
    };
    // A backtest only when the form asked for one.
    let asked = q.from.is_some() || q.to.is_some();
    let (bt, bt_error, img) = if asked {
        match window(&q) {
            Ok((from, to)) => match backtest(&s, &name, from, to).await {
                Ok(v) => {
                    // Rule names are letters, digits, `-_.` (checked at
                    // load): a path segment as they are.
                    let img = format!(
                        "/rules/{name}/backtest.svg?{}",
                        serde_urlencoded::to_string([
                            ("from", from.rfc3339()),
                            ("to", to.rfc3339())
                        ])
                        .unwrap_or_default()
                    );
                    (Some(v), None, Some(img))
                }
                Err(e) => (None, Some(e), None),
            },
            Err(e) => (None, Some(e), None),
        }
    } else {
        (None, None, None)
    };
    let graphs: Vec<(String, String)> = view
        .queries
        .iter()
        .map(|(q, expr)| {
            (
                q.clone(),
                crate::notify::graph_link(&s.prometheus_url, expr),
            )
        })
        .collect();
    render(
        "rule.html",
        context! {
            bt => bt.map(|mut b| { b.svg.clear(); b }),
            bt_error => bt_error,
            img => img,
            from => q.from.unwrap_or_else(|| "-1h".into()),
            to => q.to.unwrap_or_else(|| "now".into()),
            graphs => graphs,
            r => view,
            who => session.as_ref().map(|s| s.who.clone()),
            csrf => session.as_ref().map(|s| s.csrf.clone()),
            controls => s.token.is_some(),
        },
    )
}

/// A dry-run drill (`ripcord fire --dry-run`): an incident opens, its
/// steps are resolved and recorded, nothing runs, no budget is spent.
pub(super) async fn drill(
    State(s): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(rule): Path<String>,
    Form(f): Form<ControlForm>,
) -> Response {
    let (_, session) = match controller(&s, &headers, &f) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let by = by(&session, from);
    back(
        &ask(
            &s,
            Control::Fire {
                rule,
                dry_run: true,
                by,
            },
        )
        .await,
    )
}

/// `/incidents/ID`: one incident's timeline from the journal.
pub(super) async fn incident(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let session = match reader(&s, &headers) {
        Ok(session) => session,
        Err(r) => return r.into_response(),
    };
    let view: super::IncidentView = match fetch(&s, Control::Incident { id: id.clone() }).await {
        Ok(v) => v,
        Err(Fetch::Missing(e)) => {
            return render_status(
                StatusCode::NOT_FOUND,
                "incident.html",
                context! { missing => e, id => id },
            )
        }
        Err(Fetch::Failed(r)) => return r,
    };
    let phase = view.phase.clone().unwrap_or_default();
    let graphs: Vec<(String, String, String)> = view
        .queries
        .iter()
        .map(|(q, expr)| {
            (
                q.clone(),
                expr.clone(),
                crate::notify::graph_link(&s.prometheus_url, expr),
            )
        })
        .collect();
    render(
        "incident.html",
        context! {
            graphs => graphs,
            i => view,
            who => session.as_ref().map(|s| s.who.clone()),
            csrf => session.as_ref().map(|s| s.csrf.clone()),
            controls => s.token.is_some(),
            can_approve => phase == "awaiting_approval",
            can_veto => phase == "awaiting_approval" || phase == "acting",
        },
    )
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct LoginQuery {
    error: Option<String>,
}

pub(super) async fn login_form(State(s): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    render(
        "login.html",
        context! {
            error => q.error,
            enabled => s.token.is_some(),
        },
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    name: String,
    token: String,
}

pub(super) async fn login(
    State(s): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    let name = f.name.trim();
    let Some(token) = &s.token else {
        return Redirect::to("/login?error=set+api.token+in+ripcord.yaml+to+log+in")
            .into_response();
    };
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Redirect::to("/login?error=give+your+name+(up+to+64+characters)").into_response();
    }
    if !same(&f.token, token.expose()) {
        tracing::warn!(name, %from, "web login refused: wrong token");
        return Redirect::to("/login?error=wrong+token").into_response();
    }
    let Some((id, _)) = s.sessions.start(name) else {
        return html(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot start a session".into(),
        );
    };
    tracing::info!(name, %from, "web login");
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Debug, Deserialize)]
pub(super) struct ControlForm {
    csrf: String,
    /// Pause: a duration like `1h`; empty: until resumed.
    #[serde(rename = "for", default)]
    for_: String,
    #[serde(default)]
    reason: String,
}

/// The session behind a control form, if its CSRF token matches.
fn controller(
    s: &AppState,
    headers: &HeaderMap,
    f: &ControlForm,
) -> Result<(String, Session), Refusal> {
    match s.sessions.get(headers) {
        Some((id, session)) if same(&f.csrf, &session.csrf) => Ok((id, session)),
        Some(_) => Err(Refusal::Stale),
        None => Err(Refusal::NoSession),
    }
}

pub(super) async fn logout(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ControlForm>,
) -> Response {
    if let Ok((id, _)) = controller(&s, &headers, &f) {
        s.sessions.end(&id);
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("ripcord_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

/// Sends a control request as the CLI does and says what came of it.
async fn ask(s: &AppState, c: Control) -> String {
    let (tx, rx) = oneshot::channel();
    if s.control.send((c, tx)).await.is_err() {
        return "ripcord is stopping".into();
    }
    match rx.await {
        Ok(Ok(msg)) => msg,
        Ok(Err(msg)) => format!("refused: {msg}"),
        Err(_) => "ripcord is stopping".into(),
    }
}

/// Back to the overview, saying what the control did.
fn back(msg: &str) -> Response {
    let q = serde_urlencoded::to_string([("msg", msg)]).unwrap_or_default();
    Redirect::to(&format!("/?{q}")).into_response()
}

/// `NAME (web, from ADDR)`: who pressed it, for the journal.
fn by(session: &Session, from: SocketAddr) -> String {
    format!("{} (web, from {})", session.who, from.ip())
}

pub(super) async fn incident_control(
    State(s): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    Form(f): Form<ControlForm>,
) -> Response {
    let (_, session) = match controller(&s, &headers, &f) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let by = by(&session, from);
    let c = match verb.as_str() {
        "approve" => Control::Approve { incident: id, by },
        "veto" => Control::Veto { incident: id, by },
        _ => return html(StatusCode::NOT_FOUND, "no such control".into()),
    };
    back(&ask(&s, c).await)
}

pub(super) async fn pause(
    State(s): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<ControlForm>,
) -> Response {
    let (_, session) = match controller(&s, &headers, &f) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let for_ = match f.for_.trim() {
        "" => None,
        d => match crate::config::raw::parse_duration(d) {
            Ok(d) => Some(d),
            Err(e) => return back(&format!("refused: {e}")),
        },
    };
    let reason = match f.reason.trim() {
        "" => "paused from the web page".to_string(),
        r => r.to_string(),
    };
    let reason = format!("{reason} (by {})", by(&session, from));
    back(&ask(&s, Control::Pause { for_, reason }).await)
}

pub(super) async fn resume(
    State(s): State<AppState>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<ControlForm>,
) -> Response {
    let (_, session) = match controller(&s, &headers, &f) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    tracing::info!(by = %by(&session, from), "resume from the web page");
    back(&ask(&s, Control::Resume).await)
}

pub(super) async fn static_file(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (include_str!("static/style.css"), "text/css; charset=utf-8"),
        "refresh.js" => (
            include_str!("static/refresh.js"),
            "text/javascript; charset=utf-8",
        ),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparkline_breaks_at_gaps_scales_to_its_threshold_and_says_what_it_shows() {
        let v = [Some(1.0), Some(2.0), None, Some(3.0), None, None];
        let sp = sparkline("rate", &v, Some(5.0));
        let segs: Vec<String> = sp
            .get_attr("segments")
            .expect("segments")
            .try_iter()
            .expect("a list")
            .map(|s| s.to_string())
            .collect();
        assert_eq!(segs.len(), 2, "a gap is a gap: {segs:?}");
        // Six slots over 120 units: x = 0, 24, 48, 72.
        assert_eq!(segs[0], "0.0,22.0 24.0,17.0");
        assert_eq!(segs[1], "72.0,12.0 74.0,12.0", "a lone point is a dash");
        assert_eq!(
            sp.get_attr("threshold_y").expect("y").to_string(),
            "2.0",
            "the threshold is the top of the scale"
        );
        assert_eq!(
            sp.get_attr("label").expect("label").to_string(),
            "rate: last 6 evaluations, from 1 to 3; threshold 5"
        );
        let none = sparkline("rate", &[None, None], None);
        assert_eq!(
            none.get_attr("label").expect("label").to_string(),
            "rate: no data yet"
        );
        assert_eq!(compact(0.0010000000474974513), "0.001");
        assert_eq!(compact(1234567.0), "1.23e6");
        assert_eq!(compact(-0.25), "-0.25");
        assert_eq!(filter_href(None, None), "/");
        assert_eq!(
            filter_href(Some("firing"), Some("/etc/ripcord/rules.d/a b.yaml")),
            "/?state=firing&file=%2Fetc%2Fripcord%2Frules.d%2Fa+b.yaml"
        );
    }

    #[test]
    fn every_template_parses_and_cookies_are_read() {
        let env = templates();
        for name in [
            "page.html",
            "overview.html",
            "health.html",
            "rules.html",
            "login.html",
            "incident.html",
            "rule.html",
        ] {
            if let Err(e) = env.get_template(name) {
                panic!("{name}: {e:#}");
            }
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ripcord_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "nope"), None);
        assert!(same("secret", "secret") && !same("secret", "secreT") && !same("a", "ab"));
        let r = back("vetoed r-1: ok");
        assert_eq!(
            r.headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok()),
            Some("/?msg=vetoed+r-1%3A+ok")
        );
    }
}
