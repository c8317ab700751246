//! `http`: one request with method, headers and body; success is a status in
//! `expect_status` (any 2xx when empty). Idempotent methods retry with
//! backoff on failure; POST and PATCH only when `retries` says so.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue};

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{fmt_d, tail, StepContext, StepKind, StepOutcome};
use crate::config::scalar::Dur;
use crate::config::secrets::SecretString;
use crate::config::source::{is_http_url, positive, At, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub method: Option<String>,
    pub url: SecretString,
    #[serde(default)]
    pub headers: BTreeMap<String, SecretString>,
    pub body: Option<SecretString>,
    #[serde(default)]
    pub expect_status: Vec<u16>,
    pub timeout: Option<Dur>,
    pub retries: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct HttpStep {
    pub method: String,
    pub url: SecretString,
    pub headers: BTreeMap<String, SecretString>,
    pub body: Option<SecretString>,
    /// Empty: any 2xx.
    pub expect_status: Vec<u16>,
    pub timeout: Duration,
    /// Retries on failure; only idempotent methods retry unless set.
    pub retries: Option<u32>,
}

impl StepKind for HttpStep {
    const NAME: &'static str = "http";
    const ON_TIMEOUT: &'static str = "request abandoned";
    type Raw = RawHttp;

    fn validate(cx: &mut Ctx, at: &At, h: &RawHttp) -> Option<HttpStep> {
        let at = at.key("http");
        let method = h
            .method
            .clone()
            .unwrap_or_else(|| "POST".into())
            .to_ascii_uppercase();
        if !["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].contains(&method.as_str())
        {
            cx.error(&at.key("method"), format!("unknown HTTP method `{method}`"));
        }
        if !h.url.has_refs() && !is_http_url(h.url.as_written()) {
            cx.error(&at.key("url"), "url must start with http:// or https://");
        }
        for (i, code) in h.expect_status.iter().enumerate() {
            if !(100..=599).contains(code) {
                cx.error(
                    &at.key("expect_status").index(i),
                    format!("{code} is not an HTTP status code"),
                );
            }
        }
        Some(HttpStep {
            method,
            url: h.url.clone(),
            headers: h.headers.clone(),
            body: h.body.clone(),
            expect_status: h.expect_status.clone(),
            timeout: positive(
                cx,
                &at.key("timeout"),
                h.timeout,
                Duration::from_secs(30),
                "timeout",
            ),
            retries: h.retries,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} {} (timeout {})",
            self.method,
            self.url.as_written(),
            fmt_d(self.timeout)
        )
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn with_labels(&self, fill: super::Fill<'_>) -> Result<HttpStep, String> {
        // Safe label values hold no `$`: filling cannot make a secret
        // reference, so the text parses as it did, placeholders aside.
        let again = |s: &SecretString| SecretString::parse(&fill(s.as_written())?);
        Ok(HttpStep {
            url: again(&self.url)?,
            body: self.body.as_ref().map(again).transpose()?,
            ..self.clone()
        })
    }

    async fn run(&self, _ctx: &StepContext) -> StepOutcome {
        run(self).await
    }
}

fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS")
}

async fn run(step: &HttpStep) -> StepOutcome {
    let start = Instant::now();
    let url = match step.url.resolve() {
        Ok(u) => u,
        Err(e) => return StepOutcome::failed(format!("url: {e}")),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &step.headers {
        let value = match v.resolve() {
            Ok(v) => v,
            Err(e) => return StepOutcome::failed(format!("header {k}: {e}")),
        };
        let (Ok(name), Ok(mut value)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(value.expose()),
        ) else {
            return StepOutcome::failed(format!("header {k}: not a valid header"));
        };
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let body = match step.body.as_ref().map(|b| b.resolve()).transpose() {
        Ok(b) => b,
        Err(e) => return StepOutcome::failed(format!("body: {e}")),
    };
    let method = match reqwest::Method::from_bytes(step.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return StepOutcome::failed(format!("method {}", step.method)),
    };
    let client = match reqwest::Client::builder().timeout(step.timeout).build() {
        Ok(c) => c,
        Err(e) => return StepOutcome::failed(format!("HTTP client: {e}")),
    };
    let retries = step
        .retries
        .unwrap_or(if idempotent(&step.method) { 2 } else { 0 });
    let mut attempt = 0;
    let mut backoff = Duration::from_millis(500);
    loop {
        let left = step.timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return StepOutcome::failed(format!("timed out after {}", fmt_d(step.timeout)));
        }
        let mut req = client
            .request(method.clone(), url.expose())
            .headers(headers.clone())
            .timeout(left);
        if let Some(b) = &body {
            req = req.body(b.expose().to_string());
        }
        let outcome = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = tail(&crate::body::read_head(resp, super::OUTPUT_LIMIT).await);
                let ok = if step.expect_status.is_empty() {
                    (200..300).contains(&status)
                } else {
                    step.expect_status.contains(&status)
                };
                StepOutcome {
                    ok,
                    summary: format!("HTTP {status}"),
                    output: text,
                }
            }
            // Without the URL: it may carry a secret.
            Err(e) => StepOutcome::failed(e.without_url().to_string()),
        };
        if outcome.ok || attempt >= retries || start.elapsed() + backoff >= step.timeout {
            let summary = if attempt > 0 {
                format!("{} (after {} attempt(s))", outcome.summary, attempt + 1)
            } else {
                outcome.summary
            };
            return StepOutcome { summary, ..outcome };
        }
        attempt += 1;
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}
