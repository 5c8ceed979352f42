//! Node identity (an ed25519 libp2p keypair) and the cluster's swarm key (a 32-byte pre-shared
//! key in the standard `/key/swarm/psk/1.0.0/` file format, as IPFS private networks use).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use libp2p::PeerId;
use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use testmesh_consensus::NodeId;

use crate::error::Error;

/// Creates `path` with mode 0600 (never overwriting) and writes `bytes` durably.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("cannot create", path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("cannot write", path, e))
}

/// Loads this node's keypair, creating it at first start.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, Error> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            Error::Config(format!(
                "{} is not a testmesh node key ({e}); move it away to start as a new node",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp
                .to_protobuf_encoding()
                .map_err(|e| Error::Config(format!("cannot encode the node key: {e}")))?;
            write_private(path, &bytes)?;
            Ok(kp)
        }
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// The Raft id of a peer: the last 8 bytes of its peer id (for ed25519 keys, of the public key).
pub fn node_id_of(peer: &PeerId) -> NodeId {
    let b = peer.to_bytes();
    let mut tail = [0u8; 8];
    tail.copy_from_slice(&b[b.len() - 8..]);
    NodeId(u64::from_be_bytes(tail))
}

/// A new random swarm key in the standard file format.
pub fn generate_swarm_key() -> String {
    format!("{}\n", PreSharedKey::new(rand::random::<[u8; 32]>()))
}

pub fn read_swarm_key(path: &Path) -> Result<PreSharedKey, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io("cannot read swarm key", path, e))?;
    parse_swarm_key(&text).map_err(|e| {
        Error::Config(format!(
            "{} is not a swarm key ({e}); it must hold /key/swarm/psk/1.0.0/, /base16/ and 64 hex digits — make one with `testmesh keygen`",
            path.display()
        ))
    })
}

/// A swarm key file's text. Only ASCII is handed to libp2p: its parser slices the hex line by
/// bytes and panicked on a multi-byte character (found by the `swarm_key` fuzz target).
pub fn parse_swarm_key(text: &str) -> Result<PreSharedKey, String> {
    if !text.is_ascii() {
        return Err("it holds characters other than ASCII".into());
    }
    text.parse::<PreSharedKey>().map_err(|e| e.to_string())
}

/// Writes a new swarm key to `path` (mode 0600), refusing to overwrite one.
pub fn write_new_swarm_key(path: &Path) -> Result<(), Error> {
    if path.exists() {
        return Err(Error::Config(format!(
            "{} exists; refusing to overwrite a swarm key",
            path.display()
        )));
    }
    write_private(path, generate_swarm_key().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_with_a_multibyte_character_is_refused_not_a_panic() {
        // 64 bytes of "hex" with a two-byte character inside: libp2p's parser panicked on it.
        let text = "/key/swarm/psk/1.0.0/\n/base16/\n564c0e6ed2630771df8fbc928d118da1315a85fcc0f\u{255}b5c;fb5c;f82aed56e3\n";
        let e = parse_swarm_key(text).unwrap_err();
        assert!(e.contains("ASCII"), "{e}");
        assert!(parse_swarm_key(&generate_swarm_key()).is_ok());
    }

    #[test]
    fn swarm_keys_round_trip_and_bad_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("swarm.key");
        write_new_swarm_key(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"),
            "{text}"
        );
        read_swarm_key(&p).unwrap();
        assert!(write_new_swarm_key(&p).is_err());
        std::fs::write(dir.path().join("bad"), "hello").unwrap();
        let e = read_swarm_key(&dir.path().join("bad"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("testmesh keygen"), "{e}");
    }

    #[test]
    fn identity_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node-key");
        let a = load_or_create_identity(&p).unwrap();
        let b = load_or_create_identity(&p).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        assert_eq!(
            node_id_of(&a.public().to_peer_id()),
            node_id_of(&b.public().to_peer_id())
        );
    }
}
