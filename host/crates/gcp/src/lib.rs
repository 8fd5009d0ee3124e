//! flockd's Compute Engine provider. Every instance is labelled at creation
//! (instance and boot disk, in the insert itself), named deterministically
//! from the launch's idempotency key and inserted with a requestId derived
//! from it, so a retried launch collides with the first instead of starting
//! a second. The insert operation is awaited and its `error` always checked:
//! a stockout moves the same launch to the next configured zone. Throttling
//! is retried here with a bounded backoff; the client library's own retry is
//! off.

mod config;
mod errors;
mod instance;
mod labels;

use google_cloud_compute_v1::model::instances_scoped_list::warning::Code as InstancesScopedWarningCode;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use flockd_core::naming::tags;
use flockd_core::{CloudInstance, CloudProvider, LaunchRequest, ProviderError, ThrottleBackoff};
use google_cloud_compute_v1::client::Instances;
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_lro::Poller;

pub use config::{GcpAccelerator, GcpProviderConfig, GcpResourceConfig, Provisioning, validate_metadata};
use errors::{classify, operation_failure};
use instance::{InstanceSpec, cloud_instance, metadata_value};
pub use instance::{META_CLUSTER, META_LAUNCH_KEY, META_RESOURCE, META_STARTUP_SCRIPT, META_WORKER_ID};

/// GCE metadata values hold at most 256 KiB.
const MAX_STARTUP_SCRIPT: usize = 256 * 1024;

pub struct GcpProvider {
    client: Instances,
    project: String,
    zones: Vec<String>,
    resources: HashMap<String, GcpResourceConfig>,
    startup_scripts: HashMap<String, String>,
    /// Throttled steps are tried again (one subnet or zone, not the whole call).
    backoff: ThrottleBackoff,
    list_page_size: u32,
    operation_timeout: Duration,
    /// The zone of each instance seen, so terminate need not search.
    zone_of: Mutex<HashMap<String, String>>,
}

enum Inserted {
    Created,
    /// An instance with this name exists already: an earlier try of this
    /// same launch made it.
    AlreadyExists,
}

