//! Herald: a Server-Sent Events hub.
//!
//! Publishers hand it events over HTTP; it delivers each one to every subscriber of its channel
//! as `text/event-stream`, and replays what a reconnecting client missed.

pub mod access;
pub mod bench;
pub mod client;
pub mod cluster;
pub mod config;
pub mod event;
pub mod history;
pub mod http;
pub mod hub;
pub mod json;
pub mod sources;
pub mod sse;
pub mod telemetry;
pub mod tls;
