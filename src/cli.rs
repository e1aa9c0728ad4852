//! The `token` subcommands: manage access tokens straight in the database,
//! which is how the first (operator) token comes to exist. The secret goes
//! to stdout alone, so `TOKEN=$(ccc-callcontrol token create …)` works;
//! everything else goes to stderr.

use std::time::Duration;

use anyhow::bail;

use crate::app::{App, CreateAccessToken, RequestContext, TokenCache};
use crate::config::{RoleArg, TokenCommand, TokenCreateArgs};
use crate::domain::access::{self, Role};
use crate::domain::ids::{InstanceId, UserId};
use crate::error::Error;
use crate::startup::prepare_database;
use crate::store::Store;

/// Events record command-line changes as made by this actor.
const ACTOR: &str = "cli";

pub async fn token(command: TokenCommand) -> anyhow::Result<()> {
    let ctx = RequestContext::local(&uuid::Uuid::new_v4().to_string().to_uppercase(), ACTOR);
    match command {
        TokenCommand::Create(args) => {
            let cmd = create_command(&args)?;
            let app = app(&args.database).await?;
            let created = app.create_access_token(&ctx, &cmd).await.map_err(explain)?;
            let r = &created.record;
            eprintln!(
                "created {} ({}, instance {}{}); the token is shown once:",
                r.token_id,
                r.role,
                r.instance_id
                    .as_ref()
                    .map_or("* (operator)", |i| i.as_str()),
                r.user_id
                    .as_ref()
                    .map(|u| format!(", agent {u}"))
                    .unwrap_or_default(),
            );
            println!("{}", created.token.reveal());
        }
        TokenCommand::Revoke { token_id, database } => {
            let app = app(&database).await?;
            let Some(found) = app
                .find_access_token(&ctx, &token_id)
                .await
                .map_err(explain)?
            else {
                bail!("no token {token_id}");
            };
            app.revoke_access_token(&ctx, found.instance_id.as_ref(), &token_id, None)
                .await
                .map_err(explain)?;
            eprintln!("revoked {token_id}");
        }
        TokenCommand::List { instance, database } => {
            let instance = instance
                .map(|i| InstanceId::parse("--instance", &i))
                .transpose()
                .map_err(|v| anyhow::anyhow!("--instance: {}", v.violation))?;
            let app = app(&database).await?;
            println!("TOKEN_ID\tROLE\tINSTANCE\tUSER\tCREATED_AT\tEXPIRES_AT\tREVOKED_AT");
            for t in app
                .list_access_tokens(&ctx, instance.as_ref())
                .await
                .map_err(explain)?
            {
                let ms = |v: Option<i64>| v.map_or("-".to_owned(), |v| v.to_string());
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    t.token_id,
                    t.role,
                    t.instance_id.as_ref().map_or("*", |i| i.as_str()),
                    t.user_id.as_ref().map_or("-", |u| u.as_str()),
                    t.created_at,
                    ms(t.expires_at),
                    ms(t.revoked_at),
                );
            }
        }
    }
    Ok(())
}

async fn app(database: &crate::config::DatabaseArgs) -> anyhow::Result<App> {
    let pool = prepare_database(database).await?;
    Ok(App::new(Store::new(pool), TokenCache::new(Duration::ZERO)))
}

fn create_command(args: &TokenCreateArgs) -> anyhow::Result<CreateAccessToken> {
    let role = match args.role {
        RoleArg::Admin => Role::Admin,
        RoleArg::Agent => Role::Agent,
        RoleArg::Telephony => Role::Telephony,
    };
    let instance = args
        .instance
        .as_deref()
        .map(|i| InstanceId::parse("--instance", i))
        .transpose()
        .map_err(|v| anyhow::anyhow!("--instance: {}", v.violation))?;
    let user = args
        .user
        .as_deref()
        .map(|u| UserId::parse("--user", u))
        .transpose()
        .map_err(|v| anyhow::anyhow!("--user: {}", v.violation))?;
    match (role, &instance, &user) {
        (Role::Agent, Some(_), Some(_))
        | (Role::Admin, _, None)
        | (Role::Telephony, Some(_), None) => {}
        (Role::Agent, _, _) => bail!("an agent token needs --instance and --user"),
        (_, _, Some(_)) => bail!("--user is only for an agent token"),
        (Role::Telephony, None, _) => bail!("a telephony token needs --instance"),
    }
    let expires_in_seconds = access::expires_in(args.expires_in)
        .map_err(|v| anyhow::anyhow!("--expires-in: {}", v.violation))?;
    Ok(CreateAccessToken {
        instance_id: instance,
        role,
        user_id: user,
        expires_in_seconds,
    })
}

/// The contract's message, with the cause for server-side failures.
fn explain(e: Error) -> anyhow::Error {
    match e {
        Error::Unavailable(cause) | Error::Internal(cause) | Error::Contended(cause) => {
            cause.context("The database failed")
        }
        other => anyhow::anyhow!("{other}"),
    }
}
