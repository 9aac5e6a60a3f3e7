//! A test front for [`Pebble`]: adds what Debian's Pebble 2.4.0 lacks, and records what the
//! client sent.
//!
//! * **ACME Renewal Information** (RFC 9773): `renewalInfo` in the directory,
//!   `GET /renewal-info/{CertID}` answered with a configurable `suggestedWindow` and
//!   `Retry-After`; `replaces` in newOrder is recorded, echoed in the order object (instant-acme
//!   0.8.5 insists on that), and the first N such orders get `409 alreadyReplaced`.
//! * **CRLs**: a plain-HTTP listener serving DER CRLs that the test publishes, counting fetches.
//! * **ACME profiles** (draft-ietf-acme-profiles): `meta.profiles` in the directory when
//!   [`FrontOpts::profiles`] lists some; a newOrder `profile` that is not one of them is
//!   answered `400 urn:ietf:params:acme:error:invalidProfile`; the profile of each newOrder is
//!   recorded ([`Front::profiles_seen`]) and echoed in the order object. Pebble 2.4.0 ignores
//!   the field (the JWS is signed, so it is forwarded as it is), and it has one validity
//!   period for every certificate: the front reads it from Pebble's `pebble.json`
//!   (`certificateValidityPeriod`) and refuses, with `invalidProfile`, an order under a profile
//!   whose lifetime is another. A test starts Pebble with the lifetime of the profile it
//!   orders, so the certificate it gets reflects the profile named in the order.
//!
//! How: an HTTPS reverse proxy on its own `127.0.0.1` port, in-process (a tokio runtime on a
//! thread of its own, torn down when the [`Front`] is dropped). Every request not handled here
//! is forwarded to Pebble unchanged — method, path and query, headers **including `Host`**, and
//! body — and Pebble's answer is relayed unchanged. Pebble 2.4.0 builds every URL it returns
//! (directory, `Location`, `Link`, order fields) from the request's `Host` header and checks
//! the JWS `url` against `https://{Host}{RequestURI}`, so with the client's `Host` (the front's
//! address) preserved it never needs URL rewriting: the client only ever sees the front.
//!
//! The HTTP/1.1 server is hand-written and deliberately small: request line, headers and a
//! `Content-Length` body (no chunked requests), bounded sizes, keep-alive, ALPN `http/1.1`.
//! The front's TLS certificate comes from its own [`TlsCa`]; [`Front::ca_bundle`] trusts it
//! (and Pebble's listeners too). Upstream it speaks HTTP/1.1 only, so `Host` stays a header.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

use super::http::https_get;
use super::http1::{self, Request, header, hop_by_hop};
use super::pebble::Pebble;
use super::tls::{TlsCa, ensure_crypto_provider};

/// Largest request body the front accepts (JWS bodies are a few KiB).
const MAX_BODY: usize = 4 << 20;

/// Options for [`Front::start`].
#[derive(Clone, Debug, Default)]
pub struct FrontOpts {
    /// suggestedWindow to answer for every CertID: (start, end) as unix seconds; None = no
    /// renewalInfo in the directory.
    pub window: Option<(i64, i64)>,
    /// Retry-After (seconds) sent with renewalInfo answers.
    pub retry_after: u64,
    /// Answer the first N newOrder requests that carry `replaces` with 409
    /// urn:ietf:params:acme:error:alreadyReplaced.
    pub already_replaced: usize,
    /// ACME profiles to advertise in the directory's `meta.profiles` (none: no `meta`
    /// profiles, and a newOrder `profile` is refused as for any unknown profile).
    pub profiles: Vec<FrontProfile>,
}

/// One profile the front advertises.
#[derive(Clone, Debug)]
pub struct FrontProfile {
    pub name: String,
    pub description: String,
    /// The lifetime of its certificates, in seconds.
    pub lifetime_secs: u64,
}

impl FrontProfile {
    /// Let's Encrypt's three: classic (90 days), tlsserver (45 days), shortlived (160 hours).
    pub fn lets_encrypt() -> Vec<FrontProfile> {
        let p = |name: &str, description: &str, lifetime_secs| FrontProfile {
            name: name.into(),
            description: description.into(),
            lifetime_secs,
        };
        vec![
            p(
                "classic",
                "The same profile you've been getting all along",
                90 * 86_400,
            ),
            p(
                "tlsserver",
                "45-day certificates without a common name",
                45 * 86_400,
            ),
            p(
                "shortlived",
                "160-hour certificates for DNS names and IP addresses",
                160 * 3_600,
            ),
        ]
    }
}

