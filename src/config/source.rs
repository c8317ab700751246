//! Reading YAML with positions: [`Ctx`] collects every problem of a load
//! as a diagnostic at `file:line:col` ([`At`] is a path inside a document,
//! turned into a position only when a problem needs one), and the small
//! checks every part of a rule file shares (names, durations, "exactly one
//! of"). Below the loaders and the per-kind validators that use it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use super::position::{Pos, PositionIndex, Seg};
use super::scalar::Dur;
use super::secrets::SecretString;
use crate::diag::Diagnostic;

/// The result of loading: the value when there was no error, and every
/// diagnostic (errors and warnings) either way.
#[derive(Debug)]
pub struct Loaded<T> {
    pub value: Option<T>,
    pub diagnostics: Vec<Diagnostic>,
}

impl<T> Loaded<T> {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }
}

#[derive(Clone)]
pub(crate) struct Doc {
    /// Shared with every rule read from it.
    path: Arc<Path>,
    /// The text, kept to build the index the first time a position is
    /// needed: a file without problems never pays for it.
    text: Arc<str>,
    index: std::sync::OnceLock<PositionIndex>,
}

impl Doc {
    pub(crate) fn index(&self) -> &PositionIndex {
        self.index.get_or_init(|| PositionIndex::build(&self.text))
    }
}

/// Collects diagnostics across the files of one load.
#[derive(Default)]
pub struct Ctx {
    /// Shared with the workers of [`Ctx::par_map`].
    pub(crate) docs: Arc<Vec<Doc>>,
    pub(crate) diags: Vec<Diagnostic>,
    /// Only errors are kept (a daemon's load: it reports errors, and
    /// `ripcord check` the warnings), so no position is looked up for a
    /// warning: 10 000 rules drawing two warnings each cost 10 MB of
    /// position index for nothing.
    pub(crate) errors_only: bool,
}

impl Ctx {
    /// `f` over `items` on every core (each worker with its own diagnostics,
    /// merged in order), for the per-rule work of a large load.
    pub(crate) fn par_map<T: Send, R: Send>(
        &mut self,
        items: Vec<T>,
        f: impl Fn(&mut Ctx, T) -> R + Sync,
    ) -> Vec<R> {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        if workers < 2 || items.len() < 512 {
            return items.into_iter().map(|t| f(self, t)).collect();
        }
        let per = items.len().div_ceil(workers);
        let mut chunks: Vec<Vec<T>> = Vec::new();
        let mut it = items.into_iter().peekable();
        while it.peek().is_some() {
            chunks.push(it.by_ref().take(per).collect());
        }
        let docs = self.docs.clone();
        let errors_only = self.errors_only;
        let f = &f;
        let done: Vec<Option<(Vec<R>, Vec<Diagnostic>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let docs = docs.clone();
                    s.spawn(move || {
                        let mut cx = Ctx {
                            docs,
                            diags: Vec::new(),
                            errors_only,
                        };
                        let out: Vec<R> = chunk.into_iter().map(|t| f(&mut cx, t)).collect();
                        (out, cx.diags)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().ok()).collect()
        });
        let mut out = Vec::new();
        for chunk in done {
            match chunk {
                Some((rs, diags)) => {
                    out.extend(rs);
                    self.diags.extend(diags);
                }
                // Never a silent loss of the rules it held: the load fails.
                None => {
                    let file = self
                        .docs
                        .last()
                        .map(|d| d.path.to_path_buf())
                        .unwrap_or_default();
                    self.diags.push(Diagnostic::error(
                        &file,
                        Pos::START,
                        "internal error: checking these rules failed (a bug in ripcord; please report it); nothing of this load is used",
                    ));
                }
            }
        }
        out
    }
}

/// A place in a loaded document.
#[derive(Clone, Debug)]
pub struct At {
    pub doc: usize,
    pub path: Vec<Seg>,
}

impl At {
    pub fn key(&self, k: &str) -> At {
        let mut path = self.path.clone();
        path.push(Seg::key(k));
        At {
            doc: self.doc,
            path,
        }
    }

    /// The place this one is in (itself at the root).
    pub fn parent(&self) -> At {
        let mut path = self.path.clone();
        path.pop();
        At {
            doc: self.doc,
            path,
        }
    }

    pub fn index(&self, i: usize) -> At {
        let mut path = self.path.clone();
        path.push(Seg::Index(i));
        At {
            doc: self.doc,
            path,
        }
    }
}

fn strip_location(msg: String) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

impl Ctx {
    pub fn pos(&self, at: &At) -> Pos {
        self.docs[at.doc].index().locate(&at.path)
    }

