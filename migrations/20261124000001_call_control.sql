-- The call-control schema. Every table is keyed by the tenant (instance_id)
-- first and every query filters on it, so tenants stay apart and the data
-- can later be distributed by instance_id (e.g. Citus) without a redesign.
-- Enumerations are stored as their documented names.

CREATE TABLE instances (
    instance_id  text        NOT NULL,
    name         text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    created_at   bigint      NOT NULL, -- ms since epoch
    CONSTRAINT instances_pkey PRIMARY KEY (instance_id)
);

CREATE TABLE agents (
    instance_id        text    NOT NULL,
    user_id            text    NOT NULL, -- login_name@instance_id
    login_name         text    NOT NULL,
    display_name       text    NOT NULL,
    extension          text    NOT NULL,
    mobile             text    NOT NULL DEFAULT '',
    work_mode          text    NOT NULL CHECK (work_mode IN ('ON_SITE', 'OFF_SITE', 'OFFICE_PHONE')),
    device_id          text    NOT NULL DEFAULT '',
    device_state       text    NOT NULL CHECK (device_state IN ('UNREGISTERED', 'OFFLINE', 'ONLINE')),
    user_state         text    NOT NULL CHECK (user_state IN ('OFFLINE', 'READY', 'BREAK', 'RINGING', 'DIALING', 'TALKING', 'WORKING')),
    break_code         text    NOT NULL DEFAULT '',
    job_id             text,   -- current or last call
    outbound_scenario  boolean NOT NULL DEFAULT false,
    signed_skill_groups text[] NOT NULL DEFAULT '{}',
    context_id         bigint  NOT NULL DEFAULT 0, -- last event that changed the agent
    CONSTRAINT agents_pkey PRIMARY KEY (instance_id, user_id),
    CONSTRAINT agents_login_name_key UNIQUE (instance_id, login_name),
    CONSTRAINT agents_extension_key UNIQUE (instance_id, extension),
    CONSTRAINT agents_instance_fkey FOREIGN KEY (instance_id) REFERENCES instances (instance_id)
);

CREATE TABLE calls (
    instance_id      text    NOT NULL,
    job_id           text    NOT NULL,
    call_type        text    NOT NULL CHECK (call_type IN ('INBOUND', 'OUTBOUND', 'INTERNAL', 'CONSULTANT', 'CONFERENCE', 'BARGE', 'MONITOR', 'COACH', 'INTERCEPT', 'BACK2BACK', 'PREDICTIVE')),
    initiator        text    NOT NULL, -- user_id of the agent who started it
    tags             text    NOT NULL DEFAULT '',
    timeout_seconds  integer NOT NULL,
    created_at       bigint  NOT NULL, -- ms since epoch
    ended_at         bigint,           -- ms since epoch; NULL while up
    context_id       bigint  NOT NULL DEFAULT 0, -- last event that changed the call
    CONSTRAINT calls_pkey PRIMARY KEY (instance_id, job_id),
    CONSTRAINT calls_instance_fkey FOREIGN KEY (instance_id) REFERENCES instances (instance_id),
    CONSTRAINT calls_initiator_fkey FOREIGN KEY (instance_id, initiator) REFERENCES agents (instance_id, user_id)
);

ALTER TABLE agents
    ADD CONSTRAINT agents_job_fkey FOREIGN KEY (instance_id, job_id) REFERENCES calls (instance_id, job_id);

CREATE TABLE channels (
    instance_id        text    NOT NULL,
    job_id             text    NOT NULL,
    channel_id         text    NOT NULL,
    idx                integer NOT NULL CHECK (idx >= 1),
    user_id            text,   -- NULL for a customer
    user_extension     text    NOT NULL DEFAULT '',
    originator         text    NOT NULL,
    destination        text    NOT NULL,
    channel_state      text    NOT NULL CHECK (channel_state IN ('NONE', 'CREATED', 'RINGING', 'EARLY_MEDIA', 'ANSWERED', 'RELEASED', 'RETIRED')),
    call_type          text    NOT NULL,
    release_initiator  text    NOT NULL DEFAULT '',
    release_reason     text    NOT NULL DEFAULT '',
    changed_at         bigint  NOT NULL, -- ms since epoch: the contract's Timestamp
    CONSTRAINT channels_pkey PRIMARY KEY (instance_id, job_id, channel_id),
    CONSTRAINT channels_idx_key UNIQUE (instance_id, job_id, idx),
    CONSTRAINT channels_call_fkey FOREIGN KEY (instance_id, job_id) REFERENCES calls (instance_id, job_id),
    CONSTRAINT channels_agent_fkey FOREIGN KEY (instance_id, user_id) REFERENCES agents (instance_id, user_id)
);

-- One row per successful change, written in the change's own transaction.
-- event_id is the contract's ContextId. Rows are never updated or deleted.
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
    CONSTRAINT events_pkey PRIMARY KEY (instance_id, event_id),
    CONSTRAINT events_instance_fkey FOREIGN KEY (instance_id) REFERENCES instances (instance_id)
);

CREATE INDEX events_job_idx ON events (instance_id, job_id, event_id) WHERE job_id IS NOT NULL;

CREATE FUNCTION events_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP;
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_append_only();
