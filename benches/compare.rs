//! ripcord side by side with its peers, measured in one run on one machine:
//!
//! - detection latency: a metric flips at a recorded instant; ripcord's
//!   first action step starts (an exec step that records the time) versus
//!   a Prometheus alerting rule → Alertmanager → webhook receiver (at the
//!   peers' defaults and tuned to the interval) and vmalert → the same
//!   Alertmanager (tuned), against the limit: when Prometheus first scraped
//!   the flipped value. At 1 s and 5 s intervals, each pooled over several
//!   fresh setups;
//! - evaluation cost: N rules (100, 1 000, 10 000) over matching series, run
//!   by ripcord and by vmalert one after the other against the same
//!   Prometheus, at the same interval for the same wall time;
//! - footprint: idle RSS with 100 rules, start-up to READY=1 and reload
//!   with 10 000 rules.
//!
//! `cargo bench --bench compare` runs it all (about 20 minutes) and writes
//! target/bench/results.json and target/bench/bench.svg; `-- --tiny` runs a
//! tiny configuration in seconds (CI runs that, to keep the harness
//! working). It needs Debian's prometheus, prometheus-alertmanager and
//! victoria-metrics (vmalert); `scripts/bench` installs them.
//!
//! `-- --symbol-order` does not measure: it lists the functions ripcord's
//! daemon runs and writes packaging/symbol-order.txt (see `symbol_order`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

#[path = "../tests/support/net.rs"]
mod net;
use net::{encode, free_port, http};

fn wait_until(what: &str, deadline: Duration, cond: impl FnMut() -> bool) {
    assert!(
        poll(deadline, cond),
        "timed out after {deadline:?} waiting for {what}"
    );
}

/// Polls `cond` every 20 ms until it holds (true) or `deadline` passes.
fn poll(deadline: Duration, cond: impl FnMut() -> bool) -> bool {
    net::poll(deadline, Duration::from_millis(20), cond)
}

/// The ripcord measured: `RIPCORD_BIN`, which scripts/bench sets to the
/// release build packages ship (build.rs links it in the order of
/// packaging/symbol-order.txt), or else the one cargo built for this
/// benchmark, which differs: its dependencies' features are unified with
/// the dev-dependencies', so its functions have other names.
static RIPCORD: LazyLock<String> = LazyLock::new(|| {
    std::env::var("RIPCORD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ripcord").to_owned())
});

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The exec step ripcord runs: `compare --record FILE TRIAL`.
    if args.get(1).map(String::as_str) == Some("--record") {
        record(&args[2], &args[3]);
        return;
    }
    let tiny = args.iter().any(|a| a == "--tiny");
    // `--replot FILE.json`: the tables and the plot again from saved results.
    if let Some(i) = args.iter().position(|a| a == "--replot") {
        let path = PathBuf::from(args.get(i + 1).expect("--replot FILE.json"));
        let text = std::fs::read_to_string(&path).expect("results");
        let results: Value = serde_json::from_str(&text).expect("results JSON");
        plot(&results, &path.with_extension("svg"));
        println!("{}", markdown(&results));
        return;
    }
    if args.iter().any(|a| a == "--symbol-order") {
        symbol_order();
        return;
    }
    let mut plan = if tiny { Plan::tiny() } else { Plan::full() };
    // `--trials N`, `--spread SECONDS` (defaults run) and `--sizes 100,1000`
    // shorten a run while working on the harness.
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    if let Some(n) = opt("--trials").and_then(|n| n.parse().ok()) {
        plan.latency.iter_mut().for_each(|r| r.trials = n);
    }
    if let Some(n) = opt("--setups").and_then(|n| n.parse().ok()) {
        plan.latency.iter_mut().for_each(|r| r.setups = n);
    }
    // `--runs tuned_1s,tuned_5s`: only these latency runs.
    if let Some(list) = opt("--runs") {
        let keep: Vec<&str> = list.split(',').collect();
        plan.latency.retain(|r| keep.contains(&r.name));
    }
    if let Some(list) = opt("--sizes") {
        plan.sizes = list.split(',').filter_map(|n| n.parse().ok()).collect();
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).expect("mkdir target/bench");
    for tool in ["prometheus", "prometheus-alertmanager", "vmalert"] {
        if which(tool).is_none() {
            eprintln!("compare: `{tool}` not found; run scripts/bench (it installs Debian's prometheus, prometheus-alertmanager and victoria-metrics)");
            std::process::exit(2);
        }
    }
    let mut results = json!({
        "machine": machine(),
        "versions": versions(),
        "plan": plan.describe(),
    });
    // `--series-only`: the many-series rows alone (printed, not saved).
    if args.iter().any(|a| a == "--series-only") {
        results["series"] = series_cost(&plan);
        println!("{}", markdown(&results));
        return;
    }
    // `--cost-only`: evaluation cost, many series and footprint, no latency.
    let cost_only = args.iter().any(|a| a == "--cost-only");
    if !cost_only {
        eprintln!("== detection latency");
        results["latency"] = latency(&plan);
    }
    // `--latency-only`: the latency runs alone, saved apart.
    if args.iter().any(|a| a == "--latency-only") {
        std::fs::write(
            out.join("results-latency.json"),
            serde_json::to_string_pretty(&results).expect("json"),
        )
        .expect("write results");
        println!("{}", markdown(&results));
        return;
    }
    eprintln!("== evaluation cost");
    let (cost, footprint) = cost(&plan);
    results["cost"] = cost;
    results["footprint"] = footprint;
    eprintln!("== many series");
    results["series"] = series_cost(&plan);
    let json = out.join(if tiny {
        "results-tiny.json"
    } else if cost_only {
        "results-cost.json"
    } else {
        "results.json"
    });
    std::fs::write(&json, serde_json::to_string_pretty(&results).expect("json"))
        .expect("write results");
    let svg = out.join(if tiny { "bench-tiny.svg" } else { "bench.svg" });
    plot(&results, &svg);
    println!("{}", markdown(&results));
    eprintln!("wrote {} and {}", json.display(), svg.display());
    if tiny {
        check_tiny(&results);
    }
}

/// What to run: the full benchmark or the tiny one CI runs.
struct Plan {
    latency: Vec<LatencyRun>,
    sizes: Vec<usize>,
    /// Queries a second both evaluators aim at: interval = N / rate.
    query_rate: f64,
    min_wall: Duration,
    /// Many series: groups × series per group.
    series: (usize, usize),
}

impl Plan {
    fn full() -> Plan {
        let run = |name, secs, tuned, setups, trials, spread| LatencyRun {
            name,
            interval: Duration::from_secs(secs),
            tuned,
            setups,
            trials,
            spread: Duration::from_secs(spread),
        };
        Plan {
            latency: vec![
                run("tuned_1s", 1, true, 4, 8, 12),
                run("tuned_5s", 5, true, 3, 8, 40),
                run("defaults_1s", 1, false, 2, 10, 60),
            ],
            sizes: vec![100, 1000, 10_000],
            query_rate: 200.0,
            min_wall: Duration::from_secs(40),
            series: (100, 100),
        }
    }

    fn tiny() -> Plan {
        Plan {
            latency: vec![LatencyRun {
                name: "tuned_1s",
                interval: Duration::from_secs(1),
                tuned: true,
                setups: 1,
                trials: 3,
                spread: Duration::from_secs(2),
            }],
            sizes: vec![20],
            query_rate: 20.0,
            min_wall: Duration::from_secs(6),
            series: (4, 10),
        }
    }

