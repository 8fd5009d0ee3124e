//! The Compute Engine provider against a loopback fake of the REST API
//! (tests/fake_gce), through the real google-cloud-compute-v1 client.

mod fake_gce;

use std::collections::{BTreeMap, HashMap};

use fake_gce::{FakeGce, Fault, FaultKind};
use flockd_core::naming::{self, tags};
use flockd_core::testing::provider_contract::{request, run_contract, wait_until_gone};
use flockd_core::{CloudProvider, ProviderError};
use flockd_gcp::{GcpAccelerator, GcpProvider, GcpProviderConfig, GcpResourceConfig, Provisioning};

const PROJECT: &str = "flockd-test";
const CLUSTER: &str = "test";

fn resource(provisioning: Provisioning) -> GcpResourceConfig {
    GcpResourceConfig {
        machine_type: "n1-standard-4".to_owned(),
        accelerators: vec![],
        boot_image: "projects/debian-cloud/global/images/family/debian-12".to_owned(),
        boot_disk_size_gb: Some(50),
        boot_disk_type: Some("pd-balanced".to_owned()),
        network: None,
        subnetwork: None,
        external_ip: true,
        service_account: Some("agent@flockd-test.iam.gserviceaccount.com".to_owned()),
        scopes: vec!["https://www.googleapis.com/auth/cloud-platform".to_owned()],
        labels: BTreeMap::from([("team".to_owned(), "ml".to_owned())]),
        provisioning,
        metadata: BTreeMap::new(),
    }
}

fn zone(i: usize) -> String {
    format!("test-zone-{}", (b'a' + i as u8) as char)
}

async fn setup(zones: usize, page_size: u32) -> (FakeGce, GcpProvider) {
    let fake = FakeGce::start(PROJECT).await;
    let provider = provider_for(&fake, zones, page_size).await;
    (fake, provider)
}

async fn provider_for(fake: &FakeGce, zones: usize, page_size: u32) -> GcpProvider {
    let config = GcpProviderConfig {
        project: PROJECT.to_owned(),
        zones: (0..zones).map(zone).collect(),
        endpoint: Some(fake.url.clone()),
        credentials_file: None,
        anonymous: true,
        throttle_retries: 2,
        throttle_backoff_ms: 10,
        list_page_size: page_size,
        operation_poll_ms: 5,
        operation_timeout_secs: 30,
        metadata: BTreeMap::from([
            ("install-nvidia-driver".to_owned(), "True".to_owned()),
            ("team".to_owned(), "everyone".to_owned()),
        ]),
    };
    let mut gpu = resource(Provisioning::Spot);
    gpu.accelerators = vec![GcpAccelerator { accelerator_type: "nvidia-tesla-t4".to_owned(), count: 1 }];
    gpu.metadata = BTreeMap::from([("team".to_owned(), "ml".to_owned())]);
    gpu.subnetwork = Some("regions/europe-west4/subnetworks/ml".to_owned());
    let resources = HashMap::from([("cpu".to_owned(), resource(Provisioning::Standard)), ("gpu".to_owned(), gpu)]);
    GcpProvider::new(&config, resources)
        .await
        .unwrap()
        .with_startup_scripts(HashMap::from([("gpu".to_owned(), "#!/bin/sh\necho \"$HOME\" 'x'\n".to_owned())]))
        .unwrap()
}

fn label<'a>(instance: &'a serde_json::Value, key: &str) -> &'a str {
    instance["labels"][key].as_str().unwrap_or_else(|| panic!("label {key} missing: {instance}"))
}

fn metadata<'a>(instance: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    instance["metadata"]["items"].as_array()?.iter().find(|i| i["key"] == key)?["value"].as_str()
}

#[tokio::test]
async fn meets_the_provider_contract() {
    let (_fake, provider) = setup(1, 500).await;
    run_contract(&provider, "contract", "cpu").await;
}

