//! The cloud seam: launch, list what we own, terminate. Typed errors drive
//! decisions (a capacity error makes the next snapshot steer policies to
//! another resource), so providers must classify, not stringify.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{FailureKind, Millis};

/// Everything a provider needs to start one machine. The resource's own
/// provider settings (AMI, machine type, subnets, …) live in the provider,
/// keyed by `resource`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LaunchRequest {
    /// flockd's cluster id: every machine is tagged with it at creation.
    pub cluster: String,
    pub resource: String,
    /// Queues its agent must serve (all queues of the resource).
    pub queues: Vec<String>,
    /// Unique per intended machine; a retried launch with the same key must
    /// not start a second machine (EC2 ClientToken, GCE requestId).
    pub idempotency_key: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudState {
    Pending,
    Running,
    Stopping,
    /// Powered off but not deleted (its agent exited and the bootstrap shut
    /// it down, or someone stopped it): no agent runs, yet its disks bill
    /// and it holds a slot. The controller deletes it.
    Stopped,
    Terminated,
}

/// A machine as the cloud reports it, found by flockd's cluster tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudInstance {
    pub id: String,
    pub resource: String,
    pub state: CloudState,
    /// Unix ms.
    pub launched_at: Millis,
    /// The idempotency key it was launched with, if the cloud kept it.
    pub launch_key: Option<String>,
    /// Why a machine the cloud made will never run its agent, when the cloud
    /// says so after the create succeeded (a Kubernetes pod that cannot be
    /// scheduled or cannot pull its image, a VM stuck in a failed state).
    /// The host records it as a failure of its resource, so policies steer
    /// away, and deletes the machine.
    #[serde(default)]
    pub failure: Option<MachineFailure>,
}

/// A failure the cloud reports for a machine it made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MachineFailure {
    pub kind: FailureKind,
    pub message: String,
}

/// Where a provider's machines live, as far as its listing goes: two
/// providers with the same scope list the same machines. flockd remembers
/// every scope it launched into and keeps listing it until it is empty, even
/// once the config no longer names it (a changed region, project or
/// state-dir), so the machines there still count against the caps, show in
/// status and are retired by the idle rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderScope {
    /// The provider kind that can list it again ("aws", "gcp", "local").
    pub kind: String,
    /// Where, in words: "region eu-west-1", "project p, zones a, b", a
    /// directory. Every setting that changes what a listing returns is in it.
    pub place: String,
    /// The provider's settings as last configured (JSON, opaque to the
    /// core): what the host builds a provider for this scope from once the
    /// config no longer names it.
    pub settings: String,
}

impl ProviderScope {
    /// The scope's identity: equal keys list the same machines.
    pub fn key(&self) -> String {
        format!("{}: {}", self.kind, self.place)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProviderError {
    #[error("no capacity: {0}")]
    Capacity(String),
    #[error("quota or limit reached: {0}")]
    Quota(String),
    #[error("throttled: {0}")]
    Throttled(String),
    #[error("not authorized: {0}")]
    Auth(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// No answer came within the action timeout: the call may have been
    /// carried out.
    #[error("no answer in time: {0}")]
    Timeout(String),
    /// An answer that does not say whether the call was carried out (a
    /// 5xx, a connection reset mid-request).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("{0}")]
    Other(String),
}

impl ProviderError {
    /// The failure a policy sees in the next snapshot.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            ProviderError::Capacity(_) => FailureKind::Capacity,
            ProviderError::Quota(_) => FailureKind::Quota,
            ProviderError::Auth(_) => FailureKind::Auth,
            _ => FailureKind::Other,
        }
    }

    /// Worth trying again soon with the same request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ProviderError::Throttled(_)
                | ProviderError::Timeout(_)
                | ProviderError::OutcomeUnknown(_)
                | ProviderError::Other(_)
        )
    }

    /// Whether the call may have been carried out despite the error. Only a
    /// definite refusal (capacity, quota, throttling, credentials, a bad
    /// request, nothing to act on) says it was not; anything else, an
    /// unclassified error included, must be treated as "maybe": a launch
    /// that maybe happened keeps counting until the cloud lists it.
    pub fn may_have_taken_effect(&self) -> bool {
        match self {
            ProviderError::Capacity(_)
            | ProviderError::Quota(_)
            | ProviderError::Throttled(_)
            | ProviderError::Auth(_)
            | ProviderError::InvalidRequest(_)
            | ProviderError::NotFound(_) => false,
            ProviderError::Timeout(_) | ProviderError::OutcomeUnknown(_) | ProviderError::Other(_) => true,
        }
    }
}

#[async_trait]
pub trait CloudProvider: Send + Sync {
    /// Start one machine, tagged at creation with cluster, resource and launch
    /// key, whose agent will register as
    /// `naming::worker_id(cluster, resource, <its instance id>)`.
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError>;

    /// Every non-terminated machine carrying this cluster's tag. The cloud is
    /// the source of truth: this is how a restarted flockd adopts its fleet.
    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError>;

    /// Terminate a machine. Terminating one that is already gone is Ok.
    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError>;
}