    fn eval_interval(&self, n: usize) -> Duration {
        Duration::from_secs_f64((n as f64 / self.query_rate).max(1.0).round())
    }

    fn describe(&self) -> Value {
        json!({
            "latency_runs": self.latency.iter().map(|r| json!({
                "name": r.name, "interval_s": r.interval.as_secs_f64(), "tuned": r.tuned,
                "setups": r.setups, "flips_per_setup": r.trials, "spread_s": r.spread.as_secs_f64(),
            })).collect::<Vec<_>>(),
            "sizes": self.sizes,
            "query_rate": self.query_rate,
        })
    }
}

// ---------------------------------------------------------------- latency

/// One latency configuration, run on several fresh setups and pooled:
/// where each process's evaluation phase falls against the scrape decides
/// a single setup's numbers.
#[derive(Clone)]
struct LatencyRun {
    name: &'static str,
    /// The scrape interval, ripcord's `every:` and, tuned, the peers'
    /// evaluation interval.
    interval: Duration,
    /// Peers tuned to the interval (`group_wait: 0s`), or at their
    /// defaults (evaluation every 1m, `group_wait: 30s`).
    tuned: bool,
    setups: usize,
    /// Flips per setup.
    trials: usize,
    spread: Duration,
}

/// Every latency run, pooled over its setups.
fn latency(plan: &Plan) -> Value {
    let mut out = json!({});
    for run in &plan.latency {
        let mut pooled = Samples::default();
        let mut per_setup = Vec::new();
        for setup in 0..run.setups {
            eprintln!(
                "-- latency {}: setup {}/{}, {} flips over {:?}",
                run.name,
                setup + 1,
                run.setups,
                run.trials,
                run.spread
            );
            let s = latency_setup(run);
            eprintln!(
                "   medians: scraped {:.2}s, ripcord {:.2}s, Prometheus+AM {:.2}s, vmalert+AM {:.2}s",
                median(&s.scraped),
                median(&s.ripcord),
                median(&s.prometheus),
                median(&s.vmalert)
            );
            per_setup.push(json!({
                "scraped_median_s": median(&s.scraped),
                "ripcord_median_s": median(&s.ripcord),
                "prometheus_median_s": median(&s.prometheus),
                "vmalert_median_s": median(&s.vmalert),
            }));
            pooled.extend(s);
        }
        let ratio = |a: &[f64], b: &[f64], f: fn(&[f64]) -> f64| {
            if b.is_empty() {
                Value::Null
            } else {
                json!(f(a) / f(b))
            }
        };
        let max = |xs: &[f64]| xs.iter().copied().fold(f64::NAN, f64::max);
        out[run.name] = json!({
            "interval_s": run.interval.as_secs_f64(),
            "tuned": run.tuned,
            "setups": run.setups,
            "peer_eval_interval_s": if run.tuned { run.interval.as_secs_f64() } else { 60.0 },
            "peer_group_wait_s": if run.tuned { 0.0 } else { 30.0 },
            "scraped": summary(&pooled.scraped),
            "ripcord": summary(&pooled.ripcord),
            "prometheus": summary(&pooled.prometheus),
            "vmalert": if pooled.vmalert.is_empty() { Value::Null } else { summary(&pooled.vmalert) },
            "per_setup": per_setup,
            "ripcord_over_prometheus_median": ratio(&pooled.ripcord, &pooled.prometheus, median),
            "ripcord_over_prometheus_max": ratio(&pooled.ripcord, &pooled.prometheus, max),
            "ripcord_over_vmalert_median": ratio(&pooled.ripcord, &pooled.vmalert, median),
            "ripcord_over_scraped_median": ratio(&pooled.ripcord, &pooled.scraped, median),
        });
    }
    out
}

/// Seconds from each flip, per path.
#[derive(Default)]
struct Samples {
    /// Until Prometheus first scraped the flipped value: the limit.
    scraped: Vec<f64>,
    /// Until ripcord's rollback step started.
    ripcord: Vec<f64>,
    /// Prometheus' rule → Alertmanager → the webhook.
    prometheus: Vec<f64>,
    /// vmalert → Alertmanager → the webhook (tuned runs).
    vmalert: Vec<f64>,
}

impl Samples {
    fn extend(&mut self, o: Samples) {
        self.scraped.extend(o.scraped);
        self.ripcord.extend(o.ripcord);
        self.prometheus.extend(o.prometheus);
        self.vmalert.extend(o.vmalert);
    }
}

