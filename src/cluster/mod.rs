//! Cluster mode: several Herald nodes sharing channels through a bus.
//!
//! Every accepted event is appended to the bus first; every node (the one that took the publish
//! included) reads the bus in order and feeds the events to its own subscribers, so all nodes
//! hold the same events in the same order, with the same ids: positions come from the bus (the
//! entry id), not from the node. History and replay come from the bus too: a node starting up
//! loads the bus's retained entries into its windows, so any node can replay any channel.

pub mod nats;
pub mod redis;

use crate::hub::Hub;
pub use crate::hub::replication::{Appended, Bus, BusError, BusState, Incoming, Outgoing};
use std::sync::Arc;

/// Connects the hub to its configured bus: loads what the bus retains (waiting at most a few
/// seconds, so that a node whose bus is down still starts and serves its subscribers), then keeps
/// reading in the background.
pub async fn start(hub: &Arc<Hub>) -> anyhow::Result<()> {
    let config = hub.config().cluster.clone();
    if !config.enabled() {
        return Ok(());
    }
    let loaded = if config.bus.starts_with("nats://") {
        let (bus, loaded) = nats::NatsBus::start(hub, &config).await?;
        hub.attach_bus(bus);
        loaded
    } else {
        let (bus, loaded) = redis::RedisBus::start(hub, &config)?;
        hub.attach_bus(bus);
        loaded
    };
    if tokio::time::timeout(std::time::Duration::from_secs(5), loaded).await.is_err() {
        tracing::warn!("cluster bus not reachable at start-up: serving, and reconnecting in the background");
    }
    Ok(())
}
