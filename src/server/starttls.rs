//! The plain-text part of a mail server's STARTTLS port, spoken before the probe's TLS
//! handshake: SMTP (`EHLO`, `STARTTLS`, RFC 3207), IMAP (`a001 STARTTLS`, RFC 9051) and POP3
//! (`STLS`, RFC 2595). Lines and replies are size-capped; the caller's timeout bounds the
//! whole exchange. A server that sends anything after its go-ahead is refused: those bytes
//! would be taken for the start of the TLS handshake (the STARTTLS command-injection class of
//! bugs), and no honest server sends them.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Starttls;

/// Longest line accepted from the server (RFC 5321 allows 512 octets in a reply line).
const MAX_LINE: usize = 2048;
/// Most bytes accepted from the server before the go-ahead, greeting and replies together.
const MAX_TOTAL: usize = 64 * 1024;
/// Most lines in one multi-line SMTP reply or untagged IMAP responses before the tagged one.
const MAX_LINES: usize = 200;

/// Speak `proto`'s upgrade on `tcp` up to the point where the TLS handshake starts.
pub(crate) async fn upgrade(
    tcp: &mut TcpStream,
    proto: Starttls,
    addr: SocketAddr,
) -> Result<(), String> {
    let mut conv = Conversation {
        tcp,
        buf: Vec::new(),
        read: 0,
        proto,
        addr,
    };
    match proto {
        Starttls::Smtp => conv.smtp().await?,
        Starttls::Imap => conv.imap().await?,
        Starttls::Pop3 => conv.pop3().await?,
    }
    if !conv.buf.is_empty() {
        return Err(format!(
            "{} {addr} sent data after accepting STARTTLS, before the TLS handshake; refusing it",
            proto.as_str()
        ));
    }
    Ok(())
}

struct Conversation<'a> {
    tcp: &'a mut TcpStream,
    /// Received and not consumed yet.
    buf: Vec<u8>,
    /// Bytes received so far.
    read: usize,
    proto: Starttls,
    addr: SocketAddr,
}

