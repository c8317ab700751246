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

/// [`load_rule_files`] for a daemon, which reports only errors: warnings
/// are neither collected nor placed (`ripcord check` prints them).
pub fn load_rule_files_to_run(paths: &[PathBuf]) -> Loaded<RuleSet> {
    let mut cx = Ctx {
        errors_only: true,
        ..Ctx::default()
    };
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

/// A rule read and checked: its name and place (for duplicates and
/// references), the actions and notifiers it names, and the rule when it
/// has no error.
struct ReadRule {
    name: String,
    at: At,
    used: (Vec<String>, Vec<String>),
    rule: Option<Arc<Rule>>,
}

/// Rules are checked in batches of this many (on every core) while the
/// YAML is read.
const RULE_BATCH: usize = 1024;

/// A rule file's `notifiers:` or `actions:`, checked once every file is
/// read.
type Part = (At, &'static str, Value);

fn load_texts(cx: &mut Ctx, texts: Vec<(PathBuf, String)>) -> Option<RuleSet> {
    let paths: Vec<PathBuf> = texts.iter().map(|(p, _)| p.clone()).collect();
    let mut parts: Vec<Part> = Vec::new();
    let mut read: Vec<ReadRule> = Vec::new();
    for (path, text) in texts {
        read_rule_file(cx, &path, text.into(), &mut parts, &mut read);
    }

    let mut notifiers = Vec::new();
    let mut actions = Vec::new();
    // Every name defined, including those whose definitions have errors:
    // a broken action is reported once, not again where it is used.
    let mut notifier_names = BTreeSet::new();
    let mut action_names = BTreeSet::new();
    for (at, kind, v) in &parts {
        match *kind {
            "notifier" => collect_named(cx, at, v, kind, &mut notifiers, &mut notifier_names),
            _ => collect_named(cx, at, v, kind, &mut actions, &mut action_names),
        }
    }
    drop(parts);

    // Names are global: a duplicate names both places.
    check_duplicates(cx, "notifier", notifiers.iter().map(|n| (&n.name, &n.at)));
    check_duplicates(cx, "action", actions.iter().map(|n| (&n.name, &n.at)));
    check_duplicates(cx, "rule", read.iter().map(|r| (&r.name, &r.at)));

    let mut set = RuleSet {
        files: paths,
        ..RuleSet::default()
    };
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
    let mut used_actions = BTreeSet::new();
    let mut used_notifiers = BTreeSet::new();
    for r in read {
        // References, now that every file's notifiers and actions are known.
        let rule = r.at.parent();
        super::rule_check::check_refs(cx, &rule.key("actions"), &r.used.0, &action_names, "action");
        super::rule_check::check_refs(
            cx,
            &rule.key("notify"),
            &r.used.1,
            &notifier_names,
            "notifier",
        );
        used_actions.extend(r.used.0);
        used_notifiers.extend(r.used.1);
        set.rules.extend(r.rule);
    }
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

/// Reads one rule file, checking its rules in batches as the YAML is read:
/// a file's rules are never all held as YAML values (at 10 000 rules those
/// were the load's largest allocation, 10 MB, on top of the parser's own
/// 12 MB of events). A file that is not valid YAML adds one error and
/// nothing else.
fn read_rule_file(
    cx: &mut Ctx,
    path: &Path,
    text: Arc<str>,
    parts: &mut Vec<Part>,
    read: &mut Vec<ReadRule>,
) {
    use serde::de::DeserializeSeed;
    let (diags, n_parts, n_read) = (cx.diags.len(), parts.len(), read.len());
    let root = cx.add_doc(path, text.clone());
    let visitor = FileVisitor {
        cx: &mut *cx,
        root,
        parts: &mut *parts,
        read: &mut *read,
    };
    if let Err(e) = FileSeed(visitor).deserialize(serde_yaml::Deserializer::from_str(&text)) {
        cx.diags.truncate(diags);
        parts.truncate(n_parts);
        read.truncate(n_read);
        cx.drop_last_doc();
        cx.yaml_error(path, &e);
    }
}

/// Deserializes a rule file's top level with [`FileVisitor`].
struct FileSeed<'a>(FileVisitor<'a>);

impl<'de> serde::de::DeserializeSeed<'de> for FileSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self.0)
    }
}

