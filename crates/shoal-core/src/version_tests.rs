use super::*;
use proptest::prelude::*;
use serde::de::IntoDeserializer;
use serde::de::value::{Error as ValueError, SeqDeserializer};
use serde::{Deserialize, Serialize};

const A: DeviceId = DeviceId(1);
const B: DeviceId = DeviceId(2);
const C: DeviceId = DeviceId(3);

fn vv(pairs: &[(DeviceId, u64)]) -> VersionVector {
    let mut v = VersionVector::new();
    for &(d, c) in pairs {
        v.merge(&VersionVector::try_from(vec![(d, c)]).expect("one nonzero counter"));
    }
    v
}

/// Any vector: a few devices from a small set (so vectors overlap), counters kept far from
/// `u64::MAX` so bumping always increases them.
fn any_vector() -> impl Strategy<Value = VersionVector> {
    proptest::collection::btree_map(0u64..6, 1u64..1_000, 0..6).prop_map(|m| {
        VersionVector::try_from(
            m.into_iter()
                .map(|(d, c)| (DeviceId(d), c))
                .collect::<Vec<_>>(),
        )
        .expect("a BTreeMap is sorted and has no duplicates")
    })
}

#[test]
fn device_id_is_the_first_eight_bytes_big_endian() {
    let mut node = [0xffu8; 32];
    node[..8].copy_from_slice(&[0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
    let d = DeviceId::from_node_id(&node);
    assert_eq!(d, DeviceId(0x0123_4567_89ab_cdef));
    assert_eq!(d.to_string(), "0123456789abcdef");
    assert_eq!(DeviceId(0xab).to_string(), "00000000000000ab");
}

#[test]
fn get_and_bump() {
    let mut v = VersionVector::new();
    assert!(v.is_empty());
    assert_eq!(v.get(A), 0);
    assert_eq!(v.last_modifier(), None);

    v.bump(B, 0);
    assert_eq!(v.get(B), 1, "a first change with no hint is 1, never 0");
    v.bump(B, 0);
    assert_eq!(v.get(B), 2);
    v.bump(B, 1_700_000_000);
    assert_eq!(v.get(B), 1_700_000_000, "the hint wins when ahead");
    v.bump(B, 1_700_000_000);
    assert_eq!(v.get(B), 1_700_000_001, "and +1 when the hint stands still");
    v.bump(A, 5);
    v.bump(C, 7);
    assert_eq!(
        v.iter().collect::<Vec<_>>(),
        [(A, 5), (B, 1_700_000_001), (C, 7)]
    );
    assert_eq!(v.last_modifier(), Some(B));
    assert_eq!(
        v.to_string(),
        "{0000000000000001:5, 0000000000000002:1700000001, 0000000000000003:7}"
    );
}

#[test]
fn bump_at_the_limit_does_not_overflow() {
    let mut v = vv(&[(A, u64::MAX)]);
    v.bump(A, 0);
    assert_eq!(v.get(A), u64::MAX);
}

#[test]
fn compare_cases() {
    let empty = VersionVector::new();
    assert_eq!(empty.compare(&empty), Ordering::Equal);
    let a1 = vv(&[(A, 1)]);
    assert_eq!(a1.compare(&empty), Ordering::Greater);
    assert_eq!(empty.compare(&a1), Ordering::Less);
    let a1b1 = vv(&[(A, 1), (B, 1)]);
    assert_eq!(a1b1.compare(&a1), Ordering::Greater);
    let a2 = vv(&[(A, 2)]);
    assert_eq!(a2.compare(&a1b1), Ordering::Concurrent);
    assert!(a2.concurrent_with(&a1b1) && a1b1.concurrent_with(&a2));
    let b1 = vv(&[(B, 1)]);
    assert_eq!(a1.compare(&b1), Ordering::Concurrent);
    let a2c1 = vv(&[(A, 2), (C, 1)]);
    assert_eq!(a2c1.compare(&a2), Ordering::Greater);
    assert_eq!(a2c1.compare(&a1b1), Ordering::Concurrent);
    assert!(a2c1.dominates(&a2) && a2.dominates(&a2) && !a2.dominates(&a2c1));
}

#[test]
fn last_modifier_breaks_ties_by_the_higher_id() {
    assert_eq!(vv(&[(A, 9), (C, 9), (B, 3)]).last_modifier(), Some(C));
    assert_eq!(vv(&[(A, 10), (C, 9)]).last_modifier(), Some(A));
}

#[test]
fn try_from_checks_the_invariant() {
    assert_eq!(VersionVector::try_from(vec![]), Ok(VersionVector::new()));
    assert_eq!(
        VersionVector::try_from(vec![(A, 1), (C, 4)]).map(|v| v.get(C)),
        Ok(4)
    );
    assert_eq!(
        VersionVector::try_from(vec![(B, 1), (A, 1)]),
        Err(VersionVectorError::Unsorted(A, B))
    );
    assert_eq!(
        VersionVector::try_from(vec![(A, 1), (A, 2)]),
        Err(VersionVectorError::Duplicate(A))
    );
    assert_eq!(
        VersionVector::try_from(vec![(A, 1), (B, 0)]),
        Err(VersionVectorError::ZeroCounter(B))
    );
}

fn deserialize(pairs: Vec<Vec<u64>>) -> Result<VersionVector, ValueError> {
    let de: SeqDeserializer<_, ValueError> = pairs.into_deserializer();
    VersionVector::deserialize(de)
}

#[test]
fn deserialization_goes_through_the_check() {
    let v = deserialize(vec![vec![1, 5], vec![3, 2]]).expect("valid");
    assert_eq!(v, vv(&[(A, 5), (C, 2)]));
    for bad in [
        vec![vec![3, 1], vec![1, 1]],
        vec![vec![1, 1], vec![1, 1]],
        vec![vec![1, 0]],
    ] {
        let e = deserialize(bad.clone()).expect_err("invalid");
        assert!(e.to_string().contains("version vector"), "{bad:?}: {e}");
    }
}

/// Records the calls a serializer receives: what a format like postcard encodes. Only the calls a
/// version vector should make are accepted.
#[derive(Default)]
struct Shape(Vec<String>);

/// What `v` serializes as, checked to be exactly what a plain `Vec<(u64, u64)>` serializes as, which
/// is what deserialization reads.
fn serialized_shape(v: &VersionVector) -> Vec<String> {
    let plain: Vec<(u64, u64)> = v.iter().map(|(d, c)| (d.0, c)).collect();
    let shape = record(v);
    assert_eq!(shape, record(&plain));
    shape
}

fn record<T: Serialize + ?Sized>(value: &T) -> Vec<String> {
    let mut shape = Shape::default();
    value.serialize(&mut shape).expect("recording never fails");
    shape.0
}

mod recorder {
    use super::Shape;
    use serde::ser::{self, Impossible, Serialize, SerializeSeq, SerializeTuple};

    #[derive(Debug)]
    pub struct Unsupported(String);
    impl std::fmt::Display for Unsupported {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Unsupported {}
    impl ser::Error for Unsupported {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Unsupported(msg.to_string())
        }
    }

    fn no<T>(what: &str) -> Result<T, Unsupported> {
        Err(Unsupported(format!("unexpected {what}")))
    }

    impl ser::Serializer for &mut Shape {
        type Ok = ();
        type Error = Unsupported;
        type SerializeSeq = Self;
        type SerializeTuple = Self;
        type SerializeTupleStruct = Impossible<(), Unsupported>;
        type SerializeTupleVariant = Impossible<(), Unsupported>;
        type SerializeMap = Impossible<(), Unsupported>;
        type SerializeStruct = Impossible<(), Unsupported>;
        type SerializeStructVariant = Impossible<(), Unsupported>;

        fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
            self.0.push(format!("u64 {v}"));
            Ok(())
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            name: &'static str,
            _value: &T,
        ) -> Result<(), Unsupported> {
            no(&format!("newtype struct {name}"))
        }
        fn serialize_seq(self, len: Option<usize>) -> Result<Self, Unsupported> {
            self.0.push(format!("seq {len:?}"));
            Ok(self)
        }
        fn serialize_tuple(self, len: usize) -> Result<Self, Unsupported> {
            self.0.push(format!("tuple {len}"));
            Ok(self)
        }
        fn serialize_bool(self, _: bool) -> Result<(), Unsupported> {
            no("bool")
        }
        fn serialize_i8(self, _: i8) -> Result<(), Unsupported> {
            no("i8")
        }
        fn serialize_i16(self, _: i16) -> Result<(), Unsupported> {
            no("i16")
        }
        fn serialize_i32(self, _: i32) -> Result<(), Unsupported> {
            no("i32")
        }
        fn serialize_i64(self, _: i64) -> Result<(), Unsupported> {
            no("i64")
        }
        fn serialize_u8(self, _: u8) -> Result<(), Unsupported> {
            no("u8")
        }
        fn serialize_u16(self, _: u16) -> Result<(), Unsupported> {
            no("u16")
        }
        fn serialize_u32(self, _: u32) -> Result<(), Unsupported> {
            no("u32")
        }
        fn serialize_f32(self, _: f32) -> Result<(), Unsupported> {
            no("f32")
        }
        fn serialize_f64(self, _: f64) -> Result<(), Unsupported> {
            no("f64")
        }
        fn serialize_char(self, _: char) -> Result<(), Unsupported> {
            no("char")
        }
        fn serialize_str(self, _: &str) -> Result<(), Unsupported> {
            no("str")
        }
        fn serialize_bytes(self, _: &[u8]) -> Result<(), Unsupported> {
            no("bytes")
        }
        fn serialize_none(self) -> Result<(), Unsupported> {
            no("none")
        }
        fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Unsupported> {
            no("some")
        }
        fn serialize_unit(self) -> Result<(), Unsupported> {
            no("unit")
        }
        fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
            no("unit struct")
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<(), Unsupported> {
            no("unit variant")
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<(), Unsupported> {
            no("newtype variant")
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, Unsupported> {
            no("tuple struct")
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Unsupported> {
            no("tuple variant")
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
            no("map")
        }
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, Unsupported> {
            no("struct")
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Unsupported> {
            no("struct variant")
        }
    }

    impl SerializeSeq for &mut Shape {
        type Ok = ();
        type Error = Unsupported;
        fn serialize_element<T: Serialize + ?Sized>(
            &mut self,
            value: &T,
        ) -> Result<(), Unsupported> {
            value.serialize(&mut **self)
        }
        fn end(self) -> Result<(), Unsupported> {
            self.0.push("end seq".into());
            Ok(())
        }
    }

    impl SerializeTuple for &mut Shape {
        type Ok = ();
        type Error = Unsupported;
        fn serialize_element<T: Serialize + ?Sized>(
            &mut self,
            value: &T,
        ) -> Result<(), Unsupported> {
            value.serialize(&mut **self)
        }
        fn end(self) -> Result<(), Unsupported> {
            self.0.push("end tuple".into());
            Ok(())
        }
    }
}

#[test]
fn serializes_as_a_plain_sequence_of_pairs() {
    let shape = serialized_shape(&vv(&[(A, 5), (C, 2)]));
    assert_eq!(
        shape,
        [
            "seq Some(2)",
            "tuple 2",
            "u64 1",
            "u64 5",
            "end tuple",
            "tuple 2",
            "u64 3",
            "u64 2",
            "end tuple",
            "end seq"
        ]
    );
}

proptest! {
    #[test]
    fn equal_iff_values_are_equal(a in any_vector(), b in any_vector()) {
        prop_assert_eq!(a.compare(&b) == Ordering::Equal, a == b);
        prop_assert_eq!(a.compare(&a), Ordering::Equal);
    }

    #[test]
    fn compare_is_antisymmetric(a in any_vector(), b in any_vector()) {
        let expected = match a.compare(&b) {
            Ordering::Greater => Ordering::Less,
            Ordering::Less => Ordering::Greater,
            same => same,
        };
        prop_assert_eq!(b.compare(&a), expected);
    }

    #[test]
    fn compare_agrees_with_counters(a in any_vector(), b in any_vector()) {
        let devices: Vec<DeviceId> = (0..6).map(DeviceId).collect();
        let ge = devices.iter().all(|&d| a.get(d) >= b.get(d));
        let le = devices.iter().all(|&d| a.get(d) <= b.get(d));
        let expected = match (ge, le) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => Ordering::Concurrent,
        };
        prop_assert_eq!(a.compare(&b), expected);
        prop_assert_eq!(a.dominates(&b), ge);
        prop_assert_eq!(a.concurrent_with(&b), !ge && !le);
    }

    #[test]
    fn merge_is_commutative_associative_and_idempotent(
        a in any_vector(),
        b in any_vector(),
        c in any_vector(),
    ) {
        prop_assert_eq!(a.merged(&b), b.merged(&a));
        prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
        prop_assert_eq!(a.merged(&a), a.clone());
        let mut in_place = a.clone();
        in_place.merge(&b);
        prop_assert_eq!(in_place, a.merged(&b));
    }

    #[test]
    fn merged_dominates_both_and_keeps_the_invariant(a in any_vector(), b in any_vector()) {
        let m = a.merged(&b);
        prop_assert!(m.dominates(&a) && m.dominates(&b));
        let pairs: Vec<_> = m.iter().collect();
        prop_assert_eq!(VersionVector::try_from(pairs), Ok(m));
    }

    #[test]
    fn bump_makes_it_strictly_greater(v in any_vector(), d in 0u64..8, hint in 0u64..2_000) {
        let mut bumped = v.clone();
        bumped.bump(DeviceId(d), hint);
        prop_assert_eq!(bumped.compare(&v), Ordering::Greater);
        prop_assert!(bumped.get(DeviceId(d)) >= hint);
        prop_assert_eq!(bumped.last_modifier().map(|m| bumped.get(m)), bumped.iter().map(|(_, c)| c).max());
        let pairs: Vec<_> = bumped.iter().collect();
        prop_assert_eq!(VersionVector::try_from(pairs), Ok(bumped));
    }

    #[test]
    fn a_bump_on_each_side_conflicts(v in any_vector(), hint in 0u64..2_000) {
        let (mut left, mut right) = (v.clone(), v);
        left.bump(DeviceId(10), hint);
        right.bump(DeviceId(11), hint);
        prop_assert!(left.concurrent_with(&right));
        prop_assert!(left.merged(&right).dominates(&left));
    }

    #[test]
    fn serialized_pairs_deserialize_to_the_same_vector(v in any_vector()) {
        let pairs: Vec<Vec<u64>> = v.iter().map(|(d, c)| vec![d.0, c]).collect();
        prop_assert_eq!(deserialize(pairs).ok(), Some(v));
    }

    #[test]
    fn try_from_accepts_exactly_the_valid_lists(
        pairs in proptest::collection::vec((0u64..5, 0u64..3), 0..6),
    ) {
        let pairs: Vec<(DeviceId, u64)> = pairs.into_iter().map(|(d, c)| (DeviceId(d), c)).collect();
        let valid = pairs.windows(2).all(|w| w[0].0 < w[1].0) && pairs.iter().all(|&(_, c)| c > 0);
        prop_assert_eq!(VersionVector::try_from(pairs).is_ok(), valid);
    }
}
