//! Run after the `api` suite (scripts/test does): scans every log line that
//! suite wrote, at DEBUG for every crate, for any token it created and for
//! any phone number of its fixtures unmasked. Ignored in a plain
//! `cargo test`, where it may run before the suite has written its logs.

use std::fs;

const LOG_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/api-suite.log");
const SECRETS_FILE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/api-suite-secrets.txt");

/// Every phone number the suite uses, and how a log may show it.
const FIXTURE_NUMBERS: &[(&str, &str)] = &[
    ("13900001234", "1390000****"),
    ("+8613900001234", "+861390000****"),
    ("13900001111", "1390000****"),
];

#[test]
#[ignore = "reads the logs of the api suite; scripts/test runs it after that suite"]
fn the_suite_logs_no_token_and_no_unmasked_number() {
    let logs = fs::read_to_string(LOG_FILE)
        .expect("the api suite's log: run `cargo test --test api` first");
    let secrets = fs::read_to_string(SECRETS_FILE).expect("the api suite's tokens");
    let secrets: Vec<&str> = secrets.lines().filter(|l| !l.is_empty()).collect();

    // The check must be able to fail: there are logs, tokens, and masked
    // numbers in the logs (the suite's conferences call customers).
    assert!(
        logs.lines().count() > 1000,
        "too few log lines to judge: {}",
        logs.lines().count()
    );
    assert!(
        secrets.len() > 20,
        "too few tokens recorded: {}",
        secrets.len()
    );
    assert!(
        logs.contains("1390000****"),
        "no masked number in the logs: is the conference log line gone?"
    );
    assert!(
        logs.contains("authenticated"),
        "no authentication in the logs"
    );

    for secret in &secrets {
        assert!(secret.starts_with("ccc_"), "not a token: {secret:?}");
        let hex = &secret["ccc_".len()..];
        assert!(!logs.contains(hex), "a token's secret is in the logs");
    }
    for (number, masked) in FIXTURE_NUMBERS {
        let leaks: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(number))
            .take(3)
            .collect();
        assert!(
            leaks.is_empty(),
            "{number} unmasked (should read {masked}):\n{}",
            leaks.join("\n")
        );
    }
}
