//! The Prometheus HTTP API client: instant queries for `run` and `eval`.
//!
//! Every query of one evaluation is sent with the same `time=`, and with a
//! `timeout=` so Prometheus gives up when ripcord does. Results come back
//! as numbers or series with their labels (`QueryResult::into_answer`);
//! the core splits them into instances (`rule::instances`). `"NaN"`,
//! `"+Inf"`, `"-Inf"` come back as such (the core treats them as no data).
//!
//! One query, many rules: [`Prom::query_shared`] sends a query text once
//! for every rule asking it for the same instant while it is in flight
//! (the scheduler puts rules of one interval on the same data on the same
//! instants); [`Prom::query_for_rule`] uses it only for texts several
//! rules ask.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt, Shared};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::config::{PromAuth, PrometheusConfig};
use crate::rule::Timestamp;

/// Why a query has no usable result.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum PromError {
    /// Prometheus could not be reached (connection refused, DNS, TLS).
    #[error("Prometheus unreachable: {0}")]
    Unreachable(String),
    #[error("Prometheus did not answer within {0:?}")]
    Timeout(Duration),
    /// Prometheus answered with an error (`errorType`, `error`).
    #[error("Prometheus answered {status}: {error_type}: {error}")]
    Api {
        status: u16,
        error_type: String,
        error: String,
    },
    #[error("unexpected answer from Prometheus (HTTP {status}): {detail}")]
    Decode { status: u16, detail: String },
    #[error("query `{query}` returned a {kind}, not a number")]
    NotANumber { query: String, kind: String },
    #[error("Prometheus's answer to `{query}` is larger than {limit} bytes (prometheus.max_response_bytes): narrow the query")]
    TooLarge { query: String, limit: usize },
}

impl PromError {
    /// Prometheus itself is down or overloaded, or refuses ripcord itself
    /// (401, 403: every rule is affected), as opposed to one bad query:
    /// these make ripcord blind. The others make one rule unevaluable.
    pub fn is_blinding(&self) -> bool {
        match self {
            PromError::Unreachable(_) | PromError::Timeout(_) => true,
            PromError::Api { status, .. } | PromError::Decode { status, .. } => {
                *status >= 500 || *status == 401 || *status == 403
            }
            _ => false,
        }
    }
}

/// One instant query's result.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    Scalar(f64),
    /// Label sets and values.
    Vector(Vec<(BTreeMap<String, String>, f64)>),
    /// A range vector: how many series.
    Matrix(usize),
    String(String),
}

