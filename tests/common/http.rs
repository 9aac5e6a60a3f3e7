//! Blocking HTTPS GET for test code, trusting exactly one CA.

use std::path::Path;
use std::time::Duration;

use super::tls::ensure_crypto_provider;

/// Status and body of an HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET url` over HTTPS, trusting only the CA certificate(s) in the PEM file
/// `ca_pem_path` (5 s timeout). Returns `Err` with a description on any
/// connection, TLS or body error; HTTP error statuses are returned as `Ok`.
///
/// The request runs on a private current-thread tokio runtime inside a
/// helper thread, so this can be called both from plain `#[test]`s and from
/// inside an async runtime.
pub fn https_get(url: &str, ca_pem_path: &Path) -> Result<HttpResponse, String> {
    ensure_crypto_provider();
    let ca_pem = std::fs::read(ca_pem_path)
        .map_err(|e| format!("read CA {}: {e}", ca_pem_path.display()))?;
    let url = url.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        rt.block_on(async move {
            let certs = reqwest::Certificate::from_pem_bundle(&ca_pem)
                .map_err(|e| format!("CA PEM: {e}"))?;
            let client = reqwest::Client::builder()
                .tls_certs_only(certs)
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| format!("reqwest client: {e}"))?;
            let resp = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e:?}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .text()
                .await
                .map_err(|e| format!("GET {url}: body: {e}"))?;
            Ok(HttpResponse { status, body })
        })
    })
    .join()
    .map_err(|_| "https_get helper thread panicked".to_owned())?
}

/// Plain-HTTP `GET path` against `127.0.0.1:port` (HTTP/1.0, `Host:
/// localhost`, 5 s timeouts), e.g. to check what an http-01 webroot serves.
pub fn http_get(port: u16, path: &str) -> Result<HttpResponse, String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = Duration::from_secs(5);
    let mut sock = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    sock.set_read_timeout(Some(timeout))
        .and_then(|()| sock.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("set timeouts: {e}"))?;
    write!(sock, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("send request to {addr}: {e}"))?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw)
        .map_err(|e| format!("read response from {addr}: {e}"))?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response from {addr}: {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in response from {addr}: {head:?}"))?;
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}
