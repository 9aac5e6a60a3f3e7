//! The daemon's clients: requests over the control socket (check, status, reissue, import)
//! and certificates dropped into the inbox, turned into jobs and answered with their outcome.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::jobs::{Job, settle_inbox_file};
use super::{Daemon, ops};
use crate::clock::Clock;
use crate::config::Config;
use crate::control::{self, Request, Response};
use crate::core::{Reason, Requested};
use crate::error::Error;
use crate::output::ReissueResult;

/// A re-issue asked for over the control socket.
pub(super) struct ReissueAsk {
    names: Vec<String>,
    reason: Reason,
    /// The operator's reason in their words.
    requested: Option<Requested>,
    wait: bool,
    reply: oneshot::Sender<Response>,
    /// A certificate handed in for a pending manual re-issue (one name), and the inbox file
    /// it came from.
    import: Option<(Arc<Vec<u8>>, Option<PathBuf>)>,
}

impl Daemon {
    pub(super) fn ask(&mut self, ask: ReissueAsk) {
        let names: Vec<String> = if ask.names.is_empty() {
            self.config.certificates.keys().cloned().collect()
        } else {
            ask.names
        };
        let mut receivers = Vec::new();
        for name in &names {
            if !self.config.certificates.contains_key(name) {
                let e = Error::msg(format!(
                    "no certificate named {name:?} in the daemon's configuration"
                ))
                .with_hint("if you just added it, reload the daemon: systemctl reload certagent");
                let _ = ask.reply.send(Response::error(&e));
                return;
            }
        }
        if let Some((data, source)) = ask.import.clone() {
            let name = &names[0];
            let state = self.certs.entry(name.clone()).or_default();
            let (tx, rx) = oneshot::channel();
            if state.in_flight {
                // Runs right after the current job (which may be the pending re-issue itself),
                // in place of anything queued before; whoever waited for that gets its result.
                let mut waiters = vec![tx];
                if let Some((_, earlier)) = state.queued.take() {
                    waiters.extend(earlier);
                }
                state.queued = Some((Job::Import(data, source), waiters));
            } else {
                self.start(name, Job::Import(data, source));
                self.certs.entry(name.clone()).or_default().waiters.push(tx);
            }
            // The client waits for the import, and only for it.
            let reply = ask.reply;
            let name = name.clone();
            tokio::spawn(async move {
                answer(reply, vec![outcome(&name, Reason::Forced, rx).await]);
            });
            return;
        }
        for name in &names {
            let state = self.certs.entry(name.clone()).or_default();
            let (tx, rx) = oneshot::channel();
            if state.in_flight && state.reissuing {
                // A re-issue already running for this certificate is the one asked for: wait
                // for it rather than starting a second one.
                state.waiters.push(tx);
            } else if state.in_flight {
                // A refresh, finish or import is running: the re-issue starts right after it.
                match &mut state.queued {
                    Some((_, waiters)) => waiters.push(tx),
                    None => {
                        state.queued = Some((Job::Reissue(ask.reason, ask.requested), vec![tx]))
                    }
                }
                log::debug!(cert = name.as_str(); "re-issue queued behind the job in flight");
            } else {
                state.waiters.push(tx);
                self.clear_backoff(name);
                self.start(name, Job::Reissue(ask.reason, ask.requested));
            }
            if ask.wait {
                receivers.push((name.clone(), rx));
            }
        }
        self.publish_status();
        let reason = ask.reason;
        let requested = ask.requested.map(|r| r.as_str().to_string());
        let reply = ask.reply;
        tokio::spawn(async move {
            let results = if receivers.is_empty() {
                names
                    .iter()
                    .map(|n| {
                        let mut r = ReissueResult::new(n, "started", reason.as_str());
                        r.requested_reason = requested.clone();
                        r
                    })
                    .collect()
            } else {
                let mut out = Vec::new();
                for (name, rx) in receivers {
                    out.push(outcome(&name, reason, rx).await);
                }
                out
            };
            answer(reply, results);
        });
    }

