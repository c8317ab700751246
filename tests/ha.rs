//! High availability on a real 3-member etcd cluster on loopback (Debian's
//! `etcd-server`): two or three ripcord processes share one Prometheus,
//! one rule and one recording step, and the recording says how often the
//! step ran. Faults are real: SIGKILL, SIGSTOP/SIGCONT, etcd members
//! killed, a black-holing proxy between one ripcord and etcd.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::etcd::{self, spawn_campaigning, status, Etcd, Proxy};
use crate::support::live::{
    http_get, recorded, recorder, wait_until, Exporter, Prometheus, Ripcord,
};
use crate::support::receivers::{self, Double};

const TTL: Duration = Duration::from_secs(3);
const LONG: Duration = Duration::from_secs(60);

const OK: &str = "demo_errors_ratio{domain=\"a\"} 0.001\ndemo_errors_ratio{domain=\"b\"} 0.001\n";
const A_BAD: &str = "demo_errors_ratio{domain=\"a\"} 0.2\ndemo_errors_ratio{domain=\"b\"} 0.001\n";
const BOTH_BAD: &str = "demo_errors_ratio{domain=\"a\"} 0.2\ndemo_errors_ratio{domain=\"b\"} 0.2\n";

struct Group {
    etcd: Etcd,
    exp: Exporter,
    prom: Prometheus,
    hook: Double,
    tmp: tempfile::TempDir,
    rec: PathBuf,
    rules: String,
}

impl Group {
    /// etcd, an exporter with two domains, Prometheus, and the rule every
    /// instance runs: per domain, roll back (a recorded step that sleeps
    /// `step_secs`).
    fn start(step_secs: u32) -> Group {
        let etcd = Etcd::start();
        let exp = Exporter::start(OK);
        let prom = Prometheus::start(&[exp.port()]);
        prom.wait_for("count(demo_errors_ratio)", "\"2\"");
        let hook = receivers::recorder();
        let tmp = tempfile::tempdir().expect("tmp");
        let rec = tmp.path().join("rec");
        let rules = format!(
            "notifiers:\n  hook: {{webhook: {{url: \"http://127.0.0.1:{}/hook\"}}}}\nactions:\n  undo:\n    steps:\n      - exec: {{argv: [\"{}\", \"undo-{{{{ labels.domain }}}}\", \"{step_secs}\"], env: {{REC: \"{}\"}}, timeout: 120s}}\nrules:\n  - name: errors\n    every: 1s\n    queries: {{ratio: max by (domain) (demo_errors_ratio)}}\n    by: [domain]\n    condition: ratio > 0.05\n    actions: [undo]\n    notify: [hook]\n    cooldown: 1h\n",
            hook.port,
            recorder(tmp.path()).display(),
            rec.display()
        );
        Group {
            etcd,
            exp,
            prom,
            hook,
            tmp,
            rec,
            rules,
        }
    }

    /// A ripcord instance named `name` on `endpoints` (the cluster's own
    /// unless given), started and campaigning.
    fn member(&self, name: &str, endpoints: Option<Vec<String>>) -> Ripcord {
        let endpoints = endpoints.unwrap_or_else(|| self.etcd.endpoints());
        let ha = format!(
            "ha: {{name: {name}, etcd: {{endpoints: [{}], prefix: /ripcord/test, lease_ttl: {}s}}}}\n",
            endpoints.join(", "),
            TTL.as_secs()
        );
        let mut rc = Ripcord::new(&self.prom.url(), &ha, &self.rules);
        spawn_campaigning(&mut rc);
        rc
    }

    /// How often the step started, per argument (`undo-a`, ...).
    fn starts(&self, what: &str) -> usize {
        recorded(&self.rec)
            .iter()
            .filter(|(n, e, _)| n == what && e == "start")
            .count()
    }
}

fn leading(rc: &Ripcord) -> bool {
    etcd::leading(rc) == Some(true)
}

fn wait_leader<'a>(members: &[&'a Ripcord], deadline: Duration) -> &'a Ripcord {
    let mut found = None;
    wait_until("an instance to lead", deadline, || {
        found = members.iter().position(|m| leading(m));
        found.is_some()
    });
    members[found.unwrap_or_default()]
}

