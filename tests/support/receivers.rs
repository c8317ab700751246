//! Test doubles for receivers that cannot be reached from here. Each
//! enforces its service's documented contract and records violations, which
//! fail the test:
//! - PagerDuty Events API v2 (`POST /v2/enqueue`): JSON with a 32-character
//!   `routing_key`, `event_action` trigger | acknowledge | resolve, a
//!   `dedup_key` (≤ 255 chars; required to resolve), and for a trigger a
//!   `payload` with `summary` (≤ 1024 chars), `source` and `severity`
//!   (critical | error | warning | info). Answers 202, 400 on a bad event,
//!   429 when told to rate-limit.
//! - Slack incoming webhooks: `POST` JSON with `text` and optional `blocks`
//!   (known block types; text objects ≤ 3000 chars; ≤ 10 fields). Answers 200
//!   `ok`, 400 `invalid_payload`, 404 `no_service` on a revoked hook, 429
//!   with `Retry-After` when told to.
//! - A generic webhook receiver that records headers and bodies.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    /// What the double answered.
    pub status: u16,
}

fn read_request(conn: &mut TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut first = String::new();
    reader.read_line(&mut first).ok()?;
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? <= 2 {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        at: Instant::now(),
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 0,
    })
}

fn respond(conn: &mut TcpStream, status: u16, extra: &str, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A server answering with `handler(request, violations, n) -> (status,
/// extra headers, body)`, `n` being the request's rank among those to its
/// path.
pub struct Double {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Received>>>,
    pub violations: Arc<Mutex<Vec<String>>>,
}

impl Double {
    fn start(
        listener: TcpListener,
        handler: impl Fn(&Received, &mut Vec<String>, usize) -> (u16, String, String) + Send + 'static,
    ) -> Double {
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let (r, v) = (requests.clone(), violations.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Some(req) = read_request(&mut conn) else {
                    continue;
                };
                // `n` counts requests to this path: receivers that share a
                // double (two Slack hooks) are rate-limited each on its own,
                // whichever of them ripcord reaches first.
                let (index, n) = {
                    let mut list = r.lock().expect("lock");
                    list.push(req.clone());
                    let n = list.iter().filter(|x| x.path == req.path).count();
                    (list.len() - 1, n)
                };
                let (status, extra, body) = handler(&req, &mut v.lock().expect("lock"), n);
                if let Some(last) = r.lock().expect("lock").get_mut(index) {
                    last.status = status;
                }
                respond(&mut conn, status, &extra, &body);
            }
        });
        Double {
            port,
            requests,
            violations,
        }
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().expect("lock").clone()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().expect("lock").clone()
    }
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Checks one event against the Events API v2; returns the problems.
pub fn pagerduty_problems(req: &Received) -> Vec<String> {
    let mut p = Vec::new();
    if req.method != "POST" || req.path != "/v2/enqueue" {
        p.push(format!(
            "{} {}: expected POST /v2/enqueue",
            req.method, req.path
        ));
    }
    if !req
        .headers
        .get("content-type")
        .is_some_and(|c| c.starts_with("application/json"))
    {
        p.push("Content-Type must be application/json".into());
    }
    let Ok(v) = serde_json::from_str::<Value>(&req.body) else {
        p.push("body is not JSON".into());
        return p;
    };
    match str_field(&v, "routing_key") {
        Some(k) if k.len() == 32 => {}
        _ => p.push("routing_key must be the 32-character integration key".into()),
    }
    let action = str_field(&v, "event_action").unwrap_or_default();
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        p.push(format!(
            "event_action `{action}` is not trigger, acknowledge or resolve"
        ));
    }
    match v.get("dedup_key") {
        Some(Value::String(k)) if k.len() <= 255 && !k.is_empty() => {}
        None if action == "trigger" => {}
        _ => p.push(
            "dedup_key must be a non-empty string of at most 255 characters (required to resolve)"
                .into(),
        ),
    }
    if action == "trigger" {
        let payload = v.get("payload").cloned().unwrap_or(Value::Null);
        match str_field(&payload, "summary") {
            Some(s) if !s.is_empty() && s.chars().count() <= 1024 => {}
            _ => p.push("payload.summary is required, at most 1024 characters".into()),
        }
        if str_field(&payload, "source").is_none_or(str::is_empty) {
            p.push("payload.source is required".into());
        }
        if !["critical", "error", "warning", "info"]
            .contains(&str_field(&payload, "severity").unwrap_or_default())
        {
            p.push("payload.severity must be critical, error, warning or info".into());
        }
        for k in ["component", "group", "class"] {
            if payload.get(k).is_some_and(|x| !x.is_string()) {
                p.push(format!("payload.{k} must be a string"));
            }
        }
        if payload
            .get("custom_details")
            .is_some_and(|x| !x.is_object())
        {
            p.push("payload.custom_details must be an object".into());
        }
    }
    p
}

