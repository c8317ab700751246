//! `systemctl` steps against a real systemd (252, Debian 12) booted with
//! systemd-nspawn in a debootstrap tree cached under `target/`. ripcord runs
//! inside the container (same userland as the host, so the test binary runs
//! as is) and reaches the test's Prometheus on the shared loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ripcord::journal::Entry;

use crate::support::live::*;

/// The container trees: the tests that boot one take turns.
pub(crate) static CONTAINER: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub(crate) struct Container {
    root: PathBuf,
    nspawn: Child,
    pub(crate) pid1: i32,
}

/// Copies a directory tree as is (owners, modes, links).
fn copy_tree(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let st = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(st.success(), "copying {} failed", from.display());
}

impl Container {
    fn root() -> PathBuf {
        crate::support::root().join("target/nspawn/root")
    }

    /// A pristine Debian 12 tree with systemd, never booted: built once
    /// (about 30 s, cached); the trees that are booted are copies of it.
    fn base() -> PathBuf {
        let base = crate::support::root().join("target/nspawn/base");
        // procps brings /bin/kill, which the unit's ExecReload uses (every
        // standard Debian install has it; debootstrap's minbase does not);
        // man-db lets the package test read the installed man pages.
        if !base.join("usr/lib/systemd/systemd").exists()
            || !base.join("bin/kill").exists()
            || !base.join("usr/lib/polkit-1/polkitd").exists()
            || !base.join("usr/bin/man").exists()
        {
            let _ = std::fs::remove_dir_all(&base);
            std::fs::create_dir_all(base.parent().expect("parent")).expect("mkdir");
            let st = Command::new("debootstrap")
                .args([
                    "--variant=minbase",
                    "--include=systemd,systemd-sysv,dbus,procps,libpam-systemd,polkitd,man-db",
                    "bookworm",
                ])
                .arg(&base)
                .arg("http://deb.debian.org/debian")
                .stdout(Stdio::null())
                .status()
                .expect("debootstrap runs (apt-get install debootstrap)");
            assert!(st.success(), "debootstrap failed");
        }
        base
    }

    /// Boots a fresh copy of the pristine tree, under target/nspawn/NAME.
    pub(crate) fn boot_fresh(name: &str) -> Container {
        let root = crate::support::root().join("target/nspawn").join(name);
        copy_tree(&Self::base(), &root);
        Self::boot_tree(root)
    }

    /// Boots the tree the systemctl tests share, with these units in
    /// /etc/systemd/system and the test build of ripcord in /usr/local/bin.
    fn boot(units: &[(&str, &str)]) -> Container {
        let root = Self::root();
        let base = Self::base();
        if !root.join("usr/bin/man").exists() {
            copy_tree(&base, &root);
        }
        // Whatever an earlier run left behind goes.
        for d in [
            "etc/ripcord",
            "var/lib/ripcord",
            "var/log/ripcord",
            "var/log/journal",
        ] {
            let _ = std::fs::remove_dir_all(root.join(d));
        }
        for (name, text) in units {
            std::fs::write(root.join("etc/systemd/system").join(name), text).expect("unit");
        }
        std::fs::create_dir_all(root.join("usr/local/bin")).expect("mkdir");
        std::fs::copy(
            env!("CARGO_BIN_EXE_ripcord"),
            root.join("usr/local/bin/ripcord"),
        )
        .expect("copy ripcord");
        Self::boot_tree(root)
    }

    fn boot_tree(root: PathBuf) -> Container {
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(&root)
            .args(["--boot", "--register=no", "--keep-unit", "--quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn runs (apt-get install systemd-container)");
        let parent = nspawn.id();
        let mut pid1 = 0;
        wait_until("the container's PID 1", Duration::from_secs(30), || {
            let kids = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                .unwrap_or_default();
            pid1 = kids
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            pid1 != 0
                && std::fs::read_to_string(format!("/proc/{pid1}/comm"))
                    .is_ok_and(|c| c.trim() == "systemd")
        });
        let c = Container { root, nspawn, pid1 };
        wait_until("systemd to reach running", Duration::from_secs(60), || {
            c.exec(&["systemctl", "is-system-running"]).0.trim() == "running"
        });
        c
    }

    /// Runs a command inside; (stdout, success).
    pub(crate) fn exec(&self, argv: &[&str]) -> (String, bool) {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a"])
            .args(argv)
            .output()
            .expect("nsenter runs");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            out.status.success(),
        )
    }