struct FileVisitor<'a> {
    cx: &'a mut Ctx,
    root: At,
    parts: &'a mut Vec<Part>,
    read: &'a mut Vec<ReadRule>,
}

impl FileVisitor<'_> {
    fn not_a_mapping(self) {
        self.cx.error(
            &self.root,
            "a rule file must be a mapping with `notifiers:`, `actions:` and/or `rules:`",
        );
    }
}

/// What a rule file's top level, or its `rules:`, is when it is not the
/// mapping or list it should be: `$ret` reports it and reading goes on;
/// nothing (null) is an empty file or list.
macro_rules! other_values_are {
    ($what:literal, $ret:expr) => {
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str($what)
        }
        /// Empty (a file of only comments, or `rules:` alone): nothing.
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(())
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(())
        }
        other_values_are!(@scalars $ret; visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);
        fn visit_enum<A: serde::de::EnumAccess<'de>>(self, e: A) -> Result<Self::Value, A::Error> {
            // A tagged value (`!tag x`): read and set aside.
            use serde::de::VariantAccess;
            let (_, v) = e.variant::<serde::de::IgnoredAny>()?;
            v.newtype_variant::<serde::de::IgnoredAny>()?;
            Ok($ret(self))
        }
    };
    (@scalars $ret:expr; $($visit:ident: $t:ty),*) => {
        $(fn $visit<E: serde::de::Error>(self, _: $t) -> Result<Self::Value, E> {
            Ok($ret(self))
        })*
    };
}

impl<'de> serde::de::Visitor<'de> for FileVisitor<'_> {
    type Value = ();

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        self.not_a_mapping();
        Ok(())
    }

    other_values_are!("a rule file", FileVisitor::not_a_mapping);

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let mut seen = BTreeSet::new();
        while let Some(k) = map.next_key::<Value>()? {
            let Some(key) = k.as_str() else {
                map.next_value::<serde::de::IgnoredAny>()?;
                self.cx
                    .error(&self.root, "keys of a rule file must be strings");
                continue;
            };
            if !seen.insert(key.to_string()) {
                return Err(A::Error::custom(format!(
                    "duplicate entry with key \"{key}\""
                )));
            }
            let at = self.root.key(key);
            match key {
                "notifiers" | "actions" => {
                    let mut v: Value = map.next_value()?;
                    v.apply_merge().map_err(A::Error::custom)?;
                    let kind = if key == "notifiers" {
                        "notifier"
                    } else {
                        "action"
                    };
                    self.parts.push((at, kind, v));
                }
                "rules" => map.next_value_seed(RulesSeed {
                    cx: &mut *self.cx,
                    at,
                    read: &mut *self.read,
                })?,
                other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    self.cx.error_key(
                        &at,
                        format!("unknown key `{other}` in a rule file, expected one of `notifiers`, `actions`, `rules`"),
                    );
                }
            }
        }
        Ok(())
    }
}

/// A file's `rules:`, checked in batches as they are read.
struct RulesSeed<'a> {
    cx: &'a mut Ctx,
    at: At,
    read: &'a mut Vec<ReadRule>,
}

impl RulesSeed<'_> {
    fn not_a_list(self) {
        self.cx.error(&self.at, "`rules:` must be a list of rules");
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for RulesSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RulesSeed<'_> {
    type Value = ();

    other_values_are!("a list of rules", RulesSeed::not_a_list);

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        self.not_a_list();
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let mut batch = Vec::new();
        let mut i = 0;
        while let Some(mut item) = seq.next_element::<Value>()? {
            item.apply_merge().map_err(A::Error::custom)?;
            batch.push((i, item));
            i += 1;
            if batch.len() == RULE_BATCH {
                check_rules(self.cx, &self.at, std::mem::take(&mut batch), self.read);
            }
        }
        check_rules(self.cx, &self.at, batch, self.read);
        Ok(())
    }
}

