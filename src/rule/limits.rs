//! What conditions and templates share before they are parsed: their
//! parsers recurse once per nesting level, so the depth is bounded first.

/// The deepest nesting of the brackets in `open`/`close` (matched by
/// position: `open[i]` closes with `close[i]`, counted alike).
pub fn bracket_depth(source: &str, open: &[char], close: &[char]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for c in source.chars() {
        if open.contains(&c) {
            depth += 1;
            deepest = deepest.max(depth);
        } else if close.contains(&c) {
            depth = depth.saturating_sub(1);
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    #[test]
    fn depth_of_nested_brackets() {
        assert_eq!(super::bracket_depth("((a) (b))", &['('], &[')']), 2);
        assert_eq!(
            super::bracket_depth("{[(x)]} )))", &['(', '[', '{'], &[')', ']', '}']),
            3
        );
        assert_eq!(super::bracket_depth("plain", &['('], &[')']), 0);
    }
}
