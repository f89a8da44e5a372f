//! Two nodes in one process on loopback: handshake, pinning, joins, hostile input, priorities.
#![allow(clippy::unwrap_used, reason = "in tests a panic is the failure report")]

use std::net::SocketAddr;

use rustls::pki_types::ServerName;
use shoal_core::secret::{ReadWriteSecret, Secret};
use shoal_net::frame::{self, FrameError};
use shoal_net::join::REFUSED;
use shoal_net::message::MAX_CHUNK;
use shoal_net::{
    Closed, Connection, Event, Hello, MIN_PROTOCOL_VERSION, Message, NodeIdentity,
    PROTOCOL_VERSION, RecordError, Session, SessionError, SignedRecord, TlsSetup,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct Node {
    setup: TlsSetup,
    hello: Hello,
}

fn node(name: &str) -> Node {
    let identity = NodeIdentity::generate().unwrap();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        node_id: identity.node_id(),
        device_name: name.into(),
        listen_port: 0,
    };
    Node {
        setup: TlsSetup::new(&identity).unwrap(),
        hello,
    }
}

/// `server` listens on an ephemeral port and accepts one session.
async fn listen(server: Node) -> (SocketAddr, JoinHandle<Result<Session, SessionError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        shoal_net::accept(&server.setup, tcp, &server.hello).await
    });
    (addr, task)
}

async fn pair() -> (Session, Session) {
    let (a, b) = (node("alpha"), node("beta"));
    let b_id = b.hello.node_id;
    let (addr, accepted) = listen(b).await;
    let dialer = shoal_net::connect(&a.setup, addr, Some(b_id), &a.hello)
        .await
        .unwrap();
    (dialer, accepted.await.unwrap().unwrap())
}

