-- An event's before and after are stored as the JSON text the service
-- wrote (json), not parsed into jsonb. Nothing queries inside them: the
-- event stream reads them back whole, many times a second, and turning
-- jsonb back into text for every row read was most of the tail's page
-- read (docs/performance.md, "The event log as text"); writing json only
-- checks the text instead of building jsonb.
--
-- This rewrites every kept day of the log under an ACCESS EXCLUSIVE lock
-- on events: writes wait until it is done (4.7 s for 251,556 events on
-- the reference machine; docs/operations.md, "Upgrading").
ALTER TABLE events
    ALTER COLUMN before TYPE json USING before::json,
    ALTER COLUMN after TYPE json USING after::json;
