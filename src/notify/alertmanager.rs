//! Alertmanager: `POST /api/v2/alerts` to every configured Alertmanager, so
//! teams keep their routing, silences and receivers. One alert per incident
//! (labels: alertname = rule, incident, severity, the rule's labels); the
//! resolve sets `endsAt`. A firing alert carries an `endsAt` 24h ahead so it
//! does not expire between ripcord's updates.

use std::time::Duration;

use serde_json::json;

use serde::Deserialize;

use super::{Notification, ReceiverKind, RenderContext, Request};
use crate::config::secrets::Secret;
use crate::config::source::{is_http_url, At, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertmanager {
    pub urls: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Alertmanager {
    pub urls: Vec<String>,
}

impl ReceiverKind for Alertmanager {
    const NAME: &'static str = "alertmanager";
    type Raw = RawAlertmanager;

    fn validate(cx: &mut Ctx, at: &At, am: &RawAlertmanager) -> Alertmanager {
        let at = at.key("urls");
        if am.urls.is_empty() {
            cx.error(&at, "alertmanager needs at least one url");
        }
        for (i, u) in am.urls.iter().enumerate() {
            if !is_http_url(u) {
                cx.error(
                    &at.index(i),
                    format!("url `{u}` must start with http:// or https://"),
                );
            }
        }
        Alertmanager {
            urls: am.urls.clone(),
        }
    }

    fn render(&self, n: &Notification, ctx: &RenderContext) -> Result<Vec<Request>, String> {
        render(&self.urls, n, ctx)
    }
}

pub fn render(
    urls: &[String],
    n: &Notification,
    ctx: &RenderContext,
) -> Result<Vec<Request>, String> {
    let mut labels = serde_json::Map::new();
    for (k, v) in &n.labels {
        labels.insert(k.clone(), json!(v));
    }
    labels.insert(
        "alertname".into(),
        json!(n.rule.clone().unwrap_or_else(|| "ripcord".into())),
    );
    labels.insert("severity".into(), json!(n.severity.as_str()));
    labels.insert("source".into(), json!("ripcord"));
    if let Some(i) = &n.incident {
        labels.insert("incident".into(), json!(i));
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert("summary".into(), json!(n.summary));
    annotations.insert("event".into(), json!(n.event));
    if !n.details.is_empty() {
        annotations.insert("description".into(), json!(n.details.join("\n")));
    }
    if let Some(u) = &n.runbook_url {
        annotations.insert("runbook_url".into(), json!(u));
    }
    let ends = if n.resolve || n.event == crate::rule::PageEvent::Seeing {
        n.at
    } else {
        n.at.plus(Duration::from_secs(24 * 3600))
    };
    let generator = n
        .graph_links(&ctx.prometheus_url)
        .into_iter()
        .next()
        .map(|(_, u)| u)
        .unwrap_or_else(|| ctx.prometheus_url.clone());
    let body = json!([{
        "labels": labels,
        "annotations": annotations,
        "startsAt": n.started.rfc3339(),
        "endsAt": ends.rfc3339(),
        "generatorURL": generator,
    }])
    .to_string()
    .into_bytes();
    urls.iter()
        .map(|u| {
            Ok(Request {
                url: Secret::plain(format!("{}/api/v2/alerts", u.trim_end_matches('/'))),
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: body.clone(),
            })
        })
        .collect()
}