#[tokio::test]
async fn spot_launch_is_labelled_at_creation_with_startup_script_and_delete_on_preemption() {
    let (fake, provider) = setup(1, 500).await;
    let launched = provider.launch(&request(CLUSTER, "gpu", "k-labels")).await.unwrap();
    let stored = fake.instance(&zone(0), &launched.id).expect("the instance named by the returned id");

    assert_eq!(label(&stored, tags::CLUSTER), CLUSTER);
    assert_eq!(label(&stored, tags::RESOURCE), "gpu");
    assert_eq!(label(&stored, tags::LAUNCH_KEY), "k-labels");
    assert_eq!(label(&stored, tags::WORKER_PREFIX), "flockd_test_gpu_", "':' is not allowed in label values");
    assert_eq!(label(&stored, "team"), "ml");
    let disk = &stored["disks"][0];
    assert_eq!(disk["boot"], true);
    assert_eq!(disk["autoDelete"], true);
    assert_eq!(disk["initializeParams"]["labels"][tags::LAUNCH_KEY], "k-labels", "the boot disk is labelled too");
    assert_eq!(disk["initializeParams"]["diskSizeGb"], "50", "int64 travels as a JSON string");

    assert_eq!(metadata(&stored, "startup-script"), Some("#!/bin/sh\necho \"$HOME\" 'x'\n"));
    assert_eq!(metadata(&stored, "flockd-worker-id"), Some(naming::worker_id(CLUSTER, "gpu", &launched.id).as_str()));
    assert_eq!(stored["scheduling"]["provisioningModel"], "SPOT");
    assert_eq!(stored["scheduling"]["instanceTerminationAction"], "DELETE");
    assert_eq!(stored["scheduling"]["onHostMaintenance"], "TERMINATE");
    assert_eq!(stored["guestAccelerators"][0]["acceleratorCount"], 1);
    assert_eq!(stored["machineType"], format!("zones/{}/machineTypes/n1-standard-4", zone(0)));
    assert_eq!(stored["serviceAccounts"][0]["email"], "agent@flockd-test.iam.gserviceaccount.com");
    // Issue 15, item 7: the provider's metadata for every resource, the
    // resource's own over it key by key; the subnetwork as given.
    assert_eq!(metadata(&stored, "install-nvidia-driver"), Some("True"));
    assert_eq!(metadata(&stored, "team"), Some("ml"));
    assert_eq!(stored["networkInterfaces"][0]["subnetwork"], "regions/europe-west4/subnetworks/ml");

    let inserts = fake.calls("insert");
    assert_eq!(inserts.len(), 1);
    let request_id = &inserts[0].query["requestId"];
    assert!(uuid::Uuid::parse_str(request_id).is_ok(), "requestId must be a UUID: {request_id}");
    assert!(launched.launched_at > 0);
    assert_eq!(launched.resource, "gpu");
    assert_eq!(launched.launch_key.as_deref(), Some("k-labels"));
}

#[tokio::test]
async fn standard_launch_has_no_spot_scheduling_and_no_startup_script_when_none_is_set() {
    let (fake, provider) = setup(1, 500).await;
    let launched = provider.launch(&request(CLUSTER, "cpu", "k-std")).await.unwrap();
    let stored = fake.instance(&zone(0), &launched.id).unwrap();
    assert!(stored["scheduling"].get("provisioningModel").is_none(), "{}", stored["scheduling"]);
    assert_eq!(metadata(&stored, "startup-script"), None);
}

#[tokio::test]
async fn clusters_that_sanitise_to_one_label_are_still_told_apart() {
    let (fake, provider) = setup(1, 500).await;
    let upper = provider.launch(&request("Prod.Team", "cpu", "k-1")).await.unwrap();
    let lower = provider.launch(&request("prod_team", "cpu", "k-1")).await.unwrap();
    assert_eq!(label(&fake.instance(&zone(0), &upper.id).unwrap(), tags::CLUSTER), "prod_team");
    let listed: Vec<String> = provider.list("Prod.Team").await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed, [upper.id]);
    let listed: Vec<String> = provider.list("prod_team").await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed, [lower.id]);
}

