-- The event log, partitioned by day of created_at (UTC), so the service
-- removes events past their retention by dropping whole days: an
-- append-only log is never DELETEd from (docs/events.md, "Retention").
--
-- The primary key gains created_at because a partitioned table's unique
-- keys must hold its partition key; event_id stays unique (an identity).
-- The identity's sequence must keep CACHE 1: the event stream reads the
-- highest ID handed out from it (store::events::probe).

ALTER TABLE events RENAME TO events_unpartitioned;
ALTER INDEX events_pkey RENAME TO events_unpartitioned_pkey;
ALTER INDEX events_job_idx RENAME TO events_unpartitioned_job_idx;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_instance_fkey TO events_unpartitioned_instance_fkey;
DROP TRIGGER events_append_only ON events_unpartitioned;

CREATE TABLE events (
    instance_id  text        NOT NULL,
    event_id     bigint      GENERATED ALWAYS AS IDENTITY,
    request_id   text        NOT NULL,
    action       text        NOT NULL, -- e.g. EndConference
    actor        text        NOT NULL, -- the acting agent, or the service that called
    job_id       text,                 -- the call changed, if any
    user_ids     text[]      NOT NULL DEFAULT '{}', -- every agent whose state changed
    before       jsonb,                -- what changed, as it was (NULL for a creation)
    after        jsonb       NOT NULL, -- what changed, as it is now
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (instance_id, event_id, created_at),
    CONSTRAINT events_instance_fkey FOREIGN KEY (instance_id) REFERENCES instances (instance_id)
) PARTITION BY RANGE (created_at);

CREATE INDEX events_job_idx ON events (instance_id, job_id, event_id) WHERE job_id IS NOT NULL;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();

-- Everything before today in one partition; today and the week ahead a
-- partition a day (the service keeps creating days ahead).
DO $$
DECLARE
    today timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    day timestamptz;
BEGIN
    EXECUTE format('CREATE TABLE events_archive PARTITION OF events FOR VALUES FROM (MINVALUE) TO (%L)', today);
    FOR i IN 0..7 LOOP
        day := today + make_interval(days => i);
        EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)',
                       'events_p' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'),
                       day, day + interval '1 day');
    END LOOP;
END
$$;

INSERT INTO events OVERRIDING SYSTEM VALUE SELECT * FROM events_unpartitioned;
SELECT setval(pg_get_serial_sequence('events', 'event_id'),
              coalesce((SELECT max(event_id) FROM events_unpartitioned), 0) + 1, false);
DROP TABLE events_unpartitioned;

-- Per instance, the highest event ID removed with an expired day: a
-- watcher resuming from below it may have missed changes (Cursor.Expired).
CREATE TABLE event_floors (
    instance_id      text   NOT NULL,
    removed_through  bigint NOT NULL,
    CONSTRAINT event_floors_pkey PRIMARY KEY (instance_id),
    CONSTRAINT event_floors_instance_fkey FOREIGN KEY (instance_id) REFERENCES instances (instance_id)
);
