-- "This phone's pending (or failed) tasks" is the list operators ask for most. With
-- most tasks pending, the status index alone walks nearly the whole table for it.
CREATE INDEX tasks_serial_status ON tasks (serial, status, id DESC) WHERE NOT deleted;
