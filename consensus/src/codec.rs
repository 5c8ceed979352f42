//! The one place that knows the binary encoding of what persists (log entries, snapshots) and
//! of what crosses the wire (mesh RPC frames, gossiped statistics). bincode is pinned to 2.0.1
//! (3.x does not compile); keeping it behind these functions makes it replaceable.
//!
//! Encoding and decoding share one limit: what this node writes, this node (and every other)
//! can read back. A value over it is refused when it is encoded, before anything is written.

use serde::{Serialize, de::DeserializeOwned};
use thiserror::Error;

/// Largest value encoded or decoded (a snapshot of a ledger under retention is far below it).
pub const LIMIT: usize = 1 << 30;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(String),
    #[error("cannot decode: {0}")]
    Decode(String),
    #[error("cannot decode: {0} trailing bytes")]
    Trailing(usize),
    #[error("{what} is larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: usize },
}

/// A buffer that refuses to grow past its limit, so an oversized value fails early instead of
/// being built whole first.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.over = true;
            return Err(std::io::Error::other("over the limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_within(value, LIMIT)
}

/// Encodes `value`, refusing it if it takes more than `limit` bytes (at most [`LIMIT`]).
pub fn encode_within<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, CodecError> {
    let limit = limit.min(LIMIT);
    let mut out = Bounded {
        buf: Vec::new(),
        limit,
        over: false,
    };
    match bincode::serde::encode_into_std_write(value, &mut out, config()) {
        Ok(_) => Ok(out.buf),
        Err(_) if out.over => Err(CodecError::TooLarge {
            what: "the encoded value".into(),
            limit,
        }),
        Err(e) => Err(CodecError::Encode(e.to_string())),
    }
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_within(bytes, LIMIT)
}

/// Decodes `bytes`, refusing more than `limit` of them (at most [`LIMIT`]).
pub fn decode_within<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    let limit = limit.min(LIMIT);
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            what: format!("a value of {} bytes", bytes.len()),
            limit,
        });
    }
    let (v, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Applied, Command};

    #[test]
    fn deeply_nested_batches_are_refused_not_a_stack_overflow() {
        // Command::Batch (variant 12) of one item, 100,000 deep: 200 kB from a peer.
        let mut bytes = [12u8, 1].repeat(100_000);
        bytes.extend([12, 0]);
        let e = decode::<Command>(&bytes).unwrap_err();
        assert!(e.to_string().contains("nested"), "{e}");
        // The answers' batches too (Applied::Batch).
        let applied = encode(&Applied::Batch(vec![])).unwrap();
        let tag = applied[0];
        let mut bytes = [tag, 1, 0].repeat(100_000); // Batch([Ok(Batch([Ok(...
        bytes.extend([tag, 0]);
        assert!(decode::<Applied>(&bytes).is_err());
        // Shallow ones still decode, and the depth is counted afresh each time.
        let two = Command::Batch(vec![Command::Batch(vec![])]);
        for _ in 0..3 {
            assert_eq!(decode::<Command>(&encode(&two).unwrap()).unwrap(), two);
        }
    }

    #[test]
    fn one_limit_both_ways() {
        let v = vec![7u8; 1000];
        let bytes = encode_within(&v, 2000).unwrap();
        assert_eq!(decode_within::<Vec<u8>>(&bytes, 2000).unwrap(), v);
        // Over the limit: refused when encoding, and refused when decoding.
        let e = encode_within(&v, 500).unwrap_err();
        assert!(matches!(e, CodecError::TooLarge { limit: 500, .. }), "{e}");
        assert!(e.to_string().contains("limit of 500 bytes"), "{e}");
        let e = decode_within::<Vec<u8>>(&bytes, 500).unwrap_err();
        assert!(matches!(e, CodecError::TooLarge { limit: 500, .. }), "{e}");
    }
}
