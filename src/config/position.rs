//! Where each node of a YAML document starts.
//!
//! serde_yaml gives a location only for syntax errors and for the first type
//! error. Everything found later (a bad PromQL query, an unknown action, a
//! duplicate name in another file) must still be reported as `file:line:col`,
//! so the loader builds this index once per file from yaml-rust2's marked
//! event stream and looks paths up in it.

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

/// Positions of keys and values, as a tree shaped like the document: built
/// in one pass without copying paths, looked up by walking a path.
#[derive(Clone, Debug)]
pub struct PositionIndex {
    nodes: Vec<Node>,
}

#[derive(Clone, Debug, Default)]
struct Node {
    /// Where the value starts.
    value: Option<Pos>,
    /// Where the key naming it starts (mapping entries only).
    key: Option<Pos>,
    /// Mapping entries in document order (a handful each: a linear search
    /// beats hashing), or sequence items.
    keyed: Vec<(String, usize)>,
    items: Vec<usize>,
}

impl Default for PositionIndex {
    fn default() -> Self {
        PositionIndex {
            nodes: vec![Node::default()],
        }
    }
}

enum Frame {
    Map {
        node: usize,
        /// The entry whose value comes next; `None` while a key is expected.
        entry: Option<usize>,
        /// No key of this mapping has been seen yet.
        first: bool,
    },
    Seq {
        node: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    index: PositionIndex,
    /// The root has been placed (the first node is the root).
    rooted: bool,
}

fn pos(mark: &Marker) -> Pos {
    Pos {
        line: mark.line().max(1),
        col: mark.col() + 1,
    }
}

impl PositionIndex {
    fn push(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// The entry `name` of mapping `node`, created if new.
    fn entry(&mut self, node: usize, name: &str) -> (usize, bool) {
        if let Some((_, i)) = self.nodes[node].keyed.iter().find(|(k, _)| k == name) {
            return (*i, false);
        }
        let i = self.push();
        self.nodes[node].keyed.push((name.to_string(), i));
        (i, true)
    }
}

impl Builder {
    /// The node of a value that starts now, or `None` if it is a mapping key.
    fn node_for(&mut self, ev: &Event, mark: &Marker) -> Option<usize> {
        match self.stack.last_mut() {
            None if !self.rooted => {
                self.rooted = true;
                Some(0)
            }
            // A second document, or a collection used as a key: indexed
            // where nothing looks it up.
            None => Some(self.index.push()),
            Some(Frame::Seq { node }) => {
                let node = *node;
                let i = self.index.push();
                self.index.nodes[node].items.push(i);
                Some(i)
            }
            Some(Frame::Map { node, entry, first }) => match entry.take() {
                Some(i) => Some(i),
                None => {
                    // A key. Complex keys (a mapping as a key) are not part of
                    // any ripcord format; they get a placeholder name.
                    let name = match ev {
                        Event::Scalar(v, ..) => v.as_str(),
                        _ => "?",
                    };
                    let node = *node;
                    // A block mapping's start event is marked after its first
                    // key; the first key is where a reader sees it start.
                    if std::mem::take(first) {
                        self.index.nodes[node].value = Some(pos(mark));
                    }
                    let (i, new) = self.index.entry(node, name);
                    if new {
                        self.index.nodes[i].key = Some(pos(mark));
                    }
                    if let Some(Frame::Map { entry, .. }) = self.stack.last_mut() {
                        *entry = Some(i);
                    }
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
                if let Some(i) = self.node_for(&ev, &mark) {
                    self.index.nodes[i].value.get_or_insert(pos(&mark));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let node = match self.node_for(&ev, &mark) {
                    Some(i) => {
                        self.index.nodes[i].value.get_or_insert(pos(&mark));
                        i
                    }
                    // A collection used as a key: indexed where nothing
                    // looks it up.
                    None => self.index.push(),
                };
                self.stack.push(if is_map {
                    Frame::Map {
                        node,
                        entry: None,
                        first: true,
                    }
                } else {
                    Frame::Seq { node }
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
            rooted: false,
        };
        let _ = Parser::new_from_str(text).load(&mut b, false);
        b.index
    }

    fn find(&self, path: &[Seg]) -> Option<&Node> {
        let mut node = self.nodes.first()?;
        for seg in path {
            let i = match seg {
                Seg::Key(k) => node.keyed.iter().find(|(name, _)| name == k)?.1,
                Seg::Index(i) => *node.items.get(*i)?,
            };
            node = self.nodes.get(i)?;
        }
        Some(node)
    }

    /// Where the value at `path` starts.
    pub fn value(&self, path: &[Seg]) -> Option<Pos> {
        self.find(path)?.value
    }

    /// Where the key that names `path` starts.
    pub fn key(&self, path: &[Seg]) -> Option<Pos> {
        self.find(path)?.key
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

/// Where character `offset` of a scalar `value` stands in `text`, given
/// the position `start` of the scalar (its first character, or its `|` /
/// `>` indicator). Plain and block scalars map character for character
/// (a line break in the value is the end of a line in the file); a quoted
/// scalar maps on its first line. Anything it cannot follow is `start`.
pub fn offset_pos(text: &str, start: Pos, value: &str, offset: usize) -> Pos {
    let lines: Vec<&str> = text.lines().collect();
    let Some(first) = lines.get(start.line.saturating_sub(1)) else {
        return start;
    };
    let head: String = first.chars().skip(start.col.saturating_sub(1)).collect();
    let offset = value.chars().take(offset).count();
    match head.chars().next() {
        Some('|' | '>') => {
            // The content: the lines after the indicator, at the indent of
            // the first non-blank one.
            let body = &lines[start.line.min(lines.len())..];
            let Some(indent) = body
                .iter()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
            else {
                return start;
            };
            walk(body, start.line + 1, indent, offset).unwrap_or(start)
        }
        Some('\'' | '"') => {
            let on_line = head.chars().count().saturating_sub(1);
            if offset < on_line {
                Pos {
                    line: start.line,
                    col: start.col + 1 + offset,
                }
            } else {
                start
            }
        }
        // The index may point at a block scalar's first content line.
        Some(_) if start.line >= 2 && is_block_indicator(lines[start.line - 2]) => {
            walk(&lines[start.line - 1..], start.line, start.col - 1, offset).unwrap_or(start)
        }
        Some(_) => {
            let len = head.chars().count();
            if offset <= len {
                return Pos {
                    line: start.line,
                    col: start.col + offset,
                };
            }
            // A plain scalar folded over lines: one space per line break.
            let rest = &lines[start.line.min(lines.len())..];
            let indent = rest
                .first()
                .map(|l| l.len() - l.trim_start().len())
                .unwrap_or(0);
            walk(rest, start.line + 1, indent, offset - len - 1).unwrap_or(start)
        }
        None => start,
    }
}

/// Whether `line` ends with a block scalar's indicator (`key: |`, `- >-`).
fn is_block_indicator(line: &str) -> bool {
    let t = line.trim_end();
    ["|", "|-", "|+", ">", ">-", ">+"]
        .iter()
        .any(|i| t.ends_with(i) && t[..t.len() - i.len()].ends_with([' ', ':']))
}

/// Character `offset` of the text of `lines` (each less `indent` leading
/// bytes, joined by one character), as a position; `first` is the line
/// number of `lines[0]`.
fn walk(lines: &[&str], first: usize, indent: usize, mut offset: usize) -> Option<Pos> {
    for (k, l) in lines.iter().enumerate() {
        let content = l.get(indent.min(l.len())..).unwrap_or("");
        let n = content.chars().count();
        if offset < n {
            return Some(Pos {
                line: first + k,
                col: indent + 1 + offset,
            });
        }
        offset = offset.checked_sub(n + 1)?;
    }
    None
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

    #[test]
    fn offsets_inside_scalars_map_to_the_file() {
        let text = "rules:\n  - queries: {q: 'sum(rate(x[5m])) by'}\n    block: |\n      sum(x)\n        / bar{a\n    plain: up ==\n      == 1\n";
        // Quoted: after the quote.
        let q = offset_pos(text, Pos { line: 2, col: 18 }, "sum(rate(x[5m])) by", 17);
        assert_eq!((q.line, q.col), (2, 36));
        // A block scalar, from its indicator or its first content line.
        let v = "sum(x)\n  / bar{a\n";
        for start in [Pos { line: 3, col: 12 }, Pos { line: 4, col: 7 }] {
            // Offset 14 is the `{`: line 5, after six spaces of indent.
            let b = offset_pos(text, start, v, 14);
            assert_eq!((b.line, b.col), (5, 14), "from {start:?}");
        }
        // A plain scalar folded over two lines.
        let p = offset_pos(text, Pos { line: 6, col: 12 }, "up == == 1", 6);
        assert_eq!((p.line, p.col), (7, 7));
        // Nothing to follow: where the scalar starts.
        let s = Pos { line: 9, col: 1 };
        assert_eq!(offset_pos(text, s, "x", 0), s);
    }
}
