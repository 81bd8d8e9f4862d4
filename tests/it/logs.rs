//! The node's log as an operator reads it: no bearer token in any line at
//! any level (even `trace`, where dependencies print URIs and headers),
//! JSON lines that carry the request id of their request, the id returned
//! to the client, and no colour codes when stdout is not a terminal.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use switchboard_client::Client;
use switchboard_protocol::ServerFrame;
use uuid::Uuid;

use crate::{BIN, Process, SECRET, free_port, token, wait_for_port};

/// A node logging at `level` in `format` into `log`.
fn server(port: u16, data: &Path, log: &Path, level: &str, format: &str) -> Process {
    let out = std::fs::File::create(log).unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--jwt-secret",
            SECRET,
            "--log",
            level,
            "--log-format",
            format,
        ])
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::from(out))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = Process(child);
    wait_for_port(port);
    process
}

/// A raw HTTP/1.1 GET; the whole answer (status line, headers, body).
fn get(port: u16, target: &str, headers: &[(&str, &str)]) -> String {
    let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).unwrap();
    answer
}

/// The value of `name` in an HTTP answer's headers.
fn header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    answer.split("\r\n\r\n").next()?.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// SIGTERM and wait, so every line is written.
fn stop(mut process: Process) {
    let status = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    process.0.wait().unwrap();
}

/// A token's signature: what must never be printed.
fn signature(token: &str) -> &str {
    token.rsplit('.').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_log_and_json_lines_carry_the_request_id() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("node.log");
    let port = free_port();
    let process = server(port, &data.path().join("data"), &log, "trace", "json");
    let user = Uuid::new_v4();
    let token = token(user);
    let bearer = format!("Bearer {token}");

    // A request id of the client's is kept and returned; none, or one that
    // could break a log line, gets a new one.
    let answer = get(
        port,
        "/api/v1/conversations",
        &[("authorization", &bearer), ("x-request-id", "req-abc-123")],
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(header(&answer, "x-request-id"), Some("req-abc-123"));
    for headers in [
        vec![("authorization", bearer.as_str())],
        vec![
            ("authorization", bearer.as_str()),
            ("x-request-id", &"x".repeat(200)),
        ],
        vec![("authorization", bearer.as_str()), ("x-request-id", "a\"b")],
    ] {
        let answer = get(port, "/api/v1/conversations", &headers);
        let id = header(&answer, "x-request-id").expect("an id is returned");
        Uuid::parse_str(id).expect("a generated id is a UUID");
    }

    // The transports that carry the token in the URL, and a refused token.
    let mut stream = Client::new(format!("http://127.0.0.1:{port}"), &token)
        .connect()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, Some(ServerFrame::Control(_))), "{first:?}");
    stream.close().await;
    let in_url = token.clone();
    let sse = tokio::task::spawn_blocking(move || {
        let mut socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let request = format!(
            "GET /api/v1/subscribe?access_token={in_url}&device=laptop HTTP/1.1\r\nHost: localhost\r\n\r\n"
        );
        socket.write_all(request.as_bytes()).unwrap();
        let mut first = [0u8; 512];
        let n = socket.read(&mut first).unwrap();
        String::from_utf8_lossy(&first[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(sse.starts_with("HTTP/1.1 200"), "{sse}");
    let forged = format!("{}x", &bearer);
    let refused = get(port, "/api/v1/conversations", &[("authorization", &forged)]);
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    stop(process);

    let text = std::fs::read_to_string(&log).unwrap();
    let mut with_id = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            !line.contains(signature(&token)),
            "a token in the log: {line}"
        );
        assert!(
            !line.contains(signature(&bearer)),
            "a token in the log: {line}"
        );
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            object["level"].is_string() && object["target"].is_string(),
            "{line}"
        );
        if object["span"]["request_id"] == "req-abc-123" {
            with_id += 1;
        }
    }
    assert!(with_id > 0, "no line carries the request id:\n{text}");
    eprintln!(
        "{} lines at trace, {} with a token redacted",
        text.lines().count(),
        text.matches("[redacted]").count()
    );
}

#[test]
fn text_logs_carry_no_colour_codes_off_a_terminal() {
    let data = tempfile::tempdir().unwrap();
    let log = data.path().join("node.log");
    let port = free_port();
    let process = server(port, &data.path().join("data"), &log, "debug", "text");
    let answer = get(port, "/health/ready", &[]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop(process);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("switchboard is serving"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text}");
}
