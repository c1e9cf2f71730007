//! `--tls`: a certificate authority and a loopback server certificate generated at start, so
//! Microsoft's sign-in libraries and SDKs, which refuse plain-http authorities, connect to the
//! emulator unmodified once they trust the CA (`SSL_CERT_FILE`). The CA's key never leaves the
//! process and is dropped once the server certificate is signed: the CA file is public material
//! only, and a certificate made by one emulator run is worth nothing to the next.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// The names the server certificate is valid for: every way a client spells loopback.
const SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// The generated CA (PEM, for clients to trust) and the acceptor serving its server certificate.
#[derive(Clone)]
pub struct Tls {
    pub ca_pem: String,
    pub acceptor: TlsAcceptor,
}

impl Tls {
    /// A fresh CA and a server certificate it signed for [`SERVER_NAMES`], valid from yesterday
    /// for a year (a client checking validity sees a certificate in force, with no clock games).
    pub fn generate() -> anyhow::Result<Tls> {
        let today = chrono::Utc::now().date_naive();
        let ymd = |d: chrono::NaiveDate| {
            use chrono::Datelike;
            rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
        };
        let not_before = ymd(today - chrono::Days::new(1));
        let not_after = ymd(today + chrono::Days::new(365));

        let ca_key = KeyPair::generate().context("generating the emulator CA's key")?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "b2b-convert emulator CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = not_before;
        ca.not_after = not_after;
        let ca_cert = ca.self_signed(&ca_key).context("signing the emulator CA")?;

        let server_key = KeyPair::generate().context("generating the emulator server key")?;
        let mut server = CertificateParams::new(
            SERVER_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )?;
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.is_ca = IsCa::ExplicitNoCa;
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        // Python 3.13's default context verifies strictly (VERIFY_X509_STRICT): a leaf without
        // an authority key identifier is refused.
        server.use_authority_key_identifier_extension = true;
        server.not_before = not_before;
        server.not_after = not_after;
        let server_cert = server
            .signed_by(&server_key, &ca_cert, &ca_key)
            .context("signing the emulator server certificate")?;

        let chain: Vec<CertificateDer<'static>> =
            vec![server_cert.der().clone(), ca_cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the emulator server certificate")?;
        // The connection loop speaks HTTP/1.1 only; offering h2 would strand clients that pick it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            ca_pem: ca_cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Where the CA file of an emulator on `port` is written: the temporary directory, one file per
/// port, so two emulators side by side never share (or overwrite) each other's CA.
pub fn ca_file_path(port: u16) -> PathBuf {
    std::env::temp_dir().join(format!("b2b-convert-emulator-{port}-ca.pem"))
}

/// Writes the CA (public material only) to `path`.
pub fn write_ca(path: &Path, ca_pem: &str) -> anyhow::Result<()> {
    std::fs::write(path, ca_pem).with_context(|| format!("writing {}", path.display()))
}
