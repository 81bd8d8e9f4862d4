//! A private `clickhouse-server` on loopback, for tests and benchmarks
//! (feature `local-server`): Debian's package, run as a plain process over
//! a temporary folder, with a minimal configuration for 18.16 and later.

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The binary: `SWITCHBOARD_TEST_CLICKHOUSE`, or Debian's path.
fn binary() -> PathBuf {
    std::env::var_os("SWITCHBOARD_TEST_CLICKHOUSE").map_or_else(
        || PathBuf::from("/usr/sbin/clickhouse-server"),
        PathBuf::from,
    )
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running server, killed when dropped.
#[derive(Debug)]
pub struct LocalServer {
    child: Option<Child>,
    http_port: u16,
    dir: tempfile::TempDir,
}

impl LocalServer {
    /// Writes a configuration on two free ports and starts the server.
    ///
    /// # Errors
    ///
    /// When the binary is missing or does not listen within 10 s.
    pub fn start() -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (http_port, tcp_port) = (free_port()?, free_port()?);
        let root = dir.path().display().to_string();
        for folder in ["data", "tmp", "files", "schemas"] {
            std::fs::create_dir_all(dir.path().join(folder))?;
        }
        std::fs::write(
            dir.path().join("config.xml"),
            format!(
                "<yandex>\
                   <logger><level>warning</level><log>{root}/server.log</log>\
                     <errorlog>{root}/error.log</errorlog></logger>\
                   <listen_host>127.0.0.1</listen_host>\
                   <http_port>{http_port}</http_port><tcp_port>{tcp_port}</tcp_port>\
                   <path>{root}/data/</path><tmp_path>{root}/tmp/</tmp_path>\
                   <user_files_path>{root}/files/</user_files_path>\
                   <format_schema_path>{root}/schemas/</format_schema_path>\
                   <users_config>{root}/users.xml</users_config>\
                   <mark_cache_size>268435456</mark_cache_size>\
                 </yandex>"
            ),
        )?;
        std::fs::write(
            dir.path().join("users.xml"),
            "<yandex><profiles><default/></profiles>\
               <users><default><password/><networks><ip>127.0.0.1</ip></networks>\
                 <profile>default</profile><quota>default</quota></default></users>\
               <quotas><default/></quotas></yandex>",
        )?;
        let mut server = Self {
            child: None,
            http_port,
            dir,
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts the server again on the same ports and data.
    ///
    /// # Errors
    ///
    /// As [`LocalServer::start`].
    pub fn restart(&mut self) -> io::Result<()> {
        let binary = binary();
        let mut child = Command::new(&binary)
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("config.xml").display()
            ))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", binary.display())))?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.http_port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "clickhouse-server exited with {status}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(io::Error::other(
            "clickhouse-server did not listen within 10 s",
        ))
    }

    /// Its HTTP interface's URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    /// SIGTERM, and waits for it to exit.
    pub fn stop(&mut self) {
        self.signal("-CONT");
        self.signal("-TERM");
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// SIGSTOP: it accepts connections and answers nothing.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
