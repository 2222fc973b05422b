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
        let d = Diagnostic {
            severity,
            span,
            path: path.into(),
            message: message.into(),
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
                out.push_str(&format!("  {num} | {line}\n"));
                let pad = " ".repeat(num.len());
                let col = d.span.column.saturating_sub(1) as usize;
                out.push_str(&format!("  {pad} | {}^\n", " ".repeat(col)));
            }
        }
        let errors = self.errors().count();
        let warnings = self.warnings().count();
        out.push_str(&format!("{errors} error(s), {warnings} warning(s)\n"));
        out
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
    let mut message = err.without_snippet().to_string();
    // serde-saphyr prefixes "line L column C: "; the span already carries that.
    if let Some(rest) = message.strip_prefix(&format!("line {line} column {column}: ")) {
        message = rest.to_string();
    }
    let message = message
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
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
