//! The EC2 provider against moto (through tests/fixtures/moto_faults.py,
//! which injects EC2 errors, logs calls and implements ClientToken
//! idempotency, which moto itself lacks).

mod moto;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
use base64::Engine;
use flockd_aws::{AwsCredentialRefs, AwsProvider, AwsProviderConfig, AwsResourceConfig, Market, SecretRef};
use flockd_core::naming::{self, tags};
use flockd_core::testing::provider_contract::{request, run_contract, wait_until_gone};
use flockd_core::{CloudProvider, ProviderError};
use moto::Moto;
use serde_json::json;

const CLUSTER: &str = "test";
const AMI: &str = "ami-12345678";

fn resource(subnets: &[String], market: Market) -> AwsResourceConfig {
    AwsResourceConfig {
        ami: AMI.to_owned(),
        instance_type: "t3.micro".to_owned(),
        subnets: subnets.to_vec(),
        availability_zones: vec![],
        security_groups: vec![],
        key_name: None,
        iam_instance_profile: None,
        ebs_size_gb: Some(20),
        ebs_type: Some("gp3".to_owned()),
        root_device_name: "/dev/xvda".to_owned(),
        tags: BTreeMap::from([("team".to_owned(), "ml".to_owned())]),
        market,
        spot_max_price: None,
        imds_hop_limit: 2,
    }
}

/// Fake keys, given by reference as a real config would.
fn fake_credentials(dir: &Path) -> AwsCredentialRefs {
    std::fs::write(dir.join("key-id"), "AKIAFAKEFAKEFAKEFAKE\n").unwrap();
    std::fs::write(dir.join("secret"), "fake-secret-key\n").unwrap();
    AwsCredentialRefs {
        access_key_id: SecretRef::File(dir.join("key-id")),
        secret_access_key: SecretRef::File(dir.join("secret")),
        session_token: None,
    }
}

struct Setup {
    moto: Moto,
    provider: AwsProvider,
    subnets: Vec<String>,
    _keys: tempfile::TempDir,
}

