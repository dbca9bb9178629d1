-- A `GET /task` page is the newest rows of the (script, source, status) groups the
-- filter matches, under the filter's serial if it names one. With these two indexes
-- each group is one id-ordered range, so a page of any filter is a merge of a few
-- short index ranges whose groups the counters (090) list: no walk through rows the
-- filter throws away, whatever the mix (a rare script, an old source, a phone with
-- 100,000 tasks).
CREATE INDEX tasks_serial_group ON tasks (serial, script_name, source, status, id DESC)
    WHERE NOT deleted;
CREATE INDEX tasks_group ON tasks (script_name, source, status, id DESC) WHERE NOT deleted;

-- Served by the two above now (script_name leads one; serial and status lead the other);
-- each index dropped is one less write for every task created or moved.
DROP INDEX tasks_script;
DROP INDEX tasks_source;
DROP INDEX tasks_serial_status;
