-- PostgreSQL enqueues a `plan_subscribed` job when a subscription becomes active (a trigger on
-- subscriptions, through steward_enqueue_many). SQLite has no stored functions: there, plan
-- sync runs when a plan changes and from `steward plan sync`.
SELECT 1;
