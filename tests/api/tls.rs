//! Transport security: TLS with a CA the client trusts, and mutual TLS.
//! Certificates are made per test (`support::pki`); none are committed.

use std::time::Duration;

use ccc_callcontrol::domain::access::Role;
use ccc_callcontrol::proto::{self, call_control_client::CallControlClient};
use ccc_callcontrol::startup::{Application, ServeOptions, TlsPem};
use sqlx::PgPool;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::helpers::*;
use crate::support::pki::{ca, leaf};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
    /// Signed by a CA the server does not trust.
    stranger: (String, String),
}

fn pki() -> Pki {
    let ca = ca("test CA");
    let other = ca_pem_pair();
    Pki {
        ca_pem: ca.pem(),
        server: leaf(&["localhost", "127.0.0.1"], &ca),
        client: leaf(&["agent-desktop"], &ca),
        stranger: other,
    }
}

fn ca_pem_pair() -> (String, String) {
    let other = ca("another CA");
    leaf(&["stranger"], &other)
}

/// Serves over TLS (mutual TLS when `mutual`); returns the address and a
/// guard that stops the server when dropped.
async fn serve(pool: PgPool, pki: &Pki, mutual: bool) -> (String, oneshot::Sender<()>) {
    let tls = TlsPem {
        cert_chain: pki.server.0.clone().into_bytes(),
        key: pki.server.1.clone().into_bytes(),
        client_ca: mutual.then(|| pki.ca_pem.clone().into_bytes()),
    };
    let options = ServeOptions {
        tls: Some(tls),
        token_cache_ttl: Duration::ZERO,
        ..ServeOptions::default()
    };
    let app = Application::bind("127.0.0.1:0".parse().unwrap(), pool, options)
        .await
        .unwrap();
    let addr = app.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    (format!("https://localhost:{}", addr.port()), stop)
}

async fn connect(
    url: &str,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(url.to_owned())
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Whether a client that trusts `ca_pem` and presents `identity` fails to
/// make a call: at the handshake, or at the first request.
async fn refused(
    url: &str,
    ca_pem: &str,
    identity: Option<&(String, String)>,
    token: &str,
) -> bool {
    match connect(url, ca_pem, identity).await {
        Err(_) => true,
        Ok(channel) => poll(channel, token).await.is_err(),
    }
}

/// A real call over the channel, with a real token.
async fn poll(channel: Channel, token: &str) -> Result<(), tonic::Status> {
    let mut calls = CallControlClient::with_interceptor(channel, Bearer::token(token));
    calls
        .poll_user_status(proto::PollUserStatusRequest {
            instance_id: INSTANCE.into(),
            user_id: "alice@ccc-test".into(),
        })
        .await
        .map(drop)
}

/// An instance with agent alice, an operator token, fresh certificates, and
/// the server on TLS (mutual when `mutual`): (pki, url, token, stop guard).
async fn tls_server(pool: PgPool, mutual: bool) -> (Pki, String, String, oneshot::Sender<()>) {
    let plain = spawn_app(pool.clone()).await;
    plain.ready_agents(&["alice"]).await;
    let token = create_token(&plain.direct, None, Role::Admin, None, None).await;
    let pki = pki();
    let (url, stop) = serve(pool, &pki, mutual).await;
    (pki, url, token, stop)
}

#[sqlx::test]
async fn tls_with_a_trusted_ca(pool: PgPool) {
    let (pki, url, token, _stop) = tls_server(pool, false).await;

    let channel = connect(&url, &pki.ca_pem, None)
        .await
        .expect("TLS handshake");
    poll(channel, &token).await.expect("a call over TLS");

    // A client that does not trust the server's CA cannot connect.
    let stranger_ca = ca("stranger CA").pem();
    assert!(
        refused(&url, &stranger_ca, None, &token).await,
        "an untrusted server certificate must fail"
    );

    // Plaintext against a TLS port fails.
    let plaintext = Channel::from_shared(url.replace("https", "http"))
        .unwrap()
        .connect()
        .await;
    let plaintext_refused = match plaintext {
        Err(_) => true,
        Ok(channel) => poll(channel, &token).await.is_err(),
    };
    assert!(plaintext_refused, "plaintext must not reach a TLS server");
}

#[sqlx::test]
async fn mutual_tls_requires_a_client_certificate_from_the_ca(pool: PgPool) {
    let (pki, url, token, _stop) = tls_server(pool, true).await;

    let with_cert = connect(&url, &pki.ca_pem, Some(&pki.client))
        .await
        .expect("mTLS handshake");
    poll(with_cert, &token)
        .await
        .expect("a call over mutual TLS");

    for (case, identity) in [
        ("no client certificate", None),
        ("a certificate from another CA", Some(&pki.stranger)),
    ] {
        assert!(
            refused(&url, &pki.ca_pem, identity, &token).await,
            "{case} must be refused"
        );
    }
}
