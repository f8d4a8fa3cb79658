//! A client of a coordinator's HTTP server (`--http-listen`): JSON API calls with their
//! status, and a session's Server-Sent Events.

mod connector;

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;
use sluice_proto::{
    pb::{self, auth_service_client::AuthServiceClient},
    security::tls,
};

use self::connector::Connector;
use crate::{PATIENCE, node::Node};

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
    client: Client<Connector, Full<Bytes>>,
    token: Option<String>,
}

impl HttpClient {
    /// A client of `base` (`https://127.0.0.1:PORT`, or `http://` when insecure); `ca` is the
    /// only CA an `https://` server's certificate is checked against.
    pub fn new(base: &str, ca: Option<&Path>) -> HttpClient {
        let tls = ca.map(|ca| {
            tls::https_client_config(ca)
                .unwrap_or_else(|e| panic!("https client trusting {}: {e}", ca.display()))
        });
        let connector = Connector::new(tls.map(Arc::new));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        HttpClient { base: base.trim_end_matches('/').to_string(), client, token: None }
    }

    /// A client of a coordinator's HTTP server as admin: over HTTPS with an admin token of
    /// its own when the cluster is secure.
    pub async fn admin(coordinator: &Node) -> HttpClient {
        let client = coordinator.http_client();
        match coordinator.harness_tls() {
            Some(_) => client.with_token(&create_token(coordinator, "harness-http", "admin").await),
            None => client,
        }
    }

    /// The same client, sending `Authorization: Bearer TOKEN`.
    pub fn with_token(mut self, token: &str) -> HttpClient {
        self.token = Some(token.to_string());
        self
    }

    /// The answer to `GET path`, or the error of the connection (a refused handshake).
    pub async fn try_get(&self, path: &str) -> anyhow::Result<u16> {
        let request = self.request("GET", path, "");
        let response = tokio::time::timeout(PATIENCE, self.client.request(request)).await??;
        Ok(response.status().as_u16())
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

/// Creates an API token with `role` through `coordinator`'s gRPC API (as the harness's
/// admin); returns its secret.
pub async fn create_token(coordinator: &Node, name: &str, role: &str) -> String {
    let mut auth = AuthServiceClient::new(coordinator.channel().await);
    let request = pb::CreateTokenRequest { name: name.into(), role: role.into(), ttl_seconds: 0 };
    auth.create_token(request)
        .await
        .unwrap_or_else(|status| panic!("CreateToken {name} ({role}): {status}"))
        .into_inner()
        .secret
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
