//! What certagent keeps in etcd: the keys under the prefix and their JSON values, each read
//! through a size cap so a hostile or broken etcd cannot make a host allocate without bound.
//! Values are full state, never deltas.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// Largest published record accepted: a chain is ~5 KB, a sealed key ~3 KB.
pub const MAX_PUBLISHED: usize = 256 * 1024;
/// Largest pending record accepted.
pub const MAX_PENDING: usize = 64 * 1024;
/// Largest host report or lock record accepted.
pub const MAX_SMALL: usize = 16 * 1024;

/// The generation every host of the fleet should serve for one certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub name: String,
    pub generation: u64,
    /// The leaf's serial number, lower-case hex.
    pub serial: String,
    pub fullchain_pem: String,
    /// The private key PEM sealed with the fleet key ([`super::seal`]), base64.
    #[serde(with = "b64")]
    pub sealed_key: Vec<u8>,
    /// The node that published it.
    pub node: String,
    /// The publisher's fencing token (its lock key's create revision).
    pub fencing_token: i64,
    /// Why it was issued (`expiring`, `key-compromise`, ...).
    pub reason: String,
    /// Unix seconds.
    pub published_at: i64,
    /// The key this generation replaced because it was compromised (SPKI SHA-256, hex):
    /// every host remembers it and never serves it again.
    #[serde(default)]
    pub compromised_spki: Option<String>,
}

/// Work a holder started and a successor must resume rather than start again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub name: String,
    /// The generation the pending key is for (its sealing is bound to it).
    pub generation: u64,
    /// The ACME order, once the CA answered; `None` between writing the key and the order.
    pub order_url: Option<String>,
    #[serde(with = "b64")]
    pub sealed_key: Vec<u8>,
    pub node: String,
    pub fencing_token: i64,
    pub reason: String,
    /// Unix seconds.
    pub started_at: i64,
}

/// What one host serves for one certificate, as it last proved it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostReport {
    pub node: String,
    pub name: String,
    pub generation: Option<u64>,
    pub serial: Option<String>,
    /// Unix seconds of the last successful TLS proof.
    pub verified_at: Option<i64>,
    pub error: Option<String>,
}

/// The value of a lock key: who holds it, since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRecord {
    pub node: String,
    /// Unix seconds.
    pub acquired_at: i64,
}

/// Keys under one prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn lock(&self, name: &str) -> String {
        format!("{}/locks/{name}", self.prefix)
    }
    pub fn published(&self, name: &str) -> String {
        format!("{}/certs/{name}/published", self.prefix)
    }
    pub fn pending(&self, name: &str) -> String {
        format!("{}/certs/{name}/pending", self.prefix)
    }
    pub fn report(&self, node: &str, name: &str) -> String {
        format!("{}/hosts/{node}/{name}", self.prefix)
    }
    /// Where every host's reports live (a prefix).
    pub fn hosts(&self) -> String {
        format!("{}/hosts/", self.prefix)
    }
}

/// A certificate or node name is one key segment: no `/`, nothing empty or odd, so that one
/// name's keys can never be another's.
pub fn check_segment(what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value != "."
        && value != "..";
    if ok {
        Ok(())
    } else {
        Err(Error::msg(format!(
            "invalid {what} {value:?} for etcd: letters, digits, '-', '_' and '.' only"
        )))
    }
}

/// Encodes a value as JSON.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::msg(format!("failed to encode a record: {e}")))
}

/// Decodes the value of `key`, refusing more than `cap` bytes before parsing.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8], cap: usize) -> Result<T> {
    if bytes.len() > cap {
        return Err(Error::msg(format!(
            "failed to read {key:?} from etcd: {} bytes, more than the {cap} allowed",
            bytes.len()
        )));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Error::msg(format!("failed to read {key:?} from etcd: {e}")))
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <&str>::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> Published {
        Published {
            name: "www".into(),
            generation: 4,
            serial: "0a1b".into(),
            fullchain_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            sealed_key: vec![0, 1, 2, 255],
            node: "web-1".into(),
            fencing_token: 17,
            reason: "expiring".into(),
            published_at: 1_800_000_000,
            compromised_spki: None,
        }
    }

    #[test]
    fn a_record_round_trips_as_json_with_its_sealed_key_in_base64() {
        let bytes = encode(&published()).unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("\"sealed_key\":\"AAEC/w==\""));
        let back: Published = decode("k", &bytes, MAX_PUBLISHED).unwrap();
        assert_eq!(back, published());
    }

    #[test]
    fn an_oversized_or_malformed_value_is_refused_before_use() {
        let big = vec![b' '; MAX_SMALL + 1];
        let err = decode::<HostReport>("/p/hosts/a/b", &big, MAX_SMALL).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to read \"/p/hosts/a/b\" from etcd: 16385 bytes, more than the 16384 allowed"
        );
        assert!(decode::<LockRecord>("k", b"{\"node\":1}", MAX_SMALL).is_err());
    }

    #[test]
    fn keys_live_under_the_prefix_and_names_are_single_segments() {
        let k = Keys::new("/certagent/");
        assert_eq!(k.lock("www"), "/certagent/locks/www");
        assert_eq!(k.published("www"), "/certagent/certs/www/published");
        assert_eq!(k.pending("www"), "/certagent/certs/www/pending");
        assert_eq!(k.report("web-1", "www"), "/certagent/hosts/web-1/www");
        check_segment("node", "web-1.example").unwrap();
        for bad in ["", "a/b", "..", "a b", "ü"] {
            assert!(check_segment("node", bad).is_err(), "{bad:?}");
        }
    }
}
