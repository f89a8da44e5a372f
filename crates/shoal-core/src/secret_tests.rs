use super::*;
use ed25519_dalek::{Signer, Verifier};
use proptest::prelude::*;

const MAKEFILE: &str = "A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT54";

proptest! {
    #[test]
    fn base32_round_trips(bytes in proptest::array::uniform20(any::<u8>())) {
        let rw = ReadWriteSecret::from_bytes(bytes);
        let text = rw.to_string();
        prop_assert_eq!(text.len(), RW_LEN);
        prop_assert_eq!(text.parse::<ReadWriteSecret>().ok(), Some(rw.clone()));
        let ro = rw.read_only().to_string();
        prop_assert_eq!(ro.len(), RO_LEN);
        prop_assert_eq!(ro.parse::<ReadOnlySecret>().ok(), Some(rw.read_only()));
    }

    #[test]
    fn parsing_never_panics(s in "\\PC{0,80}") {
        let _ = s.parse::<Secret>();
    }
}

#[test]
fn the_btsync_docker_makefile_secret_is_valid() {
    let secret: Secret = MAKEFILE.parse().expect("valid");
    assert!(secret.is_read_write());
    assert_eq!(secret.to_string(), MAKEFILE);
}

#[test]
fn refusals_say_what_is_wrong_and_what_is_valid() {
    let err = |s: &str| s.parse::<Secret>().expect_err(s);
    let readme = err("e3hryu35qegqery4w5y164u5u");
    assert!(
        matches!(readme, SecretError::Prefix { first: 'e', .. }),
        "{readme:?}"
    );
    assert!(
        readme
            .to_string()
            .contains("'A' followed by 32 characters A–Z and 2–7")
    );
    assert!(matches!(err(""), SecretError::Empty(_)));
    assert!(matches!(
        err("A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT5"),
        SecretError::Length {
            len: 32,
            want: 33,
            ..
        }
    ));
    assert!(matches!(
        err("a22qymgfpy3evhzy2owu6hr3zlxezbt54"),
        SecretError::Prefix { first: 'a', .. }
    ));
    assert!(matches!(
        err("A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT5a"),
        SecretError::Character {
            position: 33,
            ch: 'a',
            ..
        }
    ));
    assert!(matches!(
        err("A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBT14"),
        SecretError::Character {
            position: 32,
            ch: '1',
            ..
        }
    ));
    assert!(matches!(
        err("A22QYMGFPY3EVHZY2OWU6HR3ZLXEZBTé4"),
        SecretError::Character { ch: 'é', .. }
    ));
    // 53 characters of B + 'A's decode to 32 zero bytes plus 4 leftover bits: fine; a nonzero
    // leftover is not canonical.
    let mut ro = format!("B{}", "A".repeat(51));
    ro.push('B');
    assert!(matches!(err(&ro), SecretError::NonCanonical(_)));
    assert!(matches!(
        "B".parse::<Secret>(),
        Err(SecretError::Length {
            kind: "read-only",
            ..
        })
    ));
    assert!(MAKEFILE.parse::<ReadOnlySecret>().is_err());
}

#[test]
fn read_only_holders_share_the_id_and_proof_key_and_verify_signatures() {
    let rw = ReadWriteSecret::generate().expect("random");
    let ro: ReadOnlySecret = rw.read_only().to_string().parse().expect("parses back");
    assert_eq!(ro, rw.read_only());
    assert_eq!(ro.share_id(), rw.share_id());
    assert_eq!(ro.proof_key(), rw.read_only().proof_key());
    let signature = rw.signing_key().sign(b"change record");
    assert!(
        ro.verifying_key()
            .verify(b"change record", &signature)
            .is_ok()
    );
    assert!(
        ro.verifying_key()
            .verify(b"forged record", &signature)
            .is_err()
    );
    let proof = ro.prove(b"transcript");
    assert!(rw.read_only().verify_proof(b"transcript", &proof));
    assert!(!rw.read_only().verify_proof(b"other", &proof));
    let other = ReadWriteSecret::generate().expect("random");
    assert_ne!(other.share_id(), rw.share_id());
}

#[test]
fn debug_never_shows_the_secret() {
    let secret: Secret = MAKEFILE.parse().expect("valid");
    let ro = secret.read_only().to_string();
    for shown in [format!("{secret:?}"), format!("{:?}", secret.read_only())] {
        assert!(
            !shown.contains(&MAKEFILE[1..]) && !shown.contains(&ro[1..]),
            "{shown}"
        );
        assert!(shown.contains("share"));
    }
}

#[test]
fn children_are_distinct_and_stable() {
    let rw: ReadWriteSecret = MAKEFILE.parse().expect("valid");
    assert_eq!(rw.child("a"), rw.child("a"));
    assert_ne!(rw.child("a"), rw.child("b"));
    assert_ne!(rw.child("a"), rw);
}

/// Pinned values: a change to any derivation breaks every deployed namespace, so it must be loud.
#[test]
fn test_vectors() {
    let zero = ReadWriteSecret::from_bytes([0; 20]);
    let make: ReadWriteSecret = MAKEFILE.parse().expect("valid");
    let got = [
        zero.to_string(),
        zero.read_only().to_string(),
        zero.share_id().to_string(),
        make.read_only().to_string(),
        make.share_id().to_string(),
        make.child("testing").to_string(),
    ];
    assert_eq!(got, VECTORS, "derivation changed");
}

const VECTORS: [&str; 6] = [
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "B7LZ2JRO6TDDFI7QQVW4KHMVUVOMO52O5CTG6KZ7DLGD4MQSEXNWA",
    "dae81952d9ddaad2646c7d78bbe8da6f",
    "BAGR4ZE2WU5CULRA3MICTTMB4JLUWOD6KEVGWIDWTL6WO2IDFCQPA",
    "5eec24ca14d6f9594715053c87c34778",
    "AA2KMHX2MEOQOUBZ3BOQOMGALDZ4QIM2K",
];