/// Pebble 2.4.0's validity period when `certificateValidityPeriod` is not set: 5 years.
const PEBBLE_DEFAULT_VALIDITY: u64 = 157_766_400;

/// Mutable state shared by the server tasks and the test.
#[derive(Default)]
struct State {
    window: Option<(i64, i64)>,
    retry_after: u64,
    already_replaced_left: usize,
    renewal_info_requests: Vec<String>,
    replaces_seen: Vec<Option<String>>,
    profiles: Vec<FrontProfile>,
    /// `profile` of each newOrder payload (None when absent), in order, refused ones too.
    profiles_seen: Vec<Option<String>>,
    /// Paths of order objects (order URL, finalize URL) created with a profile → it.
    profile_echo: HashMap<String, String>,
    /// Paths of order objects (order URL, finalize URL) created with `replaces` → its value:
    /// answers to POSTs there get `replaces` echoed too (RFC 9773 §5).
    echo: HashMap<String, String>,
    crls: HashMap<String, Vec<u8>>,
    crl_fetches: HashMap<String, usize>,
    log: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    /// `https://127.0.0.1:PORT`, the front's own origin.
    origin: String,
    /// `https://127.0.0.1:PEBBLE_PORT`.
    upstream: String,
    /// Path of Pebble's newOrder resource (`/order-plz` in 2.4.0).
    new_order_path: String,
    /// Pebble's newNonce URL (asked directly for nonces on the front's own error answers).
    new_nonce_url: String,
    /// The validity period of every certificate the Pebble behind issues, in seconds.
    upstream_validity: u64,
    client: reqwest::Client,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking server task must not hide what was recorded.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running front (see the module docs). Dropping it stops its listeners and tasks.
pub struct Front {
    shared: Arc<Shared>,
    crl_port: u16,
    ca_bundle: PathBuf,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// `scheme://host:port` of an absolute URL.
fn origin_of(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    url[..end].to_owned()
}

/// Path (and query) of an absolute URL.
fn path_of(url: &str) -> String {
    url[origin_of(url).len()..].to_owned()
}

impl Front {
    /// Starts the HTTPS front for `pebble` and the CRL listener, each on a fresh 127.0.0.1
    /// port. Blocking; usable from plain `#[test]`s and from inside a tokio runtime.
    pub fn start(pebble: &Pebble, opts: FrontOpts) -> Front {
        ensure_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix("front-")
            .tempdir()
            .expect("create front temp dir");
        let ca = TlsCa::new(&dir.path().join("tls"));
        let ca_bundle = dir.path().join("ca-bundle.pem");
        let pebble_ca = std::fs::read_to_string(pebble.ca_bundle()).expect("read Pebble's CA");
        std::fs::write(&ca_bundle, format!("{}\n{pebble_ca}", ca.ca_pem()))
            .expect("write front CA bundle");

        // Pebble's own directory (asked with Pebble's address as Host) gives the paths.
        let resp = https_get(&pebble.directory_url(), pebble.ca_bundle())
            .unwrap_or_else(|e| panic!("front: Pebble directory: {e}\n{}", pebble.log()));
        assert_eq!(resp.status, 200, "front: Pebble directory: {}", resp.body);
        let dir_json: Value = serde_json::from_str(&resp.body).expect("Pebble directory JSON");
        let url_field = |k: &str| -> String {
            dir_json[k]
                .as_str()
                .unwrap_or_else(|| panic!("Pebble directory has no {k}: {dir_json}"))
                .to_owned()
        };
        let new_order_path = path_of(&url_field("newOrder"));
        let new_nonce_url = url_field("newNonce");
        let pebble_json: Value = serde_json::from_slice(
            &std::fs::read(pebble.dir().join("pebble.json")).expect("read pebble.json"),
        )
        .expect("pebble.json is JSON");
        let upstream_validity = pebble_json["pebble"]["certificateValidityPeriod"]
            .as_u64()
            .unwrap_or(PEBBLE_DEFAULT_VALIDITY);

        let pebble_ca_pem = std::fs::read(pebble.ca_bundle()).expect("read Pebble's CA");
        let client = reqwest::Client::builder()
            .tls_certs_only(
                reqwest::Certificate::from_pem_bundle(&pebble_ca_pem).expect("Pebble CA PEM"),
            )
            .http1_only()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("front upstream client");

        let tls_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind front port");
        let crl_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind CRL port");
        let port = tls_listener.local_addr().expect("front addr").port();
        let crl_port = crl_listener.local_addr().expect("CRL addr").port();
        for l in [&tls_listener, &crl_listener] {
            l.set_nonblocking(true).expect("non-blocking listener");
        }

        let certs = CertificateDer::pem_file_iter(ca.cert_path())
            .expect("front cert PEM")
            .collect::<Result<Vec<_>, _>>()
            .expect("front cert PEM");
        let key = PrivateKeyDer::from_pem_file(ca.key_path()).expect("front key PEM");
        let mut tls_config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("front TLS config");
        tls_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config));

        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                window: opts.window,
                retry_after: opts.retry_after,
                already_replaced_left: opts.already_replaced,
                profiles: opts.profiles,
                ..State::default()
            }),
            origin: format!("https://127.0.0.1:{port}"),
            upstream: origin_of(&pebble.directory_url()),
            new_order_path,
            new_nonce_url,
            upstream_validity,
            client,
        });

        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("test-front".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("front tokio runtime");
                rt.block_on(async move {
                    let tls = tokio::net::TcpListener::from_std(tls_listener).expect("listener");
                    let crl = tokio::net::TcpListener::from_std(crl_listener).expect("listener");
                    let s = task_shared.clone();
                    tokio::spawn(async move {
                        while let Ok((tcp, _)) = tls.accept().await {
                            let (acceptor, s) = (acceptor.clone(), s.clone());
                            tokio::spawn(async move {
                                if let Ok(stream) = acceptor.accept(tcp).await {
                                    serve_acme(&s, stream).await;
                                }
                            });
                        }
                    });
                    let s = task_shared;
                    tokio::spawn(async move {
                        while let Ok((tcp, _)) = crl.accept().await {
                            let s = s.clone();
                            tokio::spawn(async move { serve_crl(&s, tcp).await });
                        }
                    });
                    let _ = shutdown_rx.await;
                });
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("spawn front thread");

        Front {
            shared,
            crl_port,
            ca_bundle,
            shutdown: Some(shutdown),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// `https://127.0.0.1:PORT/dir`.
    pub fn directory_url(&self) -> String {
        format!("{}/dir", self.shared.origin)
    }

    /// PEM bundle the client must trust: the front's own test CA (plus Pebble's).
    pub fn ca_bundle(&self) -> PathBuf {
        self.ca_bundle.clone()
    }

    /// Changes the suggested window (None: no `renewalInfo` in the directory, 404 for
    /// renewalInfo requests).
    pub fn set_window(&self, window: Option<(i64, i64)>) {
        self.shared.state().window = window;
    }

    /// CertIDs asked for at `/renewal-info/…`, in order (also while no window is set).
    pub fn renewal_info_requests(&self) -> Vec<String> {
        self.shared.state().renewal_info_requests.clone()
    }

    /// `replaces` of each newOrder payload (None when absent), in order, including the
    /// orders answered with `alreadyReplaced`.
    pub fn replaces_seen(&self) -> Vec<Option<String>> {
        self.shared.state().replaces_seen.clone()
    }

    /// `profile` of each newOrder payload (None when absent), in order, including the orders
    /// refused with `invalidProfile`.
    pub fn profiles_seen(&self) -> Vec<Option<String>> {
        self.shared.state().profiles_seen.clone()
    }

    /// `http://127.0.0.1:PORT2/NAME.crl`.
    pub fn crl_url(&self, name: &str) -> String {
        check_crl_name(name);
        format!("http://127.0.0.1:{}/{name}.crl", self.crl_port)
    }

    /// Publishes (or replaces) a DER CRL at [`Front::crl_url`]`(name)`.
    pub fn set_crl(&self, name: &str, der: Vec<u8>) {
        check_crl_name(name);
        self.shared.state().crls.insert(name.to_owned(), der);
    }

    /// Number of GETs of [`Front::crl_url`]`(name)` so far (published or not).
    pub fn crl_fetches(&self, name: &str) -> usize {
        let state = self.shared.state();
        state.crl_fetches.get(name).copied().unwrap_or(0)
    }

    /// One line per request handled, `METHOD target -> status`, with `[front]` for answers
    /// made (or changed) by the front itself; for failure messages.
    pub fn log(&self) -> String {
        self.shared.state().log.join("\n")
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn check_crl_name(name: &str) {
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "CRL name must be [A-Za-z0-9._-]+: {name:?}"
    );
}

/// RFC 9773 §4.1 CertID: base64url(AKI keyIdentifier) "." base64url(serial INTEGER content
/// bytes, including a leading 0x00 pad), without padding. Panics without an AKI keyIdentifier.
pub fn cert_id(cert_der: &[u8]) -> String {
    use x509_parser::extensions::ParsedExtension;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .unwrap_or_else(|e| panic!("cert_id: not an X.509 certificate: {e}"));
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
            _ => None,
        })
        .expect("cert_id: certificate has no AKI keyIdentifier");
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(aki.0),
        URL_SAFE_NO_PAD.encode(cert.tbs_certificate.raw_serial())
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, by hand

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Made or changed by the front (for the log).
    by_front: bool,
}

