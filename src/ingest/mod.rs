//! The ingest stage: a Unix stream socket speaking newline-delimited JSON. Each connection frames
//! lines, parses them, hands the well-formed events to the commit stage in one submission per
//! read, and answers every line in order once its event is durable (or refused).

mod event;
mod framing;
mod reply;
mod server;

pub use event::{EventParser, LineError, MAX_ID_BYTES, Rejection};
pub use framing::{Frame, Framer};
pub use reply::{Reply, rejection};
pub use server::{IngestServer, SharedParser};
