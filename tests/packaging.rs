//! The packages as a sysadmin meets them: lintian on the .deb, the .rpm's
//! file list against the .deb's, and install → reload → upgrade → remove →
//! purge of the .deb in a real systemd (Debian 12 booted with
//! systemd-nspawn).
//!
//! They test what `packaging/build` made (target/packages/), so they are
//! `#[ignore]`d in a plain `cargo test`; `scripts/test` builds the packages
//! and runs them with `--ignored`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::live::wait_until;
use crate::systemd::{Container, CONTAINER};

/// The one package of this kind `packaging/build` left in target/packages/.
fn package(ext: &str) -> PathBuf {
    let dir = crate::support::root().join("target/packages");
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run packaging/build first)", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    assert_eq!(found.len(), 1, "one .{ext} in {}: {found:?}", dir.display());
    found.into_iter().next().expect("one package")
}

/// Runs a host command; its stdout, or a panic with everything it said.
fn host(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", argv[0]));
    assert!(
        out.status.success(),
        "{argv:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a shell command line inside the container as root: (success,
/// stdout and stderr).
fn inside(c: &Container, script: &str) -> (bool, String) {
    let out = Command::new("nsenter")
        .args(["-t", &c.pid1.to_string(), "-a", "/bin/sh", "-c", script])
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("MANWIDTH", "80")
        .output()
        .expect("nsenter runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Like `inside`, and it must succeed.
fn ok(c: &Container, script: &str) -> String {
    let (success, out) = inside(c, script);
    assert!(success, "`{script}` failed inside the container:\n{out}");
    out
}

fn main_pid(c: &Container) -> String {
    ok(c, "systemctl show -p MainPID --value ripcord.service")
        .trim()
        .to_owned()
}

/// The .deb's files (not directories), as absolute paths.
fn deb_files(deb: &Path) -> BTreeSet<String> {
    host(&["dpkg-deb", "-c", deb.to_str().expect("utf-8 path")])
        .lines()
        .filter(|l| l.starts_with('-'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect()
}

#[test]
#[ignore = "needs packaging/build; scripts/test runs it"]
fn lintian_reports_no_errors_or_warnings_on_the_deb() {
    let deb = package("deb");
    let out = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--info", "--display-info"])
        .arg(&deb)
        .output()
        .expect("lintian runs (apt-get install lintian)");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lintian:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !said
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "lintian:\n{said}"
    );
}

#[test]
#[ignore = "needs packaging/build; scripts/test runs it"]
fn the_rpm_carries_the_same_files_and_config_files_as_the_deb() {
    let deb = package("deb");
    let rpm = package("rpm");
    let rpm_path = rpm.to_str().expect("utf-8 path");
    // What only one format has: Debian's changelog, copyright and lintian
    // overrides; the licence texts where RPM distributions keep them.
    let debian_only = [
        "/usr/share/doc/ripcord/changelog.Debian.gz",
        "/usr/share/doc/ripcord/copyright",
        "/usr/share/lintian/overrides/ripcord",
    ];
    let rpm_only = [
        "/usr/share/licenses/ripcord/LICENSE-APACHE",
        "/usr/share/licenses/ripcord/LICENSE-MIT",
    ];
    let mut in_deb = deb_files(&deb);
    for f in debian_only {
        assert!(in_deb.remove(f), "the .deb lacks {f}");
    }
    let mut in_rpm: BTreeSet<String> = host(&["rpm", "-qlp", rpm_path])
        .lines()
        .map(str::to_owned)
        .collect();
    for f in rpm_only {
        assert!(in_rpm.remove(f), "the .rpm lacks {f}");
    }
    assert_eq!(
        in_deb, in_rpm,
        "the .deb's files (left) and the .rpm's (right)"
    );
    for must in [
        "/usr/bin/ripcord",
        "/usr/lib/systemd/system/ripcord.service",
        "/usr/lib/sysusers.d/ripcord.conf",
        "/etc/ripcord/ripcord.yaml",
        "/etc/polkit-1/rules.d/50-ripcord.rules",
        "/usr/share/man/man1/ripcord.1.gz",
        "/usr/share/man/man1/ripcord-check.1.gz",
        "/usr/share/man/man5/ripcord.yaml.5.gz",
        "/usr/share/bash-completion/completions/ripcord",
        "/usr/share/zsh/vendor-completions/_ripcord",
        "/usr/share/fish/vendor_completions.d/ripcord.fish",
        "/usr/share/doc/ripcord/examples/rules/v2-pipeline.yaml",
        "/usr/share/doc/ripcord/examples/rules/tests/v2-pipeline.test.yaml",
    ] {
        assert!(in_rpm.contains(must), "{must} is not packaged");
    }
    // The same files are configuration in both: kept when edited.
    let conffiles: BTreeSet<String> = host(&[
        "dpkg-deb",
        "--info",
        deb.to_str().expect("utf-8 path"),
        "conffiles",
    ])
    .lines()
    .map(str::to_owned)
    .collect();
    let rpm_config: BTreeSet<String> = host(&["rpm", "-qcp", rpm_path])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(conffiles, rpm_config);
    assert!(conffiles.contains("/etc/ripcord/ripcord.yaml"));
}

/// A newer build of the same package: the .deb unpacked and packed again
/// with version 0.1.0-2 (as a rebuild with a new Debian revision would be).
fn newer_deb(deb: &Path, out_dir: &Path) -> PathBuf {
    let tree = out_dir.join("newer");
    let _ = std::fs::remove_dir_all(&tree);
    host(&[
        "dpkg-deb",
        "-R",
        deb.to_str().expect("utf-8"),
        tree.to_str().expect("utf-8"),
    ]);
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    let old = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("a Version field")
        .to_owned();
    let newer = format!(
        "{}-2",
        old.rsplit_once('-').map_or(old.as_str(), |(v, _)| v)
    );
    std::fs::write(
        &control,
        text.replace(&format!("Version: {old}"), &format!("Version: {newer}")),
    )
    .expect("control");
    let out = out_dir.join(format!("ripcord_{newer}_amd64.deb"));
    host(&[
        "dpkg-deb",
        "--root-owner-group",
        "-b",
        tree.to_str().expect("utf-8"),
        out.to_str().expect("utf-8"),
    ]);
    out
}

#[test]
#[ignore = "needs packaging/build; scripts/test runs it"]
fn the_deb_installs_upgrades_removes_and_purges_cleanly_under_systemd() {
    let deb = package("deb");
    let _turn = CONTAINER.lock().unwrap_or_else(|e| e.into_inner());
    let c = Container::boot_fresh("packages");
    let scratch = tempfile::tempdir().expect("tempdir");
    let newer = newer_deb(&deb, scratch.path());
    std::fs::copy(&deb, c.path("/root/old.deb")).expect("copy");
    std::fs::copy(&newer, c.path("/root/new.deb")).expect("copy");

    // 1. Install: enabled, active, as the ripcord system user, no rules.
    ok(&c, "dpkg -i /root/old.deb");
    wait_until("ripcord.service active", Duration::from_secs(30), || {
        inside(&c, "systemctl is-active ripcord.service").1.trim() == "active"
    });
    assert_eq!(
        ok(&c, "systemctl is-enabled ripcord.service").trim(),
        "enabled"
    );
    let user = ok(&c, "getent passwd ripcord");
    let uid: u32 = user
        .split(':')
        .nth(2)
        .and_then(|u| u.parse().ok())
        .expect("uid");
    assert!(uid < 1000, "a system user: {user}");
    assert!(user.trim_end().ends_with("/usr/sbin/nologin"), "{user}");
    assert_eq!(
        ok(
            &c,
            "ps -o user= -p $(systemctl show -p MainPID --value ripcord.service)"
        )
        .trim(),
        "ripcord"
    );
    assert!(ok(&c, "test -d /etc/ripcord/rules.d && echo yes").contains("yes"));
    let version = ok(&c, "ripcord --version");
    assert!(
        version.starts_with("ripcord 0.1.0 (commit ") && !version.contains("unknown"),
        "{version}"
    );
    wait_until("`ripcord status` answers", Duration::from_secs(20), || {
        inside(&c, "ripcord status").1.contains("no rules loaded")
    });
    assert!(
        ok(&c, "systemctl show -p StatusText --value ripcord.service").contains("no rules loaded")
    );

    // The installed examples check and pass their tests.
    let checked = ok(&c, "ripcord check /usr/share/doc/ripcord/examples/rules");
    assert!(checked.starts_with("ok:"), "{checked}");
    let tested = ok(
        &c,
        "ripcord test /usr/share/doc/ripcord/examples/rules/tests",
    );
    assert!(tested.contains(" passed, 0 failed"), "{tested}");

    // Man pages render (for a user: man-db caches what root reads under
    // /var/cache/man); completions are where the shells look.
    let man = ok(&c, "runuser -u nobody -- man -P cat ripcord");
    assert!(
        man.contains("SUBCOMMANDS") && man.contains("ripcord-check(1)"),
        "{man}"
    );
    let man = ok(&c, "runuser -u nobody -- man -P cat ripcord-backtest");
    assert!(man.contains("--from"), "{man}");
    let man = ok(&c, "runuser -u nobody -- man -P cat 5 ripcord.yaml");
    assert!(
        man.contains("MAIN CONFIG") && man.contains("RULE TEST FILES"),
        "{man}"
    );
    let bash = ok(
        &c,
        "bash -c '. /usr/share/bash-completion/completions/ripcord && complete -p ripcord'",
    );
    assert!(bash.contains("_ripcord"), "{bash}");
    assert!(
        ok(&c, "head -n 1 /usr/share/zsh/vendor-completions/_ripcord")
            .starts_with("#compdef ripcord")
    );
    assert!(
        ok(&c, "cat /usr/share/fish/vendor_completions.d/ripcord.fish")
            .contains("complete -c ripcord")
    );

    // The first five minutes: a rule dropped in, checked, reloaded, shown.
    ok(
        &c,
        "cp /usr/share/doc/ripcord/examples/rules/v2-pipeline.yaml /etc/ripcord/rules.d/ && ripcord check",
    );
    ok(&c, "systemctl reload ripcord");
    wait_until(
        "the rule in `ripcord status`",
        Duration::from_secs(20),
        || inside(&c, "ripcord status").1.contains("v2-"),
    );

    // 2. Upgrade: the edited config and the state stay, the service runs
    // the new binary (the old one was replaced: a process still running it
    // would show `/usr/bin/ripcord (deleted)`).
    ok(
        &c,
        "printf '\\n# edited by the admin\\nmode: dry-run\\n' >> /etc/ripcord/ripcord.yaml",
    );
    ok(&c, "echo kept > /var/lib/ripcord/marker");
    let edited = ok(&c, "cat /etc/ripcord/ripcord.yaml");
    let old_pid = main_pid(&c);
    ok(&c, "dpkg -i /root/new.deb");
    assert_eq!(ok(&c, "dpkg-query -W -f '${Version}' ripcord"), "0.1.0-2");
    assert_eq!(ok(&c, "cat /etc/ripcord/ripcord.yaml"), edited);
    assert_eq!(ok(&c, "cat /var/lib/ripcord/marker").trim(), "kept");
    assert!(!inside(&c, "test -e /etc/ripcord/ripcord.yaml.dpkg-dist").0);
    wait_until(
        "ripcord.service active again",
        Duration::from_secs(30),
        || inside(&c, "systemctl is-active ripcord.service").1.trim() == "active",
    );
    let new_pid = main_pid(&c);
    assert_ne!(new_pid, old_pid, "restarted");
    assert_eq!(
        ok(&c, &format!("readlink /proc/{new_pid}/exe")).trim(),
        "/usr/bin/ripcord"
    );
    wait_until(
        "the edited config in effect",
        Duration::from_secs(20),
        || inside(&c, "ripcord status").1.contains("mode dry-run"),
    );

    // 3. Remove: the service stops; config, rules, state and user stay.
    ok(&c, "dpkg -r ripcord");
    assert_ne!(
        inside(&c, "systemctl is-active ripcord.service").1.trim(),
        "active"
    );
    assert!(!c.path("/usr/bin/ripcord").exists());
    ok(
        &c,
        "test -f /etc/ripcord/ripcord.yaml && test -f /etc/ripcord/rules.d/v2-pipeline.yaml",
    );
    ok(
        &c,
        "test -f /var/lib/ripcord/marker && getent passwd ripcord",
    );

    // 4. Purge: nothing of ripcord is left.
    ok(&c, "dpkg --purge ripcord && rm /root/old.deb /root/new.deb");
    assert!(!inside(&c, "getent passwd ripcord").0, "the user is gone");
    assert!(!inside(&c, "getent group ripcord").0, "the group is gone");
    assert!(!inside(&c, "dpkg-query -W ripcord").0, "dpkg forgot it");
    let units = ok(
        &c,
        "systemctl daemon-reload && { systemctl list-unit-files 'ripcord*' --no-legend || true; }",
    );
    // (list-unit-files exits 1 when nothing matches: any other complaint
    // would be output.)
    assert_eq!(units.trim(), "", "no unit left");
    let left = ok(
        &c,
        "find / -xdev \\( -path /proc -o -path /sys -o -path /dev \\) -prune -o -name '*ripcord*' -print",
    );
    assert_eq!(left.trim(), "", "files left behind");
    let left = ok(&c, "find /run -name '*ripcord*'");
    assert_eq!(left.trim(), "", "runtime files left behind");
}
