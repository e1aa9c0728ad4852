//! An operator (ADMIN, every instance) token made straight in a test's
//! database, as `ccc-callcontrol token create` makes one; shared by the
//! test binaries that have no harness of their own (`metrics`, `otlp`).

use std::time::Duration;

use ccc_callcontrol::app::{App, CreateAccessToken, RequestContext, TokenCache};
use ccc_callcontrol::domain::access::Role;
use ccc_callcontrol::store::Store;
use sqlx::PgPool;

/// The token's secret.
pub async fn operator_token(pool: &PgPool) -> String {
    let direct = App::new(Store::new(pool.clone()), TokenCache::new(Duration::ZERO));
    direct
        .create_access_token(
            &RequestContext::local("test-setup", "test"),
            &CreateAccessToken {
                instance_id: None,
                role: Role::Admin,
                user_id: None,
                expires_in_seconds: None,
            },
        )
        .await
        .unwrap()
        .token
        .reveal()
        .to_owned()
}