impl GcpProvider {
    /// Builds the Compute client and checks each resource's settings.
    pub async fn new(
        config: &GcpProviderConfig,
        resources: HashMap<String, GcpResourceConfig>,
    ) -> Result<Self, ProviderError> {
        let invalid = |m: String| ProviderError::InvalidRequest(m);
        if config.project.trim().is_empty() {
            return Err(invalid("project is empty: set the project id".to_owned()));
        }
        if config.zones.is_empty() {
            return Err(invalid("zones is empty: list at least one zone".to_owned()));
        }
        if !(1..=500).contains(&config.list_page_size) {
            return Err(invalid(format!("list-page-size must be between 1 and 500, got {}", config.list_page_size)));
        }
        validate_metadata("[provider.gcp]", &config.metadata).map_err(invalid)?;
        let mut resources = resources;
        for (name, resource) in &mut resources {
            resource.validate(name).map_err(invalid)?;
            for (key, value) in &config.metadata {
                resource.metadata.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        // The client is built without a default TLS provider; install ring
        // unless the process already chose one (then this is a no-op).
        let _ = rustls::crypto::ring::default_provider().install_default();

        let credentials = if config.anonymous {
            google_cloud_auth::credentials::anonymous::Builder::new().build()
        } else if let Some(path) = &config.credentials_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ProviderError::Auth(format!("credentials-file {}: {e}", path.display())))?;
            let key: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
                ProviderError::Auth(format!(
                    "credentials-file {} is not JSON: download a service-account key file",
                    path.display()
                ))
            })?;
            google_cloud_auth::credentials::service_account::Builder::new(key)
                .build()
                .map_err(|e| ProviderError::Auth(format!("credentials-file {}: {e}", path.display())))?
        } else {
            google_cloud_auth::credentials::Builder::default()
                .build()
                .map_err(|e| ProviderError::Auth(format!("Application Default Credentials: {e}")))?
        };
        let polling = ExponentialBackoffBuilder::new()
            .with_initial_delay(Duration::from_millis(config.operation_poll_ms.max(1)))
            .with_maximum_delay(Duration::from_secs(10).max(Duration::from_millis(config.operation_poll_ms)))
            .build()
            .map_err(|e| invalid(format!("operation-poll-ms: {e}")))?;
        let mut builder = Instances::builder()
            .with_credentials(credentials)
            // One attempt per call: throttling is retried by
            // `retrying_throttles`, stockouts move to the next zone.
            .with_retry_policy(NeverRetry)
            .with_polling_backoff_policy(polling);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let client = builder
            .build()
            .await
            .map_err(|e| ProviderError::Other(format!("cannot build the Compute Engine client: {e}")))?;
        Ok(GcpProvider {
            client,
            project: config.project.clone(),
            zones: config.zones.clone(),
            resources,
            startup_scripts: HashMap::new(),
            backoff: ThrottleBackoff {
                retries: config.throttle_retries,
                first_wait: Duration::from_millis(config.throttle_backoff_ms),
                ..ThrottleBackoff::default()
            },
            list_page_size: config.list_page_size,
            operation_timeout: Duration::from_secs(config.operation_timeout_secs),
            zone_of: Mutex::new(HashMap::new()),
        })
    }

    /// Start-up scripts (the `startup-script` metadata) by resource name.
    /// Scripts for resources this provider does not have are ignored.
    pub fn with_startup_scripts(mut self, scripts: HashMap<String, String>) -> Result<Self, ProviderError> {
        if let Some((resource, script)) = scripts.iter().find(|(_, s)| s.len() > MAX_STARTUP_SCRIPT) {
            return Err(ProviderError::InvalidRequest(format!(
                "the start-up script of resource {resource:?} is {} bytes; GCE metadata values hold at most {MAX_STARTUP_SCRIPT}",
                script.len()
            )));
        }
        self.startup_scripts = scripts;
        Ok(self)
    }

    /// Runs `call`, and again while the cloud throttles it ([`ThrottleBackoff`]).
    async fn retrying_throttles<T, F, Fut>(&self, operation: &str, call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        self.backoff.run(operation, |e: &ProviderError| matches!(e, ProviderError::Throttled(_)), call).await
    }

    fn remember_zone(&self, name: &str, zone: &str) {
        self.zone_of.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_owned(), zone.to_owned());
    }

    async fn get(&self, zone: &str, name: &str) -> Result<Option<CloudInstance>, ProviderError> {
        let found = self
            .retrying_throttles("instances.get", || async {
                let call = self.client.get().set_project(&self.project).set_zone(zone).set_instance(name);
                match call.send().await {
                    Ok(instance) => Ok(cloud_instance(&instance)),
                    Err(e) if e.http_status_code() == Some(404) => Ok(None),
                    Err(e) => Err(classify("instances.get", &e)),
                }
            })
            .await?;
        if found.is_some() {
            self.remember_zone(name, zone);
        }
        Ok(found)
    }

    /// Inserts in one zone and waits for the operation to finish.
    async fn insert(&self, spec: &InstanceSpec<'_>) -> Result<Inserted, ProviderError> {
        let body = spec.body();
        let request = spec.request;
        let request_id = labels::request_id(&[&request.cluster, &request.idempotency_key, spec.zone, "insert"]);
        self.retrying_throttles("instances.insert", || async {
            let poller = self
                .client
                .insert()
                .set_project(&self.project)
                .set_zone(spec.zone)
                .set_request_id(&request_id)
                .set_body(body.clone())
                .poller();
            let finished = tokio::time::timeout(self.operation_timeout, poller.until_done()).await.map_err(|_| {
                ProviderError::Other(format!(
                    "instances.insert of {} in {}: still running after {:?}; if it comes up, list will find it",
                    spec.name, spec.zone, self.operation_timeout
                ))
            })?;
            let operation = match finished {
                Ok(operation) => operation,
                Err(e) if e.http_status_code() == Some(409) => return Ok(Inserted::AlreadyExists),
                Err(e) => return Err(classify("instances.insert", &e)),
            };
            let already_exists = operation
                .error
                .as_ref()
                .is_some_and(|e| e.errors.iter().any(|e| e.code.as_deref() == Some("RESOURCE_ALREADY_EXISTS")));
            if already_exists {
                return Ok(Inserted::AlreadyExists);
            }
            match operation_failure("instances.insert", &operation) {
                Some(failure) => Err(failure),
                None => Ok(Inserted::Created),
            }
        })
        .await
    }
}

