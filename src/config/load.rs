//! Loading and checking files: YAML text → raw serde types → checked domain
//! types, with every problem reported as `file:line:col: message`.
//!
//! All problems of a set of files are collected in one pass (a rule file with
//! three mistakes reports three), and a set is only returned when it has no
//! error: the daemon keeps its previous rules otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::position::Pos;
use super::raw::{self, RawConfig, RawNotifier, RawRule};
use super::*;
use crate::diag::Diagnostic;
use crate::rule::PageEvent;

pub use super::source::*;
pub use super::{
    DEFAULT_BLIND_AFTER, DEFAULT_CONFIG_PATH, DEFAULT_COOLDOWN, DEFAULT_EVERY, DEFAULT_LISTEN,
    DEFAULT_RULES, DEFAULT_STATE_DIR,
};

// ---------------------------------------------------------------- main config

/// `ha:`, checked: endpoints are http(s) URLs, the prefix an absolute key
/// path, the lease long enough for etcd and short enough to matter, the
/// name a plain word (it is part of keys, logs and pages).
fn load_ha(cx: &mut Ctx, at: &At, h: raw::RawHa, base: &Path) -> Option<HaConfig> {
    let etcd = at.key("etcd");
    let name = h.name.unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|n| n.into_string().ok())
            .unwrap_or_default()
    });
    let plain = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let mut ok = true;
    if !plain(&name) {
        cx.error(&at.key("name"), format!("ha.name `{name}` must be 1-64 letters, digits, `.`, `_` or `-` (it is part of etcd keys and pages); unique in the group"));
        ok = false;
    }
    let endpoints = h.etcd.endpoints.into_vec();
    if endpoints.is_empty() {
        cx.error(&etcd.key("endpoints"), "ha.etcd.endpoints is empty: list every member of the etcd cluster, e.g. [http://10.0.0.1:2379, http://10.0.0.2:2379, http://10.0.0.3:2379]");
        ok = false;
    }
    let has_ca = h.etcd.ca_file.is_some();
    for (i, e) in endpoints.iter().enumerate() {
        let at = etcd.key("endpoints").index(i);
        let shown = crate::body::redact_url(e);
        let problem = if !is_http_url(e) {
            format!("etcd endpoint `{shown}` must start with http:// or https://")
        } else if shown != *e {
            format!("etcd endpoint `{shown}` carries credentials: they would reach logs; use ha.etcd.username and password")
        } else if e.starts_with("https://") && !has_ca {
            format!("etcd endpoint `{e}` is https: set ha.etcd.ca_file to the CA (PEM) that signed etcd's certificate")
        } else {
            continue;
        };
        cx.error(&at, problem);
        ok = false;
    }
    let prefix = h.etcd.prefix.unwrap_or_else(|| DEFAULT_HA_PREFIX.into());
    let prefix = prefix.trim_end_matches('/').to_string();
    if !prefix.starts_with('/') || prefix.len() < 2 {
        cx.error(&etcd.key("prefix"), format!("ha.etcd.prefix `{prefix}` must be a key path like /ripcord/payments: every instance with the same prefix is one group"));
        ok = false;
    }
    let lease_ttl = h.etcd.lease_ttl.map(|d| d.0).unwrap_or(DEFAULT_LEASE_TTL);
    if lease_ttl < Duration::from_secs(2) || lease_ttl > Duration::from_secs(300) {
        cx.error(&etcd.key("lease_ttl"), format!("ha.etcd.lease_ttl {} must be between 2s and 5m: a failover takes about this long, and etcd refuses leases much shorter than its election timeout", humantime::format_duration(lease_ttl)));
        ok = false;
    }
    let mut both = |cx: &mut Ctx, names: (&str, &str), set: (bool, bool)| {
        if set.0 != set.1 {
            let (given, missing) = if set.0 { names } else { (names.1, names.0) };
            cx.error(
                &etcd.key(given),
                format!("ha.etcd.{given} without ha.etcd.{missing}: set both, or neither"),
            );
            ok = false;
        }
    };
    both(
        cx,
        ("username", "password"),
        (h.etcd.username.is_some(), h.etcd.password.is_some()),
    );
    both(
        cx,
        ("cert_file", "key_file"),
        (h.etcd.cert_file.is_some(), h.etcd.key_file.is_some()),
    );
    let auth = match (h.etcd.username, h.etcd.password) {
        (Some(u), Some(p)) => {
            source::warn_inline_secret(cx, &etcd.key("password"), &p, "ha.etcd.password");
            Some((u, p))
        }
        _ => None,
    };
    let identity = match (h.etcd.cert_file, h.etcd.key_file) {
        (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
        _ => None,
    };
    let ca_file = h.etcd.ca_file.map(|c| base.join(c));
    let tls = (ca_file.is_some() || identity.is_some()).then_some(EtcdTls { ca_file, identity });
    ok.then_some(HaConfig {
        name,
        endpoints,
        prefix,
        lease_ttl,
        auth,
        tls,
    })
}