    pub fn file(&self, at: &At) -> &Path {
        &self.docs[at.doc].path
    }

    /// [`Ctx::file`], shared.
    pub(crate) fn file_arc(&self, at: &At) -> Arc<Path> {
        self.docs[at.doc].path.clone()
    }

    pub fn error(&mut self, at: &At, msg: impl Into<String>) {
        let d = Diagnostic::error(self.file(at), self.pos(at), msg);
        self.diags.push(d);
    }

    /// An error at character `offset` inside the scalar `value` at `at`
    /// (a fault inside a query, not the query's first character).
    pub fn error_in(&mut self, at: &At, value: &str, offset: usize, msg: impl Into<String>) {
        let start = self.pos(at);
        let pos = super::position::offset_pos(&self.docs[at.doc].text, start, value, offset);
        let d = Diagnostic::error(self.file(at), pos, msg);
        self.diags.push(d);
    }

    pub fn error_key(&mut self, at: &At, msg: impl Into<String>) {
        let pos = self.docs[at.doc].index().locate_key(&at.path);
        let d = Diagnostic::error(self.file(at), pos, msg);
        self.diags.push(d);
    }

    pub fn warn_key(&mut self, at: &At, msg: impl Into<String>) {
        if self.errors_only {
            return;
        }
        let pos = self.docs[at.doc].index().locate_key(&at.path);
        let d = Diagnostic::warning(self.file(at), pos, msg);
        self.diags.push(d);
    }

    pub fn warn(&mut self, at: &At, msg: impl Into<String>) {
        if self.errors_only {
            return;
        }
        let d = Diagnostic::warning(self.file(at), self.pos(at), msg);
        self.diags.push(d);
    }

    pub fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diagnostic::is_error)
    }

    /// Reads and parses one file; `None` (with a diagnostic) if it can't be.
    pub fn read(&mut self, path: &Path) -> Option<(At, Value)> {
        let text = self.read_text(path)?;
        self.parse_owned(path, text)
    }

    /// Reads one file as UTF-8; `None` (with a diagnostic) if it can't be.
    pub fn read_text(&mut self, path: &Path) -> Option<String> {
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => Some(text),
                Err(e) => {
                    self.diags.push(Diagnostic::error(
                        path,
                        Pos::START,
                        format!(
                            "not UTF-8 text (invalid byte at offset {})",
                            e.utf8_error().valid_up_to()
                        ),
                    ));
                    None
                }
            },
            Err(e) => {
                self.diags.push(Diagnostic::error(
                    path,
                    Pos::START,
                    format!("cannot read file: {e}"),
                ));
                None
            }
        }
    }

    pub fn parse(&mut self, path: &Path, text: &str) -> Option<(At, Value)> {
        self.parse_owned(path, text.to_string())
    }

    /// [`Ctx::parse`] of a text the document keeps (not copied).
    pub fn parse_owned(&mut self, path: &Path, text: String) -> Option<(At, Value)> {
        // YAML merge keys (`<<: *defaults`) are applied, as Prometheus and
        // Alertmanager users expect.
        match serde_yaml::from_str::<Value>(&text).and_then(|mut v| v.apply_merge().map(|()| v)) {
            Ok(v) => Some((self.add_doc(path, text.into()), v)),
            Err(e) => {
                self.yaml_error(path, &e);
                None
            }
        }
    }

    /// Registers a document before it is read (its text kept for
    /// positions); the place of its root.
    pub(crate) fn add_doc(&mut self, path: &Path, text: Arc<str>) -> At {
        Arc::make_mut(&mut self.docs).push(Doc {
            path: Arc::from(path),
            text,
            index: std::sync::OnceLock::new(),
        });
        At {
            doc: self.docs.len() - 1,
            path: Vec::new(),
        }
    }

    /// Forgets the last document registered: it turned out not to be YAML.
    pub(crate) fn drop_last_doc(&mut self) {
        Arc::make_mut(&mut self.docs).pop();
    }

    /// `path` is not valid YAML: where and why.
    pub(crate) fn yaml_error(&mut self, path: &Path, e: &serde_yaml::Error) {
        let pos = e
            .location()
            .map(|l| Pos {
                line: l.line(),
                col: l.column(),
            })
            .unwrap_or(Pos::START);
        let msg = format!("invalid YAML: {}", strip_location(e.to_string()));
        self.diags.push(Diagnostic::error(path, pos, msg));
    }

    /// Deserializes `v` (found at `at`) into a raw type; a problem is
    /// reported at the exact key or value it concerns.
    ///
    /// To report every problem of an item in one run, a field that fails is
    /// dropped and the item is read again; the item itself is then `None`.
    pub fn de<T: DeserializeOwned>(&mut self, at: &At, v: &Value) -> Option<T> {
        // The common case reads the value in place; only a problem pays
        // for the copy the retries below edit.
        if let Ok(t) = T::deserialize(v) {
            return Some(t);
        }
        let mut v = v.clone();
        let mut dropped: Vec<String> = Vec::new();
        for _ in 0..32 {
            let e = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
                // With fields dropped the item is still checked further (its
                // other problems get reported); the error already recorded
                // keeps the whole set from loading.
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let segs: Vec<Seg> = e
                .path()
                .iter()
                .map_while(|seg| match seg {
                    serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                    serde_path_to_error::Segment::Map { key } => Some(Seg::key(key)),
                    serde_path_to_error::Segment::Enum { variant } => Some(Seg::key(variant)),
                    serde_path_to_error::Segment::Unknown => None,
                })
                .collect();
            let msg = strip_location(e.into_inner().to_string());
            // A field that had an error and was dropped comes back as
            // "missing": that is not a second problem.
            if segs.is_empty()
                && dropped
                    .iter()
                    .any(|d| msg == format!("missing field `{d}`"))
            {
                return None;
            }
            let mut here = at.clone();
            here.path.extend(segs.iter().cloned());
            let unknown = msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
                .map(str::to_string);
            match &unknown {
                Some(name) if segs.last() == Some(&Seg::key(name.as_str())) => {
                    self.error_key(&here, msg)
                }
                Some(name)
                    if self.docs[here.doc]
                        .index()
                        .key(&here.key(name).path)
                        .is_some() =>
                {
                    self.error_key(&here.key(name), msg)
                }
                _ => self.error(&here, msg),
            }
            // Drop the top-level field the problem is in, and read again.
            let field = match segs.first() {
                Some(Seg::Key(k)) => Some(k.clone()),
                _ => unknown,
            };
            let removed = match (&field, v.as_mapping_mut()) {
                (Some(f), Some(m)) => m.remove(f.as_str()).is_some(),
                _ => false,
            };
            match field.filter(|_| removed) {
                Some(f) => dropped.push(f),
                None => return None,
            }
        }
        None
    }
}

