//! Bounded reads of HTTP answers: nothing ripcord reads may grow without
//! end. Prometheus answers stop at `prometheus.max_response_bytes`; a
//! receiver's or an `http` step's answer is read only as far as it is kept.

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the limit: reading stopped there.
    TooLarge(usize),
    Transport(reqwest::Error),
}

/// Reads `resp`'s body, refusing one longer than `limit` bytes (before
/// reading it when Content-Length says so).
pub async fn read_capped(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The first `keep` bytes of `resp`'s body; the rest is not read at all
/// (the connection is dropped).
pub async fn read_head(mut resp: reqwest::Response, keep: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = keep.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= keep {
            break;
        }
    }
    body
}

/// `s` on one line: control characters (a newline that would forge a log
/// line) escaped.
pub fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// `e` with its causes, each said once: "error sending request: connection
/// refused", not the bare "error sending request", nor a cause twice.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg = format!("{msg}: {t}");
        }
        src = s.source();
    }
    msg
}

/// `url` with any `user:password@` replaced by `***@`: the one place that
/// makes a URL safe for logs, pages and status.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_and_lines_their_breaks() {
        assert_eq!(
            redact_url("http://u:p@h:9090/x?q=a@b"),
            "http://***@h:9090/x?q=a@b"
        );
        assert_eq!(redact_url("https://h/x"), "https://h/x");
        assert_eq!(redact_url("no url"), "no url");
        assert_eq!(one_line("a\nforged line"), "a\\nforged line");
    }

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn an_error_says_its_cause_once() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(error_chain(&e), "error sending request: connection refused");
        let same = std::io::Error::other("Permission denied");
        assert_eq!(error_chain(&same), "Permission denied");
    }
}
