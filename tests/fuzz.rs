//! A seeded mutation fuzzer over everything ripcord reads from users and
//! from disk: rule files, summary templates, conditions, journal and outbox
//! bytes. Each input must give an answer (a value or a clear error) without
//! a panic or an abort, within a hang guard; every rule-file error names a
//! line and column.
//!
//! CI runs a bounded number of inputs per corpus (a minute or so in all);
//! `RIPCORD_FUZZ_ITERATIONS=100000 cargo test --test integration fuzz::`
//! runs longer, and `RIPCORD_FUZZ_SEED` replays a run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use ripcord::config::load::load_rule_sources;
use ripcord::rule::condition::Condition;
use ripcord::rule::template::Template;

/// Far beyond any legitimate input's cost; only a hang trips it.
const HANG_GUARD: Duration = Duration::from_secs(10);

fn iterations(default: usize) -> usize {
    std::env::var("RIPCORD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let seed = std::env::var("RIPCORD_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_1234_abcd_ef01u64);
        Rng((seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Pieces that tend to find trouble: YAML structure, PromQL, evalexpr and
/// minijinja syntax, huge numbers and durations, odd bytes.
const TOKENS: &[&str] = &[
    "\n",
    "  ",
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "&a",
    "*a",
    "<<: *a",
    "!!binary",
    "#",
    "---",
    "...",
    "|",
    ">",
    "~",
    "null",
    "true",
    "1e308",
    "-1",
    "0",
    "18446744073709551616",
    "10000y",
    "9999999999999s",
    "0s",
    "1ms",
    "sum(",
    ")",
    "rate(x[5m])",
    "by (pod)",
    "offset 1d",
    "{{",
    "}}",
    "{%",
    "%}",
    "for x in",
    "endfor",
    "'x' * 100000",
    "| percent",
    "(",
    "&&",
    "||",
    "!",
    "==",
    "/ 0",
    "% 0",
    "x",
    "→",
    "\u{0}",
    "\u{feff}",
    "\u{fffd}",
    "é",
    "${env:NOPE}",
    "${file:/nonexistent}",
    "${",
    "every: 1s",
    "cron: \"0 0 0 30 2 * *\"",
    "for: 1h",
    "no_data: breach",
    "approval: {timeout: 5m}",
    "verify: {within: 1m}",
    "name: r",
];

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut s: Vec<u8> = seed.as_bytes().to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(s.len() + 1);
        match rng.below(6) {
            0 => {
                let t = *rng.pick(TOKENS);
                s.splice(at..at, t.bytes()).for_each(drop);
            }
            1 => {
                let end = (at + rng.below(40)).min(s.len());
                s.drain(at..end);
            }
            2 if !s.is_empty() => {
                let i = rng.below(s.len());
                s[i] = rng.next() as u8;
            }
            3 => s.truncate(at),
            4 => {
                let end = (at + rng.below(200)).min(s.len());
                let chunk = s[at..end].to_vec();
                s.splice(at..at, chunk).for_each(drop);
            }
            _ => {
                let t = *rng.pick(TOKENS);
                let repeat = t.repeat(1 + rng.below(3000));
                s.splice(at..at, repeat.bytes()).for_each(drop);
            }
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// Runs `f` on `input`, failing the test on a panic or a hang.
fn survive(what: &str, input: &str, f: impl FnOnce()) {
    let t = Instant::now();
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        panic!("{what} panicked on input:\n{input:?}");
    }
    assert!(
        t.elapsed() < HANG_GUARD,
        "{what} took {:?} on input:\n{input:?}",
        t.elapsed()
    );
}

fn seeds() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["rules", "tests/malformed", "tests/semantics"] {
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .expect("corpus dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        paths.sort();
        for p in paths {
            out.push(String::from_utf8_lossy(&std::fs::read(&p).expect("seed")).into_owned());
        }
    }
    out
}

#[test]
fn rule_files_never_panic_and_every_error_has_a_position() {
    let seeds = seeds();
    let mut rng = Rng::new(1);
    for _ in 0..iterations(1500) {
        let seed = rng.pick(&seeds).clone();
        let input = mutate(&mut rng, &seed);
        survive("loading a rule file", &input, || {
            let loaded = load_rule_sources(&[("r.yaml", &input)]);
            for d in loaded.errors() {
                assert!(
                    d.pos.line >= 1 && d.pos.col >= 1,
                    "no position: {d} for input {input:?}"
                );
                assert!(d.to_string().starts_with("r.yaml:"), "{d}");
            }
        });
    }
}

#[test]
fn templates_are_bounded_and_never_panic() {
    let seeds = [
        "{{ rule }}: 5xx at {{ rate | percent }}",
        "{% for a in 'xy' * 3 %}{{ a }}{% endfor %} {{ rate | humanize }}",
        "{{ rate | round(2) }} {{ labels }} {{ severity | upper }}",
        "{% if rate > 1 %}{{ rate | duration }}{% else %}ok{% endif %}",
    ];
    let mut rng = Rng::new(2);
    for _ in 0..iterations(3000) {
        let seed = *rng.pick(&seeds);
        let input = mutate(&mut rng, seed);
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!("INPUT {input:?}");
        }
        survive("a template", &input, || {
            if let Ok(t) = Template::compile(&input, &["rate"]) {
                for v in [Some(0.0), Some(1e300), Some(-1.0), None] {
                    let values = [("rate".to_string(), v)].into_iter().collect();
                    let out = t.render("r", "critical", &Default::default(), &values);
                    assert!(out.len() <= 8192, "a {} byte summary", out.len());
                }
            }
        });
    }
}

#[test]
fn conditions_are_bounded_and_never_panic() {
    let seeds = [
        "rate > 0.005 || rate > 5 * baseline",
        "!(rate == 0) && baseline != 1",
        "min(rate, baseline) >= 2 / 3 - 1 % 2",
    ];
    let mut rng = Rng::new(3);
    for _ in 0..iterations(5000) {
        let seed = *rng.pick(&seeds);
        let input = mutate(&mut rng, seed);
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!("INPUT {input:?}");
        }
        survive("a condition", &input, || {
            if let Ok(c) = Condition::compile(&input, &["rate", "baseline"]) {
                for (a, b) in [(0.0, 0.0), (1e308, -1e308), (0.5, 3.0)] {
                    let values = [("rate".to_string(), a), ("baseline".to_string(), b)]
                        .into_iter()
                        .collect();
                    let _ = c.eval(&values);
                }
            }
        });
    }
}

#[test]
fn journal_and_outbox_bytes_never_stop_a_replay() {
    use ripcord::journal::Journal;
    let dir = tempfile::tempdir().expect("tmp");
    // A real journal as the seed: states, steps, events with "→".
    let seed = [
        r#"{"type":"state","rule":"r","state":{"status":{"Open":{"id":"r-1","opened_at":1,"dry_run":false,"drill":false,"phase":{"Acting":{"index":0}},"done":[],"veto":null,"values":{}}},"last_eval":1,"last_values":{},"last_error":null,"last_incident":"r-1"}}"#,
        r#"{"type":"shared","shared":{"budget":{"limit":5,"started":[1]},"pause":null,"mode":"enforce"}}"#,
        r#"{"type":"step_intent","at":1,"rule":"r","incident":"r-1","action":"a","step":0,"describe":"exec","dry_run":false}"#,
        r#"{"type":"event","at":2,"rule":"r","kind":"phase","text":"phase acting → verifying"}"#,
    ]
    .join("\n");
    let mut rng = Rng::new(4);
    let outbox_dir = dir.path().join("outbox");
    for i in 0..iterations(2000) {
        let input = mutate(&mut rng, &seed);
        let mut bytes = input.clone().into_bytes();
        if i % 3 == 0 && !bytes.is_empty() {
            // Raw bytes too: a torn multi-byte character, invalid UTF-8.
            let cut = rng.below(bytes.len());
            bytes.truncate(cut);
            bytes.push(0xe2);
        }
        std::fs::write(Journal::path(dir.path()), &bytes).expect("write journal");
        survive("replaying a journal", &input, || {
            let r = Journal::replay(dir.path()).expect("a readable file replays");
            for s in r.states.values() {
                // Every time in it can be shown without panicking.
                let _ = s.last_eval.map(|t| t.rfc3339());
                let _ = s.incident().map(|i| i.opened_at.rfc3339());
            }
        });
        std::fs::create_dir_all(&outbox_dir).expect("outbox");
        std::fs::write(outbox_dir.join("00000000000000000001.json"), &bytes).expect("page");
        survive("opening an outbox", &input, || {
            ripcord::notify::outbox::Outbox::open(&outbox_dir).expect("opens");
        });
    }
}
