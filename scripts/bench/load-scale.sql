-- Loads a large history into a migrated database, beside whatever is
-- there: :calls ended three-party conferences (default 1,000,000), their
-- channels (3 each) and their events (4 each: StartConference, two
-- ReportChannelEvent, EndConference), spread over instances of 1,000
-- calls and 10 agents each (`scale-000001`, …). For the performance
-- issue's scale check (scripts/bench/scale): the service's statements must
-- cost the same with this much history as without.
--
--   psql -v calls=1000000 -f scripts/bench/load-scale.sql postgres://…/db
--
-- Batches of 50,000 calls, each committed on its own, so the load's memory
-- and WAL stay bounded; VACUUM (ANALYZE) at the end, as autovacuum would
-- soon after such a load, and a CHECKPOINT, so that the measurement after
-- it is of a settled database, not of autovacuum or the checkpointer
-- catching up with gigabytes of new pages.

\set ON_ERROR_STOP on
\if :{?calls}
\else
    \set calls 1000000
\endif
SELECT set_config('scale.calls', :'calls', false) AS calls_set \gset

DO $$
DECLARE
    total   bigint := current_setting('scale.calls')::bigint;
    batch   bigint := 50000;
    per     bigint := 1000; -- calls per instance
    agents  int    := 10;   -- agents per instance
    base_ms bigint := (extract(epoch FROM now()) * 1000)::bigint - 86400000;
    first   bigint;
    last    bigint;
BEGIN
    -- Instances and their agents, all up front.
    INSERT INTO instances (instance_id, name, created_at)
    SELECT format('scale-%s', lpad(i::text, 6, '0')), 'scale', base_ms
    FROM generate_series(1, (total + per - 1) / per) AS i
    ON CONFLICT DO NOTHING;
    INSERT INTO agents (instance_id, user_id, login_name, display_name, extension,
                        work_mode, device_state, user_state)
    SELECT format('scale-%s', lpad(i::text, 6, '0')),
           format('a%s@scale-%s', a, lpad(i::text, 6, '0')),
           'a' || a, 'Agent ' || a, (8000 + a)::text, 'ON_SITE', 'ONLINE', 'READY'
    FROM generate_series(1, (total + per - 1) / per) AS i, generate_series(1, agents) AS a
    ON CONFLICT DO NOTHING;
    COMMIT;

    first := 0;
    WHILE first < total LOOP
        last := least(first + batch, total) - 1;
        -- Call n: instance n / per, initiator agent n % agents + 1, the
        -- next agent invited, and a customer.
        INSERT INTO calls (instance_id, job_id, call_type, initiator, timeout_seconds,
                           created_at, ended_at)
        SELECT format('scale-%s', lpad((n / per + 1)::text, 6, '0')),
               'job-' || (1700000000000000000 + n),
               'CONFERENCE',
               format('a%s@scale-%s', n % agents + 1, lpad((n / per + 1)::text, 6, '0')),
               30, base_ms + n, base_ms + n + 60000
        FROM generate_series(first, last) AS n;

        INSERT INTO channels (instance_id, job_id, channel_id, idx, user_id, user_extension,
                              originator, destination, channel_state, call_type,
                              release_initiator, release_reason, changed_at)
        SELECT format('scale-%s', lpad((n / per + 1)::text, 6, '0')),
               'job-' || (1700000000000000000 + n),
               format('ch:user:%s->%s:%s:job-%s', 8000 + n % agents + 1, d.destination,
                      base_ms + n, 1700000000000000000 + n),
               d.idx,
               CASE WHEN d.party IS NULL THEN NULL
                    ELSE format('a%s@scale-%s', d.party, lpad((n / per + 1)::text, 6, '0')) END,
               CASE WHEN d.party IS NULL THEN '' ELSE (8000 + d.party)::text END,
               (8000 + n % agents + 1)::text, d.destination, 'RELEASED', 'CONFERENCE',
               (8000 + n % agents + 1)::text, '200 - Conference ended', base_ms + n + 60000
        FROM generate_series(first, last) AS n,
             LATERAL (VALUES (1, n % agents + 1, (8000 + n % agents + 1)::text),
                             (2, (n + 1) % agents + 1, (8000 + (n + 1) % agents + 1)::text),
                             (3, NULL, '13900001234')) AS d (idx, party, destination);

        INSERT INTO events (instance_id, request_id, action, actor, job_id, user_ids, before, after)
        SELECT format('scale-%s', lpad((n / per + 1)::text, 6, '0')),
               format('scale-%s-%s', n, e.step),
               e.action,
               format('a%s@scale-%s', n % agents + 1, lpad((n / per + 1)::text, 6, '0')),
               'job-' || (1700000000000000000 + n),
               ARRAY[format('a%s@scale-%s', n % agents + 1, lpad((n / per + 1)::text, 6, '0'))],
               CASE WHEN e.step = 1 THEN NULL ELSE json_build_object('channels', json_build_array()) END,
               json_build_object(
                   'call', json_build_object(
                       'instance_id', format('scale-%s', lpad((n / per + 1)::text, 6, '0')),
                       'job_id', 'job-' || (1700000000000000000 + n),
                       'call_type', 'CONFERENCE',
                       'initiator', format('a%s@scale-%s', n % agents + 1, lpad((n / per + 1)::text, 6, '0')),
                       'tags', '', 'timeout_seconds', 30,
                       'created_at', base_ms + n, 'ended_at', NULL),
                   'channels', json_build_array(),
                   'agents', json_build_array())
        FROM generate_series(first, last) AS n,
             LATERAL (VALUES (1, 'StartConference'), (2, 'ReportChannelEvent'),
                             (3, 'ReportChannelEvent'), (4, 'EndConference')) AS e (step, action)
        ORDER BY n, e.step;

        COMMIT;
        RAISE NOTICE 'loaded % of % calls', last + 1, total;
        first := last + 1;
    END LOOP;
END
$$;

VACUUM (ANALYZE);
CHECKPOINT;
