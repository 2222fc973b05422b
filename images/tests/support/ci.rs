//! The workspace's one rule for tests that cannot run here and for files tests write into the
//! source tree (golden files, packet captures). Included with `#[path]` by every crate's tests,
//! so there is exactly one definition:
//!
//! - `CI` set to **any** value (`.ci/run` exports `CI=true`; other runners use `1`, or even an
//!   empty value) means the run must prove everything: a test that cannot run is a failure,
//!   never a skip, and no file of the source tree is rewritten.
//! - Elsewhere a test that cannot run prints `SKIPPED: why` and passes.
//! - A file of the source tree is rewritten only when its variable (`UPDATE_GOLDEN` for golden
//!   files) is exactly `1` and `CI` is unset; any other value is refused, so a typo cannot turn
//!   into a silent comparison, and the comparison always runs first.
#![allow(dead_code)]

use std::ffi::OsStr;

/// Whether a run with this value of `CI` must not skip anything: any value at all.
pub fn ci_from(ci: Option<&OsStr>) -> bool {
    ci.is_some()
}

/// Whether this run is CI (see the module docs).
pub fn ci() -> bool {
    ci_from(std::env::var_os("CI").as_deref())
}

/// A test that cannot run here: `SKIPPED: why` on stderr and `false` (callers return early on
/// it); under CI a failure instead.
#[track_caller]
pub fn skip(why: &str) -> bool {
    skip_in(ci(), why)
}

/// [`skip`] with the CI decision given (tested without touching the environment).
#[track_caller]
pub fn skip_in(ci: bool, why: &str) -> bool {
    assert!(!ci, "CI is set, so nothing may be skipped: {why}");
    eprintln!("SKIPPED: {why}");
    false
}

/// `ok`, or [`skip`] with `why` when not.
#[track_caller]
pub fn require(ok: bool, why: &str) -> bool {
    ok || skip(why)
}

/// Whether the source-tree files guarded by `var` may be rewritten, from the values of `CI` and
/// of `var`: `Ok(false)` when `var` is unset, `Ok(true)` for exactly `1` outside CI, an error
/// for anything else (`var` set under CI, or a value other than `1`).
pub fn may_rewrite_from(
    var: &str,
    ci: Option<&OsStr>,
    value: Option<&OsStr>,
) -> Result<bool, String> {
    match value {
        None => Ok(false),
        Some(_) if ci_from(ci) => Err(format!(
            "{var} is set under CI: CI compares against the committed files and never rewrites \
             them; unset {var}"
        )),
        Some(v) if v == "1" => Ok(true),
        Some(v) => Err(format!(
            "{var}={v:?}: only {var}=1 rewrites the files; unset it to compare"
        )),
    }
}

/// [`may_rewrite_from`] for this run; a refused combination fails the test loudly.
#[track_caller]
pub fn may_rewrite(var: &str) -> bool {
    let ci = std::env::var_os("CI");
    match may_rewrite_from(var, ci.as_deref(), std::env::var_os(var).as_deref()) {
        Ok(rewrite) => rewrite,
        Err(e) => panic!("{e}"),
    }
}

/// Whether golden files may be rewritten in this run: `UPDATE_GOLDEN=1`, never under CI.
/// Callers compare first and rewrite only what differs.
#[track_caller]
pub fn update_golden() -> bool {
    may_rewrite("UPDATE_GOLDEN")
}
