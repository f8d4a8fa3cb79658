//! What every answer shares, whatever its route: security and cache headers, and refusals in
//! the JSON error format (405, a path that is not UTF-8, a body over the limit, a change sent
//! from another origin).

use std::convert::Infallible;

use axum::{
    Router,
    body::{Body, Bytes, to_bytes},
};
use http::{HeaderMap, Method, Request, StatusCode, header};
use serde_json::Value;
use tower::ServiceExt;

use super::sample_app;
use crate::http::{extract::MAX_BODY_BYTES, origin::OwnNames, policy::Scheme};

async fn send(app: Router, request: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let response = app.oneshot(request).await.expect("an answer");
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, 1 << 20).await.expect("body");
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

fn request(method: Method, path: &str) -> Request<Body> {
    Request::builder().method(method).uri(path).body(Body::empty()).expect("request")
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test]
async fn api_answers_and_metrics_are_not_stored_and_all_carry_the_security_headers() {
    let expected = [
        ("/api/v1/things", Some("no-store")),
        ("/api/v1/things/x", Some("no-store")),
        ("/api/v1/nothing", Some("no-store")),
        ("/metrics", Some("no-store")),
        // Their own: the event stream's and the console's.
        ("/api/v1/things/x/events", Some("no-store")),
        ("/", Some("no-cache")),
        ("/nothing", None),
    ];
    for (path, cache_control) in expected {
        let (_, headers, _) = send(sample_app(Scheme::Http), request(Method::GET, path)).await;
        let cache = headers.get(header::CACHE_CONTROL).map(|v| v.to_str().expect("ASCII"));
        assert_eq!(cache, cache_control, "{path}");
        assert!(headers.contains_key(header::CONTENT_SECURITY_POLICY), "{path}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert!(!headers.contains_key(header::STRICT_TRANSPORT_SECURITY), "{path}: plain HTTP");
    }
}

#[tokio::test]
async fn over_https_every_answer_asks_browsers_to_keep_to_https() {
    let requests = [
        request(Method::GET, "/"),
        request(Method::GET, "/api/v1/things"),
        request(Method::GET, "/nothing"),
        request(Method::PATCH, "/api/v1/things"),
    ];
    for request in requests {
        let what = format!("{} {}", request.method(), request.uri());
        let (_, headers, _) = send(sample_app(Scheme::Https), request).await;
        assert_eq!(headers[header::STRICT_TRANSPORT_SECURITY], "max-age=31536000", "{what}");
    }
}

#[tokio::test]
async fn a_method_the_route_lacks_is_a_json_405_naming_the_allowed_ones() {
    let (status, headers, body) =
        send(sample_app(Scheme::Http), request(Method::PATCH, "/api/v1/things")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET,HEAD,POST");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let message = "method PATCH not allowed on /api/v1/things; allowed: GET, HEAD, POST";
    assert_eq!(json(&body), serde_json::json!({"code": "UNIMPLEMENTED", "message": message}));
}

#[tokio::test]
async fn a_path_that_is_not_utf8_is_a_json_400() {
    let (status, _, body) =
        send(sample_app(Scheme::Http), request(Method::GET, "/api/v1/things/%ff")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let error = json(&body);
    assert_eq!(error["code"], "INVALID_ARGUMENT", "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains("/api/v1/things/%ff") && message.contains("UTF-8"), "{body}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_json_413_naming_the_limit() {
    // One MiB shared by every chunk: the test holds no 32 MiB.
    let chunk = Bytes::from(vec![b' '; 1 << 20]);
    let chunks = (0..=MAX_BODY_BYTES >> 20).map(move |_| Ok::<_, Infallible>(chunk.clone()));
    let body = Body::from_stream(futures::stream::iter(chunks));
    let request = Request::post("/api/v1/things").body(body).expect("request");
    let (status, _, body) = send(sample_app(Scheme::Http), request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let error = json(&body);
    assert_eq!(error["code"], "RESOURCE_EXHAUSTED", "{body}");
    assert!(error["message"].as_str().unwrap_or_default().contains("32 MiB"), "{body}");
    let (status, _, body) = send(
        sample_app(Scheme::Http),
        Request::post("/api/v1/things").body(Body::from("{}")).expect("request"),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "{}"), "a body within the limit");
}

fn from_browser(method: Method, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::builder().method(method).uri("/api/v1/things");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from("{}")).expect("request")
}

/// A page of another origin may make an operator's browser post here (a form needs no
/// script): changes it marks as coming from elsewhere are refused; reads, the server's own
/// pages and clients that are not browsers go through.
#[tokio::test]
async fn a_change_a_browser_sends_from_another_origin_is_a_json_403() {
    let host = ("host", "127.0.0.1:7480");
    let cases = [
        (Scheme::Http, Method::POST, vec![host, ("origin", "http://evil.example")], false),
        (Scheme::Http, Method::POST, vec![host, ("origin", "http://127.0.0.1:7481")], false),
        (Scheme::Http, Method::POST, vec![host, ("origin", "null")], false),
        (Scheme::Https, Method::POST, vec![host, ("origin", "http://127.0.0.1:7480")], false),
        (Scheme::Http, Method::POST, vec![("origin", "http://127.0.0.1:7480")], false),
        (Scheme::Http, Method::POST, vec![host, ("sec-fetch-site", "cross-site")], false),
        (Scheme::Http, Method::POST, vec![host, ("sec-fetch-site", "same-site")], false),
        (Scheme::Http, Method::PATCH, vec![host, ("origin", "http://evil.example")], false),
        (Scheme::Http, Method::POST, vec![host, ("origin", "http://127.0.0.1:7480")], true),
        (Scheme::Https, Method::POST, vec![host, ("origin", "https://127.0.0.1:7480")], true),
        (Scheme::Http, Method::POST, vec![host, ("sec-fetch-site", "same-origin")], true),
        (Scheme::Http, Method::POST, vec![host, ("sec-fetch-site", "none")], true),
        (Scheme::Http, Method::POST, vec![host], true),
        (Scheme::Http, Method::POST, vec![], true),
        (Scheme::Http, Method::GET, vec![host, ("origin", "http://evil.example")], true),
    ];
    for (scheme, method, headers, allowed) in cases {
        let what = format!("{scheme:?} {method} {headers:?}");
        let request = from_browser(method, &headers);
        let (status, _, body) = send(sample_app(scheme), request).await;
        if allowed {
            assert_ne!(status, StatusCode::FORBIDDEN, "{what}: {body}");
            continue;
        }
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        let error = json(&body);
        assert_eq!(error["code"], "PERMISSION_DENIED", "{what}: {body}");
        assert!(error["message"].as_str().unwrap_or_default().contains("cross-origin"), "{body}");
    }
}

/// DNS rebinding: over plain HTTP a request for a name that is not this server's is refused,
/// reads too (the rebinding page would be of the same origin); over HTTPS the certificate
/// check stops it.
#[tokio::test]
async fn plain_http_answers_only_at_its_own_names() {
    let cases = [
        (Scheme::Http, Method::GET, "rebind.evil.example:7480", false),
        (Scheme::Http, Method::POST, "rebind.evil.example:7480", false),
        (Scheme::Http, Method::GET, "127.0.0.1:7480", true),
        (Scheme::Http, Method::GET, "[::1]:7480", true),
        (Scheme::Http, Method::GET, "localhost:7480", true),
        (Scheme::Https, Method::GET, "rebind.evil.example:7480", true),
    ];
    for (scheme, method, host, allowed) in cases {
        let request = from_browser(method.clone(), &[("host", host)]);
        let (status, _, body) = send(sample_app(scheme), request).await;
        let what = format!("{scheme:?} {method} {host}: {body}");
        if allowed {
            assert_ne!(status, StatusCode::FORBIDDEN, "{what}");
            continue;
        }
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}");
        assert!(body.contains("is not a name of this server"), "{what}");
    }
    let names = OwnNames::new("http://Coordinator-1.:7400");
    assert!(names.own("coordinator-1:7480"), "the advertised host");
    let names = OwnNames::of(["backup-1".to_owned()]);
    assert!(names.own("backup-1:7480") && names.own("BACKUP-1.") && names.own("[::1]"));
    assert!(!names.own("backup-1.evil.example:7480"), "a name under the machine's is not it");
    assert!(!names.own("backup-10:7480") && !names.own("evil.example") && !names.own(""));
    assert!(names.own("app.localhost:80") && names.own("10.0.0.7"));
}
