//! The live event stream over WebSocket.

use futures_util::{SinkExt, StreamExt};
use switchboard_protocol::{ClientFrame, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ClientError;

/// Frames from the server, decoded.
#[derive(Debug)]
pub struct EventStream {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How the server ended the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// WebSocket close code, if one was sent.
    pub code: Option<u16>,
    /// The reason text.
    pub reason: String,
}

impl EventStream {
    pub(crate) async fn connect(url: &str) -> Result<Self, ClientError> {
        match tokio_tungstenite::connect_async(url).await {
            Ok((socket, _)) => Ok(Self { socket }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let parsed = serde_json::from_str::<switchboard_protocol::ErrorBody>(&body).ok();
                Err(ClientError::Api {
                    status,
                    code: parsed.as_ref().map(|b| b.error.code),
                    message: parsed.map_or(body, |b| b.error.message),
                    retry_after: None,
                })
            }
            Err(error) => Err(ClientError::transport(error)),
        }
    }

    /// The next frame; `Ok(None)` once the server closed the stream.
    ///
    /// # Errors
    ///
    /// [`ClientError::Transport`] when the connection breaks,
    /// [`ClientError::Decode`] for a frame that is not valid JSON.
    pub async fn next(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        Ok(self.next_or_close().await?.ok())
    }

    /// The next frame, or how the server closed the stream.
    ///
    /// # Errors
    ///
    /// As [`EventStream::next`].
    pub async fn next_or_close(&mut self) -> Result<Result<ServerFrame, Closed>, ClientError> {
        loop {
            let Some(message) = self.socket.next().await else {
                return Ok(Err(Closed {
                    code: None,
                    reason: String::new(),
                }));
            };
            match message.map_err(ClientError::transport)? {
                WsMessage::Text(text) => {
                    return serde_json::from_str(&text)
                        .map(Ok)
                        .map_err(ClientError::decode);
                }
                WsMessage::Close(frame) => {
                    return Ok(Err(Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    }));
                }
                _ => {}
            }
        }
    }

    /// Sends a raw text frame.
    ///
    /// # Errors
    ///
    /// [`ClientError::Transport`] when the connection is broken.
    pub async fn send_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.socket
            .send(WsMessage::text(text))
            .await
            .map_err(ClientError::transport)
    }

    /// Sends a client frame (`ping`, `resume`, `sync`).
    ///
    /// # Errors
    ///
    /// [`ClientError::Transport`] when the connection is broken.
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let text = serde_json::to_string(frame).expect("client frames always encode");
        self.send_text(&text).await
    }

    /// Closes the stream.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