/// Loads `ripcord.yaml`. A missing file at the default path means "all
/// defaults"; a missing file named explicitly is an error.
pub fn load_config(path: &Path, must_exist: bool) -> Loaded<Config> {
    let mut cx = Ctx::default();
    let raw = if !path.exists() && !must_exist {
        Some(RawConfig::default())
    } else {
        match cx.read(path) {
            Some((_, Value::Null)) => Some(RawConfig::default()),
            Some((at, v)) => cx.de::<RawConfig>(&at, &v),
            None => None,
        }
    };
    let value = raw.and_then(|raw| {
        let at = At {
            doc: cx.docs.len().saturating_sub(1),
            path: Vec::new(),
        };
        let have_doc = !cx.docs.is_empty();
        let err = |cx: &mut Ctx, seg: &str, msg: String| {
            if have_doc {
                cx.error(&at.key("prometheus").key(seg), msg);
            } else {
                cx.diags.push(Diagnostic::error(path, Pos::START, msg));
            }
        };
        let url = raw
            .prometheus
            .url
            .unwrap_or_else(|| "http://127.0.0.1:9090".into());
        let shown = crate::body::redact_url(&url);
        if !is_http_url(&url) {
            err(&mut cx, "url", format!("prometheus url `{shown}` must start with http:// or https://"));
        } else if shown != url {
            err(&mut cx, "url", format!("prometheus url `{shown}` carries credentials: they would reach logs and every page's graph link; write `basic_auth: {{username: NAME, password: \"${{file:/etc/ripcord/prom-pass}}\"}}` instead"));
        }
        let timeout = raw.prometheus.timeout.map(|d| d.0).unwrap_or(Duration::from_secs(10));
        if timeout.is_zero() {
            err(&mut cx, "timeout", "prometheus timeout must be greater than 0".into());
        }
        let auth = match (raw.prometheus.basic_auth, raw.prometheus.bearer_token) {
            (Some(_), Some(_)) => {
                err(&mut cx, "bearer_token", "set either basic_auth or bearer_token, not both".into());
                None
            }
            (Some(b), None) => Some(PromAuth::Basic {
                username: b.username,
                password: b.password,
            }),
            (None, Some(t)) => Some(PromAuth::Bearer(t)),
            (None, None) => None,
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let globs = raw
            .rules
            .map(raw::OneOrMany::into_vec)
            .unwrap_or_else(|| vec![DEFAULT_RULES.into()]);
        let mut rule_globs = Vec::new();
        for (i, g) in globs.iter().enumerate() {
            let full = if Path::new(g).is_absolute() {
                g.clone()
            } else {
                base.join(g).to_string_lossy().into_owned()
            };
            if let Err(e) = glob::Pattern::new(&full) {
                let msg = format!("invalid glob `{g}`: {e}");
                if have_doc {
                    let a = if globs.len() > 1 { at.key("rules").index(i) } else { at.key("rules") };
                    cx.error(&a, msg);
                }
            }
            rule_globs.push(full);
        }
        let state_dir = raw
            .state_dir
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let listen_s = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = match listen_s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                if have_doc {
                    cx.error(
                        &at.key("listen"),
                        format!("invalid listen address `{listen_s}`: expected IP:PORT, e.g. 127.0.0.1:9733"),
                    );
                }
                DEFAULT_LISTEN.parse().ok()?
            }
        };
        if !listen.ip().is_loopback() && raw.api.token.is_none() && have_doc {
            cx.warn(
                &at.key("listen"),
                format!("listen: {listen} is reachable from other hosts and api.token is not set: /metrics and status are open to them, and the control API is disabled; set api.token or listen on 127.0.0.1"),
            );
        }
        let limits = Limits {
            max_actions_per_hour: raw
                .limits
                .max_actions_per_hour
                .unwrap_or(Limits::default().max_actions_per_hour),
        };
        if limits.max_actions_per_hour == 0 && have_doc {
            cx.warn(
                &at.key("limits").key("max_actions_per_hour"),
                "max_actions_per_hour is 0: ripcord will page but never act",
            );
        }
        let ha = match raw.ha {
            Some(h) if have_doc => load_ha(&mut cx, &at.key("ha"), h, base),
            _ => None,
        };
        Some(Config {
            ha,
            path: path.exists().then(|| path.to_path_buf()),
            prometheus: PrometheusConfig {
                url: url.trim_end_matches('/').to_string(),
                timeout,
                headers: raw.prometheus.headers,
                ca_file: raw.prometheus.ca_file.map(|p| base.join(p)),
                blind_after: raw.prometheus.blind_after.map(|d| d.0).unwrap_or(DEFAULT_BLIND_AFTER),
                max_response_bytes: raw
                    .prometheus
                    .max_response_bytes
                    .unwrap_or(super::DEFAULT_MAX_RESPONSE_BYTES)
                    .max(4096),
                auth,
            },
            rule_globs,
            state_dir,
            listen,
            mode: raw.mode.unwrap_or_default(),
            limits,
            web_read: raw.web.read.unwrap_or(if raw.api.token.is_some() {
                raw::WebRead::Token
            } else {
                raw::WebRead::Open
            }),
            api_token: raw.api.token,
            removal_delay: raw
                .reload
                .removal_delay
                .map(|d| d.0)
                .unwrap_or(super::DEFAULT_REMOVAL_DELAY),
            outbox: OutboxConfig {
                max_age: raw.outbox.max_age.map(|d| d.0).unwrap_or(crate::notify::outbox::DEFAULT_MAX_AGE),
                max_pages: raw.outbox.max_pages.unwrap_or(crate::notify::outbox::DEFAULT_MAX_ITEMS).max(1),
            },
        })
    });
    let ok = !cx.has_errors();
    Loaded {
        value: value.filter(|_| ok),
        diagnostics: cx.diags,
    }
}

