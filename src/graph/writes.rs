//! Writes to a user beyond the invitation: `PATCH /v1.0/users/{id}` for `--set-mail` (`mail`)
//! and `--set-guest` (`userType`), and for retiring the internal credentials (a random
//! `passwordProfile`, `revokeSignInSessions`) and backing out (beta
//! `convertExternalToInternalMemberUser`). They share the client's limiter, so every write is
//! paced together with the invitations (Graph's write bucket is one per app and tenant).
//!
//! A password exists only as a [`Password`]: generated from the operating system's CSPRNG, its
//! `Debug` redacted, wiped when dropped, and put into exactly one request body, which the
//! transport never logs (only method, path, status and ids are).

use rand::rngs::OsRng;
use rand::TryRngCore;
use reqwest::Method;
use serde_json::json;

use super::transport::{parse_answer, Call, Spend};
use super::{GraphClient, GraphError, Traced};
use crate::model::ConversionUserDetails;

/// Characters of a generated password: Entra's four classes, no quote, backslash or space, so
/// the value survives any shell or CSV an administrator might (wrongly) paste it into.
const LOWER: &str = "abcdefghijklmnopqrstuvwxyz";
const UPPER: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &str = "0123456789";
const SYMBOLS: &str = "!#$%&()*+,-./:;<=>?@[]^_{|}~";
/// Characters per generated password: above the 64 the contract asks, below Entra's 256.
pub const PASSWORD_LEN: usize = 72;

/// A random password held only for the request that sets it. `Debug` never shows it, and its
/// memory is overwritten when it is dropped.
pub struct Password(String);

impl Password {
    /// [`PASSWORD_LEN`] characters drawn uniformly (rejection sampling, no modulo bias) from
    /// the four classes by the OS CSPRNG, redrawn until every class is present (Entra asks for
    /// three; all four are required here so no rule change can refuse it).
    pub fn generate() -> Result<Password, GraphError> {
        let alphabet: Vec<u8> = [LOWER, UPPER, DIGITS, SYMBOLS].concat().into_bytes();
        // The largest multiple of the alphabet's size a byte can hold: bytes above it are
        // redrawn, so every character is equally likely.
        let limit = (256 / alphabet.len() * alphabet.len()) as u8;
        for _ in 0..64 {
            let mut out = String::with_capacity(PASSWORD_LEN);
            let mut buf = [0u8; 128];
            while out.len() < PASSWORD_LEN {
                OsRng.try_fill_bytes(&mut buf).map_err(|e| {
                    GraphError::Config(format!("the operating system's random source failed: {e}"))
                })?;
                for b in buf.iter().filter(|b| **b < limit) {
                    if out.len() < PASSWORD_LEN {
                        out.push(alphabet[usize::from(*b) % alphabet.len()] as char);
                    }
                }
            }
            buf.fill(0);
            let p = Password(out);
            if p.covers_every_class() {
                return Ok(p);
            }
        }
        Err(GraphError::Config(
            "could not draw a password covering every character class".into(),
        ))
    }

    fn covers_every_class(&self) -> bool {
        [LOWER, UPPER, DIGITS, SYMBOLS]
            .iter()
            .all(|class| self.0.chars().any(|c| class.contains(c)))
    }

    /// The value, for the one place that may hold it: the request body (and, for `rollback`,
    /// the `--passwords-out` file the administrator asked for).
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(redacted)")
    }
}

impl Drop for Password {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.0).into_bytes());
    }
}

/// Overwrite a buffer that held a password before it is freed.
fn wipe(mut bytes: Vec<u8>) {
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

/// The body of a conversion back (Graph's documentation, "Converting back").
#[derive(Debug)]
pub enum ConvertBack<'a> {
    /// Synced from on-premises: no body (a UPN or password is refused).
    Synced,
    /// Cloud-only: the UPN to keep (on a verified, non-federated domain), a new password, and
    /// optionally the `mail` to set.
    Cloud {
        user_principal_name: &'a str,
        password: &'a Password,
        mail: Option<&'a str>,
    },
}

impl GraphClient {
    /// `PATCH /v1.0/users/{id}` with `changes` (204 No Content). Sent once, like an invitation:
    /// a lost answer gives [`GraphError::Unknown`] and the caller reads the user back.
    pub async fn patch_user(
        &self,
        id: &str,
        changes: &serde_json::Value,
    ) -> Result<Traced<()>, GraphError> {
        let body = serde_json::to_vec(changes)
            .map_err(|e| GraphError::Config(format!("cannot encode the user change: {e}")))?;
        self.write_once(Method::PATCH, self.api_url(&["users", id], &[]), Some(body))
            .await
            .map(|(_, meta)| Traced { value: (), meta })
    }

