//! The Instance body of one insert, and reading an Instance back. Labels and
//! metadata are part of the insert itself: there is no moment in which the
//! instance exists unlabelled.

use std::collections::BTreeMap;

use flockd_core::naming::{self, tags};
use flockd_core::{CloudInstance, CloudState, LaunchRequest};
use google_cloud_compute_v1::model::access_config::Type as AccessType;
use google_cloud_compute_v1::model::instance::Status;
use google_cloud_compute_v1::model::scheduling::{InstanceTerminationAction, OnHostMaintenance, ProvisioningModel};
use google_cloud_compute_v1::model::{
    AcceleratorConfig, AccessConfig, AttachedDisk, AttachedDiskInitializeParams, Instance, Metadata, NetworkInterface,
    Scheduling, ServiceAccount, metadata,
};

use crate::config::{GcpResourceConfig, Provisioning};
use crate::labels::label_value;

/// Metadata keys with the exact (unsanitised) values, and the worker id the
/// start-up script should register with.
pub const META_CLUSTER: &str = "flockd-cluster";
pub const META_RESOURCE: &str = "flockd-resource";
pub const META_LAUNCH_KEY: &str = "flockd-launch-key";
pub const META_WORKER_ID: &str = "flockd-worker-id";
pub const META_STARTUP_SCRIPT: &str = "startup-script";

pub struct InstanceSpec<'a> {
    pub project: &'a str,
    pub zone: &'a str,
    pub name: &'a str,
    pub request: &'a LaunchRequest,
    pub resource: &'a GcpResourceConfig,
    pub startup_script: Option<&'a str>,
}

impl InstanceSpec<'_> {
    pub fn labels(&self) -> BTreeMap<String, String> {
        let request = self.request;
        let mut labels = self.resource.labels.clone();
        labels.insert(tags::CLUSTER.to_owned(), label_value(&request.cluster));
        labels.insert(tags::RESOURCE.to_owned(), label_value(&request.resource));
        labels.insert(tags::LAUNCH_KEY.to_owned(), label_value(&request.idempotency_key));
        labels.insert(
            tags::WORKER_PREFIX.to_owned(),
            label_value(&naming::worker_id_prefix(&request.cluster, &request.resource)),
        );
        labels
    }

    pub fn body(&self) -> Instance {
        let (request, resource, zone) = (self.request, self.resource, self.zone);
        let labels = self.labels();
        let mut items = vec![
            item(META_CLUSTER, &request.cluster),
            item(META_RESOURCE, &request.resource),
            item(META_LAUNCH_KEY, &request.idempotency_key),
            item(META_WORKER_ID, &naming::worker_id(&request.cluster, &request.resource, self.name)),
        ];
        if let Some(script) = self.startup_script {
            items.push(item(META_STARTUP_SCRIPT, script));
        }
        // The config's own entries (never one of flockd's keys: refused when read).
        items.extend(resource.metadata.iter().map(|(k, v)| item(k, v)));

        let mut disk_params =
            AttachedDiskInitializeParams::new().set_source_image(&resource.boot_image).set_labels(labels.clone());
        if let Some(size) = resource.boot_disk_size_gb {
            disk_params = disk_params.set_disk_size_gb(size);
        }
        if let Some(disk_type) = &resource.boot_disk_type {
            disk_params = disk_params.set_disk_type(format!("zones/{zone}/diskTypes/{disk_type}"));
        }
        let boot_disk = AttachedDisk::new().set_boot(true).set_auto_delete(true).set_initialize_params(disk_params);

        let mut nic = NetworkInterface::new()
            .set_network(resource.network.clone().unwrap_or_else(|| "global/networks/default".to_owned()));
        if let Some(subnetwork) = &resource.subnetwork {
            nic = nic.set_subnetwork(subnetwork);
        }
        if resource.external_ip {
            nic = nic
                .set_access_configs([AccessConfig::new().set_name("External NAT").set_type(AccessType::OneToOneNat)]);
        }

        let mut scheduling = Scheduling::new();
        if !resource.accelerators.is_empty() || resource.provisioning == Provisioning::Spot {
            // GPUs cannot live-migrate, and spot VMs must not try.
            scheduling = scheduling.set_on_host_maintenance(OnHostMaintenance::Terminate).set_automatic_restart(false);
        }
        if resource.provisioning == Provisioning::Spot {
            scheduling = scheduling
                .set_provisioning_model(ProvisioningModel::Spot)
                .set_instance_termination_action(InstanceTerminationAction::Delete);
        }

        let mut instance = Instance::new()
            .set_name(self.name)
            .set_machine_type(format!("zones/{zone}/machineTypes/{}", resource.machine_type))
            .set_labels(labels)
            .set_metadata(Metadata::new().set_items(items))
            .set_disks([boot_disk])
            .set_network_interfaces([nic])
            .set_scheduling(scheduling)
            .set_guest_accelerators(resource.accelerators.iter().map(|a| {
                AcceleratorConfig::new()
                    .set_accelerator_type(format!(
                        "projects/{}/zones/{zone}/acceleratorTypes/{}",
                        self.project, a.accelerator_type
                    ))
                    .set_accelerator_count(a.count)
            }));
        if let Some(email) = &resource.service_account {
            instance = instance
                .set_service_accounts([ServiceAccount::new().set_email(email).set_scopes(resource.scopes.clone())]);
        }
        instance
    }
}

fn item(key: &str, value: &str) -> metadata::Items {
    metadata::Items::new().set_key(key).set_value(value)
}

pub fn metadata_value<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance.metadata.as_ref()?.items.iter().find(|i| i.key.as_deref() == Some(key)).and_then(|i| i.value.as_deref())
}

/// The instance as flockd sees it; its id is its name (unique in the
/// project's zones, since flockd derives it from cluster and launch key).
pub fn cloud_instance(instance: &Instance) -> Option<CloudInstance> {
    let state = match instance.status.as_ref() {
        Some(Status::Running) => CloudState::Running,
        Some(Status::Provisioning | Status::Staging | Status::Pending) | None => CloudState::Pending,
        // Shut down from inside (the bootstrap powers off when its agent
        // exits) or stopped: GCE keeps it, with its disks, until deleted;
        // the spot DELETE action only covers preemption. The controller
        // deletes it.
        Some(Status::Terminated | Status::Stopped | Status::Suspended) => CloudState::Stopped,
        // Being stopped or repaired: running no agent, on its way out as far
        // as flockd is concerned.
        Some(_) => CloudState::Stopping,
    };
    let launched_at = instance
        .creation_timestamp
        .as_deref()
        .and_then(|t| google_cloud_wkt::Timestamp::try_from(t).ok())
        .map_or(0, |t| (t.seconds().max(0) as u64) * 1000 + (t.nanos().max(0) as u64) / 1_000_000);
    Some(CloudInstance {
        id: instance.name.clone()?,
        resource: metadata_value(instance, META_RESOURCE).unwrap_or_default().to_owned(),
        state,
        launched_at,
        launch_key: metadata_value(instance, META_LAUNCH_KEY).map(str::to_owned),
        failure: None,
    })
}