async fn setup(
    subnet_count: usize,
    page_size: i32,
    resources: impl FnOnce(&[String]) -> Vec<(&'static str, AwsResourceConfig)>,
) -> Setup {
    let moto = Moto::start().await;
    let subnets = moto.subnets(subnet_count).await;
    let keys = tempfile::tempdir().unwrap();
    let config = AwsProviderConfig {
        region: moto::REGION.to_owned(),
        endpoint_url: Some(moto.url.clone()),
        credentials: Some(fake_credentials(keys.path())),
        throttle_retries: 2,
        throttle_backoff_ms: 10,
        list_page_size: page_size,
    };
    let resources: HashMap<String, AwsResourceConfig> =
        resources(&subnets).into_iter().map(|(name, r)| (name.to_owned(), r)).collect();
    let provider = AwsProvider::new(&config, resources)
        .await
        .unwrap()
        .with_startup_scripts(HashMap::from([("cpu".to_owned(), "#!/bin/sh\necho 'hello $WORLD'\n".to_owned())]))
        .unwrap();
    moto.reset_faults().await;
    Setup { moto, provider, subnets, _keys: keys }
}

async fn one_subnet_cpu() -> Setup {
    setup(1, 500, |s| vec![("cpu", resource(s, Market::OnDemand))]).await
}

async fn subnet_of(moto: &Moto, instance_id: &str) -> String {
    let out = moto.client().describe_instances().instance_ids(instance_id).send().await.unwrap();
    out.reservations()[0].instances()[0].subnet_id().unwrap().to_owned()
}

async fn instance_count(moto: &Moto) -> usize {
    let live = Filter::builder().name("instance-state-name").values("running").values("pending").build();
    let out = moto.client().describe_instances().filters(live).send().await.unwrap();
    out.reservations().iter().map(|r| r.instances().len()).sum()
}

#[tokio::test]
async fn meets_the_provider_contract() {
    let s = one_subnet_cpu().await;
    run_contract(&s.provider, "contract", "cpu").await;
}

async fn assert_launch_is_tagged_and_hardened(market: Market) {
    let s = setup(1, 500, |s| vec![("cpu", resource(s, market))]).await;
    let instance = s.provider.launch(&request(CLUSTER, "cpu", "k-tags")).await.unwrap();
    let client = s.moto.client();

    let described = client.describe_instances().instance_ids(&instance.id).send().await.unwrap();
    let ec2 = &described.reservations()[0].instances()[0];
    let tag_map: HashMap<&str, &str> = ec2.tags().iter().map(|t| (t.key().unwrap(), t.value().unwrap())).collect();
    assert_eq!(tag_map[tags::CLUSTER], CLUSTER);
    assert_eq!(tag_map[tags::RESOURCE], "cpu");
    assert_eq!(tag_map[tags::LAUNCH_KEY], "k-tags");
    assert_eq!(tag_map[tags::WORKER_PREFIX], naming::worker_id_prefix(CLUSTER, "cpu"));
    assert_eq!(tag_map["team"], "ml");
    assert_eq!(ec2.metadata_options().unwrap().http_tokens().unwrap().as_str(), "required", "IMDSv2 only");
    assert_eq!(ec2.instance_lifecycle().map(|l| l.as_str()), (market == Market::Spot).then_some("spot"));

    // The root volume carries the same tags, from the same call.
    let volume_id = ec2.block_device_mappings()[0].ebs().unwrap().volume_id().unwrap();
    let volumes = client.describe_volumes().volume_ids(volume_id).send().await.unwrap();
    let volume = &volumes.volumes()[0];
    assert_eq!(volume.size(), Some(20));
    assert!(volume.tags().iter().any(|t| t.key() == Some(tags::LAUNCH_KEY) && t.value() == Some("k-tags")));

    let user_data = client
        .describe_instance_attribute()
        .instance_id(&instance.id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = user_data.user_data().unwrap().value().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), "#!/bin/sh\necho 'hello $WORLD'\n");

    // Tags were part of RunInstances itself: no tagging call ever happened.
    let run = s.moto.calls("RunInstances").await;
    assert_eq!(run.len(), 1);
    assert_eq!(run[0].params["ClientToken"], "k-tags");
    assert_eq!(run[0].params["TagSpecification.1.ResourceType"], "instance");
    assert_eq!(run[0].params["TagSpecification.2.ResourceType"], "volume");
    if market == Market::Spot {
        assert_eq!(run[0].params["InstanceMarketOptions.MarketType"], "spot");
        assert_eq!(run[0].params["InstanceMarketOptions.SpotOptions.SpotInstanceType"], "one-time");
        assert_eq!(run[0].params["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"], "terminate");
    } else {
        assert!(!run[0].params.contains_key("InstanceMarketOptions.MarketType"));
    }
    assert!(s.moto.calls("CreateTags").await.is_empty());
}

#[tokio::test]
async fn on_demand_launch_is_tagged_at_creation_with_user_data_and_imdsv2() {
    assert_launch_is_tagged_and_hardened(Market::OnDemand).await;
}

#[tokio::test]
async fn spot_launch_is_one_time_terminating_and_tagged_at_creation() {
    assert_launch_is_tagged_and_hardened(Market::Spot).await;
}

