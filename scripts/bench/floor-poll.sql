-- pgbench: the floor of PollUserStatus, one round trip a transaction: an
-- agent by primary key, with its call and channels (none here, as for the
-- bench's READY agents).
\set k random(1, 2 * :clients * :calls)
SELECT to_jsonb(a), (SELECT count(*) FROM channels ch
                     WHERE ch.instance_id = a.instance_id AND ch.job_id = a.job_id)
FROM agents a WHERE a.instance_id = 'floor' AND a.user_id = 'a' || :k::text || '@floor';
