-- pgbench: the floor of ReportChannelEvent, one round trip a transaction:
-- an answer reported for the second channel (an agent's) of one of the
-- client's own calls (floor-setup.sql), again and again.
\set k random(1, :calls)
\set job :client_id * :calls + :k
SELECT * FROM floor_report_channel_event('floor', 'job-' || :job::text, 'ch-' || :job::text || '-2');