/// A PagerDuty double; the first `rate_limited` requests get 429.
pub fn pagerduty(rate_limited: usize) -> Double {
    pagerduty_on(
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        rate_limited,
    )
}

pub fn pagerduty_on(listener: TcpListener, rate_limited: usize) -> Double {
    Double::start(listener, move |req, violations, n| {
        if n <= rate_limited {
            return (429, String::new(), r#"{"status":"throttle event","message":"Requests for this service are arriving too quickly."}"#.into());
        }
        let problems = pagerduty_problems(req);
        if problems.is_empty() {
            let key = serde_json::from_str::<Value>(&req.body)
                .ok()
                .and_then(|v| str_field(&v, "dedup_key").map(str::to_string))
                .unwrap_or_default();
            (
                202,
                String::new(),
                format!(
                    r#"{{"status":"success","message":"Event processed","dedup_key":"{key}"}}"#
                ),
            )
        } else {
            violations.extend(problems.iter().cloned());
            (
                400,
                String::new(),
                format!(
                    r#"{{"status":"invalid event","message":"Event object is invalid","errors":{problems:?}}}"#
                ),
            )
        }
    })
}

/// Accepted PagerDuty events, in order (bodies that got 202).
pub fn accepted(d: &Double) -> Vec<Value> {
    d.requests()
        .iter()
        .filter(|r| r.status == 202)
        .filter_map(|r| serde_json::from_str(&r.body).ok())
        .collect()
}

pub fn slack_problems(req: &Received) -> Vec<String> {
    let mut p = Vec::new();
    if req.method != "POST" {
        p.push(format!("{}: expected POST", req.method));
    }
    let Ok(v) = serde_json::from_str::<Value>(&req.body) else {
        return vec!["body is not JSON".into()];
    };
    if str_field(&v, "text").is_none_or(str::is_empty) {
        p.push("text is required (the notification fallback)".into());
    }
    if let Some(blocks) = v.get("blocks") {
        let Some(blocks) = blocks.as_array() else {
            return vec!["blocks must be an array".into()];
        };
        let text_ok = |t: &Value| {
            ["mrkdwn", "plain_text"].contains(&str_field(t, "type").unwrap_or_default())
                && str_field(t, "text").is_some_and(|s| !s.is_empty() && s.chars().count() <= 3000)
        };
        for b in blocks {
            match str_field(b, "type").unwrap_or_default() {
                "section" => {
                    let text = b.get("text").map(text_ok);
                    let fields = b
                        .get("fields")
                        .and_then(Value::as_array)
                        .map(|f| f.len() <= 10 && f.iter().all(text_ok));
                    if text == Some(false)
                        || fields == Some(false)
                        || (text.is_none() && fields.is_none())
                    {
                        p.push("a section needs a valid text or at most 10 valid fields".into());
                    }
                }
                "context" => {
                    let ok = b
                        .get("elements")
                        .and_then(Value::as_array)
                        .is_some_and(|e| !e.is_empty() && e.len() <= 10 && e.iter().all(text_ok));
                    if !ok {
                        p.push("a context needs 1 to 10 valid text elements".into());
                    }
                }
                "header" | "divider" | "actions" | "image" => {}
                other => p.push(format!("unknown block type `{other}`")),
            }
        }
    }
    p
}

/// A Slack double: `/gone` is a revoked hook (404 no_service); the first
/// `rate_limited` requests get 429 with `Retry-After: retry_after`.
pub fn slack(rate_limited: usize, retry_after: u64) -> Double {
    Double::start(
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        move |req, violations, n| {
            if req.path.ends_with("/gone") {
                return (404, String::new(), "no_service".into());
            }
            if n <= rate_limited {
                return (
                    429,
                    format!("Retry-After: {retry_after}\r\n"),
                    "rate_limited".into(),
                );
            }
            let problems = slack_problems(req);
            if problems.is_empty() {
                (200, String::new(), "ok".into())
            } else {
                violations.extend(problems);
                (400, String::new(), "invalid_payload".into())
            }
        },
    )
}

/// Records everything, answers 200.
pub fn recorder() -> Double {
    Double::start(
        TcpListener::bind("127.0.0.1:0").expect("bind"),
        |_, _, _| (200, String::new(), "ok".into()),
    )
}
