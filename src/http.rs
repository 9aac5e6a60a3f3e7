//! One HTTP stack for every outbound call — ACME, DNSimple, CRL and ARI fetches, webhooks:
//! reqwest on rustls/aws-lc-rs, built in one place (user agent, timeouts, no redirects, the
//! TLS roots or a `ca_bundle`), with a body-size cap, and the `Retry-After` of the last
//! throttled answer kept for the scheduler (instant-acme does not surface it).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::clock::Clock;
use crate::error::{Context, Error, Result};
use crate::store::fsutil;

/// No answer certagent expects is larger than this (a chain is a few KiB).
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;

/// How long a client waits; the one setting in which callers differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timeouts {
    /// For the TCP and TLS handshakes; `None`: only `total` applies.
    pub(crate) connect: Option<Duration>,
    /// For a whole request, answer included.
    pub(crate) total: Duration,
}

impl Timeouts {
    /// ACME, DNSimple, CRLs and ARI.
    pub(crate) const API: Timeouts = Timeouts {
        connect: Some(Duration::from_secs(10)),
        total: Duration::from_secs(60),
    };
}

/// The one place a reqwest client is built: certagent's user agent, `timeouts`, redirects
/// not followed, and the system's TLS roots or, with `ca_bundle`, only the CAs in that file.
pub(crate) fn client(timeouts: Timeouts, ca_bundle: Option<&Path>) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("certagent/", env!("CARGO_PKG_VERSION")))
        .timeout(timeouts.total)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(connect) = timeouts.connect {
        builder = builder.connect_timeout(connect);
    }
    if let Some(path) = ca_bundle {
        let pem = fsutil::read_capped(path, crate::keys::MAX_PEM_BYTES)?.ok_or_else(|| {
            Error::msg(format!(
                "failed to read ca_bundle {:?}: no such file",
                path.display().to_string()
            ))
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!("failed to read ca_bundle {:?}", path.display().to_string())
        })?;
        builder = builder.tls_certs_only(certs);
    }
    builder.build().context("failed to set up HTTPS client")
}

#[derive(Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    /// Seconds from the last 429/503 `Retry-After` header seen.
    pub(crate) retry_after: Arc<Mutex<Option<i64>>>,
    /// Seconds from the last successful answer's `Retry-After` (an order still processing),
    /// until the poller takes it.
    poll_after: Arc<Mutex<Option<i64>>>,
    /// A server's certificate was refused as not signed by a trusted CA (see
    /// `untrusted_certificate`): the issuer then hints at its `ca_bundle`. instant-acme
    /// turns the client's errors into text, so this is how the fact survives.
    pub(crate) untrusted_server: Arc<AtomicBool>,
    /// "Now" for a `Retry-After` given as a date.
    clock: Clock,
}

impl Http {
    pub(crate) fn new(ca_bundle: Option<&Path>, clock: Clock) -> Result<Http> {
        let client = client(Timeouts::API, ca_bundle)?;
        Ok(Http {
            client,
            retry_after: Arc::new(Mutex::new(None)),
            poll_after: Arc::new(Mutex::new(None)),
            untrusted_server: Arc::new(AtomicBool::new(false)),
            clock,
        })
    }

    /// The `Retry-After` (seconds, not negative) of the last successful answer that had one,
    /// once: the CA's wish for the next look at an order.
    pub(crate) fn take_poll_after(&self) -> Option<u64> {
        let secs = self.poll_after.lock().ok()?.take()?;
        Some(u64::try_from(secs).unwrap_or(0))
    }
}

impl Http {
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// GET `url` and read at most `MAX_BODY_BYTES` of it.
    pub(crate) async fn get_capped(
        &self,
        url: &str,
    ) -> Result<(http::StatusCode, http::HeaderMap, Vec<u8>)> {
        self.get_capped_to(url, MAX_BODY_BYTES).await
    }

    /// GET `url` and read at most `cap` bytes of it.
    pub(crate) async fn get_capped_to(
        &self,
        url: &str,
        cap: usize,
    ) -> Result<(http::StatusCode, http::HeaderMap, Vec<u8>)> {
        let fetch = |e: reqwest::Error| {
            if untrusted_certificate(&e) {
                self.untrusted_server.store(true, Ordering::Relaxed);
            }
            Error::msg(format!("failed to fetch {url}: {}", describe_reqwest(&e)))
        };
        let mut rsp = self.client.get(url).send().await.map_err(fetch)?;
        let (status, headers) = (rsp.status(), rsp.headers().clone());
        let mut body = Vec::new();
        while let Some(chunk) = rsp.chunk().await.map_err(fetch)? {
            if body.len() + chunk.len() > cap {
                return Err(Error::msg(format!(
                    "failed to fetch {url}: larger than {} KiB",
                    cap >> 10
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body))
    }
}

/// Parse `Retry-After` as delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<i64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<i64>() {
        return Some(secs.max(0));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(now)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    )
}

fn httpdate_parse(v: &str) -> Option<std::time::SystemTime> {
    // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: u32 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as u8
        + 1;
    let year: i32 = parts[3].parse().ok()?;
    let hms: Vec<u8> = parts[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day as u8).ok()?;
    let t = time::Time::from_hms(hms[0], hms[1], hms[2]).ok()?;
    let ts = time::PrimitiveDateTime::new(date, t)
        .assume_utc()
        .unix_timestamp();
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).ok()?))
}