impl Response {
    fn front(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
            by_front: true,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    fn answer(self, close: bool) -> http1::Answer {
        http1::Answer {
            status: self.status,
            headers: self.headers,
            body: self.body,
            close,
        }
    }

    /// Replaces the body with `v` (Content-Length is computed when writing).
    fn set_json(&mut self, v: &Value) {
        self.body = serde_json::to_vec(v).expect("serialize JSON");
        self.by_front = true;
    }
}

/// One client connection to the HTTPS front: requests until the client closes.
async fn serve_acme<S: AsyncRead + AsyncWrite + Unpin>(shared: &Shared, s: S) {
    http1::serve(s, MAX_BODY, &Acme(shared)).await
}

/// The HTTPS front's requests: relayed to Pebble or answered by the front.
struct Acme<'a>(&'a Shared);

impl http1::Handler for Acme<'_> {
    async fn answer(&self, req: Result<Request, String>) -> http1::Answer {
        let shared = self.0;
        let resp = match req {
            Ok(req) => {
                let resp = handle(shared, &req).await;
                shared.state().log.push(format!(
                    "{} {} -> {}{}",
                    req.method,
                    req.target,
                    resp.status,
                    if resp.by_front { " [front]" } else { "" }
                ));
                resp
            }
            Err(e) => {
                shared.state().log.push(format!("bad request: {e}"));
                Response::front(400, "text/plain", format!("{e}\n").into_bytes())
            }
        };
        resp.answer(false)
    }
}

