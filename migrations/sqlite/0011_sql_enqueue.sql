-- PostgreSQL gains its SQL enqueue functions here (steward_enqueue, steward_enqueue_many).
-- SQLite has no stored functions: enqueue through steward (the CLI, the API, the library).
SELECT 1;
