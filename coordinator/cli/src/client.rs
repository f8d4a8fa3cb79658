//! Connection to a coordinator: the endpoint list, TLS and credentials, the API clients.

use std::time::Duration;

use sluice_proto::pb::auth_service_client::AuthServiceClient;
use sluice_proto::pb::cluster_service_client::ClusterServiceClient;
use sluice_proto::pb::job_service_client::JobServiceClient;
use sluice_proto::pb::job_service_server;
use sluice_proto::security::tls::{DialTls, check_url, mismatch_hint};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::access::Access;
use crate::diagnose;
use crate::error::{Failure, chain};
use crate::output::Format;

/// Time one endpoint has to connect (TCP, TLS, HTTP/2) and answer a first call: a frozen
/// coordinator (stopped, a paused VM) still accepts TCP but answers nothing, and the next
/// endpoint of the list must get its turn. Calls, and streams, are not bounded by it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// What the first silent endpoint gets more when no endpoint answered within
/// [`ANSWER_TIMEOUT`]: a coordinator slow under load is still reached.
const PATIENT_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response accepted (a session of 100,000 items is tens of MiB).
const MAX_DECODING_BYTES: usize = 64 * 1024 * 1024;
/// HTTP/2 keep-alive, so a watch notices a vanished coordinator.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// What every command needs: where to connect, with which credentials, and how to print.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Comma-separated endpoint list as given.
    endpoints: String,
    /// TLS and the bearer token.
    access: Access,
    /// Output format.
    pub format: Format,
}

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends the credentials.
pub type Authed = InterceptedService<Channel, Credentials>;

/// The API clients on one connection.
///
/// The CLI opens no span of its own, so it has no trace context to send; each request
/// starts its trace on the coordinator.
#[derive(Debug, Clone)]
pub struct Clients {
    /// `sluice.v1.JobService`.
    pub jobs: JobServiceClient<Authed>,
    /// `sluice.v1.ClusterService`.
    pub cluster: ClusterServiceClient<Authed>,
    /// `sluice.v1.AuthService`.
    pub auth: AuthServiceClient<Authed>,
}

impl Ctx {
    /// A context for these endpoints, credentials and format.
    pub fn new(endpoints: String, access: Access, format: Format) -> Self {
        Ctx { endpoints, access, format }
    }

    /// Connects to the first endpoint of the list that answers; the error names each
    /// endpoint tried and what went wrong there.
    pub async fn connect(&self) -> Result<Clients, Failure> {
        let endpoints = parse_endpoints(&self.endpoints, self.access.tls.as_ref())?;
        let mut errors = Vec::with_capacity(endpoints.len());
        let (mut reset, mut silent) = (None, None);
        for endpoint in endpoints {
            let uri = endpoint.uri().clone();
            match answering(endpoint.clone(), ANSWER_TIMEOUT).await {
                Ok(channel) => return Ok(Clients::new(channel, &self.access)),
                Err(NoAnswer::NotACoordinator) => errors.push(format!(
                    "{uri}: it serves no JobService: it is not a coordinator (an agent's port?)"
                )),
                Err(NoAnswer::Reset(channel)) => {
                    // Without TLS, an HTTP/1 server drops the HTTP/2 preface like this.
                    let console = match self.access.secure() {
                        true => None,
                        false => diagnose::plain_http_hint(&uri).await,
                    };
                    if let Some(hint) = console {
                        errors.push(format!("{uri}: {hint}"));
                        continue;
                    }
                    reset.get_or_insert(channel);
                    errors.push(format!("{uri}: the connection failed under the first call"));
                }
                Err(NoAnswer::Silent) => {
                    silent.get_or_insert(endpoint);
                    errors.push(format!(
                        "{uri}: no answer within {} s (a stopped or overloaded coordinator?)",
                        ANSWER_TIMEOUT.as_secs()
                    ));
                }
                Err(NoAnswer::Failed(error)) => {
                    let text = chain(&error);
                    let debug = format!("{text} {error:?}");
                    let hint = match mismatch_hint(&debug, self.access.secure()) {
                        Some(hint) => match diagnose::plain_http_hint(&uri).await {
                            Some(console) => Some(console),
                            None => Some(hint.to_string()),
                        },
                        None => diagnose::tls_hint(&debug, &uri).await,
                    };
                    errors.push(format!(
                        "{uri}: {text}{}",
                        hint.map(|h| format!(" ({h})")).unwrap_or_default()
                    ));
                }
            }
        }
        // None answered: a connection that failed under its first call (a refused client
        // certificate) is used, so that the real call says why; else the first silent one,
        // merely slow under load perhaps, gets longer.
        if let Some(channel) = reset {
            return Ok(Clients::new(channel, &self.access));
        }
        if let Some(endpoint) = silent {
            let uri = endpoint.uri().clone();
            match answering(endpoint, PATIENT_TIMEOUT).await {
                Ok(channel) => return Ok(Clients::new(channel, &self.access)),
                Err(_) => {
                    errors.push(format!("{uri}: nor within {} s more", PATIENT_TIMEOUT.as_secs()))
                }
            }
        }
        Err(Failure::Connect(format!("cannot connect to a coordinator: {}", errors.join("; "))))
    }