/// The rule files a config names, in a stable order.
pub fn expand_globs(globs: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut files = BTreeSet::new();
    for g in globs {
        let paths = glob::glob(g).map_err(|e| format!("invalid glob `{g}`: {e}"))?;
        for p in paths {
            let p = p.map_err(|e| format!("cannot read {}: {}", e.path().display(), e.error()))?;
            if p.is_file() && !is_test_file(&p) {
                files.insert(p);
            }
        }
    }
    Ok(files.into_iter().collect())
}

/// Rule unit-test files are named `*.test.yaml` (or `.yml`).
pub fn is_test_file(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".test.yaml") || name.ends_with(".test.yml")
}

fn is_yaml(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

/// Files under `args` (files as given, directories walked in name order),
/// split into rule files and test files.
pub fn collect_files(args: &[PathBuf]) -> std::io::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if is_yaml(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut all = Vec::new();
    for a in args {
        if a.is_dir() {
            walk(a, &mut all)?;
        } else {
            all.push(a.clone());
        }
    }
    // `ripcord check .` reports `r.yaml:3:5`, not `./r.yaml:3:5`.
    for p in &mut all {
        if let Ok(stripped) = p.strip_prefix(".") {
            *p = stripped.to_path_buf();
        }
    }
    Ok(all.into_iter().partition(|p| !is_test_file(p)))
}

// ---------------------------------------------------------------- rule files

struct Named<T> {
    name: String,
    at: At,
    raw: T,
    /// Reading it reported an error already (a field was dropped).
    had_errors: bool,
}

/// Loads a set of rule files as one: names are global across them.
pub fn load_rule_files(paths: &[PathBuf]) -> Loaded<RuleSet> {
    let mut cx = Ctx::default();
    let set = load_rule_files_into(&mut cx, paths);
    let ok = !cx.has_errors();
    Loaded {
        value: set.filter(|_| ok),
        diagnostics: cx.diags,
    }
}

pub(crate) fn load_rule_files_into(cx: &mut Ctx, paths: &[PathBuf]) -> Option<RuleSet> {
    let mut texts = Vec::new();
    for p in paths {
        if let Some(t) = cx.read_text(p) {
            texts.push((p.clone(), t));
        }
    }
    let mut set = load_texts(cx, texts)?;
    set.files = paths.to_vec();
    Some(set)
}

fn load_texts(cx: &mut Ctx, texts: Vec<(PathBuf, String)>) -> Option<RuleSet> {
    let paths: Vec<PathBuf> = texts.iter().map(|(p, _)| p.clone()).collect();
    let mut notifiers = Vec::new();
    let mut actions = Vec::new();
    // Every name defined, including those whose definitions have errors:
    // a broken action is reported once, not again where it is used.
    let mut notifier_names = BTreeSet::new();
    let mut action_names = BTreeSet::new();
    let mut rules: Vec<(At, RawRule, bool, String)> = Vec::new();
    for (path, text) in &texts {
        let Some((root, value)) = cx.parse(path, text) else {
            continue;
        };
        let map = match value {
            Value::Null => continue,
            Value::Mapping(m) => m,
            _ => {
                cx.error(
                    &root,
                    "a rule file must be a mapping with `notifiers:`, `actions:` and/or `rules:`",
                );
                continue;
            }
        };
        for (k, v) in &map {
            let Some(key) = k.as_str() else {
                cx.error(&root, "keys of a rule file must be strings");
                continue;
            };
            let at = root.key(key);
            match key {
                "notifiers" => collect_named(cx, &at, v, "notifier", &mut notifiers, &mut notifier_names),
                "actions" => collect_named(cx, &at, v, "action", &mut actions, &mut action_names),
                "rules" => match v {
                    Value::Sequence(items) => {
                        let read = cx.par_map(items.iter().enumerate().collect(), |cx, (i, item)| {
                            let at = at.index(i);
                            let before = cx.error_count();
                            let r = cx.de::<RawRule>(&at, item)?;
                            let fp = serde_json::to_string(item).unwrap_or_default();
                            let had_errors = cx.error_count() > before;
                            Some((at, r, had_errors, fp))
                        });
                        rules.extend(read.into_iter().flatten());
                    }
                    Value::Null => {}
                    _ => cx.error(&at, "`rules:` must be a list of rules"),
                },
                other => cx.error_key(
                    &at,
                    format!("unknown key `{other}` in a rule file, expected one of `notifiers`, `actions`, `rules`"),
                ),
            }
        }
    }

    // Names are global: a duplicate names both places.
    check_duplicates(cx, "notifier", notifiers.iter().map(|n| (&n.name, &n.at)));
    check_duplicates(cx, "action", actions.iter().map(|n| (&n.name, &n.at)));
    let rule_names: Vec<(String, At)> = rules
        .iter()
        .map(|(at, r, _, _)| (r.name.clone(), at.key("name")))
        .collect();
    check_duplicates(cx, "rule", rule_names.iter().map(|(n, a)| (n, a)));

    let mut set = RuleSet {
        files: paths,
        ..RuleSet::default()
    };
    let mut used_actions = BTreeSet::new();
    let mut used_notifiers = BTreeSet::new();
    for n in &notifiers {
        if let Some(v) = validate_notifier(cx, n) {
            set.notifiers
                .entry(n.name.clone())
                .or_insert_with(|| Arc::new(v));
        }
    }
    for a in &actions {
        if let Some(v) = validate_action(cx, a) {
            set.actions
                .entry(a.name.clone())
                .or_insert_with(|| Arc::new(v));
        }
    }
    for (_, raw, _, _) in &rules {
        used_actions.extend(raw.actions.iter().cloned());
        used_notifiers.extend(raw.notify.iter().cloned());
    }
    let checked = cx.par_map(rules, |cx, (at, raw, had_errors, fingerprint)| {
        let mut r = super::rule_check::validate_rule(
            cx,
            &at,
            raw,
            had_errors,
            &action_names,
            &notifier_names,
        )?;
        r.fingerprint = fingerprint;
        Some(Arc::new(r))
    });
    set.rules.extend(checked.into_iter().flatten());
    for a in &actions {
        if !used_actions.contains(&a.name) {
            cx.warn_key(
                &a.at,
                format!("action `{}` is not used by any rule", a.name),
            );
        }
    }
    for n in &notifiers {
        if !used_notifiers.contains(&n.name) {
            cx.warn_key(
                &n.at,
                format!("notifier `{}` is not used by any rule", n.name),
            );
        }
    }
    Some(set)
}

fn collect_named<T: DeserializeOwned>(
    cx: &mut Ctx,
    at: &At,
    v: &Value,
    kind: &str,
    out: &mut Vec<Named<T>>,
    names: &mut BTreeSet<String>,
) {
    let map = match v {
        Value::Mapping(m) => m,
        Value::Null => return,
        _ => {
            cx.error(
                at,
                format!("`{kind}s:` must be a mapping of {kind} names to definitions"),
            );
            return;
        }
    };
    for (k, item) in map {
        let name = match k {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                cx.error(at, format!("{kind} names must be strings"));
                continue;
            }
        };
        let here = at.key(&name);
        names.insert(name.clone());
        if let Err(e) = check_name(kind, &name) {
            cx.error_key(&here, e);
        }
        let before = cx.error_count();
        if let Some(raw) = cx.de::<T>(&here, item) {
            let had_errors = cx.error_count() > before;
            out.push(Named {
                name,
                at: here,
                raw,
                had_errors,
            });
        }
    }
}