async fn handle(shared: &Shared, req: &Request) -> Response {
    let path = req.path();
    if req.method == "GET" && path == "/dir" {
        return directory(shared, req).await;
    }
    if req.method == "GET"
        && let Some(id) = path.strip_prefix("/renewal-info/")
    {
        return renewal_info(shared, id);
    }
    if req.method == "POST" && path == shared.new_order_path {
        return new_order(shared, req).await;
    }
    let mut resp = forward(shared, req).await;
    // Order objects created with `replaces` or a profile keep echoing it (finalize,
    // POST-as-GET).
    let (echo, profile) = {
        let state = shared.state();
        (
            state.echo.get(path).cloned(),
            state.profile_echo.get(path).cloned(),
        )
    };
    if let Some(replaces) = echo {
        add_field(&mut resp, "replaces", &replaces);
    }
    if let Some(profile) = profile {
        add_field(&mut resp, "profile", &profile);
    }
    resp
}

/// Forwards `req` to Pebble as it is (Host included) and returns Pebble's answer.
async fn forward(shared: &Shared, req: &Request) -> Response {
    let result = async {
        let method =
            reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|e| e.to_string())?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &req.headers {
            if hop_by_hop(k) {
                continue;
            }
            headers.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?,
                reqwest::header::HeaderValue::from_str(v).map_err(|e| e.to_string())?,
            );
        }
        let mut builder = shared
            .client
            .request(method, format!("{}{}", shared.upstream, req.target))
            .headers(headers);
        if !req.body.is_empty() || req.header("content-length").is_some() {
            builder = builder.body(req.body.clone());
        }
        let rsp = builder.send().await.map_err(|e| format!("{e:?}"))?;
        let status = rsp.status().as_u16();
        let headers = rsp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = rsp.bytes().await.map_err(|e| format!("{e:?}"))?.to_vec();
        Ok::<_, String>(Response {
            status,
            headers,
            body,
            by_front: false,
        })
    }
    .await;
    result.unwrap_or_else(|e| {
        Response::front(
            502,
            "text/plain",
            format!("front → Pebble: {e}\n").into_bytes(),
        )
    })
}

