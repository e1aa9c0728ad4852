//! Loading agents for an action that is not (yet) about a call:
//! ReadyForService and StartConference.

use crate::domain::Agent;
use crate::domain::ids::{Extension, InstanceId, UserId};
use crate::error::Error;

use super::changes::Versions;
use super::rows::{Versioned, agent_columns, agents_and_versions};
use sqlx::PgConnection;

use super::db_error;

/// The agents an action found, as of one snapshot.
#[derive(Debug)]
pub struct LoadedAgents {
    pub instance_exists: bool,
    /// Ordered by user ID.
    pub agents: Vec<Agent>,
    /// What the write must find unchanged: the last event that changed
    /// each agent.
    pub versions: Versions,
}

impl LoadedAgents {
    pub fn agent(&self, user: &UserId) -> Option<&Agent> {
        self.agents.iter().find(|a| &a.user_id == user)
    }
}

/// The acting agent and the agents of `extensions`, in one snapshot: one
/// probe by primary key and one by extension per extension. Each probe is
/// ordered by its own index's key, so when PostgreSQL cannot tell the two
/// unique indexes apart (an instance its statistics do not know yet) the
/// one whose order it needs wins; as one `user_id = … OR extension = ANY
/// (…)` it scanned the whole instance under the `instance_id` prefix.
const LOAD: &str = concat!(
    "SELECT
         EXISTS (SELECT 1 FROM instances WHERE instance_id = $1),
         ARRAY(SELECT ROW(",
    agent_columns!(),
    ") FROM (
                   (SELECT * FROM agents WHERE instance_id = $1 AND user_id = $2
                    ORDER BY user_id LIMIT 1)
                   UNION
                   SELECT found.* FROM unnest($3::text[]) AS wanted (extension)
                   CROSS JOIN LATERAL (
                       SELECT * FROM agents
                       WHERE instance_id = $1 AND extension = wanted.extension
                       ORDER BY extension LIMIT 1) AS found
               ) AS a
               ORDER BY user_id)"
);

/// Reads agent `user` of `instance` and the agents with any of
/// `extensions`.
pub async fn load(
    conn: &mut PgConnection,
    instance: &InstanceId,
    user: &UserId,
    extensions: &[Extension],
) -> Result<LoadedAgents, Error> {
    let extensions: Vec<&str> = extensions.iter().map(Extension::as_str).collect();
    let (instance_exists, rows): (bool, Vec<Versioned<Agent>>) = sqlx::query_as(LOAD)
        .bind(instance.as_str())
        .bind(user.as_str())
        .bind(&extensions)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    let (agents, versions) = agents_and_versions(rows);
    Ok(LoadedAgents {
        instance_exists,
        agents,
        versions: Versions {
            call: None,
            agents: versions,
        },
    })
}