impl QueryResult {
    /// The answer the core splits into instances: a number or series.
    pub fn into_answer(self, query: &str) -> Result<crate::rule::instances::Answer, PromError> {
        use crate::rule::instances::Answer;
        match self {
            QueryResult::Scalar(v) => Ok(Answer::Scalar(v)),
            QueryResult::Vector(v) => Ok(Answer::Vector(v)),
            QueryResult::Matrix(_) => Err(PromError::NotANumber {
                query: query.to_string(),
                kind: "range vector".into(),
            }),
            QueryResult::String(_) => Err(PromError::NotANumber {
                query: query.to_string(),
                kind: "string".into(),
            }),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    data: Option<Data>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    /// Parsed by type straight from the bytes: a 10 000-series answer
    /// never becomes a generic JSON tree first.
    result: Box<serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct VectorItem {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

/// Prometheus writes special floats as `NaN`, `+Inf` and `-Inf`.
pub fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse::<f64>()
            .map_err(|_| format!("`{s}` is not a sample value")),
    }
}

/// The API's envelope: the `data` of a success (and its warnings), or
/// Prometheus's own error type and message.
fn envelope(status: u16, body: &[u8]) -> Result<(Data, Vec<String>), PromError> {
    let bad = |detail: String| PromError::Decode { status, detail };
    let env: Envelope = serde_json::from_slice(body).map_err(|e| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        bad(format!("{e}; body starts: {text:?}"))
    })?;
    if env.status != "success" {
        return Err(PromError::Api {
            status,
            // Prometheus's words, on one line and not without end: they
            // reach logs and pages.
            error_type: crate::body::one_line(&crate::notify::truncate(
                &env.error_type.unwrap_or_else(|| "unknown".into()),
                100,
            )),
            error: crate::body::one_line(&crate::notify::truncate(
                &env.error.unwrap_or_default(),
                1000,
            )),
        });
    }
    let data = env
        .data
        .ok_or_else(|| bad("no `data` in a success answer".into()))?;
    Ok((data, env.warnings))
}

pub fn decode(status: u16, body: &[u8]) -> Result<(QueryResult, Vec<String>), PromError> {
    let bad = |detail: String| PromError::Decode { status, detail };
    let (data, warnings) = envelope(status, body)?;
    let result = match data.result_type.as_str() {
        "scalar" => {
            let (_, v): (f64, String) =
                serde_json::from_str(data.result.get()).map_err(|e| bad(e.to_string()))?;
            QueryResult::Scalar(parse_value(&v).map_err(bad)?)
        }
        "string" => {
            let (_, v): (f64, String) =
                serde_json::from_str(data.result.get()).map_err(|e| bad(e.to_string()))?;
            QueryResult::String(v)
        }
        "vector" => {
            let items: Vec<VectorItem> =
                serde_json::from_str(data.result.get()).map_err(|e| bad(e.to_string()))?;
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                out.push((it.metric, parse_value(&it.value.1).map_err(bad)?));
            }
            QueryResult::Vector(out)
        }
        "matrix" => {
            let items: Vec<serde::de::IgnoredAny> =
                serde_json::from_str(data.result.get()).map_err(|e| bad(e.to_string()))?;
            QueryResult::Matrix(items.len())
        }
        other => return Err(bad(format!("unknown resultType `{other}`"))),
    };
    Ok((result, warnings))
}

