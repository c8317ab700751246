//! Slack incoming webhooks: a `text` fallback and Block Kit blocks. Every
//! message of one incident starts with the same incident line, so a channel
//! reads as a compact sequence per incident.

use serde_json::json;

use std::time::Duration;

use serde::Deserialize;

use super::{fmt_value, truncate, Notification, ReceiverKind, RenderContext, Request};
use crate::config::secrets::SecretString;
use crate::config::source::{is_http_url, warn_inline_secret, At, Ctx};
use crate::rule::PageEvent;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlack {
    pub webhook_url: SecretString,
}

#[derive(Clone, Debug)]
pub struct Slack {
    pub webhook_url: SecretString,
}

impl ReceiverKind for Slack {
    const NAME: &'static str = "slack";
    type Raw = RawSlack;

    fn validate(cx: &mut Ctx, at: &At, s: &RawSlack) -> Slack {
        let at = at.key("webhook_url");
        warn_inline_secret(cx, &at, &s.webhook_url, "the Slack webhook URL");
        if !s.webhook_url.has_refs() && !is_http_url(s.webhook_url.as_written()) {
            cx.error(&at, "webhook_url must start with http:// or https://");
        }
        Slack {
            webhook_url: s.webhook_url.clone(),
        }
    }

    fn render(&self, n: &Notification, ctx: &RenderContext) -> Result<Vec<Request>, String> {
        render(&self.webhook_url, n, ctx)
    }

    /// About one message per second per webhook.
    fn min_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
}

fn emoji(n: &Notification) -> &'static str {
    match n.event {
        PageEvent::Recovered
        | PageEvent::Seeing
        | PageEvent::ActionsSucceeded
        | PageEvent::StepSucceeded
        | PageEvent::Approved => ":white_check_mark:",
        PageEvent::Closed => ":ballot_box_with_check:",
        PageEvent::StepStarted => ":arrow_forward:",
        PageEvent::ApprovalRequested => ":raised_hand:",
        _ => ":rotating_light:",
    }
}

pub fn render(
    webhook_url: &SecretString,
    n: &Notification,
    ctx: &RenderContext,
) -> Result<Vec<Request>, String> {
    let url = webhook_url.resolve().map_err(|e| e.to_string())?;
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": truncate(&format!("{} *{}*", emoji(n), n.title()), 3000)},
    })];
    if let Some(id) = &n.incident {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("incident `{id}` · {}", n.at.rfc3339())}]}));
    }
    if !n.values.is_empty() {
        let fields: Vec<serde_json::Value> = n
            .values
            .iter()
            .take(10)
            .map(|(k, v)| json!({"type": "mrkdwn", "text": format!("*{k}*\n{}", fmt_value(*v))}))
            .collect();
        blocks.push(json!({"type": "section", "fields": fields}));
    }
    if !n.labels.is_empty() {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(&format!("labels: {}", labels.join(" ")), 3000)}]}));
    }
    if let Some(c) = &n.condition {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("condition: `{c}`"), 3000)}}));
    }
    if !n.details.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("```{}```", n.details.join("\n")), 3000)}}));
    }
    let mut links: Vec<String> = n
        .graph_links(&ctx.prometheus_url)
        .into_iter()
        .map(|(name, href)| format!("<{href}|{name} in Prometheus>"))
        .collect();
    for (text, u) in [("runbook", &n.runbook_url), ("dashboard", &n.dashboard_url)] {
        if let Some(u) = u {
            links.push(format!("<{u}|{text}>"));
        }
    }
    if !links.is_empty() {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": truncate(&links.join(" · "), 3000)}]}));
    }
    if !n.resolve {
        let stop: Vec<String> = n.stop_commands().iter().map(|c| format!("`{c}`")).collect();
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("stop it: {}", stop.join(" · "))}]}));
    }
    let body = json!({"text": truncate(&n.title(), 3000), "blocks": blocks});
    Ok(vec![Request {
        url,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: body.to_string().into_bytes(),
    }])
}
