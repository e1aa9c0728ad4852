-- pgbench: the floor of StartConference, one round trip a transaction.
-- Client c (from 0) starts calls between its own pairs of agents
-- (floor-setup.sql's agents of its calls c*calls+1 .. (c+1)*calls); the
-- floor makes no state checks, so agents are reused at will.
\set k random(1, :calls)
\set job :client_id * :calls + :k
\set initiator 2 * :job - 1
\set invited 2 * :job
SELECT * FROM floor_start_conference('floor', 'a' || :initiator::text || '@floor', 'a' || :invited::text || '@floor');
