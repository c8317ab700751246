//! Each action runner on its own, against real processes, files and a local
//! HTTP server; kubectl through the daemon with a recording kubectl first on
//! PATH (no Kubernetes API can be reached here) and with the real client
//! failing against a closed loopback port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use ripcord::actions::{exec::run_argv, run_step, StepContext};
use ripcord::config::{FileFormat, HttpStep, SecretString, Step};
use ripcord::rule::{Phase, Status, UnrecoveredReason};

use crate::support::live::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Gone, or a zombie waiting to be reaped: either way no longer running.
fn not_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn exec_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("tmp");
    let pids = dir.path().join("pids");
    let script = dir.path().join("spawner.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 300 &\necho $! > {p}\necho $$ >> {p}\nwait\n",
            p = pids.display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let started = Instant::now();
    let out = rt().block_on(run_argv(
        &[script.display().to_string()],
        &[],
        Duration::from_secs(1),
    ));
    assert!(!out.ok);
    assert_eq!(out.summary, "timed out after 1s: process group killed");
    // SIGTERM reached the shell, so no SIGKILL grace period was needed.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let text = std::fs::read_to_string(&pids).expect("pids written");
    let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        wait_until(
            &format!("pid {pid} to be gone"),
            Duration::from_secs(10),
            || not_running(pid),
        );
    }
}

#[test]
fn exec_a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
    let out = rt().block_on(run_argv(
        &[
            "/bin/sh".into(),
            "-c".into(),
            "trap '' TERM; sleep 300".into(),
        ],
        &[],
        Duration::from_millis(500),
    ));
    assert!(!out.ok);
    assert!(out.summary.starts_with("timed out"), "{}", out.summary);
}

#[test]
fn exec_reports_exit_codes_and_output_tail() {
    let out = rt().block_on(run_argv(
        &[
            "/bin/sh".into(),
            "-c".into(),
            "echo to-stdout; echo to-stderr >&2; exit 3".into(),
        ],
        &[],
        Duration::from_secs(10),
    ));
    assert_eq!((out.ok, out.summary.as_str()), (false, "exit 3"));
    assert_eq!(out.output, "to-stdout\nto-stderr\n");
    let out = rt().block_on(run_argv(
        &["/nonexistent/tool".into()],
        &[],
        Duration::from_secs(1),
    ));
    assert!(
        out.summary.starts_with("cannot start /nonexistent/tool"),
        "{}",
        out.summary
    );
}

const OLD: &str = "old";
const NEW: &str = "new";

fn content(tag: &str) -> String {
    // Big enough that a write takes a while: a torn file would show.
    let mut s = String::from("# comment kept\n");
    for i in 0..20_000 {
        s.push_str(&format!("KEY_{i}={tag}\n"));
    }
    s
}

/// Run by `the_file_step_leaves_old_or_new_content_after_a_kill_at_any_point`
/// as a separate process: rewrites the file forever until killed.
#[test]
#[ignore = "helper process for the file-kill test"]
fn file_writer_child() {
    let Some(path) = std::env::var_os("RIPCORD_FILE_STRESS") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let mut tag = NEW;
    loop {
        let set: IndexMap<String, String> = (0..20_000)
            .map(|i| (format!("KEY_{i}"), tag.to_string()))
            .collect();
        let _ = ripcord::actions::file::apply(&path, FileFormat::Env, &set);
        tag = if tag == NEW { OLD } else { NEW };
    }
}

#[test]
fn the_file_step_leaves_old_or_new_content_after_a_kill_at_any_point() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("importer");
    std::fs::write(&path, content(OLD)).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let (old, new) = (content(OLD), content(NEW));
    let mut kills = 0;
    for i in 0..25u64 {
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "runners::file_writer_child",
                "--ignored",
                "--nocapture",
            ])
            .env("RIPCORD_FILE_STRESS", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("child");
        // Kill at a different point of the write cycle each time.
        std::thread::sleep(Duration::from_millis(40 + i * 17));
        let _ = child.kill();
        let _ = child.wait();
        kills += 1;
        let got = std::fs::read_to_string(&path).expect("readable");
        assert!(
            got == old || got == new,
            "after kill {i}: a torn file ({} bytes)",
            got.len()
        );
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o640
        );
    }
    assert_eq!(kills, 25);
}

