-- Idempotency keys: the first successful response to a mutating request
-- that carried `x-idempotency-key`, so a retry of it is answered with that
-- response instead of being applied again. The claim, the change and the
-- response commit in one transaction, so a row is visible only complete.
-- Keyed by tenant first, like every table; '' for requests without one.

CREATE TABLE idempotency_keys (
    instance_id      text        NOT NULL,
    caller           text        NOT NULL, -- the token's handle (tok-…)
    method           text        NOT NULL, -- e.g. EndConference
    idempotency_key  text        NOT NULL,
    request_hash     bytea       NOT NULL CHECK (length(request_hash) = 32),
    response         bytea,                -- the encoded response; set before commit
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (instance_id, caller, method, idempotency_key)
);

-- For the purge of keys past their retention.
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
