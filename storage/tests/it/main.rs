//! The storage contract: one suite, run against every `Store`, so the
//! implementations cannot drift apart.
//!
//! The in-memory store and SQLite run everywhere. With the `postgres-tests` feature the same tests
//! also run against the PostgreSQL server named by
//! `SWITCHBOARD_TEST_POSTGRES_URL`, each in a schema of its own; a missing
//! variable or an unreachable server fails them (CI turns the feature on).

// Tests make their own ids and read real time.
#![allow(clippy::disallowed_methods)]

mod backend;
#[cfg(feature = "redis-tests")]
mod bus;
mod contract;
mod feed;
mod sqlite_metrics;
mod sqlite_supervision;
mod sqlite_wal;

/// A supervisor for a store or bus under test, on the real clock.
pub(crate) fn supervisor() -> switchboard_supervisors::Supervisor {
    switchboard_supervisors::Supervisor::new(std::sync::Arc::new(
        switchboard_storage::SystemClock::new(),
    ))
}

macro_rules! contract {
    ($suite:ident as $module:ident: $($test:ident),* $(,)?) => {
        mod $module {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::backend::Backend::memory();
                    backend.run(crate::$suite::$test).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::backend::Backend::sqlite().await;
                    backend.run(crate::$suite::$test).await;
                }
            )*
        }
        #[cfg(feature = "postgres-tests")]
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let backend = crate::backend::Backend::postgres().await;
                    backend.run(crate::$suite::$test).await;
                }
            )*
        }
        }
    };
}

contract!(contract as store:
    creates_and_reads_a_group,
    a_direct_pair_has_one_conversation,
    concurrent_sends_take_gap_free_seqs,
    an_idempotency_key_stores_once,
    sends_at_once_each_get_their_own_outcome,
    a_batch_of_sends_keeps_its_order,
    a_non_member_writes_nothing,
    edit_and_delete_repeat_the_permission_check,
    read_positions_only_advance,
    membership_changes_follow_the_rules,
    the_list_summarizes_in_one_query,
    message_pages_follow_seq,
    events_of_reads_many_conversations_at_once,
    two_nodes_cannot_let_a_removed_member_edit,
    an_attachment_is_sent_once_and_goes_with_its_message,
    an_unsent_attachment_is_deleted_once,
    deletions_are_claimed_with_a_lease,
    the_sweepers_reads_find_what_it_looks_for,
    scheduling_keeps_its_bounds,
    a_scheduled_entry_is_its_senders_until_it_goes,
    a_due_entry_is_sent_once_under_its_claim,
    a_batch_delivers_each_entry_at_most_once,
    two_nodes_claim_disjoint_entries,
);

contract!(feed as feed_store:
    posts_follows_and_likes_keep_their_rules,
    the_ranking_query_is_the_shared_score,
    recent_pages_are_newest_first_without_gaps,
    an_upload_is_posted_once_and_goes_with_its_post,
    an_idempotency_key_posts_once,
);