#[derive(Deserialize)]
struct MatrixItem {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// Series of a range query: labels and (ms, value) points.
pub type Matrix = Vec<(BTreeMap<String, String>, Vec<(i64, f64)>)>;

/// Decodes a `query_range` answer.
pub fn decode_matrix(status: u16, body: &[u8]) -> Result<Matrix, PromError> {
    let bad = |detail: String| PromError::Decode { status, detail };
    let (data, _) = envelope(status, body)?;
    if data.result_type != "matrix" {
        return Err(bad(format!("expected a matrix, got {}", data.result_type)));
    }
    let items: Vec<MatrixItem> =
        serde_json::from_str(data.result.get()).map_err(|e| bad(e.to_string()))?;
    items
        .into_iter()
        .map(|it| {
            let points = it
                .values
                .iter()
                .map(|(t, v)| Ok(((t * 1000.0).round() as i64, parse_value(v).map_err(&bad)?)))
                .collect::<Result<Vec<_>, PromError>>()?;
            Ok((it.metric, points))
        })
        .collect()
}

/// A client for one Prometheus.
#[derive(Clone)]
pub struct Prom {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
    max_body: usize,
    /// Queries in flight by (text, instant): later askers wait for the
    /// same answer instead of sending it again.
    inflight: Arc<Mutex<HashMap<(String, i64), InFlight>>>,
    /// Query texts more than one rule asks (set by the scheduler): only
    /// these are shared, so a query of one rule is never held twice (a
    /// 10 000-series answer would be, in the map and by its rule).
    multi: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

type InFlight = Shared<BoxFuture<'static, Result<QueryResult, PromError>>>;

/// How long an answer is kept for others asking the same text for the
/// same instant: rules on one grid tick ask within milliseconds of each
/// other; older instants are dropped at the next ask.
const SHARE_WINDOW_MS: i64 = 2_000;

impl Prom {
    /// Builds the client; header secrets are resolved here, once.
    pub fn new(cfg: &PrometheusConfig) -> Result<Prom, String> {
        let mut headers = HeaderMap::new();
        // Authorization from basic_auth or bearer_token, resolved once here.
        let authorization = match &cfg.auth {
            None => None,
            Some(PromAuth::Bearer(t)) => {
                let t = t
                    .resolve()
                    .map_err(|e| format!("prometheus bearer_token: {e}"))?;
                Some(format!("Bearer {}", t.expose()))
            }
            Some(PromAuth::Basic { username, password }) => {
                use base64::Engine;
                let p = password
                    .resolve()
                    .map_err(|e| format!("prometheus basic_auth password: {e}"))?;
                let raw = format!("{username}:{}", p.expose());
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                ))
            }
        };
        if let Some(a) = authorization {
            let mut v = HeaderValue::from_str(&a)
                .map_err(|_| "prometheus auth: invalid characters".to_string())?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("invalid header name `{k}`"))?;
            let value = v
                .resolve()
                .map_err(|e| format!("prometheus header {k}: {e}"))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| format!("prometheus header {k}: invalid value"))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            // Prometheus is told the same timeout; the margin lets its own
            // timeout error arrive instead of a bare client timeout.
            .timeout(cfg.timeout + Duration::from_secs(1))
            .user_agent(concat!("ripcord/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("prometheus ca_file {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("prometheus ca_file {}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Prom {
            client,
            base: cfg.url.trim_end_matches('/').to_string(),
            timeout: cfg.timeout,
            max_body: cfg.max_response_bytes,
            inflight: Arc::default(),
            multi: Arc::default(),
        })
    }

    /// The query texts that several rules ask: [`Prom::query_for_rule`]
    /// shares these.
    pub fn set_shared_texts(&self, texts: std::collections::HashSet<String>) {
        if let Ok(mut m) = self.multi.write() {
            *m = texts;
        }
    }

    /// A rule's query: shared ([`Prom::query_shared`]) when other rules
    /// ask the same text, else sent as it is.
    pub async fn query_for_rule(
        &self,
        expr: &str,
        at: Timestamp,
    ) -> Result<QueryResult, PromError> {
        let shared = self.multi.read().is_ok_and(|m| m.contains(expr));
        if shared {
            self.query_shared(expr, at).await
        } else {
            self.query(expr, at).await
        }
    }

    /// [`Prom::query`], sent once for all who ask the same text for the
    /// same instant (while it is in flight, and for a moment after).
    pub async fn query_shared(&self, expr: &str, at: Timestamp) -> Result<QueryResult, PromError> {
        let pending = {
            let Ok(mut m) = self.inflight.lock() else {
                return self.query(expr, at).await;
            };
            m.retain(|(_, t), _| *t > at.0 - SHARE_WINDOW_MS && *t <= at.0 + SHARE_WINDOW_MS);
            let key = (expr.to_string(), at.0);
            match m.get(&key) {
                Some(f) => f.clone(),
                None => {
                    // A copy without the map: the future held in the map
                    // must not hold the map.
                    let me = Prom {
                        inflight: Arc::default(),
                        multi: Arc::default(),
                        ..self.clone()
                    };
                    let text = expr.to_string();
                    let f = async move { me.query(&text, at).await }.boxed().shared();
                    m.insert(key, f.clone());
                    f
                }
            }
        };
        pending.await
    }

    /// `GET /api/v1/query?query=…&time=…&timeout=…`.
    pub async fn query(&self, expr: &str, at: Timestamp) -> Result<QueryResult, PromError> {
        let time = format!("{:.3}", at.0 as f64 / 1000.0);
        let timeout = format!("{}ms", self.timeout.as_millis());
        let resp = self
            .client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expr), ("time", &time), ("timeout", &timeout)])
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let body = self.body(resp, expr).await?;
        let (result, warnings) = decode(status, &body)?;
        for w in warnings {
            tracing::warn!(
                query = expr,
                "Prometheus warning: {}",
                crate::body::one_line(&w)
            );
        }
        Ok(result)
    }

    /// `GET /api/v1/query_range`: every series with its (ms, value) points.
    pub async fn query_range(
        &self,
        expr: &str,
        start: Timestamp,
        end: Timestamp,
        step: Duration,
    ) -> Result<Matrix, PromError> {
        let secs = |t: Timestamp| format!("{:.3}", t.0 as f64 / 1000.0);
        let resp = self
            .client
            .get(format!("{}/api/v1/query_range", self.base))
            .query(&[
                ("query", expr),
                ("start", &secs(start)),
                ("end", &secs(end)),
                ("step", &format!("{:.3}", step.as_secs_f64())),
                ("timeout", &format!("{}ms", self.timeout.as_millis())),
            ])
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let body = self.body(resp, expr).await?;
        decode_matrix(status, &body)
    }

    /// The answer's body, at most `max_response_bytes` of it.
    async fn body(&self, resp: reqwest::Response, query: &str) -> Result<Vec<u8>, PromError> {
        crate::body::read_capped(resp, self.max_body)
            .await
            .map_err(|e| match e {
                crate::body::BodyError::TooLarge(limit) => PromError::TooLarge {
                    query: query.to_string(),
                    limit,
                },
                crate::body::BodyError::Transport(e) => self.transport(e),
            })
    }

    fn transport(&self, e: reqwest::Error) -> PromError {
        if e.is_timeout() {
            PromError::Timeout(self.timeout)
        } else {
            // Without the URL: it may carry credentials.
            PromError::Unreachable(crate::body::error_chain(&e.without_url()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_result_type() {
        use crate::rule::instances::Answer;
        let answer = |body: &[u8]| decode(200, body).unwrap().0.into_answer("q");
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"a"},"value":[1.5,"0.25"]}]}}"#;
        let labels: BTreeMap<String, String> = [("job".to_string(), "a".to_string())].into();
        assert_eq!(answer(v).unwrap(), Answer::Vector(vec![(labels, 0.25)]));
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(answer(v).unwrap(), Answer::Vector(Vec::new()));
        let v = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"NaN"]}}"#;
        assert!(matches!(answer(v).unwrap(), Answer::Scalar(x) if x.is_nan()));
        for (s, want) in [("+Inf", f64::INFINITY), ("-Inf", f64::NEG_INFINITY)] {
            let v = format!(
                r#"{{"status":"success","data":{{"resultType":"scalar","result":[1,"{s}"]}}}}"#
            );
            assert_eq!(
                decode(200, v.as_bytes()).unwrap().0,
                QueryResult::Scalar(want)
            );
        }
        let v = br#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#;
        assert!(matches!(answer(v), Err(PromError::NotANumber { .. })));
        let v = br#"{"status":"success","data":{"resultType":"string","result":[1,"hello"]}}"#;
        assert!(matches!(answer(v), Err(PromError::NotANumber { .. })));
        let v = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]},"warnings":["w"]}"#;
        let (r, warnings) = decode(200, v).unwrap();
        assert_eq!(warnings, vec!["w".to_string()]);
        assert!(matches!(r.into_answer("q").unwrap(), Answer::Vector(v) if v.len() == 2));
    }

    #[test]
    fn errors_keep_prometheus_words() {
        let v = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 5"}"#;
        let e = decode(400, v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Prometheus answered 400: bad_data: parse error at char 5"
        );
        assert!(!e.is_blinding());
        let v = br#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#;
        assert!(decode(503, v).unwrap_err().is_blinding());
        let e = decode(502, b"<html>bad gateway</html>").unwrap_err();
        assert!(e.is_blinding());
        assert!(e.to_string().contains("HTTP 502"));
        // Refused credentials blind ripcord for every rule, not one.
        assert!(decode(401, b"Unauthorized").unwrap_err().is_blinding());
        // Prometheus's words stay on one line in logs and pages.
        let v = br#"{"status":"error","errorType":"bad_data","error":"x\nFAKE LOG LINE"}"#;
        let e = decode(400, v).unwrap_err().to_string();
        assert!(!e.contains('\n') && e.contains("x\\nFAKE"), "{e}");
    }
}
