//! Host AWS credentials and region: the environment first, then the shared files for the
//! profile, with AWS_PROFILE / AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE honoured, and
//! profiles moat cannot use refused with a hint. Debug output never shows a secret.

use moat_secrets::creds::{self, CredsError, Source};
use moat_secrets::env::Env;

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn home_with(credentials: Option<&str>, config: Option<&str>) -> (tempfile::TempDir, Env) {
    let dir = tempfile::tempdir().unwrap();
    let aws = dir.path().join(".aws");
    std::fs::create_dir(&aws).unwrap();
    if let Some(c) = credentials {
        std::fs::write(aws.join("credentials"), c).unwrap();
    }
    if let Some(c) = config {
        std::fs::write(aws.join("config"), c).unwrap();
    }
    let env = Env::from_pairs([("HOME", dir.path().display().to_string())]);
    (dir, env)
}

#[test]
fn environment_wins_and_carries_the_session_token() {
    let (_d, mut env) = home_with(
        Some("[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n"),
        None,
    );
    env.set("AWS_ACCESS_KEY_ID", "AKIDENV");
    env.set("AWS_SECRET_ACCESS_KEY", SECRET);
    env.set("AWS_SESSION_TOKEN", "envtoken");
    let c = creds::load(&env, None).unwrap();
    assert_eq!(c.access_key_id, "AKIDENV");
    assert_eq!(c.secret_access_key(), SECRET);
    assert_eq!(c.session_token(), Some("envtoken"));
    assert_eq!(c.source, Source::Environment);
    let debug = format!("{c:?}");
    assert!(debug.contains("AKIDENV"));
    assert!(
        !debug.contains(SECRET) && !debug.contains("envtoken"),
        "{debug}"
    );

    // An explicit profile reads the files even with the environment set.
    let c = creds::load(&env, Some("default")).unwrap();
    assert_eq!(c.access_key_id, "FILEKEY");
}

#[test]
fn half_set_environment_is_an_error() {
    let env = Env::from_pairs([("AWS_ACCESS_KEY_ID", "AKID")]);
    let err = creds::load(&env, None).unwrap_err();
    assert!(matches!(err, CredsError::HalfEnv));
}

#[test]
fn shared_credentials_file_and_profiles() {
    let (d, mut env) = home_with(
        Some(
            "[default]\naws_access_key_id=DEF\naws_secret_access_key=defsecret\n\n[work]\naws_access_key_id = WORK\naws_secret_access_key = worksecret\naws_session_token = worktoken\n",
        ),
        Some("[default]\nregion = eu-central-1\n[profile work]\nregion = ap-south-1\n"),
    );
    let c = creds::load(&env, None).unwrap();
    assert_eq!(c.access_key_id, "DEF");
    assert_eq!(
        c.source,
        Source::SharedFile {
            path: d.path().join(".aws/credentials"),
            profile: "default".into()
        }
    );
    assert_eq!(creds::region(&env, None).as_deref(), Some("eu-central-1"));

    env.set("AWS_PROFILE", "work");
    let c = creds::load(&env, None).unwrap();
    assert_eq!(c.access_key_id, "WORK");
    assert_eq!(c.session_token(), Some("worktoken"));
    assert_eq!(creds::region(&env, None).as_deref(), Some("ap-south-1"));

    env.set("AWS_DEFAULT_REGION", "us-west-1");
    assert_eq!(creds::region(&env, None).as_deref(), Some("us-west-1"));
    env.set("AWS_REGION", "us-west-2");
    assert_eq!(creds::region(&env, None).as_deref(), Some("us-west-2"));
}

#[test]
fn keys_in_config_profile_sections_and_overridden_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("my-config");
    std::fs::write(
        &config,
        "[profile dev]\naws_access_key_id = DEVKEY\naws_secret_access_key = devsecret\nregion = sa-east-1\n",
    )
    .unwrap();
    let env = Env::from_pairs([
        ("HOME", "/nonexistent".to_string()),
        ("AWS_CONFIG_FILE", config.display().to_string()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("none").display().to_string(),
        ),
    ]);
    let c = creds::load(&env, Some("dev")).unwrap();
    assert_eq!(c.access_key_id, "DEVKEY");
    assert_eq!(
        creds::region(&env, Some("dev")).as_deref(),
        Some("sa-east-1")
    );

    let err = creds::load(&env, None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("no AWS credentials found") && msg.contains("profile default"),
        "{msg}"
    );
    assert_eq!(err.exit_code(), moat_core::exit::CONFIG);
}

#[test]
fn profiles_that_need_a_program_are_refused_with_a_hint() {
    let (_d, env) = home_with(
        None,
        Some(
            "[profile sso]\nsso_session = corp\n[profile proc]\ncredential_process = /bin/get-creds\n",
        ),
    );
    for (p, what) in [("sso", "AWS SSO"), ("proc", "credential_process")] {
        let err = creds::load(&env, Some(p)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(what) && msg.contains("export-credentials"),
            "{msg}"
        );
    }
}

#[test]
fn a_profile_with_half_a_key_is_named() {
    let (_d, env) = home_with(Some("[default]\naws_access_key_id = ONLYID\n"), None);
    let err = creds::load(&env, None).unwrap_err();
    assert!(
        err.to_string().contains("no aws_secret_access_key"),
        "{err}"
    );
}
