//! The incident archive under `state_dir/incidents/`: before the journal is
//! compacted (at start, and when it has grown), each incident's entries —
//! the state lines that hold it and the pages they carry, its step intents
//! and results, and the events of its rule while it was the rule's latest
//! incident — are appended to `incidents/ID.jsonl`, so an incident's
//! timeline outlives the compaction that drops it from the journal.
//!
//! It is history for people, not state: replay never reads it, and a
//! failed archive write is logged and does not stop the compaction. It is
//! bounded: the newest [`KEEP`] incidents, each file at most
//! [`MAX_FILE_BYTES`]. A crash between an archive write and the compaction
//! writes the same entries again; readers drop repeated lines.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::journal::Entry;
use crate::rule::Status;

pub const DIR: &str = "incidents";
/// Incidents kept; older files are removed, oldest first.
pub const KEEP: usize = 1_000;
/// One incident's file stops growing here (an incident that loops for
/// weeks keeps its beginning; the journal holds its end).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(DIR)
}

/// Whether `id` may name a file: what ripcord's ids are made of (a rule
/// name and a time), and nothing a damaged journal could smuggle in.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn file(state_dir: &Path, id: &str) -> Option<PathBuf> {
    safe_id(id).then(|| dir(state_dir).join(format!("{id}.jsonl")))
}

/// Each incident's entries among `entries` (a journal, in order).
pub fn split(entries: &[Entry]) -> BTreeMap<String, Vec<&Entry>> {
    let mut out: BTreeMap<String, Vec<&Entry>> = BTreeMap::new();
    // The latest incident of each rule, as the state lines say.
    let mut latest: BTreeMap<&str, String> = BTreeMap::new();
    for e in entries {
        match e {
            Entry::State {
                rule, state, pages, ..
            } => {
                let held = match &state.status {
                    Status::Open(i) => Some(i.id.clone()),
                    Status::Cooldown { incident, .. } => Some(incident.clone()),
                    _ => None,
                };
                let mut ids: Vec<String> = held.iter().cloned().collect();
                for p in pages {
                    if let Some(i) = &p.notification.incident {
                        if !ids.contains(i) {
                            ids.push(i.clone());
                        }
                    }
                }
                if let Some(id) = held {
                    latest.insert(rule.as_str(), id);
                }
                for id in ids {
                    out.entry(id).or_default().push(e);
                }
            }
            Entry::StepIntent { incident, .. } | Entry::StepResult { incident, .. } => {
                out.entry(incident.clone()).or_default().push(e);
            }
            Entry::Event {
                rule: Some(rule), ..
            } => {
                if let Some(id) = latest.get(rule.as_str()) {
                    out.entry(id.clone()).or_default().push(e);
                }
            }
            Entry::Event { rule: None, .. } | Entry::Shared { .. } => {}
        }
    }
    out
}

