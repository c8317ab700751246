//! A real 3-member etcd cluster on loopback (Debian's `etcd-server`), and
//! a TCP proxy that can cut one process off from it: what the HA tests
//! run on. Everything on free ports in a temp dir, killed when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::live::{free_port, wait_until};

pub struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

pub struct Etcd {
    pub dir: tempfile::TempDir,
    members: Vec<Member>,
    token: String,
}

impl Etcd {
    /// Starts three members and waits until the cluster is healthy.
    pub fn start() -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<Member> = (1..=3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let token = format!("ripcord-test-{}", std::process::id());
        let mut e = Etcd {
            dir,
            members,
            token,
        };
        for i in 0..3 {
            e.start_member(i);
        }
        e.wait_healthy();
        e
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again: same data directory, same ports).
    pub fn start_member(&mut self, i: usize) {
        let cluster = self.initial_cluster();
        let data = self.dir.path().join(&self.members[i].name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(
                self.dir
                    .path()
                    .join(format!("{}.log", self.members[i].name)),
            )
            .expect("etcd log");
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Fast elections on loopback; leases of a couple of seconds.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--auto-compaction-retention", "1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd runs (Debian package etcd-server)");
        m.child = Some(child);
    }

    /// Stops member `i` (SIGKILL: a host gone).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    pub fn client_ports(&self) -> Vec<u16> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// Every running member answers `/health` with `true` (it has a leader).
    pub fn wait_healthy(&self) {
        wait_until(
            "the etcd cluster to be healthy",
            Duration::from_secs(30),
            || {
                self.members.iter().filter(|m| m.child.is_some()).all(|m| {
                    super::live::http_get(m.client, "/health")
                        .is_some_and(|(code, body)| code == 200 && body.contains("\"true\""))
                })
            },
        );
    }

    /// `etcdctl get --prefix PREFIX` on a running member: the keys.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let Some(m) = self.members.iter().find(|m| m.child.is_some()) else {
            return Vec::new();
        };
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &format!("http://127.0.0.1:{}", m.client),
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ])
            .output()
            .expect("etcdctl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }
}

/// A TCP proxy to one port. `cut()` makes it a black hole: connections
/// stay open but no byte passes either way, as a partition looks to the
/// cut-off side (no reset, only silence).
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, s, st) = (cut.clone(), streams.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(down) = conn else { continue };
                if let Ok(mut streams) = s.lock() {
                    if let Ok(d) = down.try_clone() {
                        streams.push(d);
                    }
                }
                if c.load(Ordering::SeqCst) {
                    // Held open, never answered.
                    continue;
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = down.shutdown(Shutdown::Both);
                    continue;
                };
                if let Ok(mut streams) = s.lock() {
                    if let Ok(u) = up.try_clone() {
                        streams.push(u);
                    }
                }
                for (mut from, mut to) in [
                    (down.try_clone(), up.try_clone()),
                    (up.try_clone(), down.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    let c = c.clone();
                    thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                // Once cut, bytes are swallowed.
                                Ok(_) if c.load(Ordering::SeqCst) => continue,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
            }
        });
        Proxy {
            port,
            cut,
            streams,
            stop,
        }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Ok(streams) = self.streams.lock() {
            for s in streams.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Starts a ripcord with `ha:` and waits until it campaigns (a standby
/// never logs "ripcord running").
pub fn spawn_campaigning(rc: &mut super::live::Ripcord) {
    let before = rc.log().len();
    rc.spawn();
    wait_until("the instance to campaign", Duration::from_secs(20), || {
        rc.log()
            .get(before..)
            .is_some_and(|l| l.contains("ha: campaigning"))
    });
}

/// `GET /api/v1/status`, parsed.
pub fn status(rc: &super::live::Ripcord) -> Option<serde_json::Value> {
    let (code, body) = super::live::http_get(rc.listen, "/api/v1/status")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Whether the instance leads (`None`: it does not answer).
pub fn leading(rc: &super::live::Ripcord) -> Option<bool> {
    status(rc).and_then(|s| s["ha"]["leading"].as_bool())
}
