//! `file`: set `KEY=VALUE` in an env file (comments, order and other lines
//! kept), or a dotted key path in a YAML or JSON file. The new content goes to
//! a temp file beside it with the old mode and owner, is synced, renamed over
//! the old one and the directory synced: a crash leaves the old file or the
//! new one, never half of either.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use serde::Deserialize;

use super::{StepContext, StepKind, StepOutcome};
use crate::config::scalar::{Dur, Scalar};
use crate::config::source::{is_identifier, positive, At, Ctx};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub path: String,
    pub set: IndexMap<String, Scalar>,
    pub format: Option<FileFormat>,
    pub timeout: Option<Dur>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Env,
    Yaml,
    Json,
}

#[derive(Clone, Debug)]
pub struct FileStep {
    pub path: PathBuf,
    pub set: IndexMap<String, String>,
    pub format: FileFormat,
    pub timeout: Duration,
}

impl StepKind for FileStep {
    const NAME: &'static str = "file";
    const ON_TIMEOUT: &'static str = "the write may still finish";
    type Raw = RawFile;

    fn validate(cx: &mut Ctx, at: &At, f: &RawFile) -> Option<FileStep> {
        let at = at.key("file");
        let path = PathBuf::from(&f.path);
        if !path.is_absolute() {
            cx.error(
                &at.key("path"),
                format!("path `{}` must be absolute", f.path),
            );
        }
        if f.set.is_empty() {
            cx.error(&at.key("set"), "set needs at least one KEY: value");
        }
        let format = f
            .format
            .unwrap_or(match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => FileFormat::Yaml,
                Some("json") => FileFormat::Json,
                _ => FileFormat::Env,
            });
        for (k, v) in &f.set {
            let kat = at.key("set").key(k);
            if format == FileFormat::Env && !is_identifier(k) {
                cx.error_key(
                    &kat,
                    format!("`{k}` is not a valid variable name for an env file"),
                );
            }
            if format != FileFormat::Env && (k.is_empty() || k.split('.').any(str::is_empty)) {
                cx.error_key(
                    &kat,
                    format!("`{k}` is not a key path (e.g. flags.v2.enabled)"),
                );
            }
            if v.0.contains(['\n', '\r']) {
                cx.error(&kat, "a value must fit on one line");
            }
        }
        Some(FileStep {
            path,
            set: f
                .set
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            format,
            timeout: positive(
                cx,
                &at.key("timeout"),
                f.timeout,
                Duration::from_secs(10),
                "timeout",
            ),
        })
    }

    fn describe(&self) -> String {
        let kv: Vec<String> = self.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "set {} in {} ({:?})",
            kv.join(" "),
            self.path.display(),
            self.format
        )
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn with_labels(&self, fill: super::Fill<'_>) -> Result<FileStep, String> {
        let path = self.path.to_str().map(fill).transpose()?;
        Ok(FileStep {
            path: path.map_or_else(|| self.path.clone(), PathBuf::from),
            set: self
                .set
                .iter()
                .map(|(k, v)| Ok((k.clone(), fill(v)?)))
                .collect::<Result<_, String>>()?,
            ..self.clone()
        })
    }

    async fn run(&self, _ctx: &StepContext) -> StepOutcome {
        let s = self.clone();
        match tokio::task::spawn_blocking(move || apply(&s.path, s.format, &s.set)).await {
            Ok(Ok(summary)) => StepOutcome {
                ok: true,
                summary,
                output: String::new(),
            },
            Ok(Err(e)) => StepOutcome::failed(format!("{}: {e}", self.path.display())),
            Err(e) => StepOutcome::failed(format!("{}: {e}", self.path.display())),
        }
    }
}

/// Sets the keys and writes the file atomically.
pub fn apply(
    path: &Path,
    format: FileFormat,
    set: &IndexMap<String, String>,
) -> Result<String, String> {
    let old = match fs::read_to_string(path) {
        Ok(s) => Some(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e.to_string()),
    };
    let new = match format {
        FileFormat::Env => set_env(old.as_deref().unwrap_or(""), set),
        FileFormat::Json => set_json(old.as_deref().unwrap_or("{}"), set)?,
        FileFormat::Yaml => set_yaml(old.as_deref().unwrap_or("{}"), set)?,
    };
    if old.as_deref() == Some(new.as_str()) {
        return Ok("already set".into());
    }
    write_atomic(path, new.as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!(
        "set {}",
        set.keys().cloned().collect::<Vec<_>>().join(", ")
    ))
}

fn quote_env(v: &str) -> String {
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./:,@%+".contains(c))
    {
        v.to_string()
    } else {
        format!(
            "\"{}\"",
            v.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('$', "\\$")
        )
    }
}

