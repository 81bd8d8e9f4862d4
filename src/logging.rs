//! The node's log: text or one JSON object per line, colour only on a
//! terminal, and no bearer token in any line at any level.
//!
//! The request span (`http`) names the path and never the query, but a
//! dependency logging at `debug` or `trace` may print a URI or a header.
//! So every line passes through [`Redacting`] before it is written: a JWT
//! anywhere in it (three base64url parts, the first a JSON header, so
//! `eyJ…`) and the value of any `access_token=` parameter or
//! `authorization` header become `[redacted]`.

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// For people: one line per event, span fields in front.
    Text,
    /// For collectors: one JSON object per line with `timestamp`, `level`,
    /// `target`, the event's fields and the current span's.
    Json,
}

/// Starts the global subscriber writing to stdout.
pub(crate) fn init(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = Redacting(std::io::stdout);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// A writer that redacts each line before it reaches `W`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Redacting<M>(pub(crate) M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = Line<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            inner: self.0.make_writer(),
            buffer: Vec::new(),
        }
    }
}

/// One event's bytes, redacted and written in one piece when dropped
/// (the formatter makes one writer per event).
pub(crate) struct Line<W: Write> {
    inner: W,
    buffer: Vec<u8>,
}

impl<W: Write> Write for Line<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let redacted = redact(&text);
        self.buffer.clear();
        self.inner.write_all(redacted.as_bytes())?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for Line<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

const REDACTED: &str = "[redacted]";

/// `line` with every token in it replaced by `[redacted]`.
pub(crate) fn redact(line: &str) -> String {
    // Nearly every line holds no token: one look to say so.
    let lower = line.to_ascii_lowercase();
    if !lower.contains("access_token=") && !lower.contains("authorization") && !line.contains("eyJ")
    {
        return line.to_owned();
    }
    let line = redact_after(line, "access_token=", |c| {
        c == '&' || c == '"' || c == '\'' || c == ' ' || c == '\\' || c.is_whitespace()
    });
    let line = redact_after(&line, "authorization: ", |c| {
        c == '"' || c == '\\' || c == ',' || c == '\n'
    });
    let line = redact_after(&line, "authorization\": \"", |c| c == '"' || c == '\\');
    redact_jwts(&line)
}

/// Replaces what follows each (case-insensitive) `marker` up to `end`.
fn redact_after(line: &str, marker: &str, end: impl Fn(char) -> bool) -> String {
    let lower = line.to_ascii_lowercase();
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(marker) {
        let value = at + found + marker.len();
        out.push_str(&line[at..value]);
        let rest = &line[value..];
        let len = rest.find(|c: char| end(c)).unwrap_or(rest.len());
        if len > 0 {
            out.push_str(REDACTED);
        }
        at = value + len;
    }
    out.push_str(&line[at..]);
    out
}

/// Replaces every `eyJ…​.….…` run (a JWT) with `[redacted]`.
fn redact_jwts(line: &str) -> String {
    let base64url = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = String::with_capacity(line.len());
    let mut at = 0;
    while let Some(found) = line[at..].find("eyJ") {
        let start = at + found;
        let rest = &line[start..];
        let mut parts = 0;
        let mut len = 0;
        for part in rest.split('.') {
            let run = part.find(|c: char| !base64url(c)).unwrap_or(part.len());
            len += run;
            parts += 1;
            if run < part.len() || parts == 3 {
                break;
            }
            len += 1; // the dot
        }
        // No dot follows a run that ends the line.
        let len = len.min(rest.len());
        out.push_str(&line[at..start]);
        if parts >= 2 && rest[..len].matches('.').count() >= 2 {
            out.push_str(REDACTED);
            at = start + len;
        } else {
            out.push_str("eyJ");
            at = start + 3;
        }
    }
    out.push_str(&line[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl";

    #[test]
    fn a_token_is_redacted_wherever_it_appears() {
        for line in [
            format!("GET /api/v1/ws?access_token={JWT}&device=a HTTP/1.1"),
            format!("uri=/api/v1/subscribe?device=a&access_token={JWT}"),
            format!("{{\"uri\":\"/api/v1/ws?access_token={JWT}\"}}"),
            format!("headers: {{\"authorization\": \"Bearer {JWT}\"}}"),
            format!("authorization: Bearer {JWT}"),
            format!("token refused: {JWT} (expired)"),
        ] {
            let redacted = redact(&line);
            assert!(!redacted.contains("c2lnbmF0dXJl"), "{redacted}");
            assert!(!redacted.contains("eyJzdWIi"), "{redacted}");
            assert!(redacted.contains("[redacted]"), "{redacted}");
        }
    }

    #[test]
    fn a_non_jwt_access_token_value_is_redacted_and_the_rest_kept() {
        let line = "GET /api/v1/ws?access_token=opaque-value&device=laptop";
        assert_eq!(
            redact(line),
            "GET /api/v1/ws?access_token=[redacted]&device=laptop"
        );
    }

    #[test]
    fn lines_without_tokens_pass_unchanged() {
        for line in [
            "INFO switchboard: switchboard is serving listen=127.0.0.1:8080",
            "an eyJ that is no token, and one.two.three",
            "ends in eyJabc.def",
            "",
        ] {
            assert_eq!(redact(line), line);
        }
    }
}
