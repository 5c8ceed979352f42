//! HTTPS on the API and dashboard: a node bound beyond loopback serves TLS with a self-signed
//! certificate made at first start, whose fingerprint the CLI pins; a given certificate is
//! trusted through its CA; plain HTTP beyond loopback needs --insecure-http.

mod support;

use std::process::Command;

use support::{BIN, TestNode, text};

/// The CLI against `url` with `token`, and the given extra environment.
fn cli(url: &str, token: &str, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("TESTMESH_SERVER", url)
        .env("TESTMESH_TOKEN", token)
        .env_remove("TESTMESH_TLS_FINGERPRINT")
        .envs(env.iter().copied())
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

#[tokio::test]
async fn beyond_loopback_the_api_is_https_and_the_cli_pins_the_certificate() {
    let node = TestNode::start(&["--http", "0.0.0.0:0"]).await;
    assert!(node.url.starts_with("https://"), "{}", node.url);
    let fp = node
        .tls_fingerprint()
        .expect("the fingerprint is kept in the data dir");
    assert!(fp.starts_with("sha256:") && fp.len() == 71, "{fp}");
    let url = node.url.replace("0.0.0.0", "127.0.0.1");

    // Unpinned: the self-signed certificate is not trusted, and the error says what to do.
    let o = cli(&url, &node.token, &[], &["status"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--tls-fingerprint"), "{}", text(&o));
    // Pinned: works, reads and writes.
    let pin = [("TESTMESH_TLS_FINGERPRINT", fp.as_str())];
    let o = cli(&url, &node.token, &pin, &["status"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&url, &node.token, &pin, &["submit", "--wait", "--", "true"]);
    assert!(o.status.success(), "{}", text(&o));
    // A wrong pin is refused (another node's certificate, or a machine in the middle).
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let o = cli(
        &url,
        &node.token,
        &[("TESTMESH_TLS_FINGERPRINT", &wrong)],
        &["status"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("not the pinned one"), "{}", text(&o));
    // The dashboard over HTTPS (a browser passes the token once).
    let (code, body) = node.get_text(&format!("/?token={}", node.token)).await;
    assert_eq!(code, 200);
    assert!(body.contains("<html"), "{body}");
    // No plain HTTP on the same port.
    let plain = reqwest::get(url.replace("https://", "http://") + "/healthz").await;
    assert!(
        plain.map_or(true, |r| !r.status().is_success()),
        "plain HTTP must not be served on a TLS port"
    );
    // The same certificate after a restart: pins stay valid.
    let mut node = node;
    node.stop();
    node.spawn().await;
    assert_eq!(node.tls_fingerprint().as_deref(), Some(fp.as_str()));
}

#[tokio::test]
async fn a_given_certificate_is_trusted_through_its_ca_and_plain_http_needs_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let node = TestNode::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    assert!(node.url.starts_with("https://127.0.0.1:"), "{}", node.url);
    let ca = [("TESTMESH_CA_CERT", cert.to_str().unwrap())];
    let o = cli(&node.url, &node.token, &ca, &["status"]);
    assert!(o.status.success(), "{}", text(&o));

    // Bad input: a key without a certificate, a file that is not PEM.
    let o = Command::new(BIN)
        .args(["node", "--tls-key", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = Command::new(BIN)
        .args(["node", "--data-dir"])
        .arg(dir.path().join("d"))
        .args([
            "--tls-cert",
            key.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("--tls-cert"), "{}", text(&o));

    // Plain HTTP beyond loopback only when asked, with a warning.
    let plain = TestNode::start(&["--http", "0.0.0.0:0", "--insecure-http"]).await;
    assert!(plain.url.starts_with("http://"), "{}", plain.url);
    assert!(plain.log().contains("in clear"), "{}", plain.log());
}
