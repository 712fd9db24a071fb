//! The JSON shapes of the API (the only serde types of the project) and
//! their conversions to and from core and store types.
//!
//! Amounts travel as canonical decimal strings and are parsed here;
//! timestamps as RFC 3339 strings.

mod account;
mod common;
mod grant;
mod import;
mod metering;
mod model;
mod plan;
mod proxy_key;
mod usage;
mod webhook;

pub use account::*;
pub use common::*;
pub use grant::*;
pub use import::*;
pub use metering::*;
pub use model::*;
pub use plan::*;
pub use proxy_key::*;
pub use usage::*;
pub use webhook::*;