/// Reads and checks rules (`(index in rules:, YAML)`), each in one step and
/// its YAML dropped as it goes. References to actions and notifiers are
/// checked by the caller once every file is read.
fn check_rules(cx: &mut Ctx, at: &At, items: Vec<(usize, Value)>, read: &mut Vec<ReadRule>) {
    let done = cx.par_map(items, |cx, (i, item)| {
        let at = at.index(i);
        let before = cx.error_count();
        let raw = cx.de::<RawRule>(&at, &item)?;
        let mut fingerprint = serde_json::to_string(&item).unwrap_or_default();
        // Kept for the rule's life: without the room it grew by doubling.
        fingerprint.shrink_to_fit();
        drop(item);
        let had_errors = cx.error_count() > before;
        let name = raw.name.clone();
        let used = (raw.actions.clone(), raw.notify.clone());
        let rule = super::rule_check::validate_rule(cx, &at, raw, had_errors).map(|mut r| {
            r.fingerprint = fingerprint;
            Arc::new(r)
        });
        Some(ReadRule {
            name,
            at: at.key("name"),
            used,
            rule,
        })
    });
    read.extend(done.into_iter().flatten());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two files: a rule with warnings only, one with an error, one naming
    /// an action another file defines.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let a = dir.join("a.yaml");
        std::fs::write(
            &a,
            "actions:\n  undo:\n    steps: [{exec: {argv: [/bin/true]}}]\nrules:\n  - name: warned\n    queries: {v: up}\n    condition: v > 1\n",
        )
        .unwrap();
        let b = dir.join("b.yaml");
        std::fs::write(
            &b,
            "rules:\n  - name: uses-undo\n    queries: {v: sum(up)}\n    condition: v > 1\n    actions: [undo]\n  - name: broken\n    queries: {v: sum(up)}\n    condition: w > 1\n",
        )
        .unwrap();
        vec![a, b]
    }

    #[test]
    fn a_daemon_load_reports_the_same_errors_and_no_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let paths = files(dir.path());
        let full = load_rule_files(&paths);
        let run = load_rule_files_to_run(&paths);
        let errors = |l: &Loaded<RuleSet>| l.errors().map(|d| d.to_string()).collect::<Vec<_>>();
        assert_eq!(errors(&full), errors(&run));
        assert_eq!(errors(&run).len(), 1, "{:?}", errors(&run));
        assert!(
            errors(&run)[0].contains("b.yaml:8:16"),
            "{:?}",
            errors(&run)
        );
        assert!(
            full.diagnostics.iter().any(|d| !d.is_error()),
            "check sees warnings"
        );
        assert!(run.diagnostics.iter().all(Diagnostic::is_error));

        // Without the broken rule both load, the same rules, and the
        // action named across files is known and used.
        let b = std::fs::read_to_string(&paths[1]).unwrap();
        std::fs::write(&paths[1], b.replace("w > 1", "v > 1")).unwrap();
        let (full, run) = (load_rule_files(&paths), load_rule_files_to_run(&paths));
        let names = |l: &Loaded<RuleSet>| {
            l.value
                .as_ref()
                .map(|s| s.rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>())
        };
        assert_eq!(
            names(&full),
            Some(vec!["warned".into(), "uses-undo".into(), "broken".into()])
        );
        assert_eq!(names(&full), names(&run));
        assert!(!full
            .diagnostics
            .iter()
            .any(|d| d.to_string().contains("not used")));
    }

    /// Errors of one rule file given as text.
    fn errors(text: &str) -> Vec<String> {
        load_rule_sources(&[("r.yaml", text)])
            .errors()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn the_top_level_of_a_rule_file_read_as_it_streams() {
        for ok in ["", "# only a comment\n", "---\n", "rules:\n", "rules: []\n"] {
            assert_eq!(errors(ok), Vec::<String>::new(), "{ok:?}");
        }
        let cases: &[(&str, &str)] = &[
            ("- a\n", "r.yaml:1:1: a rule file must be a mapping"),
            ("just text\n", "r.yaml:1:1: a rule file must be a mapping"),
            ("rules: 5\n", "r.yaml:1:8: `rules:` must be a list of rules"),
            ("rules: {a: b}\n", "`rules:` must be a list of rules"),
            ("rules: !x [a]\n", "`rules:` must be a list of rules"),
            (
                "foo: 1\nrules: []\n",
                "r.yaml:1:1: unknown key `foo` in a rule file",
            ),
            ("rules: [\n", "r.yaml:2:1: invalid YAML"),
            (
                "rules: []\nrules: []\n",
                "invalid YAML: duplicate entry with key \"rules\"",
            ),
            // A syntax error late in the file is the file's only error: the
            // broken rule read before it is not reported.
            (
                "rules:\n  - name: a\n    queries: {v: up}\n    condition: w > 1\n  - name: [\n",
                "invalid YAML",
            ),
        ];
        for (text, want) in cases {
            let got = errors(text);
            assert_eq!(got.len(), 1, "{text:?}: {got:?}");
            assert!(got[0].contains(want), "{text:?}: {got:?}");
        }
    }

    #[test]
    fn anchors_and_merge_keys_reach_across_rules_and_names_across_the_file() {
        let text = "rules:\n  - &base\n    name: a\n    queries: {v: sum(up)}\n    condition: v > 1\n    notify: [n]\n  - <<: *base\n    name: b\n    condition: v > 2\nnotifiers:\n  n: {slack: {webhook_url: https://hooks.slack.com/services/x}}\n";
        let loaded = load_rule_sources(&[("r.yaml", text)]);
        let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        let set = loaded.value.expect("loads");
        let b = set.rules.iter().find(|r| r.name == "b").expect("b");
        assert_eq!(b.queries.get("v").map(String::as_str), Some("sum(up)"));
        assert_eq!(b.condition.source(), "v > 2");
        assert_eq!(b.notify, ["n"]);
        // A notifier no file defines is reported where it is named.
        let e = errors_of_unknown();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("r.yaml:5:14: unknown notifier `m`"),
            "{e:?}"
        );
    }

    fn errors_of_unknown() -> Vec<String> {
        errors("rules:\n  - name: a\n    queries: {v: sum(up)}\n    condition: v > 1\n    notify: [m]\n")
    }

    #[test]
    fn many_rules_are_read_in_batches_in_order() {
        let mut text = String::from("rules:\n");
        let n = RULE_BATCH * 2 + 3;
        for i in 0..n {
            text.push_str(&format!(
                "  - {{name: r{i}, queries: {{v: sum(up)}}, condition: v > 1}}\n"
            ));
        }
        // One broken rule in the second batch, reported at its place.
        text.push_str("  - {name: last, queries: {v: sum(up)}, condition: w > 1}\n");
        let loaded = load_rule_sources(&[("r.yaml", &text)]);
        let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!("r.yaml:{}:", n + 2)),
            "{errors:?}"
        );
        let fixed = text.replace("w > 1", "v > 1");
        let set = load_rule_sources(&[("r.yaml", &fixed)])
            .value
            .expect("loads");
        let names: Vec<String> = set.rules.iter().map(|r| r.name.clone()).collect();
        let want: Vec<String> = (0..n)
            .map(|i| format!("r{i}"))
            .chain(["last".to_string()])
            .collect();
        assert_eq!(names, want);
    }
}
