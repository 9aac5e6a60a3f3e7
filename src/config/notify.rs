//! `[notify.NAME]`: where events are sent (a webhook URL or a command) and which events.

use super::MAX_TIMEOUT;
use super::build::valid_name;
use super::walk::{Ctx, Section, did_you_mean};
use crate::core::Span;

/// Where to tell about events (`[notify.NAME]`).
#[derive(Clone, Debug)]
pub(crate) struct Notify {
    pub(crate) name: String,
    pub(crate) target: NotifyTarget,
    /// Subscribed events; all when empty.
    pub(crate) events: Vec<String>,
    pub(crate) timeout: Span,
    pub(crate) retries: u32,
}

#[derive(Clone, Debug)]
pub(crate) enum NotifyTarget {
    /// JSON POST.
    Webhook(String),
    /// argv, no shell; the event in CERTAGENT_* environment variables.
    Command(Vec<String>),
}

/// Events a notifier can subscribe to.
pub(crate) const EVENTS: [&str; 7] = [
    "pending-approval",
    "reminder",
    "installed",
    "failed",
    "rolled-back",
    "revoked",
    "compromised",
];

pub(super) const NOTIFY_KEYS: &str = "kind, url, command, events, timeout, retries";

pub(super) fn read_notify(cx: &mut Ctx, s: &mut Section, name: &str) -> Option<Notify> {
    let name_ok = valid_name(cx, s, "notify", name);
    let target = read_target(cx, s);
    let mut events = Vec::new();
    for (e, span) in s.strings(cx, "events").unwrap_or_default() {
        if EVENTS.contains(&e.as_str()) {
            events.push(e);
        } else {
            cx.error(
                &span,
                &s.full_key("events"),
                format!("unknown event {e:?}; known: {}", EVENTS.join(", ")),
            );
        }
    }
    let timeout = s.span(cx, "timeout", MAX_TIMEOUT).unwrap_or(Span::secs(10));
    let retries = s.integer(cx, "retries", 0..11).unwrap_or(3) as u32;
    let target = target?;
    name_ok.then(|| Notify {
        name: name.to_string(),
        target,
        events,
        timeout,
        retries,
    })
}

/// `kind` and what it needs: the webhook's `url` or the `command` to run.
fn read_target(cx: &mut Ctx, s: &mut Section) -> Option<NotifyTarget> {
    match s.string(cx, "kind") {
        Some((k, _)) if k == "webhook" => read_webhook(cx, s),
        Some((k, _)) if k == "command" => match s.command(cx, "command") {
            Some(argv) => Some(NotifyTarget::Command(argv)),
            None => {
                cx.error(
                    &s.span,
                    &s.full_key("command"),
                    "missing; the argv to run for each event",
                );
                None
            }
        },
        Some((k, span)) => {
            let message = match did_you_mean(&k, ["webhook", "command"]) {
                Some(close) => format!("unknown notify kind {k:?}; did you mean {close:?}?"),
                None => format!("unknown notify kind {k:?}; expected \"webhook\" or \"command\""),
            };
            cx.error(&span, &s.full_key("kind"), message);
            s.abandon();
            None
        }
        None => {
            cx.error(
                &s.span,
                &s.full_key("kind"),
                "missing; \"webhook\" or \"command\"",
            );
            s.abandon();
            None
        }
    }
}

/// `url` for `kind = "webhook"`: where to POST the event.
fn read_webhook(cx: &mut Ctx, s: &mut Section) -> Option<NotifyTarget> {
    match s.string(cx, "url") {
        Some((u, span)) if !(u.starts_with("https://") || u.starts_with("http://")) => {
            cx.error(
                &span,
                &s.full_key("url"),
                format!("{u:?} must be an http(s):// URL"),
            );
            None
        }
        Some((u, _)) => Some(NotifyTarget::Webhook(u)),
        None => {
            cx.error(
                &s.span,
                &s.full_key("url"),
                "missing; where to POST the event",
            );
            None
        }
    }
}