#[async_trait]
impl CloudProvider for GcpProvider {
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        let resource = self.resources.get(&request.resource).ok_or_else(|| {
            let mut known: Vec<&str> = self.resources.keys().map(String::as_str).collect();
            known.sort_unstable();
            ProviderError::InvalidRequest(format!(
                "resource {:?} has no [resource.NAME.gcp] settings in this provider (configured: {known:?})",
                request.resource
            ))
        })?;
        let name = labels::instance_name(&request.cluster, &request.resource, &request.idempotency_key);
        // An earlier try of this launch may have landed in a later zone; the
        // first zone's insert would not collide with it.
        if self.zones.len() > 1 {
            for zone in &self.zones {
                if let Some(existing) = self.get(zone, &name).await? {
                    return Ok(existing);
                }
            }
        }
        let mut no_capacity = Vec::new();
        for zone in &self.zones {
            let spec = InstanceSpec {
                project: &self.project,
                zone,
                name: &name,
                request,
                resource,
                startup_script: self.startup_scripts.get(&request.resource).map(String::as_str),
            };
            match self.insert(&spec).await {
                Ok(_) => {
                    let instance = self.get(zone, &name).await?.ok_or_else(|| {
                        ProviderError::Other(format!("instance {name} in {zone} was inserted but is not found"))
                    })?;
                    tracing::info!(instance = %name, resource = %request.resource, zone, "launched GCE instance");
                    return Ok(instance);
                }
                Err(ProviderError::Capacity(reason)) => {
                    tracing::warn!(resource = %request.resource, zone, %reason, "no capacity; trying the next zone");
                    no_capacity.push(format!("{zone}: {reason}"));
                }
                Err(e) => return Err(e),
            }
        }
        Err(ProviderError::Capacity(format!(
            "resource {:?}: no capacity in any zone ({})",
            request.resource,
            no_capacity.join("; ")
        )))
    }

    /// One aggregated list over every zone of the project, not just the
    /// configured ones: an instance in a zone dropped from the config since
    /// its launch is still found (and can be terminated).
    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        let filter = format!("labels.{} = \"{}\"", tags::CLUSTER, labels::label_value(cluster));
        let mut found = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let page = self
                .retrying_throttles("instances.aggregatedList", || async {
                    let mut call = self
                        .client
                        .aggregated_list()
                        .set_project(&self.project)
                        .set_filter(&filter)
                        .set_max_results(self.list_page_size);
                    if let Some(token) = &page_token {
                        call = call.set_page_token(token);
                    }
                    call.send().await.map_err(|e| classify("instances.aggregatedList", &e))
                })
                .await?;
            // A zone that did not answer may hold instances: a partial list
            // would look like machines gone, so it is an error, not a list.
            if !page.unreachables.is_empty() {
                return Err(ProviderError::Other(format!(
                    "instances.aggregatedList: unreachable: {}",
                    page.unreachables.join(", ")
                )));
            }
            for (scope, scoped) in &page.items {
                // GCE also says a zone did not answer in that zone's own
                // entry, as a warning and no top-level `unreachables`.
                if let Some(warning) = &scoped.warning
                    && warning.code == Some(InstancesScopedWarningCode::Unreachable)
                {
                    return Err(ProviderError::Other(format!(
                        "instances.aggregatedList: {scope} unreachable: {}",
                        flockd_core::text::printable(warning.message.as_deref().unwrap_or(""))
                    )));
                }
                let Some(zone) = scope.strip_prefix("zones/") else { continue };
                for instance in &scoped.instances {
                    // Labels are sanitised; the exact cluster is in metadata.
                    if metadata_value(instance, META_CLUSTER) != Some(cluster) {
                        continue;
                    }
                    if let Some(listed) = cloud_instance(instance) {
                        self.remember_zone(&listed.id, zone);
                        found.push(listed);
                    }
                }
            }
            match page.next_page_token {
                Some(token) if !token.is_empty() => page_token = Some(token),
                _ => return Ok(found),
            }
        }
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        let known_zone = self.zone_of.lock().unwrap_or_else(|p| p.into_inner()).get(instance_id).cloned();
        let zone = match known_zone {
            Some(zone) => zone,
            None => {
                let mut found = None;
                for zone in &self.zones {
                    if self.get(zone, instance_id).await?.is_some() {
                        found = Some(zone.clone());
                        break;
                    }
                }
                match found {
                    Some(zone) => zone,
                    None => return Ok(()),
                }
            }
        };
        let request_id = labels::request_id(&[&self.project, &zone, instance_id, "delete"]);
        self.retrying_throttles("instances.delete", || async {
            let call = self
                .client
                .delete()
                .set_project(&self.project)
                .set_zone(&zone)
                .set_instance(instance_id)
                .set_request_id(&request_id);
            match call.send().await {
                // Deletion runs on; list shows the instance until it is gone.
                Ok(operation) => operation_failure("instances.delete", &operation).map_or(Ok(()), Err),
                Err(e) if e.http_status_code() == Some(404) => Ok(()),
                Err(e) => Err(classify("instances.delete", &e)),
            }
        })
        .await?;
        self.zone_of.lock().unwrap_or_else(|p| p.into_inner()).remove(instance_id);
        tracing::info!(instance = instance_id, zone, "deleting GCE instance");
        Ok(())
    }
}
