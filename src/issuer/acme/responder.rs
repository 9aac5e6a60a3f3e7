//! Answering the CA's challenges: the built-in http-01 listener, files in a webroot, or dns-01
//! TXT records through DNSimple or RFC 2136 updates; tokens checked so they cannot name other files.

use super::*;

/// Serves http-01 key authorizations: files in a webroot, or a built-in listener.
pub(super) enum Responder {
    Webroot {
        dir: PathBuf,
        written: Vec<PathBuf>,
    },
    Listen {
        tokens: Arc<Mutex<HashMap<String, String>>>,
        task: tokio::task::JoinHandle<()>,
    },
    /// dns-01 through DNSimple: TXT records created, waited for, and deleted afterwards.
    Dns {
        client: crate::issuer::dnsimple::Client,
        zone: Option<String>,
        propagation: Duration,
        created: Vec<(String, u64)>,
    },
    /// dns-01 by RFC 2136: TXT records added by signed updates, deleted afterwards.
    Rfc2136 {
        updater: crate::issuer::rfc2136::Updater,
        propagation: Duration,
        added: Vec<crate::issuer::rfc2136::Added>,
    },
}

/// Tokens come from the CA: only base64url characters may name a file (RFC 8555 §8.3).
pub(crate) fn check_token(token: &str) -> Result<()> {
    let ok = !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::msg("the CA sent an invalid challenge token"))
    }
}

impl Responder {
    pub(super) async fn start(cfg: &Challenge, clock: Clock) -> Result<Responder> {
        match cfg {
            Challenge::Http01(Http01::Webroot(root)) => {
                let dir = root.join(".well-known").join("acme-challenge");
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("failed to create {:?}", dir.display().to_string()))?;
                Ok(Responder::Webroot {
                    dir,
                    written: Vec::new(),
                })
            }
            Challenge::Http01(Http01::Listen(addr)) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("failed to listen on {addr} for http-01"))?;
                let tokens: Arc<Mutex<HashMap<String, String>>> = Arc::default();
                let shared = tokens.clone();
                let task = tokio::spawn(async move {
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(serve_challenge(stream, shared.clone()));
                    }
                });
                Ok(Responder::Listen { tokens, task })
            }
            Challenge::Dns01 {
                api,
                zone,
                propagation_timeout,
            } => Ok(Responder::Dns {
                client: crate::issuer::dnsimple::Client::connect(api, clock).await?,
                zone: zone.clone(),
                propagation: Duration::from_secs(propagation_timeout.0.max(1) as u64),
                created: Vec::new(),
            }),
            Challenge::Rfc2136(cfg) => Ok(Responder::Rfc2136 {
                updater: crate::issuer::rfc2136::Updater::new(cfg)?,
                propagation: Duration::from_secs(cfg.propagation_timeout.0.max(1) as u64),
                added: Vec::new(),
            }),
        }
    }

    pub(super) fn challenge_type(&self) -> ChallengeType {
        match self {
            Responder::Dns { .. } | Responder::Rfc2136 { .. } => ChallengeType::Dns01,
            _ => ChallengeType::Http01,
        }
    }

    /// Publish the answer for `ident`; for DNS, wait until DNSimple reports it distributed to
    /// its name servers (RFC 8555 §8.4 validation would fail before).
    pub(super) async fn add(
        &mut self,
        ident: &str,
        token: &str,
        key_auth: &str,
        dns_value: &str,
    ) -> Result<()> {
        check_token(token)?;
        match self {
            Responder::Webroot { dir, written } => {
                let path = dir.join(token);
                fsutil::replace_file(&path, key_auth.as_bytes(), Perms::mode(0o644))?;
                written.push(path);
            }
            Responder::Listen { tokens, .. } => {
                if let Ok(mut t) = tokens.lock() {
                    t.insert(token.to_string(), key_auth.to_string());
                }
            }
            Responder::Dns {
                client,
                zone,
                propagation,
                created,
            } => {
                let ident = ident.trim_start_matches("*.");
                let zone = zone.clone().unwrap_or_else(|| registrable_guess(ident));
                let name = match ident.strip_suffix(&zone) {
                    Some("") => "_acme-challenge".to_string(),
                    Some(sub) if sub.ends_with('.') => {
                        format!("_acme-challenge.{}", sub.trim_end_matches('.'))
                    }
                    _ => {
                        return Err(Error::msg(format!(
                            "{ident:?} is not in the DNS zone {zone:?}"
                        ))
                        .with_hint("set dns_zone"));
                    }
                };
                let id = client.create_txt(&zone, &name, dns_value).await?;
                created.push((zone.clone(), id));
                log::info!(zone = zone.as_str(), record = name.as_str(); "published dns-01 TXT record");
                let deadline = tokio::time::Instant::now() + *propagation;
                let mut delay = Duration::from_millis(250);
                while !client.distributed(&zone, id).await? {
                    if tokio::time::Instant::now() + delay > deadline {
                        return Err(Error::msg(format!(
                            "the TXT record {name}.{zone} was not distributed within {}s",
                            propagation.as_secs()
                        )));
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
            Responder::Rfc2136 {
                updater,
                propagation,
                added,
            } => {
                let record = updater.locate(ident, dns_value).await?;
                match updater.add(&record).await {
                    Ok(()) => {}
                    // The update may have been applied and only its answer lost: delete it
                    // afterwards too. A refusal changed nothing.
                    Err(e @ Error::Unavailable { .. }) => {
                        added.push(record);
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
                log::info!(zone = record.zone.as_str(), record = record.name.as_str(); "published dns-01 TXT record by RFC 2136 update");
                added.push(record.clone());
                updater.wait_served(&record, *propagation).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn cleanup(self) {
        match self {
            Responder::Webroot { written, .. } => {
                for p in written {
                    let _ = std::fs::remove_file(p);
                }
            }
            Responder::Listen { task, .. } => task.abort(),
            Responder::Dns {
                client, created, ..
            } => {
                for (zone, id) in created {
                    if let Err(e) = client.delete_record(&zone, id).await {
                        log::warn!(zone = zone.as_str(); "failed to remove a dns-01 TXT record: {e}");
                    }
                }
            }
            Responder::Rfc2136 { updater, added, .. } => {
                for record in added {
                    if let Err(e) = updater.delete(&record).await {
                        log::warn!(zone = record.zone.as_str(), record = record.name.as_str(); "failed to remove a dns-01 TXT record: {e}");
                    }
                }
            }
        }
    }
}

/// Without `dns_zone`: the last two labels (right for example.com, wrong for example.co.uk).
pub(super) fn registrable_guess(name: &str) -> String {
    let labels: Vec<&str> = name.split('.').collect();
    labels[labels.len().saturating_sub(2)..].join(".")
}

/// A minimal HTTP/1.1 answer for `GET /.well-known/acme-challenge/TOKEN`: bounded request
/// size and time, one request per connection.
pub(super) async fn serve_challenge(
    mut stream: tokio::net::TcpStream,
    tokens: Arc<Mutex<HashMap<String, String>>>,
) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while len < buf.len() {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    });
    if read.await.is_err() {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let path = head
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or("");
    let answer = path
        .strip_prefix("/.well-known/acme-challenge/")
        .and_then(|token| tokens.lock().ok().and_then(|t| t.get(token).cloned()));
    let response = match answer {
        Some(body) => format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        None => {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        }
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
