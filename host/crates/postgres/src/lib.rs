//! flockd's state in PostgreSQL, for two or more flockd processes on one
//! fleet: the host state as one row per record, the journal, and the leader
//! lease whose epoch fences every write.
//!
//! Every write a leader makes — above all the launch intent written before
//! each cloud call — runs in a transaction that first locks the lease row
//! and checks that it is still held by this process, under the epoch it was
//! granted, and not expired by the database's clock. A leader that paused
//! past its lease and wakes up finds its epoch gone: it cannot record an
//! intent, so it cannot launch. Locking the row (`FOR SHARE`) makes a grant
//! to another process wait for a write in flight, so no write commits under
//! an epoch that is already over.

use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use flockd_core::journal::TickRecord;
use flockd_core::leader::{Fenced, LeaseAnswer, LeaseBackend};
use flockd_core::store::{JournalLimits, JournalQuery, RecordKey, RecordKind, Records, StateChange, StateStore};

#[cfg(any(test, feature = "testing"))]
pub mod testing;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Journal pruning runs once every this many appends, not on every one.
const PRUNE_EVERY: u64 = 64;

/// Every transaction this many seconds at most: a write stuck behind a
/// lock (a grant in progress) fails instead of hanging a tick.
const STATEMENT_TIMEOUT_MS: u64 = 10_000;

pub struct PgStore {
    pool: Pool,
    cluster: String,
    limits: JournalLimits,
    /// The grant this process writes under: (holder, epoch). None: a
    /// follower, whose writes are refused.
    fence: Mutex<Option<(String, u64)>>,
    appended: AtomicU64,
}

impl PgStore {
    /// Connects to `url` (a libpq URL or key=value string), creates or
    /// upgrades the schema, and keeps `cluster`'s rows.
    pub async fn connect(url: &str, cluster: &str, limits: JournalLimits) -> anyhow::Result<PgStore> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| anyhow::anyhow!("[store] url does not parse as a PostgreSQL connection string: {e}"))?;
        if config.get_application_name().is_none() {
            config.application_name("flockd");
        }
        config.options(format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
        config.connect_timeout(Duration::from_secs(10));
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()?;
        let store = PgStore {
            pool,
            cluster: cluster.to_string(),
            limits,
            fence: Mutex::new(None),
            appended: AtomicU64::new(0),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Runs the migrations this flockd has not yet applied, one process at a
    /// time (two flockd starting together both try).
    async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        // Any fixed number: the advisory lock is flockd's migration lock.
        const MIGRATION_LOCK: i64 = 0x666c_6f63_6b64;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        let applied = embedded::migrations::runner().run_async(&mut **client).await;
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
        let report = applied.map_err(|e| anyhow::anyhow!("migrating the PostgreSQL schema failed: {e}"))?;
        for m in report.applied_migrations() {
            tracing::info!(version = m.version(), name = m.name(), "PostgreSQL schema migrated");
        }
        Ok(())
    }

    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| anyhow::anyhow!("PostgreSQL unreachable: {e}"))
    }

    /// The grant writes go under, or the refusal.
    fn fence(&self) -> Result<(String, u64), Fenced> {
        self.fence.lock().unwrap().clone().ok_or(Fenced { epoch: None })
    }

    /// Inside `tx`: the grant still holds (locked against a new grant until
    /// the transaction ends).
    async fn check_fence(
        tx: &deadpool_postgres::Transaction<'_>,
        cluster: &str,
        fence: &(String, u64),
    ) -> anyhow::Result<()> {
        let held = tx
            .query_opt(
                "SELECT 1 FROM flockd_lease WHERE cluster = $1 AND holder = $2 AND epoch = $3 AND expires_at > now() FOR SHARE",
                &[&cluster, &fence.0, &(fence.1 as i64)],
            )
            .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(Fenced { epoch: Some(fence.1) }.into()),
        }
    }

    /// Drops the oldest journal rows past the record and byte bounds.
    async fn prune(&self, client: &deadpool_postgres::Object) -> anyhow::Result<()> {
        client
            .execute(
                "DELETE FROM flockd_journal WHERE cluster = $1 AND seq <= \
                 (SELECT seq FROM flockd_journal WHERE cluster = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1)",
                &[&self.cluster, &(self.limits.max_records as i64)],
            )
            .await?;
        client
            .execute(
                "DELETE FROM flockd_journal WHERE cluster = $1 AND seq <= \
                 (SELECT max(seq) FROM (SELECT seq, sum(bytes) OVER (ORDER BY seq DESC) AS total \
                  FROM flockd_journal WHERE cluster = $1) newest WHERE total > $2::bigint)",
                &[&self.cluster, &(self.limits.max_bytes as i64)],
            )
            .await?;
        Ok(())
    }
}

#[async_trait]
impl StateStore for PgStore {
    async fn load(&self) -> anyhow::Result<Records> {
        let client = self.client().await?;
        let rows =
            client.query("SELECT kind, key, value FROM flockd_record WHERE cluster = $1", &[&self.cluster]).await?;
        let mut out = Records::new();
        for row in rows {
            let (kind, key, value): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let Some(kind) = RecordKind::parse(&kind) else {
                anyhow::bail!(
                    "the store holds state records of kind {kind:?}, which this flockd does not know: it was written by a newer flockd; run that version"
                );
            };
            out.insert(RecordKey { kind, key }, value);
        }
        Ok(out)
    }

