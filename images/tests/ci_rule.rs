//! The workspace's rule for skips and golden files (`support/ci.rs`), which every crate's tests
//! include: these tests fail if the rule is weakened.

#[path = "support/ci.rs"]
mod ci;

use std::ffi::OsStr;

fn os(s: &str) -> Option<&OsStr> {
    Some(OsStr::new(s))
}

/// Protects "CI means nothing is skipped" for every CI runner, not only `.ci/run`'s
/// `CI=true`: a check of `CI == "true"` would let `CI=1` runs skip silently.
#[test]
fn any_value_of_ci_forbids_skipping() {
    for v in ["true", "1", "yes", "false", "0", ""] {
        assert!(ci::ci_from(os(v)), "CI={v:?}");
        let r = std::panic::catch_unwind(|| ci::skip_in(ci::ci_from(os(v)), "probe"));
        assert!(r.is_err(), "CI={v:?}: a skip must fail");
    }
    assert!(!ci::ci_from(None));
    assert!(!ci::skip_in(false, "probe: a skip outside CI passes"));
}

/// Protects the golden files: only `UPDATE_GOLDEN=1` outside CI rewrites them; under CI any
/// value is an error (CI must compare), and a value other than `1` is refused instead of being
/// taken as "update" (any value used to rewrite them, and the test then passed uncompared).
#[test]
fn golden_files_are_rewritten_only_with_update_golden_1_outside_ci() {
    let rule = |ci: Option<&OsStr>, v: Option<&OsStr>| ci::may_rewrite_from("UPDATE_GOLDEN", ci, v);
    assert_eq!(rule(None, None), Ok(false));
    assert_eq!(rule(None, os("1")), Ok(true));
    assert_eq!(rule(os("true"), None), Ok(false));
    for ci in [os("true"), os("1"), os("")] {
        let e = rule(ci, os("1")).unwrap_err();
        assert!(e.contains("under CI"), "{e}");
    }
    for v in ["0", "true", "yes", ""] {
        let e = rule(None, os(v)).unwrap_err();
        assert!(e.contains("only UPDATE_GOLDEN=1"), "{v:?}: {e}");
    }
}
