//! TLS to PostgreSQL: the service reaches a database that serves TLS with
//! the certificate checked against the CA its URL names
//! (`sslmode=verify-full&sslrootcert=…`), and refuses at once, with the
//! reason, a server whose certificate another CA signed or one without TLS
//! when the URL requires it. Each test runs its own PostgreSQL
//! (`support::private_pg`) with certificates made for it.

use std::time::Duration;

use ccc_callcontrol::config::DatabaseArgs;
use ccc_callcontrol::startup::prepare_database;

use crate::helpers::*;
use crate::support::pki::{PemFile, ca, leaf};
use crate::support::private_pg::PrivatePg;

/// Longer than any refusal should take, far shorter than the 60 s the
/// service keeps trying a database that does not answer yet.
const REFUSED_WITHIN: Duration = Duration::from_secs(20);

/// A private server with TLS, its certificate for 127.0.0.1 signed by a CA
/// whose certificate is returned in a file.
async fn tls_server(tag: &str) -> (PrivatePg, PemFile) {
    let authority = ca("database CA");
    let (cert, key) = leaf(&["127.0.0.1", "localhost"], &authority);
    let pg = PrivatePg::start_with_tls(cert, key).await;
    (pg, PemFile::new(tag, &authority.pem()))
}

/// The service's database settings for `url`.
fn args(url: String) -> DatabaseArgs {
    let mut args = DatabaseArgs::for_url(url);
    args.max_connections = 4;
    args
}

/// Why the service refused the database at `url`: it must, and at once,
/// not after retrying as if the server were starting.
async fn refusal(url: String) -> String {
    let refused = tokio::time::timeout(REFUSED_WITHIN, prepare_database(&args(url)))
        .await
        .expect("refused at once, not retried as if the server were starting")
        .expect_err("refused");
    format!("{refused:#}")
}

#[tokio::test]
async fn the_service_reaches_its_database_over_verified_tls() {
    let (pg, ca_file) = tls_server("verified").await;
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url("ccc_tls"),
        ca_file.path()
    );
    let pool = prepare_database(&args(url))
        .await
        .expect("created, migrated and connected over TLS");
    let app = spawn_app(pool).await;
    let agents = app.ready_agents(&["ann", "bob"]).await;
    let conference = app
        .answered_conference(&agents[0].0, &[&agents[1].1, "13900001234"])
        .await;
    app.end(&agents[0].0, &conference.job_id).await.unwrap();

    // Every session of the database, the test's and the server's pools
    // alike, is encrypted.
    let (sessions, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl)
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
         WHERE a.datname = current_database()",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(sessions >= 2, "the test's and the server's sessions");
    assert_eq!(encrypted, sessions, "every session over TLS");
}

#[tokio::test]
async fn a_database_certificate_from_another_ca_is_refused_at_once() {
    let (pg, _ca_file) = tls_server("trusted").await;
    let stranger = PemFile::new("stranger", &ca("another CA").pem());
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url("ccc_tls"),
        stranger.path()
    );
    let reason = refusal(url).await;
    assert!(
        reason.contains("certificate") || reason.contains("UnknownIssuer"),
        "the reason names the certificate: {reason}"
    );
}

#[tokio::test]
async fn a_url_that_requires_tls_refuses_a_server_without_it() {
    let pg = PrivatePg::start().await;
    let url = format!("{}?sslmode=require", pg.url("ccc_tls"));
    let reason = refusal(url).await;
    assert!(
        reason.to_lowercase().contains("tls") || reason.to_lowercase().contains("ssl"),
        "the reason names TLS: {reason}"
    );
}
