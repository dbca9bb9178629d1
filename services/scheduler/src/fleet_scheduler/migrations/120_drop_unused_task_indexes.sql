-- Two of the first indexes on tasks serve no query any more: lists by status or serial
-- are merges of the (serial,) script, source, status ranges (091), dispatch reads
-- `tasks_due`, and nothing else filters on status or serial alone among tasks not
-- deleted (pg_stat_user_indexes showed neither scanned over a whole bench run). Each
-- costs a write for every task created and every status change: 3 to 4 per task.
DROP INDEX tasks_status;
DROP INDEX tasks_serial;