/// Answers each request with the next status in `statuses` (the last one
/// repeats) and records method, headers and body.
fn sequence_server(statuses: Vec<u16>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut head = String::new();
            let mut line = String::new();
            let mut len = 0;
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line);
                line.clear();
            }
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            s.lock()
                .expect("lock")
                .push(format!("{head}\n{}", String::from_utf8_lossy(&body)));
            let status = statuses.get(n).or(statuses.last()).copied().unwrap_or(200);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    (port, seen)
}

fn http_step(port: u16, method: &str, retries: Option<u32>) -> Step {
    Step::Http(HttpStep {
        method: method.into(),
        url: SecretString::parse(&format!("http://127.0.0.1:{port}/api/flags/v2")).expect("url"),
        headers: BTreeMap::from([(
            "Authorization".to_string(),
            SecretString::parse("Bearer ${env:RIPCORD_TEST_FLAGS_TOKEN}").expect("header"),
        )]),
        body: Some(SecretString::parse(r#"{"enabled": false}"#).expect("body")),
        expect_status: vec![200, 204],
        timeout: Duration::from_secs(20),
        retries,
    })
}

#[test]
fn http_retries_an_idempotent_request_after_a_500_and_sends_headers_and_body() {
    std::env::set_var("RIPCORD_TEST_FLAGS_TOKEN", "t0ken");
    let (port, seen) = sequence_server(vec![500, 204]);
    let out = rt().block_on(run_step(
        &http_step(port, "PUT", None),
        &StepContext::default(),
    ));
    assert!(out.ok, "{out:?}");
    assert_eq!(out.summary, "HTTP 204 (after 2 attempt(s))");
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), 2);
    assert!(
        seen[1].starts_with("PUT /api/flags/v2 HTTP/1.1"),
        "{}",
        seen[1]
    );
    assert!(
        seen[1]
            .to_ascii_lowercase()
            .contains("authorization: bearer t0ken"),
        "{}",
        seen[1]
    );
    assert!(seen[1].ends_with("\n{\"enabled\": false}"), "{}", seen[1]);
}

#[test]
fn http_does_not_retry_a_post_unless_asked() {
    std::env::set_var("RIPCORD_TEST_FLAGS_TOKEN", "t0ken");
    let (port, seen) = sequence_server(vec![500, 200]);
    let out = rt().block_on(run_step(
        &http_step(port, "POST", None),
        &StepContext::default(),
    ));
    assert_eq!((out.ok, out.summary.as_str()), (false, "HTTP 500"));
    assert_eq!(seen.lock().expect("lock").len(), 1);
    let (port, seen) = sequence_server(vec![500, 200]);
    let out = rt().block_on(run_step(
        &http_step(port, "POST", Some(1)),
        &StepContext::default(),
    ));
    assert!(out.ok, "{out:?}");
    assert_eq!(seen.lock().expect("lock").len(), 2);
}

