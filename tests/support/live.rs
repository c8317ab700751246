//! Real parts for the live tests: an exporter the test controls, a real
//! Prometheus (Debian's package) scraping it every second, and the ripcord
//! daemon as a process. Everything listens on loopback on free ports, lives
//! in a temp dir, and is killed when dropped. Waits are on conditions with
//! deadlines, never bare sleeps.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ripcord::journal::Entry;

pub use super::net::{encode as enc, free_port};

/// Polls `cond` until it is true or `deadline` passes (then panics with `what`).
pub fn wait_until(what: &str, deadline: Duration, cond: impl FnMut() -> bool) {
    assert!(
        super::net::poll(deadline, Duration::from_millis(100), cond),
        "timed out after {deadline:?} waiting for {what}"
    );
}

pub fn http_get(port: u16, path_and_query: &str) -> Option<(u16, String)> {
    super::net::http("GET", port, path_and_query, "", Duration::from_secs(5))
}

pub fn http_post(port: u16, path: &str) -> Option<(u16, String)> {
    super::net::http("POST", port, path, "", Duration::from_secs(5))
}

/// A tiny HTTP server: every request gets the current answer.
pub struct FakeServer {
    pub port: u16,
    answer: Arc<Mutex<(u16, String, Duration)>>,
}

impl FakeServer {
    /// Answers `status` with `body` after `delay`.
    pub fn start(status: u16, body: &str, delay: Duration) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let answer = Arc::new(Mutex::new((status, body.to_string(), delay)));
        let a = answer.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let a = a.clone();
                std::thread::spawn(move || serve(conn, &a));
            }
        });
        FakeServer { port, answer }
    }

    pub fn set(&self, status: u16, body: &str) {
        let mut a = self.answer.lock().expect("lock");
        a.0 = status;
        a.1 = body.to_string();
    }
}

