//! The error type every command returns, and how it maps to the exit codes of the contract.
//!
//! Messages follow one shape: lowercase, `failed to <verb> <object>: <cause>`, with an optional
//! `hint:` that tells the operator what to do. Nothing here may carry key material.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// Exit codes documented in the README and relied on by scripts.
pub mod exit {
    pub const OK: u8 = 0;
    pub const NEEDS_ACTION: u8 = 1;
    pub const ERROR: u8 = 2;
    pub const BUSY: u8 = 3;
    pub const PENDING: u8 = 75;
    pub const CONFIG: u8 = 78;
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

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn msg(message: impl Into<String>) -> Self {
        Error::Failed {
            message: message.into(),
            hint: None,
            retry_after: None,
        }
    }

    pub fn with_hint(self, hint: impl Into<String>) -> Self {
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
            other => other,
        }
    }

    /// Attach a server's `Retry-After` (seconds).
    pub fn with_retry_after(self, secs: Option<i64>) -> Self {
        match self {
            Error::Failed { message, hint, .. } => Error::Failed {
                message,
                hint,
                retry_after: secs,
            },
            other => other,
        }
    }

    pub fn retry_after(&self) -> Option<i64> {
        match self {
            Error::Failed { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::CONFIG,
            Error::Busy(_) => exit::BUSY,
            Error::Pending { .. } => exit::PENDING,
            Error::Failed { .. } => exit::ERROR,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Failed { hint, .. } => hint.as_deref(),
            Error::Busy(_) => {
                Some("another certagent command or the daemon is working; retry later")
            }
            Error::Config(_) => Some("run `certagent config validate` after fixing the file"),
            Error::Pending { .. } => None,
        }
    }

    /// Prefix the message with what we were doing: `failed to X: <old message>`.
    pub fn context(self, what: impl fmt::Display) -> Self {
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
            Error::Failed { message, .. } => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {}

/// Attach "what we were doing" to any displayable error.
pub trait Context<T> {
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
    pub key: String,
    pub message: String,
    /// What to do about it, when that is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
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
