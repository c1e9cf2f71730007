//! Raw Graph calls to an emulator, for tests of the emulator itself: a token from its token
//! endpoint, and a client that sends requests as written (no retries, no limiter).

use b2b_convert::emulator::{Emulator, Tenant};
use b2b_convert::model::User;
use serde_json::{json, Value};

/// One of the variables `emulator` prints for clients (`AZURE_CLIENT_ID`, …).
pub fn env(emu: &Emulator, name: &str) -> String {
    emu.client_env()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap()
}

pub fn token_url(emu: &Emulator) -> String {
    format!("{}/{}/oauth2/v2.0/token", emu.base_url(), emu.tenant_id())
}

/// An app-only access token, obtained with the client secret as a client would.
pub async fn token(emu: &Emulator) -> String {
    let r = reqwest::Client::new()
        .post(token_url(emu))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", &env(emu, "AZURE_CLIENT_ID")),
            ("client_secret", &env(emu, "AZURE_CLIENT_SECRET")),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    v["access_token"].as_str().unwrap().to_string()
}

/// A client bound to one emulator and token.
pub struct G {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl G {
    pub async fn new(emu: &Emulator) -> G {
        G {
            base: emu.base_url(),
            token: token(emu).await,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/v1.0{path}", self.base)
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_with(path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut rb = self.http.get(self.url(path)).bearer_auth(&self.token);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.send(reqwest::Method::POST, path, body).await;
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn patch(&self, id: &str, body: Value) -> (u16, Value) {
        let r = self
            .send(reqwest::Method::PATCH, &format!("/users/{id}"), body)
            .await;
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /_emulator/{path}` (no token).
    pub async fn inspect(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/_emulator/{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The sample tenant's user whose display name starts with `name_start`.
pub fn sample_user(name_start: &str) -> User {
    Tenant::sample()
        .users
        .into_iter()
        .find(|u| {
            u.display_name
                .as_deref()
                .unwrap_or("")
                .starts_with(name_start)
        })
        .unwrap_or_else(|| panic!("no sample user {name_start}"))
}

/// The body of a silent conversion invitation of user `id` to `email`.
pub fn invite_body(id: &str, email: &str) -> Value {
    json!({
        "invitedUserEmailAddress": email,
        "inviteRedirectUrl": "https://myapplications.microsoft.com",
        "sendInvitationMessage": false,
        "invitedUser": {"id": id},
    })
}
