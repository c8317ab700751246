//! Secret references: `${env:NAME}`, `${file:PATH}`, `${credential:NAME}`.
//!
//! A string that may carry a secret is a [`SecretString`]: its references are
//! checked when the file is loaded (so `ripcord check` catches a typo) and
//! resolved only when the value is about to be used. Its `Debug` and `Display`
//! never show the resolved value, and the resolved [`Secret`] prints as `***`.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

/// Where a reference's value comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
    /// A systemd credential: `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Ref(SecretRef),
}

/// A configured string that may contain secret references.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString {
    raw: String,
    parts: Vec<Part>,
}

/// A resolved value. Printing it never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A value that is not secret but goes where secrets go (a URL).
    pub fn plain(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value, for its one destination (a header, a URL, a request body).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a reference could not be resolved. Names the reference, never a value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("credential {0}: CREDENTIALS_DIRECTORY is not set (is LoadCredential= in the unit?)")]
    NoCredentialsDirectory(String),
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

fn parse_ref(inner: &str) -> Result<SecretRef, String> {
    let (kind, arg) = inner.split_once(':').ok_or_else(|| {
        format!("malformed secret reference `${{{inner}}}`: expected ${{env:NAME}}, ${{file:PATH}} or ${{credential:NAME}}")
    })?;
    match kind {
        "env" if valid_name(arg) && !arg.contains(['.', '-']) => Ok(SecretRef::Env(arg.to_string())),
        "env" => Err(format!(
            "malformed secret reference `${{{inner}}}`: `{arg}` is not an environment variable name"
        )),
        "file" if arg.starts_with('/') => Ok(SecretRef::File(PathBuf::from(arg))),
        "file" => Err(format!(
            "malformed secret reference `${{{inner}}}`: the file path must be absolute"
        )),
        "credential" if valid_name(arg) => Ok(SecretRef::Credential(arg.to_string())),
        "credential" => Err(format!(
            "malformed secret reference `${{{inner}}}`: `{arg}` is not a credential name"
        )),
        other => Err(format!(
            "malformed secret reference `${{{inner}}}`: unknown source `{other}` (expected env, file or credential)"
        )),
    }
}

impl SecretString {
    /// Parses the references in `raw`. `$$` stands for a literal `$`.
    pub fn parse(raw: &str) -> Result<SecretString, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = raw;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                text.push('$');
                rest = stripped;
            } else if let Some(body) = after.strip_prefix('{') {
                let end = body.find('}').ok_or_else(|| {
                    "malformed secret reference: `${` without a closing `}`".to_string()
                })?;
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Ref(parse_ref(&body[..end])?));
                rest = &body[end + 1..];
            } else {
                text.push('$');
                rest = after;
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(SecretString {
            raw: raw.to_string(),
            parts,
        })
    }

    /// True if any part comes from a reference.
    pub fn has_refs(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Ref(_)))
    }

    /// The text as written, references unresolved: safe to print.
    pub fn as_written(&self) -> &str {
        &self.raw
    }

    /// Resolves every reference. Trailing newlines of files and credentials
    /// are trimmed (editors add one).
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Ref(SecretRef::Env(name)) => out.push_str(
                    &std::env::var(name).map_err(|_| SecretError::EnvUnset(name.clone()))?,
                ),
                Part::Ref(SecretRef::File(path)) => out.push_str(read_trimmed(path)?.as_str()),
                Part::Ref(SecretRef::Credential(name)) => {
                    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                        .ok_or_else(|| SecretError::NoCredentialsDirectory(name.clone()))?;
                    out.push_str(&read_trimmed(&PathBuf::from(dir).join(name))?)
                }
            }
        }
        Ok(Secret(out))
    }
}

/// The longest secret file read: a key, a token or a URL is far shorter;
/// a path that points at something huge (a log, a device) is refused.
const MAX_SECRET_FILE: u64 = 64 * 1024;

fn read_trimmed(path: &PathBuf) -> Result<String, SecretError> {
    use std::io::Read;
    let err = |reason: String| SecretError::File {
        path: path.clone(),
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.kind().to_string()))?;
    let mut bytes = Vec::new();
    f.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.kind().to_string()))?;
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(err(format!("longer than {MAX_SECRET_FILE} bytes")));
    }
    let s = String::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.has_refs() {
            write!(f, "{:?}", self.raw)
        } else {
            // Written inline: it may be a secret itself.
            f.write_str("\"***\"")
        }
    }
}

impl<'de> Deserialize<'de> for SecretString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = super::scalar::Scalar::deserialize(d)?;
        SecretString::parse(&s.0).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves_env_and_file() {
        std::env::set_var("RIPCORD_TEST_SECRET_A", "s3cret");
        let s = SecretString::parse("Bearer ${env:RIPCORD_TEST_SECRET_A}").unwrap();
        assert!(s.has_refs());
        assert_eq!(s.resolve().unwrap().expose(), "Bearer s3cret");
        assert_eq!(format!("{:?}", s.resolve().unwrap()), "***");

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "abc\n").unwrap();
        let s = SecretString::parse(&format!("${{file:{}}}", f.display())).unwrap();
        assert_eq!(s.resolve().unwrap().expose(), "abc");
    }

    #[test]
    fn rejects_malformed_references() {
        for bad in [
            "${env:}",
            "${env:1A}",
            "${vault:x}",
            "${file:relative/path}",
            "${env:A",
            "${nocolon}",
        ] {
            let err = SecretString::parse(bad).unwrap_err();
            assert!(err.contains("malformed secret reference"), "{bad}: {err}");
        }
    }

    #[test]
    fn dollars_without_braces_are_text() {
        let s = SecretString::parse("a$b $$ c").unwrap();
        assert!(!s.has_refs());
        assert_eq!(s.resolve().unwrap().expose(), "a$b $ c");
    }

    #[test]
    fn unset_env_names_the_variable_not_a_value() {
        let s = SecretString::parse("${env:RIPCORD_TEST_DEFINITELY_UNSET}").unwrap();
        assert_eq!(
            s.resolve().unwrap_err().to_string(),
            "environment variable RIPCORD_TEST_DEFINITELY_UNSET is not set"
        );
    }

    #[test]
    fn inline_values_are_not_printed() {
        let s = SecretString::parse("https://hooks.slack.example/T000/B000/XXXX").unwrap();
        assert_eq!(format!("{s:?}"), "\"***\"");
    }

    #[test]
    fn a_huge_secret_file_is_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'x'; 70 * 1024]).unwrap();
        let s = SecretString::parse(&format!("${{file:{}}}", p.display())).unwrap();
        let e = s.resolve().unwrap_err().to_string();
        assert!(e.contains("longer than 65536 bytes"), "{e}");
    }
}
