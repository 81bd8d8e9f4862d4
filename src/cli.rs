//! The client commands (`conversations`, `send`, `schedule`, `post`,
//! `feed`, `history`, `tail` and the rest) over the client library. Results go to standard
//! output (JSON lines where a program would read them); progress and
//! errors go to standard error.

use std::io::Write;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use clap::{Args, Subcommand};
use switchboard_client::{
    Client, Failure, GiveUp, Live, LiveEvent, LiveOptions, Place, RetryPolicy, SendReport, Sender,
    Settled,
};
use switchboard_protocol::{
    ConversationKind, CreateConversation, Message, ScheduleMessage, SendMessage,
};
use uuid::Uuid;

/// Where the server is and who is asking.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "SWITCHBOARD_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    /// A bearer token (`switchboard token --user …` prints one).
    #[arg(long, env = "SWITCHBOARD_TOKEN", hide_env_values = true)]
    token: String,
}

impl ServerArgs {
    fn client(&self) -> Client {
        Client::new(&self.server, &self.token)
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Conversations {
    /// List your conversations, newest activity first.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a group, or a direct conversation with one other user.
    Create {
        /// The other members (user ids).
        #[arg(long = "member", required = true)]
        members: Vec<Uuid>,
        /// A group's title.
        #[arg(long)]
        title: Option<String>,
        /// A direct conversation (exactly one --member, no title).
        #[arg(long)]
        direct: bool,
    },
}

/// Runs `conversations`.
pub(crate) async fn conversations(
    server: &ServerArgs,
    command: Conversations,
) -> anyhow::Result<()> {
    let client = server.client();
    match command {
        Conversations::List { json } => {
            let list = client
                .conversations()
                .await
                .context("cannot list conversations")?;
            let mut out = std::io::stdout().lock();
            if !json {
                writeln!(
                    out,
                    "{:<36}  {:<6}  {:>8}  {:>6}  title",
                    "id", "kind", "last_seq", "unread"
                )?;
            }
            for c in list.conversations {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&c)?)?;
                } else {
                    let kind = match c.kind {
                        ConversationKind::Direct => "direct",
                        ConversationKind::Group => "group",
                    };
                    writeln!(
                        out,
                        "{:<36}  {:<6}  {:>8}  {:>6}  {}",
                        c.id,
                        kind,
                        c.last_seq,
                        c.unread_count,
                        c.title.as_deref().unwrap_or("")
                    )?;
                }
            }
            Ok(())
        }
        Conversations::Create {
            members,
            title,
            direct,
        } => {
            let kind = if direct {
                ConversationKind::Direct
            } else {
                ConversationKind::Group
            };
            let conversation = client
                .create_conversation(&CreateConversation {
                    kind,
                    title,
                    member_ids: members,
                })
                .await
                .context("cannot create the conversation")?;
            println!("{}", conversation.id);
            Ok(())
        }
    }
}

/// Runs `send`: one message, retried by the client's policy, reported as
/// it goes. Prints the stored message as a JSON line.
pub(crate) async fn send(
    server: &ServerArgs,
    conversation: Uuid,
    text: &str,
    idempotency_key: Option<String>,
) -> anyhow::Result<()> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).context("no randomness for the nonce")?;
    let request = SendMessage {
        conversation_id: conversation,
        encrypted_content: STANDARD.encode(text),
        nonce: STANDARD.encode(nonce),
        message_type: "text".into(),
        idempotency_key,
    };
    let mut sender = Sender::start(server.client(), RetryPolicy::default(), 1);
    sender
        .send(request)
        .await
        .context("cannot queue the send")?;
    while let Some(report) = sender.next().await {
        match report {
            SendReport::Attempt { .. } => {}
            SendReport::Retrying {
                failure, retry_in, ..
            } => eprintln!(
                "{}; retrying in {:.1} s",
                describe(failure),
                retry_in.as_secs_f64()
            ),
            SendReport::Settled(settled) => match *settled {
                Settled::Sent { message, .. } => {
                    println!("{}", serde_json::to_string(&message)?);
                    return Ok(());
                }
                Settled::Failed { reason, .. } => {
                    return Err(match reason {
                        GiveUp::Permanent(failure) => {
                            anyhow::anyhow!(
                                "refused by the server ({}); not retried",
                                describe(failure)
                            )
                        }
                        GiveUp::Exhausted { attempts, last } => {
                            anyhow::anyhow!(
                                "gave up after {attempts} attempts (last: {})",
                                describe(last)
                            )
                        }
                    });
                }
            },
        }
    }
    bail!("the sender stopped")
}

