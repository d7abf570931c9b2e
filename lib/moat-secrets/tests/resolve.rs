//! Resolver failures that happen before or instead of an AWS answer: no region, no
//! credentials, an endpoint that does not answer. Each names the secret and what to do.

use moat_secrets::env::Env;
use moat_secrets::resolve::Resolver;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn env(extra: &[(&str, &str)]) -> Env {
    let mut e = Env::from_pairs([
        ("HOME", "/nonexistent"),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_SESSION_TOKEN", "host-session-token"),
    ]);
    for (k, v) in extra {
        e.set(*k, *v);
    }
    e
}

#[tokio::test]
async fn ssm_without_a_region_says_how_to_give_one() {
    let err = Resolver::new(env(&[]))
        .resolve("DATABASE_URL", "ssm:///prod/db/url")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "secret DATABASE_URL (ssm:///prod/db/url): no AWS region for an ssm:/// reference"
    );
    assert!(
        err.hint().contains("AWS_REGION") && err.hint().contains("ssm://REGION/prod/db/url"),
        "{}",
        err.hint()
    );
    assert_eq!(err.exit_code(), moat_core::exit::CONFIG);
}

#[tokio::test]
async fn ssm_without_host_credentials_says_so() {
    let e = Env::from_pairs([("HOME", "/nonexistent"), ("AWS_REGION", "eu-west-1")]);
    let err = Resolver::new(e)
        .resolve("DATABASE_URL", "ssm:///prod/db/url")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no AWS credentials found"), "{msg}");
    assert!(err.hint().contains("AWS_ACCESS_KEY_ID"), "{}", err.hint());
}

#[tokio::test]
async fn an_endpoint_that_does_not_answer_is_named_and_nothing_secret_leaks() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let err = Resolver::new(env(&[("AWS_ENDPOINT_URL_SSM", &url)]))
        .resolve("DATABASE_URL", "ssm://eu-west-1/prod/db/url")
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "secret DATABASE_URL (ssm://eu-west-1/prod/db/url): connecting to {url}"
        )),
        "{msg}"
    );
    assert_eq!(err.exit_code(), moat_core::exit::UNAVAILABLE);
    let all = format!("{msg} {err:?} {}", err.hint());
    assert!(
        !all.contains(SECRET) && !all.contains("host-session-token"),
        "{all}"
    );
}

#[tokio::test]
async fn unknown_backends_are_config_errors() {
    let err = Resolver::new(env(&[]))
        .resolve("TOKEN", "vault://secret/x")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown secret backend"), "{err}");
    assert!(err.hint().contains("TOKEN"), "{}", err.hint());
    assert_eq!(err.exit_code(), moat_core::exit::CONFIG);
}