#[tokio::test]
async fn network_key_disk_and_shutdown_settings_reach_run_instances() {
    let moto = Moto::start().await;
    let subnets = moto.subnets(1).await;
    let client = moto.client();
    let vpc_id = client.describe_subnets().subnet_ids(&subnets[0]).send().await.unwrap().subnets()[0]
        .vpc_id()
        .unwrap()
        .to_owned();
    let group = client.create_security_group().group_name("agents").description("agents").vpc_id(vpc_id).send().await;
    let group_id = group.unwrap().group_id().unwrap().to_owned();
    client.create_key_pair().key_name("ml-ops").send().await.unwrap();
    let mut cpu = resource(&subnets, Market::OnDemand);
    cpu.security_groups = vec![group_id.clone()];
    cpu.key_name = Some("ml-ops".to_owned());
    let keys = tempfile::tempdir().unwrap();
    let config = AwsProviderConfig {
        region: moto::REGION.to_owned(),
        endpoint_url: Some(moto.url.clone()),
        credentials: Some(fake_credentials(keys.path())),
        throttle_retries: 0,
        throttle_backoff_ms: 10,
        list_page_size: 500,
    };
    let provider = AwsProvider::new(&config, HashMap::from([("cpu".to_owned(), cpu)])).await.unwrap();
    moto.reset_faults().await;
    let instance = provider.launch(&request(CLUSTER, "cpu", "k-net")).await.unwrap();

    let run = &moto.calls("RunInstances").await[0].params;
    assert_eq!(run["SecurityGroupId.1"], group_id);
    assert_eq!(run["KeyName"], "ml-ops");
    assert_eq!(run["BlockDeviceMapping.1.DeviceName"], "/dev/xvda");
    assert_eq!(run["BlockDeviceMapping.1.Ebs.VolumeType"], "gp3");
    assert_eq!(run["BlockDeviceMapping.1.Ebs.DeleteOnTermination"], "true");
    assert_eq!(run["InstanceInitiatedShutdownBehavior"], "terminate");
    assert_eq!(run["MetadataOptions.HttpPutResponseHopLimit"], "2");
    let described = client.describe_instances().instance_ids(&instance.id).send().await.unwrap();
    let ec2 = &described.reservations()[0].instances()[0];
    assert_eq!(ec2.key_name(), Some("ml-ops"));
    assert_eq!(ec2.security_groups()[0].group_id(), Some(group_id.as_str()));
    assert!(!run.contains_key("UserData"), "no start-up script configured for it");
}

#[tokio::test]
async fn list_pages_through_every_live_instance_of_the_cluster_only() {
    let s = setup(1, 5, |s| vec![("cpu", resource(s, Market::OnDemand)), ("gpu", resource(s, Market::Spot))]).await;
    let mut launched = Vec::new();
    for i in 0..12 {
        let resource = if i % 2 == 0 { "cpu" } else { "gpu" };
        launched.push(s.provider.launch(&request(CLUSTER, resource, &format!("k-page-{i}"))).await.unwrap());
    }
    s.provider.launch(&request("someone-else", "cpu", "k-other")).await.unwrap();
    s.provider.terminate(&launched[0].id).await.unwrap();
    s.moto.reset_faults().await;

    let listed = s.provider.list(CLUSTER).await.unwrap();
    let mut listed_ids: Vec<&str> = listed.iter().map(|i| i.id.as_str()).collect();
    let mut expected: Vec<&str> = launched[1..].iter().map(|i| i.id.as_str()).collect();
    listed_ids.sort_unstable();
    expected.sort_unstable();
    assert_eq!(listed_ids, expected, "all 11 live instances, not the terminated one nor the other cluster's");
    for instance in &listed {
        let original = launched.iter().find(|l| l.id == instance.id).unwrap();
        assert_eq!(instance.resource, original.resource);
        assert_eq!(instance.launch_key, original.launch_key);
    }
    let pages = s.moto.calls("DescribeInstances").await;
    assert!(pages.len() >= 3, "11 instances at 5 per page take 3 pages, made {}", pages.len());
    assert!(pages.iter().all(|c| c.params["MaxResults"] == "5"));
}

#[tokio::test]
async fn terminated_instances_leave_the_list_and_a_second_terminate_is_ok() {
    let s = one_subnet_cpu().await;
    let instance = s.provider.launch(&request(CLUSTER, "cpu", "k-term")).await.unwrap();
    s.provider.terminate(&instance.id).await.unwrap();
    wait_until_gone(&s.provider, CLUSTER, &instance.id).await;
    s.provider.terminate(&instance.id).await.unwrap();
    s.provider.terminate("i-0000000000000dead").await.expect("an id EC2 never heard of is gone too");
}

