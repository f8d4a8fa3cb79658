//! A client of a coordinator's HTTP server (`--http-listen`): JSON API calls with their
//! status, and a session's Server-Sent Events.

use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::Value;

use crate::PATIENCE;

/// An answer of the HTTP server.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: String,
    /// The body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics, naming the body, when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    /// The `code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
}

/// An HTTP client of one coordinator.
#[derive(Clone)]
pub struct HttpClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    token: Option<String>,
}

impl HttpClient {
    /// A client of `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> HttpClient {
        let client = Client::builder(TokioExecutor::new()).build_http();
        HttpClient { base: base.trim_end_matches('/').to_string(), client, token: None }
    }

    /// The same client, sending `Authorization: Bearer TOKEN`.
    pub fn with_token(mut self, token: &str) -> HttpClient {
        self.token = Some(token.to_string());
        self
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, "").await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.call("POST", path, body).await
    }

    /// Any method.
    pub async fn call(&self, method: &str, path: &str, body: &str) -> Reply {
        let what = format!("{method} {path}");
        let request = self.request(method, path, body);
        let answer = async {
            let response = self.client.request(request).await?;
            let status = response.status().as_u16();
            let content_type = header(&response, "content-type");
            let bytes = response.into_body().collect().await?.to_bytes();
            let body = String::from_utf8_lossy(&bytes).into_owned();
            Ok::<_, anyhow::Error>(Reply { status, content_type, body })
        };
        match tokio::time::timeout(PATIENCE, answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => panic!("{what} at {}: {e:#}", self.base),
            Err(_) => panic!("{what} at {}: no answer within {PATIENCE:?}", self.base),
        }
    }

    /// `GET path` as an event stream: the status, and the events until the server ends it.
    pub async fn events(&self, path: &str) -> (Reply, impl Stream<Item = Event> + Unpin + use<>) {
        let request = self.request("GET", path, "");
        let response = tokio::time::timeout(PATIENCE, self.client.request(request))
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let content_type = header(&response, "content-type");
        let reply = Reply { status, content_type, body: String::new() };
        let events = response
            .into_body()
            .into_data_stream()
            .eventsource()
            .take_while(|event| std::future::ready(event.is_ok()))
            .filter_map(|event| std::future::ready(event.ok()));
        (reply, Box::pin(events))
    }

    fn request(&self, method: &str, path: &str, body: &str) -> http::Request<Full<Bytes>> {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_else(|e| panic!("bad request {method} {path}: {e}"))
    }
}

fn header<B>(response: &http::Response<B>, name: &str) -> String {
    response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// Waits for the next event of a stream, failing after `timeout`.
pub async fn next_event(
    events: &mut (impl Stream<Item = Event> + Unpin),
    timeout: Duration,
) -> Option<Event> {
    tokio::time::timeout(timeout, events.next())
        .await
        .unwrap_or_else(|_| panic!("no server-sent event within {timeout:?}"))
}