    fn spawn(&self, argv: &[&str], log: &Path) -> Child {
        let log = std::fs::File::create(log).expect("log");
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a"])
            .args(argv)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nsenter runs")
    }

    pub(crate) fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.exec(&["systemctl", "poweroff"]);
        let _ = self.nspawn.wait_timeout_or_kill(Duration::from_secs(20));
    }
}

trait WaitOrKill {
    fn wait_timeout_or_kill(&mut self, d: Duration) -> std::io::Result<()>;
}

impl WaitOrKill for Child {
    fn wait_timeout_or_kill(&mut self, d: Duration) -> std::io::Result<()> {
        let end = std::time::Instant::now() + d;
        while std::time::Instant::now() < end {
            if self.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill()?;
        self.wait().map(|_| ())
    }
}

/// When importer.service last became active (monotonic µs).
fn active_since(c: &Container) -> String {
    let argv = [
        "systemctl",
        "show",
        "-p",
        "ActiveEnterTimestampMonotonic",
        "--value",
        "importer.service",
    ];
    c.exec(&argv).0
}

fn results(c: &Container) -> Vec<(String, bool, String)> {
    ripcord::journal::read_all(&c.path("/var/lib/ripcord"))
        .expect("journal")
        .into_iter()
        .filter_map(|e| match e {
            Entry::StepResult { rule, outcome, .. } => Some((rule, outcome.ok, outcome.summary)),
            _ => None,
        })
        .collect()
}

#[test]
fn systemctl_steps_restart_real_units_and_report_failures_and_start_limits() {
    let _turn = CONTAINER.lock().unwrap_or_else(|e| e.into_inner());
    let exp = Exporter::start("demo_errors_ratio 0.2\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.2");
    let c = Container::boot(&[
        ("importer.service", "[Service]\nExecStart=/bin/sleep infinity\n"),
        ("broken.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n"),
        (
            "limited.service",
            "[Unit]\nStartLimitIntervalSec=60\nStartLimitBurst=2\n[Service]\nExecStart=/bin/sleep infinity\n",
        ),
    ]);
    c.exec(&["systemctl", "daemon-reload"]);
    assert!(c.exec(&["systemctl", "start", "importer.service"]).1);
    let before = active_since(&c);

    std::fs::create_dir_all(c.path("/etc/ripcord/rules.d")).expect("mkdir");
    std::fs::write(
        c.path("/etc/ripcord/ripcord.yaml"),
        format!("prometheus: {{url: \"{}\", timeout: 2s}}\nstate_dir: /var/lib/ripcord\nlisten: 127.0.0.1:{}\n", prom.url(), free_port()),
    )
    .expect("config");
    let rule = |name: &str, action: &str| {
        format!("  - name: {name}\n    every: 1s\n    queries: {{x: max(demo_errors_ratio)}}\n    condition: x > 0.05\n    actions: [{action}]\n")
    };
    std::fs::write(
        c.path("/etc/ripcord/rules.d/rules.yaml"),
        format!(
            "actions:\n  restart-importer:\n    steps: [{{systemctl: {{restart: importer.service, wait: 20s}}}}]\n  restart-broken:\n    steps: [{{systemctl: {{restart: broken.service, wait: 20s}}}}]\n  restart-limited:\n    steps:\n      - systemctl: {{restart: limited.service, wait: 10s}}\n      - systemctl: {{restart: limited.service, wait: 10s}}\n      - systemctl: {{restart: limited.service, wait: 10s}}\nrules:\n{}{}{}",
            rule("importer", "restart-importer"),
            rule("broken", "restart-broken"),
            rule("limited", "restart-limited"),
        ),
    )
    .expect("rules");
    let log = c.path("/var/log/ripcord.log");
    let mut rc = c.spawn(
        &[
            "/usr/local/bin/ripcord",
            "-c",
            "/etc/ripcord/ripcord.yaml",
            "run",
        ],
        &log,
    );
    let done = || {
        let r = results(&c);
        r.iter().filter(|(n, ..)| n == "importer").count() == 1
            && r.iter().filter(|(n, ..)| n == "broken").count() == 1
            && r.iter().filter(|(n, ..)| n == "limited").count() == 3
    };
    wait_until(
        &format!(
            "every systemctl step to finish; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        ),
        Duration::from_secs(90),
        done,
    );
    let _ = rc.kill();
    let _ = rc.wait();
    let r = results(&c);
    let of = |name: &str| {
        r.iter()
            .filter(|(n, ..)| n == name)
            .map(|(_, ok, s)| (*ok, s.clone()))
            .collect::<Vec<_>>()
    };

    assert_eq!(
        of("importer"),
        [(true, "importer.service is active".to_string())]
    );
    let after = active_since(&c);
    assert_ne!(before, after, "importer.service was really restarted");

    let broken = of("broken");
    assert!(!broken[0].0, "{broken:?}");
    assert!(
        broken[0]
            .1
            .starts_with("systemctl restart broken.service: exit")
            || broken[0].1.contains("failed"),
        "{broken:?}"
    );

    // Start limit: two restarts pass, the third is refused by systemd and
    // becomes a failed step (the action stops there, no loop).
    let limited = of("limited");
    assert_eq!(
        (limited[0].0, limited[1].0, limited[2].0),
        (true, true, false),
        "{limited:?}"
    );
    assert!(
        limited[2]
            .1
            .starts_with("systemctl restart limited.service: exit 1"),
        "{limited:?}"
    );
}

#[test]
fn the_packaged_unit_is_ready_only_when_running_reloads_and_stops_cleanly() {
    let _turn = CONTAINER.lock().unwrap_or_else(|e| e.into_inner());
    let exp = Exporter::start("demo_errors_ratio 0.001\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.001");
    let unit = std::fs::read_to_string(crate::support::root().join("systemd/ripcord.service"))
        .expect("unit");
    let c = Container::boot(&[("ripcord.service", unit.as_str())]);
    let _ = std::fs::remove_dir_all(c.path("/etc/systemd/system/ripcord.service.d"));
    let rule = |name: &str| {
        format!("rules:\n  - name: {name}\n    every: 1s\n    queries: {{x: max(demo_errors_ratio)}}\n    condition: x > 0.5\n    notify: []\n    actions: []\n")
    };
    install(&c, &prom.url(), &rule("a"));
    let show = |p: &str| {
        c.exec(&["systemctl", "show", "-p", p, "--value", "ripcord.service"])
            .0
            .trim()
            .to_string()
    };
    let journal = || {
        c.exec(&[
            "journalctl",
            "-b",
            "-u",
            "ripcord.service",
            "--no-pager",
            "-o",
            "cat",
        ])
        .0
    };

    // `systemctl start` returns once READY=1 arrived: active at once.
    let (_, ok) = c.exec(&["systemctl", "start", "ripcord.service"]);
    assert!(ok, "start failed:\n{}", journal());
    assert_eq!(show("ActiveState"), "active", "{}", journal());
    assert_eq!(show("Type"), "notify");
    wait_until("STATUS= from ripcord", Duration::from_secs(20), || {
        show("StatusText").starts_with("1 rules, 0 open incident(s)")
    });
    assert_eq!(show("User"), "ripcord");
    assert!(
        c.path("/var/lib/ripcord/journal.jsonl").exists(),
        "state in StateDirectory"
    );

    // A reload adds a rule; a broken one changes nothing and says so.
    std::fs::write(c.path("/etc/ripcord/rules.d/b.yaml"), rule("b")).expect("rules");
    c.exec(&["chmod", "a+r", "/etc/ripcord/rules.d/b.yaml"]);
    let (out, ok) = c.exec(&["systemctl", "reload", "ripcord.service"]);
    assert!(
        ok,
        "{out}\n{}\n{}",
        c.exec(&["systemctl", "status", "--no-pager", "ripcord.service"])
            .0,
        journal()
    );
    wait_until("2 rules after the reload", Duration::from_secs(20), || {
        show("StatusText").starts_with("2 rules")
    });
    std::fs::write(
        c.path("/etc/ripcord/rules.d/b.yaml"),
        "rules:\n  - name: b\n    condition: x >\n",
    )
    .expect("rules");
    let (out, ok) = c.exec(&["systemctl", "reload", "ripcord.service"]);
    assert!(
        ok,
        "{out}\n{}\n{}",
        c.exec(&["systemctl", "status", "--no-pager", "ripcord.service"])
            .0,
        journal()
    );
    wait_until(
        "the failed reload in the journal",
        Duration::from_secs(20),
        || journal().contains("rule reload failed with"),
    );
    assert_eq!(show("ActiveState"), "active");
    assert!(
        show("StatusText").starts_with("2 rules"),
        "{}",
        show("StatusText")
    );

    // A clean stop: SIGTERM, exit 0, not failed.
    assert!(c.exec(&["systemctl", "stop", "ripcord.service"]).1);
    assert_eq!(show("ActiveState"), "inactive");
    assert_eq!(show("Result"), "success", "{}", journal());
    assert!(journal().contains("stopped"), "{}", journal());
}

/// Installs the shipped unit and a config inside `c`; returns the API port.
fn install(c: &Container, prom_url: &str, rules: &str) -> u16 {
    std::fs::copy(env!("CARGO_BIN_EXE_ripcord"), c.path("/usr/bin/ripcord")).expect("copy");
    if !c.exec(&["id", "ripcord"]).1 {
        assert!(
            c.exec(&[
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "ripcord"
            ])
            .1
        );
    }
    std::fs::create_dir_all(c.path("/etc/ripcord/rules.d")).expect("mkdir");
    let api = free_port();
    std::fs::write(
        c.path("/etc/ripcord/ripcord.yaml"),
        format!("prometheus: {{url: \"{prom_url}\", timeout: 2s}}\nrules: rules.d/*.yaml\nlisten: 127.0.0.1:{api}\n"),
    )
    .expect("config");
    std::fs::write(c.path("/etc/ripcord/rules.d/rules.yaml"), rules).expect("rules");
    c.exec(&["chmod", "-R", "a+rX", "/etc/ripcord"]);
    assert!(c.exec(&["systemctl", "daemon-reload"]).1);
    api
}

#[test]
fn stop_waits_for_a_running_step_and_the_watchdog_restarts_a_wedged_ripcord() {
    let _turn = CONTAINER.lock().unwrap_or_else(|e| e.into_inner());
    let exp = Exporter::start("demo_errors_ratio 0.001\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.001");
    let unit = std::fs::read_to_string(crate::support::root().join("systemd/ripcord.service"))
        .expect("unit");
    let c = Container::boot(&[("ripcord.service", unit.as_str())]);
    let _ = std::fs::remove_dir_all(c.path("/etc/systemd/system/ripcord.service.d"));
    install(
        &c,
        &prom.url(),
        "actions:\n  slow:\n    steps: [{exec: {argv: [/bin/sleep, \"10\"], timeout: 60s}}]\nrules:\n  - name: r\n    every: 1s\n    queries: {x: max(demo_errors_ratio)}\n    condition: x > 0.5\n    actions: [slow]\n",
    );
    let show = |p: &str| {
        c.exec(&["systemctl", "show", "-p", p, "--value", "ripcord.service"])
            .0
            .trim()
            .to_string()
    };
    let journal = || {
        c.exec(&[
            "journalctl",
            "-b",
            "-u",
            "ripcord.service",
            "--no-pager",
            "-o",
            "cat",
        ])
        .0
    };
    assert!(
        c.exec(&["systemctl", "start", "ripcord.service"]).1,
        "{}",
        journal()
    );

    // `systemctl stop` while a 10 s step runs: it waits, the step finishes.
    exp.set("demo_errors_ratio 0.9\n");
    wait_until("the step to start", Duration::from_secs(30), || {
        journal().contains("running slow step 1")
    });
    let t = std::time::Instant::now();
    assert!(c.exec(&["systemctl", "stop", "ripcord.service"]).1);
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "stop did not wait for the step: {waited:?}"
    );
    assert_eq!(show("Result"), "success", "{}", journal());
    let j = journal();
    assert!(j.contains("slow step 1 ok: exit 0"), "{j}");
    assert!(
        j.find("stopping: no new evaluations").unwrap_or(usize::MAX)
            < j.find("slow step 1 ok").unwrap_or(0),
        "{j}"
    );

    // A wedged evaluation loop stops the watchdog pings; systemd restarts it.
    exp.set("demo_errors_ratio 0.001\n");
    std::fs::create_dir_all(c.path("/etc/systemd/system/ripcord.service.d")).expect("mkdir");
    std::fs::write(
        c.path("/etc/systemd/system/ripcord.service.d/wedge.conf"),
        "[Service]\nWatchdogSec=4s\nRestartSec=1s\nEnvironment=RIPCORD_TEST_WEDGE_EVALUATIONS_AFTER=3\n",
    )
    .expect("drop-in");
    assert!(c.exec(&["systemctl", "daemon-reload"]).1);
    assert!(
        c.exec(&["systemctl", "start", "ripcord.service"]).1,
        "{}",
        journal()
    );
    assert_eq!(show("NRestarts"), "0");
    wait_until(
        &format!("the watchdog to restart ripcord; journal:\n{}", journal()),
        Duration::from_secs(90),
        || show("NRestarts").parse::<u32>().unwrap_or(0) >= 1,
    );
    assert!(
        journal().contains("not feeding the watchdog"),
        "{}",
        journal()
    );
    let _ = std::fs::remove_dir_all(c.path("/etc/systemd/system/ripcord.service.d"));
    c.exec(&["systemctl", "stop", "ripcord.service"]);
}

#[test]
fn an_unprivileged_hardened_ripcord_restarts_exactly_the_units_polkit_allows() {
    let _turn = CONTAINER.lock().unwrap_or_else(|e| e.into_inner());
    let exp = Exporter::start("demo_errors_ratio 0.9\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.9");
    let unit = std::fs::read_to_string(crate::support::root().join("systemd/ripcord.service"))
        .expect("unit");
    let c = Container::boot(&[
        ("ripcord.service", unit.as_str()),
        (
            "importer.service",
            "[Service]\nExecStart=/bin/sleep infinity\n",
        ),
        (
            "other.service",
            "[Service]\nExecStart=/bin/sleep infinity\n",
        ),
    ]);
    let _ = std::fs::remove_dir_all(c.path("/etc/systemd/system/ripcord.service.d"));
    // The shipped rule, edited as its comment says to name importer.service.
    std::fs::create_dir_all(c.path("/etc/polkit-1/rules.d")).expect("mkdir");
    let shipped =
        std::fs::read_to_string(crate::support::root().join("packaging/polkit/50-ripcord.rules"))
            .expect("polkit rule");
    assert_eq!(shipped.matches("var UNITS = [];").count(), 1);
    std::fs::write(
        c.path("/etc/polkit-1/rules.d/50-ripcord.rules"),
        shipped.replace("var UNITS = [];", r#"var UNITS = ["importer.service"];"#),
    )
    .expect("polkit rule");
    c.exec(&["systemctl", "restart", "polkit.service"]);
    for u in ["importer.service", "other.service"] {
        assert!(c.exec(&["systemctl", "start", u]).1);
    }
    let pid = |u: &str| {
        c.exec(&["systemctl", "show", "-p", "ExecMainPID", "--value", u])
            .0
            .trim()
            .to_string()
    };
    let (importer_before, other_before) = (pid("importer.service"), pid("other.service"));
    install(
        &c,
        &prom.url(),
        "actions:\n  importer: {steps: [{systemctl: {restart: importer.service, wait: 20s}}]}\n  other: {steps: [{systemctl: {restart: other.service, wait: 20s}}]}\nrules:\n  - name: allowed\n    every: 1s\n    queries: {x: max(demo_errors_ratio)}\n    condition: x > 0.5\n    actions: [importer]\n  - name: not-allowed\n    every: 1s\n    queries: {x: max(demo_errors_ratio)}\n    condition: x > 0.5\n    actions: [other]\n",
    );
    let journal = || {
        c.exec(&[
            "journalctl",
            "-b",
            "-u",
            "ripcord.service",
            "--no-pager",
            "-o",
            "cat",
        ])
        .0
    };
    assert!(
        c.exec(&["systemctl", "start", "ripcord.service"]).1,
        "{}",
        journal()
    );
    wait_until(
        &format!("both steps to finish; journal:\n{}", journal()),
        Duration::from_secs(60),
        || {
            let j = journal();
            j.contains("importer step 1 ") && j.contains("other step 1 ")
        },
    );
    let j = journal();
    assert!(
        j.contains("importer step 1 ok: importer.service is active"),
        "{j}"
    );
    assert_ne!(
        pid("importer.service"),
        importer_before,
        "importer.service was restarted"
    );
    assert!(
        j.contains("other step 1 failed: systemctl restart other.service: exit"),
        "{j}"
    );
    assert_eq!(
        pid("other.service"),
        other_before,
        "other.service was not touched"
    );
    assert_eq!(
        c.exec(&[
            "systemctl",
            "show",
            "-p",
            "User",
            "--value",
            "ripcord.service"
        ])
        .0
        .trim(),
        "ripcord"
    );
    c.exec(&["systemctl", "stop", "ripcord.service"]);
}
