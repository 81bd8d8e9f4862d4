//! The client commands: `conversations`, `send`, `history` and `tail`, over
//! the client library. Results go to standard output (JSON lines where a
//! program would read them); progress and errors go to standard error.

use std::io::Write;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use switchboard_client::{
    Client, Failure, GiveUp, Live, LiveEvent, LiveOptions, Place, RetryPolicy, SendReport, Sender,
    Settled,
};
use switchboard_protocol::{ConversationKind, CreateConversation, Message, SendMessage};
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

/// `#seq time sender: text`, the content shown as text when it decodes.
fn line(message: &Message) -> String {
    let body = if message.deleted_at.is_some() {
        "(deleted)".to_owned()
    } else {
        STANDARD
            .decode(&message.encrypted_content)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_else(|| format!("({} bytes of ciphertext)", message.encrypted_content.len()))
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

/// A failure as people read it.
fn describe(failure: Failure) -> String {
    match failure {
        Failure::Network => "server unreachable".into(),
        Failure::Timeout => "no answer in time".into(),
        Failure::Status { code, .. } => format!("HTTP {code}"),
    }
}
