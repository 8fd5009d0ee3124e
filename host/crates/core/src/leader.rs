//! Leader election over a shared store: only the lease's holder ticks.
//!
//! A [`LeaseBackend`] (a row in PostgreSQL, say) grants the lease with an
//! epoch that grows with every change of holder; the store then refuses
//! writes under an older epoch ([`Fenced`]), so a leader that paused past
//! its lease cannot record a launch intent, and so cannot launch. The
//! [`Elector`] here is the client side, after client-go's `leaderelection`:
//! campaign every `retry`, renew every `retry` while leading, and stop
//! leading at once when no renewal succeeded within `renew_deadline`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

/// The lease's timings; defaults after client-go (and cluster-autoscaler).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTimings {
    /// How long a grant lasts without renewal (judged by the store's clock).
    pub lease: Duration,
    /// A leader that has not renewed within this stops acting.
    pub renew_deadline: Duration,
    /// How often to campaign or renew.
    pub retry: Duration,
}

impl Default for LeaseTimings {
    fn default() -> Self {
        LeaseTimings {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

impl LeaseTimings {
    /// lease > renew deadline > 1.2 × retry, as client-go requires: a
    /// leader gives up before its grant can lapse, and has more than one
    /// try at renewing before it does.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry.is_zero() {
            return Err("retry must be more than 0".into());
        }
        if self.lease <= self.renew_deadline {
            return Err(format!(
                "the lease ({:?}) must be longer than the renew deadline ({:?}): a leader must stop acting before another can take over",
                self.lease, self.renew_deadline
            ));
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry.as_secs_f64() {
            return Err(format!(
                "the renew deadline ({:?}) must be more than 1.2 × retry ({:?}), or one slow renewal deposes the leader",
                self.renew_deadline, self.retry
            ));
        }
        Ok(())
    }
}

/// What the backend answered a campaign or renewal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// The caller holds the lease under this epoch.
    Held { epoch: u64 },
    /// Another holds it.
    HeldBy { holder: String, epoch: u64 },
}

/// Where the lease lives. Expiry is the backend's business (a database's
/// `now()`), so the hosts' clocks do not matter.
#[async_trait]
pub trait LeaseBackend: Send + Sync {
    /// Takes the lease for `holder` if it is free, expired or already
    /// theirs (renewing it for `lease`). A change of holder, or a grant
    /// after an expiry, comes with a new, higher epoch.
    async fn acquire_or_renew(&self, holder: &str, lease: Duration) -> anyhow::Result<LeaseAnswer>;
    /// Gives the lease up at once, if `holder` still holds it under `epoch`.
    async fn release(&self, holder: &str, epoch: u64) -> anyhow::Result<()>;
}

/// A store refused a write: the writer's epoch is no longer the lease's.
/// Code decides by this type (the controller stops acting), never by text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("write refused: this flockd (epoch {epoch:?}) no longer holds the leader lease")]
pub struct Fenced {
    pub epoch: Option<u64>,
}

/// Who leads, as this process last knew it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    /// This process's id in the lease.
    pub holder: String,
    /// Set while this process leads: the epoch its writes carry.
    pub epoch: Option<u64>,
    /// The holder last seen (this one, or another), if any.
    pub leader: Option<String>,
    /// Times this process became or stopped being the leader.
    pub transitions: u64,
    /// Renewals that failed (an error or a timeout) while leading.
    pub renew_failures: u64,
}

impl Leadership {
    pub fn leading(&self) -> bool {
        self.epoch.is_some()
    }
}

/// The campaign: run it, watch [`Elector::watch`].
pub struct Elector {
    backend: Arc<dyn LeaseBackend>,
    timings: LeaseTimings,
    state: watch::Sender<Leadership>,
}

impl Elector {
    pub fn new(backend: Arc<dyn LeaseBackend>, holder: String, timings: LeaseTimings) -> Self {
        let state = watch::channel(Leadership { holder, ..Default::default() }).0;
        Elector { backend, timings, state }
    }

    pub fn watch(&self) -> watch::Receiver<Leadership> {
        self.state.subscribe()
    }

