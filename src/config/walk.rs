//! A small reader over toml's spanned document tree that collects every problem instead of
//! stopping at the first, each with file, line and the dotted key.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::ConfigError;
use crate::core::Span;
use crate::error::shown;

/// Where errors go while one file is read.
pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a Path,
    pub(crate) errors: &'a mut Vec<ConfigError>,
    /// Byte offset of each line after the first, so a span's line is a binary search
    /// (every certificate records its line: counting from the top each time was quadratic).
    newlines: Vec<usize>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(file: &'a Path, src: &str, errors: &'a mut Vec<ConfigError>) -> Self {
        let newlines = src
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'\n')
            .map(|(i, _)| i)
            .collect();
        Ctx {
            file,
            errors,
            newlines,
        }
    }

    /// The 1-based line on which `span` starts.
    pub(crate) fn line(&self, span: &Range<usize>) -> usize {
        self.newlines.partition_point(|&nl| nl < span.start) + 1
    }

    pub(crate) fn error(&mut self, span: &Range<usize>, key: &str, message: impl Into<String>) {
        let message = message.into();
        // A key of the wrong type was reported where it was read; it is not also "missing".
        if message.starts_with("missing")
            && self
                .errors
                .iter()
                .rev()
                .any(|e| e.key == key && e.file == self.file)
        {
            return;
        }
        let line = self.line(span);
        self.errors.push(ConfigError {
            hint: None,
            file: self.file.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        });
    }
}

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// One TOML table being read; remembers which keys were consumed so the rest can be reported
/// as unknown.
pub(crate) struct Section<'t, 'i> {
    pub(crate) key: String,
    pub(crate) span: Range<usize>,
    table: &'t DeTable<'i>,
    used: Vec<String>,
    /// The reader stopped early (its `kind` is missing or unknown): the keys it did not get
    /// to are not reported, so one typo is one error.
    abandoned: bool,
}

impl<'t, 'i> Section<'t, 'i> {
    pub(crate) fn new(key: impl Into<String>, table: &'t DeTable<'i>, span: Range<usize>) -> Self {
        Section {
            key: key.into(),
            span,
            table,
            used: Vec::new(),
            abandoned: false,
        }
    }

    /// The reader gives up on this table after reporting why (see `abandoned`).
    pub(crate) fn abandon(&mut self) {
        self.abandoned = true;
    }

    /// Where `name` is set, else the table's header: the line an error about `name` points at.
    pub(crate) fn at(&self, name: &str) -> Range<usize> {
        self.span_of(name).unwrap_or_else(|| self.span.clone())
    }

    /// The dotted key of `name` in this section, for messages (see `shown`).
    pub(crate) fn full_key(&self, name: &str) -> String {
        let name = shown(name);
        if self.key.is_empty() {
            name.into_owned()
        } else {
            format!("{}.{name}", self.key)
        }
    }

    /// Where `name`'s value is, without marking it read.
    pub(crate) fn span_of(&self, name: &str) -> Option<Range<usize>> {
        self.table.get(name).map(|v| v.span())
    }

    pub(crate) fn raw(&mut self, name: &str) -> Option<&'t Value<'i>> {
        self.used.push(name.to_string());
        self.table.get(name)
    }

    pub(crate) fn string(&mut self, cx: &mut Ctx, name: &str) -> Option<(String, Range<usize>)> {
        let v = self.raw(name)?;
        match v.get_ref().as_str() {
            Some(s) => Some((s.to_string(), v.span())),
            None => {
                let found = v.get_ref().type_str();
                cx.error(
                    &v.span(),
                    &self.full_key(name),
                    format!("expected a string, found {found}"),
                );
                None
            }
        }
    }

