//! The journal under `state_dir`: an append-only file of JSON lines, each
//! synced before ripcord goes on.
//!
//! Before a step runs its intent is written; after, its result. Rule states
//! and the shared budget are written whenever they change. On start the
//! journal is replayed: states come back (open incidents, pending timers,
//! cooldowns, the budget), and a step with an intent but no result was
//! interrupted: it is reported, never run again. Replay ends with a
//! compaction that rewrites the file as one snapshot.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::actions::StepOutcome;
use crate::notify::Notification;
use crate::rule::{RuleState, Shared, Timestamp};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    /// A rule's new state, committed in one synced write with what came with
    /// it: the shared state if it changed (the budget), and the pages the
    /// change produced. A crash at any instant loses neither: replay pushes
    /// the pages again and the outbox drops those it already had.
    State {
        rule: String,
        state: Box<RuleState>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shared: Option<Shared>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pages: Vec<QueuedPage>,
    },
    Shared {
        shared: Shared,
    },
    StepIntent {
        at: Timestamp,
        rule: String,
        incident: String,
        action: String,
        step: usize,
        /// The step as it will run, secrets as written.
        describe: String,
        dry_run: bool,
    },
    StepResult {
        at: Timestamp,
        rule: String,
        incident: String,
        action: String,
        step: usize,
        outcome: StepOutcome,
    },
    /// Anything else worth keeping: transitions, no data, pages, blindness.
    Event {
        at: Timestamp,
        rule: Option<String>,
        kind: crate::rule::EventKind,
        text: String,
    },
}

/// One page to one receiver, as committed with the state change that made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedPage {
    /// Unique per incident, event and receiver: the outbox's dedup key.
    pub key: String,
    pub notifier: String,
    pub notification: Notification,
}

pub use crate::rule::global::Interrupted;

/// What the journal held.
#[derive(Debug, Default)]
pub struct Replayed {
    pub states: BTreeMap<String, RuleState>,
    pub shared: Option<Shared>,
    pub interrupted: Vec<Interrupted>,
    /// Every page the journal holds, in order: pushed to the outbox again
    /// (which ignores those it has) before the journal is compacted.
    pub pages: Vec<QueuedPage>,
    /// Entries read, and lines in the middle that could not be read.
    pub entries: usize,
    pub skipped: usize,
    /// The last line was cut short (a crash mid-write): dropped.
    pub torn: bool,
    /// Rules whose latest state line could not be read.
    pub uncertain: std::collections::BTreeSet<String>,
    /// States holding a time outside years 0–9999 (kept; they never panic).
    pub out_of_range: usize,
}

pub const FILE_NAME: &str = "journal.jsonl";
/// Past this many appends since the last snapshot, the owner compacts.
pub const COMPACT_AFTER: usize = 10_000;

/// What a journal write must get past first when ripcord runs in a group
/// (`ha:`): the leader's transaction in etcd. A write the fence refuses is
/// not written, and the writer treats it as failed (no step runs).
pub trait Fence: Send + Sync {
    fn commit(&self, e: &Entry) -> Result<(), String>;
    /// Whether this instance may act right now (checked again just before
    /// a step starts, after its intent is committed).
    fn may_act(&self) -> Result<(), String>;
}

pub struct Journal {
    /// `None` on a single instance.
    pub fence: Option<std::sync::Arc<dyn Fence>>,
    path: PathBuf,
    file: File,
    pub appended: usize,
    /// The file's length after the last good append: a failed write is cut
    /// back to it, so a half-written line never runs into the next one.
    len: u64,
    /// Why the last append failed, until one succeeds again.
    pub failing: Option<String>,
}

use crate::fsio::sync_dir;

impl Journal {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Reads the journal in `dir` (a missing one is empty). Any bytes are
    /// survived: a torn last line (UTF-8 or not) is dropped, an unreadable
    /// line in the middle is skipped and counted, and a rule whose state
    /// line could not be read is named in [`Replayed::uncertain`], so the
    /// caller can keep it on the safe side.
    pub fn replay(dir: &Path) -> std::io::Result<Replayed> {
        let mut r = Replayed::default();
        let file = match File::open(Self::path(dir)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(r),
            Err(e) => return Err(e),
        };
        let mut open: BTreeMap<(String, usize), Interrupted> = BTreeMap::new();
        let mut lines = BufReader::new(file).split(b'\n').peekable();
        while let Some(line) = lines.next() {
            let line = line?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let entry = match serde_json::from_slice::<Entry>(&line) {
                Ok(e) => e,
                Err(_) => {
                    if lines.peek().is_none() {
                        r.torn = true;
                    } else {
                        r.skipped += 1;
                        if let Some(rule) = state_line_rule(&line) {
                            r.uncertain.insert(rule);
                        }
                    }
                    continue;
                }
            };
            r.entries += 1;
            match entry {
                Entry::State {
                    rule,
                    state,
                    shared,
                    pages,
                } => {
                    if !state.times_in_range() {
                        r.out_of_range += 1;
                    }
                    r.uncertain.remove(&rule);
                    r.states.insert(rule, *state);
                    if let Some(shared) = shared {
                        r.shared = Some(shared);
                    }
                    r.pages.extend(pages);
                }
                Entry::Shared { shared } => r.shared = Some(shared),
                Entry::StepIntent {
                    rule,
                    incident,
                    action,
                    step,
                    describe,
                    ..
                } => {
                    open.insert(
                        (format!("{incident}/{action}"), step),
                        Interrupted {
                            rule,
                            incident,
                            action,
                            step,
                            describe,
                        },
                    );
                }
                Entry::StepResult {
                    incident,
                    action,
                    step,
                    ..
                } => {
                    open.remove(&(format!("{incident}/{action}"), step));
                }
                Entry::Event { .. } => {}
            }
        }
        r.interrupted = open.into_values().collect();
        Ok(r)
    }

