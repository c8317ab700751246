//! A generic webhook: a documented, versioned JSON body (version "1"),
//! signed with HMAC-SHA256 of the body when a secret is configured:
//! `X-Ripcord-Signature: sha256=<hex>`.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use serde::Deserialize;

use super::{Notification, ReceiverKind, RenderContext, Request};
use crate::config::secrets::SecretString;
use crate::config::source::{is_http_url, warn_inline_secret, At, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: SecretString,
    pub secret: Option<SecretString>,
}

#[derive(Clone, Debug)]
pub struct Webhook {
    pub url: SecretString,
    pub secret: Option<SecretString>,
}

impl ReceiverKind for Webhook {
    const NAME: &'static str = "webhook";
    type Raw = RawWebhook;

    fn validate(cx: &mut Ctx, at: &At, w: &RawWebhook) -> Webhook {
        if !w.url.has_refs() && !is_http_url(w.url.as_written()) {
            cx.error(&at.key("url"), "url must start with http:// or https://");
        }
        if let Some(s) = &w.secret {
            warn_inline_secret(cx, &at.key("secret"), s, "the webhook secret");
        }
        Webhook {
            url: w.url.clone(),
            secret: w.secret.clone(),
        }
    }

    fn render(&self, n: &Notification, ctx: &RenderContext) -> Result<Vec<Request>, String> {
        render(&self.url, self.secret.as_ref(), n, ctx)
    }
}

pub const VERSION: &str = "1";

pub fn body(n: &Notification, ctx: &RenderContext) -> serde_json::Value {
    let links: serde_json::Map<String, serde_json::Value> = n
        .graph_links(&ctx.prometheus_url)
        .into_iter()
        .map(|(k, v)| (k, json!(v)))
        .collect();
    json!({
        "version": VERSION,
        "id": n.page_id,
        "event": n.event,
        "rule": n.rule,
        "incident": n.incident,
        "severity": n.severity.as_str(),
        "summary": n.summary,
        "details": n.details,
        "values": n.values,
        "condition": n.condition,
        "labels": n.labels,
        "resolve": n.resolve,
        "dry_run": n.dry_run,
        "drill": n.drill,
        "started_at": n.started.rfc3339(),
        "at": n.at.rfc3339(),
        "links": {"prometheus": links, "runbook": n.runbook_url, "dashboard": n.dashboard_url},
    })
}

pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn render(
    url: &SecretString,
    secret: Option<&SecretString>,
    n: &Notification,
    ctx: &RenderContext,
) -> Result<Vec<Request>, String> {
    let url = url.resolve().map_err(|e| e.to_string())?;
    let bytes = body(n, ctx).to_string().into_bytes();
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("X-Ripcord-Event".to_string(), n.event.as_str().to_string()),
    ];
    if let Some(s) = secret {
        let s = s.resolve().map_err(|e| e.to_string())?;
        headers.push((
            "X-Ripcord-Signature".into(),
            sign(s.expose().as_bytes(), &bytes),
        ));
    }
    Ok(vec![Request {
        url,
        headers,
        body: bytes,
    }])
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            super::sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
