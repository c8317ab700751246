//! Failover time with `ha:` (BENCHMARKS.md): two ripcord instances on a
//! real 3-member etcd cluster on loopback, one Prometheus scraping an
//! exporter every second, one `by: [domain]` rule evaluated every second.
//!
//! Each trial kills the leader (SIGKILL) and, at the same instant, makes a
//! new domain breach; the time until the new leader's rollback step starts
//! is the failover time. The peer, measured in the same run on the same
//! setup, is the same breach with no kill: what detection alone takes. The
//! difference is what a failover costs, and it should be about the lease
//! TTL (etcd frees the key only when the lease expires).
//!
//! `cargo bench --bench failover` (7 trials at lease_ttl 3s and 10s);
//! `-- --tiny` runs one trial at 3s (CI); `-- --trials N`.

#[allow(dead_code, unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::etcd::{leading, spawn_campaigning as spawn, status, Etcd};
use support::live::{recorded, recorder, wait_until, Exporter, Prometheus, Ripcord};

const LONG: Duration = Duration::from_secs(90);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tiny = args.iter().any(|a| a == "--tiny");
    let trials: usize = args
        .iter()
        .position(|a| a == "--trials")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if tiny { 1 } else { 7 });
    let ttls: Vec<u64> = if tiny { vec![3] } else { vec![3, 10] };
    let mut rows = Vec::new();
    for ttl in ttls {
        rows.push(run(Duration::from_secs(ttl), trials));
    }
    let out = json!({"trials": trials, "rows": rows});
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(if tiny {
        "failover-tiny.json"
    } else {
        "failover.json"
    });
    let _ = std::fs::write(
        &path,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    );
    println!("| lease_ttl | detection, no failover (median) | failover: kill → new leader's step (median / p95 / max) | failover ÷ (TTL + 1 interval) |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {}s | {:.2} s | {:.2} / {:.2} / {:.2} s | {:.2} |",
            r["ttl"],
            f(&r["detect"]["median"]),
            f(&r["failover"]["median"]),
            f(&r["failover"]["p95"]),
            f(&r["failover"]["max"]),
            f(&r["ratio_to_bound"])
        );
    }
    println!("\nwrote {}", path.display());
    for r in &rows {
        // A failover that takes longer than twice the bound is a defect,
        // not noise: say so loudly.
        assert!(
            f(&r["failover"]["max"]) < 2.0 * (f(&r["ttl"]) + 1.0) + 5.0,
            "failover far beyond lease TTL + interval: {r}"
        );
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn run(ttl: Duration, trials: usize) -> Value {
    let etcd = Etcd::start();
    let exp = Exporter::start("demo_errors_ratio{domain=\"base\"} 0.001\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("count(demo_errors_ratio)", "\"1\"");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n  undo:\n    steps:\n      - exec: {{argv: [\"{}\", \"undo-{{{{ labels.domain }}}}\"], env: {{REC: \"{}\"}}, timeout: 60s}}\nrules:\n  - name: errors\n    every: 1s\n    queries: {{ratio: max by (domain) (demo_errors_ratio)}}\n    by: [domain]\n    condition: ratio > 0.05\n    actions: [undo]\n    cooldown: 1h\n",
        recorder(tmp.path()).display(),
        rec.display()
    );
    let prefix = format!("/ripcord/bench-{}", ttl.as_secs());
    let member = |name: &str| {
        let ha = format!(
            "limits: {{max_actions_per_hour: 1000}}\nha: {{name: {name}, etcd: {{endpoints: [{}], prefix: {prefix}, lease_ttl: {}s}}}}\n",
            etcd.endpoints().join(", "),
            ttl.as_secs()
        );
        let mut rc = Ripcord::new(&prom.url(), &ha, &rules);
        spawn(&mut rc);
        rc
    };
    let mut members = [member("a"), member("b")];
    let mut metrics = String::from("demo_errors_ratio{domain=\"base\"} 0.001\n");
    let started = |what: &str| {
        recorded(&rec)
            .into_iter()
            .find(|(n, e, _)| n == what && e == "start")
            .map(|(_, _, t)| t)
    };
    let mut detect = Vec::new();
    let mut failover = Vec::new();
    for k in 0..trials * 2 {
        let kill = k % 2 == 1;
        wait_until("a leader, and a standby that is a member", LONG, || {
            members.iter().filter(|m| leading(m) == Some(true)).count() == 1
                && members.iter().all(|m| leading(m).is_some())
                && members.iter().any(|m| members_seen(m) == 2)
        });
        let li = members
            .iter()
            .position(|m| leading(m) == Some(true))
            .unwrap_or(0);
        // Not a wait for a condition: it spreads the trials' start over the
        // 1 s scrape and evaluation phase, which decides detection time.
        std::thread::sleep(Duration::from_millis(137 * (k as u64 % 7)));
        let domain = format!("t{k}");
        metrics.push_str(&format!("demo_errors_ratio{{domain=\"{domain}\"}} 0.2\n"));
        let t0 = unix_now();
        if kill {
            let _ = members[li].signal(nix::sys::signal::Signal::SIGKILL);
        }
        exp.set(&metrics);
        let what = format!("undo-{domain}");
        wait_until("the step to start", LONG, || started(&what).is_some());
        let took = started(&what).unwrap_or(f64::NAN) - t0;
        // The breach is over once acted on (its cooldown keeps it closed).
        metrics = metrics.replace(
            &format!("\"{domain}\"}} 0.2"),
            &format!("\"{domain}\"}} 0.001"),
        );
        exp.set(&metrics);
        if kill {
            failover.push(took);
            eprintln!("ttl {ttl:?} trial {}: failover {took:.2} s", k / 2);
            spawn(&mut members[li]);
        } else {
            detect.push(took);
            eprintln!("ttl {ttl:?} trial {}: detection {took:.2} s", k / 2);
        }
    }
    let med = median(&failover);
    json!({
        "ttl": ttl.as_secs(),
        "detect": summary(&detect),
        "failover": summary(&failover),
        "ratio_to_bound": med / (ttl.as_secs_f64() + 1.0),
        "failover_minus_detect": med - median(&detect),
    })
}

fn members_seen(rc: &Ripcord) -> usize {
    status(rc)
        .and_then(|s| s["ha"]["members"].as_array().map(Vec::len))
        .unwrap_or(0)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn median(xs: &[f64]) -> f64 {
    percentile(xs, 0.5)
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn summary(xs: &[f64]) -> Value {
    json!({
        "n": xs.len(),
        "median": median(xs),
        "p95": percentile(xs, 0.95),
        "max": xs.iter().copied().fold(f64::NAN, f64::max),
        "all": xs,
    })
}