    /// Set the user's password to `password` (`forceChangePasswordNextSignIn: false`: nobody is
    /// meant to sign in with it). Sent once; after a lost answer the caller re-reads
    /// `lastPasswordChangeDateTime` instead of sending a second password.
    pub async fn set_password(
        &self,
        id: &str,
        password: &Password,
    ) -> Result<Traced<()>, GraphError> {
        let body = json!({
            "passwordProfile": {
                "password": password.reveal(),
                "forceChangePasswordNextSignIn": false,
            }
        });
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| GraphError::Config(format!("cannot encode the password change: {e}")))?;
        wipe_json(body);
        self.write_once(
            Method::PATCH,
            self.api_url(&["users", id], &[]),
            Some(bytes),
        )
        .await
        .map(|(_, meta)| Traced { value: (), meta })
    }

    /// `POST /v1.0/users/{id}/revokeSignInSessions`: `true` on Graph's `{"value": true}`, and on
    /// the other 2xx answers some tenants give (a known issue); sent once.
    pub async fn revoke_sessions(&self, id: &str) -> Result<Traced<bool>, GraphError> {
        let url = self.api_url(&["users", id, "revokeSignInSessions"], &[]);
        let (body, meta) = self.write_once(Method::POST, url, None).await?;
        let value = if body.iter().all(u8::is_ascii_whitespace) {
            true
        } else {
            let v: serde_json::Value = parse_answer(&body, &meta)?;
            v.get("value")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true)
        };
        Ok(Traced { value, meta })
    }

    /// Beta `POST /beta/users/{id}/convertExternalToInternalMemberUser`: the user becomes an
    /// internal member again. Sent once; the answer's date is read in both spellings.
    pub async fn convert_back(
        &self,
        id: &str,
        how: &ConvertBack<'_>,
    ) -> Result<Traced<ConversionUserDetails>, GraphError> {
        let body = match how {
            ConvertBack::Synced => None,
            ConvertBack::Cloud {
                user_principal_name,
                password,
                mail,
            } => {
                let mut v = json!({
                    "userPrincipalName": user_principal_name,
                    "passwordProfile": {
                        "password": password.reveal(),
                        "forceChangePasswordNextSignIn": true,
                    },
                });
                if let Some(mail) = mail {
                    v["mail"] = json!(mail);
                }
                let bytes = serde_json::to_vec(&v).map_err(|e| {
                    GraphError::Config(format!("cannot encode the conversion: {e}"))
                })?;
                wipe_json(v);
                Some(bytes)
            }
        };
        let url = self.beta_url(&["users", id, "convertExternalToInternalMemberUser"], &[]);
        let (answer, meta) = self.write_once(Method::POST, url, body).await?;
        match serde_json::from_slice::<ConversionUserDetails>(&answer) {
            Ok(value) => Ok(Traced { value, meta }),
            Err(e) => Err(GraphError::Unknown {
                message: format!("conversion accepted but its answer is unreadable: {e}"),
                meta,
            }),
        }
    }

    /// One non-idempotent write; the body (which may hold a password) is wiped afterwards.
    async fn write_once(
        &self,
        method: Method,
        url: url::Url,
        body: Option<Vec<u8>>,
    ) -> Result<(Vec<u8>, super::error::ResponseMeta), GraphError> {
        let mut call = Call {
            method,
            url,
            headers: Vec::new(),
            body,
            idempotent: false,
            spend: Spend::Write,
        };
        let answer = self.execute(&call).await;
        if let Some(body) = call.body.take() {
            wipe(body);
        }
        answer.map(|a| (a.body, a.meta))
    }
}

/// Overwrite the strings of a JSON value that held a password.
fn wipe_json(v: serde_json::Value) {
    match v {
        serde_json::Value::String(s) => wipe(s.into_bytes()),
        serde_json::Value::Object(m) => m.into_iter().for_each(|(_, v)| wipe_json(v)),
        serde_json::Value::Array(a) => a.into_iter().for_each(wipe_json),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_passwords_are_long_complex_distinct_and_redacted() {
        let a = Password::generate().unwrap();
        let b = Password::generate().unwrap();
        assert_eq!(a.reveal().len(), PASSWORD_LEN);
        assert!(a.reveal().len() >= 64);
        assert!(a.covers_every_class());
        assert_ne!(a.reveal(), b.reveal());
        let alphabet = [LOWER, UPPER, DIGITS, SYMBOLS].concat();
        assert!(a.reveal().chars().all(|c| alphabet.contains(c)));
        let shown = format!(
            "{a:?} {:?}",
            ConvertBack::Cloud {
                user_principal_name: "a@contoso.com",
                password: &a,
                mail: None,
            }
        );
        assert!(!shown.contains(a.reveal()), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