/// Appends each incident's entries of `entries` to its file, then keeps the
/// newest [`KEEP`] files. Returns how many incidents were written.
pub fn store(state_dir: &Path, entries: &[Entry]) -> std::io::Result<usize> {
    let by_incident = split(entries);
    if by_incident.is_empty() {
        return Ok(0);
    }
    let d = dir(state_dir);
    fs::create_dir_all(&d)?;
    let mut written = 0;
    for (id, es) in &by_incident {
        let Some(path) = file(state_dir, id) else {
            continue;
        };
        let have = fs::metadata(&path).map_or(0, |m| m.len());
        let mut buf = Vec::new();
        for e in es {
            serde_json::to_writer(&mut buf, e).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        if have + buf.len() as u64 > MAX_FILE_BYTES {
            continue;
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        written += 1;
    }
    crate::fsio::sync_dir(&d)?;
    prune(&d, KEEP)?;
    Ok(written)
}

/// Removes all but the `keep` most recently written files of `d`.
fn prune(d: &Path, keep: usize) -> std::io::Result<()> {
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(d)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return Ok(());
    }
    files.sort();
    for (_, p) in &files[..files.len() - keep] {
        fs::remove_file(p)?;
    }
    Ok(())
}

/// The archived entries of incident `id`, repeated lines once; none if it
/// has no file.
pub fn read(state_dir: &Path, id: &str) -> std::io::Result<Vec<Entry>> {
    let Some(path) = file(state_dir, id) else {
        return Ok(Vec::new());
    };
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut seen = HashSet::new();
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty() && seen.insert(*l))
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

/// The archived incidents of `rule` (ids `RULE-YYYYMMDDTHHMMSSZ`).
pub fn of_rule(state_dir: &Path, rule: &str) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir(state_dir)) else {
        return Vec::new();
    };
    let prefix = format!("{rule}-");
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".jsonl")?.to_string();
            let time = id.strip_prefix(&prefix)?;
            let is_time = time.len() == 16
                && time.ends_with('Z')
                && time.as_bytes()[8] == b'T'
                && time
                    .bytes()
                    .enumerate()
                    .all(|(i, b)| i == 8 || i == 15 || b.is_ascii_digit());
            is_time.then_some(id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::{EventKind, Incident, Phase, RuleState, Timestamp};

    fn open(rule: &str, id: &str) -> Entry {
        Entry::State {
            rule: rule.into(),
            state: Box::new(RuleState {
                status: Status::Open(Box::new(Incident {
                    id: id.into(),
                    opened_at: Timestamp(0),
                    dry_run: false,
                    drill: false,
                    phase: Phase::Verifying { deadline: None },
                    done: Vec::new(),
                    veto: None,
                    values: Default::default(),
                })),
                ..RuleState::default()
            }),
            shared: None,
            pages: Vec::new(),
        }
    }

    fn event(rule: &str, text: &str) -> Entry {
        Entry::Event {
            at: Timestamp(0),
            rule: Some(rule.into()),
            kind: EventKind::Record,
            text: text.into(),
        }
    }

    #[test]
    fn entries_go_to_their_incident_and_survive_a_second_store() {
        let entries = vec![
            event("a", "before any incident"),
            open("a", "a-20261204T000000Z"),
            event("a", "ok → firing"),
            open("b", "b-20261204T000001Z"),
            event("b", "b's"),
            event("a", "a's again"),
            open("a", "a-20261204T000100Z"),
            event("a", "second"),
        ];
        let split = split(&entries);
        assert_eq!(split.len(), 3);
        assert_eq!(
            split["a-20261204T000000Z"].len(),
            3,
            "its state, and two events"
        );
        assert_eq!(split["a-20261204T000100Z"].len(), 2);
        assert_eq!(split["b-20261204T000001Z"].len(), 2);

        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(store(dir.path(), &entries).expect("store"), 3);
        // A crash before the compaction: the same entries again.
        store(dir.path(), &entries).expect("store again");
        let back = read(dir.path(), "a-20261204T000000Z").expect("read");
        assert_eq!(back.len(), 3, "repeated lines are read once");
        let mut ids = of_rule(dir.path(), "a");
        ids.sort();
        assert_eq!(ids, ["a-20261204T000000Z", "a-20261204T000100Z"]);
        assert!(of_rule(dir.path(), "a-2026").is_empty());
        assert!(read(dir.path(), "../etc/passwd")
            .expect("refused")
            .is_empty());
    }

    #[test]
    fn only_the_newest_files_are_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let t0 = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        for i in 0..5u64 {
            let p = dir.path().join(format!("r-{i}.jsonl"));
            fs::write(&p, "x").expect("write");
            let f = fs::File::options().write(true).open(&p).expect("open");
            f.set_modified(t0 + std::time::Duration::from_secs(i))
                .expect("set mtime");
        }
        prune(dir.path(), 2).expect("prune");
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["r-3.jsonl", "r-4.jsonl"]);
    }
}