/// A time as `schedule --at` takes it: RFC 3339, or `+N` seconds,
/// minutes, hours or days from `now`.
fn parse_at(at: &str, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if let Some(ahead) = at.strip_prefix('+') {
        let split = ahead.len().saturating_sub(1);
        let (count, unit) = ahead.split_at(split);
        let count: i64 = count
            .parse()
            .with_context(|| format!("{at:?} is not a time from now such as +90s or +2h"))?;
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => bail!("{at:?}: the unit is s, m, h or d"),
        };
        let ahead = count
            .checked_mul(seconds)
            .and_then(TimeDelta::try_seconds)
            .with_context(|| format!("{at:?} is too far ahead"))?;
        return Ok(now + ahead);
    }
    DateTime::parse_from_rfc3339(at)
        .map(|t| t.with_timezone(&Utc))
        .with_context(|| format!("{at:?} is neither an RFC 3339 time nor +N[s|m|h|d]"))
}

/// Runs `schedule`: one scheduled text message, retried with one
/// idempotency key. Prints the pending entry as a JSON line.
pub(crate) async fn schedule(
    server: &ServerArgs,
    conversation: Uuid,
    at: &str,
    text: &str,
) -> anyhow::Result<()> {
    // The command line is the time source here, not an actor.
    #[allow(clippy::disallowed_methods)]
    let deliver_at = parse_at(at, Utc::now())?;
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).context("no randomness for the nonce")?;
    let body = ScheduleMessage {
        deliver_at,
        encrypted_content: STANDARD.encode(text),
        nonce: STANDARD.encode(nonce),
        message_type: "text".into(),
        idempotency_key: None,
    };
    let scheduled = server
        .client()
        .schedule_retried(conversation, body, RetryPolicy::default())
        .await
        .context("cannot schedule the message")?;
    println!("{}", serde_json::to_string(&scheduled.entry)?);
    Ok(())
}

/// Runs `scheduled`: pending entries and recent failures, by time due.
pub(crate) async fn scheduled(
    server: &ServerArgs,
    conversation: Option<Uuid>,
    json: bool,
) -> anyhow::Result<()> {
    let list = server
        .client()
        .scheduled(conversation)
        .await
        .context("cannot list scheduled messages")?;
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:<36}  {:<36}  {:<20}  {:<9}  text",
            "id", "conversation", "deliver_at", "status"
        )?;
    }
    for entry in list.scheduled_messages {
        if json {
            writeln!(out, "{}", serde_json::to_string(&entry)?)?;
            continue;
        }
        let status = match entry.failure_reason {
            Some(reason) => format!("failed: {}", reason.as_str()),
            None => entry.status.as_str().to_owned(),
        };
        writeln!(
            out,
            "{:<36}  {:<36}  {:<20}  {:<9}  {}",
            entry.id,
            entry.conversation_id,
            entry.deliver_at.format("%Y-%m-%d %H:%M:%S"),
            status,
            shown(&entry.encrypted_content)
        )?;
    }
    Ok(())
}

/// Runs `unschedule`.
pub(crate) async fn unschedule(server: &ServerArgs, id: Uuid) -> anyhow::Result<()> {
    server
        .client()
        .cancel_scheduled(id)
        .await
        .context("cannot cancel the scheduled message")?;
    eprintln!("cancelled {id}");
    Ok(())
}

