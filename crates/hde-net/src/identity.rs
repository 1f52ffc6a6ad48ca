//! Node identities and the peers a node accepts: mutual TLS 1.3 with pinned certificates.
//!
//! `hde keygen` makes a key pair and a self-signed certificate for it (rcgen, ECDSA P-256).
//! A node's public identity is that certificate, written as one line of text
//! (`hde-cert-v1 <hex of the DER>`) in `key.pub`; a peers file lists the lines of the nodes
//! it accepts. During the handshake each side checks that the certificate the other presents
//! is byte for byte one it pins, and rustls checks that the other side holds its private key
//! (the TLS 1.3 CertificateVerify signature). No certificate authority, no names, no expiry
//! games: possession of a pinned key is the whole policy. Everything cryptographic is
//! rustls's (with ring as its provider); this module only decides which certificates are
//! welcome.

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{Error, Result};

/// The prefix of a public identity line.
const PUBLIC_PREFIX: &str = "hde-cert-v1 ";
/// The name every node's certificate carries, which a client names when it connects (not
/// checked: pinning replaces names).
pub const NODE_NAME: &str = "hde-node";

/// A node's key pair and certificate.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_owned(), source }
}

/// Parses one public identity line (what follows the hex, if anything, is ignored).
pub fn parse_public(line: &str) -> Option<CertificateDer<'static>> {
    parse_peer_line(line).map(|(cert, _)| cert)
}

/// Parses a peers-file line: a public identity, then optionally the address its `hde serve`
/// listens on (`hde-cert-v1 <hex> [host:port]`).
fn parse_peer_line(line: &str) -> Option<(CertificateDer<'static>, Option<String>)> {
    let mut words = line.trim().strip_prefix(PUBLIC_PREFIX)?.split_whitespace();
    let der = unhex(words.next()?)?;
    let addr = words.next().map(str::to_owned);
    if der.is_empty() || words.next().is_some() {
        return None;
    }
    Some((CertificateDer::from(der), addr))
}

