//! creditd-core: the rules of the credit engine, as pure functions.
//!
//! Nothing here does I/O or reads the clock: time and new ids are arguments,
//! and every operation returns a decision (an answer and the [`ledger::Changes`]
//! to write) or a [`engine::Refusal`] that changed nothing.

pub mod account;
pub mod calendar;
pub mod campaign;
pub mod config_apply;
pub mod engine;
pub mod events;
pub mod invariants;
pub mod ledger;
pub mod limits;
pub mod plan;
pub mod price_import;
pub mod pricing;
pub mod proration;
pub mod subscription;
pub mod units;

pub use account::{AccountState, Grant, GrantKind, Hold, HoldStatus, Portion, Source, UsageRecord, Wallet};
pub use engine::Refusal;
pub use plan::{Plan, PlanBook};
pub use subscription::Subscription;
pub use units::{Credits, Factor, Usd};
