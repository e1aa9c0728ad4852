-- The floor's data and function, on a database migrated with our own
-- schema (`ccc-callcontrol migrate`). Run by scripts/bench/compare with
-- psql -v clients=N -v calls=M: N pgbench clients, each with M calls of its
-- own, so clients never wait on each other's rows (as the service bench's
-- workers never share agents).
--
-- Call k (1 .. N*M), job 'job-k', is a conference of agent a(2k-1) (the
-- one who leaves), agent a(2k) and a customer, every channel answered.

\set ON_ERROR_STOP on

INSERT INTO instances (instance_id, name, created_at) VALUES ('floor', 'floor', 0);

INSERT INTO agents (instance_id, user_id, login_name, display_name, extension,
                    work_mode, device_state, user_state)
SELECT 'floor', 'a' || g || '@floor', 'a' || g, 'A' || g, (100000 + g)::text,
       'ON_SITE', 'ONLINE', 'TALKING'
FROM generate_series(1, 2 * :clients * :calls) AS g;

INSERT INTO calls (instance_id, job_id, call_type, initiator, timeout_seconds, created_at)
SELECT 'floor', 'job-' || k, 'CONFERENCE', 'a' || (2 * k - 1) || '@floor', 30, 0
FROM generate_series(1, :clients * :calls) AS k;

INSERT INTO channels (instance_id, job_id, channel_id, idx, user_id, user_extension,
                      originator, destination, channel_state, call_type, changed_at)
SELECT 'floor', 'job-' || k, 'ch-' || k || '-' || i, i,
       CASE WHEN i < 3 THEN 'a' || (2 * k - 2 + i) || '@floor' END,
       CASE WHEN i < 3 THEN (100000 + 2 * k - 2 + i)::text ELSE '' END,
       (100000 + 2 * k - 1)::text,
       CASE WHEN i < 3 THEN (100000 + 2 * k - 2 + i)::text ELSE '+8613900000000' END,
       'ANSWERED', 'CONFERENCE', 0
FROM generate_series(1, :clients * :calls) AS k, generate_series(1, 3) AS i;

-- The functions read channel_state as text: RETURN QUERY wants the declared
-- types exactly, and the state columns are domains over text
-- (migrations/20261127000001_state_domains.sql).

-- The least an EndConference must do, in one round trip: lock the call,
-- release the leaver's channel, append the event, update the agent, and
-- read the channels back. It writes no JSON of the whole call and does no
-- state checks: it is the floor, not a competitor.
CREATE FUNCTION floor_end_conference(p_instance text, p_job text, p_user text)
RETURNS TABLE (o_channel_id text, o_channel_state text, o_changed_at bigint)
LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    ev bigint;
BEGIN
    PERFORM 1 FROM calls c
    WHERE c.instance_id = p_instance AND c.job_id = p_job
    FOR NO KEY UPDATE;

    UPDATE channels ch
    SET channel_state = 'RELEASED', release_initiator = 'floor',
        release_reason = '200 - Left conference', changed_at = now_ms
    WHERE ch.instance_id = p_instance AND ch.job_id = p_job AND ch.user_id = p_user;

    INSERT INTO events (instance_id, request_id, action, actor, job_id, user_ids, before, after)
    VALUES (p_instance, 'floor', 'EndConference', p_user, p_job, ARRAY[p_user],
            json_build_object('channel_state', 'ANSWERED', 'user_state', 'TALKING'),
            json_build_object('channel_state', 'RELEASED', 'user_state', 'WORKING',
                               'changed_at', now_ms))
    RETURNING event_id INTO ev;

    UPDATE agents a
    SET user_state = 'WORKING', context_id = ev
    WHERE a.instance_id = p_instance AND a.user_id = p_user;

    RETURN QUERY
        SELECT ch.channel_id, ch.channel_state::text, ch.changed_at
        FROM channels ch
        WHERE ch.instance_id = p_instance AND ch.job_id = p_job
        ORDER BY ch.idx;
END;
$$;