/// One fresh setup: `trials` series flip from 0 to 1 at random instants;
/// ripcord, Prometheus + Alertmanager and (tuned) vmalert + the same
/// Alertmanager watch the same series in the same Prometheus.
fn latency_setup(run: &LatencyRun) -> Samples {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let trials = run.trials;
    let secs = run.interval.as_secs().max(1);
    // The flags, and when each flipped value was first served to a scrape.
    let flags = Arc::new(Mutex::new(vec![0u8; trials]));
    let served: Arc<Mutex<BTreeMap<usize, f64>>> = Arc::default();
    let exporter = {
        let (flags, served) = (flags.clone(), served.clone());
        Server::start(move |_, _| {
            let at = now();
            let f = flags.lock().expect("lock");
            let mut s = served.lock().expect("lock");
            let mut body = String::from("# TYPE bench_flag gauge\n");
            for (i, v) in f.iter().enumerate() {
                if *v == 1 {
                    s.entry(i).or_insert(at);
                }
                body.push_str(&format!("bench_flag{{trial=\"{i}\"}} {v}\n"));
            }
            (200, body)
        })
    };
    // The webhook receiver: the first firing alert of each (source, trial).
    let hooked: Arc<Mutex<BTreeMap<(String, usize), f64>>> = Arc::default();
    let hook = {
        let hooked = hooked.clone();
        Server::start(move |_, body| {
            let at = now();
            if let Ok(v) = serde_json::from_str::<Value>(body) {
                for a in v["alerts"].as_array().into_iter().flatten() {
                    let l = &a["labels"];
                    if a["status"] == "firing" {
                        if let (Some(src), Some(t)) = (
                            l["source"].as_str(),
                            l["trial"].as_str().and_then(|t| t.parse().ok()),
                        ) {
                            hooked
                                .lock()
                                .expect("lock")
                                .entry((src.to_string(), t))
                                .or_insert(at);
                        }
                    }
                }
            }
            (200, String::new())
        })
    };
    let am_port = free_port();
    let group_wait = if run.tuned {
        "group_wait: 0s\n  group_interval: 1s\n  "
    } else {
        ""
    };
    std::fs::write(
        dir.join("am.yml"),
        format!(
            "route:\n  receiver: hook\n  group_by: [source, trial]\n  {group_wait}\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: \"http://127.0.0.1:{}/\", send_resolved: false}}]\n",
            hook.port
        ),
    )
    .expect("am.yml");
    let am = Proc::spawn(
        dir,
        "alertmanager",
        Command::new("prometheus-alertmanager").args([
            &format!("--config.file={}", dir.join("am.yml").display()),
            &format!("--storage.path={}", dir.join("am").display()),
            &format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=",
        ]),
    );
    let alert = "groups:\n  - name: bench\n    rules:\n      - alert: BenchBreach\n        expr: bench_flag > 0.5\n";
    std::fs::write(dir.join("alerts.yml"), alert).expect("alerts.yml");
    let eval = if run.tuned {
        format!(", evaluation_interval: {secs}s")
    } else {
        String::new()
    };
    let prom = Prom::start(
        dir,
        &format!(
            "global: {{scrape_interval: {secs}s{eval}, external_labels: {{source: prometheus}}}}\nrule_files: [\"{}\"]\nalerting:\n  alertmanagers: [{{static_configs: [{{targets: [\"127.0.0.1:{am_port}\"]}}]}}]\nscrape_configs:\n  - job_name: bench\n    static_configs: [{{targets: [\"127.0.0.1:{}\"]}}]\n",
            dir.join("alerts.yml").display(),
            exporter.port
        ),
    );
    prom.wait_for_series("count(bench_flag)", trials);
    // vmalert, tuned the same way, into the same Alertmanager.
    let vmalert = run.tuned.then(|| {
        std::fs::write(
            dir.join("vmalert.yml"),
            format!("groups:\n  - name: bench\n    interval: {secs}s\n    rules:\n      - alert: BenchBreach\n        expr: bench_flag > 0.5\n"),
        )
        .expect("vmalert.yml");
        Proc::spawn(
            dir,
            "vmalert",
            Command::new("vmalert").args([
                &format!("-datasource.url={}", prom.url()),
                &format!("-rule={}", dir.join("vmalert.yml").display()),
                &format!("-notifier.url=http://127.0.0.1:{am_port}"),
                &format!("-httpListenAddr=127.0.0.1:{}", free_port()),
                &format!("-evaluationInterval={secs}s"),
                "-external.label=source=vmalert",
            ]),
        )
    });

    // ripcord: one rule and one action per trial (two incidents never run
    // the same action at once), each recording when its step starts.
    let rec = dir.join("recorded");
    let me = std::env::current_exe().expect("current exe");
    let mut rules = String::from("actions:\n");
    for i in 0..trials {
        rules.push_str(&format!(
            "  record-{i}:\n    steps:\n      - exec: {{argv: [\"{}\", --record, \"{}\", \"{i}\"]}}\n",
            me.display(),
            rec.display()
        ));
    }
    rules.push_str("rules:\n");
    for i in 0..trials {
        rules.push_str(&format!(
            "  - name: trial-{i}\n    every: {secs}s\n    queries: {{v: 'bench_flag{{trial=\"{i}\"}}'}}\n    condition: v > 0.5\n    actions: [record-{i}]\n"
        ));
    }
    let ripcord = Ripcord::start(
        dir,
        &prom,
        &rules,
        "limits: {max_actions_per_hour: 100000}\n",
    );
    ripcord.wait_ready(Duration::from_secs(30));
    // Every side has evaluated the zeros (ripcord has placed its
    // evaluations on the data: its status shows the phase) before
    // anything flips.
    wait_until(
        "ripcord to learn its rules' data phase",
        Duration::from_secs(60),
        || {
            http(
                "GET",
                ripcord.api_port,
                "/api/v1/status",
                "",
                Duration::from_secs(5),
            )
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .is_some_and(|v| {
                v["rules"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().all(|r| r["data_phase"].is_string()))
            })
        },
    );
    std::thread::sleep(run.interval * 2 + Duration::from_secs(1));

    let mut at: Vec<(f64, usize)> = (0..trials)
        .map(|i| (rand_unit() * run.spread.as_secs_f64(), i))
        .collect();
    at.sort_by(|a, b| a.0.total_cmp(&b.0));
    let start = Instant::now();
    let mut flipped = vec![0.0; trials];
    for (offset, i) in at {
        let due = start + Duration::from_secs_f64(offset);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let mut f = flags.lock().expect("lock");
        f[i] = 1;
        flipped[i] = now();
    }
    // Defaults: up to 1m evaluation + 30s group wait + scrape and send.
    let deadline = if run.tuned {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(150)
    };
    let sources: &[&str] = if run.tuned {
        &["prometheus", "vmalert"]
    } else {
        &["prometheus"]
    };
    let seen = |src: &str, i: usize| {
        hooked
            .lock()
            .expect("lock")
            .contains_key(&(src.to_string(), i))
    };
    let done = || {
        recorded(&rec).len() == trials && (0..trials).all(|i| sources.iter().all(|s| seen(s, i)))
    };
    if !poll(deadline, done) {
        let (r, bad) = recorded_lines(&rec);
        let missing = |seen: &dyn Fn(usize) -> bool| -> Vec<usize> {
            (0..trials).filter(|i| !seen(*i)).collect()
        };
        panic!(
            "not every trial was seen within {deadline:?}: ripcord's step did not record trials {:?}, the webhook did not get Prometheus' alert for trials {:?} nor vmalert's for {:?}; unreadable record lines (a harness fault): {bad:?}\nripcord: {}\nalertmanager: {}\nprometheus: {}\nvmalert: {}",
            missing(&|i| r.contains_key(&i)),
            missing(&|i| seen("prometheus", i)),
            if run.tuned { missing(&|i| seen("vmalert", i)) } else { Vec::new() },
            ripcord.proc.log_tail(),
            am.log_tail(),
            prom.proc.log_tail(),
            vmalert.as_ref().map(|v| v.log_tail()).unwrap_or_default()
        );
    }
    let rec = recorded(&rec);
    let hooked = hooked.lock().expect("lock").clone();
    let served = served.lock().expect("lock").clone();
    let from_flip = |t: &dyn Fn(usize) -> Option<f64>| -> Vec<f64> {
        (0..trials)
            .filter_map(|i| Some(t(i)? - flipped[i]))
            .collect()
    };
    let out = Samples {
        scraped: from_flip(&|i| served.get(&i).copied()),
        ripcord: from_flip(&|i| rec.get(&i).copied()),
        prometheus: from_flip(&|i| hooked.get(&("prometheus".to_string(), i)).copied()),
        vmalert: if run.tuned {
            from_flip(&|i| hooked.get(&("vmalert".to_string(), i)).copied())
        } else {
            Vec::new()
        },
    };
    drop(vmalert);
    drop(ripcord);
    out
}

/// Appends `TRIAL TIME\n` to `file` in one `write()`: with O_APPEND a
/// short write lands whole, so two steps recording in the same instant
/// cannot interleave their lines (`writeln!` on a `File` is several
/// writes, and did).
fn record(file: &str, trial: &str) {
    let line = format!("{trial} {:.6}\n", now());
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .expect("open record file");
    f.write_all(line.as_bytes()).expect("record");
}

/// The first time each trial was recorded.
fn recorded(file: &Path) -> BTreeMap<usize, f64> {
    recorded_lines(file).0
}

/// The first time each trial was recorded, and the lines that could not
/// be read (a harness fault, said when a trial goes missing).
fn recorded_lines(file: &Path) -> (BTreeMap<usize, f64>, Vec<String>) {
    let mut m = BTreeMap::new();
    let mut bad = Vec::new();
    for l in std::fs::read_to_string(file).unwrap_or_default().lines() {
        let mut it = l.split(' ');
        match (
            it.next().map(str::parse),
            it.next().map(str::parse),
            it.next(),
        ) {
            (Some(Ok(t)), Some(Ok(at)), None) => {
                m.entry(t).or_insert(at);
            }
            _ => bad.push(l.to_string()),
        }
    }
    (m, bad)
}

// ------------------------------------------------------------------- cost