async fn next_message(session: &mut Session) -> Message {
    match session.events.recv().await {
        Some(Event::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn two_nodes_handshake_and_exchange_hello() {
    let (a, b) = pair().await;
    assert_ne!(a.peer, b.peer);
    assert_eq!(a.hello.device_name, "beta");
    assert_eq!(b.hello.device_name, "alpha");
    assert_eq!(a.peer, a.hello.node_id);
    assert_eq!(b.peer, b.hello.node_id);
    assert!(a.outgoing && !b.outgoing);
    // Exactly one of the two sides keeps a connection it dialed.
    assert_ne!(
        shoal_net::keep_new_connection(b.peer, a.peer, true),
        shoal_net::keep_new_connection(a.peer, b.peer, true)
    );
}

#[tokio::test]
async fn a_peer_speaking_the_previous_version_is_accepted_and_others_are_refused() {
    for (version, accepted) in [
        (MIN_PROTOCOL_VERSION - 1, false),
        (MIN_PROTOCOL_VERSION, true),
        (PROTOCOL_VERSION, true),
        (PROTOCOL_VERSION + 1, false),
    ] {
        let (mut a, b) = (node("alpha"), node("beta"));
        a.hello.version = version;
        let (addr, accepting) = listen(b).await;
        let dialed = shoal_net::connect(&a.setup, addr, None, &a.hello).await;
        let accepted_there = accepting.await.unwrap();
        assert_eq!(accepted_there.is_ok(), accepted, "version {version}");
        match accepted_there {
            Ok(session) => assert_eq!(session.hello.version, version),
            Err(e) => assert!(e.to_string().contains("protocol version"), "{e}"),
        }
        if accepted {
            assert!(dialed.is_ok());
        }
    }
}

#[tokio::test]
async fn pinning_to_the_wrong_node_fails_the_handshake() {
    let (a, b) = (node("alpha"), node("beta"));
    let (addr, accepted) = listen(b).await;
    let stranger = NodeIdentity::generate().unwrap().node_id();
    let err = shoal_net::connect(&a.setup, addr, Some(stranger), &a.hello)
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Tls(_)), "{err}");
    assert!(accepted.await.unwrap().is_err());
}

#[tokio::test]
async fn unpinned_dial_learns_the_peer_id() {
    let (a, b) = (node("alpha"), node("beta"));
    let b_id = b.hello.node_id;
    let (addr, accepted) = listen(b).await;
    let session = shoal_net::connect(&a.setup, addr, None, &a.hello)
        .await
        .unwrap();
    assert_eq!(session.peer, b_id);
    accepted.await.unwrap().unwrap();
}

#[tokio::test]
async fn right_secret_joins_wrong_secret_is_refused_like_an_unknown_share() {
    let (mut a, mut b) = pair().await;
    let secret = ReadWriteSecret::generate().unwrap().read_only();
    let other = ReadWriteSecret::generate().unwrap().read_only();

    // Right secret: B accepts and proves itself in turn.
    a.conn.send(&a.join.request(&secret)).await.unwrap();
    let Message::Join { share_id, proof } = next_message(&mut b).await else {
        panic!()
    };
    let answer = b.join.respond(share_id, &proof, Some(&secret));
    b.conn.send(&answer).await.unwrap();
    let Message::JoinOk { proof: theirs, .. } = next_message(&mut a).await else {
        panic!()
    };
    assert!(a.join.accepted(&secret, &theirs));
    // A reflected proof is not B's proof.
    let Message::Join { proof: mine, .. } = a.join.request(&secret) else {
        panic!()
    };
    assert!(!a.join.accepted(&secret, &mine));

    // A share B does not hold.
    let Message::Join { share_id, proof } = a.join.request(&other) else {
        panic!()
    };
    let unknown = b.join.respond(share_id, &proof, None);
    // A share B holds, with a proof made from a different secret.
    let wrong = b.join.respond(secret.share_id(), &proof, Some(&secret));
    let Message::JoinRefused { reason: r1, .. } = &unknown else {
        panic!("{unknown:?}")
    };
    let Message::JoinRefused { reason: r2, .. } = &wrong else {
        panic!("{wrong:?}")
    };
    assert_eq!((r1.as_str(), r2.as_str()), (REFUSED, REFUSED));

    // A proof from another session does not carry over.
    let (c, d) = pair().await;
    let Message::Join { share_id, proof } = c.join.request(&secret) else {
        panic!()
    };
    assert!(matches!(
        b.join.respond(share_id, &proof, Some(&secret)),
        Message::JoinRefused { .. }
    ));
    assert!(matches!(
        d.join.respond(share_id, &proof, Some(&secret)),
        Message::JoinOk { .. }
    ));
}

#[tokio::test]
async fn oversized_frame_closes_the_connection_with_a_reason() {
    let (a, b) = (node("alpha"), node("beta"));
    let (addr, accepted) = listen(b).await;
    // A hostile client that speaks TLS and Hello correctly, then sends a 4 GiB length.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let config = a.setup.client_config(None).unwrap();
    let name = ServerName::try_from("shoal.invalid").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(&frame::encode(&Message::Hello(a.hello.clone())).unwrap())
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let mut session = accepted.await.unwrap().unwrap();
    tls.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    tls.flush().await.unwrap();

    let event = session.events.recv().await.unwrap();
    let Event::Closed(Closed::Error(reason)) = event else {
        panic!("{event:?}")
    };
    assert!(reason.contains("exceeds the limit"), "{reason}");

    // The hostile side is told why: its Hello, then Close with the reason.
    let mut buf = Vec::new();
    let mut received = Vec::new();
    tls.read_to_end(&mut buf).await.ok();
    let mut rest = &buf[..];
    while let Some((m, used)) = frame::decode_frame(rest).unwrap() {
        received.push(m);
        rest = &rest[used..];
    }
    assert!(
        matches!(received.last(), Some(Message::Close { reason }) if reason.contains("exceeds"))
    );
}

#[tokio::test]
async fn garbage_closes_the_connection_without_a_panic() {
    for garbage in [
        &[0, 0, 0, 3, 0xff, 0xff, 0xff][..],
        &[0, 0, 0, 1, 200],
        &[0, 0, 9],
    ] {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let (_conn, mut events) = Connection::spawn(ours, "garbage".into());
        theirs.write_all(garbage).await.unwrap();
        theirs.shutdown().await.unwrap();
        match events.recv().await.unwrap() {
            Event::Closed(Closed::Error(reason)) => assert!(!reason.is_empty()),
            other => panic!("{garbage:?}: {other:?}"),
        }
        assert!(events.recv().await.is_none());
    }
}

#[test]
fn record_signed_by_anyone_but_the_read_write_key_fails_verification() {
    let rw = ReadWriteSecret::generate().unwrap();
    let namespace = rw.read_only().verifying_key();
    let good = SignedRecord::sign(b"file a v2".to_vec(), &rw.signing_key());
    assert_eq!(good.verify(&namespace), Ok(()));

    // A read-only holder has no signing key; whatever key it signs with is not the namespace's.
    let ro: Secret = rw.read_only().to_string().parse().unwrap();
    assert!(ro.signing_key().is_none());
    let intruder = ReadWriteSecret::generate().unwrap().signing_key();
    let forged = SignedRecord::sign(b"file a v3".to_vec(), &intruder);
    assert_eq!(forged.verify(&namespace), Err(RecordError::WrongSigner));
    // Claiming the namespace key as signer does not help, nor does editing a signed payload.
    let claimed = SignedRecord {
        signer: namespace.to_bytes(),
        ..forged
    };
    assert_eq!(claimed.verify(&namespace), Err(RecordError::BadSignature));
    let edited = SignedRecord {
        payload: b"file a v9".to_vec(),
        ..good
    };
    assert_eq!(edited.verify(&namespace), Err(RecordError::BadSignature));
}

#[tokio::test]
async fn control_messages_overtake_queued_bulk_data() {
    // A pipe smaller than one chunk, not read yet: the writer is stuck in the first bulk frame.
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let (conn, _events) = Connection::spawn(ours, "priority".into());
    let chunk = |id| Message::ChunkData {
        id,
        bytes: vec![id as u8; 256 * 1024],
    };
    let mut queued = 0;
    while !matches!(
        conn.try_send(&chunk(queued)),
        Err(shoal_net::ConnError::Full)
    ) {
        queued += 1;
    }
    assert!(queued >= 2, "bulk queue should hold several frames");
    let request = Message::ChunkUnavailable { id: 999 };
    conn.send(&request).await.unwrap();

    let mut order = Vec::new();
    let mut buf = Vec::new();
    for _ in 0..=queued {
        match frame::read_frame(&mut theirs, &mut buf)
            .await
            .unwrap()
            .unwrap()
        {
            Message::ChunkData { id, bytes } => {
                assert_eq!(bytes.len(), 256 * 1024);
                order.push(id);
            }
            other => {
                assert_eq!(other, request);
                order.push(999);
            }
        }
    }
    // At most the one frame already being written precedes the control message.
    let position = order.iter().position(|&id| id == 999);
    assert!(position.is_some_and(|p| p <= 1), "{order:?}");
    assert_eq!(order.len(), queued as usize + 1);
}

#[test]
fn a_chunk_at_the_limit_fits_and_one_byte_more_does_not() {
    let max = Message::ChunkData {
        id: 1,
        bytes: vec![0; MAX_CHUNK],
    };
    assert!(frame::encode(&max).is_ok());
    let over = Message::ChunkData {
        id: 1,
        bytes: vec![0; frame::MAX_FRAME],
    };
    assert!(matches!(
        frame::encode(&over),
        Err(FrameError::TooLarge { .. })
    ));
}