#[tokio::test]
async fn capacity_error_in_one_subnet_moves_the_launch_to_the_next() {
    let s = setup(3, 500, |s| vec![("cpu", resource(s, Market::Spot))]).await;
    // As real EC2 does: InsufficientInstanceCapacity with HTTP 500, which the
    // SDK's standard retry would repeat in the same subnet.
    s.moto.inject("RunInstances", "InsufficientInstanceCapacity", 500, 10, json!({"SubnetId": s.subnets[0]})).await;
    let instance = s.provider.launch(&request(CLUSTER, "cpu", "k-fallback")).await.unwrap();
    assert_eq!(subnet_of(&s.moto, &instance.id).await, s.subnets[1]);
    let subnets_tried: Vec<String> =
        s.moto.calls("RunInstances").await.into_iter().map(|c| c.params["SubnetId"].clone()).collect();
    assert_eq!(subnets_tried, [s.subnets[0].clone(), s.subnets[1].clone()], "one RunInstances per subnet");

    // A retry of the same launch (same key) finds that instance rather than
    // starting another in subnet 1, whose capacity came back meanwhile.
    s.moto.reset_faults().await;
    let retried = s.provider.launch(&request(CLUSTER, "cpu", "k-fallback")).await.unwrap();
    assert_eq!(retried.id, instance.id);
    assert_eq!(instance_count(&s.moto).await, 1);
}

/// Issue 15, item 7: an explicit availability-zone list (default VPC) is
/// tried in order like subnets; the instance profile and the spot max price
/// reach RunInstances.
#[tokio::test]
async fn capacity_in_one_zone_moves_the_launch_to_the_next_and_profile_and_max_price_are_sent() {
    let s = setup(1, 500, |_| {
        let mut spot = resource(&[], Market::Spot);
        spot.availability_zones = vec![format!("{}a", moto::REGION), format!("{}b", moto::REGION)];
        spot.iam_instance_profile = Some("flockd-agent".to_owned());
        spot.spot_max_price = Some("0.42".to_owned());
        vec![("gpu", spot)]
    })
    .await;
    s.moto.instance_profile("flockd-agent").await;
    let first_zone = json!({"Placement.AvailabilityZone": format!("{}a", moto::REGION)});
    s.moto.inject("RunInstances", "InsufficientInstanceCapacity", 500, 10, first_zone).await;
    s.provider.launch(&request(CLUSTER, "gpu", "k-zones")).await.unwrap();
    let calls = s.moto.calls("RunInstances").await;
    let zones: Vec<&str> = calls.iter().map(|c| c.params["Placement.AvailabilityZone"].as_str()).collect();
    assert_eq!(
        zones,
        [format!("{}a", moto::REGION), format!("{}b", moto::REGION)],
        "one RunInstances per zone, in order"
    );
    let last = &calls[1].params;
    assert_eq!(last["IamInstanceProfile.Name"], "flockd-agent");
    assert_eq!(last["InstanceMarketOptions.SpotOptions.MaxPrice"], "0.42");
    assert!(!last.contains_key("SubnetId"));
    assert_eq!(instance_count(&s.moto).await, 1);

    let mut both = resource(&["subnet-1".to_owned()], Market::Spot);
    both.availability_zones = vec![format!("{}a", moto::REGION)];
    assert!(both.validate("gpu").unwrap_err().contains("both subnets and availability-zones"));
}

#[tokio::test]
async fn capacity_errors_in_every_subnet_fail_as_capacity_after_one_call_each() {
    let s = setup(3, 500, |s| vec![("cpu", resource(s, Market::Spot))]).await;
    s.moto.inject("RunInstances", "InsufficientInstanceCapacity", 500, 100, json!({})).await;
    let err = s.provider.launch(&request(CLUSTER, "cpu", "k-none")).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Capacity(m) if m.contains(&s.subnets[2])), "{err}");
    assert_eq!(s.moto.calls("RunInstances").await.len(), 3, "exactly one attempt per subnet");
    assert_eq!(instance_count(&s.moto).await, 0);
}

#[tokio::test]
async fn throttling_is_retried_with_a_bounded_backoff() {
    let s = one_subnet_cpu().await;
    s.moto.inject("RunInstances", "RequestLimitExceeded", 503, 2, json!({})).await;
    let instance = s.provider.launch(&request(CLUSTER, "cpu", "k-throttle")).await.unwrap();
    assert_eq!(s.moto.calls("RunInstances").await.len(), 3, "two throttled calls, then success");
    assert_eq!(instance_count(&s.moto).await, 1);
    assert_eq!(s.provider.list(CLUSTER).await.unwrap()[0].id, instance.id);

    // Throttled for good: the configured 2 retries, then a Throttled error.
    s.moto.reset_faults().await;
    s.moto.inject("DescribeInstances", "RequestLimitExceeded", 503, 100, json!({})).await;
    let err = s.provider.list(CLUSTER).await.unwrap_err();
    assert!(matches!(err, ProviderError::Throttled(_)), "{err}");
    assert!(err.is_transient());
    assert_eq!(s.moto.calls("DescribeInstances").await.len(), 3);
}

