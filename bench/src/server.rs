//! A release server started for one benchmark, on a free port and a fresh
//! data folder, and what the benchmark reads from it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use switchboard_http::Auth;
use uuid::Uuid;

/// The secret the benchmark server signs tokens with.
const SECRET: &str = "benchmark secret that is long enough for hs256";

/// `switchboard` next to this executable (`target/release/`).
pub(crate) fn sibling_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this executable")?;
    let server = me.with_file_name("switchboard");
    if !server.exists() {
        bail!(
            "{} not found: build it with `cargo build --release` or pass --server",
            server.display()
        );
    }
    Ok(server)
}

/// How a server's clients prove who they are.
enum Tokens {
    /// Switchboard's signed tokens.
    Signed(Box<Auth>),
    /// The bare ceiling server takes the user id as it is.
    UserId,
}

/// Flags that lift the connection and rate limits a benchmark would
/// otherwise hit (its clients all connect from one address and send flat
/// out); the limits are still checked on every request.
pub(crate) const OPEN_LIMITS: [&str; 14] = [
    "--connections-max",
    "100000",
    "--connections-per-ip-max",
    "100000",
    "--rate-user-per-sec",
    "1000000",
    "--rate-user-burst",
    "1000000",
    "--rate-ip-per-sec",
    "1000000",
    "--rate-ip-burst",
    "1000000",
    "--requests-in-flight-max",
    "100000",
];

/// A running server, killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    tokens: Tokens,
    _data: tempfile::TempDir,
}

impl Server {
    /// Starts `binary serve` with `extra` flags and waits until it is ready.
    pub(crate) async fn start(binary: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let child = Command::new(binary)
            .arg("serve")
            .args(["--listen", &listen, "--jwt-secret", SECRET, "--log", "warn"])
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        Self::ready(Self {
            child,
            base: format!("http://{listen}"),
            tokens: Tokens::Signed(Box::new(Auth::new(SECRET.as_bytes()))),
            _data: data,
        })
        .await
    }

    /// Starts the bare broadcast server (this executable's `bare-server`)
    /// and waits until it is ready.
    pub(crate) async fn start_bare() -> anyhow::Result<Self> {
        let data = tempfile::tempdir()?;
        let listen = format!("127.0.0.1:{}", free_port()?);
        let me = std::env::current_exe().context("cannot find this executable")?;
        let child = Command::new(&me)
            .args(["bare-server", "--listen", &listen])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the bare server")?;
        Self::ready(Self {
            child,
            base: format!("http://{listen}"),
            tokens: Tokens::UserId,
            _data: data,
        })
        .await
    }

    async fn ready(server: Self) -> anyhow::Result<Self> {
        let ready = format!("{}/health/ready", server.base);
        for _ in 0..200 {
            if let Ok(response) = reqwest::get(&ready).await
                && response.status().is_success()
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server did not become ready")
    }

    /// A token for a new user.
    pub(crate) fn user(&self) -> (Uuid, String) {
        let id = Uuid::new_v4();
        let token = match &self.tokens {
            Tokens::Signed(auth) => auth.mint(id, Duration::from_secs(3600)).expect("token"),
            Tokens::UserId => id.to_string(),
        };
        (id, token)
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory, in bytes.
    pub(crate) fn rss(&self) -> anyhow::Result<u64> {
        crate::process::rss(self.pid())
    }

    /// The server's peak resident memory so far, in bytes.
    pub(crate) fn peak_rss(&self) -> anyhow::Result<u64> {
        crate::process::peak_rss(self.pid())
    }

    /// A gauge or counter from `/metrics` (0 when absent).
    pub(crate) async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0))
    }

    /// Waits until the metric `name` reads `value`.
    pub(crate) async fn wait_for(&self, name: &str, value: f64) -> anyhow::Result<()> {
        for _ in 0..600 {
            if (self.metric(name).await? - value).abs() < f64::EPSILON {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{name} never reached {value}")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on right now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