#[tokio::test]
async fn list_pages_through_every_zone() {
    let (fake, provider) = setup(2, 2).await;
    let mut launched = Vec::new();
    for i in 0..5 {
        launched.push(provider.launch(&request(CLUSTER, "cpu", &format!("k-page-{i}"))).await.unwrap().id);
    }
    // Stockouts in zone a put some instances in zone b.
    fake.inject(Fault {
        call: "insert",
        zone: Some(zone(0)),
        kind: FaultKind::Operation { code: "ZONE_RESOURCE_POOL_EXHAUSTED" },
        count: 3,
    });
    for i in 5..8 {
        launched.push(provider.launch(&request(CLUSTER, "cpu", &format!("k-page-{i}"))).await.unwrap().id);
    }
    provider.launch(&request("someone-else", "cpu", "k-x")).await.unwrap();

    let mut listed: Vec<String> = provider.list(CLUSTER).await.unwrap().into_iter().map(|i| i.id).collect();
    listed.sort();
    launched.sort();
    assert_eq!(listed, launched);
    assert!(launched.iter().any(|id| fake.instance(&zone(1), id).is_some()), "some are in zone b");
    let lists = fake.calls("aggregatedList");
    assert_eq!(lists.len(), 4, "8 instances at 2 per page: {lists:?}");
    assert_eq!(lists.iter().filter(|c| c.query.contains_key("pageToken")).count(), 3);
    assert!(lists.iter().all(|c| c.query["maxResults"] == "2"));
}

#[tokio::test]
async fn an_instance_in_a_zone_dropped_from_the_config_is_still_listed_and_terminated() {
    let (fake, two_zones) = setup(2, 500).await;
    fake.inject(Fault {
        call: "insert",
        zone: Some(zone(0)),
        kind: FaultKind::Operation { code: "ZONE_RESOURCE_POOL_EXHAUSTED" },
        count: 1,
    });
    let launched = two_zones.launch(&request(CLUSTER, "cpu", "k-moved")).await.unwrap();
    assert!(fake.instance(&zone(1), &launched.id).is_some());

    // flockd restarts with zone b removed from its config.
    let one_zone = provider_for(&fake, 1, 500).await;
    let listed: Vec<String> = one_zone.list(CLUSTER).await.unwrap().into_iter().map(|i| i.id).collect();
    assert_eq!(listed, std::slice::from_ref(&launched.id));
    one_zone.terminate(&launched.id).await.unwrap();
    assert_eq!(fake.instance_count(), 0);
}

/// The bootstrap powers a machine off when its agent exits; GCE then keeps
/// it (and bills its disks) in TERMINATED until deleted. It must list as
/// Stopped, which the controller deletes, not as Stopping, which it waits on.
#[tokio::test]
async fn a_machine_that_powered_itself_off_lists_as_stopped_and_is_deleted() {
    let (fake, provider) = setup(1, 500).await;
    let launched = provider.launch(&request(CLUSTER, "cpu", "k-off")).await.unwrap();
    fake.power_off(&zone(0), &launched.id);
    let listed = provider.list(CLUSTER).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, flockd_core::CloudState::Stopped, "{listed:?}");
    provider.terminate(&launched.id).await.unwrap();
    assert_eq!(fake.instance_count(), 0);
}

#[tokio::test]
async fn a_list_with_an_unreachable_zone_is_an_error_not_a_shorter_list() {
    let (fake, provider) = setup(1, 500).await;
    provider.launch(&request(CLUSTER, "cpu", "k-1")).await.unwrap();
    fake.inject(Fault {
        call: "aggregatedList",
        zone: None,
        kind: FaultKind::Unreachable { scope: "zones/test-zone-z" },
        count: 1,
    });
    let err = provider.list(CLUSTER).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Other(m) if m.contains("test-zone-z")), "{err}");
    assert_eq!(provider.list(CLUSTER).await.unwrap().len(), 1);
}