#[tokio::test]
async fn unauthorized_fails_as_auth_without_retrying() {
    let s = setup(2, 500, |s| vec![("cpu", resource(s, Market::OnDemand))]).await;
    s.moto.inject("RunInstances", "UnauthorizedOperation", 403, 100, json!({})).await;
    let err = s.provider.launch(&request(CLUSTER, "cpu", "k-auth")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)), "{err}");
    assert_eq!(s.moto.calls("RunInstances").await.len(), 1, "no retry, no other subnet");
}

#[tokio::test]
async fn quota_and_invalid_requests_are_classified_and_not_retried() {
    let s = setup(2, 500, |s| vec![("cpu", resource(s, Market::OnDemand))]).await;
    s.moto.inject("RunInstances", "VcpuLimitExceeded", 400, 1, json!({})).await;
    let err = s.provider.launch(&request(CLUSTER, "cpu", "k-quota")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Quota(_)), "{err}");
    s.moto.inject("RunInstances", "InvalidAMIID.Malformed", 400, 1, json!({})).await;
    let err = s.provider.launch(&request(CLUSTER, "cpu", "k-invalid")).await.unwrap_err();
    assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("InvalidAMIID.Malformed")), "{err}");
    assert_eq!(s.moto.calls("RunInstances").await.len(), 2);
    let err = s.provider.launch(&request(CLUSTER, "gpu", "k-unknown")).await.unwrap_err();
    assert!(matches!(&err, ProviderError::InvalidRequest(m) if m.contains("\"gpu\"")), "{err}");
}

#[tokio::test]
async fn same_idempotency_key_twice_starts_one_instance() {
    let s = one_subnet_cpu().await;
    let first = s.provider.launch(&request(CLUSTER, "cpu", "k-once")).await.unwrap();
    let second = s.provider.launch(&request(CLUSTER, "cpu", "k-once")).await.unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(instance_count(&s.moto).await, 1);
    let tokens: Vec<String> =
        s.moto.calls("RunInstances").await.into_iter().map(|c| c.params["ClientToken"].clone()).collect();
    assert_eq!(tokens, ["k-once", "k-once"]);
}

#[test]
fn config_refuses_literal_keys_and_fills_defaults() {
    let config: AwsProviderConfig = toml::from_str(
        "region = \"eu-west-1\"\n[credentials]\naccess-key-id = \"env:MY_KEY\"\nsecret-access-key = \"file:/run/secret\"\n",
    )
    .unwrap();
    assert_eq!(config.throttle_retries, 4);
    assert_eq!(config.list_page_size, 500);
    let refs = config.credentials.unwrap();
    assert_eq!(refs.access_key_id, SecretRef::Env("MY_KEY".to_owned()));

    let err = toml::from_str::<AwsProviderConfig>(
        "region = \"eu-west-1\"\n[credentials]\naccess-key-id = \"AKIAFAKEFAKEFAKEFAKE\"\nsecret-access-key = \"env:K\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("env:NAME"), "{err}");
    // toml quotes the offending line in its error; our own message never
    // repeats the value.
    let ours = SecretRef::try_from("wJalrFAKE".to_owned()).unwrap_err();
    assert!(!ours.contains("wJalrFAKE"), "{ours}");
    assert_eq!(format!("{:?}", SecretRef::Env("K".to_owned())), "env:K");

    let resource: AwsResourceConfig =
        toml::from_str("ami = \"ami-1\"\ninstance-type = \"t3.micro\"\nmarket = \"spot\"").unwrap();
    assert_eq!(resource.market, Market::Spot);
    assert_eq!(resource.root_device_name, "/dev/xvda");
    assert!(toml::from_str::<AwsResourceConfig>("ami = \"a\"\ninstance-type = \"t\"\nsubnet = \"x\"").is_err());
}
