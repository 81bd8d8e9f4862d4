//! What `/proc` says about a process: memory and CPU time (Linux only).

use std::sync::OnceLock;

use anyhow::Context;

/// Resident memory, in bytes.
pub(crate) fn rss(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident memory so far, in bytes.
pub(crate) fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// User plus system CPU time so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (Linux only)"))?;
    // The command name (field 2) may hold spaces; the fields after its
    // closing parenthesis are fixed: utime and stime are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .context("malformed /proc stat")
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks() as f64)
}

/// This process's id.
pub(crate) fn own_pid() -> u32 {
    std::process::id()
}

/// Clock ticks per second, from `getconf` (100 where it cannot be asked).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100)
    })
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("cannot read a server's /proc status (Linux only)")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// CPU used by a set of processes over an interval, in cores.
#[derive(Debug)]
pub(crate) struct CpuMeter {
    pids: Vec<u32>,
    started: std::time::Instant,
    cpu: f64,
}

impl CpuMeter {
    /// Starts measuring `pids` now.
    pub(crate) fn start(pids: &[u32]) -> anyhow::Result<Self> {
        Ok(Self {
            pids: pids.to_vec(),
            started: std::time::Instant::now(),
            cpu: total(pids)?,
        })
    }

    /// Cores used on average since the start.
    pub(crate) fn cores(&self) -> anyhow::Result<f64> {
        let wall = self.started.elapsed().as_secs_f64();
        Ok((total(&self.pids)? - self.cpu) / wall.max(f64::EPSILON))
    }
}

fn total(pids: &[u32]) -> anyhow::Result<f64> {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}
