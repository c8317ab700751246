//! An instance's labels in a step: `{{ labels.NAME }}` in the step's string
//! fields (exec argv elements, kubectl resources, containers, images,
//! namespaces and contexts, systemctl units, file paths and values, http
//! URLs and bodies) is replaced by the instance's value of that label.
//!
//! Label values come from Prometheus and are untrusted. A value is used
//! only if it is made of letters, digits and `._:/@-` and does not start
//! with `-` (no option, no shell word, no path traversal out of a value, no
//! secret reference), and matches the action's `label_pattern` too when it
//! has one: a pattern can only make this stricter. Anything else refuses
//! the step; nothing runs. A value is always one string in one field: never
//! a shell, never a second argv element. Only the placeholder is
//! recognised: any other `{{` or `}}` in a step is an error at load.

use std::collections::BTreeMap;
use std::sync::Arc;

/// What a label value may hold, in words, for errors and docs.
pub const SAFE: &str = "letters, digits and `._:/@-`, not starting with `-`";

/// A label value ripcord puts into a step.
pub fn safe_value(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && !v.starts_with('-')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '@' | '-'))
        && !v.split('/').any(|part| part == "..")
}

/// One piece of a step string: text, or a label's value.
enum Piece<'a> {
    Text(&'a str),
    Label(&'a str),
}

/// Splits `s` into text and `{{ labels.NAME }}` placeholders.
fn pieces(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("{{") {
        if rest[..i].contains("}}") {
            return Err(stray(s));
        }
        out.push(Piece::Text(&rest[..i]));
        let after = &rest[i + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!("`{s}`: `{{{{` without `}}}}`; a step takes only `{{{{ labels.NAME }}}}`")
        })?;
        let inner = after[..end].trim();
        let name = inner
            .strip_prefix("labels.")
            .filter(|n| {
                n.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                    && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .ok_or_else(|| {
                format!("`{s}`: `{{{{ {inner} }}}}` is not `{{{{ labels.NAME }}}}`, the only substitution a step takes")
            })?;
        out.push(Piece::Label(name));
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err(stray(s));
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

fn stray(s: &str) -> String {
    format!("`{s}`: `}}}}` without `{{{{`; a step takes only `{{{{ labels.NAME }}}}`")
}

/// `s` with each placeholder as `x`: the shape a field's own checks see
/// at load (a placeholder stands for one safe value).
pub fn blank(s: &str) -> String {
    match pieces(s) {
        Ok(ps) => ps
            .into_iter()
            .map(|p| match p {
                Piece::Text(t) => t,
                Piece::Label(_) => "x",
            })
            .collect(),
        Err(_) => s.to_string(),
    }
}

/// Checks the placeholders of `s` (at load): the labels it names.
pub fn names(s: &str) -> Result<Vec<String>, String> {
    Ok(pieces(s)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Label(n) => Some(n.to_string()),
            Piece::Text(_) => None,
        })
        .collect())
}

/// The labels of one instance, and what their values must match.
pub struct Filler<'a> {
    pub labels: &'a BTreeMap<String, String>,
    /// The action's `label_pattern`, if it has one.
    pub pattern: Option<&'a regex::Regex>,
}

impl Filler<'_> {
    /// `s` with each placeholder replaced, or why the step must not run.
    pub fn fill(&self, s: &str) -> Result<String, String> {
        let mut out = String::with_capacity(s.len());
        for p in pieces(s)? {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Label(name) => {
                    let v = self.labels.get(name).ok_or_else(|| {
                        format!("the step uses label `{name}`, which this instance does not have (its labels: {})", self.names())
                    })?;
                    if !safe_value(v) {
                        return Err(format!(
                            "label `{name}` has the value {v:?}, which is not safe to put into a step ({SAFE}): the step was refused and nothing ran"
                        ));
                    }
                    if let Some(re) = self.pattern {
                        if !re.is_match(v) {
                            return Err(format!(
                                "label `{name}` has the value {v:?}, which does not match the action's label_pattern `{}`: the step was refused and nothing ran",
                                re.as_str()
                            ));
                        }
                    }
                    out.push_str(v);
                }
            }
        }
        Ok(out)
    }

    fn names(&self) -> String {
        if self.labels.is_empty() {
            "none".into()
        } else {
            self.labels.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

/// `RIPCORD_LABEL_<NAME>` for each label: how scripts get them, whatever
/// their value (the environment is not a shell).
pub fn env(labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| {
            (
                format!("RIPCORD_LABEL_{}", k.to_ascii_uppercase()),
                v.clone(),
            )
        })
        .collect()
}

/// `action` with the instance's labels in its steps (an action without
/// placeholders comes back as it is).
pub fn resolve(
    action: &Arc<crate::config::Action>,
    labels: &BTreeMap<String, String>,
) -> Result<Arc<crate::config::Action>, String> {
    let filler = Filler {
        labels,
        pattern: action.label_pattern.as_ref(),
    };
    let fill = |s: &str| filler.fill(s);
    let steps = action
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.with_labels(&fill)
                .map_err(|e| format!("step {} ({}): {e}", i + 1, s.kind()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(crate::config::Action {
        steps,
        ..(**action).clone()
    }))
}

/// What makes two runs the same: each resolved step as it would run.
pub fn steps_digest(action: &crate::config::Action) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for s in &action.steps {
        h.update(s.describe().as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_with_safe_values_only() {
        let labels: BTreeMap<String, String> = [
            ("domain", "chat"),
            ("pod", "chat-7d9f/x"),
            ("bad", "chat; rm -rf /"),
            ("space", "a b"),
            ("dash", "-rf"),
            ("up", "../etc"),
            ("secret", "${env:TOKEN}"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let f = Filler {
            labels: &labels,
            pattern: None,
        };
        assert_eq!(
            f.fill("flags/grpc_{{ labels.domain }}").unwrap(),
            "flags/grpc_chat"
        );
        assert_eq!(f.fill("{{labels.pod}}").unwrap(), "chat-7d9f/x");
        assert_eq!(f.fill("no placeholder").unwrap(), "no placeholder");
        for refused in ["bad", "space", "dash", "up", "secret"] {
            let e = f
                .fill(&format!("x {{{{ labels.{refused} }}}}"))
                .unwrap_err();
            assert!(
                e.contains("not safe") && e.contains("nothing ran"),
                "{refused}: {e}"
            );
        }
        let e = f.fill("{{ labels.missing }}").unwrap_err();
        assert!(e.contains("does not have") && e.contains("domain"), "{e}");
        let strict = regex::Regex::new("^[a-z]+$").unwrap();
        let g = Filler {
            labels: &labels,
            pattern: Some(&strict),
        };
        assert_eq!(g.fill("{{ labels.domain }}").unwrap(), "chat");
        assert!(g
            .fill("{{ labels.pod }}")
            .unwrap_err()
            .contains("label_pattern"));
    }

    #[test]
    fn anything_but_the_placeholder_is_an_error_at_load() {
        assert_eq!(
            names("a {{ labels.x }} b {{labels.y_2}}").unwrap(),
            ["x", "y_2"]
        );
        assert!(
            names("{\"enabled\": false}").unwrap().is_empty(),
            "JSON braces are text"
        );
        for bad in [
            "{{ rule }}",
            "{{ labels.x | upper }}",
            "{{ labels.x",
            "x }}",
            "{{ labels.1x }}",
            "{% if x %}",
        ] {
            let r = names(bad);
            if bad.starts_with("{%") {
                assert!(r.is_ok(), "only double braces are ripcord's: {bad}");
            } else {
                assert!(r.is_err(), "{bad}");
            }
        }
    }
}
