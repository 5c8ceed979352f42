//! The AWS provider against a real EC2 API emulator: moto's server (from PyPI), started here on
//! loopback with dummy credentials. Nothing boots in the emulator, so instances never join;
//! what is checked is what the provider asks EC2 for and how the leader cleans up.

#[path = "support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::types::{
    InstanceAttributeName, InstanceStateName, ResourceType, Tag, TagSpecification,
};
use base64::Engine;
use serde_json::json;
use support::{TestNode, show, wait_for};
use testmesh_consensus::scaling::InstanceState;
use testmesh_providers::aws::{AwsConfig, AwsProvider};
use testmesh_providers::{LaunchSpec, Provider};

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` from PATH, `TESTMESH_MOTO_SERVER`, or the venv .ci/run makes.
fn moto_binary() -> Option<String> {
    if let Ok(p) = std::env::var("TESTMESH_MOTO_SERVER") {
        return Some(p);
    }
    let venv = format!(
        "{}/.cache/testmesh-venv/bin/moto_server",
        std::env::var("HOME").unwrap_or_default()
    );
    if std::path::Path::new(&venv).exists() {
        return Some(venv);
    }
    Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then(|| "moto_server".to_string())
}

async fn moto() -> Option<Moto> {
    let Some(bin) = moto_binary() else {
        assert!(
            std::env::var("TESTMESH_STRICT").is_err(),
            "TESTMESH_STRICT=1 but moto_server is not installed (.ci/run installs it)"
        );
        eprintln!("skipped: moto_server is not installed (pip install 'moto[server]')");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let m = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    wait_for(Duration::from_secs(10), async || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    })
    .await
    .unwrap_or_else(|| panic!("moto_server did not start on port {port}"));
    Some(m)
}

fn client(url: &str) -> Client {
    let conf = aws_sdk_ec2::Config::builder()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .endpoint_url(url)
        .build();
    Client::from_conf(conf)
}

async fn an_image(c: &Client) -> String {
    let out = c.describe_images().send().await.expect("DescribeImages");
    out.images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_string))
        .expect("the emulator lists images")
}

async fn state_of(c: &Client, id: &str) -> Option<InstanceStateName> {
    let out = c.describe_instances().instance_ids(id).send().await.ok()?;
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.state().and_then(|s| s.name()).cloned())
}

fn spec(intent: u64) -> LaunchSpec {
    LaunchSpec {
        cluster_id: "c0ffee".into(),
        intent,
        instance_type: "t3.micro".into(),
        cpu_milli: 2000,
        memory_bytes: 1 << 30,
        gpus: 0,
        gpu_model: String::new(),
        gpu_memory_bytes: 0,
        node_args: vec!["--join".into(), "/ip4/10.0.0.1/tcp/7071".into()],
        swarm_key: "/key/swarm/psk/1.0.0/\n/base16/\n00ff\n".into(),
    }
}

#[tokio::test]
async fn launch_is_idempotent_tags_and_user_data_are_set_and_terminate_works() {
    let Some(m) = moto().await else { return };
    let c = client(&m.url);
    let image = an_image(&c).await;
    let p = AwsProvider::with_client(
        AwsConfig {
            name: "aws".into(),
            region: "us-east-1".into(),
            image_id: image,
            subnet_id: None,
            security_group_ids: Vec::new(),
            key_name: None,
            instance_profile: None,
            install_url: Some("https://example.org/testmesh".into()),
            endpoint_url: Some(m.url.clone()),
        },
        c.clone(),
    );
    let s = spec(1);
    let first = p.launch(&s).await.unwrap();
    let again = p.launch(&s).await.unwrap();
    assert_eq!(
        first, again,
        "a retried launch of the same intent gives the same instance"
    );
    let listed = p.list("c0ffee").await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].intent, Some(1));
    assert!(listed[0].alive);
    assert!(p.list("other").await.unwrap().is_empty());
    // Stopped: not alive, yet still there (and billed for its disk) until terminated.
    c.stop_instances()
        .instance_ids(&first)
        .send()
        .await
        .unwrap();
    let listed = p.list("c0ffee").await.unwrap();
    assert!(!listed[0].alive && listed[0].stopped, "{listed:?}");

    // Tags and user data as sent.
    let out = c
        .describe_instances()
        .instance_ids(&first)
        .send()
        .await
        .unwrap();
    let inst = &out.reservations()[0].instances()[0];
    let tag = |k: &str| {
        inst.tags()
            .iter()
            .find(|t| t.key() == Some(k))
            .and_then(|t| t.value())
            .map(str::to_string)
    };
    assert_eq!(tag("testmesh.cluster").as_deref(), Some("c0ffee"));
    assert_eq!(tag("testmesh.intent").as_deref(), Some("1"));
    assert_eq!(tag("Name").as_deref(), Some("testmesh-c0ffee-1"));
    assert_eq!(inst.instance_type().map(|t| t.as_str()), Some("t3.micro"));
    let attr = c
        .describe_instance_attribute()
        .instance_id(&first)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let b64 = attr.user_data().and_then(|u| u.value()).expect("user data");
    let script = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap();
    assert!(script.starts_with("#!/bin/bash"), "{script}");
    assert!(
        script.contains("/base16/\n00ff\nTESTMESH_SWARM_KEY"),
        "{script}"
    );
    assert!(
        script.contains("'--join' '/ip4/10.0.0.1/tcp/7071'"),
        "{script}"
    );
    assert!(script.contains("https://example.org/testmesh"));

    p.terminate(&first).await.unwrap();
    let st = state_of(&c, &first).await;
    assert!(
        matches!(
            st,
            Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated)
        ),
        "{st:?}"
    );
    let listed = p.list("c0ffee").await.unwrap();
    assert!(!listed[0].alive && !listed[0].stopped, "{listed:?}");
    p.terminate(&first).await.unwrap();
}

#[tokio::test]
async fn the_leader_launches_on_ec2_cleans_up_and_reconcile_removes_orphans() {
    let Some(m) = moto().await else { return };
    let c = client(&m.url);
    let image = an_image(&c).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"version = 1
[[instance_types]]
provider = "aws"
name = "t3.small"
cpus = "2"
memory = "2GiB"
price_per_hour = 0.0208
boot_secs = 60

[[providers]]
kind = "aws"
region = "us-east-1"
image_id = "{image}"
endpoint_url = "{}"
join = ["/ip4/10.0.0.1/tcp/7071"]
"#,
            m.url
        ),
    )
    .unwrap();
    // Credentials come from the standard chain: here, the environment.
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let mut node =
        TestNode::start_env(&["--config", cfg.to_str().unwrap(), "--cpus", "1"], &env).await;
    let (code, v) = node
        .put(
            "/api/v1/policy",
            json!({"enabled": true, "providers": ["aws"], "registration_deadline": "4s",
                   "max_workers": 1}),
        )
        .await;
    assert_eq!(code, 200, "{v}");
    let v = node.wait_scaling(30, |v| v.cluster_id.is_some()).await;
    let cluster = v.cluster_id.unwrap();

    // An instance tagged for this cluster that the ledger knows nothing of: an orphan.
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(
            Tag::builder()
                .key("testmesh.cluster")
                .value(&cluster)
                .build(),
        )
        .tags(Tag::builder().key("testmesh.intent").value("999").build())
        .build();
    let out = c
        .run_instances()
        .image_id(an_image(&c).await)
        .min_count(1)
        .max_count(1)
        .tag_specifications(tags)
        .send()
        .await
        .unwrap();
    let orphan = out.instances()[0].instance_id().unwrap().to_string();

    // A backlog: the leader launches on EC2; nothing boots in the emulator, so at the
    // deadline the instance is terminated and the launch marked failed.
    node.submit_body(
        json!({"tasks": [{"command": ["true"], "cpu": 2}], "allow_unschedulable": true}),
    )
    .await;
    let v = node
        .wait_scaling(60, |v| {
            v.instances.iter().any(|i| i.state == InstanceState::Failed)
        })
        .await;
    let failed = v
        .instances
        .iter()
        .find(|i| i.state == InstanceState::Failed)
        .unwrap();
    assert_eq!(
        failed.end_reason.as_deref(),
        Some("did not join within 4 s"),
        "{}",
        show(&v)
    );
    let launched = failed
        .provider_id
        .clone()
        .unwrap_or_else(|| panic!("it was launched: {failed:?}"));
    assert!(launched.starts_with("i-"), "{launched}");
    let st = state_of(&c, &launched).await;
    assert!(
        matches!(
            st,
            Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated)
        ),
        "{st:?}"
    );
    // Its user data carries this cluster's key.
    let key = std::fs::read_to_string(node.data_dir().join("swarm.key")).unwrap();
    let attr = c
        .describe_instance_attribute()
        .instance_id(&launched)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let script = base64::engine::general_purpose::STANDARD
        .decode(attr.user_data().and_then(|u| u.value()).unwrap())
        .unwrap();
    assert!(String::from_utf8_lossy(&script).contains(key.trim_end()));

    // A new leadership (here: a restart) reconciles: the orphan is terminated.
    assert_eq!(
        state_of(&c, &orphan).await,
        Some(InstanceStateName::Running)
    );
    node.kill9();
    node.spawn().await;
    let ended = wait_for(Duration::from_secs(20), async || {
        matches!(
            state_of(&c, &orphan).await,
            Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated)
        )
        .then_some(())
    })
    .await;
    assert!(
        ended.is_some(),
        "reconcile terminated the orphan; log:\n{}",
        node.log()
    );
}
