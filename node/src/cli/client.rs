//! The HTTP client the CLI uses to talk to any node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::core::clock::{Clock, SystemClock};

/// How long a request waits for a node that is not listening yet (a script that starts
/// `testmesh node &` and submits right after). Nothing was sent, so trying again is safe.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Where the server is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Node to talk to
    #[arg(
        long,
        env = "TESTMESH_SERVER",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub server: String,
    /// API token for commands that change something [default: read from <data-dir>/api-token]
    #[arg(long, env = "TESTMESH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Data dir of a local node, to read its API token from
    #[arg(
        long = "data-dir",
        env = "TESTMESH_DATA_DIR",
        default_value = "testmesh-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Trust the node's HTTPS certificate with this SHA-256 (as the node prints it), e.g. its
    /// self-signed one [default: read from <data-dir>/tls.fingerprint when there]
    #[arg(long, env = "TESTMESH_TLS_FINGERPRINT", global = true)]
    pub tls_fingerprint: Option<String>,
    /// Trust HTTPS certificates issued by this CA (PEM) instead of the system's roots
    #[arg(long, env = "TESTMESH_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    token_file: PathBuf,
    token_hint: String,
}

impl Client {
    pub fn new(args: &ClientArgs) -> anyhow::Result<Client> {
        let base = args.server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(anyhow!(
                "--server {base:?} must start with http:// or https:// (e.g. http://127.0.0.1:7070)"
            ));
        }
        let token_file = args.data_dir.join("api-token");
        let token = args.token.clone().or_else(|| {
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|s| s.trim().to_string())
        });
        let mut builder = reqwest::Client::builder().pool_max_idle_per_host(64);
        if base.starts_with("https://") {
            // An empty value (a CI secret that is not set) means none.
            let given = args
                .tls_fingerprint
                .clone()
                .filter(|s| !s.trim().is_empty());
            let pin = given.or_else(|| {
                std::fs::read_to_string(args.data_dir.join(crate::tls::FINGERPRINT_FILE))
                    .ok()
                    .map(|s| s.trim().to_string())
            });
            let tls = crate::tls::client_config(pin.as_deref(), args.ca_cert.as_deref())
                .map_err(anyhow::Error::msg)?;
            builder = builder.use_preconfigured_tls(tls);
        }
        Ok(Client {
            http: builder.build().context("building the HTTP client")?,
            base,
            token,
            token_hint: token_file.display().to_string(),
            token_file,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let body = self.send_raw(req).await?;
        serde_json::from_slice(&body)
            .with_context(|| format!("unexpected response from {}", self.base))
    }

    /// A GET whose answer is not JSON (an SVG chart), as text.
    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let body = self.get_bytes(path).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.send_raw(req).await
    }

    async fn send_raw(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Vec<u8>> {
        let started = SystemClock.instant();
        let resp = loop {
            let Some(attempt) = req.try_clone() else {
                break req.send().await;
            };
            match attempt.send().await {
                Err(e) if e.is_connect() && started.elapsed() < CONNECT_WAIT => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => break r,
            }
        };
        let resp = resp.map_err(|e| {
            let chain = format!("{e:?}");
            if chain.contains("certificate") || chain.contains("Certificate") {
                // The innermost cause says what was wrong with the certificate.
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                anyhow!(
                    "the HTTPS certificate of {} is not trusted ({cause}): pin the node's certificate with --tls-fingerprint sha256:… (TESTMESH_TLS_FINGERPRINT; the node prints it at start and keeps it in <data-dir>/tls.fingerprint), or give its CA with --ca-cert",
                    self.base
                )
            } else if e.is_connect() {
                anyhow!("cannot reach testmesh at {}: is `testmesh node` running there? (set --server or TESTMESH_SERVER)", self.base)
            } else {
                anyhow!("request to {} failed: {e}", self.base)
            }
        })?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the response")?.to_vec();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(anyhow!("{message} (HTTP {})", status.as_u16()));
        }
        Ok(body)
    }

    /// Reads carry the token when there is one: a node serving beyond loopback wants it.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.send(req).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.write(reqwest::Method::POST, path, body).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.write(reqwest::Method::PUT, path, body).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.write(reqwest::Method::DELETE, path, &serde_json::json!({}))
            .await
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let token = self.write_token().await?;
        self.send(
            self.http
                .request(method, format!("{}{path}", self.base))
                .bearer_auth(token)
                .json(body),
        )
        .await
    }

    /// PUT of raw bytes (an archive).
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<T> {
        let token = self.write_token().await?;
        self.send(
            self.http
                .put(format!("{}{path}", self.base))
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/gzip")
                .body(body),
        )
        .await
    }

    async fn write_token(&self) -> anyhow::Result<String> {
        let token = match &self.token {
            Some(t) => t.clone(),
            // A local node that is starting writes its token before it serves: once it
            // answers, the file is there.
            None => {
                let _ = self.get_bytes("/healthz").await;
                std::fs::read_to_string(&self.token_file)
                    .map(|s| s.trim().to_string())
                    .map_err(|_| {
                        anyhow!(
                            "no API token: pass --token, set TESTMESH_TOKEN, or run where {} exists",
                            self.token_hint
                        )
                    })?
            }
        };
        Ok(token)
    }
}
