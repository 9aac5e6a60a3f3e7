//! Notifications: `[notify.NAME]` webhooks (JSON POST) and commands (argv, no shell, the event
//! in `CERTAGENT_*` environment variables), each subscribed to some events. Delivery is
//! bounded (timeout, a few retries) and never blocks an install for long; a failed delivery is
//! logged, not fatal. Payloads carry names, serials and messages — never keys or tokens.

use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, Notify, NotifyTarget};
use crate::core::Timestamp;
use crate::http::Timeouts;

#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
    pub(crate) schema: u32,
    /// One of `config::EVENTS`.
    pub(crate) event: &'static str,
    pub(crate) certificate: String,
    pub(crate) reason: Option<String>,
    pub(crate) serial: Option<String>,
    pub(crate) message: String,
    pub(crate) at: String,
    pub(crate) host: String,
}

impl Event {
    pub(crate) fn new(
        event: &'static str,
        certificate: &str,
        message: impl Into<String>,
        now: Timestamp,
    ) -> Event {
        Event {
            schema: 1,
            event,
            certificate: certificate.to_string(),
            reason: None,
            serial: None,
            message: message.into(),
            at: crate::output::rfc3339(now),
            host: nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn reason(mut self, r: impl Into<String>) -> Event {
        self.reason = Some(r.into());
        self
    }

    pub(crate) fn serial(mut self, s: impl Into<String>) -> Event {
        self.serial = Some(s.into());
        self
    }
}

/// Deliver `event` to every subscribed notifier, one after the other, waiting for each.
pub(crate) async fn emit(config: &Config, event: Event) {
    let targets: Vec<&Notify> = config
        .notify
        .values()
        .filter(|n| n.events.is_empty() || n.events.iter().any(|e| e == event.event))
        .collect();
    for n in targets {
        deliver(n, &event).await;
    }
}

async fn deliver(n: &Notify, event: &Event) {
    let timeout = Duration::from_secs(n.timeout.0.max(1) as u64);
    let mut last = String::new();
    for attempt in 0..=n.retries {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1).min(5))).await;
        }
        let result = match &n.target {
            NotifyTarget::Webhook(url) => webhook(url, event, timeout).await,
            NotifyTarget::Command(argv) => command(argv, event, timeout).await,
        };
        match result {
            Ok(()) => {
                log::debug!(notify = n.name.as_str(), cert = event.certificate.as_str(); "notified {}", event.event);
                return;
            }
            Err(e) => last = e,
        }
    }
    log::warn!(notify = n.name.as_str(), cert = event.certificate.as_str(); "failed to notify {}: {last}", event.event);
}

async fn webhook(url: &str, event: &Event, timeout: Duration) -> Result<(), String> {
    // The notifier's own timeout covers the whole request, connecting included.
    let timeouts = Timeouts {
        connect: None,
        total: timeout,
    };
    let client = crate::http::client(timeouts, None).map_err(|e| e.to_string())?;
    let body = serde_json::to_string(event).map_err(|e| e.to_string())?;
    let rsp = client
        .post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| crate::http::describe_reqwest(&e))?;
    if rsp.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", rsp.status()))
    }
}

async fn command(argv: &[String], event: &Event, timeout: Duration) -> Result<(), String> {
    let mut cmd = crate::child::command(&argv[0]);
    cmd.args(&argv[1..])
        .env("CERTAGENT_EVENT", event.event)
        .env("CERTAGENT_CERT", &event.certificate)
        .env("CERTAGENT_MESSAGE", &event.message)
        .env("CERTAGENT_AT", &event.at)
        .env("CERTAGENT_REASON", event.reason.as_deref().unwrap_or(""))
        .env("CERTAGENT_SERIAL", event.serial.as_deref().unwrap_or(""));
    let out = tokio::time::timeout(timeout, crate::child::output(&mut cmd))
        .await
        .map_err(|_| {
            format!(
                "`{}` did not finish within {}s",
                argv.join(" "),
                timeout.as_secs()
            )
        })?
        .map_err(|e| format!("failed to run `{}`: {e}", argv.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            argv.join(" "),
            out.message_tail(false)
        ))
    }
}