impl Conversation<'_> {
    /// "smtp 127.0.0.1:25" — how errors name the endpoint.
    fn who(&self) -> String {
        format!("{} {}", self.proto.as_str(), self.addr)
    }

    async fn send(&mut self, line: &str) -> Result<(), String> {
        self.tcp
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| format!("{}: failed to send {line:?}: {e}", self.who()))
    }

    /// One line without its CRLF (or bare LF).
    async fn line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buf.len() > MAX_LINE {
                return Err(format!(
                    "{}: a line longer than {MAX_LINE} bytes; not a mail server's reply",
                    self.who()
                ));
            }
            if self.read > MAX_TOTAL {
                return Err(format!(
                    "{}: more than {MAX_TOTAL} bytes before the TLS handshake; not a mail server's reply",
                    self.who()
                ));
            }
            let mut chunk = [0u8; 1024];
            let n = self
                .tcp
                .read(&mut chunk)
                .await
                .map_err(|e| format!("{}: {e}", self.who()))?;
            if n == 0 {
                return Err(format!(
                    "{} closed the connection before STARTTLS was accepted",
                    self.who()
                ));
            }
            self.read += n;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// An SMTP reply: its code and the text of each line (`250-A`, `250 B` → 250, [A, B]).
    async fn smtp_reply(&mut self) -> Result<(u16, Vec<String>), String> {
        let mut code = None;
        let mut texts = Vec::new();
        loop {
            let line = self.line().await?;
            let (head, rest) = line.split_at(line.len().min(3));
            let this: Option<u16> = head
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| head.parse().ok())
                .flatten();
            let Some(this) = this.filter(|c| code.is_none_or(|first| first == *c)) else {
                return Err(format!(
                    "{}: not an SMTP reply: {}",
                    self.who(),
                    shown(&line)
                ));
            };
            code = Some(this);
            let (more, text) = match rest.as_bytes().first() {
                Some(b'-') => (true, &rest[1..]),
                Some(b' ') => (false, &rest[1..]),
                None => (false, ""),
                Some(_) => {
                    return Err(format!(
                        "{}: not an SMTP reply: {}",
                        self.who(),
                        shown(&line)
                    ));
                }
            };
            texts.push(text.to_string());
            if !more {
                return Ok((this, texts));
            }
            if texts.len() >= MAX_LINES {
                return Err(format!(
                    "{}: a reply of more than {MAX_LINES} lines",
                    self.who()
                ));
            }
        }
    }

    async fn smtp(&mut self) -> Result<(), String> {
        let (code, texts) = self.smtp_reply().await?;
        if code != 220 {
            return Err(format!(
                "{} greeted with {code} {}, not 220",
                self.who(),
                shown(&texts.join(" / "))
            ));
        }
        self.send("EHLO certagent").await?;
        let (code, texts) = self.smtp_reply().await?;
        if code != 250 {
            return Err(format!(
                "{} answered EHLO with {code} {}",
                self.who(),
                shown(&texts.join(" / "))
            ));
        }
        // The first line is the server's name; each further line one extension.
        let offers = texts.iter().skip(1).any(|t| {
            t.split_whitespace()
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case("STARTTLS"))
        });
        if !offers {
            let listed: Vec<&str> = texts.iter().skip(1).map(String::as_str).collect();
            return Err(format!(
                "{} does not offer STARTTLS (its EHLO reply lists {}); enable TLS on this port (Postfix: smtpd_tls_security_level = may) or remove starttls from the endpoint",
                self.who(),
                shown(&listed.join(", "))
            ));
        }
        self.send("STARTTLS").await?;
        let (code, texts) = self.smtp_reply().await?;
        if code != 220 {
            return Err(format!(
                "{} refused STARTTLS: {code} {}",
                self.who(),
                shown(&texts.join(" / "))
            ));
        }
        Ok(())
    }

    async fn imap(&mut self) -> Result<(), String> {
        let greeting = self.line().await?;
        if !starts_with_ignore_case(&greeting, "* OK") {
            return Err(format!(
                "{} greeted with {}, not \"* OK\"",
                self.who(),
                shown(&greeting)
            ));
        }
        self.send("a001 STARTTLS").await?;
        for _ in 0..MAX_LINES {
            let line = self.line().await?;
            if line.starts_with("* ") {
                continue; // untagged data, e.g. a CAPABILITY the server volunteers
            }
            if starts_with_ignore_case(&line, "a001 OK") {
                return Ok(());
            }
            if line.starts_with("a001 ") {
                return Err(format!("{} refused STARTTLS: {}", self.who(), shown(&line)));
            }
            return Err(format!(
                "{}: not an IMAP response: {}",
                self.who(),
                shown(&line)
            ));
        }
        Err(format!(
            "{}: more than {MAX_LINES} untagged responses to STARTTLS",
            self.who()
        ))
    }

    async fn pop3(&mut self) -> Result<(), String> {
        let greeting = self.line().await?;
        if !greeting.starts_with("+OK") {
            return Err(format!(
                "{} greeted with {}, not \"+OK\"",
                self.who(),
                shown(&greeting)
            ));
        }
        self.send("STLS").await?;
        let answer = self.line().await?;
        if !answer.starts_with("+OK") {
            return Err(format!(
                "{} refused STARTTLS (STLS): {}",
                self.who(),
                shown(&answer)
            ));
        }
        Ok(())
    }
}