fn check_duplicates<'a>(
    cx: &mut Ctx,
    kind: &str,
    items: impl Iterator<Item = (&'a String, &'a At)>,
) {
    let mut seen: BTreeMap<&String, &At> = BTreeMap::new();
    for (name, at) in items {
        if let Some(first) = seen.get(name) {
            let first = Origin {
                file: cx.file(first).to_path_buf(),
                pos: cx.docs[first.doc].index().locate_key(&first.path),
            };
            let here = cx.docs[at.doc].index().locate_key(&at.path);
            let d = Diagnostic::error(
                cx.file(at),
                here,
                format!("{kind} `{name}` is defined twice: first at {first}"),
            );
            cx.diags.push(d);
        } else {
            seen.insert(name, at);
        }
    }
}

fn validate_notifier(cx: &mut Ctx, n: &Named<RawNotifier>) -> Option<Notifier> {
    let r = &n.raw;
    if n.had_errors {
        return None;
    }
    let kind = crate::notify::validate_kind(cx, &n.at, &n.name, r)?;
    let events = r.events.as_ref().map(|events| {
        let mut known = std::collections::BTreeSet::new();
        for (i, e) in events.iter().enumerate() {
            match PageEvent::parse(e) {
                Some(ev) => {
                    known.insert(ev);
                }
                None => cx.error(
                    &n.at.key("events").index(i),
                    format!("unknown event `{e}` (events: {})", PageEvent::list()),
                ),
            }
        }
        known
    });
    Some(Notifier {
        name: n.name.clone(),
        kind,
        events,
        min_severity: r.min_severity.unwrap_or(Severity::Info),
    })
}

