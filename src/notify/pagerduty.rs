//! PagerDuty Events API v2: `trigger` with a `dedup_key` stable for the
//! incident (so a retry or an update never pages twice), `resolve` with the
//! same key when the incident is over.

use serde_json::json;

use serde::Deserialize;

use super::{fmt_value, truncate, Notification, ReceiverKind, RenderContext, Request};
use crate::config::secrets::SecretString;
use crate::config::source::{is_http_url, warn_inline_secret, At, Ctx};
use crate::rule::PageEvent;

/// The Events API v2 endpoint.
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPagerduty {
    pub routing_key: SecretString,
    pub url: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Pagerduty {
    pub routing_key: SecretString,
    pub url: String,
}

impl ReceiverKind for Pagerduty {
    const NAME: &'static str = "pagerduty";
    type Raw = RawPagerduty;

    fn validate(cx: &mut Ctx, at: &At, pd: &RawPagerduty) -> Pagerduty {
        warn_inline_secret(
            cx,
            &at.key("routing_key"),
            &pd.routing_key,
            "the PagerDuty routing key",
        );
        let url = pd.url.clone().unwrap_or_else(|| DEFAULT_URL.into());
        if !is_http_url(&url) {
            cx.error(
                &at.key("url"),
                format!("url `{url}` must start with http:// or https://"),
            );
        }
        Pagerduty {
            routing_key: pd.routing_key.clone(),
            url,
        }
    }

    fn render(&self, n: &Notification, ctx: &RenderContext) -> Result<Vec<Request>, String> {
        render(&self.routing_key, &self.url, n, ctx)
    }
}

/// The key for an event that belongs to no incident (blind, seeing).
pub fn dedup_key(n: &Notification) -> String {
    n.incident.clone().unwrap_or_else(|| match n.event {
        PageEvent::Blind | PageEvent::Seeing => "ripcord-blind".into(),
        PageEvent::StateUnwritable | PageEvent::StateWritable => "ripcord-state-dir".into(),
        // One alert for the whole group, whichever instance pages it.
        PageEvent::HaCannotAct | PageEvent::HaCanAct => "ripcord-ha-cannot-act".into(),
        PageEvent::RuleUnevaluable | PageEvent::RuleEvaluable => format!(
            "ripcord-unevaluable-{}",
            n.rule.as_deref().unwrap_or_default()
        ),
        other => format!("ripcord-{}", other.as_str()),
    })
}

pub fn render(
    routing_key: &SecretString,
    url: &str,
    n: &Notification,
    ctx: &RenderContext,
) -> Result<Vec<Request>, String> {
    let key = routing_key.resolve().map_err(|e| e.to_string())?;
    let dedup = dedup_key(n);
    let resolve = n.resolve || n.event == PageEvent::Seeing;
    let body = if resolve {
        json!({"routing_key": key.expose(), "event_action": "resolve", "dedup_key": dedup})
    } else {
        let values: serde_json::Map<String, serde_json::Value> = n
            .values
            .iter()
            .map(|(k, v)| (k.clone(), json!(fmt_value(*v))))
            .collect();
        let mut links: Vec<serde_json::Value> = n
            .graph_links(&ctx.prometheus_url)
            .into_iter()
            .map(|(name, href)| json!({"href": href, "text": format!("Prometheus: {name}")}))
            .collect();
        for (text, u) in [("Runbook", &n.runbook_url), ("Dashboard", &n.dashboard_url)] {
            if let Some(u) = u {
                links.push(json!({"href": u, "text": text}));
            }
        }
        json!({
            "routing_key": key.expose(),
            "event_action": "trigger",
            "dedup_key": dedup,
            "client": "ripcord",
            "payload": {
                "summary": truncate(&n.title(), 1024),
                "source": if ctx.host.is_empty() { "ripcord" } else { &ctx.host },
                "severity": n.severity.as_str(),
                "timestamp": n.at.rfc3339(),
                "component": n.rule.clone().unwrap_or_else(|| "ripcord".into()),
                "group": n.labels.get("service").cloned().or_else(|| n.rule.clone()).unwrap_or_else(|| "ripcord".into()),
                "class": n.event,
                "custom_details": {
                    "event": n.event,
                    "incident": n.incident,
                    "values": values,
                    "labels": n.labels,
                    "condition": n.condition,
                    "details": n.details,
                    "dry_run": n.dry_run,
                    "drill": n.drill,
                    "stop": n.stop_commands(),
                },
            },
            "links": links,
        })
    };
    Ok(vec![Request {
        url: crate::config::secrets::Secret::plain(url),
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }])
}
