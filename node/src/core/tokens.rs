//! Token strings: `tmj_<id>_<secret>` admits a node, `tmk_<id>_<secret>` is an API token. The
//! id (8 hex digits) names the ledger entry; the secret (32 hex digits, 128 random bits) is shown
//! once at creation and stored only as its SHA-256. The prefixes let secret scanners and people
//! tell them apart.

use sha2::{Digest, Sha256};

/// What a token string is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Join,
    Api,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Join => "tmj",
            Kind::Api => "tmk",
        }
    }
}

/// A token as presented: its id and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub kind: Kind,
    pub id: String,
    pub secret: String,
}

/// A newly made token: the string to hand out once, and what the ledger keeps.
pub struct Minted {
    pub token: String,
    pub id: String,
    pub hash: String,
}

pub fn mint(kind: Kind) -> Minted {
    let id = format!("{:08x}", rand::random::<u32>());
    let secret = hex::encode(rand::random::<[u8; 16]>());
    Minted {
        token: format!("{}_{id}_{secret}", kind.prefix()),
        hash: hash(&secret),
        id,
    }
}

/// Hex SHA-256 of a secret. The secrets are 128 random bits, so a fast hash is enough: there is
/// nothing to brute-force from a dictionary.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Parses a token string; `None` for anything that is not one (never panics on odd input).
pub fn parse(s: &str) -> Option<Presented> {
    let mut parts = s.trim().splitn(3, '_');
    let kind = match parts.next()? {
        "tmj" => Kind::Join,
        "tmk" => Kind::Api,
        _ => return None,
    };
    let (id, secret) = (parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(id, 8) || !hex(secret, 32) {
        return None;
    }
    Some(Presented {
        kind,
        id: id.to_ascii_lowercase(),
        secret: secret.to_ascii_lowercase(),
    })
}

/// Compares in constant time, so a secret cannot be guessed byte by byte from timings.
pub fn same(given: &str, want: &str) -> bool {
    let (a, b) = (given.as_bytes(), want.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `secret` is the one whose hash is `want`.
pub fn matches(secret: &str, want: &str) -> bool {
    same(&hash(secret), want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_match_their_hash_only() {
        let m = mint(Kind::Join);
        let p = parse(&m.token).unwrap();
        assert_eq!((p.kind, p.id.as_str()), (Kind::Join, m.id.as_str()));
        assert!(matches(&p.secret, &m.hash));
        assert!(!matches(&mint(Kind::Join).token, &m.hash));
        assert_eq!(parse(&mint(Kind::Api).token).unwrap().kind, Kind::Api);
        for bad in [
            "",
            "tmj",
            "tmj__",
            "tmx_00000000_00000000000000000000000000000000",
            "tmj_0000000g_00000000000000000000000000000000",
            "tmj_00000000_000000000000000000000000000000",
            "tmj_00000000_00000000000000000000000000000000_x",
            "tmj_é0000000_00000000000000000000000000000000",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