/// Names of rules, actions and notifiers: used in ids, URLs and
/// environment variables, so kept to a safe alphabet.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name `{name}`: use letters, digits, `-`, `_` and `.`, starting with a letter or digit"
        ))
    }
}

pub fn is_identifier(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub fn is_http_url(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && s.len() > "https://".len()
}

pub fn list(names: impl Iterator<Item = impl AsRef<str>>) -> String {
    let v: Vec<String> = names.map(|n| n.as_ref().to_string()).collect();
    if v.is_empty() {
        "none are defined".into()
    } else {
        format!("defined: {}", v.join(", "))
    }
}

pub fn positive(cx: &mut Ctx, at: &At, d: Option<Dur>, default: Duration, what: &str) -> Duration {
    match d {
        Some(Dur(d)) if d.is_zero() => {
            cx.error(at, format!("{what} must be greater than 0"));
            default
        }
        Some(Dur(d)) => d,
        None => default,
    }
}

pub fn one_of<'a, T>(
    cx: &mut Ctx,
    at: &At,
    what: &str,
    options: &[(&'a str, Option<T>)],
) -> Option<(&'a str, T)>
where
    T: Clone,
{
    let set: Vec<(&str, T)> = options
        .iter()
        .filter_map(|(n, v)| v.clone().map(|v| (*n, v)))
        .collect();
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    match set.len() {
        1 => set.into_iter().next(),
        0 => {
            cx.error(at, format!("{what} needs one of `{}`", names.join("`, `")));
            None
        }
        _ => {
            let given: Vec<&str> = set.iter().map(|(n, _)| *n).collect();
            cx.error(
                at,
                format!(
                    "{what} needs exactly one of `{}`, found `{}`",
                    names.join("`, `"),
                    given.join("`, `")
                ),
            );
            None
        }
    }
}

/// A secret written into the file itself: it works, but it belongs in
/// `${env:}`, `${file:}` or a systemd credential.
pub fn warn_inline_secret(cx: &mut Ctx, at: &At, s: &SecretString, what: &str) {
    if !s.has_refs() {
        cx.warn(
            at,
            format!("{what} is written inline: use ${{env:NAME}}, ${{file:PATH}} or ${{credential:NAME}} so it stays out of the rule file"),
        );
    } else if let Err(e) = s.resolve() {
        // Where the daemon runs, this notifier could page nobody.
        cx.warn(
            at,
            format!("{what} cannot be resolved here ({e}): where ripcord runs, pages to this notifier would fail"),
        );
    }
}
