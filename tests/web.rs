//! The web page in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver with fantoccini, against the
//! real daemon and a real Prometheus.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use ripcord::journal::Entry;
use ripcord::rule::{HaltReason, Phase, Status};

use crate::support::live::*;
use crate::support::net::{free_port, http_with};

const LONG: Duration = Duration::from_secs(60);
const TOKEN: &str = "w3b-t0ken-for-the-browser-test";

/// chromedriver on a free loopback port, stopped with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (Debian's chromium-driver; scripts/test installs it)");
        // It listens once it is ready for sessions.
        wait_until("chromedriver to listen", LONG, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1280,800",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in headless Chromium")
}

/// Polls `cond` (async) until it holds or `deadline` passes.
async fn until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The text of the overview's row for `rule`, reloading the page.
async fn row(c: &Client, base: &str, rule: &str) -> String {
    if c.goto(&format!("{base}/")).await.is_err() {
        return String::new();
    }
    match c
        .find(Locator::Css(&format!("tr[data-rule=\"{rule}\"]")))
        .await
    {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The text of the first element matching `css`, once it contains
/// `needle` (the click's navigation may still be under way).
async fn text_with(c: &Client, css: &str, needle: &str) -> String {
    let end = std::time::Instant::now() + LONG;
    let mut last = String::new();
    while std::time::Instant::now() < end {
        last = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if last.contains(needle) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {css} to say {needle:?}; it says {last:?}");
}

/// Finds `css` and does `what` to it, again if the page's own refresh
/// replaced the element in between (a stale element).
async fn on(c: &Client, css: &str, keys: Option<&str>) {
    let end = std::time::Instant::now() + LONG;
    let mut last = String::new();
    while std::time::Instant::now() < end {
        let done = match c.find(Locator::Css(css)).await {
            Ok(e) => match keys {
                Some(k) => e.send_keys(k).await,
                None => e.click().await,
            },
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => return,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot use {css}: {last}");
}

/// Where the screenshots go: kept as CI artefacts under `target/`.
fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/web");
    std::fs::create_dir_all(&dir).expect("target/web");
    dir
}

/// Every `src`, `href` and `action` on the page points at this host, but
/// the links to Prometheus's graph page (`a.graph`, which a person may
/// follow; the page itself loads nothing from there), and every resource
/// the browser loaded came from this host.
async fn assert_nothing_leaves_the_host(c: &Client, base: &str, prom: &str) {
    let refs = c
        .execute(
            "return Array.from(document.querySelectorAll('[src],[href],[action]')).map(e => [e.src || e.href || e.action, e.matches('a.graph')]);",
            vec![],
        )
        .await
        .expect("refs");
    let loaded = c
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name);",
            vec![],
        )
        .await
        .expect("resources");
    for r in refs.as_array().expect("a list") {
        let (url, graph) = (
            r[0].as_str().unwrap_or_default(),
            r[1].as_bool() == Some(true),
        );
        if graph {
            assert!(
                url.starts_with(&format!("{prom}/graph?g0.expr=")),
                "a graph link goes to the configured Prometheus: {url}"
            );
        } else {
            assert!(
                url.starts_with(base),
                "the page refers outside the host: {url} (base {base})"
            );
        }
    }
    for r in loaded.as_array().expect("a list") {
        let r = r.as_str().unwrap_or_default();
        assert!(
            r.starts_with(base),
            "the page loaded something from outside the host: {r} (base {base})"
        );
    }
    assert!(
        !loaded.as_array().expect("a list").is_empty(),
        "the browser loaded the page's own CSS and script"
    );
}

/// How many elements match `css` on the current page.
async fn count(c: &Client, css: &str) -> usize {
    c.find_all(Locator::Css(css)).await.map_or(0, |v| v.len())
}

#[test]
fn the_page_lists_rules_and_a_logged_in_person_vetoes_and_pauses() {
    let exp = Exporter::start("checkout_ratio 0.001\nsearch_ratio 0.001\nlogin_ratio 0.001\nedge_ratio{domain=\"chat\"} 0.001\nedge_ratio{domain=\"match\"} 0.002\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("search_ratio", "0.001");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let script = recorder(tmp.path());
    let action = |name: &str| {
        format!(
            "  {name}:\n    steps: [{{exec: {{argv: [\"{}\", \"{name}\"], env: {{REC: \"{}\"}}}}}}]\n",
            script.display(),
            rec.display()
        )
    };
    let rules = format!(
        "actions:\n{}{}{}{}rules:\n  - name: login-errors\n    every: 1s\n    queries: {{ratio: max(login_ratio)}}\n    condition: ratio > 0.05\n    actions: [undo-login]\n  - name: checkout-errors\n    every: 1s\n    queries: {{ratio: max(checkout_ratio)}}\n    condition: ratio > 0.05\n    actions: [undo-checkout]\n    approval: {{timeout: 10m, on_timeout: abort}}\n  - name: search-errors\n    every: 1s\n    queries: {{ratio: max(search_ratio)}}\n    condition: ratio > 0.05\n    actions: [undo-search]\n",
        action("undo-drill"),
        action("undo-login"),
        action("undo-checkout"),
        action("undo-search")
    );
    let mut rc = Ripcord::new(&prom.url(), "api: {token: \"${env:API_TOKEN}\"}\n", &rules);
    rc.env.push(("API_TOKEN".into(), TOKEN.into()));
    // A second file, for the overview's file filter.
    std::fs::write(
        rc.path("rules.d/drills.yaml"),
        "rules:\n  - name: drill-target\n    every: 1s\n    queries: {v: vector(0)}\n    condition: v > 1\n    actions: [undo-drill]\n  - name: edge\n    every: 1s\n    queries: {v: max by (domain) (edge_ratio)}\n    by: [domain]\n    condition: v > 0.5\n    notify: []\n",
    )
    .expect("write drills.yaml");
    rc.start();
    let port = rc.listen;
    let base = format!("http://127.0.0.1:{port}");

    // A control without a session is refused, whatever its form says.
    let (code, body) = http_with(
        "POST",
        port,
        "/web/pause",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "csrf=guess&for=1h&reason=x",
        Duration::from_secs(5),
    )
    .expect("answer");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("log in first"), "{body}");

    let driver = Driver::start();
    let profile = tempfile::tempdir().expect("profile");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let c = browser(&driver, profile.path()).await;
        // With a token configured, reading needs a login.
        c.goto(&format!("{base}/")).await.expect("goto");
        let url = c.current_url().await.expect("url");
        assert_eq!(url.path(), "/login", "reading needs a login: {url}");
        c.find(Locator::Id("name"))
            .await
            .expect("name")
            .send_keys("alice")
            .await
            .expect("type");
        c.find(Locator::Id("token"))
            .await
            .expect("token")
            .send_keys(TOKEN)
            .await
            .expect("type");
        c.find(Locator::Id("login"))
            .await
            .expect("button")
            .click()
            .await
            .expect("click");

        // The overview lists the running daemon's rules with their states.
        until("both rules listed as ok", LONG, || async {
            let a = row(&c, &base, "checkout-errors").await;
            let b = row(&c, &base, "search-errors").await;
            a.contains("ok") && b.contains("ok")
        })
        .await;
        let health = c
            .find(Locator::Id("health"))
            .await
            .expect("health")
            .text()
            .await
            .expect("text");
        assert!(health.contains("Prometheus answers"), "{health}");
        assert_nothing_leaves_the_host(&c, &base, &prom.url()).await;

        // Each row draws its recent values, with the condition's threshold.
        until("search-errors' sparkline to have a line", LONG, || async {
            row(&c, &base, "search-errors").await;
            count(&c, "tr[data-rule=\"search-errors\"] svg.spark polyline").await > 0
        })
        .await;
        assert_eq!(
            count(&c, "tr[data-rule=\"search-errors\"] svg.spark line.threshold").await,
            1,
            "ratio > 0.05 draws the threshold 0.05"
        );
        let label = c
            .find(Locator::Css("tr[data-rule=\"search-errors\"] svg.spark title"))
            .await
            .expect("sparkline title")
            .html(true)
            .await
            .expect("title text");
        assert!(
            label.contains("ratio: last") && label.contains("from 0.001 to 0.001") && label.contains("threshold 0.05"),
            "{label}"
        );
        let row_text = row(&c, &base, "search-errors").await;
        assert!(row_text.contains("breaches when ratio > 0.05"), "{row_text}");
        assert!(row_text.contains("rules.d/rules.yaml"), "{row_text}");

        // A `by:` rule shows a row per instance, with its labels.
        until("edge's two instances listed", LONG, || async {
            row(&c, &base, "drill-target").await;
            count(&c, "tr[data-rule^=\"edge{\"]").await == 2
        })
        .await;
        let chat = c
            .find(Locator::Css("tr[data-rule=\"edge{domain=\\\"chat\\\"}\"]"))
            .await
            .expect("chat's row")
            .text()
            .await
            .expect("text");
        assert!(chat.contains("domain=chat") && chat.contains("ok"), "{chat}");

        // The file filter keeps one file's rules, with the state filter.
        on(&c, "nav.files a[data-file$=\"drills.yaml\"]", None).await;
        until("only drills.yaml's rules listed", LONG, || async {
            count(&c, "tr[data-rule=\"drill-target\"]").await == 1
                && count(&c, "tr[data-rule]").await == 3
        })
        .await;
        let url = c.current_url().await.expect("url");
        assert!(url.query().unwrap_or_default().contains("file="), "{url}");
        on(&c, "nav.filters a.state-ok", None).await;
        until("state and file filters together", LONG, || async {
            let u = c.current_url().await.map(|u| u.query().unwrap_or_default().to_string());
            u.is_ok_and(|q| q.contains("state=ok") && q.contains("file="))
                && count(&c, "tr[data-rule]").await == 3
        })
        .await;
        c.goto(&format!("{base}/")).await.expect("goto");

        // A rule's page shows it as loaded; a drill from there runs nothing.
        on(&c, "tr[data-rule=\"drill-target\"] a", None).await;
        let page = text_with(&c, "main", "undo-drill").await;
        assert!(page.contains("vector(0)") && page.contains("v > 1"), "{page}");
        // Its definition as written, and a graph link per query.
        let yaml = text_with(&c, "#yaml", "name: drill-target").await;
        assert!(
            yaml.contains("condition: v > 1") && yaml.contains("every: 1s") && yaml.contains("undo-drill"),
            "{yaml}"
        );
        assert!(page.contains("drills.yaml"), "{page}");
        assert_eq!(count(&c, "a.graph").await, 1, "one graph link per query");
        assert_nothing_leaves_the_host(&c, &base, &prom.url()).await;
        on(&c, "#drill", None).await;
        text_with(&c, ".msg", "(dry-run)").await;
        until("the drill to be recorded as would-run", LONG, || async {
            rc.journal().iter().any(|e| matches!(e, Entry::StepIntent { action, dry_run: true, .. } if action == "undo-drill"))
        })
        .await;

        // An incident's page shows its steps, from the journal.
        exp.set("checkout_ratio 0.001\nsearch_ratio 0.001\nlogin_ratio 0.2\n");
        until("login-errors rolled back, verifying", LONG, || async {
            row(&c, &base, "login-errors").await.contains("verifying")
        })
        .await;
        on(&c, "tr[data-rule=\"login-errors\"] a[href^=\"/incidents/\"]", None).await;
        let timeline = text_with(&c, "#timeline", "undo-login step 1 succeeded: exit 0").await;
        assert!(timeline.contains("undo-login step 1 started"), "{timeline}");
        assert!(
            timeline.contains("pending → firing") || timeline.contains("ok → firing"),
            "{timeline}"
        );
        assert_eq!(count(&c, "a.graph").await, 1, "one graph link per query");
        let shot = c.screenshot().await.expect("screenshot");
        std::fs::write(shots().join("incident.png"), shot).expect("write incident.png");
        assert_nothing_leaves_the_host(&c, &base, &prom.url()).await;

        // The rule's backtest over the last minutes sees the breach that
        // opened this incident, and draws the plot `backtest --plot` draws.
        c.goto(&format!("{base}/rules/login-errors")).await.expect("goto");
        on(&c, "input[name=from]", None).await;
        let from = c.find(Locator::Css("input[name=from]")).await.expect("from");
        from.clear().await.expect("clear");
        from.send_keys("-3m").await.expect("type");
        on(&c, "#run-backtest", None).await;
        let summary = text_with(&c, "#backtest-summary", "incident(s)").await;
        let incidents: usize = summary
            .split(" incident(s)")
            .next()
            .and_then(|s| s.split_whitespace().last())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count of incidents in {summary:?}"));
        assert!(incidents >= 1, "the backtest sees the breach: {summary}");
        let timeline = text_with(&c, "#backtest-timeline", "would run undo-login").await;
        assert!(timeline.contains("→ firing"), "{timeline}");
        until("the plot to load", LONG, || async {
            c.execute(
                "const i = document.getElementById('backtest-plot'); return !!i && i.complete && i.naturalWidth > 0;",
                vec![],
            )
            .await
            .is_ok_and(|v| v.as_bool() == Some(true))
        })
        .await;
        let shot = c.screenshot().await.expect("screenshot");
        std::fs::write(shots().join("rule.png"), shot).expect("write rule.png");
        assert_nothing_leaves_the_host(&c, &base, &prom.url()).await;

        // A breach waits for approval; pressing veto stops it.
        exp.set("checkout_ratio 0.2\nsearch_ratio 0.001\nlogin_ratio 0.2\n");
        until("checkout-errors awaiting approval", LONG, || async {
            row(&c, &base, "checkout-errors")
                .await
                .contains("awaiting_approval")
        })
        .await;
        let shot = c.screenshot().await.expect("screenshot");
        std::fs::write(shots().join("overview.png"), shot).expect("write overview.png");
        on(&c, "tr[data-rule=\"checkout-errors\"] button.veto", None).await;
        text_with(&c, ".msg", "vetoed").await;
        until("checkout-errors vetoed", LONG, || async {
            row(&c, &base, "checkout-errors").await.contains("vetoed")
        })
        .await;

        // Pause from the page: a new breach opens an incident that runs nothing.
        on(&c, "input[name=for]", Some("1h")).await;
        on(&c, "input[name=reason]", Some("cutover freeze")).await;
        on(&c, "#pause", None).await;
        text_with(&c, "#health", "PAUSED").await;
        exp.set("checkout_ratio 0.2\nsearch_ratio 0.2\nlogin_ratio 0.2\n");
        until("search-errors opened, paused", LONG, || async {
            row(&c, &base, "search-errors").await.contains("paused")
        })
        .await;
        let shot = c.screenshot().await.expect("screenshot");
        std::fs::write(shots().join("overview-paused.png"), shot).expect("write png");
        let _ = c.close().await;
    });

    // The journal says who vetoed, from where, and that nothing ran.
    let vetoed_by = rc.journal().into_iter().find_map(|e| match e {
        Entry::State { rule, state, .. } if rule == "checkout-errors" => match state.status {
            Status::Open(i) => match i.phase {
                Phase::Halted(HaltReason::Vetoed { by }) => Some(by),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    });
    assert_eq!(vetoed_by.as_deref(), Some("alice (web, from 127.0.0.1)"));
    let ran: Vec<String> = recorded(&rec)
        .into_iter()
        .filter(|(_, e, _)| e == "start")
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(
        ran,
        ["undo-login"],
        "only login-errors' rollback ran: checkout was vetoed, search paused"
    );
    assert!(
        rc.log()
            .contains("paused: cutover freeze (by alice (web, from 127.0.0.1))"),
        "{}",
        rc.log()
    );
}

#[test]
fn an_incidents_timeline_outlives_the_journals_compaction_at_restart() {
    let exp = Exporter::start("demo_errors_ratio 0.2\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.2");
    let tmp = tempfile::tempdir().expect("tmp");
    let rec = tmp.path().join("rec");
    let rules = format!(
        "actions:\n  undo:\n    steps: [{{exec: {{argv: [\"{}\", \"undo\"], env: {{REC: \"{}\"}}}}}}]\nrules:\n  - name: r\n    every: 1s\n    queries: {{x: max(demo_errors_ratio)}}\n    condition: x > 0.05\n    actions: [undo]\n",
        recorder(tmp.path()).display(),
        rec.display()
    );
    let mut rc = Ripcord::new(&prom.url(), "web: {read: open}\n", &rules);
    rc.start();
    let mut incident = String::new();
    wait_until("the step's result in the journal", LONG, || {
        rc.journal().into_iter().any(|e| match e {
            Entry::StepResult { incident: i, .. } => {
                incident = i;
                true
            }
            _ => false,
        })
    });
    rc.signal(nix::sys::signal::Signal::SIGTERM);
    rc.start();
    // The restart compacted the journal: the step is no longer in it.
    assert!(
        !rc.journal()
            .iter()
            .any(|e| matches!(e, Entry::StepResult { .. } | Entry::StepIntent { .. })),
        "the journal was compacted at start: {:?}",
        rc.journal()
    );
    let (code, page) = http_get(rc.listen, &format!("/incidents/{incident}")).expect("answer");
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("undo step 1 started"), "{page}");
    assert!(page.contains("undo step 1 succeeded: exit 0"), "{page}");
    assert!(page.contains("ok → firing"), "{page}");
    assert!(
        !page.contains("earlier entries are no longer kept"),
        "the archive kept the incident whole: {page}"
    );
    let (code, rule) = http_get(rc.listen, "/rules/r").expect("answer");
    assert_eq!(code, 200, "{rule}");
    assert!(rule.contains(&format!("/incidents/{incident}")), "{rule}");
}