/// Guard: GCE also reports a zone it could not read as a warning in that
/// zone's own entry, with no top-level `unreachables`: that is a partial
/// list too, so an error. A "no results" warning is just an empty zone.
#[tokio::test]
async fn a_zone_answered_with_an_unreachable_warning_fails_the_list() {
    let (fake, provider) = setup(1, 500).await;
    provider.launch(&request(CLUSTER, "cpu", "k-1")).await.unwrap();
    fake.inject(Fault {
        call: "aggregatedList",
        zone: None,
        kind: FaultKind::ScopeWarning { scope: "zones/test-zone-y", code: "UNREACHABLE" },
        count: 1,
    });
    let err = provider.list(CLUSTER).await.expect_err("a zone that did not answer may hold machines");
    assert!(err.to_string().contains("test-zone-y"), "{err}");
    fake.inject(Fault {
        call: "aggregatedList",
        zone: None,
        kind: FaultKind::ScopeWarning { scope: "zones/test-zone-y", code: "NO_RESULTS_ON_PAGE" },
        count: 1,
    });
    assert_eq!(provider.list(CLUSTER).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_stockout_moves_the_launch_to_the_next_zone_and_a_retry_finds_it() {
    let (fake, provider) = setup(3, 500).await;
    fake.inject(Fault {
        call: "insert",
        zone: Some(zone(0)),
        kind: FaultKind::Operation { code: "ZONE_RESOURCE_POOL_EXHAUSTED" },
        count: 10,
    });
    let launched = provider.launch(&request(CLUSTER, "gpu", "k-stockout")).await.unwrap();
    assert!(fake.instance(&zone(1), &launched.id).is_some(), "landed in the second zone");
    let zones_tried: Vec<String> = fake.calls("insert").into_iter().map(|c| c.zone).collect();
    assert_eq!(zones_tried, [zone(0), zone(1)], "one insert per zone");

    fake.clear_faults();
    let retried = provider.launch(&request(CLUSTER, "gpu", "k-stockout")).await.unwrap();
    assert_eq!(retried.id, launched.id);
    assert_eq!(fake.instance_count(), 1, "the retry did not start a second machine in zone a");
}

#[tokio::test]
async fn stockouts_everywhere_fail_as_capacity_after_one_insert_per_zone() {
    let (fake, provider) = setup(2, 500).await;
    fake.inject(Fault {
        call: "insert",
        zone: None,
        kind: FaultKind::Operation { code: "ZONE_RESOURCE_POOL_EXHAUSTED" },
        count: 100,
    });
    let err = provider.launch(&request(CLUSTER, "gpu", "k-none")).await.unwrap_err();
    assert!(matches!(&err, ProviderError::Capacity(m) if m.contains(&zone(1))), "{err}");
    assert_eq!(fake.calls("insert").len(), 2);
    assert_eq!(fake.instance_count(), 0);
}

#[tokio::test]
async fn a_quota_error_in_the_operation_is_quota_and_tries_no_other_zone() {
    let (fake, provider) = setup(2, 500).await;
    fake.inject(Fault { call: "insert", zone: None, kind: FaultKind::Operation { code: "QUOTA_EXCEEDED" }, count: 1 });
    let err = provider.launch(&request(CLUSTER, "gpu", "k-quota")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Quota(_)), "{err}");
    assert_eq!(fake.calls("insert").len(), 1);
}

#[tokio::test]
async fn throttling_is_retried_with_the_same_request_id_then_gives_up() {
    let (fake, provider) = setup(1, 500).await;
    fake.inject(Fault {
        call: "insert",
        zone: None,
        kind: FaultKind::Http { status: 429, reason: "rateLimitExceeded" },
        count: 2,
    });
    provider.launch(&request(CLUSTER, "cpu", "k-throttle")).await.unwrap();
    let inserts = fake.calls("insert");
    assert_eq!(inserts.len(), 3);
    assert!(inserts.iter().all(|c| c.query["requestId"] == inserts[0].query["requestId"]));
    assert_eq!(fake.instance_count(), 1);

    fake.inject(Fault {
        call: "aggregatedList",
        zone: None,
        kind: FaultKind::Http { status: 429, reason: "rateLimitExceeded" },
        count: 100,
    });
    let err = provider.list(CLUSTER).await.unwrap_err();
    assert!(matches!(err, ProviderError::Throttled(_)), "{err}");
    assert_eq!(fake.calls("aggregatedList").len(), 3, "the configured 2 retries");
}

#[tokio::test]
async fn forbidden_is_auth_without_retrying() {
    let (fake, provider) = setup(2, 500).await;
    fake.inject(Fault {
        call: "insert",
        zone: None,
        kind: FaultKind::Http { status: 403, reason: "forbidden" },
        count: 100,
    });
    let err = provider.launch(&request(CLUSTER, "cpu", "k-auth")).await.unwrap_err();
    assert!(matches!(err, ProviderError::Auth(_)), "{err}");
    assert_eq!(fake.calls("insert").len(), 1);
}

#[tokio::test]
async fn same_key_twice_starts_one_instance_and_unknown_ids_terminate_ok() {
    let (fake, provider) = setup(1, 500).await;
    let first = provider.launch(&request(CLUSTER, "cpu", "k-once")).await.unwrap();
    let second = provider.launch(&request(CLUSTER, "cpu", "k-once")).await.unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(fake.instance_count(), 1);

    provider.terminate(&first.id).await.unwrap();
    wait_until_gone(&provider, CLUSTER, &first.id).await;
    provider.terminate("flockd-cpu-0000000000000000").await.unwrap();
    // A launch with the same key after termination starts a new machine of
    // the same name (GCE forgets deleted names).
    assert_eq!(fake.instance_count(), 0);
}

#[test]
fn config_parses_with_defaults_and_rejects_bad_labels() {
    let config: GcpProviderConfig = toml::from_str("project = \"p\"\nzones = [\"z\"]").unwrap();
    assert_eq!(config.list_page_size, 500);
    assert_eq!(config.operation_timeout_secs, 300);
    assert!(!config.anonymous);
    let resource: GcpResourceConfig = toml::from_str(
        "machine-type = \"n1-standard-8\"\nboot-image = \"i\"\nprovisioning = \"spot\"\n\
         accelerators = [{ type = \"nvidia-tesla-t4\" }]",
    )
    .unwrap();
    assert_eq!(resource.accelerators[0].count, 1);
    assert!(resource.external_ip);
    assert_eq!(resource.provisioning, Provisioning::Spot);
    let mut bad = resource.clone();
    bad.labels.insert("Team".to_owned(), "ML".to_owned());
    assert!(bad.validate("gpu").unwrap_err().contains("\"Team\""));
    assert!(toml::from_str::<GcpResourceConfig>("machine-type = \"x\"\nboot-image = \"i\"\nzone = \"z\"").is_err());
    // Metadata: flockd's own keys and keys GCE refuses are config errors.
    for (key, says) in [("startup-script", "extra-bash-script"), ("flockd-resource", "flockd's"), ("a b", "letters")] {
        let mut bad = resource.clone();
        bad.metadata.insert(key.to_owned(), "v".to_owned());
        let error = bad.validate("gpu").unwrap_err();
        assert!(error.contains(says) && error.contains(&format!("{key:?}")), "{error}");
    }
}

/// A resource asking for the project's default service account gets it by
/// GCE's name for it ("default"), with its scopes.
#[tokio::test]
async fn the_default_service_account_is_asked_for_by_name() {
    let fake = FakeGce::start(PROJECT).await;
    let config = GcpProviderConfig {
        project: PROJECT.to_owned(),
        zones: vec![zone(0)],
        endpoint: Some(fake.url.clone()),
        credentials_file: None,
        anonymous: true,
        throttle_retries: 2,
        throttle_backoff_ms: 10,
        list_page_size: 500,
        operation_poll_ms: 5,
        operation_timeout_secs: 30,
        metadata: BTreeMap::new(),
    };
    let mut cpu = resource(Provisioning::Standard);
    cpu.service_account = Some("default".to_owned());
    let provider = GcpProvider::new(&config, HashMap::from([("cpu".to_owned(), cpu)])).await.unwrap();
    let launched = provider.launch(&request(CLUSTER, "cpu", "k-default-sa")).await.unwrap();
    let stored = fake.instance(&zone(0), &launched.id).unwrap();
    assert_eq!(stored["serviceAccounts"][0]["email"], "default");
    assert_eq!(stored["serviceAccounts"][0]["scopes"][0], "https://www.googleapis.com/auth/cloud-platform");
}
