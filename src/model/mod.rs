//! The shared vocabulary of meterd: what a usage event and a record key are, the socket protocol's
//! error codes, the settings that change what every stage does (`Mode`, `LateEvents`), why a record
//! becomes a dead letter, and the Metering Service model's field rules. Every other module may use
//! this one; it uses none of them, so the stages depend on it and never on each other for words.

mod event;
mod fields;
mod key;
mod modes;
mod subscriber;

pub use event::{ErrorCode, Event, IdPrint};
pub use fields::*;
pub use key::{Customer, MAX_QUANTITY, RecordKey, Scope, TagSet, record_id};
pub use modes::{DeadReason, LateEvents, Mode};
pub use subscriber::{Subscriber, license_id};