    /// A string parsed with `FromStr`; the parse error becomes the message.
    pub(crate) fn parsed<T: std::str::FromStr<Err = String>>(
        &mut self,
        cx: &mut Ctx,
        name: &str,
    ) -> Option<T> {
        let (s, span) = self.string(cx, name)?;
        match s.parse() {
            Ok(v) => Some(v),
            Err(e) => {
                cx.error(&span, &self.full_key(name), e);
                None
            }
        }
    }

    /// A duration no longer than `max`: every span ends up in time arithmetic (deadlines,
    /// renewal points), and one absurd value ("15250284452471w") would overflow there.
    pub(crate) fn span(&mut self, cx: &mut Ctx, name: &str, max: Span) -> Option<Span> {
        let (s, span) = self.string(cx, name)?;
        match s.parse::<Span>() {
            Ok(v) if v <= max => Some(v),
            Ok(_) => {
                cx.error(
                    &span,
                    &self.full_key(name),
                    format!("{s:?} is too long: at most {max}"),
                );
                None
            }
            Err(e) => {
                cx.error(&span, &self.full_key(name), e);
                None
            }
        }
    }

    /// The span of the value of `name`, if the table has it (for cross-checks made after
    /// every file is read).
    pub(crate) fn value_span(&self, name: &str) -> Option<Range<usize>> {
        self.table.get(name).map(|v| v.span())
    }

