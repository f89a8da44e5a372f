//! Serde adapters for byte fields, so postcard writes them as one length-prefixed run.
//!
//! Serde encodes `Vec<u8>` as a sequence of `u8`s and has no impls for arrays longer than 32, so
//! without these adapters chunk data would be decoded one byte at a time and a 64-byte signature
//! could not be a field at all. A dozen lines here beat a helper crate (`serde_bytes`).

use std::fmt;

use serde::de::{Error, Visitor};
use serde::{Deserializer, Serializer};

/// `Vec<u8>` as serde bytes.
pub mod bytes {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

/// `[u8; N]` as serde bytes of exactly N.
pub mod array {
    use super::*;

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> Visitor<'_> for V<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; N], E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V::<N>)
    }
}

/// A share ID as 16 bytes.
pub mod share_id {
    use super::*;
    use shoal_core::secret::ShareId;

    pub fn serialize<S: Serializer>(v: &ShareId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&v.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ShareId, D::Error> {
        super::array::deserialize::<D, 16>(d).map(ShareId)
    }
}