/// Replaces `KEY=...` lines (keeping an `export ` prefix), appends keys not
/// present, leaves every other line as it was.
pub fn set_env(text: &str, set: &IndexMap<String, String>) -> String {
    let mut done = vec![false; set.len()];
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let body = trimmed
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(trimmed);
        let hit = set.iter().enumerate().find(|(_, (k, _))| {
            body.strip_prefix(k.as_str())
                .is_some_and(|r| r.trim_start().starts_with('='))
        });
        match hit {
            Some((i, (k, v))) if !trimmed.starts_with('#') => {
                let indent = &line[..line.len() - trimmed.len()];
                let export = if trimmed.starts_with("export ") {
                    "export "
                } else {
                    ""
                };
                out.push_str(&format!("{indent}{export}{k}={}", quote_env(v)));
                if line.ends_with('\n') {
                    out.push('\n');
                }
                done[i] = true;
            }
            _ => out.push_str(line),
        }
    }
    for (i, (k, v)) in set.iter().enumerate() {
        if !done[i] {
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!("{k}={}\n", quote_env(v)));
        }
    }
    out
}

fn typed(v: &str) -> serde_json::Value {
    match v {
        "true" => serde_json::Value::Bool(true),
        "false" => serde_json::Value::Bool(false),
        _ => v
            .parse::<i64>()
            .map(Into::into)
            .or_else(|_| v.parse::<f64>().map(Into::into))
            .unwrap_or_else(|_| serde_json::Value::String(v.to_string())),
    }
}

fn set_path(root: &mut serde_json::Value, key: &str, v: &str) -> Result<(), String> {
    let mut cur = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        let obj = cur
            .as_object_mut()
            .ok_or_else(|| format!("`{}` is not a mapping", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            obj.insert(p.to_string(), typed(v));
            return Ok(());
        }
        cur = obj
            .entry(p.to_string())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
    }
    Ok(())
}

fn set_json(text: &str, set: &IndexMap<String, String>) -> Result<String, String> {
    let mut root: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    for (k, v) in set {
        set_path(&mut root, k, v)?;
    }
    let mut s = serde_json::to_string_pretty(&root).map_err(|e| e.to_string())?;
    s.push('\n');
    Ok(s)
}

fn set_yaml(text: &str, set: &IndexMap<String, String>) -> Result<String, String> {
    let mut root: serde_json::Value =
        serde_yaml::from_str(text).map_err(|e| format!("not YAML: {e}"))?;
    if root.is_null() {
        root = serde_json::Value::Object(Default::default());
    }
    for (k, v) in set {
        set_path(&mut root, k, v)?;
    }
    serde_yaml::to_string(&root).map_err(|e| e.to_string())
}

/// Temp file beside `path` (same mode and owner), fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.ripcord-{}", std::process::id()));
    let meta = fs::metadata(path).ok();
    let mode = meta
        .as_ref()
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some(m) = &meta {
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            // Keeping the owner needs privileges; without them the file
            // keeps ripcord's owner and the mode still applies.
            let _ = std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()));
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> IndexMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_files_keep_comments_order_and_export() {
        let text = "# importer settings\nA=1\nexport V2_ROLLOUT_PERCENT=25\n  # V2_ROLLOUT_PERCENT=99 (old)\nB=\"x y\"\n";
        let got = set_env(text, &map(&[("V2_ROLLOUT_PERCENT", "0"), ("NEW", "a b")]));
        assert_eq!(
            got,
            "# importer settings\nA=1\nexport V2_ROLLOUT_PERCENT=0\n  # V2_ROLLOUT_PERCENT=99 (old)\nB=\"x y\"\nNEW=\"a b\"\n"
        );
        assert_eq!(set_env("A=1", &map(&[("B", "2")])), "A=1\nB=2\n");
        // A key that is a prefix of another is not confused with it.
        assert_eq!(
            set_env("MODE_X=1\nMODE=2\n", &map(&[("MODE", "3")])),
            "MODE_X=1\nMODE=3\n"
        );
    }

    #[test]
    fn json_and_yaml_key_paths() {
        let got = set_json(
            "{\"flags\": {\"v2\": {\"enabled\": true}}, \"n\": 1}",
            &map(&[("flags.v2.enabled", "false")]),
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        assert_eq!(v["flags"]["v2"]["enabled"], serde_json::Value::Bool(false));
        assert_eq!(v["n"], 1);
        let got = set_yaml(
            "codec:\n  mode: refactored_primary\n",
            &map(&[("codec.mode", "legacy_only"), ("codec.percent", "0")]),
        )
        .unwrap();
        assert_eq!(got, "codec:\n  mode: legacy_only\n  percent: 0\n");
        assert!(set_json("{\"a\": 1}", &map(&[("a.b", "1")]))
            .unwrap_err()
            .contains("`a` is not a mapping"));
    }

    #[test]
    fn writes_keep_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("importer");
        fs::write(&p, "V2_ROLLOUT_PERCENT=25\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(
            apply(&p, FileFormat::Env, &map(&[("V2_ROLLOUT_PERCENT", "0")])).unwrap(),
            "set V2_ROLLOUT_PERCENT"
        );
        assert_eq!(fs::read_to_string(&p).unwrap(), "V2_ROLLOUT_PERCENT=0\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            apply(&p, FileFormat::Env, &map(&[("V2_ROLLOUT_PERCENT", "0")])).unwrap(),
            "already set"
        );
        // No temp file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