fn cost(plan: &Plan) -> (Value, Value) {
    let mut rows = Vec::new();
    let mut footprint = json!({});
    for &n in &plan.sizes {
        let interval = plan.eval_interval(n);
        let wall = plan.min_wall.max(interval * 3);
        eprintln!("-- {n} rules every {interval:?} for {wall:?}");
        let dir = tempfile::tempdir().expect("tempdir");
        let dir = dir.path();
        let mut body = String::from("# TYPE bench_value gauge\n");
        for i in 0..n {
            body.push_str(&format!("bench_value{{i=\"{i}\"}} {i}\n"));
        }
        let (_exporter, prom) = Prom::scraping(dir, body, "bench_value", n);

        // ripcord
        let mut rules = String::from("rules:\n");
        for i in 0..n {
            rules.push_str(&format!(
                "  - name: r-{i}\n    every: {}s\n    queries: {{v: 'bench_value{{i=\"{i}\"}}'}}\n    condition: v > 1000000000\n",
                interval.as_secs()
            ));
        }
        let (r, ripcord, start_to_ready) = run_ripcord(dir, &prom, &rules, wall);
        if n == 100 {
            // Busy: 100 evaluations a second.
            footprint["idle_rss_mb_100_rules"] = json!(r.mem.rss_mb);
        }
        if n == *plan.sizes.iter().max().unwrap_or(&n) {
            footprint["rules"] = json!(n);
            footprint["start_to_ready_s"] = json!(start_to_ready);
            footprint["reload_unchanged_s"] = json!(ripcord.reload(None));
            let changed = rules.replace("v > 1000000000", "v > 2000000000");
            footprint["reload_all_changed_s"] = json!(ripcord.reload(Some(&changed)));
        }
        drop(ripcord);

        // vmalert: the same rules as a Prometheus rule file.
        let mut vm_rules = format!(
            "groups:\n  - name: bench\n    interval: {}s\n    concurrency: 32\n    rules:\n",
            interval.as_secs()
        );
        for i in 0..n {
            vm_rules.push_str(&format!(
                "      - alert: r_{i}\n        expr: 'bench_value{{i=\"{i}\"}} > 1000000000'\n"
            ));
        }
        let v = run_vmalert(dir, &prom, &vm_rules, wall);
        if n == 100 {
            footprint["idle"] = idle(dir, &prom, n, plan.min_wall);
        }
        let expected = n as f64 * wall.as_secs_f64() / interval.as_secs_f64();
        let row = json!({
            "rules": n,
            "interval_s": interval.as_secs_f64(),
            "wall_s": wall.as_secs_f64(),
            "scheduled_evaluations": expected,
            "ripcord": r.side(),
            "vmalert": v.side(),
        });
        eprintln!("   ripcord {}; vmalert {}", r.brief(), v.brief());
        rows.push(row);
    }
    (Value::Array(rows), footprint)
}

/// Idle: the same `n` rules at the default interval (30 s; vmalert's group
/// at 30 s too), RSS after `wall`: what a daemon that watches a cutover
/// and otherwise waits holds.
fn idle(dir: &Path, prom: &Prom, n: usize, wall: Duration) -> Value {
    let mut rules = String::from("rules:\n");
    let mut vm_rules = String::from(
        "groups:\n  - name: bench\n    interval: 30s\n    concurrency: 32\n    rules:\n",
    );
    for i in 0..n {
        rules.push_str(&format!(
            "  - name: r-{i}\n    queries: {{v: 'bench_value{{i=\"{i}\"}}'}}\n    condition: v > 1000000000\n"
        ));
        vm_rules.push_str(&format!(
            "      - alert: r_{i}\n        expr: 'bench_value{{i=\"{i}\"}} > 1000000000'\n"
        ));
    }
    let (r, ripcord, _) = run_ripcord(dir, prom, &rules, wall);
    drop(ripcord);
    let v = run_vmalert(dir, prom, &vm_rules, wall);
    eprintln!(
        "   idle, {n} rules every 30s: ripcord RSS {:.1} MB, vmalert {:.1} MB",
        r.mem.rss_mb, v.mem.rss_mb
    );
    json!({"rules": n, "ripcord_rss_mb": r.mem.rss_mb, "vmalert_rss_mb": v.mem.rss_mb})
}

// ----------------------------------------------------------- symbol order

/// `--symbol-order`: the functions ripcord's daemon runs from start-up
/// through evaluations (at the default 30 s and at 1 s), `/metrics`,
/// `status` and a reload, written to packaging/symbol-order.txt in the
/// order they lie in this build. A release link places them together
/// (build.rs), so the pages of code a waiting daemon keeps mapped are
/// about the code it runs: the kernel maps file pages around each one
/// touched (fault-around), and scattered, a few MB of functions kept most
/// of the 10 MB of text resident (BENCHMARKS.md, *Footprint*).
///
/// Each function's entry gets a breakpoint that records its first hit
/// (benches/trace_functions.c, preloaded), so the list is exact, not a
/// sample. Run it again when the list has gone stale: packaging/build says
/// how many of its names the binary still has.
fn symbol_order() {
    if which("prometheus").is_none() {
        eprintln!("compare: `prometheus` not found; run scripts/bench --symbol-order");
        std::process::exit(2);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tracer = dir.join("trace_functions.so");
    let built = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&tracer)
        .arg(root.join("benches/trace_functions.c"))
        .arg("-lpthread")
        .status()
        .expect("cc");
    assert!(built.success(), "building the tracer failed");

    let symbols = text_symbols(Path::new(&*RIPCORD));
    // One per address: aliases share a function's code.
    let functions = || {
        symbols
            .iter()
            .enumerate()
            .filter(|(i, s)| *i == 0 || symbols[i - 1].addr != s.addr)
            .map(|(_, s)| s)
    };
    let text: u64 = functions().map(|s| s.size).sum();
    let funcs = dir.join("functions.txt");
    let list: String = functions().map(|s| format!("{:x}\n", s.addr)).collect();
    std::fs::write(&funcs, list).expect("functions.txt");

    let n = 100;
    let mut body = String::from("# TYPE bench_value gauge\n");
    for i in 0..n {
        body.push_str(&format!("bench_value{{i=\"{i}\"}} {i}\n"));
    }
    let (_exporter, prom) = Prom::scraping(dir, body, "bench_value", n);
    let mut hits = std::collections::BTreeSet::new();
    for every in ["", "    every: 1s\n"] {
        let mut rules = String::from("rules:\n");
        for i in 0..n {
            rules.push_str(&format!(
                "  - name: r-{i}\n{every}    queries: {{v: 'bench_value{{i=\"{i}\"}}'}}\n    condition: v > 1000000000\n"
            ));
        }
        let out = dir.join("hits.txt");
        let _ = std::fs::remove_file(&out);
        let ripcord = Ripcord::start_with(
            dir,
            &prom,
            &rules,
            "",
            &[
                ("LD_PRELOAD", &tracer),
                ("TRACE_FUNCS", &funcs),
                ("TRACE_OUT", &out),
            ],
        );
        ripcord.wait_ready(Duration::from_secs(120));
        let evaluations = |rounds: usize| {
            wait_until(
                &format!("{rounds} rounds of evaluations"),
                Duration::from_secs(180),
                || {
                    let m = scrape(ripcord.api_port, "/metrics");
                    sum_metric(&m, "ripcord_evaluations_total") >= (rounds * n) as f64
                },
            )
        };
        evaluations(2);
        let status = Command::new(&*RIPCORD)
            .arg("-c")
            .arg(dir.join("ripcord.yaml"))
            .arg("status")
            .stdout(Stdio::null())
            .status()
            .expect("ripcord status");
        assert!(status.success(), "ripcord status failed");
        ripcord.reload(None);
        evaluations(3);
        drop(ripcord); // SIGTERM; the tracer writes its list as ripcord exits
        let text = std::fs::read_to_string(&out).expect("the tracer's list");
        hits.extend(text.lines().filter_map(|l| u64::from_str_radix(l, 16).ok()));
    }

    let names: String = symbols
        .iter()
        .filter(|s| hits.contains(&s.addr))
        .map(|s| format!("{}\n", s.name))
        .collect();
    let ran = || functions().filter(|s| hits.contains(&s.addr));
    let (count, bytes) = (ran().count(), ran().map(|s| s.size).sum::<u64>());
    let mb = |b: u64| b as f64 / 1e6;
    let summary = format!(
        "{count} functions, {:.2} of {:.2} MB of code",
        mb(bytes),
        mb(text)
    );
    let header = format!(
        "# The functions ripcord's daemon runs from start-up through evaluations,\n\
         # /metrics, status and a reload, which a release link places together\n\
         # (build.rs). Written by `scripts/bench --symbol-order` from\n\
         # {}, built by {}:\n\
         # {summary}.\n",
        first_line(Command::new(&*RIPCORD).arg("--version")),
        first_line(Command::new("rustc").arg("--version")),
    );
    let path = root.join("packaging/symbol-order.txt");
    std::fs::write(&path, header + &names).expect("write packaging/symbol-order.txt");
    eprintln!("wrote {}: {summary}", path.display());
}

