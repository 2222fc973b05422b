//! Diagnostics: every problem found in an inventory or hardware profile, with
//! file, line, column and the field path, so an operator can fix them all in one go.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// Where a value came from. Line and column are 1-based; 0 means "unknown".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl Span {
    pub fn new(file: impl Into<String>, line: u64, column: u64) -> Self {
        Span {
            file: file.into(),
            line,
            column,
        }
    }

    pub fn from_location(file: &str, loc: &serde_saphyr::Location) -> Self {
        Span::new(file, loc.line(), loc.column())
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub span: Span,
    /// Field path inside the document, e.g. `nodes[2].mac` (empty for document-level problems).
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.path.is_empty() {
            write!(f, "{sev}: {}: {}", self.span, self.message)
        } else {
            write!(f, "{sev}: {}: {}: {}", self.span, self.path, self.message)
        }
    }
}

/// An ordered collection of diagnostics; sorted by file and position when reported.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn error(&mut self, span: Span, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, span, path, message);
    }

    pub fn warning(&mut self, span: Span, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, span, path, message);
    }

    fn push(
        &mut self,
        severity: Severity,
        span: Span,
        path: impl Into<String>,
        message: impl Into<String>,
    ) {
        // Every message passes here: values echoed from the file are cut and escaped, so a
        // 20 MB scalar or a terminal escape sequence in the inventory never reaches stderr whole.
        let d = Diagnostic {
            severity,
            span,
            path: clip(&path.into(), MAX_PATH),
            message: clip_message(&message.into()),
        };
        if !self.items.contains(&d) {
            self.items.push(d);
        }
    }

    pub fn extend(&mut self, other: Diagnostics) {
        for d in other.items {
            if !self.items.contains(&d) {
                self.items.push(d);
            }
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Errors first, then by file and position, so the report reads top to bottom.
    pub fn sorted(&self) -> Vec<&Diagnostic> {
        let mut v: Vec<&Diagnostic> = self.items.iter().collect();
        v.sort_by(|a, b| {
            (a.severity, &a.span.file, a.span.line, a.span.column).cmp(&(
                b.severity,
                &b.span.file,
                b.span.line,
                b.span.column,
            ))
        });
        v
    }

    /// Human report: one line per diagnostic, the offending source line and a caret under it.
    pub fn render(&self, sources: &dyn Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for d in self.sorted() {
            out.push_str(&d.to_string());
            out.push('\n');
            if d.span.line > 0
                && let Some(src) = sources(&d.span.file)
                && let Some(line) = source_lines(&src).nth((d.span.line - 1) as usize)
            {
                let num = d.span.line.to_string();
                let (line, col) = snippet_window(line, d.span.column.saturating_sub(1) as usize);
                out.push_str(&format!("  {num} | {line}\n"));
                let pad = " ".repeat(num.len());
                out.push_str(&format!("  {pad} | {}^\n", " ".repeat(col)));
            }
        }
        let errors = self.errors().count();
        let warnings = self.warnings().count();
        out.push_str(&format!("{errors} error(s), {warnings} warning(s)\n"));
        out
    }
}

/// Longest value (in characters) a message echoes; longer ones are cut with their size.
pub const MAX_VALUE: usize = 80;
/// Longest message and field path; serde's own texts may quote a value without backticks.
pub const MAX_MESSAGE: usize = 400;
const MAX_PATH: usize = 160;
/// Characters of a long source line shown on each side of the caret (shorter lines: whole).
const SNIPPET_SIDE: usize = 80;

/// `text` fit for a terminal: control characters escaped (`\u{1b}`), cut after `max`
/// characters with the full size in bytes appended.
pub fn clip(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push_str(&format!("…({} bytes)", text.len()));
            break;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A source line fit for a terminal with its columns kept: one character per character (a tab
/// becomes a space, other control characters U+FFFD), so the caret stays under its column.
fn visible(line: &str) -> String {
    line.chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// A diagnostic message with every `backticked` value cut to [`MAX_VALUE`], the whole to
/// [`MAX_MESSAGE`].
pub fn clip_message(message: &str) -> String {
    let parts: Vec<String> = message
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                clip(part, MAX_VALUE)
            } else {
                part.to_string()
            }
        })
        .collect();
    clip(&parts.join("`"), MAX_MESSAGE)
}

/// The part of a source line to show around 0-based character column `col`, and the caret's
/// column in it: a 20 MB line is shown as a window, not whole.
fn snippet_window(line: &str, col: usize) -> (String, usize) {
    let len = line.chars().count();
    if len <= 3 * SNIPPET_SIDE {
        return (visible(line), col);
    }
    let start = col.saturating_sub(SNIPPET_SIDE);
    let end = (col + SNIPPET_SIDE).min(len);
    let mut shown = String::new();
    let mut caret = col - start;
    if start > 0 {
        shown.push('…');
        caret += 1;
    }
    let window: String = line.chars().skip(start).take(end - start).collect();
    shown.push_str(&visible(&window));
    if end < len {
        shown.push('…');
    }
    (shown, caret)
}

/// The inventory (or a profile) as text, or a diagnostic at the first byte that is not UTF-8,
/// with its line and column as the YAML parser would count them.
pub fn decode_utf8(file: &str, bytes: Vec<u8>) -> Result<String, Diagnostic> {
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let bad = e.utf8_error().valid_up_to();
        // Valid up to `bad` by definition.
        let before = std::str::from_utf8(&bytes[..bad]).unwrap_or_default();
        let (mut line, mut column) = (1u64, 1u64);
        let mut chars = before.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\r' | '\n' => {
                    if c == '\r' && chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    line += 1;
                    column = 1;
                }
                _ => column += 1,
            }
        }
        Diagnostic {
            severity: Severity::Error,
            span: Span::new(file, line, column),
            path: String::new(),
            message: format!(
                "byte 0x{:02x} is not valid UTF-8; save the file as UTF-8 text",
                bytes[bad]
            ),
        }
    })
}