    /// Hand every complete file in the inbox to the certificate whose pending key it is
    /// for; a file for no pending re-issue (or not a certificate at all) is set aside in
    /// `inbox/rejected/` with the reason.
    pub(super) fn scan_inbox(&mut self, asks: &mpsc::Sender<ReissueAsk>) {
        let inbox = crate::issuer::manual::inbox_dir(&self.config.agent.state_dir);
        let Ok(entries) = std::fs::read_dir(&inbox) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden || !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let shown = path.display().to_string();
            let leaf = crate::store::fsutil::read_capped(&path, crate::keys::MAX_PEM_BYTES)
                .map_err(|e| e.to_string())
                .and_then(|b| b.ok_or_else(|| "vanished".to_string()))
                .and_then(|b| {
                    let chain = crate::keys::Chain::from_pem(&b)?;
                    Ok((chain.leaf()?, b))
                });
            let (leaf, data) = match leaf {
                Ok(x) => x,
                Err(e) => {
                    log::error!(file = shown.as_str(); "rejected an inbox file: {e}");
                    settle_inbox_file(&path, Some(&e));
                    continue;
                }
            };
            let owner = self.config.certificates.keys().find(|name| {
                self.executor
                    .store
                    .journal(name)
                    .ok()
                    .and_then(|j| j.pending)
                    .is_some_and(|p| p.key_spki_sha256 == leaf.spki_sha256)
            });
            let Some(name) = owner.cloned() else {
                let why = "the certificate is not for the key of any pending re-issue: nothing was installed";
                log::error!(file = shown.as_str(), serial = leaf.serial.as_str(); "rejected an inbox file: {why}");
                settle_inbox_file(&path, Some(why));
                continue;
            };
            log::info!(cert = name.as_str(), file = shown.as_str(); "found the certificate for the pending re-issue in the inbox");
            let (reply, _ignored) = oneshot::channel();
            let ask = ReissueAsk {
                names: vec![name],
                reason: Reason::Forced,
                requested: None,
                wait: false,
                reply,
                import: Some((Arc::new(data), Some(path))),
            };
            let _ = asks.try_send(ask);
        }
    }
}

/// The outcome a control client waits for; a job that went away without one (replaced in
/// the queue, or the daemon stopped) is a failure, never silence that reads as success.
async fn outcome(
    name: &str,
    reason: Reason,
    rx: oneshot::Receiver<ReissueResult>,
) -> ReissueResult {
    rx.await.unwrap_or_else(|_| {
        let mut r = ReissueResult::new(name, "failed", reason.as_str());
        r.error = Some("the daemon ended this request without an outcome".into());
        r.hint = Some("run the command again; `certagent status` shows the state".into());
        r
    })
}

/// Answer a control client with the re-issue document of `results` and its exit code.
fn answer(reply: oneshot::Sender<Response>, results: Vec<ReissueResult>) {
    let (doc, code) = ops::reissue_doc(results);
    let document = serde_json::to_value(doc).unwrap_or_default();
    let _ = reply.send(Response {
        exit: code,
        document,
        error: None,
        hint: None,
    });
}

/// Control connections served at once (the others wait their turn).
pub(super) const MAX_CONTROL_CLIENTS: usize = 8;

/// One control connection: check and status are answered from a snapshot of the config
/// (read-only, off the event loop); reissue goes through the loop.
pub(super) async fn serve_client(
    mut stream: tokio::net::UnixStream,
    config: tokio::sync::watch::Receiver<Arc<Config>>,
    clock: Clock,
    asks: mpsc::Sender<ReissueAsk>,
) {
    // Root (or whoever runs the daemon) only, whatever the socket's mode says.
    let me = nix::unistd::geteuid().as_raw();
    match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(cred) if cred.uid() == 0 || cred.uid() == me => {}
        _ => {
            let e = Error::msg("permission denied: the control socket is for root only");
            let _ = control::write_response(&mut stream, &Response::error(&e)).await;
            return;
        }
    }
    let req = match control::read_request(&mut stream).await {
        Ok(r) => r,
        Err(e) => {
            let _ = control::write_response(&mut stream, &Response::error(&e)).await;
            return;
        }
    };
    let config = config.borrow().clone();
    let response = match req {
        Request::Check { names } | Request::Status { names } => {
            let now = clock.now();
            let work = tokio::task::spawn_blocking(move || {
                let certs = ops::select(&config, &names)?;
                let (doc, code) = ops::check_doc(&config, &certs, now);
                Ok::<_, Error>(Response {
                    exit: code,
                    document: serde_json::to_value(doc).unwrap_or_default(),
                    error: None,
                    hint: None,
                })
            });
            match work.await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Response::error(&e),
                Err(e) => Response::error(&Error::msg(format!("status failed: {e}"))),
            }
        }
        Request::Import { name, certificate } => {
            let (reply, rx) = oneshot::channel();
            let import = Some((Arc::new(certificate.into_bytes()), None));
            let ask = ReissueAsk {
                names: vec![name],
                reason: Reason::Forced,
                requested: None,
                wait: true,
                reply,
                import,
            };
            if asks.send(ask).await.is_err() {
                Response::error(&Error::msg("the daemon is shutting down"))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Response::error(&Error::msg("the daemon stopped before the import finished"))
                })
            }
        }
        Request::Reissue {
            names,
            all,
            reason,
            wait,
            requested,
        } => {
            let names = if all { Vec::new() } else { names };
            let (reply, rx) = oneshot::channel();
            if asks
                .send(ReissueAsk {
                    names,
                    reason,
                    requested,
                    wait,
                    reply,
                    import: None,
                })
                .await
                .is_err()
            {
                Response::error(&Error::msg("the daemon is shutting down"))
            } else {
                rx.await.unwrap_or_else(|_| {
                    Response::error(&Error::msg(
                        "the daemon stopped before the re-issue finished",
                    ))
                })
            }
        }
    };
    let _ = control::write_response(&mut stream, &response).await;
}