/// A function in the executable's text: its address, size and symbol.
struct Symbol {
    addr: u64,
    size: u64,
    name: String,
}

/// The functions of `bin` with a size, by address (`nm`).
fn text_symbols(bin: &Path) -> Vec<Symbol> {
    let out = Command::new("nm")
        .args(["--defined-only", "-S"])
        .arg(bin)
        .output()
        .expect("nm");
    assert!(out.status.success(), "nm {} failed", bin.display());
    let mut symbols: Vec<Symbol> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [addr, size, kind, name] = f[..] else {
                return None;
            };
            let size = u64::from_str_radix(size, 16).ok().filter(|&s| s > 0)?;
            let addr = u64::from_str_radix(addr, 16).ok()?;
            matches!(kind, "t" | "T" | "w" | "W").then(|| Symbol {
                addr,
                size,
                name: name.to_owned(),
            })
        })
        .collect();
    symbols.sort_by(|a, b| (a.addr, &a.name).cmp(&(b.addr, &b.name)));
    symbols
}

/// Many series: `groups` × `per_group` series of `bench_series{g, i}`,
/// watched by one `by:` rule over them all and by one rule per group, at
/// the same interval, by ripcord and by vmalert (the same expressions as
/// alerting rules) one after the other against one Prometheus.
fn series_cost(plan: &Plan) -> Value {
    let (groups, per_group) = plan.series;
    let n = groups * per_group;
    let interval = Duration::from_secs(5);
    let wall = plan.min_wall;
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let mut body = String::from("# TYPE bench_series gauge\n");
    for g in 0..groups {
        for i in 0..per_group {
            body.push_str(&format!("bench_series{{g=\"{g}\",i=\"{i}\"}} {i}\n"));
        }
    }
    let (_exporter, prom) = Prom::scraping(dir, body, "bench_series", n);
    let every = interval.as_secs();
    // (name, ripcord rules, vmalert rules)
    let one = (
        format!("1 rule × {n} series (by:, all kept)"),
        format!("rules:\n  - name: all\n    every: {every}s\n    queries: {{v: bench_series}}\n    by: [g, i]\n    condition: v > 1000000000\n"),
        format!("groups:\n  - name: bench\n    interval: {every}s\n    rules:\n      - alert: all\n        expr: 'bench_series > 1000000000'\n"),
    );
    let mut r_many = String::from("rules:\n");
    let mut v_many = format!(
        "groups:\n  - name: bench\n    interval: {every}s\n    concurrency: 32\n    rules:\n"
    );
    for g in 0..groups {
        r_many.push_str(&format!("  - name: g{g}\n    every: {every}s\n    queries: {{v: 'bench_series{{g=\"{g}\"}}'}}\n    by: [i]\n    condition: v > 1000000000\n"));
        v_many.push_str(&format!(
            "      - alert: g{g}\n        expr: 'bench_series{{g=\"{g}\"}} > 1000000000'\n"
        ));
    }
    let many = (
        format!("{groups} rules × {per_group} series"),
        r_many,
        v_many,
    );
    // The same expression as vmalert's: Prometheus filters, ripcord keeps
    // only what breaches (alert-style), as vmalert does.
    let alert_style = (
        format!("1 alert-style rule × {n} series"),
        format!("rules:\n  - name: all\n    every: {every}s\n    queries: {{v: 'bench_series > 1000000000'}}\n    by: [g, i]\n"),
        one.2.clone(),
    );
    let mut rows = Vec::new();
    for (name, r_rules, v_rules) in [one, alert_style, many] {
        eprintln!("-- {name} every {interval:?} for {wall:?}");
        let (r, ripcord, _) = run_ripcord(dir, &prom, &r_rules, wall);
        let status = scrape(ripcord.api_port, "/api/v1/status");
        let instances = serde_json::from_str::<Value>(&status)
            .ok()
            .and_then(|v| v["rules"].as_array().map(Vec::len))
            .unwrap_or(0);
        drop(ripcord);

        let v = run_vmalert(dir, &prom, &v_rules, wall);
        eprintln!(
            "   ripcord {} ({instances} instances); vmalert {}",
            r.brief(),
            v.brief()
        );
        rows.push(json!({
            "config": name,
            "series": n,
            "interval_s": interval.as_secs_f64(),
            "wall_s": wall.as_secs_f64(),
            "ripcord_instances": instances,
            "ripcord": r.side(),
            "vmalert": v.side(),
        }));
    }
    Value::Array(rows)
}

/// vmalert with `rules` against `prom` for `wall`: its evaluations and
/// errors, CPU seconds, memory, wall time and Prometheus's CPU meanwhile.
fn run_vmalert(dir: &Path, prom: &Prom, rules: &str, wall: Duration) -> Run {
    std::fs::write(dir.join("vmalert.yml"), rules).expect("vmalert rules");
    let hook = Server::start(|_, _| (200, String::new()));
    let vm_port = free_port();
    let prom_cpu0 = cpu_seconds(prom.pid());
    let spawned = Instant::now();
    let vm = Proc::spawn(
        dir,
        "vmalert",
        Command::new("vmalert").args([
            &format!("-datasource.url={}", prom.url()),
            &format!("-rule={}", dir.join("vmalert.yml").display()),
            &format!("-notifier.url=http://127.0.0.1:{}", hook.port),
            &format!("-httpListenAddr=127.0.0.1:{vm_port}"),
        ]),
    );
    std::thread::sleep(wall.saturating_sub(spawned.elapsed()));
    let cpu = cpu_seconds(vm.pid());
    let mem = memory(vm.pid());
    let elapsed = spawned.elapsed().as_secs_f64();
    let prom_cpu = cpu_seconds(prom.pid()) - prom_cpu0;
    let m = scrape(vm_port, "/metrics");
    let evals = sum_metric(&m, "vmalert_alerting_rules_evaluations_total")
        .max(sum_metric(&m, "vmalert_execution_total"));
    let errors = sum_metric(&m, "vmalert_alerting_rules_errors_total")
        + sum_metric(&m, "vmalert_execution_errors_total");
    drop(vm);
    Run {
        evals,
        errors,
        cpu,
        mem,
        wall: elapsed,
        prom_cpu,
    }
}