fn starts_with_ignore_case(line: &str, prefix: &str) -> bool {
    line.len() >= prefix.len()
        && line.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// A server's text in an error: quoted, control characters escaped, at most 200 characters.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(200).collect();
    let more = if cut.len() < text.len() { "..." } else { "" };
    format!("{cut:?}{more}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-connection server on 127.0.0.1 that answers each line it reads with the next
    /// script entry (the first is the greeting, sent at once). Returns its address and what
    /// it received.
    async fn scripted(script: Vec<&'static str>) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut steps = script.into_iter();
            if let Some(greeting) = steps.next() {
                let _ = s.write_all(greeting.as_bytes()).await;
            }
            for answer in steps {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).await.unwrap_or(0) == 1 {
                    line.push(b[0]);
                    if b[0] == b'\n' {
                        break;
                    }
                }
                got.extend_from_slice(&line);
                if s.write_all(answer.as_bytes()).await.is_err() {
                    break;
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        });
        (addr, task)
    }

    async fn talk(proto: Starttls, script: Vec<&'static str>) -> (Result<(), String>, String) {
        let (addr, server) = scripted(script).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let result = upgrade(&mut tcp, proto, addr).await;
        drop(tcp);
        let sent = server.await.unwrap();
        (
            result.map_err(|e| e.replace(&addr.to_string(), "ADDR")),
            sent,
        )
    }

    #[tokio::test]
    async fn smtp_reads_multi_line_replies_and_asks_for_starttls() {
        let (r, sent) = talk(
            Starttls::Smtp,
            vec![
                "220-mail.test ESMTP\r\n220 second line\r\n",
                "250-mail.test\r\n250-PIPELINING\r\n250-starttls\r\n250 8BITMIME\r\n",
                "220 2.0.0 Ready to start TLS\r\n",
            ],
        )
        .await;
        assert_eq!(r, Ok(()));
        assert_eq!(sent, "EHLO certagent\r\nSTARTTLS\r\n");
    }

    #[tokio::test]
    async fn smtp_without_starttls_or_with_a_refusal_is_a_clear_error() {
        let (r, sent) = talk(
            Starttls::Smtp,
            vec![
                "220 mail.test ESMTP\r\n",
                "250-mail.test\r\n250-PIPELINING\r\n250 SIZE 10240000\r\n",
            ],
        )
        .await;
        assert_eq!(
            r.unwrap_err(),
            "smtp ADDR does not offer STARTTLS (its EHLO reply lists \"PIPELINING, SIZE 10240000\"); enable TLS on this port (Postfix: smtpd_tls_security_level = may) or remove starttls from the endpoint"
        );
        assert_eq!(sent, "EHLO certagent\r\n");
        let (r, _) = talk(
            Starttls::Smtp,
            vec![
                "220 mail.test\r\n",
                "250-mail.test\r\n250 STARTTLS\r\n",
                "454 4.7.0 TLS not available due to local problem\r\n",
            ],
        )
        .await;
        assert_eq!(
            r.unwrap_err(),
            "smtp ADDR refused STARTTLS: 454 \"4.7.0 TLS not available due to local problem\""
        );
        let (r, _) = talk(Starttls::Smtp, vec!["554 go away\r\n"]).await;
        assert_eq!(
            r.unwrap_err(),
            "smtp ADDR greeted with 554 \"go away\", not 220"
        );
        let (r, _) = talk(Starttls::Smtp, vec!["220-a\r\n250 b\r\n"]).await;
        assert_eq!(r.unwrap_err(), "smtp ADDR: not an SMTP reply: \"250 b\"");
    }

    #[tokio::test]
    async fn data_after_the_go_ahead_is_refused() {
        let (r, _) = talk(
            Starttls::Pop3,
            vec!["+OK ready\r\n", "+OK begin TLS\r\nINJECTED\r\n"],
        )
        .await;
        assert_eq!(
            r.unwrap_err(),
            "pop3 ADDR sent data after accepting STARTTLS, before the TLS handshake; refusing it"
        );
    }

    #[tokio::test]
    async fn imap_and_pop3_upgrade_or_say_why_not() {
        let (r, sent) = talk(
            Starttls::Imap,
            vec![
                "* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n",
                "* CAPABILITY IMAP4rev1 STARTTLS\r\na001 OK Begin TLS negotiation now.\r\n",
            ],
        )
        .await;
        assert_eq!(r, Ok(()));
        assert_eq!(sent, "a001 STARTTLS\r\n");
        let (r, _) = talk(
            Starttls::Imap,
            vec!["* OK ready\r\n", "a001 BAD TLS support isn't enabled.\r\n"],
        )
        .await;
        assert_eq!(
            r.unwrap_err(),
            "imap ADDR refused STARTTLS: \"a001 BAD TLS support isn't enabled.\""
        );
        let (r, _) = talk(Starttls::Imap, vec!["* BYE too many\r\n"]).await;
        assert_eq!(
            r.unwrap_err(),
            "imap ADDR greeted with \"* BYE too many\", not \"* OK\""
        );
        let (r, sent) = talk(Starttls::Pop3, vec!["+OK Dovecot ready.\r\n", "+OK\r\n"]).await;
        assert_eq!(r, Ok(()));
        assert_eq!(sent, "STLS\r\n");
        let (r, _) = talk(Starttls::Pop3, vec!["+OK hi\r\n", "-ERR no TLS\r\n"]).await;
        assert_eq!(
            r.unwrap_err(),
            "pop3 ADDR refused STARTTLS (STLS): \"-ERR no TLS\""
        );
        let (r, _) = talk(Starttls::Pop3, vec![]).await;
        assert_eq!(
            r.unwrap_err(),
            "pop3 ADDR closed the connection before STARTTLS was accepted"
        );
    }

    #[tokio::test]
    async fn endless_lines_and_replies_are_cut_off() {
        let long: &'static str = Box::leak("2".repeat(5000).into_boxed_str());
        let (r, _) = talk(Starttls::Smtp, vec![long]).await;
        assert_eq!(
            r.unwrap_err(),
            "smtp ADDR: a line longer than 2048 bytes; not a mail server's reply"
        );
        let many: &'static str = Box::leak("220-x\r\n".repeat(300).into_boxed_str());
        let (r, _) = talk(Starttls::Smtp, vec![many]).await;
        assert_eq!(r.unwrap_err(), "smtp ADDR: a reply of more than 200 lines");
    }
}