fn validate_action(cx: &mut Ctx, a: &Named<raw::RawAction>) -> Option<Action> {
    if a.had_errors {
        return None;
    }
    let mut steps = Vec::new();
    if a.raw.steps.is_empty() {
        cx.error(
            &a.at.key("steps"),
            format!("action `{}` has no steps", a.name),
        );
    }
    for (i, s) in a.raw.steps.iter().enumerate() {
        let at = a.at.key("steps").index(i);
        if let Some(step) = crate::actions::validate_step(cx, &at, s) {
            steps.push(step);
        }
    }
    let label_pattern = match &a.raw.label_pattern {
        None => None,
        Some(p) => match regex::Regex::new(&format!("^(?:{p})$")) {
            Ok(re) => Some(re),
            Err(e) => {
                let first = e.to_string();
                let first = first.lines().last().unwrap_or("invalid").trim();
                let first = first.strip_prefix("error: ").unwrap_or(first).to_string();
                cx.error(
                    &a.at.key("label_pattern"),
                    format!("label_pattern `{p}` is not a regular expression: {first}"),
                );
                return None;
            }
        },
    };
    (steps.len() == a.raw.steps.len()).then(|| Action {
        name: a.name.clone(),
        description: a.raw.description.clone(),
        label_pattern,
        steps,
    })
}

/// Loads rule files from in-memory texts: `(path to report, text)`.
pub fn load_rule_sources(sources: &[(&str, &str)]) -> Loaded<RuleSet> {
    let mut cx = Ctx::default();
    let texts: Vec<(PathBuf, String)> = sources
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect();
    let set = load_texts(&mut cx, texts);
    let ok = !cx.has_errors();
    Loaded {
        value: set.filter(|_| ok),
        diagnostics: cx.diags,
    }
}
