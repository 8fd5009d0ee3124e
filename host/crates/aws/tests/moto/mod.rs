//! A moto EC2 server on 127.0.0.1 behind tests/fixtures/moto_faults.py (fault
//! injection, a call log and the ClientToken idempotency moto lacks), killed
//! when dropped.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls;
use serde_json::{Value, json};

pub const REGION: &str = "us-east-1";

pub struct Moto {
    child: Child,
    pub url: String,
    http: reqwest::Client,
}

/// One EC2 call as the middleware saw it.
#[derive(Debug)]
pub struct Call {
    pub params: HashMap<String, String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..").canonicalize().unwrap()
}

/// scripts/setup creates the venv; a fresh checkout may still be running it.
async fn python_with_moto() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        if python.exists() {
            let ok = Command::new(&python)
                .args(["-c", "import moto.server"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return python;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{} with moto is missing: run scripts/setup", python.display());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Moto {
    pub async fn start() -> Moto {
        let python = python_with_moto().await;
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(python)
            .arg(repo_root().join("tests/fixtures/moto_faults.py"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let moto = Moto { child, url: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while moto.http.get(format!("{}/_faults/calls", moto.url)).send().await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "moto did not answer on {}", moto.url);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The first EC2 call loads moto's AMI and instance-type data (seconds).
        moto.client().describe_instances().send().await.expect("warm-up call");
        moto.reset_faults().await;
        moto
    }

    /// A plain SDK client for setting up and reading back.
    pub fn client(&self) -> Client {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new("AKIAFAKEFAKEFAKEFAKE", "fake-secret", None, None, "test"))
            .http_client(http_client)
            .build();
        Client::from_conf(config)
    }

    /// The next `count` calls of `action` whose parameters include `matching`
    /// answer EC2 error `code` with HTTP `status`.
    pub async fn inject(&self, action: &str, code: &str, status: u16, count: u32, matching: Value) {
        let fault = json!({"action": action, "code": code, "status": status, "count": count, "match": matching});
        let response = self.http.post(format!("{}/_faults/inject", self.url)).json(&fault).send().await.unwrap();
        assert!(response.status().is_success());
    }

    pub async fn calls(&self, action: &str) -> Vec<Call> {
        let all: Vec<Value> =
            self.http.get(format!("{}/_faults/calls", self.url)).send().await.unwrap().json().await.unwrap();
        all.into_iter()
            .filter(|c| c["action"] == action)
            .map(|c| Call { params: serde_json::from_value(c["params"].clone()).unwrap() })
            .collect()
    }

    pub async fn reset_faults(&self) {
        self.http.post(format!("{}/_faults/reset", self.url)).send().await.unwrap();
    }

    /// An IAM instance profile named `name` (moto checks that a launch's
    /// profile exists, as EC2 does). Through moto's IAM query API: this
    /// crate has no IAM SDK.
    pub async fn instance_profile(&self, name: &str) {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=AKIAFAKEFAKEFAKEFAKE/20260101/{REGION}/iam/aws4_request, SignedHeaders=host, Signature=00"
        );
        let response = self
            .http
            .post(&self.url)
            .header("Authorization", auth)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("Action=CreateInstanceProfile&InstanceProfileName={name}&Version=2010-05-08"))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "CreateInstanceProfile: {}", response.text().await.unwrap());
    }

    /// A VPC with `count` subnets, in order.
    pub async fn subnets(&self, count: usize) -> Vec<String> {
        let client = self.client();
        let vpc = client.create_vpc().cidr_block("10.0.0.0/16").send().await.unwrap();
        let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
        let mut subnets = Vec::new();
        for i in 0..count {
            let subnet =
                client.create_subnet().vpc_id(&vpc_id).cidr_block(format!("10.0.{i}.0/24")).send().await.unwrap();
            subnets.push(subnet.subnet().unwrap().subnet_id().unwrap().to_owned());
        }
        subnets
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