    /// Campaigns and renews until `stop` resolves, then releases the lease
    /// if held, so a follower takes over at once instead of after expiry.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let holder = self.state.borrow().holder.clone();
        // When the last renewal (or grant) succeeded, while leading.
        let mut renewed: Option<Instant> = None;
        loop {
            let attempt_started = Instant::now();
            // A renewal may take no longer than what is left of the deadline.
            let budget = match renewed {
                Some(at) => self.timings.renew_deadline.saturating_sub(at.elapsed()),
                None => self.timings.renew_deadline,
            };
            let answer = tokio::select! {
                _ = &mut stop => break,
                a = tokio::time::timeout(budget, self.backend.acquire_or_renew(&holder, self.timings.lease)) => a,
            };
            match answer {
                Ok(Ok(LeaseAnswer::Held { epoch })) => {
                    renewed = Some(attempt_started);
                    self.set(|l| {
                        if l.epoch != Some(epoch) {
                            // A new term (a grant, or a renewal after a lapse):
                            // what the store holds may have changed meanwhile.
                            if l.epoch.is_some() {
                                l.transitions += 1; // lost the old term
                            }
                            l.transitions += 1;
                            tracing::info!(epoch, "became the leader");
                        }
                        l.epoch = Some(epoch);
                        l.leader = Some(l.holder.clone());
                    });
                }
                Ok(Ok(LeaseAnswer::HeldBy { holder: other, epoch })) => {
                    if renewed.take().is_some() {
                        tracing::warn!(leader = %other, epoch, "lost the leader lease to another flockd: stopped acting");
                    }
                    self.set(|l| {
                        if l.epoch.take().is_some() {
                            l.transitions += 1;
                        }
                        l.leader = Some(other.clone());
                    });
                }
                Ok(Err(e)) => self.failed(&mut renewed, &format!("{e:#}")),
                Err(_) => self.failed(&mut renewed, "no answer within the renew deadline"),
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(attempt_started + self.timings.retry) => {}
            }
        }
        let held = self.state.borrow().epoch;
        if let Some(epoch) = held {
            self.set(|l| {
                l.epoch = None;
                l.transitions += 1;
            });
            match self.backend.release(&holder, epoch).await {
                Ok(()) => tracing::info!(epoch, "released the leader lease"),
                Err(e) => tracing::warn!("could not release the leader lease (it expires on its own): {e:#}"),
            }
        }
    }

    /// A campaign or renewal got no answer. A leader keeps leading until its
    /// renew deadline passes, then stops at once.
    fn failed(&self, renewed: &mut Option<Instant>, why: &str) {
        let Some(at) = *renewed else {
            tracing::debug!("campaign for the leader lease failed: {why}");
            return;
        };
        let lapsed = at.elapsed() >= self.timings.renew_deadline;
        if lapsed {
            *renewed = None;
            tracing::warn!("could not renew the leader lease within the renew deadline: stopped acting ({why})");
        } else {
            tracing::warn!("renewing the leader lease failed, retrying: {why}");
        }
        self.set(|l| {
            l.renew_failures += 1;
            if lapsed && l.epoch.take().is_some() {
                l.transitions += 1;
            }
        });
    }

    fn set(&self, f: impl FnOnce(&mut Leadership)) {
        self.state.send_modify(f);
    }
}

