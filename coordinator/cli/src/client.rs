//! Connection to a coordinator: the endpoint list, TLS and credentials, the API clients.

use std::{path::PathBuf, time::Duration};

use sluice_proto::pb::auth_service_client::AuthServiceClient;
use sluice_proto::pb::cluster_service_client::ClusterServiceClient;
use sluice_proto::pb::job_service_client::JobServiceClient;
use sluice_proto::security::identity::Kind;
use sluice_proto::security::tls::{self, DialTls, check_url, mismatch_hint};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::{Interceptor, interceptor::InterceptedService};
use tonic::transport::{Channel, Endpoint};

use crate::error::{Failure, chain};
use crate::output::Format;

/// Connect timeout per endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
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

/// How the CLI proves itself and checks the coordinator (`--ca-cert --cert --key --token`,
/// or `--insecure`).
#[derive(Debug, Clone)]
pub struct Access {
    /// TLS towards the coordinator; `None` with `--insecure`.
    tls: Option<DialTls>,
    /// `Bearer <token>`, if a token was given.
    bearer: Option<MetadataValue<Ascii>>,
    /// A client certificate is presented (`--cert`).
    client_cert: bool,
}

/// The security flags as given.
#[derive(Debug, Clone, Default)]
pub struct AccessFlags {
    /// `--token`.
    pub token: Option<String>,
    /// `--ca-cert`: the cluster CA the coordinator's certificate must chain to.
    pub ca_cert: Option<PathBuf>,
    /// `--cert`: a client certificate.
    pub cert: Option<PathBuf>,
    /// `--key`: its key.
    pub key: Option<PathBuf>,
    /// `--insecure`.
    pub insecure: bool,
}

impl Access {
    /// Checks the flags and reads the files they name.
    pub fn from_flags(flags: AccessFlags) -> Result<Access, Failure> {
        let bearer = flags.token.as_deref().map(bearer).transpose()?;
        if flags.insecure {
            if flags.ca_cert.is_some() || flags.cert.is_some() || flags.key.is_some() {
                return Err(Failure::usage(
                    "--insecure cannot be combined with --ca-cert, --cert or --key",
                ));
            }
            return Ok(Access { tls: None, bearer, client_cert: false });
        }
        let ca = flags.ca_cert.ok_or_else(|| {
            Failure::usage(
                "--ca-cert FILE is required to check the coordinator (the cluster's ca.crt; \
                 SLUICE_CA_CERT), or --insecure for a development cluster",
            )
        })?;
        let identity = match (&flags.cert, &flags.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err(Failure::usage("--cert and --key go together")),
        };
        let tls = tls::dial_config(&ca, identity, &[Kind::Coordinator])
            .map_err(|e| Failure::usage(e.to_string()))?;
        let client_cert = identity.is_some();
        Ok(Access { tls: Some(tls), bearer, client_cert })
    }

    /// Plaintext without credentials (tests of argument handling).
    #[cfg(test)]
    pub fn insecure() -> Access {
        Access { tls: None, bearer: None, client_cert: false }
    }

    fn secure(&self) -> bool {
        self.tls.is_some()
    }
}

fn bearer(token: &str) -> Result<MetadataValue<Ascii>, Failure> {
    if token.trim().is_empty() {
        return Err(Failure::usage("--token is empty (SLUICE_TOKEN, or the config file's token)"));
    }
    // Never echo the token: it is a secret.
    format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| Failure::usage("--token holds characters a token never has"))
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

    /// Connects to the first endpoint of the list that answers.
    pub async fn connect(&self) -> Result<Clients, Failure> {
        let endpoints = parse_endpoints(&self.endpoints, self.access.tls.as_ref())?;
        let mut errors = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let uri = endpoint.uri().to_string();
            match endpoint.connect().await {
                Ok(channel) => return Ok(Clients::new(channel, &self.access)),
                Err(error) => {
                    let text = chain(&error);
                    let hint = mismatch_hint(&format!("{text} {error:?}"), self.access.secure());
                    errors.push(format!(
                        "{uri}: {text}{}",
                        hint.map(|h| format!(" ({h})")).unwrap_or_default()
                    ));
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
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .keep_alive_while_idle(true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::security::pki;

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

    #[test]
    fn a_secure_cli_needs_the_cluster_ca() {
        let missing = Access::from_flags(AccessFlags::default()).expect_err("no CA");
        assert!(missing.message().contains("--ca-cert FILE is required"), "{}", missing.message());
        let flags =
            AccessFlags { insecure: true, ca_cert: Some("/x".into()), ..Default::default() };
        assert!(matches!(Access::from_flags(flags), Err(Failure::Usage(_))));
        let token =
            AccessFlags { insecure: true, token: Some("slu_x\n_y".into()), ..Default::default() };
        let refused = Access::from_flags(token).expect_err("a newline in a token");
        assert!(!refused.message().contains("slu_x"), "the token is not echoed");
        let empty = AccessFlags { insecure: true, token: Some(" ".into()), ..Default::default() };
        let refused = Access::from_flags(empty).expect_err("an empty token");
        assert!(refused.message().contains("--token is empty"), "{}", refused.message());
    }
}
