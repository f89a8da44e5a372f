//! Objects must be written as JSON objects.
//!
//! serde's derived `Deserialize` for a struct also accepts a JSON array of its fields in order, and
//! fills the missing ones with their defaults: `[]` would be a valid, empty config, and
//! `"webui": ["0.0.0.0:8888"]` a valid web UI. Nobody means that, and saving would turn the array
//! into an object. [`ObjectOnly`] asks serde_json for a map and nothing else, so these are errors
//! ("expected a JSON object") at their key.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor, value::MapAccessDeserializer};

/// A `T` that was written as a JSON object.
pub(crate) struct ObjectOnly<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Only(PhantomData)).map(ObjectOnly)
    }
}

/// For `#[serde(deserialize_with)]` on a struct-typed field.
pub(crate) fn object<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    ObjectOnly::deserialize(d).map(|o| o.0)
}

/// For `#[serde(deserialize_with)]` on a list of structs.
pub(crate) fn objects<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    let list = Vec::<ObjectOnly<T>>::deserialize(d)?;
    Ok(list.into_iter().map(|o| o.0).collect())
}