/// A parser limit in plain words: which limit, and what usually causes it.
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let b = serde_saphyr::Budget::default();
    match breach {
        B::Nodes { .. } => format!(
            "the file expands to more than {} YAML values (aliases `*name` repeating an anchor \
             many times?); refused",
            thousands(b.max_nodes)
        ),
        B::Events { .. } => format!(
            "the file expands to more than {} YAML parser events (alias expansion?); refused",
            thousands(b.max_events)
        ),
        B::Aliases { .. } => format!(
            "the file uses more than {} aliases (`*name`); refused",
            thousands(b.max_aliases)
        ),
        B::Anchors { .. } => format!(
            "the file defines more than {} anchors (`&name`); refused",
            thousands(b.max_anchors)
        ),
        B::AliasAnchorRatio { aliases, anchors } => format!(
            "the file uses {} aliases for {} anchors, more than {} per anchor (an alias bomb?); \
             refused",
            thousands(*aliases),
            thousands(*anchors),
            b.alias_anchor_ratio_multiplier
        ),
        B::Depth { .. } => format!(
            "the file nests lists and maps more than {} levels deep; refused",
            b.max_depth
        ),
        B::Documents { .. } => format!(
            "the file holds more than {} YAML documents (`---`); refused",
            thousands(b.max_documents)
        ),
        B::ScalarBytes { .. } => format!(
            "the file's values add up to more than {} MiB of text; refused",
            b.max_total_scalar_bytes >> 20
        ),
        B::MergeKeys { .. } => format!(
            "the file uses more than {} merge keys (`<<`); refused",
            thousands(b.max_merge_keys)
        ),
        B::InputBytes { .. } => format!(
            "the file is larger than {} MiB; refused",
            b.max_reader_input_bytes.unwrap_or(0) >> 20
        ),
        _ => "the file exceeds a YAML parser limit (size, nesting or alias expansion); refused"
            .to_string(),
    }
}

/// 250000 → "250,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The budget breach behind a parser error, looking through its alias and snippet wrappers.
fn budget_breach(mut err: &serde_saphyr::Error) -> Option<&serde_saphyr::budget::BudgetBreach> {
    loop {
        match err {
            serde_saphyr::Error::Budget { breach, .. } => return Some(breach),
            serde_saphyr::Error::AliasError { error, .. }
            | serde_saphyr::Error::WithSnippet { error, .. } => err = error,
            _ => return None,
        }
    }
}

/// The lines of a source text as YAML counts them, which is how a [`Span`]'s line is numbered:
/// a line ends at `\n`, `\r\n` or a lone `\r`. (`str::lines` does not split at a lone `\r`,
/// so a file with old Mac line endings or stray CRs got the wrong snippet, or none.)
pub fn source_lines(src: &str) -> impl Iterator<Item = &str> {
    src.lines().flat_map(|l| l.split('\r'))
}

