//! No input makes ripcord panic: every prefix of every shipped rule file and
//! test file, and byte-flipped copies, load to diagnostics or a rule set.

use ripcord::config::load::load_rule_sources;

fn shipped() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["rules", "rules/tests"] {
        let dir = crate::support::root().join(dir);
        for e in std::fs::read_dir(&dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "yaml") {
                out.push((
                    p.display().to_string(),
                    std::fs::read_to_string(&p).expect("read"),
                ));
            }
        }
    }
    out
}

#[test]
fn prefixes_of_every_shipped_file_load_without_panicking() {
    let files = shipped();
    assert!(files.len() >= 10);
    let mut loads = 0;
    for (name, text) in &files {
        let mut cut = 0;
        while cut < text.len() {
            if text.is_char_boundary(cut) {
                let loaded = load_rule_sources(&[(name.as_str(), &text[..cut])]);
                // Either it loads, or it says why.
                assert!(
                    loaded.value.is_some() || loaded.errors().next().is_some(),
                    "{name} cut at {cut}"
                );
                loads += 1;
            }
            cut += 13;
        }
    }
    assert!(loads > 1000, "{loads}");
}

#[test]
fn byte_flips_load_without_panicking() {
    let files = shipped();
    let replacements = [
        b'{', b'}', b'[', b':', b'"', b'\'', b'-', b'*', b'&', b'\t', b'\n', b'0', b'$', b'|',
    ];
    let mut loads = 0;
    for (name, text) in &files {
        let bytes = text.as_bytes();
        for (i, pos) in (0..bytes.len()).step_by(29).enumerate() {
            let mut b = bytes.to_vec();
            b[pos] = replacements[i % replacements.len()];
            let Ok(mutated) = String::from_utf8(b) else {
                continue;
            };
            let loaded = load_rule_sources(&[(name.as_str(), &mutated)]);
            assert!(loaded.value.is_some() || loaded.errors().next().is_some());
            loads += 1;
        }
    }
    assert!(loads > 300, "{loads}");
}
