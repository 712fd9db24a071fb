//! HTTP tests of the whole API on the real router (no socket), over SQLite
//! or, with `CREDITD_TEST_BACKEND=postgres`, over PostgreSQL (see `support`).

mod support;

mod accounts;
mod auth;
mod bad_input;
mod dashboard;
mod dashboard_manage;
mod grants;
mod idempotency;
mod imports;
mod keys;
mod ledger;
mod metering;
mod models;
mod ops;
mod outgoing;
mod provider_calls;
mod standin;
mod subscriptions;
mod usage;
mod walkthrough;
mod webhooks;
