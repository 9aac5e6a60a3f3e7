//! HTTP/1.1 by hand for the in-process fakes (the fake DNSimple API and the ACME front): one
//! request at a time off a byte stream (`Content-Length` bodies only, head and body capped),
//! answers always with a `Content-Length`. Just what the fakes need, so that a test sees and
//! can bend every byte on the wire.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Cap on a request's line and headers.
const MAX_HEAD: usize = 64 * 1024;

pub struct Request {
    pub method: String,
    /// Request target as sent (origin form: path and query).
    pub target: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// First value of `name` (case-insensitive) in a header list.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Connection-level headers: never relayed, never written from a response's header list
/// (`write_response` sets `Content-Length` and `Connection` itself).
pub fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request from `s`; `buf` carries bytes over between requests on one connection.
/// `Ok(None)` on a clean end of stream between requests; a body over `max_body` is an error.
pub async fn read_request<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    max_body: usize,
) -> Result<Option<Request>, String> {
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err("request head too large".into());
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("connection closed mid-request".into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).map_err(|_| "non-UTF-8 head")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {request_line:?}"));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(format!("unsupported request line {request_line:?}"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    if header(&headers, "transfer-encoding").is_some() {
        return Err("chunked request bodies are not supported".into());
    }
    let len: usize = match header(&headers, "content-length") {
        Some(v) => v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?,
        None => 0,
    };
    if len > max_body {
        return Err(format!("request body too large ({len} bytes)"));
    }
    let body_start = head_end + 4;
    while buf.len() < body_start + len {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[body_start..body_start + len].to_vec();
    buf.drain(..body_start + len);
    Ok(Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
        body,
    }))
}

/// Writes a response: status line, `headers` (less hop-by-hop ones and any
/// `Content-Length`), `Content-Length`, `Connection: close` when `close`, then the body
/// (none for HEAD, 1xx, 204 and 304).
pub async fn write_response<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    head_request: bool,
    close: bool,
) -> std::io::Result<()> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|c| c.canonical_reason())
        .unwrap_or("");
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (k, v) in headers {
        if !hop_by_hop(k) && !k.eq_ignore_ascii_case("content-length") {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    let bodyless = status == 204 || status == 304 || status < 200;
    if !bodyless {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !bodyless && !head_request {
        bytes.extend_from_slice(body);
    }
    s.write_all(&bytes).await?;
    s.flush().await
}

/// What one request is answered with.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this answer.
    pub close: bool,
}

/// Answers the requests of one fake.
pub trait Handler: Sync {
    /// The answer to a request, or to why one could not be read (then the connection is
    /// closed after it).
    fn answer(
        &self,
        req: Result<Request, String>,
    ) -> impl std::future::Future<Output = Answer> + Send;
}

/// Serves one connection: requests until either side closes (or an answer says close).
pub async fn serve<S, H>(mut s: S, max_body: usize, handler: &H)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut buf = Vec::new();
    loop {
        let (answer, head_request, close) = match read_request(&mut s, &mut buf, max_body).await {
            Ok(None) => break,
            Ok(Some(req)) => {
                let head_request = req.method == "HEAD";
                let client_closes = req
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                let answer = handler.answer(Ok(req)).await;
                let close = answer.close || client_closes;
                (answer, head_request, close)
            }
            Err(e) => (handler.answer(Err(e)).await, false, true),
        };
        let a = &answer;
        let sent = write_response(&mut s, a.status, &a.headers, &a.body, head_request, close).await;
        if sent.is_err() || close {
            break;
        }
    }
    let _ = s.shutdown().await;
}