    /// A failure with a hint when it looks like a TLS mismatch with the coordinator (a
    /// plaintext client's first call to a TLS server fails only once it is sent).
    pub fn explain(&self, failure: Failure) -> Failure {
        let Failure::Server(status) = &failure else { return failure };
        // How hyper reports a connection the server dropped, depending on timing.
        let transport = [Code::Unknown, Code::Unavailable, Code::Cancelled, Code::Internal];
        if !transport.contains(&status.code()) {
            return failure;
        }
        match mismatch_hint(&format!("{status:?}"), self.access.secure()) {
            Some(hint) => Failure::Connect(format!("{}: {hint}", status.message())),
            // The server's TLS alert (an unknown CA, an expired certificate) reaches only the
            // connection's task: the call sees a bare transport error, never a status the
            // server sent.
            None if self.access.client_cert && bare_transport_error(status) => {
                Failure::Connect(format!(
                    "{}: the coordinator may have refused the client certificate (--cert): is it \
                 issued by the cluster CA, and still valid?",
                    status.message()
                ))
            }
            None => failure,
        }
    }
}

impl Clients {
    /// Clients on a connected channel, sending the credentials.
    fn new(channel: Channel, access: &Access) -> Self {
        let authed = InterceptedService::new(channel, Credentials(access.bearer.clone()));
        let jobs =
            JobServiceClient::new(authed.clone()).max_decoding_message_size(MAX_DECODING_BYTES);
        let cluster =
            ClusterServiceClient::new(authed.clone()).max_decoding_message_size(MAX_DECODING_BYTES);
        let auth = AuthServiceClient::new(authed);
        Clients { jobs, cluster, auth }
    }
}

/// Why an endpoint was passed over.
#[derive(Debug)]
enum NoAnswer {
    /// Nothing came back in time.
    Silent,
    /// The connection failed.
    Failed(tonic::transport::Error),
    /// It connected, then failed under the health check with no word from the server.
    Reset(Channel),
    /// It answered that it serves no JobService (an agent; under TLS its certificate says so
    /// before any call).
    NotACoordinator,
}

/// A channel to `endpoint` once the server answered a health check there: any answer the
/// server sent, even a refusal, shows a live server; none within `limit` passes the endpoint
/// over, and so does a connection that failed under the check.
async fn answering(endpoint: Endpoint, limit: Duration) -> Result<Channel, NoAnswer> {
    let attempt = async {
        let channel = endpoint.connect().await.map_err(NoAnswer::Failed)?;
        let mut health = HealthClient::new(channel.clone());
        // Health is open to anyone: no credentials needed. Asked of the JobService, which
        // every coordinator serves and an agent does not.
        let request = HealthCheckRequest { service: job_service_server::SERVICE_NAME.to_owned() };
        match health.check(request).await {
            Err(status) if bare_transport_error(&status) => Err(NoAnswer::Reset(channel)),
            Err(status) if status.code() == Code::NotFound => Err(NoAnswer::NotACoordinator),
            _ => Ok(channel),
        }
    };
    tokio::time::timeout(limit, attempt).await.unwrap_or(Err(NoAnswer::Silent))
}

/// How tonic reports a connection that failed under a call, with no word from the server.
fn bare_transport_error(status: &tonic::Status) -> bool {
    matches!(
        (status.code(), status.message()),
        (Code::Unknown, "transport error") | (Code::Cancelled, "operation was canceled")
    )
}

