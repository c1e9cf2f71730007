//! `POST /v1.0/$batch`: up to 20 sub-requests in one request, each answered (and throttled) on
//! its own. SDKs do not retry sub-requests; this does, with the client's one retry policy:
//! a throttled sub-request (429, `Retry-After` possibly fractional) or a failed one (5xx, 424
//! "failed dependency", or no answer at all) is sent again in a later round, alone, and the
//! ones that succeeded are never asked again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use reqwest::Method;

use super::error::{GraphError, ResponseMeta};
use super::retry::{self, Attempts, Failure, Verdict};
use super::transport::{error_parts, parse_answer, Call, Spend};
use super::{GraphClient, REQUESTS_PER_BATCH};
use crate::model::{BatchRequest, BatchRequestItem, BatchResponse, Page, User};

/// One sub-request still to be answered.
struct Pending {
    /// Unique among all sub-requests of the call (Graph refuses a whole batch with two equal
    /// ids, compared case-insensitively): its position, counted from 1.
    id: String,
    url: String,
    attempts: Attempts,
}

/// A sub-request. One with a body carries `Content-Type`, without which Graph refuses it.
pub(super) fn sub_request(
    id: &str,
    method: &Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> BatchRequestItem {
    let headers = body
        .as_ref()
        .map(|_| BTreeMap::from([("Content-Type".to_string(), "application/json".to_string())]));
    BatchRequestItem {
        id: id.to_string(),
        method: method.to_string(),
        url: url.to_string(),
        headers,
        body,
        depends_on: None,
    }
}

impl GraphClient {
    /// Runs GET sub-requests (URLs relative to the version root) through `$batch`, 20 at a time,
    /// resending throttled and failed ones on their own, then follows every next link.
    pub(super) async fn batch_users(&self, urls: Vec<String>) -> Result<Vec<User>, GraphError> {
        if !self.batching {
            return self.get_users_one_by_one(urls).await;
        }
        let mut queue: VecDeque<Pending> = urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| Pending {
                id: (i + 1).to_string(),
                url,
                attempts: Attempts::default(),
            })
            .collect();
        let batch_url = self.api_url(&["$batch"], &[]);
        let mut users = Vec::new();
        let mut more_pages = Vec::new();
        while !queue.is_empty() {
            let take = queue.len().min(REQUESTS_PER_BATCH);
            let round: Vec<Pending> = queue.drain(..take).collect();
            let body = BatchRequest {
                requests: round
                    .iter()
                    .map(|p| sub_request(&p.id, &Method::GET, &p.url, None))
                    .collect(),
            };
            // Graph charges a `$batch` what its sub-requests cost.
            let mut ru = 0;
            for p in &round {
                ru += super::budget::read_cost(&self.relative_url(&p.url)?);
            }
            let answer = self
                .execute(&Call {
                    method: Method::POST,
                    url: batch_url.clone(),
                    headers: Vec::new(),
                    body: Some(serde_json::to_vec(&body).expect("batch encodes")),
                    idempotent: true,
                    spend: Spend::Read(ru),
                })
                .await?;
            let parsed: BatchResponse = parse_answer(&answer.body, &answer.meta)?;
            let mut by_id: HashMap<String, _> = parsed
                .responses
                .into_iter()
                .map(|r| (r.id.to_ascii_lowercase(), r))
                .collect();
            let mut wait = Duration::ZERO;
            for mut p in round {
                let Some(item) = by_id.remove(&p.id.to_ascii_lowercase()) else {
                    let failure = Failure::Failed { retry_after: None };
                    match self.retry.next(&mut p.attempts, failure, true) {
                        Verdict::RetryAfter(w) => {
                            wait = wait.max(w);
                            queue.push_back(p);
                            continue;
                        }
                        Verdict::GiveUp => {
                            return Err(GraphError::Exhausted {
                                message: format!("$batch kept omitting the answer to {}", p.url),
                                meta: answer.meta.clone(),
                            })
                        }
                    }
                };
                let headers = item.headers.unwrap_or_default();
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_str())
                };
                let retry_after = header("Retry-After")
                    .and_then(|v| retry::parse_retry_after(v, std::time::SystemTime::now()));
                let meta = ResponseMeta {
                    status: Some(item.status),
                    client_request_id: answer.meta.client_request_id.clone(),
                    request_id: header("request-id")
                        .map(str::to_string)
                        .or_else(|| answer.meta.request_id.clone()),
                };
                let body = item.body.unwrap_or(serde_json::Value::Null);
                let failure = match item.status {
                    200..=299 => {
                        let page: Page<User> =
                            serde_json::from_value(body).map_err(|e| GraphError::Api {
                                status: item.status,
                                code: "InvalidResponse".into(),
                                message: format!("unreadable $batch sub-response: {e}"),
                                meta: meta.clone(),
                            })?;
                        users.extend(page.value);
                        more_pages.extend(page.next_link);
                        self.clear_denied("GET users");
                        continue;
                    }
                    429 => {
                        tracing::debug!(sub_request = %p.id, "$batch sub-request throttled");
                        self.throttled(true, header("x-ms-throttle-scope"), retry_after);
                        Failure::Throttled
                    }
                    424 | 500 | 502 | 503 | 504 => Failure::Failed { retry_after },
                    status => {
                        return Err(self.refusal("GET users", status, &body.to_string(), meta))
                    }
                };
                match self.retry.next(&mut p.attempts, failure, true) {
                    Verdict::RetryAfter(w) => {
                        wait = wait.max(w);
                        queue.push_back(p);
                    }
                    Verdict::GiveUp if failure == Failure::Throttled => {
                        return Err(GraphError::Exhausted {
                            message: format!(
                                "still throttled after {} retries",
                                self.retry.throttled_retries
                            ),
                            meta,
                        });
                    }
                    Verdict::GiveUp => {
                        let (code, message) = error_parts(item.status, &body.to_string());
                        return Err(GraphError::Exhausted {
                            message: format!(
                                "HTTP {} {code}: {message} (after {} attempts)",
                                item.status, p.attempts.failures
                            ),
                            meta,
                        });
                    }
                }
            }
            if !wait.is_zero() && !queue.is_empty() {
                tokio::time::sleep(wait).await;
            }
        }
        for link in more_pages {
            let rest = self.next_link_url(&link, false)?;
            users.extend(self.get_all::<User>(rest, false).await?);
        }
        Ok(users)
    }

    /// The same sub-requests as `batch_users`, each as its own GET (every page followed), all
    /// at once: the read budget, not the round trip, sets how fast they go.
    async fn get_users_one_by_one(&self, urls: Vec<String>) -> Result<Vec<User>, GraphError> {
        let mut reads = tokio::task::JoinSet::new();
        for relative in urls {
            let first = self.relative_url(&relative)?;
            let client = self.clone();
            reads.spawn(async move { client.get_all::<User>(first, false).await });
        }
        let mut users = Vec::new();
        while let Some(read) = reads.join_next().await {
            let read =
                read.map_err(|e| GraphError::Config(format!("a look-up task failed: {e}")))?;
            users.extend(read?);
        }
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_requests_with_a_body_carry_content_type() {
        let get = sub_request("1", &Method::GET, "/users/u1", None);
        assert_eq!(get.method, "GET");
        assert!(get.headers.is_none());
        let patch = sub_request(
            "2",
            &Method::PATCH,
            "/users/u1",
            Some(serde_json::json!({"userType": "Guest"})),
        );
        assert_eq!(patch.method, "PATCH");
        assert_eq!(
            patch
                .headers
                .unwrap()
                .get("Content-Type")
                .map(String::as_str),
            Some("application/json")
        );
        let wire = serde_json::to_value(BatchRequest {
            requests: vec![get],
        })
        .unwrap();
        assert!(wire["requests"][0].get("headers").is_none());
    }
}
