//! The Server-Sent Events wire format (WHATWG HTML, "Server-sent events").
//!
//! One encoder and one parser, shared by the server, the CLI client and the tests, so that what
//! Herald writes and what its tools read can never drift apart.

pub mod encode;
pub mod parse;

pub use encode::{EncodeError, FrameBuilder};
pub use parse::{Item, MessageEvent, Parser};
