//! The template set: embedded defaults from `templates/`, optionally overridden file by file
//! from an operator's folder. Strict undefined, no auto-escaping (the output is YAML and shell).

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value};

use crate::inventory::TemplateCatalog;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_templates.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read template folder {path}: {source}")]
    Folder {
        path: String,
        source: std::io::Error,
    },
    #[error("template {name}: {message}")]
    Syntax { name: String, message: String },
}

pub struct Templates {
    env: Environment<'static>,
    /// Where each template came from: "embedded" or the override file's path.
    pub origin: BTreeMap<String, String>,
}

impl Templates {
    pub fn embedded() -> Templates {
        Self::load(None).expect("embedded templates are checked by the test suite")
    }

    pub fn load(override_dir: Option<&Path>) -> Result<Templates, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters"),
        );
        env.add_filter("shquote", shquote);
        let mut origin = BTreeMap::new();
        let mut sources: BTreeMap<String, String> = embedded::EMBEDDED
            .iter()
            .map(|(n, t)| {
                origin.insert(n.to_string(), "embedded".to_string());
                (n.to_string(), t.to_string())
            })
            .collect();
        if let Some(dir) = override_dir {
            let mut files = Vec::new();
            collect(dir, dir, &mut files).map_err(|source| TemplateError::Folder {
                path: dir.display().to_string(),
                source,
            })?;
            for (name, path) in files {
                let text =
                    std::fs::read_to_string(&path).map_err(|source| TemplateError::Folder {
                        path: path.clone(),
                        source,
                    })?;
                origin.insert(name.clone(), path);
                sources.insert(name, text);
            }
        }
        for (name, text) in sources {
            env.add_template_owned(name.clone(), text)
                .map_err(|e| TemplateError::Syntax {
                    name: name.clone(),
                    message: describe(&e),
                })?;
        }
        Ok(Templates { env, origin })
    }

    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, TemplateError> {
        let t = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::Syntax {
                name: name.to_string(),
                message: describe(&e),
            })?;
        t.render(ctx).map_err(|e| TemplateError::Syntax {
            name: name.to_string(),
            message: describe(&e),
        })
    }
}

impl TemplateCatalog for Templates {
    fn has_template(&self, name: &str) -> bool {
        self.origin.contains_key(name)
    }
}

/// Error text without minijinja's debug dump: that dump prints context values, and the
/// context holds the cluster token.
fn describe(e: &minijinja::Error) -> String {
    let mut s = format!("{}", e.kind());
    if let Some(d) = e.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    if let Some(line) = e.line() {
        s.push_str(&format!(" (line {line})"));
    }
    s
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(base, &p, out)?;
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.push((rel.to_string_lossy().into_owned(), p.display().to_string()));
        }
    }
    Ok(())
}

/// POSIX single-quoting for values placed in shell scripts.
fn shquote(v: Value) -> String {
    let s = if v.is_none() || v.is_undefined() {
        String::new()
    } else if let Some(s) = v.as_str() {
        s.to_string()
    } else {
        v.to_string()
    };
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shquote_survives_quotes() {
        assert_eq!(shquote(Value::from("a'b")), r"'a'\''b'");
        assert_eq!(shquote(Value::from(())), "''");
        assert_eq!(shquote(Value::from(5)), "'5'");
    }

    #[test]
    fn strict_undefined_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.j2"), "{{ nope }}").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let err = t.render("x.j2", &Value::from(())).unwrap_err();
        assert!(err.to_string().contains("undefined"), "{err}");
    }

    #[test]
    fn override_folder_replaces_an_embedded_template() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ipxe")).unwrap();
        std::fs::write(dir.path().join("ipxe/unknown.ipxe.j2"), "#!ipxe\nexit 1\n").unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        assert_eq!(
            t.render("ipxe/unknown.ipxe.j2", &Value::from(())).unwrap(),
            "#!ipxe\nexit 1\n"
        );
        assert!(t.origin["ipxe/unknown.ipxe.j2"].ends_with("unknown.ipxe.j2"));
        assert_eq!(t.origin["cloud-init/user-data.yaml.j2"], "embedded");
    }
}
