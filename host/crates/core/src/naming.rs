//! The one link between a ClearML worker and a cloud machine is the worker
//! id, which the machine's start-up script builds from its own instance id.

/// `flockd:<cluster>:<resource>:<instance-id>`.
pub fn worker_id(cluster: &str, resource: &str, instance_id: &str) -> String {
    format!("{}{instance_id}", worker_id_prefix(cluster, resource))
}

/// What the start-up script prepends to the instance id it reads from the
/// metadata service.
pub fn worker_id_prefix(cluster: &str, resource: &str) -> String {
    format!("flockd:{cluster}:{resource}:")
}

/// The parts of a worker id flockd assigned in this cluster, or None for a
/// worker flockd did not launch (or another cluster's).
pub fn parse_worker_id<'a>(cluster: &str, worker_id: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = worker_id.strip_prefix("flockd:")?.strip_prefix(cluster)?.strip_prefix(':')?;
    let (resource, instance) = rest.split_once(':')?;
    (!resource.is_empty() && !instance.is_empty()).then_some((resource, instance))
}

/// Tag and label keys written at launch. GCE labels allow only lowercase
/// letters, digits, `-` and `_`, so the same keys serve both clouds.
pub mod tags {
    pub const CLUSTER: &str = "flockd-cluster";
    pub const RESOURCE: &str = "flockd-resource";
    pub const LAUNCH_KEY: &str = "flockd-launch-key";
    pub const WORKER_PREFIX: &str = "flockd-worker-prefix";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_round_trip_and_reject_other_clusters() {
        let id = worker_id("prod", "gpu-spot", "i-0abc");
        assert_eq!(id, "flockd:prod:gpu-spot:i-0abc");
        assert_eq!(parse_worker_id("prod", &id), Some(("gpu-spot", "i-0abc")));
        assert_eq!(parse_worker_id("prod2", &id), None);
        assert_eq!(parse_worker_id("pro", &id), None);
        assert_eq!(parse_worker_id("prod", "laptop-1"), None);
    }
}