/// ripcord with `rules` against `prom` for `wall` (start-up included),
/// still running so the caller can ask it more, and its time to READY=1.
fn run_ripcord(dir: &Path, prom: &Prom, rules: &str, wall: Duration) -> (Run, Ripcord, f64) {
    let prom_cpu0 = cpu_seconds(prom.pid());
    let spawned = Instant::now();
    let ripcord = Ripcord::start(dir, prom, rules, "");
    let ready = ripcord.wait_ready(Duration::from_secs(120));
    let start_to_ready = ready.duration_since(spawned).as_secs_f64();
    std::thread::sleep(wall.saturating_sub(spawned.elapsed()));
    let cpu = cpu_seconds(ripcord.pid());
    let mem = memory(ripcord.pid());
    let elapsed = spawned.elapsed().as_secs_f64();
    let prom_cpu = cpu_seconds(prom.pid()) - prom_cpu0;
    let m = scrape(ripcord.api_port, "/metrics");
    let evals = sum_metric(&m, "ripcord_evaluations_total");
    let errors = sum_metric(&m, "ripcord_evaluation_failures_total")
        + sum_metric(&m, "ripcord_missed_evaluations_total");
    let run = Run {
        evals,
        errors,
        cpu,
        mem,
        wall: elapsed,
        prom_cpu,
    };
    (run, ripcord, start_to_ready)
}

/// One tool's run over a wall time: its own evaluation and error counts,
/// its CPU seconds and memory, and Prometheus's CPU seconds meanwhile.
struct Run {
    evals: f64,
    errors: f64,
    cpu: f64,
    mem: Memory,
    wall: f64,
    prom_cpu: f64,
}

impl Run {
    fn brief(&self) -> String {
        format!(
            "{} evals, {:.2} CPU s, peak {:.1} MB",
            self.evals, self.cpu, self.mem.hwm_mb
        )
    }

    /// The run as a row of results.json.
    fn side(&self) -> Value {
        let per_k = self.evals / 1000.0;
        let per = |x: f64| if per_k > 0.0 { x / per_k } else { f64::NAN };
        json!({
            "evaluations": self.evals,
            "errors": self.errors,
            "cpu_s": self.cpu,
            "cpu_s_per_1000": per(self.cpu),
            "peak_rss_mb": self.mem.hwm_mb,
            "peak_rss_mb_per_1000": per(self.mem.hwm_mb),
            "rss_mb": self.mem.rss_mb,
            "wall_s": self.wall,
            "prometheus_cpu_share": self.prom_cpu / self.wall,
            "prometheus_cpu_s_per_1000": per(self.prom_cpu),
        })
    }
}

// ------------------------------------------------------------ processes

/// A child process, killed when dropped; its output goes to DIR/NAME.log.
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, cmd: &mut Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Proc {
            child,
            name: name.into(),
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = s.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Prom {
    proc: Proc,
    port: u16,
}

impl Prom {
    fn start(dir: &Path, config: &str) -> Prom {
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let port = free_port();
        let proc = Proc::spawn(
            dir,
            "prometheus",
            Command::new("prometheus").args([
                &format!("--config.file={}", dir.join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", dir.join("data").display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ]),
        );
        let p = Prom { proc, port };
        wait_until("Prometheus ready", Duration::from_secs(60), || {
            http("GET", p.port, "/-/ready", "", Duration::from_secs(30))
                .is_some_and(|(s, _)| s == 200)
        });
        p
    }

    /// An exporter serving `body` and a Prometheus scraping it every 5 s,
    /// returned once all `n` series of `metric` are queryable.
    fn scraping(dir: &Path, body: String, metric: &str, n: usize) -> (Server, Prom) {
        let exporter = Server::start(move |_, _| (200, body.clone()));
        let prom = Prom::start(
            dir,
            &format!(
                "global: {{scrape_interval: 5s}}\nscrape_configs:\n  - job_name: bench\n    static_configs: [{{targets: [\"127.0.0.1:{}\"]}}]\n",
                exporter.port
            ),
        );
        prom.wait_for_series(&format!("count({metric})"), n);
        (exporter, prom)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn wait_for_series(&self, count_query: &str, n: usize) {
        let q = format!("/api/v1/query?query={}", encode(count_query));
        wait_until(
            &format!("{n} series in Prometheus"),
            Duration::from_secs(60),
            || {
                http("GET", self.port, &q, "", Duration::from_secs(30))
                    .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                    .and_then(|v| {
                        v["data"]["result"][0]["value"][1]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .is_some_and(|c| c == n.to_string())
            },
        );
    }
}

/// `ripcord run` with a rule file. Its sd_notify messages are read as
/// systemd would, all the time, and kept with the instant they came.
struct Ripcord {
    proc: Proc,
    api_port: u16,
    rules: PathBuf,
    spawned: Instant,
    notes: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Ripcord {
    fn start(dir: &Path, prom: &Prom, rules: &str, extra: &str) -> Ripcord {
        Ripcord::start_with(dir, prom, rules, extra, &[])
    }

    /// `start` with more environment variables.
    fn start_with(
        dir: &Path,
        prom: &Prom,
        rules: &str,
        extra: &str,
        env: &[(&str, &Path)],
    ) -> Ripcord {
        let state = dir.join("ripcord-state");
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(dir.join("rules.d")).expect("mkdir");
        let rules_path = dir.join("rules.d/bench.yaml");
        std::fs::write(&rules_path, rules).expect("rules");
        let api_port = free_port();
        std::fs::write(
            dir.join("ripcord.yaml"),
            format!(
                "prometheus: {{url: \"{}\"}}\nrules: rules.d/*.yaml\nstate_dir: {}\nlisten: 127.0.0.1:{api_port}\n{extra}",
                prom.url(),
                state.display()
            ),
        )
        .expect("ripcord.yaml");
        let sock = dir.join("notify.sock");
        let _ = std::fs::remove_file(&sock);
        let notify = UnixDatagram::bind(&sock).expect("bind notify socket");
        let notes: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        {
            let notes = notes.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = notify.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    notes.lock().expect("lock").push((Instant::now(), msg));
                }
            });
        }
        let spawned = Instant::now();
        let proc = Proc::spawn(
            dir,
            "ripcord",
            Command::new(&*RIPCORD)
                .arg("-c")
                .arg(dir.join("ripcord.yaml"))
                .arg("run")
                .env("NOTIFY_SOCKET", &sock)
                .env("RUST_LOG", "warn")
                .envs(env.iter().copied()),
        );
        Ripcord {
            proc,
            api_port,
            rules: rules_path,
            spawned,
            notes,
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits for the first READY=1 since start; when it came.
    fn wait_ready(&self, deadline: Duration) -> Instant {
        self.ready_after(self.spawned, deadline)
    }

    /// Waits for a READY=1 that came after `since`; when it came.
    fn ready_after(&self, since: Instant, deadline: Duration) -> Instant {
        let mut at = None;
        let found = poll(deadline, || {
            at = self
                .notes
                .lock()
                .expect("lock")
                .iter()
                .find(|(t, m)| *t >= since && m.lines().any(|l| l == "READY=1"))
                .map(|(t, _)| *t);
            at.is_some()
        });
        match at {
            Some(at) if found => at,
            _ => panic!(
                "ripcord sent no READY=1 within {deadline:?}:\n{}",
                self.proc.log_tail()
            ),
        }
    }

    /// SIGHUP (after writing `rules`, if given): seconds until READY=1.
    fn reload(&self, rules: Option<&str>) -> f64 {
        if let Some(r) = rules {
            // Written aside and renamed in: the watcher sees one change.
            let tmp = self.rules.with_extension("tmp");
            std::fs::write(&tmp, r).expect("rules");
            std::fs::rename(&tmp, &self.rules).expect("rename");
        }
        let sent = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
        self.ready_after(sent, Duration::from_secs(60))
            .duration_since(sent)
            .as_secs_f64()
    }
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // rest starts at field 3 (state, not a number, skipped): utime is
    // field 14, stime 15 → indices 10 and 11 of the numeric ones.
    let ticks = f.get(10).copied().unwrap_or(0.0) + f.get(11).copied().unwrap_or(0.0);
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

struct Memory {
    rss_mb: f64,
    hwm_mb: f64,
}

fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    Memory {
        rss_mb: kb("VmRSS:"),
        hwm_mb: kb("VmHWM:"),
    }
}

// ------------------------------------------------------------------ HTTP

type Handler = dyn Fn(&str, &str) -> (u16, String) + Send + Sync;

/// A tiny threaded HTTP/1.1 server: `handler(request line, body)`.
struct Server {
    port: u16,
}

impl Server {
    fn start(handler: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &*handler);
                });
            }
        });
        Server { port }
    }
}

fn serve(mut conn: TcpStream, handler: &Handler) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut len = 0;
        let mut close = false;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let (status, answer) = handler(request.trim_end(), &String::from_utf8_lossy(&body));
        write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        )?;
        if close || request.ends_with("HTTP/1.0\r\n") {
            return Ok(());
        }
    }
}