    /// Opens `dir`'s journal for appending, after rewriting it as `snapshot`
    /// (temp file, fsync, rename, fsync dir). Until the rename the old
    /// journal is untouched, so a crash or an error at any point leaves
    /// either the old journal or the complete new one.
    pub fn open_compacted(dir: &Path, snapshot: &[Entry]) -> std::io::Result<Journal> {
        fs::create_dir_all(dir)?;
        let path = Self::path(dir);
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            for e in snapshot {
                let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
                line.push(b'\n');
                f.write_all(&line)?;
            }
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Journal {
            fence: None,
            path,
            file,
            appended: 0,
            len,
            failing: None,
        })
    }

    /// Appends one entry and syncs it to disk before returning.
    pub fn append(&mut self, e: &Entry) -> std::io::Result<()> {
        if let Some(f) = &self.fence {
            f.commit(e).map_err(std::io::Error::other)?;
        }
        let mut line = Vec::new();
        if self.failing.is_some() {
            // Whatever a failed write left is ended before this one starts.
            line.push(b'\n');
        }
        serde_json::to_writer(&mut line, e).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let written = self
            .file
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += line.len() as u64;
                self.appended += 1;
                self.failing = None;
                Ok(())
            }
            Err(err) => {
                let _ = self.file.set_len(self.len);
                self.failing = Some(crate::fsio::describe(&err));
                Err(err)
            }
        }
    }

    /// Ok unless a fence says this instance may not act now.
    pub fn may_act(&self) -> Result<(), String> {
        self.fence.as_ref().map_or(Ok(()), |f| f.may_act())
    }

    pub fn file_path(&self) -> &Path {
        &self.path
    }
}

/// The rule an unreadable line was a state of, if its bytes still say so.
fn state_line_rule(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    if !text.contains("\"type\":\"state\"") {
        return None;
    }
    let start = text.find("\"rule\":\"")? + "\"rule\":\"".len();
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_string()).filter(|r| !r.is_empty())
}

/// Reads every entry (for timelines and tests); unreadable lines are skipped.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let bytes = match fs::read(Journal::path(dir)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_without_a_result_is_interrupted_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open_compacted(dir.path(), &[]).unwrap();
        let intent = |step| Entry::StepIntent {
            at: Timestamp(1),
            rule: "r".into(),
            incident: "r-1".into(),
            action: "a".into(),
            step,
            describe: "exec".into(),
            dry_run: false,
        };
        j.append(&intent(0)).unwrap();
        j.append(&Entry::StepResult {
            at: Timestamp(2),
            rule: "r".into(),
            incident: "r-1".into(),
            action: "a".into(),
            step: 0,
            outcome: StepOutcome::failed("x"),
        })
        .unwrap();
        j.append(&intent(1)).unwrap();
        j.append(&Entry::State {
            rule: "r".into(),
            state: Box::default(),
            shared: None,
            pages: Vec::new(),
        })
        .unwrap();
        drop(j);
        // A crash in the middle of a write leaves half a line.
        let mut f = OpenOptions::new()
            .append(true)
            .open(Journal::path(dir.path()))
            .unwrap();
        f.write_all(b"{\"type\":\"state\",\"ru").unwrap();
        let r = Journal::replay(dir.path()).unwrap();
        assert_eq!(r.entries, 4);
        assert!(r.torn);
        assert_eq!(r.skipped, 0);
        assert_eq!(r.interrupted.len(), 1);
        assert_eq!(r.interrupted[0].step, 1);
        assert!(r.states.contains_key("r"));

        // Compaction keeps only the snapshot.
        let snap = vec![Entry::State {
            rule: "r".into(),
            state: Box::default(),
            shared: None,
            pages: Vec::new(),
        }];
        Journal::open_compacted(dir.path(), &snap).unwrap();
        let r = Journal::replay(dir.path()).unwrap();
        assert_eq!((r.entries, r.skipped, r.interrupted.len()), (1, 0, 0));
    }

    /// Every phase event holds "→": a crash can cut a line inside it.
    #[test]
    fn a_line_torn_inside_a_character_or_any_bad_bytes_are_survived() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open_compacted(dir.path(), &[]).unwrap();
        let state = |rule: &str| Entry::State {
            rule: rule.into(),
            state: Box::default(),
            shared: None,
            pages: Vec::new(),
        };
        j.append(&state("a")).unwrap();
        j.append(&Entry::Event {
            at: Timestamp(1),
            rule: Some("a".into()),
            kind: crate::rule::EventKind::Phase,
            text: "phase acting → verifying".into(),
        })
        .unwrap();
        drop(j);
        let path = Journal::path(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        // A state line of rule b damaged in the middle, then a line torn
        // inside the "→" (its first byte only).
        let mut middle = b"{\"type\":\"state\",\"rule\":\"b\",\"state\":\xff\xfe}\n".to_vec();
        let good = serde_json::to_vec(&state("c")).unwrap();
        middle.extend_from_slice(&good);
        middle.push(b'\n');
        let torn = "{\"type\":\"event\",\"text\":\"phase a →".as_bytes();
        bytes.extend_from_slice(&middle);
        bytes.extend_from_slice(&torn[..torn.len() - 2]);
        fs::write(&path, &bytes).unwrap();
        let r = Journal::replay(dir.path()).unwrap();
        assert_eq!((r.entries, r.skipped, r.torn), (3, 1, true));
        assert!(r.uncertain.contains("b"), "{:?}", r.uncertain);
        assert!(r.states.contains_key("a") && r.states.contains_key("c"));
        assert_eq!(read_all(dir.path()).unwrap().len(), 3);
    }
}
