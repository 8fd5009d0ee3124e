//! flockd's EC2 provider. Every instance is tagged at creation (instance and
//! volumes, in the RunInstances call itself), launched with the launch's
//! idempotency key as ClientToken, requires IMDSv2, and is found again by
//! its cluster tag. A capacity error moves the same launch to the next
//! configured subnet; throttling is retried here with a bounded backoff; the
//! SDK's own retry is off so a capacity error (an HTTP 500 from EC2) is never
//! silently repeated.

mod config;
mod credentials;
mod errors;
mod run;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Region};
use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName};
use aws_smithy_http_client::tls;
use flockd_core::naming::tags;
use flockd_core::{CloudInstance, CloudProvider, CloudState, LaunchRequest, ProviderError, ThrottleBackoff};

pub use config::{AwsCredentialRefs, AwsProviderConfig, AwsResourceConfig, Market, SecretRef};
use credentials::ReferencedKeys;
use errors::{Ec2Failure, classify};

/// EC2 takes at most 16 KiB of user data (before base64).
const MAX_USER_DATA: usize = 16 * 1024;
/// Every state but terminated: what `list` reports.
const LIVE_STATES: [&str; 5] = ["pending", "running", "shutting-down", "stopping", "stopped"];

pub struct AwsProvider {
    client: Client,
    resources: HashMap<String, AwsResourceConfig>,
    startup_scripts: HashMap<String, String>,
    /// Throttled steps are tried again (one subnet or zone, not the whole call).
    backoff: ThrottleBackoff,
    list_page_size: i32,
}

impl AwsProvider {
    /// Builds the EC2 client. Credentials come from `config.credentials`
    /// (read now, so a missing file fails at start-up, and again every five
    /// minutes, so rotated keys are picked up) or else from AWS's standard
    /// chain. Each resource's settings are checked here.
    pub async fn new(
        config: &AwsProviderConfig,
        resources: HashMap<String, AwsResourceConfig>,
    ) -> Result<Self, ProviderError> {
        for (name, resource) in &resources {
            resource.validate(name).map_err(ProviderError::InvalidRequest)?;
        }
        if !(5..=1000).contains(&config.list_page_size) {
            return Err(ProviderError::InvalidRequest(format!(
                "list-page-size must be between 5 and 1000, got {}",
                config.list_page_size
            )));
        }
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .http_client(http_client)
            // One attempt per call: throttling is retried by `retrying_throttles`,
            // capacity errors move to the next subnet, nothing else repeats.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(60))
                    .build(),
            );
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(refs) = &config.credentials {
            loader = loader.credentials_provider(ReferencedKeys::new(refs.clone())?);
        }
        let sdk_config = loader.load().await;
        Ok(AwsProvider {
            client: Client::new(&sdk_config),
            resources,
            startup_scripts: HashMap::new(),
            backoff: ThrottleBackoff {
                retries: config.throttle_retries,
                first_wait: Duration::from_millis(config.throttle_backoff_ms),
                ..ThrottleBackoff::default()
            },
            list_page_size: config.list_page_size,
        })
    }

    /// Start-up scripts (user data) by resource name. Scripts for resources
    /// this provider does not have are ignored.
    pub fn with_startup_scripts(mut self, mut scripts: HashMap<String, String>) -> Result<Self, ProviderError> {
        scripts.retain(|resource, _| self.resources.contains_key(resource));
        check_user_data(&scripts)?;
        self.startup_scripts = scripts;
        Ok(self)
    }

    /// Runs `call`, and again while the cloud throttles it ([`ThrottleBackoff`]).
    async fn retrying_throttles<T, F, Fut>(&self, operation: &str, call: F) -> Result<T, Ec2Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Ec2Failure>>,
    {
        self.backoff.run(operation, |f: &Ec2Failure| matches!(f.error, ProviderError::Throttled(_)), call).await
    }

    /// Instances of this cluster launched with `launch_key`, in any state.
    async fn find_launched(&self, cluster: &str, launch_key: &str) -> Result<Option<CloudInstance>, ProviderError> {
        let filters = vec![tag_filter(tags::CLUSTER, cluster), tag_filter(tags::LAUNCH_KEY, launch_key)];
        Ok(self.describe(filters).await?.into_iter().next())
    }

    /// Every page of DescribeInstances for these filters.
    async fn describe(&self, filters: Vec<Filter>) -> Result<Vec<CloudInstance>, ProviderError> {
        let mut found = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let page = self
                .retrying_throttles("DescribeInstances", || {
                    let call = self
                        .client
                        .describe_instances()
                        .set_filters(Some(filters.clone()))
                        .max_results(self.list_page_size)
                        .set_next_token(next_token.clone());
                    async move { call.send().await.map_err(|e| classify("DescribeInstances", e)) }
                })
                .await
                .map_err(|f| f.error)?;
            for reservation in page.reservations() {
                found.extend(reservation.instances().iter().filter_map(cloud_instance));
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => return Ok(found),
            }
        }
    }
}

fn tag_filter(key: &str, value: &str) -> Filter {
    Filter::builder().name(format!("tag:{key}")).values(value).build()
}

