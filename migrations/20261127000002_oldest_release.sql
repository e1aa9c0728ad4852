-- The oldest release whose replicas serve this schema. From 0.2.0 on, a
-- replica starts on the schema of a newer release (each release's replicas
-- keep serving the schema the next one migrates to, so a replica restarted
-- during a rollout, or rolled back by a release, still starts), and
-- refuses only a schema that names a release newer than its own here
-- (`startup::schema`). A migration that leaves older releases unable to
-- serve it redefines this function, with the release that can.
--
-- 0.1.0: builds before it cannot read the state columns as domains
-- (20261127000001_state_domains.sql).
CREATE FUNCTION ccc_oldest_release() RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT '0.1.0' $$;