/// Runs `post`.
pub(crate) async fn post(
    server: &ServerArgs,
    text: &str,
    file: Option<&std::path::Path>,
    content_type: Option<String>,
) -> anyhow::Result<()> {
    let client = server.client();
    let post = match file {
        None => {
            client
                .create_post_retried(text, None, RetryPolicy::default())
                .await
        }
        Some(path) => {
            let upload = upload_of(path, content_type, false)?;
            client
                .create_post_with(text, &upload, RetryPolicy::default())
                .await
        }
    }
    .context("cannot post")?;
    println!("{}", serde_json::to_string(&post)?);
    Ok(())
}

/// Runs `follow`.
pub(crate) async fn follow(server: &ServerArgs, user: Uuid, follow: bool) -> anyhow::Result<()> {
    server
        .client()
        .follow(user, follow)
        .await
        .context("cannot change whom you follow")?;
    eprintln!(
        "{} {user}",
        if follow {
            "following"
        } else {
            "no longer following"
        }
    );
    Ok(())
}

/// Runs `like`.
pub(crate) async fn like(server: &ServerArgs, post: Uuid, like: bool) -> anyhow::Result<()> {
    let liked = server
        .client()
        .like(post, like)
        .await
        .context("cannot change the like")?;
    match liked {
        Some(post) => println!("{}", serde_json::to_string(&post)?),
        None => eprintln!("like taken back from {post}"),
    }
    Ok(())
}

/// Runs `feed`: one page, then where it came from and the next cursor on
/// standard error.
pub(crate) async fn feed(
    server: &ServerArgs,
    limit: u32,
    cursor: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let page = server
        .client()
        .feed(Some(limit), cursor)
        .await
        .context("cannot read the feed")?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&page)?)?;
        return Ok(());
    }
    for post in &page.posts {
        writeln!(
            out,
            "{}  {}  {:>4} likes  {}",
            post.created_at.format("%Y-%m-%d %H:%M"),
            post.author_id,
            post.like_count,
            post.text.replace('\n', " ")
        )?;
    }
    eprintln!("source: {}", page.source.as_str());
    if let Some(next) = &page.next_cursor {
        eprintln!("more: --cursor {next}");
    }
    Ok(())
}

/// Runs `history`: a conversation's messages, oldest first.
pub(crate) async fn history(
    server: &ServerArgs,
    conversation: Uuid,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let page = server
        .client()
        .messages(conversation, None, None, Some(limit))
        .await
        .context("cannot read the history")?;
    let mut out = std::io::stdout().lock();
    for message in page.messages {
        if json {
            writeln!(out, "{}", serde_json::to_string(&message)?)?;
        } else {
            writeln!(out, "{}", line(&message))?;
        }
    }
    Ok(())
}

/// `#seq time sender: text`, the content shown as text when it decodes,
/// an attachment by its kind, size and name.
fn line(message: &Message) -> String {
    let text = shown(&message.encrypted_content);
    let body = match &message.attachment {
        _ if message.deleted_at.is_some() => "(deleted)".to_owned(),
        None => text,
        Some(attachment) => {
            let mut shown = format!("[{} {} bytes", message.message_type, attachment.size_bytes);
            if let Some(ms) = attachment.duration_ms {
                shown.push_str(&format!(", {:.1} s", ms as f64 / 1000.0));
            }
            if let Some(name) = &attachment.file_name {
                shown.push_str(&format!(", {name}"));
            }
            shown.push(']');
            if !text.is_empty() {
                shown.push(' ');
                shown.push_str(&text);
            }
            shown
        }
    };
    format!(
        "#{} {} {}: {}",
        message.seq,
        message.created_at.format("%Y-%m-%d %H:%M:%S"),
        message.sender_id,
        body
    )
}

