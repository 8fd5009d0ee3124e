//! Where flockd learns what is queued and who is working: ClearML in
//! production, an in-memory queue in tests and the simulator.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::Millis;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueState {
    pub name: String,
    pub pending: u32,
    /// Age of the oldest pending entry, 0 when the queue is empty.
    pub oldest_wait_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    /// The ClearML worker id. flockd's own workers follow
    /// [`crate::naming::worker_id`], which carries the instance id.
    pub id: String,
    /// Names of the queues it serves.
    pub queues: Vec<String>,
    /// The task it is running, if any: a busy worker is never terminated.
    pub task: Option<String>,
    /// When it registered (unix ms), if the source knows.
    pub registered_at: Option<Millis>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueObservation {
    pub queues: Vec<QueueState>,
    pub workers: Vec<Worker>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("queue source unreachable: {0}")]
    Unreachable(String),
    #[error("queue source refused our credentials: {0}")]
    Auth(String),
    #[error("queue {0:?} does not exist on the queue source")]
    NoSuchQueue(String),
    #[error("queue source error: {0}")]
    Other(String),
}

#[async_trait]
pub trait QueueSource: Send + Sync {
    /// Depth of each named queue and every worker the source knows of.
    /// Must fail rather than return partial data: decisions on half a
    /// picture are how busy machines get killed.
    async fn observe(&self, queues: &[String]) -> Result<QueueObservation, SourceError>;

    /// Forget a worker whose machine is gone so it stops counting as
    /// capacity. Sources that cannot do this return Ok.
    async fn unregister_worker(&self, worker_id: &str) -> Result<(), SourceError>;

    /// Every worker, fresh: the last look before terminating a machine.
    /// Sources with a cheaper call than a full observation override it.
    async fn workers(&self) -> Result<Vec<Worker>, SourceError> {
        Ok(self.observe(&[]).await?.workers)
    }
}
