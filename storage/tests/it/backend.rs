//! A fresh store of each kind per test.

use std::sync::Arc;

use switchboard_storage::{FeedStore, MemoryStore, Store};
use switchboard_storage_sql::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};

use crate::supervisor;

pub(crate) struct Backend {
    pub(crate) store: Arc<dyn Store>,
    /// The same database's posts and follows.
    pub(crate) feed: Arc<dyn FeedStore>,
    kind: Kind,
}

enum Kind {
    /// A second node shares the same store.
    Memory(Arc<MemoryStore>),
    Sqlite(tempfile::TempDir),
    #[cfg_attr(not(feature = "postgres-tests"), allow(dead_code))]
    Postgres {
        url: String,
        schema: String,
    },
}

impl Backend {
    pub(crate) fn memory() -> Self {
        let store = Arc::new(MemoryStore::new());
        Self {
            store: store.clone(),
            feed: store.clone(),
            kind: Kind::Memory(store),
        }
    }

    pub(crate) async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = open_sqlite(&dir).await;
        Self {
            store: store.clone(),
            feed: store,
            kind: Kind::Sqlite(dir),
        }
    }

    #[cfg_attr(not(feature = "postgres-tests"), allow(dead_code))]
    pub(crate) async fn postgres() -> Self {
        let url = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
            .expect("the postgres-tests feature needs SWITCHBOARD_TEST_POSTGRES_URL");
        let schema = format!("contract_{}", uuid::Uuid::new_v4().simple());
        let store = open_postgres(&url, &schema).await;
        Self {
            store: store.clone(),
            feed: store,
            kind: Kind::Postgres { url, schema },
        }
    }

    /// Runs one contract test, then cleans up even if it panicked.
    pub(crate) async fn run<F>(self, test: impl FnOnce(Arc<Self>) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let backend = Arc::new(self);
        let outcome = tokio::spawn(test(Arc::clone(&backend))).await;
        if let Ok(backend) = Arc::try_unwrap(backend) {
            backend.finish().await;
        }
        if let Err(error) = outcome {
            std::panic::resume_unwind(error.into_panic());
        }
    }

    /// A second store over the same database, as a second node would have.
    pub(crate) async fn another(&self) -> Arc<dyn Store> {
        match &self.kind {
            Kind::Memory(store) => store.clone(),
            Kind::Sqlite(dir) => open_sqlite(dir).await,
            Kind::Postgres { url, schema } => open_postgres(url, schema).await,
        }
    }

    async fn finish(self) {
        if let Kind::Postgres { url, schema } = &self.kind {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&pool)
                .await
                .unwrap();
        }
    }
}

async fn open_sqlite(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    let mut options = SqliteOptions::new(dir.path().join("contract.db"));
    options.synchronous_full = false;
    Arc::new(SqliteStore::open(&options, &supervisor()).await.unwrap())
}

async fn open_postgres(url: &str, schema: &str) -> Arc<PostgresStore> {
    let mut options = PostgresOptions::new(url);
    options.schema = Some(schema.to_owned());
    options.connections_max = 4;
    let store = PostgresStore::open(&options)
        .await
        .unwrap_or_else(|e| panic!("SWITCHBOARD_TEST_POSTGRES_URL is set but unusable: {e}"));
    Arc::new(store)
}