fn tag_value<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value())
}

/// Refused at start-up rather than by every RunInstances: EC2 takes at most
/// 16 KB of user data, counted before base64.
fn check_user_data(scripts: &HashMap<String, String>) -> Result<(), ProviderError> {
    let mut resources: Vec<&String> = scripts.keys().collect();
    resources.sort();
    for resource in resources {
        let size = scripts[resource].len();
        if size > MAX_USER_DATA {
            return Err(ProviderError::InvalidRequest(format!(
                "the start-up script of resource {resource:?} is {size} bytes, {} over EC2's {MAX_USER_DATA}-byte user-data limit: \
                 shorten [agent] extra-bash-script or extra-clearml-conf (or fetch them at boot from storage)",
                size - MAX_USER_DATA
            )));
        }
    }
    Ok(())
}

/// None for an instance without an id (EC2 always sends one).
pub(crate) fn cloud_instance(instance: &Instance) -> Option<CloudInstance> {
    let state = match instance.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Running) => CloudState::Running,
        Some(InstanceStateName::Terminated) => CloudState::Terminated,
        Some(InstanceStateName::ShuttingDown | InstanceStateName::Stopping) => CloudState::Stopping,
        // Runs no agent but keeps its volumes: the controller deletes it.
        Some(InstanceStateName::Stopped) => CloudState::Stopped,
        _ => CloudState::Pending,
    };
    Some(CloudInstance {
        id: instance.instance_id()?.to_owned(),
        resource: tag_value(instance, tags::RESOURCE).unwrap_or_default().to_owned(),
        state,
        launched_at: instance.launch_time().and_then(|t| t.to_millis().ok()).map_or(0, |ms| ms.max(0) as u64),
        launch_key: tag_value(instance, tags::LAUNCH_KEY).map(str::to_owned),
        failure: None,
    })
}

#[async_trait]
impl CloudProvider for AwsProvider {
    async fn launch(&self, request: &LaunchRequest) -> Result<CloudInstance, ProviderError> {
        let resource = self.resources.get(&request.resource).ok_or_else(|| {
            let mut known: Vec<&str> = self.resources.keys().map(String::as_str).collect();
            known.sort_unstable();
            ProviderError::InvalidRequest(format!(
                "resource {:?} has no [resource.NAME.aws] settings in this provider (configured: {known:?})",
                request.resource
            ))
        })?;
        let spec = run::RunSpec::new(request, resource, self.startup_scripts.get(&request.resource))?;

        let mut no_capacity = Vec::new();
        for place in run::Place::all(resource) {
            let attempt =
                self.retrying_throttles("RunInstances", || spec.call(&self.client, &place).send_classified()).await;
            match attempt {
                Ok(instance) => {
                    tracing::info!(instance = %instance.id, resource = %request.resource, place = place.name(), "launched EC2 instance");
                    return Ok(instance);
                }
                Err(Ec2Failure { error: ProviderError::Capacity(reason), .. }) => {
                    tracing::warn!(resource = %request.resource, place = place.name(), %reason, "no capacity; trying the next subnet or zone");
                    no_capacity.push(format!("{}: {reason}", place.name()));
                }
                // The key was used before with other parameters: another
                // subnet or zone, in an earlier try of this same launch.
                Err(failure) if failure.code.as_deref() == Some("IdempotentParameterMismatch") => {
                    return match self.find_launched(&request.cluster, &request.idempotency_key).await? {
                        Some(instance) => Ok(instance),
                        None => Err(failure.error),
                    };
                }
                Err(failure) => return Err(failure.error),
            }
        }
        Err(ProviderError::Capacity(format!(
            "resource {:?}: no capacity in any subnet or zone ({})",
            request.resource,
            no_capacity.join("; ")
        )))
    }

    async fn list(&self, cluster: &str) -> Result<Vec<CloudInstance>, ProviderError> {
        let live = Filter::builder()
            .name("instance-state-name")
            .set_values(Some(LIVE_STATES.map(String::from).to_vec()))
            .build();
        self.describe(vec![tag_filter(tags::CLUSTER, cluster), live]).await
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), ProviderError> {
        let result = self
            .retrying_throttles("TerminateInstances", || {
                let call = self.client.terminate_instances().instance_ids(instance_id);
                async move { call.send().await.map_err(|e| classify("TerminateInstances", e)) }
            })
            .await;
        match result {
            Ok(_) => {
                tracing::info!(instance = instance_id, "terminating EC2 instance");
                Ok(())
            }
            Err(failure) if failure.code.as_deref() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(failure) => Err(failure.error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_over_16_kb_raw_is_refused_with_what_to_shorten() {
        let fits = HashMap::from([("gpu".to_owned(), "x".repeat(MAX_USER_DATA))]);
        assert_eq!(check_user_data(&fits), Ok(()));
        let over = HashMap::from([("gpu".to_owned(), "x".repeat(MAX_USER_DATA + 3))]);
        let err = check_user_data(&over).unwrap_err().to_string();
        assert!(err.contains("\"gpu\"") && err.contains("3 over") && err.contains("extra-bash-script"), "{err}");
    }
}
