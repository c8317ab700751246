//! The demo's misbehaving service: serves `/metrics` for Prometheus with a
//! `demo_errors_ratio` that jumps when its flag file says `FEATURE=v2`, the
//! way a bad release would. ripcord's rollback sets the flag back to v1.
//!
//! Usage: flaky_service LISTEN_ADDR FLAG_FILE

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn ratio(flag: &str) -> f64 {
    let text = std::fs::read_to_string(flag).unwrap_or_default();
    let v2 = text
        .lines()
        .any(|l| l.trim() == "FEATURE=v2" || l.trim() == "export FEATURE=v2");
    if v2 {
        0.12
    } else {
        0.001
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(flag)) = (args.next(), args.next()) else {
        eprintln!("usage: flaky_service LISTEN_ADDR FLAG_FILE");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&addr)?;
    eprintln!("flaky_service: serving /metrics on {addr}, flag file {flag}");
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut line = String::new();
        // Read the request head; the path does not matter.
        while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
            line.clear();
        }
        let body = format!(
            "# HELP demo_errors_ratio Share of requests that fail.\n# TYPE demo_errors_ratio gauge\ndemo_errors_ratio {}\n",
            ratio(&flag)
        );
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    Ok(())
}
