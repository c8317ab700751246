//! Where each node of a YAML document starts.
//!
//! serde_yaml gives a location only for syntax errors and for the first type
//! error. Everything found later (a bad PromQL query, an unknown action, a
//! duplicate name in another file) must still be reported as `file:line:col`,
//! so the loader builds this index once per file from yaml-rust2's marked
//! event stream and looks paths up in it.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a path into a YAML document.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl Seg {
    pub fn key(k: impl Into<String>) -> Seg {
        Seg::Key(k.into())
    }
}

/// A 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, col: 1 };
}

/// Positions of keys and values by path.
#[derive(Debug, Default)]
pub struct PositionIndex {
    values: HashMap<Vec<Seg>, Pos>,
    keys: HashMap<Vec<Seg>, Pos>,
}

enum Frame {
    Map {
        path: Vec<Seg>,
        /// The key whose value comes next; `None` while a key is expected.
        key: Option<String>,
        /// No key of this mapping has been seen yet.
        first: bool,
    },
    Seq {
        path: Vec<Seg>,
        next: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    index: PositionIndex,
}

fn pos(mark: &Marker) -> Pos {
    Pos {
        line: mark.line().max(1),
        col: mark.col() + 1,
    }
}

impl Builder {
    /// The path of a node that starts now, or `None` if it is a mapping key.
    fn node_path(&mut self, ev: &Event, mark: &Marker) -> Option<Vec<Seg>> {
        match self.stack.last_mut() {
            None => Some(Vec::new()),
            Some(Frame::Seq { path, next }) => {
                let mut p = path.clone();
                p.push(Seg::Index(*next));
                *next += 1;
                Some(p)
            }
            Some(Frame::Map { path, key, first }) => match key.take() {
                Some(k) => {
                    let mut p = path.clone();
                    p.push(Seg::Key(k));
                    Some(p)
                }
                None => {
                    // A key. Complex keys (a mapping as a key) are not part of
                    // any ripcord format; they get a placeholder name.
                    let name = match ev {
                        Event::Scalar(v, ..) => v.clone(),
                        _ => "?".to_string(),
                    };
                    // A block mapping's start event is marked after its first
                    // key; the first key is where a reader sees it start.
                    if std::mem::take(first) {
                        self.index.values.insert(path.clone(), pos(mark));
                    }
                    let mut p = path.clone();
                    p.push(Seg::Key(name.clone()));
                    self.index.keys.entry(p).or_insert(pos(mark));
                    *key = Some(name);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(..) | Event::Alias(..) => {
                if let Some(p) = self.node_path(&ev, &mark) {
                    self.index.values.entry(p).or_insert(pos(&mark));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = match self.node_path(&ev, &mark) {
                    Some(p) => {
                        self.index.values.entry(p.clone()).or_insert(pos(&mark));
                        p
                    }
                    // A collection used as a key: index its insides under "?".
                    None => Vec::new(),
                };
                self.stack.push(if is_map {
                    Frame::Map {
                        path,
                        key: None,
                        first: true,
                    }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl PositionIndex {
    /// Indexes `text`. A document that yaml-rust2 cannot read yields what was
    /// indexed up to the problem; serde_yaml reports the syntax error itself.
    pub fn build(text: &str) -> PositionIndex {
        let mut b = Builder {
            stack: Vec::new(),
            index: PositionIndex::default(),
        };
        let _ = Parser::new_from_str(text).load(&mut b, false);
        b.index
    }

    /// Where the value at `path` starts.
    pub fn value(&self, path: &[Seg]) -> Option<Pos> {
        self.values.get(path).copied()
    }

    /// Where the key that names `path` starts.
    pub fn key(&self, path: &[Seg]) -> Option<Pos> {
        self.keys.get(path).copied()
    }

    /// The best position for a problem with the node at `path`: its value,
    /// else its key, else the nearest ancestor that is indexed.
    pub fn locate(&self, path: &[Seg]) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.value(p).or_else(|| self.key(p)) {
                return pos;
            }
            match p.split_last() {
                Some((_, parent)) => p = parent,
                None => return Pos::START,
            }
        }
    }

    /// The best position for a problem with a key (an unknown field, a
    /// duplicate name): the key itself, else as [`PositionIndex::locate`].
    pub fn locate_key(&self, path: &[Seg]) -> Pos {
        self.key(path).unwrap_or_else(|| self.locate(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_keys_and_items() {
        let text = "rules:\n  - name: a\n    for: 2m\n  - name: b\n    queries:\n      q: up\n";
        let idx = PositionIndex::build(text);
        let p = |s: &[Seg]| idx.locate(s);
        assert_eq!(
            p(&[Seg::key("rules"), Seg::Index(0)]),
            Pos { line: 2, col: 5 }
        );
        assert_eq!(
            p(&[Seg::key("rules"), Seg::Index(0), Seg::key("for")]),
            Pos { line: 3, col: 10 }
        );
        assert_eq!(
            idx.locate_key(&[Seg::key("rules"), Seg::Index(0), Seg::key("for")]),
            Pos { line: 3, col: 5 }
        );
        assert_eq!(
            p(&[
                Seg::key("rules"),
                Seg::Index(1),
                Seg::key("queries"),
                Seg::key("q")
            ]),
            Pos { line: 6, col: 10 }
        );
        // A missing node falls back to its nearest ancestor.
        assert_eq!(
            p(&[Seg::key("rules"), Seg::Index(1), Seg::key("nope")]),
            Pos { line: 4, col: 5 }
        );
    }

    #[test]
    fn flow_style_is_indexed_too() {
        let idx = PositionIndex::build("a: {b: [1, 2], c: x}\n");
        assert_eq!(
            idx.locate(&[Seg::key("a"), Seg::key("b"), Seg::Index(1)]),
            Pos { line: 1, col: 12 }
        );
        assert_eq!(
            idx.locate(&[Seg::key("a"), Seg::key("c")]),
            Pos { line: 1, col: 19 }
        );
    }
}
