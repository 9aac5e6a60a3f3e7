//! The error type every command returns, and how it maps to the exit codes of the contract.
//!
//! Messages follow one shape: lowercase, `failed to <verb> <object>: <cause>`, with an optional
//! `hint:` that tells the operator what to do. Nothing here may carry key material.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Exit codes documented in the README and relied on by scripts.
pub mod exit {
    pub(crate) const OK: u8 = 0;
    pub(crate) const NEEDS_ACTION: u8 = 1;
    pub const ERROR: u8 = 2;
    pub(crate) const BUSY: u8 = 3;
    pub(crate) const PENDING: u8 = 75;
    /// EX_TEMPFAIL, the same number: a service certagent needs (etcd) does not answer; try
    /// again later.
    pub(crate) const UNAVAILABLE: u8 = 75;
    /// EX_NOPERM: a command that needs root was run by another user.
    pub(crate) const NOT_ROOT: u8 = 77;
    pub(crate) const CONFIG: u8 = 78;
    /// EX_USAGE: the command cannot do what it was asked for these arguments (a dry run of
    /// a certificate whose issuer has nothing to rehearse).
    pub(crate) const USAGE: u8 = 64;
}

#[derive(Debug)]
pub enum Error {
    /// The configuration (or a drop-in) is invalid; every problem is listed.
    Config(ConfigErrors),
    /// Another certagent process holds the lock and did not release it in time.
    Busy(String),
    /// Not a failure: waiting on the CA or on a human (an approval e-mail). `retry_in` is when
    /// to look again (seconds), if known.
    Pending {
        message: String,
        retry_in: Option<i64>,
        news: bool,
    },
    /// An ACME server refused: `context` says what was being done, `problem` is the server's
    /// problem document (RFC 8555 §6.7), kept as data until it is displayed.
    Acme {
        context: String,
        problem: Box<Problem>,
        hint: Option<String>,
    },
    /// A command that needs root was run by another user; `command` is how to run it as
    /// root (`sudo certagent ...`).
    NotRoot { command: String },
    /// The configuration reads, but does not match this host (a `verify` endpoint nothing
    /// listens on): exit 78 like an invalid configuration, without a file and line.
    Mismatch {
        message: String,
        hint: Option<String>,
    },
    /// The command does not apply to what it was given (exit 64, EX_USAGE).
    Usage {
        message: String,
        hint: Option<String>,
    },
    /// A service certagent depends on (the fleet's etcd) cannot be reached or does not
    /// answer in time: a temporary failure (exit 75), worth trying again later.
    Unavailable {
        message: String,
        hint: Option<String>,
    },
    /// Anything else: a chain of causes, outermost first, an optional hint, and the delay a
    /// throttling server asked for (`Retry-After`, seconds), which the scheduler honours.
    Failed {
        message: String,
        hint: Option<String>,
        retry_after: Option<i64>,
    },
}

