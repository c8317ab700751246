//! `http`: one request with method, headers and body; success is a status in
//! `expect_status` (any 2xx when empty). Idempotent methods retry with
//! backoff on failure; POST and PATCH only when `retries` says so.

use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue};

use super::{fmt_d, tail, StepOutcome};
use crate::config::HttpStep;

fn idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS")
}

pub async fn run(step: &HttpStep) -> StepOutcome {
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