fn scrape(port: u16, path: &str) -> String {
    http("GET", port, path, "", Duration::from_secs(30))
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The sum of every sample of a metric in the text exposition format.
fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// --------------------------------------------------------------- helpers

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A uniform number in [0, 1) (xorshift seeded from the clock: the flip
/// instants only need to be unrelated to the evaluators' phases).
fn rand_unit() -> f64 {
    static STATE: Mutex<u64> = Mutex::new(0);
    let mut s = STATE.lock().expect("lock");
    if *s == 0 {
        *s = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
    }
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    // Nearest rank.
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

fn summary(xs: &[f64]) -> Value {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    json!({
        "n": xs.len(),
        "median_s": median(xs),
        "p95_s": percentile(xs, 95.0),
        "min_s": sorted.first(),
        "max_s": sorted.last(),
        "samples_s": sorted,
    })
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory": mem,
        "kernel": first_line(Command::new("uname").arg("-r")),
    })
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let s = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            s.lines().next().unwrap_or_default().trim().to_owned()
        })
        .unwrap_or_default()
}

fn versions() -> Value {
    json!({
        "ripcord": first_line(Command::new(&*RIPCORD).arg("--version")),
        "prometheus": first_line(Command::new("prometheus").arg("--version")),
        "alertmanager": first_line(Command::new("prometheus-alertmanager").arg("--version")),
        "vmalert": first_line(Command::new("vmalert").arg("-version")),
    })
}

// --------------------------------------------------------------- report

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "–".into(),
    }
}

fn markdown(r: &Value) -> String {
    let mut s = String::new();
    s.push_str("### Detection latency (seconds from the flip, pooled over fresh setups)\n\n");
    s.push_str("| run | path | flips | median | p95 | min | max | ripcord ÷ path, median | max |\n|---|---|---|---|---|---|---|---|---|\n");
    let runs = r["latency"].as_object().cloned().unwrap_or_default();
    for (run, x) in &runs {
        let paths = [
            (
                "Prometheus first scraped it (the limit)",
                "scraped",
                "ripcord_over_scraped_median",
                "",
            ),
            ("ripcord (exec step starts)", "ripcord", "", ""),
            (
                if x["tuned"] == true {
                    "Prometheus rule (tuned) → Alertmanager (group_wait 0s) → webhook"
                } else {
                    "Prometheus rule (1m) → Alertmanager (group_wait 30s) → webhook"
                },
                "prometheus",
                "ripcord_over_prometheus_median",
                "ripcord_over_prometheus_max",
            ),
            (
                "vmalert (tuned) → Alertmanager (group_wait 0s) → webhook",
                "vmalert",
                "ripcord_over_vmalert_median",
                "",
            ),
        ];
        for (name, k, ratio, max_ratio) in paths {
            let y = &x[k];
            if y.is_null() {
                continue;
            }
            let r = |key: &str| {
                if key.is_empty() {
                    String::new()
                } else {
                    format!("{}×", f(&x[key]))
                }
            };
            s.push_str(&format!(
                "| {run} ({} setups) | {name} | {} | {} | {} | {} | {} | {} | {} |\n",
                x["setups"],
                y["n"],
                f(&y["median_s"]),
                f(&y["p95_s"]),
                f(&y["min_s"]),
                f(&y["max_s"]),
                r(ratio),
                r(max_ratio),
            ));
        }
    }
    if r["cost"].is_null() {
        return s;
    }
    s.push_str(
        "\n### Evaluation cost (same rules, interval and wall time; one after the other)\n\n",
    );
    s.push_str("| rules | interval | wall | tool | evaluations | errors | CPU s | CPU s / 1000 evals | peak RSS MB | peak RSS MB / 1000 evals | Prometheus CPU share | Prometheus CPU s / 1000 evals answered |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for row in r["cost"].as_array().into_iter().flatten() {
        for tool in ["ripcord", "vmalert"] {
            let t = &row[tool];
            s.push_str(&format!(
                "| {} | {}s | {}s | {tool} | {} | {} | {} | {} | {} | {} | {}% | {} |\n",
                row["rules"],
                f(&row["interval_s"]),
                f(&row["wall_s"]),
                t["evaluations"],
                t["errors"],
                f(&t["cpu_s"]),
                f(&t["cpu_s_per_1000"]),
                f(&t["peak_rss_mb"]),
                f(&t["peak_rss_mb_per_1000"]),
                f(&json!(
                    t["prometheus_cpu_share"].as_f64().unwrap_or(f64::NAN) * 100.0
                )),
                f(&t["prometheus_cpu_s_per_1000"]),
            ));
        }
        let ratio = |k: &str| {
            row["ripcord"][k].as_f64().unwrap_or(f64::NAN)
                / row["vmalert"][k].as_f64().unwrap_or(f64::NAN)
        };
        s.push_str(&format!(
            "| {} | | | **ripcord / vmalert** | | | | **{:.2}** | | **{:.2}** | | **{:.2}** |\n",
            row["rules"],
            ratio("cpu_s_per_1000"),
            ratio("peak_rss_mb_per_1000"),
            ratio("prometheus_cpu_s_per_1000")
        ));
    }
    s.push_str("\n### Many series (`by:` instances; same series, interval and wall time; one after the other)\n\n");
    s.push_str("| config | tool | rule evaluations | errors | CPU s | CPU ms / evaluation | peak RSS MB | Prometheus CPU share |\n|---|---|---|---|---|---|---|---|\n");
    for row in r["series"].as_array().into_iter().flatten() {
        for tool in ["ripcord", "vmalert"] {
            let t = &row[tool];
            let per = t["cpu_s"].as_f64().unwrap_or(f64::NAN)
                / t["evaluations"].as_f64().unwrap_or(f64::NAN)
                * 1000.0;
            s.push_str(&format!(
                "| {} | {tool}{} | {} | {} | {} | {:.3} | {} | {}% |\n",
                row["config"].as_str().unwrap_or_default(),
                if tool == "ripcord" {
                    format!(" ({} instances)", row["ripcord_instances"])
                } else {
                    String::new()
                },
                t["evaluations"],
                t["errors"],
                f(&t["cpu_s"]),
                per,
                f(&t["peak_rss_mb"]),
                f(&json!(
                    t["prometheus_cpu_share"].as_f64().unwrap_or(f64::NAN) * 100.0
                )),
            ));
        }
        let per = |tool: &str| {
            row[tool]["cpu_s"].as_f64().unwrap_or(f64::NAN)
                / row[tool]["evaluations"].as_f64().unwrap_or(f64::NAN)
        };
        let rss = |tool: &str| row[tool]["peak_rss_mb"].as_f64().unwrap_or(f64::NAN);
        s.push_str(&format!(
            "| {} | **ripcord / vmalert** | | | | **{:.2}** | **{:.2}** | |\n",
            row["config"].as_str().unwrap_or_default(),
            per("ripcord") / per("vmalert"),
            rss("ripcord") / rss("vmalert"),
        ));
    }
    let fp = &r["footprint"];
    s.push_str(&format!(
        "\n### Footprint\n\n| measure | value |\n|---|---|\n| RSS with 100 rules idle (every 30 s), ripcord / vmalert | {} / {} MB |\n| RSS with 100 rules evaluated every 1 s | {} MB |\n| start-up to READY=1, {} rules | {} s |\n| reload (SIGHUP → READY=1), {} rules unchanged | {} s |\n| reload, all {} rules changed | {} s |\n",
        f(&fp["idle"]["ripcord_rss_mb"]),
        f(&fp["idle"]["vmalert_rss_mb"]),
        f(&fp["idle_rss_mb_100_rules"]),
        fp["rules"],
        f(&fp["start_to_ready_s"]),
        fp["rules"],
        f(&fp["reload_unchanged_s"]),
        fp["rules"],
        f(&fp["reload_all_changed_s"]),
    ));
    s
}