impl From<ConfigErrors> for Error {
    fn from(errors: ConfigErrors) -> Self {
        Error::Config(errors)
    }
}

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn msg(message: impl Into<String>) -> Self {
        Error::Failed {
            message: message.into(),
            hint: None,
            retry_after: None,
        }
    }

    pub(crate) fn with_hint(self, hint: impl Into<String>) -> Self {
        match self {
            Error::Failed {
                message,
                retry_after,
                ..
            } => Error::Failed {
                message,
                hint: Some(hint.into()),
                retry_after,
            },
            Error::Acme {
                context, problem, ..
            } => Error::Acme {
                context,
                problem,
                hint: Some(hint.into()),
            },
            Error::Mismatch { message, .. } => Error::Mismatch {
                message,
                hint: Some(hint.into()),
            },
            Error::Unavailable { message, .. } => Error::Unavailable {
                message,
                hint: Some(hint.into()),
            },
            other => other,
        }
    }

    /// The same failure, marked temporary (exit 75): what it was waiting for did not answer.
    #[cfg_attr(not(feature = "fleet"), allow(dead_code))]
    pub(crate) fn unavailable(self) -> Self {
        match self {
            Error::Failed { message, hint, .. } => Error::Unavailable { message, hint },
            other => other,
        }
    }

    /// Attach a server's `Retry-After` (seconds).
    pub(crate) fn with_retry_after(self, secs: Option<i64>) -> Self {
        match self {
            Error::Failed { message, hint, .. } => Error::Failed {
                message,
                hint,
                retry_after: secs,
            },
            other => other,
        }
    }

    /// The CA's problem document, when the CA refused.
    pub(crate) fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Acme { problem, .. } => Some(problem),
            _ => None,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<i64> {
        match self {
            Error::Failed { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Mismatch { .. } => exit::CONFIG,
            Error::Busy(_) => exit::BUSY,
            Error::Pending { .. } => exit::PENDING,
            Error::Unavailable { .. } => exit::UNAVAILABLE,
            Error::NotRoot { .. } => exit::NOT_ROOT,
            Error::Failed { .. } | Error::Acme { .. } => exit::ERROR,
            Error::Usage { .. } => exit::USAGE,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Failed { hint, .. }
            | Error::Acme { hint, .. }
            | Error::Mismatch { hint, .. }
            | Error::Usage { hint, .. }
            | Error::Unavailable { hint, .. } => hint.as_deref(),
            Error::Busy(_) => {
                Some("another certagent command or the daemon is working; retry later")
            }
            // Each error that knows its fix says it; the generic advice is for the rest.
            Error::Config(errors) if errors.0.iter().all(|e| e.hint.is_some()) => None,
            Error::Config(_) => Some("run `certagent config validate` after fixing the file"),
            Error::Pending { .. } => None,
            Error::NotRoot { command } => Some(command),
        }
    }

    /// Prefix the message with what we were doing: `failed to X: <old message>`.
    pub(crate) fn context(self, what: impl fmt::Display) -> Self {
        match self {
            Error::Failed {
                message,
                hint,
                retry_after,
            } => Error::Failed {
                message: format!("{what}: {message}"),
                hint,
                retry_after,
            },
            Error::Acme {
                context,
                problem,
                hint,
            } => Error::Acme {
                context: format!("{what}: {context}"),
                problem,
                hint,
            },
            Error::Unavailable { message, hint } => Error::Unavailable {
                message: format!("{what}: {message}"),
                hint,
            },
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(errors) => write!(f, "invalid configuration:\n{errors}"),
            Error::Busy(what) => write!(f, "busy: {what}"),
            Error::Pending { message, .. } => write!(f, "pending: {message}"),
            Error::NotRoot { .. } => f.write_str(
                "must run as root: the keys, the state and the daemon's control socket are root's alone",
            ),
            Error::Failed { message, .. }
            | Error::Mismatch { message, .. }
            | Error::Usage { message, .. }
            | Error::Unavailable { message, .. } => f.write_str(message),
            Error::Acme {
                context, problem, ..
            } => write!(f, "{context}: {problem}"),
        }
    }
}

impl std::error::Error for Error {}

/// A server's problem document (RFC 7807; ACME's in RFC 8555 §6.7): its type without the
/// `urn:ietf:params:acme:error:` prefix, its detail, and the per-identifier subproblems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub(crate) kind: String,
    pub(crate) detail: Option<String>,
    pub(crate) status: Option<u16>,
    pub(crate) subproblems: Vec<Subproblem>,
}

/// One identifier's part of a problem (RFC 8555 §6.7.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subproblem {
    pub(crate) identifier: Option<String>,
    pub(crate) kind: String,
    pub(crate) detail: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "the CA answered {}: {d}", self.kind),
            None => write!(f, "the CA answered {}", self.kind),
        }
    }
}

/// Attach "what we were doing" to any displayable error.
pub(crate) trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error::msg(format!("{what}: {e}")))
    }

    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::msg(format!("{}: {e}", what())))
    }
}

/// One problem in the configuration: file, line, key, what is wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub(crate) key: String,
    pub(crate) message: String,
    /// What to do about it, when that is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A drop-in's file name is the operator's, like a key: shown escaped.
        let file = self.file.display().to_string();
        let file = shown(&file);
        if self.key.is_empty() {
            write!(f, "{file}:{}: {}", self.line, self.message)?;
        } else {
            write!(f, "{file}:{}: {}: {}", self.line, self.key, self.message)?;
        }
        match &self.hint {
            Some(hint) => write!(f, "\n    hint: {hint}"),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// A name from the config file as it may appear in a message or a log line: control
/// characters (a table named "a\nb" would forge a line of its own) and invisible
/// direction or width changes escaped the way `str::escape_debug` writes them; anything
/// else as it is. Every key and name taken from the file goes through this before it is
/// shown.
pub fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    };
    if !name.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if hidden(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}
