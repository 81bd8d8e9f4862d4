//! `feed`: feed requests per second and their latency, three ways in one
//! run on the same data: ranked by the database (the embedded default),
//! ranked with ClickHouse up, and with ClickHouse stopped (its breaker
//! open, every page from the cache or the newest posts). The baseline is
//! ClickHouse up.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use switchboard_client::{Client, RetryPolicy};
use switchboard_storage_clickhouse::LocalServer;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::report::{Latency, histogram, round};
use crate::server::{OPEN_LIMITS, Server};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Authors, each posting `posts` posts.
    #[arg(long, default_value_t = 100)]
    pub(crate) authors: usize,
    /// Posts per author.
    #[arg(long, default_value_t = 20)]
    pub(crate) posts: usize,
    /// Readers, each following `follows` authors.
    #[arg(long, default_value_t = 200)]
    pub(crate) readers: usize,
    /// Authors each reader follows.
    #[arg(long, default_value_t = 50)]
    pub(crate) follows: usize,
    /// Feed requests in flight.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 10)]
    pub(crate) secs: u64,
}

/// One phase's figures.
#[derive(Debug)]
struct Phase {
    name: &'static str,
    per_sec: f64,
    latency: Latency,
    /// Pages by source.
    sources: Vec<(String, usize)>,
}

pub(crate) async fn run(binary: &Path, args: &Args, json: bool) -> anyhow::Result<()> {
    let mut phases = Vec::new();
    {
        let server = Server::start(binary, &OPEN_LIMITS).await?;
        let readers = populate(&server, args).await?;
        phases.push(load(&readers, args, "database ranking (embedded)").await?);
    }
    let mut clickhouse = LocalServer::start().context("cannot start clickhouse-server")?;
    let url = clickhouse.url();
    let mut flags = OPEN_LIMITS.to_vec();
    flags.extend(["--clickhouse-url", url.as_str()]);
    let server = Server::start(binary, &flags).await?;
    let readers = populate(&server, args).await?;
    phases.push(load(&readers, args, "clickhouse up").await?);
    clickhouse.stop();
    // The breaker opens on the first failures; from then on nothing waits.
    for _ in 0..200 {
        if server
            .metric("breaker_state{dependency=\"clickhouse\"}")
            .await?
            >= 2.0
        {
            break;
        }
        let (_, client) = &readers[0];
        client.feed(Some(20), None).await?;
    }
    phases.push(load(&readers, args, "clickhouse down").await?);
    let baseline = phases[1].per_sec;
    for phase in &phases {
        let ratio = phase.per_sec / baseline;
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "scenario": "feed",
                    "phase": phase.name,
                    "requests_per_sec": round(phase.per_sec),
                    "latency_ms": phase.latency.json(),
                    "sources": phase
                        .sources
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                        .collect::<serde_json::Map<_, _>>(),
                    "ratio_to_clickhouse_up": round(ratio),
                })
            );
        } else {
            println!(
                "feed ({}): {:.0} requests/s, {}; ratio to clickhouse up {:.3}; pages {:?}",
                phase.name,
                phase.per_sec,
                phase.latency.text(),
                ratio,
                phase.sources
            );
        }
    }
    Ok(())
}

/// Authors with posts, readers following some of them, a few likes; the
/// readers' clients.
async fn populate(server: &Server, args: &Args) -> anyhow::Result<Vec<(Uuid, Client)>> {
    let client = |token: String| Client::new(&server.base, &token);
    let authors: Vec<(Uuid, Client)> = (0..args.authors.max(1))
        .map(|_| {
            let (id, token) = server.user();
            (id, client(token))
        })
        .collect();
    let mut posts = Vec::new();
    let writes = authors
        .iter()
        .flat_map(|(_, author)| (0..args.posts).map(move |n| (author, n)));
    let mut made = futures_util::stream::iter(writes.map(|(author, n)| async move {
        author
            .create_post_retried(&format!("post {n}"), None, RetryPolicy::default())
            .await
    }))
    .buffer_unordered(32);
    while let Some(post) = made.next().await {
        posts.push(post?.id);
    }
    drop(made);
    let readers: Vec<(Uuid, Client)> = (0..args.readers.max(1))
        .map(|_| {
            let (id, token) = server.user();
            (id, client(token))
        })
        .collect();
    let follows = readers.iter().enumerate().flat_map(|(r, (_, reader))| {
        let authors = &authors;
        (0..args.follows.min(authors.len()))
            .map(move |k| (reader, authors[(r + k) % authors.len()].0))
    });
    futures_util::stream::iter(follows.map(|(reader, author)| reader.follow(author, true)))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    let likes = readers
        .iter()
        .zip(posts.iter().step_by(7).cycle())
        .map(|((_, reader), post)| reader.like(*post, true));
    futures_util::stream::iter(likes)
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(readers)
}

async fn load(
    readers: &[(Uuid, Client)],
    args: &Args,
    name: &'static str,
) -> anyhow::Result<Phase> {
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let latencies = Arc::new(Mutex::new(histogram()));
    let sources = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, usize>::new(),
    ));
    let mut workers = JoinSet::new();
    let readers: Arc<Vec<Client>> = Arc::new(readers.iter().map(|(_, c)| c.clone()).collect());
    let started = Instant::now();
    for w in 0..args.concurrency.max(1) {
        let (readers, latencies, sources) = (
            Arc::clone(&readers),
            Arc::clone(&latencies),
            Arc::clone(&sources),
        );
        workers.spawn(async move {
            let mut n = w;
            let mut done = 0u64;
            while Instant::now() < deadline {
                let client = &readers[n % readers.len()];
                n += 7;
                let sent = Instant::now();
                let page = client.feed(Some(20), None).await?;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                latencies
                    .lock()
                    .expect("histogram lock")
                    .saturating_record(micros.max(1));
                *sources
                    .lock()
                    .expect("sources lock")
                    .entry(page.source.as_str().to_owned())
                    .or_default() += 1;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut total = 0u64;
    while let Some(done) = workers.join_next().await {
        total += done.context("a load worker panicked")??;
    }
    if total == 0 {
        bail!("no feed request finished");
    }
    let elapsed = started.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "request counts")]
    let per_sec = total as f64 / elapsed;
    let latency = Latency::of(&latencies.lock().expect("histogram lock"));
    let sources = sources
        .lock()
        .expect("sources lock")
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    Ok(Phase {
        name,
        per_sec,
        latency,
        sources,
    })
}