/// `GET /dir`: Pebble's directory, plus `renewalInfo` while a window is set.
async fn directory(shared: &Shared, req: &Request) -> Response {
    let mut resp = forward(shared, req).await;
    let (window, profiles) = {
        let state = shared.state();
        (state.window, state.profiles.clone())
    };
    if resp.status == 200
        && (window.is_some() || !profiles.is_empty())
        && let Ok(mut dir) = serde_json::from_slice::<Value>(&resp.body)
    {
        if window.is_some() {
            dir["renewalInfo"] = json!(format!("{}/renewal-info", shared.origin));
        }
        if !profiles.is_empty() {
            let listed: serde_json::Map<String, Value> = profiles
                .iter()
                .map(|p| (p.name.clone(), json!(p.description)))
                .collect();
            if !dir["meta"].is_object() {
                dir["meta"] = json!({});
            }
            dir["meta"]["profiles"] = Value::Object(listed);
        }
        resp.set_json(&dir);
    }
    resp
}

/// `GET /renewal-info/{CertID}`.
fn renewal_info(shared: &Shared, cert_id: &str) -> Response {
    let (window, retry_after) = {
        let mut state = shared.state();
        state.renewal_info_requests.push(cert_id.to_owned());
        (state.window, state.retry_after)
    };
    let Some((start, end)) = window else {
        return Response::front(404, "text/plain", b"renewalInfo is switched off\n".to_vec());
    };
    let rfc3339 = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .expect("window time in range")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format RFC 3339")
    };
    let body = json!({"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}});
    let mut resp = Response::front(
        200,
        "application/json",
        serde_json::to_vec(&body).expect("JSON"),
    );
    resp.headers
        .push(("Retry-After".into(), retry_after.to_string()));
    resp
}

/// The JSON payload of a flattened JWS body, if it decodes.
fn jws_payload(body: &[u8]) -> Option<Value> {
    let jws: Value = serde_json::from_slice(body).ok()?;
    let payload = jws.get("payload")?.as_str()?.trim_end_matches('=');
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// Why the front refuses an order's `profile`, if it does: not advertised, or advertised
/// with another lifetime than the Pebble behind issues.
fn profile_refusal(shared: &Shared, profile: &str) -> Option<String> {
    let state = shared.state();
    let Some(p) = state.profiles.iter().find(|p| p.name == profile) else {
        let names: Vec<&str> = state.profiles.iter().map(|p| p.name.as_str()).collect();
        return Some(format!(
            "profile {profile:?} is not offered (offered: {names:?}) (test front)"
        ));
    };
    (p.lifetime_secs != shared.upstream_validity).then(|| {
        format!(
            "profile {profile:?} issues {}-second certificates, and this front's Pebble issues {}-second ones: start Pebble with the profile's lifetime (test front)",
            p.lifetime_secs, shared.upstream_validity
        )
    })
}

/// `POST newOrder`: record `replaces` and `profile`, maybe answer alreadyReplaced or
/// invalidProfile, else forward and echo.
async fn new_order(shared: &Shared, req: &Request) -> Response {
    let payload = jws_payload(&req.body);
    let field = |name: &str| {
        payload
            .as_ref()
            .and_then(|p| p.get(name).cloned())
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    let (replaces, profile) = (field("replaces"), field("profile"));
    {
        let mut state = shared.state();
        state.profiles_seen.push(profile.clone());
        state.replaces_seen.push(replaces.clone());
    }
    if let Some(why) = profile.as_deref().and_then(|p| profile_refusal(shared, p)) {
        return problem(shared, 400, "invalidProfile", why).await;
    }
    let refuse = {
        let mut state = shared.state();
        let refuse = replaces.is_some() && state.already_replaced_left > 0;
        if refuse {
            state.already_replaced_left -= 1;
        }
        refuse
    };
    if refuse && let Some(replaces) = &replaces {
        let detail = format!("certificate {replaces} has already been replaced (test front)");
        return problem(shared, 409, "alreadyReplaced", detail).await;
    }
    let mut resp = forward(shared, req).await;
    if (200..300).contains(&resp.status) && (replaces.is_some() || profile.is_some()) {
        let mut paths: Vec<String> = resp.header("location").map(path_of).into_iter().collect();
        if let Ok(order) = serde_json::from_slice::<Value>(&resp.body) {
            paths.extend(order["finalize"].as_str().map(path_of));
        }
        if let Some(replaces) = &replaces {
            add_field(&mut resp, "replaces", replaces);
        }
        if let Some(profile) = &profile {
            add_field(&mut resp, "profile", profile);
        }
        let mut state = shared.state();
        for p in paths {
            if let Some(replaces) = &replaces {
                state.echo.insert(p.clone(), replaces.clone());
            }
            if let Some(profile) = &profile {
                state.profile_echo.insert(p, profile.clone());
            }
        }
    }
    resp
}

/// An ACME problem document made by the front (`kind` without its URN prefix), with the
/// headers a client expects on one (a fresh nonce, the directory link).
async fn problem(shared: &Shared, status: u16, kind: &str, detail: String) -> Response {
    let problem = json!({
        "type": format!("urn:ietf:params:acme:error:{kind}"),
        "detail": detail,
        "status": status,
    });
    let mut resp = Response::front(
        status,
        "application/problem+json",
        serde_json::to_vec(&problem).expect("JSON"),
    );
    resp.headers
        .push(("Cache-Control".into(), "no-store".into()));
    resp.headers.push((
        "Link".into(),
        format!("<{}/dir>;rel=\"index\"", shared.origin),
    ));
    match fresh_nonce(shared).await {
        Ok(nonce) => resp.headers.push(("Replay-Nonce".into(), nonce)),
        Err(e) => shared
            .state()
            .log
            .push(format!("no nonce for {status}: {e}")),
    }
    resp
}

/// Adds `"NAME": value` to a JSON object answer (anything else is left alone).
fn add_field(resp: &mut Response, name: &str, value: &str) {
    if let Ok(mut v @ Value::Object(_)) = serde_json::from_slice::<Value>(&resp.body) {
        v[name] = json!(value);
        resp.set_json(&v);
    }
}

/// A fresh nonce from Pebble (`HEAD newNonce`).
async fn fresh_nonce(shared: &Shared) -> Result<String, String> {
    let rsp = shared
        .client
        .head(&shared.new_nonce_url)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    rsp.headers()
        .get("replay-nonce")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("HEAD newNonce: {} without Replay-Nonce", rsp.status()))
}

/// One plain-HTTP connection to the CRL listener: one request, then close.
async fn serve_crl(shared: &Shared, s: tokio::net::TcpStream) {
    http1::serve(s, MAX_BODY, &Crl(shared)).await
}

/// The CRL listener's requests.
struct Crl<'a>(&'a Shared);

impl http1::Handler for Crl<'_> {
    async fn answer(&self, req: Result<Request, String>) -> http1::Answer {
        let shared = self.0;
        let req = match req {
            Ok(req) => req,
            Err(e) => {
                return Response::front(400, "text/plain", format!("{e}\n").into_bytes())
                    .answer(true);
            }
        };
        let name = req
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_suffix(".crl"))
            .filter(|n| !n.is_empty() && !n.contains('/'));
        let resp = {
            let mut state = shared.state();
            let resp = match name {
                Some(name) if req.method == "GET" || req.method == "HEAD" => {
                    if req.method == "GET" {
                        *state.crl_fetches.entry(name.to_owned()).or_default() += 1;
                    }
                    match state.crls.get(name) {
                        Some(der) => Response::front(200, "application/pkix-crl", der.clone()),
                        None => Response::front(404, "text/plain", b"no such CRL\n".to_vec()),
                    }
                }
                _ => Response::front(404, "text/plain", b"not found\n".to_vec()),
            };
            let line = format!("CRL {} {} -> {}", req.method, req.target, resp.status);
            state.log.push(line);
            resp
        };
        resp.answer(true)
    }
}
