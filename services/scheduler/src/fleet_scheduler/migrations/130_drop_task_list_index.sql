-- The unfiltered `GET /task` page is now the group merge every filtered page is (091):
-- all of `task_counts`'s groups, each the id-ordered range of `tasks_group`. That was
-- the last reader of `tasks_list`, and it cost a write for every task created and every
-- change to one (a non-HOT update enters every index): four per task in a flood, a
-- fifth of the index entries a task makes.
DROP INDEX tasks_list;
