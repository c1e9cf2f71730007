//! Raw Graph calls to an emulator, for tests of the emulator itself: a token from its token
//! endpoint, and a client that sends requests as written (no retries, no limiter).

use std::collections::BTreeSet;

use b2b_convert::emulator::{Clock, Emulator, EmulatorConfig, Tenant};
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

/// An emulator started with `config`, and a client signed in to it.
pub async fn start_with_client(config: EmulatorConfig) -> (Emulator, G) {
    let emu = super::start(config).await;
    let g = G::new(&emu).await;
    (emu, g)
}

/// The sample tenant's emulator, and a client signed in to it.
pub async fn sample_emulator() -> (Emulator, G) {
    sample_emulator_with(|_| {}).await
}

/// The sample tenant's emulator with `change` made to its configuration, and a client signed
/// in to it.
pub async fn sample_emulator_with(change: impl FnOnce(&mut EmulatorConfig)) -> (Emulator, G) {
    let mut config = EmulatorConfig::new(Tenant::sample());
    change(&mut config);
    start_with_client(config).await
}

/// The sample tenant's emulator on a manual clock (a throttling test advances it; buckets never
/// refill on their own) with `change` made to its configuration, and a client signed in to it.
pub async fn manual_clock_emulator(change: impl FnOnce(&mut EmulatorConfig)) -> (Emulator, G) {
    sample_emulator_with(|c| {
        c.clock = Clock::manual();
        change(c);
    })
    .await
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

    /// `GET /users/{id}?$select={select}`.
    pub async fn get_user(&self, id: &str, select: &str) -> (u16, Value) {
        self.get(&format!("/users/{id}?$select={select}")).await
    }

    /// An advanced query: `GET` with `ConsistencyLevel: eventual`.
    pub async fn get_eventual(&self, path: &str) -> (u16, Value) {
        self.get_with(path, &[("ConsistencyLevel", "eventual")])
            .await
    }

    /// `GET {path}`, the whole response (status, headers, body).
    pub async fn get_response(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
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

    /// `METHOD {path}` with `body`: the transport's own result, an error where the answer is lost.
    pub async fn try_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Result<reqwest::Response> {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
        self.try_send(method, path, body).await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.send(reqwest::Method::POST, path, body).await;
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// `PATCH /users/{id}`, the whole response (status, headers, body).
    pub async fn patch_user(&self, id: &str, body: Value) -> reqwest::Response {
        self.send(reqwest::Method::PATCH, &format!("/users/{id}"), body)
            .await
    }

    pub async fn patch(&self, id: &str, body: Value) -> (u16, Value) {
        let r = self.patch_user(id, body).await;
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Invites `new.partner@fabrikam.com`, whom the tenant does not hold: Graph creates a new
    /// guest user. Returns its id.
    pub async fn invite_new_guest(&self) -> String {
        let body = json!({
            "invitedUserEmailAddress": "new.partner@fabrikam.com",
            "inviteRedirectUrl": "https://myapplications.microsoft.com",
        });
        let (s, guest) = self.post_invitation(body).await;
        assert_eq!(s, 201, "{guest}");
        guest["invitedUser"]["id"].as_str().unwrap().to_string()
    }

    /// `POST /invitations` with `body`.
    pub async fn post_invitation(&self, body: Value) -> (u16, Value) {
        self.post("/invitations", body).await
    }

    /// Invites `user` to its own `mail`, silently (a conversion).
    pub async fn invite(&self, user: &User) -> (u16, Value) {
        let body = invite_body(&user.id, user.mail.as_deref().unwrap());
        self.post_invitation(body).await
    }

    /// `POST {path}` with `body` sent as it is, labelled `content_type`: the whole response.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// The partner of user `id` redeems its invitation (`POST /_emulator/users/{id}/redeem`).
    pub async fn redeem(&self, id: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/_emulator/users/{id}/redeem", self.base))
            .send()
            .await
            .unwrap();
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

/// Asserts Graph's answer `(status, body)` is the error `status` with `code` and `message`.
pub fn assert_graph_error(answer: (u16, &Value), status: u16, code: &str, message: &str) {
    let (s, v) = answer;
    assert_eq!(s, status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["message"], message, "{v}");
}

/// Sends `request` and reads its answer as JSON.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// The names of a JSON object's members.
pub fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
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
