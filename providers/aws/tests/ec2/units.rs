//! What needs no emulator: ClientTokens, and the rate limit the provider
//! paces its calls at against its declaration.

use drover_provider_aws::{API_RATE_LIMIT, client_token};

#[test]
fn client_tokens_fit_ec2() {
    assert_eq!(client_token("r1/create/web-0"), "r1/create/web-0");
    let long = format!("{}/create-servers/{}", "0".repeat(40), "storage-node-0");
    let t = client_token(&long);
    assert!(t.len() <= 64 && t.is_ascii(), "{t}");
    assert_eq!(t, client_token(&long), "stable across attempts");
    assert_ne!(t, client_token(&format!("{long}x")));
    assert!(client_token("\u{e9}").starts_with("drover-"));
}

/// The rate the provider paces its calls at is the one its declaration
/// gives the scheduler.
#[test]
fn rate_limit_matches_the_declaration() {
    let decl = include_str!("../../kcl/dependencies.k");
    let line = decl
        .lines()
        .find(|l| l.trim_start().starts_with("api_rate_limit"))
        .unwrap_or_default();
    let value: f64 = line
        .split('=')
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    assert_eq!(value, API_RATE_LIMIT, "kcl/dependencies.k says {line:?}");
}