#[test]
fn kubectl_gets_the_exact_argv_and_a_real_client_failing_is_a_failed_step() {
    let exp = Exporter::start("demo_errors_ratio 0.2\n");
    let prom = Prometheus::start(&[exp.port()]);
    prom.wait_for("demo_errors_ratio", "0.2");
    let tmp = tempfile::tempdir().expect("tmp");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let calls = tmp.path().join("calls");
    std::fs::write(
        bin.join("kubectl"),
        format!("#!/bin/sh\nprintf '%s|' \"$@\" >> {c}\necho >> {c}\necho \"RULE=$RIPCORD_RULE\" >> {c}.env\n", c = calls.display()),
    )
    .expect("write");
    std::fs::set_permissions(bin.join("kubectl"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let rules = "actions:\n  undo:\n    steps:\n      - kubectl: {rollout_undo: deployment/chat, to_revision: 3, namespace: prod, context: prod-eu, wait: 5s}\nrules:\n  - name: chat\n    every: 1s\n    queries: {x: max(demo_errors_ratio)}\n    condition: x > 0.05\n    actions: [undo]\n";
    let mut rc = Ripcord::new(&prom.url(), "", rules);
    rc.env.push((
        "PATH".into(),
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    ));
    rc.start();
    rc.wait_event("chat", "phase acting → verifying", Duration::from_secs(30));
    let got = std::fs::read_to_string(&calls).expect("kubectl was called");
    assert_eq!(
        got.lines().collect::<Vec<_>>(),
        [
            "--context=prod-eu|--namespace=prod|rollout|undo|deployment/chat|--to-revision=3|",
            "--context=prod-eu|--namespace=prod|rollout|status|deployment/chat|--timeout=5s|",
        ]
    );
    assert!(std::fs::read_to_string(format!("{}.env", calls.display()))
        .expect("env")
        .contains("RULE=chat"));
    drop(rc);

    // The real client, pointed at a closed loopback port.
    let kubeconfig = tmp.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{}\"}}}}]\nusers: [{{name: u, user: {{token: x}}}}]\ncontexts: [{{name: ctx, context: {{cluster: c, user: u}}}}]\ncurrent-context: ctx\n",
            free_port()
        ),
    )
    .expect("write");
    let rules = format!(
        "actions:\n  undo:\n    steps:\n      - kubectl: {{rollout_undo: deployment/chat, kubeconfig: \"{}\", timeout: 30s}}\nrules:\n  - name: chat\n    every: 1s\n    queries: {{x: max(demo_errors_ratio)}}\n    condition: x > 0.05\n    actions: [undo]\n",
        kubeconfig.display()
    );
    let mut rc = Ripcord::new(&prom.url(), "", &rules);
    rc.start();
    rc.wait_event("chat", "firing → unrecovered", Duration::from_secs(60));
    let status = rc.journal().into_iter().rev().find_map(|e| match e {
        ripcord::journal::Entry::State { rule, state, .. } if rule == "chat" => Some(state.status),
        _ => None,
    });
    match status {
        Some(Status::Open(i)) => match i.phase {
            Phase::Unrecovered(UnrecoveredReason::ActionFailed { error, .. }) => {
                assert!(
                    error.starts_with("step 1 (kubectl) failed: exit 1"),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    let output = rc
        .journal()
        .into_iter()
        .find_map(|e| match e {
            ripcord::journal::Entry::StepResult { outcome, .. } => Some(outcome.output),
            _ => None,
        })
        .expect("a step result");
    assert!(output.contains("connection refused"), "{output}");
}

#[test]
fn prometheus_basic_and_bearer_auth_come_from_secret_references() {
    use ripcord::config::{PromAuth, PrometheusConfig};
    let dir = tempfile::tempdir().expect("tmp");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "s3cret\n").expect("write");
    for (auth, want) in [
        (
            PromAuth::Basic {
                username: "ripcord".into(),
                password: SecretString::parse(&format!("${{file:{}}}", pass.display()))
                    .expect("ref"),
            },
            // base64("ripcord:s3cret")
            "authorization: Basic cmlwY29yZDpzM2NyZXQ=",
        ),
        (
            PromAuth::Bearer(
                SecretString::parse(&format!("${{file:{}}}", pass.display())).expect("ref"),
            ),
            "authorization: Bearer s3cret",
        ),
    ] {
        let (port, seen) = sequence_server(vec![200]);
        let prom = ripcord::prom::Prom::new(&PrometheusConfig {
            url: format!("http://127.0.0.1:{port}"),
            timeout: Duration::from_secs(5),
            headers: BTreeMap::new(),
            ca_file: None,
            blind_after: Duration::from_secs(60),
            auth: Some(auth),
            max_response_bytes: ripcord::config::DEFAULT_MAX_RESPONSE_BYTES,
        })
        .expect("client");
        // The recording server does not speak the API: the answer is an error,
        // the request is what this test checks.
        let _ = rt().block_on(prom.query("up", ripcord::rule::Timestamp(1_795_000_000_000)));
        let seen = seen.lock().expect("lock");
        let req = &seen[0];
        assert!(req.contains(want), "{req}");
        assert!(
            req.starts_with("GET /api/v1/query?query=up&time=1795000000.000&timeout=5000ms "),
            "{req}"
        );
    }
}