fn serve(mut conn: TcpStream, answer: &Mutex<(u16, String, Duration)>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let (status, body, delay) = answer.lock().expect("lock").clone();
    std::thread::sleep(delay);
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// An exporter whose metrics the test sets; `stop()` makes scrapes fail.
pub struct Exporter(pub FakeServer);

impl Exporter {
    pub fn start(metrics: &str) -> Exporter {
        Exporter(FakeServer::start(200, metrics, Duration::ZERO))
    }
    pub fn set(&self, metrics: &str) {
        self.0.set(200, metrics);
    }
    pub fn stop(&self) {
        self.0.set(503, "down");
    }
    pub fn port(&self) -> u16 {
        self.0.port
    }
}

/// A real Prometheus scraping `targets` every second.
pub struct Prometheus {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Prometheus {
    pub fn start(targets: &[u16]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let list: Vec<String> = targets
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: test\n    static_configs: [{{targets: [{}]}}]\n",
                list.join(", ")
            ),
        )
        .expect("write config");
        let mut p = Prometheus {
            port: free_port(),
            dir,
            child: None,
        };
        p.restart();
        p
    }

    /// A Prometheus with no targets whose TSDB holds `openmetrics` history,
    /// written with `promtool tsdb create-blocks-from openmetrics`.
    pub fn with_history(openmetrics: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            "global: {scrape_interval: 15s}\n",
        )
        .expect("config");
        std::fs::write(dir.path().join("history.om"), openmetrics).expect("history");
        let out = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(dir.path().join("history.om"))
            .arg(dir.path().join("data"))
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut p = Prometheus {
            port: free_port(),
            dir,
            child: None,
        };
        p.restart();
        p
    }

    /// (Re)starts it on the same port and data.
    pub fn restart(&mut self) {
        let d = self.dir.path();
        let log = std::fs::File::create(d.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                d.join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus runs (apt-get install prometheus)");
        self.child = Some(child);
        let port = self.port;
        wait_until("Prometheus to be ready", Duration::from_secs(60), || {
            http_get(port, "/-/ready").is_some_and(|(s, _)| s == 200)
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The raw JSON answer of an instant query.
    pub fn query(&self, q: &str) -> String {
        http_get(self.port, &format!("/api/v1/query?query={}", enc(q)))
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Waits until the query's answer contains `needle`.
    pub fn wait_for(&self, q: &str, needle: &str) {
        wait_until(
            &format!("Prometheus to answer {q} with {needle}"),
            Duration::from_secs(30),
            || self.query(q).contains(needle),
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ripcord daemon with its own config, rules and state dir.
pub struct Ripcord {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra environment for the daemon (e.g. a PATH with a recording kubectl).
    pub env: Vec<(String, String)>,
    /// The API's port (`listen:`).
    pub listen: u16,
}

impl Ripcord {
    /// Writes `ripcord.yaml` (with `config_extra` lines) and `rules.d/rules.yaml`.
    pub fn new(prom_url: &str, config_extra: &str, rules: &str) -> Ripcord {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let listen = free_port();
        std::fs::create_dir_all(d.join("rules.d")).expect("mkdir");
        std::fs::write(
            d.join("ripcord.yaml"),
            format!(
                "prometheus: {{url: \"{prom_url}\", timeout: 2s, blind_after: 2s}}\nrules: rules.d/*.yaml\nstate_dir: {}\nlisten: 127.0.0.1:{}\n{config_extra}",
                d.join("state").display(),
                listen
            ),
        )
        .expect("write config");
        std::fs::write(d.join("rules.d/rules.yaml"), rules).expect("write rules");
        Ripcord {
            dir,
            child: None,
            env: Vec::new(),
            listen,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts ripcord and waits until this run says it is running.
    pub fn start(&mut self) {
        // The log is appended to across restarts: wait for this run's line.
        let before = self.log().len();
        self.spawn();
        wait_until(
            &format!("ripcord to log \"ripcord running\"; log:\n{}", self.log()),
            Duration::from_secs(20),
            || {
                self.log()
                    .get(before..)
                    .is_some_and(|l| l.contains("ripcord running"))
            },
        );
    }

    /// Starts ripcord without waiting for it (for a start meant to die on
    /// the way, at a crash point).
    pub fn spawn(&mut self) {
        let out = Command::new(env!("CARGO_BIN_EXE_ripcord"))
            .args(["check", "-c"])
            .arg(self.path("ripcord.yaml"))
            .output()
            .expect("ripcord check runs");
        assert!(
            out.status.success(),
            "rules do not check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("ripcord.log"))
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_ripcord"))
            .arg("-c")
            .arg(self.path("ripcord.yaml"))
            .arg("run")
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("ripcord runs");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("ripcord.log")).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str, deadline: Duration) {
        wait_until(
            &format!("ripcord to log {needle:?}; log:\n{}", self.log()),
            deadline,
            || self.log().contains(needle),
        );
    }

    pub fn journal(&self) -> Vec<Entry> {
        ripcord::journal::read_all(&self.path("state")).expect("journal readable")
    }

    /// Journal events (kind, text) for `rule`.
    pub fn events(&self, rule: &str) -> Vec<(String, String)> {
        self.journal()
            .into_iter()
            .filter_map(|e| match e {
                Entry::Event {
                    rule: Some(r),
                    kind,
                    text,
                    ..
                } if r == rule => Some((kind.as_str().to_string(), text)),
                _ => None,
            })
            .collect()
    }

    /// When the first event for `rule` containing `needle` happened (ms).
    pub fn event_at(&self, rule: &str, needle: &str) -> Option<i64> {
        self.journal().into_iter().find_map(|e| match e {
            Entry::Event {
                rule: Some(r),
                text,
                at,
                ..
            } if r == rule && text.contains(needle) => Some(at.0),
            _ => None,
        })
    }

    pub fn wait_event(&self, rule: &str, needle: &str, deadline: Duration) {
        wait_until(
            &format!("journal event {needle:?} for {rule}; log:\n{}", self.log()),
            deadline,
            || self.events(rule).iter().any(|(_, t)| t.contains(needle)),
        );
    }

    /// Step intents in the journal: (rule, action, step).
    pub fn intents(&self) -> Vec<(String, String, usize)> {
        self.journal()
            .into_iter()
            .filter_map(|e| match e {
                Entry::StepIntent {
                    rule, action, step, ..
                } => Some((rule, action, step)),
                _ => None,
            })
            .collect()
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Waits for the daemon to exit on its own (a crash point, a failed
    /// start); panics past `deadline`.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("ripcord was started");
        let mut status = None;
        wait_until("ripcord to exit", deadline, || {
            status = c.try_wait().ok().flatten();
            status.is_some()
        });
        status.expect("exited")
    }

    /// Runs `ripcord run` expecting it to fail at start: its exit code and
    /// stderr.
    pub fn start_fails(&self) -> (i32, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ripcord"))
            .arg("-c")
            .arg(self.path("ripcord.yaml"))
            .arg("run")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ripcord runs");
        let mut status = None;
        let ok = super::net::poll(Duration::from_secs(20), Duration::from_millis(50), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ripcord started although it should not have");
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status.and_then(|s| s.code()).unwrap_or(-1), err)
    }

    /// Sends SIGHUP (reload) to the running daemon.
    pub fn hup(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGHUP,
            );
        }
    }

    pub fn signal(&mut self, sig: nix::sys::signal::Signal) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        c.wait().ok()
    }
}

impl Drop for Ripcord {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A script for exec steps that records `NAME start|end TIME` lines (and
/// its environment) in `$REC`, optionally sleeping between them.
pub fn recorder(dir: &Path) -> PathBuf {
    let p = dir.join("record.sh");
    std::fs::write(
        &p,
        "#!/bin/sh\necho \"$1 start $(date +%s.%N)\" >> \"$REC\"\nenv | grep '^RIPCORD_' | sort >> \"$REC.env\"\n[ -n \"$2\" ] && sleep \"$2\"\necho \"$1 end $(date +%s.%N)\" >> \"$REC\"\n",
    )
    .expect("write recorder");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// Lines the recorder wrote: (name, start|end, unix seconds).
pub fn recorded(rec: &Path) -> Vec<(String, String, f64)> {
    std::fs::read_to_string(rec)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            Some((
                it.next()?.to_string(),
                it.next()?.to_string(),
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

impl Ripcord {
    /// Runs a ripcord CLI command against this daemon's config.
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> crate::support::Output {
        let out = Command::new(env!("CARGO_BIN_EXE_ripcord"))
            .arg("-c")
            .arg(self.path("ripcord.yaml"))
            .args(args)
            .env_remove("RIPCORD_API_TOKEN")
            .envs(env.iter().copied())
            .output()
            .expect("ripcord runs");
        crate::support::Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
