//! Client assertions: the JWT a certificate-holding app signs to prove itself to the token
//! endpoint (RS256, thumbprint in `x5t#S256`).

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};

use super::error::GraphError;

/// Lifetime of an assertion: Entra accepts at most 10 minutes; keep a margin for clock skew.
const ASSERTION_LIFETIME_SECS: i64 = 10 * 60 - 30;

/// A certificate and its private key, loaded once per run.
pub struct ClientCertificate {
    key: EncodingKey,
    /// base64url(SHA-256(certificate DER)), the `x5t#S256` header.
    thumbprint_s256: String,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("thumbprint_s256", &self.thumbprint_s256)
            .finish_non_exhaustive()
    }
}

const ENCRYPTED_KEY: &str = "encrypted private keys are not supported; export the key \
unencrypted (e.g. `openssl pkcs8 -topk8 -nocrypt`) or use AZURE_CLIENT_SECRET";

impl ClientCertificate {
    pub fn from_pem_file(path: &Path) -> Result<ClientCertificate, GraphError> {
        let text = std::fs::read(path).map_err(|e| {
            GraphError::Config(format!(
                "cannot read certificate file {}: {e}",
                path.display()
            ))
        })?;
        Self::from_pem(&text).map_err(|msg| {
            GraphError::Config(format!("certificate file {}: {msg}", path.display()))
        })
    }

    /// Reads a PEM bundle holding one `CERTIFICATE` and one unencrypted RSA key.
    pub fn from_pem(text: &[u8]) -> Result<ClientCertificate, String> {
        let blocks = pem::parse_many(text).map_err(|e| format!("not valid PEM: {e}"))?;
        let mut cert_der = None;
        let mut key = None;
        for block in &blocks {
            match block.tag() {
                "CERTIFICATE" if cert_der.is_none() => cert_der = Some(block.contents().to_vec()),
                "PRIVATE KEY" => {
                    // jsonwebtoken reads PKCS#8 from PEM only: re-wrap the one block.
                    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", block.contents()));
                    key = Some(
                        EncodingKey::from_rsa_pem(pem.as_bytes())
                            .map_err(|e| format!("unreadable PKCS#8 RSA private key: {e}"))?,
                    )
                }
                "RSA PRIVATE KEY" => {
                    if block
                        .headers()
                        .get("Proc-Type")
                        .is_some_and(|v| v.contains("ENCRYPTED"))
                    {
                        return Err(ENCRYPTED_KEY.into());
                    }
                    key = Some(EncodingKey::from_rsa_der(block.contents()))
                }
                "ENCRYPTED PRIVATE KEY" => return Err(ENCRYPTED_KEY.into()),
                _ => {}
            }
        }
        let cert_der = cert_der.ok_or("no CERTIFICATE block found")?;
        let key = key.ok_or(
            "no private key found: the file must hold the certificate and its key \
             (PRIVATE KEY or RSA PRIVATE KEY)",
        )?;
        let cert = ClientCertificate {
            key,
            thumbprint_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(&cert_der)),
        };
        // A PKCS#1 key is only parsed when used: sign once now so a bad key shows at start.
        cert.sign(&serde_json::json!({}))
            .map_err(|e| format!("unusable RSA private key: {e}"))?;
        Ok(cert)
    }

    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint_s256
    }

    fn sign(&self, claims: &serde_json::Value) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some("JWT".into());
        header.x5t_s256 = Some(self.thumbprint_s256.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
    }

    /// A signed assertion for `token_url`, valid from `now` (seconds since the epoch).
    pub fn assertion(&self, client_id: &str, token_url: &str, now: i64) -> String {
        let claims = serde_json::json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECS,
        });
        self.sign(&claims)
            .expect("the key signed a probe assertion when it was loaded")
    }
}

/// The payload of a JWT, decoded without checking its signature (only the issuer can).
pub fn claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn assertion_is_signed_and_carries_the_thumbprint() {
        let cert = ClientCertificate::from_pem_file(&fixture("app-cert-with-key.pem")).unwrap();
        let expected = std::fs::read_to_string(fixture("app-cert.x5t-s256.txt")).unwrap();
        assert_eq!(cert.thumbprint_s256(), expected.trim());

        let url = "https://login.example/tenant-1/oauth2/v2.0/token";
        let jwt = cert.assertion("client-1", url, 1_700_000_000);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert!(!jwt.contains('='), "no padding");

        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], expected.trim());

        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], url);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["nbf"], 1_700_000_000);
        assert_eq!(claims["iat"], 1_700_000_000);
        let exp = claims["exp"].as_i64().unwrap();
        assert!(exp > 1_700_000_000 && exp <= 1_700_000_000 + 600);
        assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());

        let public = std::fs::read(fixture("app-pub.pem")).unwrap();
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(&public).unwrap();
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        validation.validate_exp = false;
        validation.set_audience(&[url]);
        jsonwebtoken::decode::<serde_json::Value>(&jwt, &key, &validation).unwrap();
        let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode("{}"), parts[2]);
        assert!(jsonwebtoken::decode::<serde_json::Value>(&tampered, &key, &validation).is_err());

        // Each assertion is unique.
        let again = cert.assertion("client-1", url, 1_700_000_000);
        assert_ne!(again, jwt);
    }

    #[test]
    fn bad_pem_files_are_config_errors() {
        let only_cert = std::fs::read(fixture("app-cert.pem")).unwrap();
        let err = ClientCertificate::from_pem(&only_cert).unwrap_err();
        assert!(err.contains("no private key"), "{err}");

        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = ClientCertificate::from_pem(encrypted.as_bytes()).unwrap_err();
        assert!(
            err.contains("encrypted private keys are not supported"),
            "{err}"
        );

        let err = ClientCertificate::from_pem_file(&fixture("missing.pem")).unwrap_err();
        assert!(matches!(err, GraphError::Config(ref m) if m.contains("missing.pem")));
    }
}
