//! TLS for the HTTP API (rustls with ring): the node's certificate — given with
//! `--tls-cert/--tls-key`, or self-signed at first start and kept in the data dir — a listener
//! that hands axum finished TLS connections, and the CLI's side: trust a pinned certificate
//! fingerprint (`--tls-fingerprint sha256:…`), a CA file, or the system's roots.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::Error;

/// Where a self-signed certificate and its key are kept, and the fingerprint for scripts.
pub const CERT_FILE: &str = "tls-cert.pem";
pub const KEY_FILE: &str = "tls-key.pem";
pub const FINGERPRINT_FILE: &str = "tls.fingerprint";

/// A handshake that has not finished by then is dropped (a client that connects and says
/// nothing must not hold a slot).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:<64 hex digits>` of a certificate's DER bytes: what the CLI pins.
pub fn fingerprint(cert: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert)))
}

/// Parses a pinned fingerprint: `sha256:` and 64 hex digits, colons allowed between bytes.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let hexpart: String = s
        .trim()
        .strip_prefix("sha256:")
        .unwrap_or(s.trim())
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bytes = hex::decode(&hexpart).ok().filter(|b| b.len() == 32);
    bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| {
        format!(
            "--tls-fingerprint {s:?}: use sha256: and 64 hex digits, as the node prints at start \
                 and keeps in <data-dir>/{FINGERPRINT_FILE}"
        )
    })
}

/// The node's certificate chain and key.
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub fingerprint: String,
    /// Whether it was generated here (self-signed) rather than given.
    pub self_signed: bool,
}

fn read_pem(cert: &Path, key: &Path) -> Result<Identity, Error> {
    let bad =
        |what: &str, p: &Path, e: String| Error::Config(format!("{what} {}: {e}", p.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("--tls-cert", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("--tls-cert", cert, e.to_string()))?;
    let first = certs.first().ok_or_else(|| {
        bad(
            "--tls-cert",
            cert,
            "holds no PEM certificate (BEGIN CERTIFICATE)".into(),
        )
    })?;
    let fingerprint = fingerprint(first);
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        bad(
            "--tls-key",
            key,
            format!("{e} (a PEM private key is expected)"),
        )
    })?;
    Ok(Identity {
        certs,
        key,
        fingerprint,
        self_signed: false,
    })
}

/// The given certificate, or the self-signed one in `dir` (made at first start for `names`).
pub fn identity(
    given: Option<(&Path, &Path)>,
    dir: &Path,
    names: Vec<String>,
) -> Result<Identity, Error> {
    if let Some((cert, key)) = given {
        return read_pem(cert, key);
    }
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !cert.exists() || !key.exists() {
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| Error::Config(format!("cannot make a self-signed certificate: {e}")))?;
        crate::mesh::key::write_private(&key, made.key_pair.serialize_pem().as_bytes())?;
        std::fs::write(&cert, made.cert.pem()).map_err(|e| Error::io("cannot write", &cert, e))?;
        tracing::info!("made a self-signed TLS certificate in {}", cert.display());
    }
    let mut id = read_pem(&cert, &key)?;
    id.self_signed = true;
    Ok(id)
}

/// Names a self-signed certificate is made for: this host's name, localhost and the address the
/// node is bound to (or, bound to every address, nothing more: clients pin the fingerprint).
pub fn names_for(bound: std::net::SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Ok(h) = sysinfo::System::host_name() {
        names.push(h);
    }
    if !bound.ip().is_unspecified() {
        names.push(bound.ip().to_string());
    }
    names.sort();
    names.dedup();
    names
}

pub fn server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, Error> {
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| Error::Config(format!("TLS: the key does not fit the certificate: {e}")))?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// Accepts TCP connections and finishes their TLS handshakes off the accept loop, so a slow or
/// silent client delays nobody; axum serves what comes out.
pub struct TlsListener {
    done: mpsc::Receiver<(TlsStream<TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, done) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (sock, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::debug!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { done, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(c) => c,
            // The accept loop only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Trusts exactly the certificate with this SHA-256, whatever its names or issuer: the node's
/// self-signed certificate, pinned from what it printed (trust on first use, like SSH).
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate is {}, not the pinned one; if the node's certificate \
                 changed on purpose, pin the new fingerprint it prints",
                fingerprint(end_entity.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The CLI's TLS: a pinned fingerprint, else a CA file, else the system's roots.
pub fn client_config(pin: Option<&str>, ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let p = provider();
    let builder = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut c = if let Some(pin) = pin {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256: parse_fingerprint(pin)?,
                algorithms: p.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = ca {
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("--ca-cert {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("--ca-cert {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("--ca-cert {}: {e}", ca.display()))?;
            }
        } else {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_and_bad_ones_are_named() {
        let f = fingerprint(b"cert");
        let raw = parse_fingerprint(&f).unwrap();
        let colons = f
            .trim_start_matches("sha256:")
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&format!("sha256:{colons}")).unwrap(), raw);
        assert!(
            parse_fingerprint("sha256:abcd")
                .unwrap_err()
                .contains("64 hex")
        );
    }

    #[test]
    fn a_self_signed_identity_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = identity(None, dir.path(), vec!["localhost".into()]).unwrap();
        let b = identity(None, dir.path(), vec!["localhost".into()]).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "kept across restarts");
        assert!(a.self_signed);
        assert!(server_config(&a).is_ok());
        let bad = dir.path().join("none.pem");
        std::fs::write(&bad, "not pem").unwrap();
        assert!(identity(Some((&bad, &bad)), dir.path(), vec![]).is_err());
    }
}
