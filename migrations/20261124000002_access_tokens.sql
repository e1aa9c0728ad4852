-- Access tokens: who may call. Only a SHA-256 hash of each token is kept;
-- the token itself is shown once, at creation.
--
-- instance_id is '' for an operator token (an ADMIN for every instance).
-- Tokens are looked up by hash before the tenant is known, so in a
-- distributed deployment this small table is a reference (replicated) table.

CREATE TABLE access_tokens (
    instance_id  text    NOT NULL, -- '' for an operator
    token_id     text    NOT NULL, -- public handle, 'tok-' + 16 hex digits
    role         text    NOT NULL CHECK (role IN ('ADMIN', 'AGENT', 'TELEPHONY')),
    user_id      text,             -- the agent of an AGENT token
    token_hash   bytea   NOT NULL CHECK (length(token_hash) = 32),
    created_at   bigint  NOT NULL, -- ms since epoch
    created_by   text    NOT NULL,
    expires_at   bigint,           -- ms since epoch; NULL: never
    revoked_at   bigint,           -- ms since epoch; NULL: live
    CONSTRAINT access_tokens_pkey PRIMARY KEY (instance_id, token_id),
    CONSTRAINT access_tokens_hash_key UNIQUE (token_hash),
    CONSTRAINT access_tokens_agent_has_user CHECK ((role = 'AGENT') = (user_id IS NOT NULL)),
    CONSTRAINT access_tokens_only_admins_span_instances CHECK (instance_id <> '' OR role = 'ADMIN'),
    CONSTRAINT access_tokens_agent_fkey FOREIGN KEY (instance_id, user_id) REFERENCES agents (instance_id, user_id)
);
