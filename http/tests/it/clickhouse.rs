//! The feed on a real ClickHouse server (Debian's `clickhouse-server`,
//! started here on private ports): ranked from its engagement, then the
//! cache and the newest posts while it is stopped or frozen, and ranked
//! again once the breaker's probe finds it back.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use switchboard_actors::Limits;
use switchboard_storage::{Analytics, Clock, EngagementEvent, EngagementKind, SystemClock};
use switchboard_storage_clickhouse::{ClickHouse, ClickHouseOptions, LocalServer};
use uuid::Uuid;

use crate::feed::Api;
use crate::support::TestServer;

/// Limits that let a test see the breaker open and close within seconds.
fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.feed.engagement_flush_every = Duration::from_millis(100);
    limits.feed.ranker.breaker.cool_down_min = Duration::from_millis(500);
    limits.feed.ranker.breaker.cool_down_max = Duration::from_secs(1);
    limits
}

async fn feed(api: &Api<'_>) -> Value {
    let (status, headers, page) = api.call(Method::GET, "/feed?limit=10", None).await;
    assert_eq!(status, StatusCode::OK, "never a 5xx: {page}");
    assert_eq!(headers["feed-source"], page["source"].as_str().unwrap());
    page
}

fn ids(page: &Value) -> Vec<String> {
    page["posts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A counter's value in the node's metrics, summed over the series whose
/// labels contain every one of `labels`.
async fn counter(server: &TestServer, name: &str, labels: &[&str]) -> f64 {
    server
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn until_source(api: &Api<'_>, source: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = feed(api).await;
        if page["source"] == source {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never came from {source}: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_ranks_with_clickhouse_and_falls_back_without_it() {
    let mut clickhouse = LocalServer::start().expect("clickhouse-server starts");
    let analytics = Arc::new(ClickHouse::new(&ClickHouseOptions::new(clickhouse.url())).unwrap());
    let server = TestServer::with_analytics(limits(), analytics.clone()).await;
    let (me, other, author) = (server.user(), server.user(), server.user());
    let (t, o, a) = (
        Api::new(&server, me.id),
        Api::new(&server, other.id),
        Api::new(&server, author.id),
    );
    for reader in [&t, &o] {
        reader.put(&format!("/users/{}/follow", author.id)).await;
    }
    let mut posts = Vec::new();
    for text in ["liked", "quiet", "newest"] {
        let (_, post) = a.post(text).await;
        posts.push(post["id"].as_str().unwrap().to_owned());
    }
    let liked: Uuid = posts[0].parse().unwrap();
    for _ in 0..5 {
        let liker = Api::new(&server, Uuid::new_v4());
        liker.put(&format!("/posts/{liked}/like")).await;
    }
    // The likes reach ClickHouse in a batch.
    let since = SystemClock::new().now() - chrono::TimeDelta::hours(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while analytics
        .engagement(&[liked], since)
        .await
        .unwrap()
        .first()
        .is_none_or(|e| e.likes < 5)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "likes never reached ClickHouse"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let page = feed(&t).await;
    assert_eq!(page["source"], "ranked");
    assert_eq!(
        ids(&page)[0],
        posts[0],
        "recent likes lift the oldest post: {page}"
    );
    assert!(
        server
            .metrics()
            .await
            .contains("feed_candidate_count_count 1")
    );

    // Views only ClickHouse knows of lift the quiet post above it: the
    // ranking is ClickHouse's.
    let quiet: Uuid = posts[1].parse().unwrap();
    let at = SystemClock::new().now();
    let views: Vec<EngagementEvent> = (0..200)
        .map(|_| EngagementEvent {
            post_id: quiet,
            user_id: Uuid::new_v4(),
            kind: EngagementKind::View,
            at,
        })
        .collect();
    analytics.record(&views).await.unwrap();
    let page = feed(&t).await;
    assert_eq!(page["source"], "ranked");
    assert_eq!(
        ids(&page)[..2],
        [posts[1].clone(), posts[0].clone()],
        "{page}"
    );

    // ClickHouse stopped: the last ranked page for one who had one, the
    // newest posts for one who had none, and never a 5xx.
    clickhouse.stop();
    let cached = until_source(&t, "cache").await;
    assert_eq!(
        ids(&cached),
        ids(&page),
        "the cache serves the last ranked page"
    );
    let recent = feed(&o).await;
    assert_eq!(recent["source"], "recent");
    assert_eq!(
        ids(&recent),
        vec![posts[2].clone(), posts[1].clone(), posts[0].clone()]
    );
    until_breaker_opens(&server, &o).await;
    let health = ready(&server).await;
    assert_eq!(
        health["ready"], true,
        "ClickHouse down keeps the node ready: {health}"
    );
    assert_eq!(
        health["dependencies"]["clickhouse"]["ok"], false,
        "{health}"
    );
    assert_eq!(
        health["dependencies"]["clickhouse"]["breaker"], "open",
        "{health}"
    );
    // With the breaker open a ranking is refused at once, never sent.
    let refused = ranker_outcomes(&server, "unavailable").await;
    let page = feed(&o).await;
    assert_eq!(page["source"], "recent");
    assert!(
        ranker_outcomes(&server, "unavailable").await > refused,
        "the open breaker answered, not ClickHouse"
    );
    // Engagement while it is down is dropped and counted.
    o.put(&format!("/posts/{quiet}/like")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while counter(&server, "feed_engagement_dropped_total", &[]).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no engagement was counted dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(cached_events(&server, "hit").await >= 1.0);
    assert!(cached_events(&server, "miss").await >= 1.0);

    // Back: ranked again once the half-open probe passes.
    clickhouse.restart().expect("clickhouse-server restarts");
    until_source(&o, "ranked").await;

    // Frozen: the first ranking times out at the deadline and the cache
    // answers; the breaker opens, and the rest are refused at once.
    clickhouse.freeze();
    let timed_out = ranker_outcomes(&server, "timed_out").await;
    let started = tokio::time::Instant::now();
    let page = feed(&o).await;
    let took = started.elapsed();
    assert_eq!(page["source"], "cache", "{page}");
    assert!(
        ranker_outcomes(&server, "timed_out").await > timed_out,
        "the ranking was cut off at its deadline"
    );
    // Far below the client's own 10 s request timeout: the deadline cut it.
    assert!(
        took < Duration::from_secs(5),
        "a frozen ClickHouse held the feed for {took:?}"
    );
    eprintln!("frozen ClickHouse: first feed answered from cache in {took:?}");
    until_breaker_opens(&server, &o).await;
    clickhouse.thaw();
    until_source(&o, "ranked").await;
    clickhouse.stop();
}

/// Feeds until the ranking's breaker is open.
async fn until_breaker_opens(server: &TestServer, api: &Api<'_>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.node.feed_ranking().1 != "open" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never opened"
        );
        feed(api).await;
    }
}

/// Ranking calls that ended with `outcome`.
async fn ranker_outcomes(server: &TestServer, outcome: &str) -> f64 {
    let outcome = format!("outcome=\"{outcome}\"");
    counter(
        server,
        "worker_request_duration_seconds_count",
        &["feed_ranker", &outcome],
    )
    .await
}

async fn ready(server: &TestServer) -> Value {
    reqwest::get(server.url("/health/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn cached_events(server: &TestServer, event: &str) -> f64 {
    counter(
        server,
        "feed_cache_events_total",
        &[&format!("event=\"{event}\"")],
    )
    .await
}