-- The least a StartConference must do, in one round trip: a new call with
-- the initiator's channel answered and the invited agent's and the
-- customer's ringing, the event, both agents updated, the channels read
-- back. Job IDs come from a sequence; no state checks.
CREATE SEQUENCE floor_jobs;

CREATE FUNCTION floor_start_conference(p_instance text, p_initiator text, p_invited text)
RETURNS TABLE (o_job_id text, o_channel_id text, o_channel_state text)
LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    job text := 'job-s' || nextval('floor_jobs');
    ev bigint;
BEGIN
    INSERT INTO events (instance_id, request_id, action, actor, job_id, user_ids, before, after)
    VALUES (p_instance, 'floor', 'StartConference', p_initiator, job,
            ARRAY[p_initiator, p_invited], NULL,
            json_build_object('job_id', job, 'initiator', p_initiator, 'invited', p_invited,
                               'created_at', now_ms))
    RETURNING event_id INTO ev;

    INSERT INTO calls (instance_id, job_id, call_type, initiator, timeout_seconds, created_at,
                       context_id)
    VALUES (p_instance, job, 'CONFERENCE', p_initiator, 30, now_ms, ev);

    INSERT INTO channels (instance_id, job_id, channel_id, idx, user_id, user_extension,
                          originator, destination, channel_state, call_type, changed_at)
    VALUES (p_instance, job, job || '-1', 1, p_initiator, '1', '1', '1', 'ANSWERED',
            'CONFERENCE', now_ms),
           (p_instance, job, job || '-2', 2, p_invited, '2', '1', '2', 'RINGING',
            'CONFERENCE', now_ms),
           (p_instance, job, job || '-3', 3, NULL, '', '1', '+8613900000000', 'RINGING',
            'CONFERENCE', now_ms);

    UPDATE agents a
    SET user_state = 'TALKING', job_id = job, context_id = ev
    WHERE a.instance_id = p_instance AND a.user_id IN (p_initiator, p_invited);

    RETURN QUERY
        SELECT job, ch.channel_id, ch.channel_state::text
        FROM channels ch
        WHERE ch.instance_id = p_instance AND ch.job_id = job
        ORDER BY ch.idx;
END;
$$;

-- The least a ReportChannelEvent must do, in one round trip: lock the
-- call, set one channel's state, append the event, update the channel's
-- agent, read the channels back. No state checks: the same channel is
-- reported again and again.
CREATE FUNCTION floor_report_channel_event(p_instance text, p_job text, p_channel text)
RETURNS TABLE (o_channel_id text, o_channel_state text, o_changed_at bigint)
LANGUAGE plpgsql AS $$
DECLARE
    now_ms bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    agent text;
    ev bigint;
BEGIN
    PERFORM 1 FROM calls c
    WHERE c.instance_id = p_instance AND c.job_id = p_job
    FOR NO KEY UPDATE;

    UPDATE channels ch
    SET channel_state = 'ANSWERED', changed_at = now_ms
    WHERE ch.instance_id = p_instance AND ch.job_id = p_job AND ch.channel_id = p_channel
    RETURNING ch.user_id INTO agent;

    INSERT INTO events (instance_id, request_id, action, actor, job_id, user_ids, before, after)
    VALUES (p_instance, 'floor', 'ReportChannelEvent', 'telephony', p_job, ARRAY[agent],
            json_build_object('channel_state', 'RINGING', 'user_state', 'RINGING'),
            json_build_object('channel_state', 'ANSWERED', 'user_state', 'TALKING',
                               'changed_at', now_ms))
    RETURNING event_id INTO ev;

    UPDATE agents a
    SET user_state = 'TALKING', context_id = ev
    WHERE a.instance_id = p_instance AND a.user_id = agent;

    RETURN QUERY
        SELECT ch.channel_id, ch.channel_state::text, ch.changed_at
        FROM channels ch
        WHERE ch.instance_id = p_instance AND ch.job_id = p_job
        ORDER BY ch.idx;
END;
$$;

VACUUM ANALYZE;