    async fn write(&self, changes: &[StateChange]) -> anyhow::Result<()> {
        let fence = self.fence()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        Self::check_fence(&tx, &self.cluster, &fence).await?;
        let put = tx
            .prepare_cached(
                "INSERT INTO flockd_record (cluster, kind, key, value) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (cluster, kind, key) DO UPDATE SET value = EXCLUDED.value",
            )
            .await?;
        let delete =
            tx.prepare_cached("DELETE FROM flockd_record WHERE cluster = $1 AND kind = $2 AND key = $3").await?;
        for change in changes {
            match change {
                StateChange::Put(k, v) => tx.execute(&put, &[&self.cluster, &k.kind.as_str(), &k.key, v]).await?,
                StateChange::Delete(k) => tx.execute(&delete, &[&self.cluster, &k.kind.as_str(), &k.key]).await?,
            };
        }
        tx.commit().await?;
        Ok(())
    }

    async fn append(&self, record: &TickRecord) -> anyhow::Result<()> {
        let fence = self.fence()?;
        let text = serde_json::to_string(record)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        Self::check_fence(&tx, &self.cluster, &fence).await?;
        let seq: i64 = tx
            .query_one(
                "INSERT INTO flockd_journal (cluster, tick, bytes, record) VALUES ($1, $2, $3, $4) RETURNING seq",
                &[&self.cluster, &(record.tick as i64), &(text.len() as i64), &text],
            )
            .await?
            .get(0);
        let mut instances: Vec<&str> = record.instances().collect();
        instances.sort_unstable();
        instances.dedup();
        if !instances.is_empty() {
            tx.execute(
                "INSERT INTO flockd_journal_instance (cluster, instance, seq) SELECT $1, unnest($2::text[]), $3",
                &[&self.cluster, &instances, &seq],
            )
            .await?;
        }
        tx.commit().await?;
        if self.appended.fetch_add(1, Ordering::Relaxed).is_multiple_of(PRUNE_EVERY) {
            self.prune(&client).await?;
        }
        Ok(())
    }

    async fn journal(&self, query: &JournalQuery) -> anyhow::Result<Vec<TickRecord>> {
        let client = self.client().await?;
        let limit = if query.limit == 0 { i64::MAX } else { query.limit as i64 };
        let rows = match &query.instance {
            None => {
                client
                    .query(
                        "SELECT tick, record FROM flockd_journal WHERE cluster = $1 ORDER BY seq DESC LIMIT $2",
                        &[&self.cluster, &limit],
                    )
                    .await?
            }
            Some(instance) => {
                client
                    .query(
                        "SELECT j.tick, j.record FROM flockd_journal_instance i \
                         JOIN flockd_journal j ON j.cluster = i.cluster AND j.seq = i.seq \
                         WHERE i.cluster = $1 AND i.instance = $2 ORDER BY i.seq DESC LIMIT $3",
                        &[&self.cluster, instance, &limit],
                    )
                    .await?
            }
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (tick, text): (i64, String) = (row.get(0), row.get(1));
            match serde_json::from_str(&text) {
                Ok(record) => out.push(record),
                Err(e) => tracing::warn!(tick, "skipping a journal record that does not decode: {e}"),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl LeaseBackend for PgStore {
    async fn acquire_or_renew(&self, holder: &str, lease: Duration) -> anyhow::Result<LeaseAnswer> {
        let client = self.client().await?;
        // Free, expired or ours: take or renew it. The epoch grows with a new
        // holder, and when even our own grant had lapsed (another process
        // may have led and written meanwhile).
        let granted = client
            .query_opt(
                "INSERT INTO flockd_lease AS l (cluster, holder, epoch, expires_at) \
                 VALUES ($1, $2, 1, now() + $3 * interval '1 millisecond') \
                 ON CONFLICT (cluster) DO UPDATE SET \
                   holder = EXCLUDED.holder, \
                   epoch = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now() THEN l.epoch ELSE l.epoch + 1 END, \
                   expires_at = EXCLUDED.expires_at \
                 WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now() \
                 RETURNING epoch",
                &[&self.cluster, &holder, &(lease.as_millis() as f64)],
            )
            .await?;
        let answer = match granted {
            Some(row) => LeaseAnswer::Held { epoch: row.get::<_, i64>(0) as u64 },
            None => {
                let row = client
                    .query_one("SELECT holder, epoch FROM flockd_lease WHERE cluster = $1", &[&self.cluster])
                    .await?;
                LeaseAnswer::HeldBy { holder: row.get(0), epoch: row.get::<_, i64>(1) as u64 }
            }
        };
        *self.fence.lock().unwrap() = match &answer {
            LeaseAnswer::Held { epoch } => Some((holder.to_string(), *epoch)),
            LeaseAnswer::HeldBy { .. } => None,
        };
        Ok(answer)
    }

    async fn release(&self, holder: &str, epoch: u64) -> anyhow::Result<()> {
        *self.fence.lock().unwrap() = None;
        let client = self.client().await?;
        client
            .execute(
                "UPDATE flockd_lease SET expires_at = now() WHERE cluster = $1 AND holder = $2 AND epoch = $3",
                &[&self.cluster, &holder, &(epoch as i64)],
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