/// Resolves once `leadership` is no longer held under `epoch`.
pub async fn lost(mut leadership: watch::Receiver<Leadership>, epoch: u64) {
    let _ = leadership.wait_for(|l| l.epoch != Some(epoch)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A lease in memory, judged on tokio's clock; `down` makes every call
    /// hang (a database that stopped answering).
    #[derive(Default)]
    struct MemoryLease {
        row: Mutex<Option<(String, u64, Instant)>>,
        down: Mutex<bool>,
    }

    #[async_trait]
    impl LeaseBackend for MemoryLease {
        async fn acquire_or_renew(&self, holder: &str, lease: Duration) -> anyhow::Result<LeaseAnswer> {
            if *self.down.lock().unwrap() {
                std::future::pending::<()>().await;
            }
            let mut row = self.row.lock().unwrap();
            let now = Instant::now();
            match row.as_mut() {
                Some((h, epoch, expires)) if h != holder && *expires > now => {
                    Ok(LeaseAnswer::HeldBy { holder: h.clone(), epoch: *epoch })
                }
                Some((h, epoch, expires)) => {
                    if h != holder || *expires <= now {
                        *epoch += 1;
                    }
                    *h = holder.to_string();
                    *expires = now + lease;
                    Ok(LeaseAnswer::Held { epoch: *epoch })
                }
                None => {
                    *row = Some((holder.to_string(), 1, now + lease));
                    Ok(LeaseAnswer::Held { epoch: 1 })
                }
            }
        }
        async fn release(&self, holder: &str, epoch: u64) -> anyhow::Result<()> {
            let mut row = self.row.lock().unwrap();
            if let Some((h, e, expires)) = row.as_mut()
                && h == holder
                && *e == epoch
            {
                *expires = Instant::now();
            }
            Ok(())
        }
    }

    fn timings() -> LeaseTimings {
        LeaseTimings::default()
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn timings_are_validated_as_client_go_does() {
        assert!(LeaseTimings::default().validate().is_ok());
        let s = Duration::from_secs;
        let bad = |lease, renew, retry| LeaseTimings { lease: s(lease), renew_deadline: s(renew), retry: s(retry) };
        assert!(bad(10, 10, 2).validate().unwrap_err().contains("longer than the renew deadline"));
        assert!(bad(15, 2, 2).validate().unwrap_err().contains("1.2 × retry"));
        assert!(LeaseTimings { retry: Duration::ZERO, ..Default::default() }.validate().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn one_of_two_leads_and_the_other_takes_over_once_it_is_released() {
        let backend = Arc::new(MemoryLease::default());
        let a = Arc::new(Elector::new(backend.clone(), "a".into(), timings()));
        let b = Arc::new(Elector::new(backend.clone(), "b".into(), timings()));
        let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
        let run_a = tokio::spawn({
            let a = a.clone();
            async move { a.run(async { drop(stopped_a.await) }).await }
        });
        settle().await;
        let run_b = tokio::spawn({
            let b = b.clone();
            async move { b.run(std::future::pending()).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(a.watch().borrow().epoch, Some(1), "a took the free lease and kept renewing it");
        let seen_by_b = b.watch().borrow().clone();
        assert_eq!((seen_by_b.epoch, seen_by_b.leader.as_deref()), (None, Some("a")), "b follows and names a");

        // a stops and releases: b takes over on its next retry, not after
        // the 15 s lease.
        stop_a.send(()).unwrap();
        run_a.await.unwrap();
        let released = Instant::now();
        let mut watch_b = b.watch();
        watch_b.wait_for(|l| l.leading()).await.unwrap();
        assert!(released.elapsed() <= timings().retry, "took over {:?} after the release", released.elapsed());
        assert_eq!(b.watch().borrow().epoch, Some(2), "a new holder, a new epoch");
        run_b.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_stops_by_its_renew_deadline_and_before_its_lease_lapses() {
        let backend = Arc::new(MemoryLease::default());
        let a = Arc::new(Elector::new(backend.clone(), "a".into(), timings()));
        let run = tokio::spawn({
            let a = a.clone();
            async move { a.run(std::future::pending()).await }
        });
        let mut watch = a.watch();
        watch.wait_for(|l| l.leading()).await.unwrap();
        // The last renewal before the store goes quiet.
        tokio::time::sleep(Duration::from_millis(4500)).await;
        let last_renewal = Instant::now() - Duration::from_millis(500);
        *backend.down.lock().unwrap() = true;
        watch.wait_for(|l| !l.leading()).await.unwrap();
        let stopped_after = last_renewal.elapsed();
        assert!(stopped_after <= timings().renew_deadline, "still leading {stopped_after:?} after the last renewal");
        assert!(stopped_after < timings().lease);
        let l = a.watch().borrow().clone();
        assert_eq!(l.transitions, 2, "{l:?}");
        assert!(l.renew_failures >= 1, "{l:?}");

        // Back up: it campaigns again, under a new epoch (the lease lapsed).
        *backend.down.lock().unwrap() = false;
        watch.wait_for(|l| l.leading()).await.unwrap();
        assert_eq!(a.watch().borrow().epoch, Some(2));
        run.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_lease_was_taken_stops_at_its_next_renewal() {
        let backend = Arc::new(MemoryLease::default());
        let a = Arc::new(Elector::new(backend.clone(), "a".into(), timings()));
        let run = tokio::spawn({
            let a = a.clone();
            async move { a.run(std::future::pending()).await }
        });
        let mut watch = a.watch();
        watch.wait_for(|l| l.leading()).await.unwrap();
        // Another holder took the row (a leader that paused past its lease).
        *backend.row.lock().unwrap() = Some(("b".into(), 7, Instant::now() + Duration::from_secs(15)));
        let lost_at = Instant::now();
        lost(a.watch(), 1).await;
        assert!(lost_at.elapsed() <= timings().retry);
        assert_eq!(a.watch().borrow().leader.as_deref(), Some("b"));
        run.abort();
    }
}