/// Runs `tail`: live events as JSON lines, reconnecting and resuming by
/// itself, until interrupted.
pub(crate) async fn tail(server: &ServerArgs, conversation: Option<Uuid>) -> anyhow::Result<()> {
    let mut live = Live::start(server.client(), Place::new(), LiveOptions::default());
    let mut out = std::io::stdout();
    loop {
        let report = tokio::select! {
            report = live.next() => report,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match report {
            Some(LiveEvent::Event(event)) => {
                if conversation.is_some_and(|c| c != event.conversation_id()) {
                    continue;
                }
                let mut lock = out.lock();
                writeln!(lock, "{}", serde_json::to_string(&event)?)?;
                lock.flush()?;
            }
            Some(LiveEvent::Connected) => eprintln!("connected to {}", server.server),
            Some(LiveEvent::Disconnected { reason, retry_in }) => {
                eprintln!("{reason}; reconnecting in {:.1} s", retry_in.as_secs_f64());
            }
            Some(LiveEvent::GaveUp { attempts, reason }) => {
                bail!("gave up after {attempts} attempts: {reason}");
            }
            None => bail!("the live stream stopped"),
        }
        out.flush()?;
    }
}

/// A payload as text when it decodes to some, else its size.
fn shown(content: &str) -> String {
    STANDARD
        .decode(content)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| format!("({} bytes of ciphertext)", content.len()))
}

/// A failure as people read it.
fn describe(failure: Failure) -> String {
    match failure {
        Failure::Network => "server unreachable".into(),
        Failure::Timeout => "no answer in time".into(),
        Failure::Status { code, .. } => format!("HTTP {code}"),
    }
}

/// A file's MIME type from its extension, for what the server accepts.
fn content_type_of(path: &std::path::Path, audio: bool) -> Option<&'static str> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    let known = match extension.as_str() {
        "m4a" | "mp4" if audio => "audio/mp4",
        "aac" => "audio/aac",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "webm" if audio => "audio/webm",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "mp4" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "json" => "application/json",
        "txt" => "text/plain",
        "csv" => "text/csv",
        _ => return None,
    };
    Some(known)
}

/// Runs `send-audio` and `send-file`: presign, upload, send, each retried
/// by the client's policy with one idempotency key. Prints the stored
/// message as a JSON line.
pub(crate) async fn send_file(
    server: &ServerArgs,
    conversation: Uuid,
    path: &std::path::Path,
    content_type: Option<String>,
    duration_ms: Option<u64>,
) -> anyhow::Result<()> {
    let upload = upload_of(path, content_type, duration_ms.is_some())?;
    let sent = server
        .client()
        .send_file(conversation, &upload, duration_ms, RetryPolicy::default())
        .await
        .with_context(|| format!("cannot send {}", path.display()))?;
    println!("{}", serde_json::to_string(&sent.message)?);
    Ok(())
}

/// A file read to upload, its type given or told by its extension.
fn upload_of(
    path: &std::path::Path,
    content_type: Option<String>,
    audio: bool,
) -> anyhow::Result<switchboard_client::Upload> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let content_type = match content_type {
        Some(given) => given,
        None => content_type_of(path, audio)
            .with_context(|| {
                format!(
                    "cannot tell the type of {}: pass --content-type",
                    path.display()
                )
            })?
            .to_owned(),
    };
    Ok(switchboard_client::Upload {
        bytes: bytes.into(),
        content_type,
        file_name: path.file_name().and_then(|n| n.to_str()).map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_times_are_absolute_or_from_now() {
        let now = DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_at("+90s", now).unwrap(), now + TimeDelta::seconds(90));
        assert_eq!(parse_at("+2h", now).unwrap(), now + TimeDelta::hours(2));
        assert_eq!(parse_at("+1d", now).unwrap(), now + TimeDelta::days(1));
        assert_eq!(
            parse_at("2026-12-24T18:00:00+01:00", now).unwrap(),
            DateTime::parse_from_rfc3339("2026-12-24T17:00:00Z").unwrap()
        );
        for bad in ["+", "+5", "+5y", "+x m", "tomorrow", "+99999999999999999d"] {
            assert!(parse_at(bad, now).is_err(), "{bad}");
        }
    }
}