impl HttpClient for Http {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.client.clone();
        let retry_after = self.retry_after.clone();
        let poll_after = self.poll_after.clone();
        let untrusted_server = self.untrusted_server.clone();
        let clock = self.clock;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| other(format!("request body: {e:?}")))?
                .to_bytes();
            let req = reqwest::Request::try_from(http::Request::from_parts(parts, body))
                .map_err(|e| other(e.to_string()))?;
            let rsp = client.execute(req).await.map_err(|e| {
                if untrusted_certificate(&e) {
                    untrusted_server.store(true, Ordering::Relaxed);
                }
                other(describe_reqwest(&e))
            })?;
            let status = rsp.status();
            let ra = rsp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, system_time(clock.now())));
            if status == http::StatusCode::TOO_MANY_REQUESTS
                || status == http::StatusCode::SERVICE_UNAVAILABLE
            {
                if let Ok(mut slot) = retry_after.lock() {
                    *slot = ra;
                }
            } else if status.is_success()
                && ra.is_some()
                && let Ok(mut slot) = poll_after.lock()
            {
                *slot = ra;
            }
            capped_response(rsp).await
        })
    }
}

fn other(e: String) -> instant_acme::Error {
    instant_acme::Error::Other(e.into())
}

/// `rsp` as instant-acme's response type, refused when its body is larger than
/// `MAX_BODY_BYTES` (by its length header, or as it is read).
async fn capped_response(mut rsp: reqwest::Response) -> Result<BytesResponse, instant_acme::Error> {
    if rsp
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(other(format!(
            "answer from the CA is larger than {} KiB",
            MAX_BODY_BYTES >> 10
        )));
    }
    let mut builder = http::Response::builder()
        .status(rsp.status())
        .version(rsp.version());
    if let Some(h) = builder.headers_mut() {
        *h = rsp.headers().clone();
    }
    let mut buf = Vec::new();
    while let Some(chunk) = rsp.chunk().await.map_err(|e| other(describe_reqwest(&e)))? {
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(other(format!(
                "answer from the CA is larger than {} KiB",
                MAX_BODY_BYTES >> 10
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    let rsp = builder
        .body(Full::new(Bytes::from(buf)))
        .map_err(|e| other(e.to_string()))?;
    Ok(BytesResponse::from(rsp))
}

/// `now` (Unix seconds) as the `SystemTime` that `parse_retry_after` compares dates with.
fn system_time(now: crate::core::Timestamp) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(now).unwrap_or(0))
}

/// Whether `e` failed because the server's certificate chain does not lead to a trusted CA
/// (rustls: `UnknownIssuer`, `BadSignature`, or a webpki error such as `CaUsedAsEndEntity`) —
/// what a `ca_bundle` fixes, unlike an expired certificate or one for another name.
pub(crate) fn untrusted_certificate(e: &reqwest::Error) -> bool {
    use rustls::CertificateError as C;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(c)) = err.downcast_ref::<rustls::Error>() {
            return matches!(c, C::UnknownIssuer | C::BadSignature | C::Other(_));
        }
        // tokio-rustls hands the rustls error on inside an io::Error, whose `source` skips it.
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// reqwest's Display hides the cause ("error sending request"); walk the chain.
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot plain HTTP server answering every request with `answer`.
    async fn serve(answer: Vec<u8>) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(&answer).await;
            }
        });
        port
    }

    fn get(port: u16) -> http::Request<BodyWrapper<Bytes>> {
        http::Request::get(format!("http://127.0.0.1:{port}/dir"))
            .body(BodyWrapper::from(Vec::new()))
            .unwrap()
    }

    #[tokio::test]
    async fn throttled_answers_leave_their_retry_after_for_the_scheduler() {
        let port = serve(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        )
        .await;
        let client = Http::new(None, Clock::new()).unwrap();
        let rsp = client.request(get(port)).await.unwrap();
        assert_eq!(rsp.parts.status, 429);
        assert_eq!(*client.retry_after.lock().unwrap(), Some(120));
    }

    #[tokio::test]
    async fn a_processing_answers_retry_after_is_kept_for_the_poller_once() {
        let port =
            serve(b"HTTP/1.1 200 OK\r\nRetry-After: 3\r\nContent-Length: 2\r\n\r\n{}".to_vec())
                .await;
        let client = Http::new(None, Clock::new()).unwrap();
        assert_eq!(client.take_poll_after(), None);
        client.request(get(port)).await.unwrap();
        assert_eq!(client.take_poll_after(), Some(3));
        assert_eq!(client.take_poll_after(), None, "taken once");
        assert_eq!(*client.retry_after.lock().unwrap(), None, "not a throttle");
    }

    #[tokio::test]
    async fn oversized_answers_are_refused() {
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            2 * MAX_BODY_BYTES
        )
        .into_bytes();
        answer.extend(vec![b'x'; 2 * MAX_BODY_BYTES]);
        let port = serve(answer).await;
        let err = Http::new(None, Clock::new())
            .unwrap()
            .request(get(port))
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "answer from the CA is larger than 1024 KiB"
        );
        // Without a Content-Length, the cap applies while reading.
        let mut answer = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        answer.extend(vec![b'x'; 2 * MAX_BODY_BYTES]);
        let port = serve(answer).await;
        let err = Http::new(None, Clock::new())
            .unwrap()
            .request(get(port))
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "answer from the CA is larger than 1024 KiB"
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(120));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(60)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:40:37 GMT", now),
            Some(0)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), Some(0));
    }
}
