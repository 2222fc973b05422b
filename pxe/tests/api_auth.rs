//! The operator API's auth layer against the real `pxe serve` on loopback. The table comes
//! from the router's own route list (`operator::routes()`), so a route added later is covered
//! here without anyone remembering to add it.

mod support;

use support::serve::{self, Server, lab, request};

/// Every operator route with a real node name in it.
fn operator_paths() -> Vec<String> {
    pxe::serve::http::operator::routes()
        .into_iter()
        .map(|(p, _)| {
            let p = p
                .replace("{name}", "k3s-master1")
                .replace("{mac}", "52:54:00:de:ad:01");
            format!("/api/v1{p}")
        })
        .collect()
}

/// What the operator sees of every node: compared before and after each refused request.
fn snapshot(s: &Server) -> String {
    let (st, body) = s.get("/api/v1/nodes");
    assert_eq!(st, 200, "{body}");
    let (st, discovered) = s.get("/api/v1/discovered");
    assert_eq!(st, 200, "{discovered}");
    body + &discovered
}

/// Protects: no operator route answers, or changes anything, without the token — GET
/// included (the node list gives away MACs), and paths that match no route too.
#[test]
fn every_operator_route_wants_the_token_and_changes_nothing_without_it() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let before = snapshot(&s);
    let wrong = format!("Authorization: Bearer {}", "0".repeat(64));
    let mut paths = operator_paths();
    assert!(paths.len() >= 5, "{paths:?}");
    // Unknown paths under the API, and the node routes that moved out of it.
    paths.extend(
        [
            "/api/v1/nope",
            "/api/v1/nodes/k3s-master1/events",
            "/api/v1/nodes/k3s-master1/phone-home",
        ]
        .map(String::from),
    );
    for path in &paths {
        for method in ["GET", "POST", "PUT", "DELETE"] {
            for headers in [
                vec![],
                vec![wrong.as_str()],
                vec!["Authorization: Basic YTpi"],
            ] {
                let (st, body) = request(s.http, method, path, "{}", &headers);
                assert_eq!(st, 401, "{method} {path} {headers:?}: {body}");
            }
        }
    }
    assert_eq!(snapshot(&s), before, "a refused request changed state");
    // The node was not armed anew, and a reload without the token did not happen either.
    assert_eq!(s.state("k3s-master1"), "armed");

    // With the token, each route answers something other than 401.
    for path in operator_paths() {
        let method = if path.ends_with("/nodes")
            || path.ends_with("/k3s-master1")
            || path.ends_with("/discovered")
        {
            "GET"
        } else {
            "POST"
        };
        let (st, body) = s.post_or_get(method, &path);
        assert_ne!(st, 401, "{method} {path}: {body}");
        assert!(st < 500, "{method} {path}: {body}");
    }
}

/// Protects: a web page in the operator's browser cannot drive the API (CSRF), not even with
/// a token, and not with a "simple" text/plain POST.
#[test]
fn cross_origin_requests_are_refused_even_with_the_token() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let auth = format!("Authorization: Bearer {}", s.token);
    let before = snapshot(&s);
    for origin in ["Origin: http://evil.example", "Origin: null"] {
        let (st, body) = request(
            s.http,
            "POST",
            "/api/v1/nodes/k3s-master1/disarm",
            "x",
            &[&auth, origin, "Content-Type: text/plain"],
        );
        assert_eq!(st, 403, "{origin}: {body}");
    }
    assert_eq!(snapshot(&s), before);
    // The server's own origin (its dashboard, later) is fine.
    let own = format!("Origin: http://127.0.0.1:{}", s.http);
    let host = format!("Host: 127.0.0.1:{}", s.http);
    let (st, body) = serve::request_raw(s.http, "GET", "/api/v1/nodes", &[&auth, &own, &host]);
    assert_eq!(st, 200, "{body}");
}

/// Protects: the open routes give away nothing secret. `/metrics` and `/healthz` answer
/// without a token; the node list does not.
#[test]
fn open_routes_stay_open_and_carry_no_secrets() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    assert_eq!(s.anon_get("/healthz").0, 200);
    let (st, m) = s.anon_get("/metrics");
    assert_eq!(st, 200);
    for host in ["k3s1", "k3s-master1"] {
        let mac = lab.mac(host);
        assert!(!m.to_lowercase().contains(&mac.to_lowercase()), "{m}");
        assert!(!m.contains(&lab.report_token(host)), "{m}");
    }
    assert!(!m.contains(&s.token));
    assert_eq!(s.anon_get("/api/v1/nodes").0, 401);
}

/// Protects: the API token file is created owner-only, 256 bits, and reused on restart.
#[test]
fn the_api_token_is_created_owner_only_once() {
    let lab = lab();
    let s = Server::start(&lab, &[]);
    let (token, file) = (s.token.clone(), s.token_file.clone());
    assert_eq!(file, lab.state.join("api-token"));
    assert_eq!(token.len(), 64);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    drop(s);
    let s = Server::start(&lab, &[]);
    assert_eq!(s.token, token, "kept across restarts");
    // --api-token-file replaces it.
    let mine = lab.dir.path().join("my-token");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&mine)
            .unwrap();
        writeln!(f, "{}", "m".repeat(48)).unwrap();
    }
    drop(s);
    let s = Server::start(&lab, &["--api-token-file", mine.to_str().unwrap()]);
    assert_eq!(s.token, "m".repeat(48));
    assert_eq!(s.get("/api/v1/nodes").0, 200);
    let old = format!("Authorization: Bearer {token}");
    assert_eq!(request(s.http, "GET", "/api/v1/nodes", "", &[&old]).0, 401);
}
