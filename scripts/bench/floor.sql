-- pgbench: the floor of EndConference, one round trip a transaction.
-- Client c (from 0) uses only its own calls c*calls+1 .. (c+1)*calls;
-- `-D calls=M` must match floor-setup.sql's.
\set k random(1, :calls)
\set job :client_id * :calls + :k
\set leaver 2 * :job - 1
SELECT * FROM floor_end_conference('floor', 'job-' || :job::text, 'a' || :leaver::text || '@floor');
