//! Writes to a user beyond the invitation: `PATCH /v1.0/users/{id}` for `--set-mail` (`mail`)
//! and `--set-guest` (`userType`). They share the client's limiter, so every write is paced
//! together with the invitations (Graph's write bucket is one per app and tenant).

use reqwest::Method;

use super::transport::Call;
use super::{GraphClient, GraphError, Traced};

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
        let answer = self
            .execute(&Call {
                method: Method::PATCH,
                url: self.api_url(&["users", id], &[]),
                headers: Vec::new(),
                body: Some(body),
                idempotent: false,
            })
            .await?;
        Ok(Traced {
            value: (),
            meta: answer.meta,
        })
    }
}