/// Parses a comma-separated endpoint list; `host:port` without a scheme means `https://`
/// (`http://` with `--insecure`), and a scheme that does not fit the mode is refused.
pub fn parse_endpoints(list: &str, tls: Option<&DialTls>) -> Result<Vec<Endpoint>, Failure> {
    let urls: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if urls.is_empty() {
        return Err(Failure::usage("--endpoint: no endpoint given"));
    }
    urls.into_iter().map(|url| endpoint(url, tls)).collect()
}

/// One endpoint with the connection settings of the CLI.
fn endpoint(url: &str, tls: Option<&DialTls>) -> Result<Endpoint, Failure> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let full = if url.contains("://") { url.to_string() } else { format!("{scheme}://{url}") };
    check_url("--endpoint", &full, tls.is_some()).map_err(|e| Failure::usage(e.to_string()))?;
    let mut endpoint = Endpoint::from_shared(full)
        .map_err(|error| Failure::usage(format!("--endpoint: bad URL {url:?}: {error}")))?;
    if let Some(tls) = tls {
        endpoint = tls
            .endpoint(endpoint)
            .map_err(|error| Failure::usage(format!("--endpoint {url}: {error}")))?;
    }
    Ok(endpoint
        .connect_timeout(ANSWER_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .keep_alive_while_idle(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::security::identity::Kind;
    use sluice_proto::security::{pki, tls};

    /// TLS trusting a new CA (the CA's directory is kept while the test runs).
    fn test_tls() -> (DialTls, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        pki::init_dir(dir.path()).expect("CA");
        let tls = tls::dial_config(&dir.path().join("ca.crt"), None, &[Kind::Coordinator]);
        (tls.expect("TLS"), dir)
    }

    #[test]
    fn endpoint_list_keeps_order_and_adds_the_scheme_of_the_mode() {
        let endpoints = parse_endpoints("http://a:7400, b:7401", None).expect("valid list");
        let uris: Vec<String> = endpoints.iter().map(|e| e.uri().to_string()).collect();
        assert_eq!(uris, ["http://a:7400/", "http://b:7401/"]);
        let (tls, _ca) = test_tls();
        let secure = parse_endpoints("b:7401", Some(&tls)).expect("valid list");
        assert_eq!(secure[0].uri().to_string(), "https://b:7401/");
    }

    #[test]
    fn empty_bad_or_mismatched_endpoints_are_usage_errors() {
        assert!(matches!(parse_endpoints(" , ", None), Err(Failure::Usage(_))));
        assert!(matches!(parse_endpoints("http://bad host", None), Err(Failure::Usage(_))));
        let (tls, _ca) = test_tls();
        let plain = parse_endpoints("http://a:7400", Some(&tls)).expect_err("plaintext refused");
        assert!(plain.message().contains("plaintext http://"), "{}", plain.message());
        assert!(matches!(parse_endpoints("https://a:7400", None), Err(Failure::Usage(_))));
    }

    #[test]
    fn a_transport_error_with_a_client_certificate_names_the_certificate() {
        let with_cert = Access { tls: None, bearer: None, client_cert: true };
        let ctx = Ctx::new(String::new(), with_cert, Format::Table);
        let explained = ctx.explain(Failure::Server(tonic::Status::unknown("transport error")));
        let message = explained.message();
        assert!(message.contains("may have refused the client certificate (--cert)"), "{message}");
        let sent = ctx.explain(Failure::Server(tonic::Status::unavailable("etcd: no answer")));
        assert!(matches!(sent, Failure::Server(_)), "a status the server sent is kept");
        let without = Ctx::new(String::new(), Access::insecure(), Format::Table);
        let refused = without.explain(Failure::Server(tonic::Status::not_found("no job")));
        assert!(matches!(refused, Failure::Server(_)), "not a transport error: kept");
    }

    /// A port that accepts TCP and never answers: a frozen (SIGSTOPped) coordinator.
    fn frozen() -> (std::net::TcpListener, String) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        (listener, url)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_endpoint_is_passed_over_and_named() {
        let (_first, first) = frozen();
        let (_second, second) = frozen();
        let ctx = Ctx::new(format!("{first},{second}"), Access::insecure(), Format::Table);
        let failure = ctx.connect().await.expect_err("nothing answers");
        assert!(matches!(failure, Failure::Connect(_)), "{failure:?}");
        let message = failure.message();
        for url in [&first, &second] {
            assert!(message.contains(&format!("{url}/: no answer within 5 s")), "{message}");
        }
        let patient = format!("{first}/: nor within 15 s more");
        assert!(message.contains(&patient), "the first one got longer: {message}");
    }
}
