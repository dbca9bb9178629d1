-- Tasks by status are task_script_stats summed over scripts (a table of a few rows,
-- kept by statement-level triggers); a second counter kept by hand was the same numbers
-- written twice per transaction.
DROP TABLE task_stats;