/// The node id of a certificate: the same on every node that pins it, so the replicated
/// index names a node alike everywhere (the low 64 bits of the xxh3-128 of its DER, never 0).
pub fn node_id_of(cert: &CertificateDer<'_>) -> u64 {
    (xxhash_rust::xxh3::xxh3_128(cert.as_ref()) as u64).max(1)
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

impl Identity {
    /// A new key pair with its self-signed certificate.
    pub fn generate() -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![NODE_NAME.to_owned()])
            .map_err(|e| Error::Identity { what: format!("cannot make a key pair: {e}") })?;
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        Ok(Identity { cert: certified.cert.der().clone(), key })
    }

    /// The line peers put in their peers file to accept this node.
    pub fn public_line(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", hex(&self.cert))
    }

    /// The certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// This node's id in the replicated index ([`node_id_of`] its certificate).
    pub fn node_id(&self) -> u64 {
        node_id_of(&self.cert)
    }

    /// Writes `dir/key` (the private key and certificate, mode 0600) and `dir/key.pub` (the
    /// public line). Refuses to overwrite an existing key.
    pub fn write(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let key_path = dir.join("key");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .map_err(io_at(&key_path))?;
        writeln!(f, "hde-key-v1 {}", hex(self.key.secret_pkcs8_der())).map_err(io_at(&key_path))?;
        writeln!(f, "{}", self.public_line()).map_err(io_at(&key_path))?;
        f.sync_all().map_err(io_at(&key_path))?;
        let pub_path = dir.join("key.pub");
        fs::write(&pub_path, format!("{}\n", self.public_line())).map_err(io_at(&pub_path))?;
        Ok(())
    }

    /// Reads what [`write`](Self::write) wrote.
    pub fn load(dir: &Path) -> Result<Self> {
        let key_path = dir.join("key");
        let text = fs::read_to_string(&key_path).map_err(io_at(&key_path))?;
        let bad =
            |what: &str| Error::Identity { what: format!("{}: {what} (made by `hde keygen`?)", key_path.display()) };
        let mut lines = text.lines();
        let key = lines
            .next()
            .and_then(|l| l.strip_prefix("hde-key-v1 "))
            .and_then(unhex)
            .ok_or_else(|| bad("no private key"))?;
        let cert = lines.next().and_then(parse_public).ok_or_else(|| bad("no certificate"))?;
        Ok(Identity { cert, key: PrivatePkcs8KeyDer::from(key) })
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The certificates a node accepts, from a peers file: one public line per line, optionally
/// followed by the address of that peer's `hde serve` (the nodes `hde serve` exchanges the
/// baseline index with); blank lines and lines starting with `#` are skipped.
#[derive(Debug, Clone)]
pub struct Peers {
    certs: Vec<CertificateDer<'static>>,
    addrs: Vec<(u64, String)>,
}

impl Peers {
    /// Reads a peers file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).map_err(io_at(path))?;
        let mut certs = Vec::new();
        let mut addrs = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (cert, addr) = parse_peer_line(line).ok_or_else(|| Error::Identity {
                what: format!(
                    "{}:{}: not a public key line (`hde-cert-v1 <hex> [host:port]`, the content of a key.pub and \
                     optionally the peer's serve address)",
                    path.display(),
                    n + 1
                ),
            })?;
            if let Some(addr) = addr {
                addrs.push((node_id_of(&cert), addr));
            }
            certs.push(cert);
        }
        if certs.is_empty() {
            return Err(Error::Identity {
                what: format!("{} accepts no peer: add the key.pub line of each", path.display()),
            });
        }
        Ok(Peers { certs, addrs })
    }

    /// Accepts exactly `certs` (for tests and embedders).
    pub fn from_certs(certs: Vec<CertificateDer<'static>>) -> Self {
        Peers { certs, addrs: Vec::new() }
    }

    /// Adds `addr` as the serve address of the node with certificate `cert` (accepted too).
    pub fn with_address(mut self, cert: CertificateDer<'static>, addr: String) -> Self {
        self.addrs.push((node_id_of(&cert), addr));
        if !self.contains(&cert) {
            self.certs.push(cert);
        }
        self
    }

    /// The peers whose serve address is known: their node id and address.
    pub fn addresses(&self) -> &[(u64, String)] {
        &self.addrs
    }

    fn contains(&self, cert: &CertificateDer<'_>) -> bool {
        self.certs.iter().any(|c| c.as_ref() == cert.as_ref())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks certificates against the pinned set; signatures are rustls's to check.
#[derive(Debug)]
struct Pinned {
    peers: Peers,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn new(peers: Peers) -> Self {
        Pinned { peers, algorithms: provider().signature_verification_algorithms }
    }

    fn check(&self, cert: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        if self.peers.contains(cert) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn tls_error(e: rustls::Error) -> Error {
    Error::Identity { what: format!("TLS configuration: {e}") }
}

/// The TLS configuration of a server that accepts only `peers`.
pub fn server_config(identity: &Identity, peers: Peers) -> Result<rustls::ServerConfig> {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(Arc::new(Pinned::new(peers)))
        .with_single_cert(vec![identity.cert.clone()], identity.key_der())
        .map_err(tls_error)
}

/// The TLS configuration of a client that talks only to `peers`.
pub fn client_config(identity: &Identity, peers: Peers) -> Result<rustls::ClientConfig> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned::new(peers)))
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key_der())
        .map_err(tls_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_files_and_lines() {
        let dir = std::env::temp_dir().join(format!("hde-net-id-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let id = Identity::generate().unwrap();
        id.write(&dir).unwrap();
        assert!(id.write(&dir).is_err(), "an existing key is never overwritten");
        let back = Identity::load(&dir).unwrap();
        assert_eq!(back.public_line(), id.public_line());
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(dir.join("key")).unwrap().permissions().mode() & 0o777, 0o600);
        let line = fs::read_to_string(dir.join("key.pub")).unwrap();
        assert_eq!(line.lines().count(), 1);
        let peers_file = dir.join("peers");
        fs::write(&peers_file, format!("# the sender\n\n{line}")).unwrap();
        let peers = Peers::load(&peers_file).unwrap();
        assert!(peers.contains(id.certificate()));
        assert!(!peers.contains(Identity::generate().unwrap().certificate()));
        fs::write(&peers_file, "hde-cert-v1 zz\n").unwrap();
        assert!(Peers::load(&peers_file).is_err());
        let _ = fs::remove_dir_all(&dir);
    }
}
