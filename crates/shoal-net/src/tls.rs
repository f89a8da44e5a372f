//! TLS 1.3 with mutual authentication by node ID: configs, certificates and verifiers.
//!
//! There is no certificate authority. Each node presents a self-signed certificate made from its
//! Ed25519 identity key, and a peer is identified by the public key in that certificate — its
//! [`NodeId`]. What makes this sound is the TLS 1.3 `CertificateVerify` message: the peer signs
//! the handshake transcript with the private key matching the certificate, and our verifiers check
//! that signature with the crypto provider's `verify_tls13_signature`. The certificate's own
//! self-signature, names and validity dates prove nothing (anyone can mint such a certificate) and
//! are deliberately not checked.
//!
//! Pinning: a dialer that knows whom it is calling passes the expected [`NodeId`] and the
//! handshake fails if the peer's key differs; one that does not (a seed address, DNS) passes
//! `None` and learns the ID afterwards from [`peer_node_id`]. The listener accepts any node; who
//! may join which namespace is decided later by the secret proofs (`join`).
//!
//! Only TLS 1.3 and only Ed25519 signatures are offered; rustls with aws-lc-rs provides the
//! AES-GCM suites measured in DESIGN §4.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig,
    SignatureScheme,
};

use crate::identity::{NodeId, NodeIdentity};

/// The DNS name in every certificate and the SNI every dialer sends. It carries no meaning.
pub const SERVER_NAME: &str = "shoal.invalid";

/// PKCS#8 v1 wrapping of a raw Ed25519 seed (RFC 8410): this prefix, then the 32 seed bytes.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// DER SubjectPublicKeyInfo of an Ed25519 key (RFC 8410): this prefix, then the 32 key bytes.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot build the node certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Everything a node needs to dial and accept: its certificate and key, and the provider.
#[derive(Debug, Clone)]
pub struct TlsSetup {
    node_id: NodeId,
    provider: Arc<CryptoProvider>,
    cert: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
    server: Arc<ServerConfig>,
}

impl TlsSetup {
    pub fn new(identity: &NodeIdentity) -> Result<Self, TlsError> {
        // AES-128-GCM first: the bulk of a transfer is encrypted and decrypted with it, and
        // it takes 10 AES rounds per block where AES-256 takes 14 (both are TLS 1.3 suites with
        // 128-bit or better security; ChaCha20 stays out: slower with AES instructions).
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = vec![
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ];
        let provider = Arc::new(provider);
        let mut key_pkcs8 = PKCS8_ED25519_PREFIX.to_vec();
        key_pkcs8.extend_from_slice(&identity.seed());
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_pkcs8.as_slice()),
            &rcgen::PKCS_ED25519,
        )?;
        let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?
            .self_signed(&key_pair)?
            .der()
            .clone();
        let verifier = Arc::new(PeerVerifier::new(&provider, None));
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert.clone()], private_key(&key_pkcs8))?;
        Ok(Self {
            node_id: identity.node_id(),
            provider,
            cert,
            key_pkcs8,
            server: Arc::new(server),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The listener's configuration: accepts any node, which must present a certificate.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// A dialer's configuration, pinned to `expected` when given.
    pub fn client_config(&self, expected: Option<NodeId>) -> Result<Arc<ClientConfig>, TlsError> {
        let verifier = Arc::new(PeerVerifier::new(&self.provider, expected));
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.cert.clone()], private_key(&self.key_pkcs8))?;
        Ok(Arc::new(config))
    }
}

fn private_key(pkcs8: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()))
}

/// The node ID in a peer's certificate: its Ed25519 public key.
pub fn peer_node_id(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let spki = parsed.subject_public_key_info();
    let key = spki
        .as_ref()
        .strip_prefix(SPKI_ED25519_PREFIX.as_slice())
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or_else(|| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(NotEd25519),
            )))
        })?;
    Ok(NodeId(key))
}

#[derive(Debug, thiserror::Error)]
#[error("the peer's certificate key is not Ed25519")]
struct NotEd25519;

#[derive(Debug, thiserror::Error)]
#[error("the peer is node {found}, expected {expected}")]
struct WrongNode {
    expected: NodeId,
    found: NodeId,
}

/// Accepts a certificate whose key is Ed25519 (and, when pinned, the expected node's), and checks
/// handshake signatures against that key.
#[derive(Debug)]
struct PeerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
    expected: Option<NodeId>,
}

impl PeerVerifier {
    fn new(provider: &CryptoProvider, expected: Option<NodeId>) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
            expected,
        }
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let found = peer_node_id(end_entity)?;
        match self.expected {
            Some(expected) if expected != found => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(WrongNode { expected, found })),
                )))
            }
            _ => Ok(()),
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

/// TLS 1.2 is never negotiated (the configs offer 1.3 only); refuse if rustls ever asks.
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("TLS 1.2 is not supported".into()))
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
