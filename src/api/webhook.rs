//! An intent's webhook, called on behalf of the decision core: `POST` the
//! core's JSON body, read `{"say": "…"}` (or `{"text": "…"}`) back. Blocking
//! (ureq): the live shell runs it on the blocking pool, replay inline.

use serde_json::Value;
use std::time::Duration;

/// POST `body` to `url`; the text to say, or a short reason why there is none.
pub fn ask(url: &str, timeout: Duration, body: &Value) -> Result<String, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(timeout)
        .user_agent(concat!("voicegate/", env!("CARGO_PKG_VERSION")))
        .build();
    let response = agent.post(url).send_json(body).map_err(|e| match e {
        ureq::Error::Status(code, _) => format!("HTTP {code}"),
        ureq::Error::Transport(t) => t.to_string(),
    })?;
    let answer: Value = response
        .into_json()
        .map_err(|e| format!("answer is not JSON: {e}"))?;
    answer
        .get("say")
        .or_else(|| answer.get("text"))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "answer has no \"say\" text".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A real HTTP server on loopback answering once with `status` and `body`
    /// after `delay`; returns its URL and the request it saw.
    fn server(
        status: &'static str,
        body: &'static str,
        delay: Duration,
    ) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/hook", l.local_addr().expect("addr"));
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if req.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            std::thread::sleep(delay);
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            String::from_utf8_lossy(&req).into_owned()
        });
        (url, h)
    }

    #[test]
    fn posts_the_call_and_reads_the_text_to_say() {
        let (url, seen) = server(
            "200 OK",
            r#"{"say": "You owe 12 dollars."}"#,
            Duration::ZERO,
        );
        let body = serde_json::json!({"caller": "+15550100", "intent": "billing", "transcript": "my bill", "language": "en"});
        assert_eq!(
            ask(&url, Duration::from_secs(2), &body).as_deref(),
            Ok("You owe 12 dollars.")
        );
        let req = seen.join().expect("server");
        assert!(req.starts_with("POST /hook HTTP/1.1"), "{req}");
        assert!(req.contains(r#""intent":"billing""#), "{req}");
        assert!(req.contains(r#""transcript":"my bill""#), "{req}");
    }

    #[test]
    fn failures_are_reasons_not_panics() {
        let body = serde_json::json!({});
        let (url, _) = server("500 Internal Server Error", "{}", Duration::ZERO);
        assert_eq!(
            ask(&url, Duration::from_secs(2), &body),
            Err("HTTP 500".into())
        );
        let (url, _) = server("200 OK", r#"{"nothing": 1}"#, Duration::ZERO);
        assert!(ask(&url, Duration::from_secs(2), &body).is_err());
        let (url, _) = server("200 OK", "not json", Duration::ZERO);
        assert!(ask(&url, Duration::from_secs(2), &body)
            .unwrap_err()
            .contains("not JSON"));
        let (url, _) = server("200 OK", r#"{"say": "late"}"#, Duration::from_millis(800));
        assert!(
            ask(&url, Duration::from_millis(200), &body).is_err(),
            "timeout"
        );
        // Nobody listening.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        assert!(ask(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(1),
            &body
        )
        .is_err());
    }
}
