//! One RunInstances call: everything is set in the call itself (tags for the
//! instance and its volumes, IMDSv2, market, user data), so there is no
//! window in which an instance exists untagged.

use aws_sdk_ec2::Client;
use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, IamInstanceProfileSpecification, InstanceInterruptionBehavior,
    InstanceMarketOptionsRequest, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceType,
    MarketType, Placement, ResourceType, ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
    VolumeType,
};
use base64::Engine;
use flockd_core::naming::{self, tags};
use flockd_core::{CloudInstance, LaunchRequest, ProviderError};
use sha2::{Digest, Sha256};

use crate::config::{AwsResourceConfig, Market};
use crate::errors::{Ec2Failure, classify};

/// EC2 tag values hold at most 256 characters.
const MAX_TAG_VALUE: usize = 256;

/// One place a launch may try: a subnet, a zone of the default VPC, or
/// wherever EC2 picks.
#[derive(Clone, Debug, Default)]
pub struct Place {
    pub subnet: Option<String>,
    pub zone: Option<String>,
}

impl Place {
    /// The places a resource's launch tries, in order.
    pub fn all(resource: &AwsResourceConfig) -> Vec<Place> {
        let subnets = resource.subnets.iter().map(|s| Place { subnet: Some(s.clone()), zone: None });
        let zones = resource.availability_zones.iter().map(|z| Place { subnet: None, zone: Some(z.clone()) });
        let places: Vec<Place> = subnets.chain(zones).collect();
        if places.is_empty() { vec![Place::default()] } else { places }
    }

    pub fn name(&self) -> &str {
        self.subnet.as_deref().or(self.zone.as_deref()).unwrap_or("the default subnet")
    }
}

/// What stays the same across the subnets one launch tries.
pub struct RunSpec<'a> {
    request: &'a LaunchRequest,
    resource: &'a AwsResourceConfig,
    user_data: Option<String>,
    client_token: String,
    tags: Vec<Tag>,
}

impl<'a> RunSpec<'a> {
    pub fn new(
        request: &'a LaunchRequest,
        resource: &'a AwsResourceConfig,
        startup_script: Option<&String>,
    ) -> Result<Self, ProviderError> {
        if request.idempotency_key.is_empty() || request.idempotency_key.chars().count() > MAX_TAG_VALUE {
            return Err(ProviderError::InvalidRequest(format!(
                "idempotency key must be 1 to {MAX_TAG_VALUE} characters, got {}",
                request.idempotency_key.chars().count()
            )));
        }
        let mut tags = vec![
            tag(tags::CLUSTER, &request.cluster),
            tag(tags::RESOURCE, &request.resource),
            tag(tags::LAUNCH_KEY, &request.idempotency_key),
            tag(tags::WORKER_PREFIX, &naming::worker_id_prefix(&request.cluster, &request.resource)),
            tag("Name", &format!("flockd-{}-{}", request.cluster, request.resource)),
        ];
        tags.extend(resource.tags.iter().map(|(k, v)| tag(k, v)));
        Ok(RunSpec {
            request,
            resource,
            user_data: startup_script.map(|s| base64::engine::general_purpose::STANDARD.encode(s)),
            client_token: client_token(&request.idempotency_key),
            tags,
        })
    }

    pub fn call(&self, client: &Client, place: &Place) -> RunCall {
        let resource = self.resource;
        let mut call = client
            .run_instances()
            .image_id(&resource.ami)
            .instance_type(InstanceType::from(resource.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(&self.client_token)
            .set_subnet_id(place.subnet.clone())
            .set_placement(place.zone.as_ref().map(|z| Placement::builder().availability_zone(z).build()))
            .set_security_group_ids((!resource.security_groups.is_empty()).then(|| resource.security_groups.clone()))
            .set_key_name(resource.key_name.clone())
            .set_user_data(self.user_data.clone())
            // An agent that powers its machine off ends it instead of leaving
            // a stopped instance (and its disks) to pay for.
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .http_tokens(HttpTokensState::Required)
                    .http_put_response_hop_limit(resource.imds_hop_limit)
                    .build(),
            )
            .tag_specifications(tag_spec(ResourceType::Instance, &self.tags))
            .tag_specifications(tag_spec(ResourceType::Volume, &self.tags));
        if let Some(profile) = &resource.iam_instance_profile {
            let spec = IamInstanceProfileSpecification::builder();
            let spec = if profile.starts_with("arn:") { spec.arn(profile) } else { spec.name(profile) };
            call = call.iam_instance_profile(spec.build());
        }
        if resource.ebs_size_gb.is_some() || resource.ebs_type.is_some() {
            let ebs = EbsBlockDevice::builder()
                .set_volume_size(resource.ebs_size_gb)
                .set_volume_type(resource.ebs_type.as_deref().map(VolumeType::from))
                .delete_on_termination(true)
                .build();
            call = call.block_device_mappings(
                BlockDeviceMapping::builder().device_name(&resource.root_device_name).ebs(ebs).build(),
            );
        }
        if resource.market == Market::Spot {
            let spot = SpotMarketOptions::builder()
                .spot_instance_type(SpotInstanceType::OneTime)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                .set_max_price(resource.spot_max_price.clone())
                .build();
            call = call.instance_market_options(
                InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).spot_options(spot).build(),
            );
        }
        RunCall { call, resource: self.request.resource.clone(), launch_key: self.request.idempotency_key.clone() }
    }
}

pub struct RunCall {
    call: RunInstancesFluentBuilder,
    resource: String,
    launch_key: String,
}

impl RunCall {
    pub async fn send_classified(self) -> Result<CloudInstance, Ec2Failure> {
        let output = self.call.send().await.map_err(|e| classify("RunInstances", e))?;
        let launched = output.instances().first().and_then(crate::cloud_instance).ok_or_else(|| Ec2Failure {
            code: None,
            error: ProviderError::Other("RunInstances answered without an instance".to_owned()),
        })?;
        // The answer need not echo the tags; we know what we asked for.
        Ok(CloudInstance { resource: self.resource, launch_key: Some(self.launch_key), failure: None, ..launched })
    }
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tag_spec(resource_type: ResourceType, tags: &[Tag]) -> TagSpecification {
    TagSpecification::builder().resource_type(resource_type).set_tags(Some(tags.to_vec())).build()
}

/// EC2 takes ClientTokens of up to 64 ASCII characters: the key itself when
/// it fits, else a digest of it (still one token per key).
pub(crate) fn client_token(key: &str) -> String {
    if key.len() <= 64 && key.chars().all(|c| c.is_ascii_graphic()) {
        key.to_owned()
    } else {
        format!("flockd-{}", &hex::encode(Sha256::digest(key.as_bytes()))[..57])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_the_key_when_it_fits_else_a_stable_digest() {
        assert_eq!(client_token("launch-1"), "launch-1");
        let long = "k".repeat(65);
        assert_eq!(client_token(&long).len(), 64);
        assert_eq!(client_token(&long), client_token(&long));
        assert_ne!(client_token(&long), client_token(&"k".repeat(66)));
        assert!(client_token("with space").starts_with("flockd-"));
    }
}
