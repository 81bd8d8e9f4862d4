//! The open-file limit a run needs, checked before it starts rather than
//! discovered as a connection error halfway through.

use anyhow::bail;

/// Fails with advice when this process (and so the servers it starts) may
/// not open `needed` files.
pub(crate) fn check_open_files(needed: usize) -> anyhow::Result<()> {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return Ok(());
    };
    let soft = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse::<usize>().ok());
    match soft {
        Some(soft) if soft < needed => bail!(
            "this run opens about {needed} sockets but the open-file limit is {soft}: \\
             raise it first (`ulimit -n 65536`)"
        ),
        _ => Ok(()),
    }
}