/// Turn a serde-saphyr error into a diagnostic, keeping its location but dropping its own snippet
/// (the report prints one snippet per diagnostic itself).
pub fn from_yaml_error(file: &str, path: &str, err: &serde_saphyr::Error) -> Diagnostic {
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    if let Some(breach) = budget_breach(err) {
        return Diagnostic {
            severity: Severity::Error,
            span: Span::new(file, line, column),
            path: path.to_string(),
            message: budget_message(breach),
        };
    }
    let mut message = err.without_snippet().to_string();
    // serde-saphyr prefixes "line L column C: "; the span already carries that.
    if let Some(rest) = message.strip_prefix(&format!("line {line} column {column}: ")) {
        message = rest.to_string();
    }
    let message = clip_message(message.lines().next().unwrap_or_default().trim());
    Diagnostic {
        severity: Severity::Error,
        span: Span::new(file, line, column),
        path: path.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{self, ProfileSet};
    use crate::templates::Templates;

    #[test]
    fn clip_cuts_long_values_and_escapes_control_characters() {
        assert_eq!(clip("short", 80), "short");
        let long = "x".repeat(1000);
        assert_eq!(clip(&long, 80), format!("{}…(1000 bytes)", "x".repeat(80)));
        assert_eq!(clip("a\u{1b}[2Jb", 80), "a\\u{1b}[2Jb");
        let m = clip_message(&format!("cluster.name: `{long}` must be `lowercase`"));
        assert!(
            m.len() < 200 && m.contains("…(1000 bytes)` must be `lowercase`"),
            "{m}"
        );
        assert!(clip_message(&"y".repeat(5000)).len() < MAX_MESSAGE + 20);
    }

    #[test]
    fn long_snippet_lines_show_a_window_with_the_caret_in_place() {
        let line = format!("{}X{}", "a".repeat(10_000), "b".repeat(10_000));
        let (shown, caret) = snippet_window(&line, 10_000);
        assert!(shown.chars().count() < 2 * SNIPPET_SIDE + 4, "{shown}");
        assert_eq!(shown.chars().nth(caret), Some('X'));
        assert_eq!(snippet_window("  name: x", 8), ("  name: x".to_string(), 8));
        // Control characters never reach the terminal and keep one column each.
        assert_eq!(
            snippet_window("\tn: \u{1b}x", 5),
            (" n: \u{fffd}x".to_string(), 5)
        );
    }

    #[test]
    fn bad_utf8_is_located_like_the_yaml_parser_counts() {
        let at = |b: &[u8]| {
            let d = decode_utf8("f.yaml", b.to_vec()).unwrap_err();
            (d.span.line, d.span.column)
        };
        assert_eq!(at(b"\xff"), (1, 1));
        assert_eq!(at(b"a: b\nc: \xe9t\xc3"), (2, 4));
        assert_eq!(at(b"a\r\nb\rcd\x80"), (3, 3));
        assert_eq!(
            at(&[b"\xc3\xa9: \xc3\xbc\n".as_slice(), b"\xfe"].concat()),
            (2, 1)
        );
        assert_eq!(
            at(&[b"\xc3\xa9\xc3\xbc".as_slice(), b"\xfe"].concat()),
            (1, 3)
        );
        let d = decode_utf8("f.yaml", b"x\n  \xc3\x28".to_vec()).unwrap_err();
        assert!(
            d.to_string()
                .starts_with("error: f.yaml:2:3: byte 0xc3 is not valid UTF-8"),
            "{d}"
        );
        assert_eq!(decode_utf8("f.yaml", b"ok".to_vec()).unwrap(), "ok");
    }

    #[test]
    fn source_lines_split_like_yaml() {
        let lines: Vec<&str> = source_lines("a\nb\r\nc\rd\r\re").collect();
        assert_eq!(lines, ["a", "b", "c", "d", "", "e"]);
        assert_eq!(source_lines("a\n").count(), 1);
    }

    #[test]
    fn lone_cr_line_breaks_keep_the_snippet_on_the_reported_line() {
        // Found by the inventory fuzz target: with lone '\r' line breaks the YAML parser reports
        // a line past the end of `str::lines`, and the report lost (or misplaced) its snippet.
        let text = "cluster:\r  name: homelab\r\r  name: again\r  domain: lab\r";
        let mut d = Diagnostics::default();
        let profiles = ProfileSet::load(&[], &mut d);
        let (inv, d) = inventory::load("inv.yaml", text, &profiles, &Templates::embedded());
        assert!(inv.is_none());
        let e = d.errors().next().expect("a duplicate key error");
        assert_eq!((e.span.line, e.span.column), (4, 3), "{e}");
        assert!(e.span.line > text.lines().count() as u64);
        let report = d.render(&|_| Some(text.to_string()));
        assert!(report.contains("  4 |   name: again\n"), "{report}");
    }
}
