//! Reload: on rule-file edits and on SIGHUP the whole set is loaded and
//! swapped at once; unchanged rules keep their state; on any error the old
//! rules keep running and the failure is logged, paged and exposed.

use std::time::Duration;

use ripcord::journal::Entry;
use ripcord::rule::Status;

use crate::support::live::*;
use crate::support::receivers;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn edits_reload_all_or_nothing_and_unchanged_rules_keep_their_state() {
    let exp = Exporter::start("slow_burn 0.9\nother 0.1\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("slow_burn", "0.9");
    let hook = receivers::recorder();
    let base = format!(
        "notifiers:\n  bot: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}}}\nrules:\n  - name: slow\n    every: 1s\n    queries: {{x: max(slow_burn)}}\n    condition: x > 0.5\n    for: 1h\n    notify: [bot]\n",
        hook.port
    );
    let mut rc = Ripcord::new(&prom.url(), "", &base);
    rc.start();
    rc.wait_event("slow", "ok → pending", LONG);
    let pending_since = || {
        rc.journal().into_iter().rev().find_map(|e| match e {
            Entry::State { rule, state, .. } if rule == "slow" => match state.status {
                Status::Pending { since, .. } => Some(since),
                _ => None,
            },
            _ => None,
        })
    };
    let since = pending_since().expect("pending");

    // An editor saves a new rule: picked up without a signal.
    let added = format!("{base}  - name: added\n    every: 1s\n    queries: {{x: max(other)}}\n    condition: x > 0.5\n");
    std::fs::write(rc.path("rules.d/rules.yaml.tmp"), &added).expect("write");
    std::fs::rename(
        rc.path("rules.d/rules.yaml.tmp"),
        rc.path("rules.d/rules.yaml"),
    )
    .expect("rename");
    rc.wait_log("reloaded: 2 rules (1 added, 0 changed, 0 removed)", LONG);
    let port = rc.listen;
    wait_until("the new rule to be evaluated", LONG, || {
        http_get(port, "/metrics")
            .is_some_and(|(_, b)| b.contains("ripcord_evaluations_total{rule=\"added\"}"))
    });

    // A broken file: nothing changes, the failure is said everywhere.
    std::fs::write(
        rc.path("rules.d/broken.yaml"),
        "rules:\n  - name: broken\n    queries: {x: up}\n    condition: x >\n",
    )
    .expect("write");
    rc.wait_log(
        "rule reload failed with 1 problem(s): the previous 2 rules keep running",
        LONG,
    );
    assert!(
        rc.log()
            .contains("broken.yaml:4:16: invalid condition `x >`")
            || rc.log().contains("broken.yaml:4:16: condition `x >`"),
        "{}",
        rc.log()
    );
    wait_until("the reload_failed page", LONG, || {
        hook.requests()
            .iter()
            .any(|r| r.body.contains("\"event\":\"reload_failed\""))
    });
    let (_, metrics) = http_get(port, "/metrics").expect("metrics");
    assert!(
        metrics.contains("ripcord_last_reload_successful 0"),
        "{metrics}"
    );
    assert!(metrics.contains("ripcord_rules 2"), "{metrics}");
    wait_until("status to show the failed reload", LONG, || {
        rc.cli(&["status"], &[])
            .stdout
            .contains("last reload FAILED at ")
    });
    let status = rc.cli(&["status"], &[]);
    assert!(
        status.stdout.contains("broken.yaml:4:16: "),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with("slow ") && l.contains("pending")),
        "{}",
        status.stdout
    );
    assert!(
        status.stdout.lines().any(|l| l.starts_with("added ")),
        "{}",
        status.stdout
    );

    // Fixed, and reloaded by SIGHUP.
    std::fs::remove_file(rc.path("rules.d/broken.yaml")).expect("rm");
    rc.wait_log("reloaded: 2 rules (0 added, 0 changed, 0 removed)", LONG);
    let pid = rc.pid().expect("running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    rc.wait_log("SIGHUP: reloading the rules", LONG);
    wait_until("ripcord_last_reload_successful 1", LONG, || {
        http_get(port, "/metrics")
            .is_some_and(|(_, b)| b.contains("ripcord_last_reload_successful 1"))
    });
    wait_until("status to drop the failure", LONG, || {
        !rc.cli(&["status"], &[]).stdout.contains("FAILED")
    });
    // Through all of it the unchanged rule kept its pending timer.
    assert_eq!(pending_since(), Some(since));
    assert!(!rc.log().contains("pending → ok"), "{}", rc.log());
}

/// A service manager that stops reading notifications: a datagram send
/// blocks once the socket's queue is full (net.unix.max_dgram_qlen, 10 by
/// default), and that must never stall the engine. Here nothing reads the
/// NOTIFY_SOCKET; after more reloads (two messages each) than the queues
/// hold, ripcord still reloads, evaluates, acts on a breach and answers
/// `status`, and says that it dropped notifications. Its steps do not
/// inherit NOTIFY_SOCKET.
#[test]
fn a_service_manager_that_stops_reading_notifications_does_not_stall_ripcord() {
    let exp = Exporter::start("demo_errors_ratio 0.001\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.001");
    let mut rc = Ripcord::new(&prom.url(), "", "");
    let rec = recorder(rc.dir.path());
    let out = rc.path("recorded");
    std::fs::write(
        rc.path("rules.d/rules.yaml"),
        format!(
            "actions:\n  rollback:\n    steps:\n      - exec: {{argv: [\"{}\", rollback]}}\n      - exec: {{argv: [/usr/bin/printenv, REC, NOTIFY_SOCKET]}}\nrules:\n  - name: errors\n    every: 1s\n    queries: {{ratio: demo_errors_ratio}}\n    condition: ratio > 0.05\n    actions: [rollback]\n",
            rec.display()
        ),
    )
    .expect("rules");
    let sock = rc.path("notify.sock");
    let never_read = std::os::unix::net::UnixDatagram::bind(&sock).expect("bind");
    rc.env
        .push(("NOTIFY_SOCKET".into(), sock.display().to_string()));
    rc.env.push(("REC".into(), out.display().to_string()));
    rc.start();
    let pid = nix::unistd::Pid::from_raw(rc.pid().expect("running"));
    // 40 reloads: 80 messages, past the socket's 10 and ripcord's 64.
    for i in 1..=40 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
        wait_until(&format!("reload {i}"), LONG, || {
            rc.log().matches("reloaded: 1 rules").count() >= i
        });
    }
    rc.wait_log("the service manager is not reading notifications", LONG);
    exp.set("demo_errors_ratio 0.2\n");
    wait_until("the rollback step to run", LONG, || {
        recorded(&out)
            .iter()
            .any(|(n, what, _)| n == "rollback" && what == "start")
    });
    let status = rc.cli(&["status"], &[]);
    assert!(status.stdout.contains("errors"), "{}", status.stdout);
    // A step gets ripcord's environment but not its line to systemd.
    let mut printed = None;
    wait_until("the printenv step's result", LONG, || {
        printed = rc.journal().into_iter().find_map(|e| match e {
            Entry::StepResult {
                step: 1, outcome, ..
            } => Some(outcome.output),
            _ => None,
        });
        printed.is_some()
    });
    let printed = printed.unwrap_or_default();
    assert!(printed.contains(&out.display().to_string()), "{printed}");
    assert!(!printed.contains("notify.sock"), "{printed}");
    drop(never_read);
}