/// The leader has evaluated every rule a few times since `since` (its
/// status's last evaluation moved on): time enough for a second run.
fn wait_evaluations(rc: &Ripcord, n: usize) {
    let mut seen = Vec::new();
    wait_until("a few more evaluations", LONG, || {
        if let Some(s) = status(rc) {
            let at = s["rules"][0]["last_evaluation"].to_string();
            if seen.last() != Some(&at) {
                seen.push(at);
            }
        }
        seen.len() > n
    });
}

fn pid(rc: &Ripcord) -> Pid {
    Pid::from_raw(rc.pid().expect("running"))
}

#[test]
fn three_instances_one_breach_the_step_runs_exactly_once() {
    let g = Group::start(0);
    let a = g.member("a", None);
    let b = g.member("b", None);
    let c = g.member("c", None);
    let leader = wait_leader(&[&a, &b, &c], LONG);
    let others: Vec<&Ripcord> = [&a, &b, &c]
        .into_iter()
        .filter(|m| m.listen != leader.listen)
        .collect();
    // One leader, the others standbys that know it.
    for o in &others {
        let s = status(o).expect("standby answers status");
        assert_eq!(s["ha"]["leading"], Value::Bool(false));
        assert_eq!(s["ha"]["leader"], leader_name(leader));
        let out = o.cli(&["status"], &[]).stdout;
        assert!(out.contains("a standby"), "{out}");
        let page = http_get(o.listen, "/").map(|(_, b)| b).unwrap_or_default();
        assert!(page.contains("STANDBY"), "{page}");
    }
    let page = http_get(leader.listen, "/")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(page.contains("id=\"ha\">✓ leader of "), "{page}");
    let metrics = http_get(leader.listen, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(metrics.contains("ripcord_ha_leader 1"), "{metrics}");
    let metrics = http_get(others[0].listen, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert!(metrics.contains("ripcord_ha_leader 0"), "{metrics}");
    wait_until("every member to be seen", LONG, || {
        status(leader).is_some_and(|s| s["ha"]["members"].as_array().is_some_and(|m| m.len() == 3))
    });
    g.exp.set(A_BAD);
    wait_until("the step to run", LONG, || g.starts("undo-a") == 1);
    wait_evaluations(leader, 5);
    assert_eq!(g.starts("undo-a"), 1, "{:?}", recorded(&g.rec));
    // The standbys are warm: the leader's incident, their own fresh values.
    for o in &others {
        wait_until("the standby to mirror the incident", LONG, || {
            status(o).is_some_and(|s| {
                s["rules"].as_array().is_some_and(|rs| {
                    rs.iter().any(|r| {
                        r["name"] == "errors{domain=\"a\"}"
                            && r["incident"].is_string()
                            && r["values"]["ratio"].as_f64().is_some_and(|v| v > 0.1)
                    })
                })
            })
        });
    }
    // The group's state is in etcd: the rule's instance and no intent left.
    let keys = g.etcd.keys("/ripcord/test/");
    assert!(
        keys.iter()
            .any(|k| k.starts_with("/ripcord/test/state/errors{")),
        "{keys:?}"
    );
    assert!(!keys.iter().any(|k| k.contains("/step/")), "{keys:?}");
    // A clean stop resigns: another instance leads, pages why (the old
    // leader was stopped, not its lease expired), and runs nothing again.
    let old = leader.listen;
    let mut all = [a, b, c];
    let li = all.iter().position(|m| m.listen == old).unwrap_or_default();
    let _ = all[li].signal(Signal::SIGTERM);
    let rest: Vec<&Ripcord> = all.iter().filter(|m| m.listen != old).collect();
    let next = wait_leader(&rest, LONG);
    // Only a resignation writes this why; an expired lease says so instead.
    wait_until("the leader_changed page", LONG, || {
        g.hook.requests().iter().any(|r| {
            r.body.contains("\"event\":\"leader_changed\"") && r.body.contains("was stopped")
        })
    });
    wait_evaluations(next, 3);
    assert_eq!(g.starts("undo-a"), 1, "{:?}", recorded(&g.rec));
}

fn leader_name(rc: &Ripcord) -> Value {
    status(rc)
        .map(|s| s["ha"]["name"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn a_leader_killed_mid_step_is_replaced_within_the_lease_the_step_is_reported_not_rerun() {
    let g = Group::start(60);
    let a = g.member("a", None);
    wait_leader(&[&a], LONG);
    let b = g.member("b", None);
    let mut a = a;
    g.exp.set(A_BAD);
    wait_until("the step to start", LONG, || g.starts("undo-a") == 1);
    let killed = Instant::now();
    let _ = a.signal(Signal::SIGKILL);
    wait_until("b to lead", LONG, || leading(&b));
    let took = killed.elapsed();
    // TTL + one evaluation interval, plus this test's polling and start-up.
    assert!(
        took <= TTL + Duration::from_secs(1) + Duration::from_secs(2),
        "b led {took:?} after the kill"
    );
    b.wait_log("was interrupted by a restart: it is not run again", LONG);
    let leader_changed = || {
        g.hook
            .requests()
            .iter()
            .any(|r| r.body.contains("\"event\":\"leader_changed\""))
    };
    wait_until("the leader_changed page", LONG, leader_changed);
    wait_evaluations(&b, 4);
    assert_eq!(
        g.starts("undo-a"),
        1,
        "not run again: {:?}",
        recorded(&g.rec)
    );
    // A new breach is acted on by the new leader.
    g.exp.set(BOTH_BAD);
    wait_until("b to act on domain b", LONG, || g.starts("undo-b") == 1);
    wait_evaluations(&b, 3);
    assert_eq!(g.starts("undo-a"), 1);
    assert_eq!(g.starts("undo-b"), 1);
}

#[test]
fn a_leader_paused_past_its_lease_does_not_act_on_waking() {
    let g = Group::start(0);
    let a = g.member("a", None);
    wait_leader(&[&a], LONG);
    let b = g.member("b", None);
    kill(pid(&a), Signal::SIGSTOP).expect("SIGSTOP");
    wait_until("b to lead", LONG, || leading(&b));
    // The breach comes while a sleeps: b acts on it, once.
    g.exp.set(A_BAD);
    wait_until("b to act", LONG, || g.starts("undo-a") == 1);
    kill(pid(&a), Signal::SIGCONT).expect("SIGCONT");
    a.wait_log("standby again", LONG);
    wait_until("a to answer as a standby", LONG, || {
        status(&a).is_some_and(|s| s["ha"]["leading"] == Value::Bool(false))
    });
    wait_evaluations(&b, 4);
    assert_eq!(g.starts("undo-a"), 1, "{:?}", recorded(&g.rec));
    assert!(
        !a.log().contains("running undo step"),
        "the old leader ran nothing:\n{}",
        a.log()
    );
}

#[test]
fn without_etcd_quorum_nobody_acts_and_the_breach_is_acted_on_once_when_it_returns() {
    let mut g = Group::start(0);
    let a = g.member("a", None);
    let b = g.member("b", None);
    let leader = wait_leader(&[&a, &b], LONG);
    wait_evaluations(leader, 2);
    g.etcd.stop_member(1);
    g.etcd.stop_member(2);
    wait_until("both to stop leading", LONG, || {
        !leading(&a) && !leading(&b)
    });
    g.exp.set(A_BAD);
    let cannot = |g: &Group| {
        g.hook
            .requests()
            .iter()
            .any(|r| r.body.contains("\"event\":\"ha_cannot_act\""))
    };
    wait_until("ha_cannot_act to be paged", LONG, || cannot(&g));
    // The breach is in Prometheus (the rule would fire) while nobody acts.
    g.prom.wait_for("max(demo_errors_ratio)", "\"0.2\"");
    // Both instances see it and have paged it; still nobody leads.
    wait_until("both instances to report etcd unusable", LONG, || {
        [&a, &b].iter().all(|m| {
            status(m).is_some_and(|s| {
                s["ha"]["etcd_problem"].is_string() && s["ha"]["leading"] == Value::Bool(false)
            })
        })
    });
    wait_until("both instances' ha_cannot_act pages", LONG, || {
        g.hook
            .requests()
            .iter()
            .filter(|r| r.body.contains("\"event\":\"ha_cannot_act\""))
            .count()
            >= 2
    });
    assert_eq!(g.starts("undo-a"), 0, "nothing runs without quorum");
    g.etcd.start_member(1);
    g.etcd.start_member(2);
    g.etcd.wait_healthy();
    wait_until("the step to run once quorum is back", LONG, || {
        g.starts("undo-a") == 1
    });
    let leader = wait_leader(&[&a, &b], LONG);
    wait_evaluations(leader, 4);
    assert_eq!(g.starts("undo-a"), 1, "{:?}", recorded(&g.rec));
    wait_until("ha_can_act to be paged", LONG, || {
        g.hook
            .requests()
            .iter()
            .any(|r| r.body.contains("\"event\":\"ha_can_act\""))
    });
}

#[test]
fn a_leader_cut_off_from_etcd_stops_acting_before_its_lease_can_expire() {
    let g = Group::start(0);
    let proxies: Vec<Proxy> = g
        .etcd
        .client_ports()
        .into_iter()
        .map(Proxy::start)
        .collect();
    let a = g.member("a", Some(proxies.iter().map(Proxy::url).collect()));
    wait_leader(&[&a], LONG);
    let b = g.member("b", None);
    wait_evaluations(&a, 2);
    for p in &proxies {
        p.cut();
    }
    let cut = Instant::now();
    a.wait_log("no longer the leader", LONG);
    let stepped_down = cut.elapsed();
    wait_until("b to lead", LONG, || leading(&b));
    let b_leads = cut.elapsed();
    // a stopped acting before b could lead: b leads only once a's lease
    // has expired in etcd.
    assert!(
        stepped_down < b_leads,
        "a stepped down after {stepped_down:?}, b led after {b_leads:?}"
    );
    assert!(stepped_down < TTL, "a stepped down after {stepped_down:?}");
    g.exp.set(A_BAD);
    wait_until("b to act", LONG, || g.starts("undo-a") == 1);
    wait_evaluations(&b, 4);
    assert_eq!(g.starts("undo-a"), 1, "{:?}", recorded(&g.rec));
    let _ = &g.tmp;
}

/// The fence itself, on the real cluster: a commit is a transaction on the
/// leader key's create revision, so once the key changed hands (here by
/// hand, as a new leader would after the lease expired) the old leader's
/// commit is refused even while its own clock says its lease is alive,
/// and it steps down.
#[test]
fn a_commit_after_the_leader_key_changed_hands_is_refused_and_steps_down() {
    use ripcord::journal::Fence;
    let etcd = Etcd::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = ripcord::config::HaConfig {
        name: "old".into(),
        endpoints: etcd.endpoints(),
        prefix: "/ripcord/fence".into(),
        lease_ttl: Duration::from_secs(30),
        auth: None,
        tls: None,
    };
    let node = std::sync::Arc::new(
        rt.block_on(ripcord::ha::Node::connect(&cfg))
            .expect("client"),
    );
    rt.spawn(node.clone().campaign());
    wait_until("the node to lead", LONG, || node.is_leading());
    let shared = |n: u32| ripcord::journal::Entry::Shared {
        shared: ripcord::rule::Shared::new(n, ripcord::config::Mode::Enforce),
    };
    node.commit(&shared(1)).expect("the leader commits");
    assert!(etcd
        .keys("/ripcord/fence/")
        .contains(&"/ripcord/fence/shared".to_string()));
    // Another holder of the leader key (its create revision is new).
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(etcd.endpoints().join(","))
            .args(args)
            .output()
            .expect("etcdctl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    ctl(&["del", "/ripcord/fence/leader"]);
    ctl(&[
        "put",
        "/ripcord/fence/leader",
        "{\"name\":\"new\",\"since\":0}",
    ]);
    ctl(&["put", "/ripcord/fence/shared", "written by the new leader"]);
    assert!(node.may_act().is_ok(), "its own clock still says it leads");
    let refused = node.commit(&shared(2));
    assert!(refused.is_err(), "{refused:?}");
    assert!(!node.is_leading(), "it stepped down");
    assert_eq!(
        ctl(&["get", "--print-value-only", "/ripcord/fence/shared"]).trim(),
        "written by the new leader",
        "the old leader's write did not land"
    );
    assert!(
        node.commit(&shared(3)).is_err(),
        "nothing commits after stepping down"
    );
}
