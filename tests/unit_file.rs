//! The packaged unit's hardening, scored by systemd itself.

#[test]
fn the_unit_scores_at_most_2_0_on_systemd_analyze_security() {
    let unit = crate::support::root().join("systemd/ripcord.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs (Debian systemd)");
    let text = String::from_utf8_lossy(&out.stdout);
    // `--offline` exits 0 whatever the score: read the verdict line.
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for ripcord.service:"))
        .unwrap_or_else(|| {
            panic!(
                "no verdict in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let score: f64 = line
        .rsplit(':')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in {line:?}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}