fn check_tiny(r: &Value) {
    let x = &r["latency"]["tuned_1s"];
    for path in ["scraped", "ripcord", "prometheus", "vmalert"] {
        assert_eq!(x[path]["n"], json!(3), "{path}: {x}");
    }
    let row = &r["cost"][0];
    for tool in ["ripcord", "vmalert"] {
        assert!(
            row[tool]["evaluations"].as_f64().unwrap_or(0.0) > 0.0,
            "{tool} evaluated nothing: {row}"
        );
    }
    assert!(r["footprint"]["reload_all_changed_s"].as_f64().is_some());
    for row in r["series"].as_array().expect("series rows") {
        for tool in ["ripcord", "vmalert"] {
            assert!(
                row[tool]["evaluations"].as_f64().unwrap_or(0.0) > 0.0,
                "{tool} evaluated nothing: {row}"
            );
        }
        let alert_style = row["config"]
            .as_str()
            .is_some_and(|c| c.contains("alert-style"));
        assert!(
            alert_style || row["ripcord_instances"].as_u64().unwrap_or(0) >= 10,
            "ripcord kept an instance per series: {row}"
        );
    }
}

fn plot(r: &Value, path: &Path) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 440)).into_drawing_area();
    let _ = root.fill(&WHITE);
    let (left, right) = root.split_horizontally(550);

    // Latency: the empirical CDF of each path, log time axis.
    let mut series: Vec<(String, Vec<f64>, RGBColor)> = Vec::new();
    let colors = [
        RGBColor(200, 30, 30),
        RGBColor(30, 90, 200),
        RGBColor(120, 120, 120),
        RGBColor(30, 160, 60),
    ];
    // At 1 s, tuned: every path and the limit.
    let x = &r["latency"]["tuned_1s"];
    let samples = |k: &str| -> Vec<f64> {
        x[k]["samples_s"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .collect()
    };
    for (name, k, color) in [
        ("ripcord", "ripcord", colors[0]),
        ("Prometheus → Alertmanager", "prometheus", colors[1]),
        ("vmalert → Alertmanager", "vmalert", colors[3]),
        ("first scraped (the limit)", "scraped", colors[2]),
    ] {
        let xs = samples(k);
        if !xs.is_empty() {
            series.push((name.to_string(), xs, color));
        }
    }
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.5;
    let min = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(max, f64::min)
        .max(0.01)
        / 1.5;
    if let Ok(mut chart) = ChartBuilder::on(&left)
        .caption("Detection latency at 1 s (CDF)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(44)
        .build_cartesian_2d((min..max).log_scale(), 0.0..1.0)
    {
        let _ = chart
            .configure_mesh()
            .x_desc("seconds from the flip to the action / webhook")
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .y_desc("fraction of flips")
            .draw();
        for (name, mut xs, color) in series {
            xs.sort_by(f64::total_cmp);
            let n = xs.len() as f64;
            let pts: Vec<(f64, f64)> = xs
                .iter()
                .enumerate()
                .flat_map(|(i, &x)| [(x, i as f64 / n), (x, (i + 1) as f64 / n)])
                .collect();
            if let Ok(s) = chart.draw_series(LineSeries::new(pts, color.stroke_width(2))) {
                s.label(name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
        let _ = chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw();
    }

    // Cost: CPU seconds per 1000 evaluations against N, log-log.
    let rows: Vec<&Value> = r["cost"].as_array().into_iter().flatten().collect();
    let pts = |tool: &str, k: &str| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|row| Some((row["rules"].as_f64()?, row[tool][k].as_f64()?)))
            .filter(|p| p.1.is_finite() && p.1 > 0.0)
            .collect()
    };
    let all: Vec<f64> = ["ripcord", "vmalert"]
        .iter()
        .flat_map(|t| pts(t, "cpu_s_per_1000").into_iter().map(|p| p.1))
        .collect();
    let ymax = all.iter().copied().fold(0.001, f64::max) * 2.0;
    let ymin = all.iter().copied().fold(ymax, f64::min) / 2.0;
    let nmax = rows
        .iter()
        .filter_map(|r| r["rules"].as_f64())
        .fold(10.0, f64::max)
        * 2.0;
    let nmin = rows
        .iter()
        .filter_map(|r| r["rules"].as_f64())
        .fold(nmax, f64::min)
        / 2.0;
    if let Ok(mut chart) = ChartBuilder::on(&right)
        .caption("Evaluation cost", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d((nmin..nmax).log_scale(), (ymin..ymax).log_scale())
    {
        let _ = chart
            .configure_mesh()
            .x_desc("rules")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v:.2}"))
            .y_desc("CPU seconds per 1000 evaluations")
            .draw();
        for (tool, color) in [("ripcord", colors[0]), ("vmalert", colors[1])] {
            let p = pts(tool, "cpu_s_per_1000");
            let _ = chart.draw_series(p.iter().map(|&c| Circle::new(c, 4, color.filled())));
            if let Ok(s) = chart.draw_series(LineSeries::new(p, color.stroke_width(2))) {
                s.label(tool).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
        let _ = chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw();
    }
    let _ = root.present();
}