    pub(crate) fn strings(
        &mut self,
        cx: &mut Ctx,
        name: &str,
    ) -> Option<Vec<(String, Range<usize>)>> {
        let v = self.raw(name)?;
        let key = self.full_key(name);
        let Some(array) = v.get_ref().as_array() else {
            cx.error(
                &v.span(),
                &key,
                format!(
                    "expected an array of strings, found {}",
                    v.get_ref().type_str()
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        for item in array.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s.to_string(), item.span())),
                None => cx.error(
                    &item.span(),
                    &key,
                    format!(
                        "expected an array of strings, found an element of type {}",
                        item.get_ref().type_str()
                    ),
                ),
            }
        }
        Some(out)
    }

    pub(crate) fn integer(&mut self, cx: &mut Ctx, name: &str, range: Range<i64>) -> Option<i64> {
        let v = self.raw(name)?;
        let key = self.full_key(name);
        let parsed = v
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
        match parsed {
            Some(n) if range.contains(&n) => Some(n),
            Some(n) => {
                cx.error(
                    &v.span(),
                    &key,
                    format!("{n} is out of range ({} to {})", range.start, range.end - 1),
                );
                None
            }
            None => {
                cx.error(
                    &v.span(),
                    &key,
                    format!("expected an integer, found {}", v.get_ref().type_str()),
                );
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, cx: &mut Ctx, name: &str) -> Option<bool> {
        let v = self.raw(name)?;
        match v.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                let key = self.full_key(name);
                let found = v.get_ref().type_str();
                cx.error(
                    &v.span(),
                    &key,
                    format!("expected true or false, found {found}"),
                );
                None
            }
        }
    }

    /// An absolute, normalised path (no `..`, no relative paths: a service's working
    /// directory is not something to rely on).
    pub(crate) fn path(&mut self, cx: &mut Ctx, name: &str) -> Option<PathBuf> {
        let (s, span) = self.string(cx, name)?;
        match check_path(&s) {
            Ok(p) => Some(p),
            Err(e) => {
                cx.error(&span, &self.full_key(name), e);
                None
            }
        }
    }

    /// A command as an argv array: run without a shell, program given by absolute path or
    /// looked up in PATH.
    pub(crate) fn command(&mut self, cx: &mut Ctx, name: &str) -> Option<Vec<String>> {
        let list = self.strings(cx, name)?;
        if list.is_empty() || list[0].0.is_empty() {
            let span = self
                .table
                .get(name)
                .map(|v| v.span())
                .unwrap_or(self.span.clone());
            cx.error(
                &span,
                &self.full_key(name),
                "expected a non-empty argv array, e.g. [\"nginx\", \"-t\"]",
            );
            return None;
        }
        Some(list.into_iter().map(|(s, _)| s).collect())
    }

    /// A sub-table, e.g. the `web` in `[certificate.web]`.
    pub(crate) fn tables(&mut self, cx: &mut Ctx, name: &str) -> Vec<(String, Section<'t, 'i>)> {
        let Some(v) = self.raw(name) else {
            return Vec::new();
        };
        let key = self.full_key(name);
        let Some(table) = v.get_ref().as_table() else {
            cx.error(
                &v.span(),
                &key,
                format!(
                    "expected a table like [{key}.NAME], found {}",
                    v.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, item) in table.iter() {
            let sub = format!("{key}.{}", shown(k.get_ref()));
            match item.get_ref().as_table() {
                Some(t) => out.push((k.get_ref().to_string(), Section::new(sub, t, k.span()))),
                None => cx.error(
                    &k.span(),
                    &sub,
                    format!(
                        "expected a table [{sub}], found {}",
                        item.get_ref().type_str()
                    ),
                ),
            }
        }
        out
    }

    pub(crate) fn table(&mut self, cx: &mut Ctx, name: &str) -> Option<Section<'t, 'i>> {
        let v = self.raw(name)?;
        let key = self.full_key(name);
        match v.get_ref().as_table() {
            Some(t) => Some(Section::new(key, t, v.span())),
            None => {
                cx.error(
                    &v.span(),
                    &key,
                    format!("expected a table [{key}], found {}", v.get_ref().type_str()),
                );
                None
            }
        }
    }

    /// Report every key that no reader asked for: a misspelt one with the known key it is
    /// closest to (or, when none is close, the list of known keys), a known one that this
    /// kind of table does not use as such. After `abandon`, only keys that are not known.
    pub(crate) fn finish(self, cx: &mut Ctx, known: &str) {
        let known_keys: Vec<&str> = known.split(", ").collect();
        for (k, _) in self.table.iter() {
            let name = k.get_ref();
            if self.used.iter().any(|u| u == name.as_ref()) {
                continue;
            }
            let message = if known_keys.contains(&name.as_ref()) {
                if self.abandoned {
                    continue;
                }
                match self.table.get("kind").and_then(|v| v.get_ref().as_str()) {
                    Some(kind) => format!("not a setting of kind = {:?}", shown(kind)),
                    None => "not a setting here".to_string(),
                }
            } else {
                match did_you_mean(name, known_keys.iter().copied()) {
                    Some(close) => format!("unknown key; did you mean `{close}`?"),
                    None => format!("unknown key; known keys here: {known}"),
                }
            };
            cx.error(&k.span(), &self.full_key(name), message);
        }
    }
}

/// The candidate closest to `word` when it is close enough to be a slip of the keyboard:
/// at most one edit (a transposition counts as one) per three characters, and at least one.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_lowercase();
    let allowed = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word, c), c))
        .filter(|&(d, _)| d <= allowed)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

pub(crate) fn check_path(s: &str) -> Result<PathBuf, String> {
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err(format!("path {s:?} must be absolute"));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("path {s:?} must not contain \"..\""));
    }
    if s.len() > 4096 || s.contains('\0') {
        return Err(format!("path {s:?} is not a valid file name"));
    }
    Ok(p.components().collect())
}

#[cfg(test)]
mod line_tests {
    use super::*;

    #[test]
    fn a_span_is_on_the_line_where_it_starts() {
        let src = "a = 1\n\nb = 2\nc";
        let mut errors = Vec::new();
        let cx = Ctx::new(Path::new("x.toml"), src, &mut errors);
        let line = |at: usize| cx.line(&(at..at + 1));
        assert_eq!(line(0), 1);
        assert_eq!(line(5), 1, "the newline itself ends line 1");
        assert_eq!(line(6), 2);
        assert_eq!(line(7), 3);
        assert_eq!(line(13), 4);
        assert_eq!(line(99), 4, "past the end: the last line");
    }
}
