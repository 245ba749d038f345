//! The hub: the channel registry, the single publish path, and subscriptions.
//!
//! Publishing assigns every event a position in one hub-wide order (under a short lock that only
//! numbers events and appends them to channel windows), then wakes the channels' subscriptions.
//! Subscriptions read the windows by cursor, so a slow one costs nobody else anything, and a
//! subscription to several channels merges them in that one order.

mod channel;
pub mod dedupe;
mod expiry;
mod floors;
mod ingest;
mod pending;
pub mod replication;
pub mod rules;
mod settings;
mod subscription;
pub mod users;
mod visibility;

pub use channel::Channel;
pub use ingest::{Ingested, Once, Submission};
pub use settings::{ChannelSettings, SettingsResolver};
pub use subscription::{Subscription, SubscriptionOptions};

use crate::config::{Config, StoreKind, pattern};
use crate::event::{Event, now_wall_us, published_instant};
use crate::history::disk::{self, DiskStore, Recovered};
use crate::history::{HistoryStore, MemoryBudget, MemoryStore, Missed, Resume, StoreError};
use crate::sse::FrameBuilder;
use floors::Floors;
use futures_util::task::AtomicWaker;
use parking_lot::{Mutex, RwLock};
use replication::{Bus, BusError, Incoming, Outgoing};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use visibility::{Settling, Targets, Visibility, wake_targets};

/// A channel that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChannelError {
    #[error("invalid channel name `{name}`: {reason}")]
    Invalid { name: String, reason: pattern::NameError },
    #[error("channel `{0}` does not exist (allow_undefined_channels is false and no [[channels]] entry matches)")]
    NotFound(String),
    #[error("channel limit reached: {0} channels exist (max_channels) and every one has a subscriber or is declared")]
    Limit(usize),
    #[error("this request would create {wanted} channels, at most {limit} per request (limits.max_new_channels_per_request)")]
    TooManyNew { wanted: usize, limit: usize },
    #[error("the hub is shutting down")]
    Closing,
    #[error("{0}")]
    User(String),
}

/// One event on its way in: the channels it goes to, and its encoded block minus the id.
pub struct Publication {
    pub channels: Vec<Arc<Channel>>,
    pub frame: FrameBuilder,
    pub custom_id: Option<String>,
    /// The position a cluster bus gave it; `None` for the hub to number it.
    pub pos: Option<u64>,
    /// When a cluster bus took it (µs since the epoch); `None` for now.
    pub published_wall_us: Option<u64>,
}

pub struct Hub {
    config: Arc<Config>,
    settings: Arc<SettingsResolver>,
    channels: RwLock<HashMap<Arc<str>, Arc<Channel>>>,
    /// Where channels made on first use start their floor (see `floors.rs`).
    floors: Floors,
    /// The newest position issued. Positions are microseconds since the Unix epoch, bumped by
    /// one when two events fall in the same microsecond, so they keep growing across restarts.
    seq: Mutex<u64>,
    /// The newest position subscribers may read: every event up to it is in all its windows
    /// and as durable as the store promises (see `visibility.rs`).
    visibility: Arc<Visibility>,
    store: Arc<dyn HistoryStore>,
    budget: Arc<MemoryBudget>,
    evicting: Mutex<()>,
    closing: AtomicBool,
    started: Instant,
    published: AtomicU64,
    /// Events (counted once per channel) read from the bus that this node could not apply.
    unapplied: AtomicU64,
    subscriptions: AtomicUsize,
    /// Keep-alive ticks so far (see [`Hub::keepalive_tick`]).
    keepalive_ticks: AtomicU64,
    /// Streams that end at a given second.
    expiries: expiry::Expiries,
    /// Idempotency keys seen within `dedupe_window`.
    dedupe: dedupe::Dedupe,
    /// In cluster mode, the bus every publish goes through.
    bus: std::sync::OnceLock<Arc<dyn Bus>>,
    /// Bumped when this node's history has a discontinuity it cannot number past (a cluster node
    /// whose bus trimmed entries it never read, or whose first load came after it began
    /// serving). Live streams opened before it end, so that their clients reconnect with their
    /// `Last-Event-ID` and are told what they missed, instead of silently skipping it.
    history_epoch: AtomicU64,
}

impl Hub {
    /// A hub with the store its configuration names; with the disk store, what the store holds
    /// is loaded back into the channels first, and positions go on after the newest stored one.
    pub fn new(config: Config) -> anyhow::Result<Arc<Hub>> {
        let settings = Arc::new(SettingsResolver::new(&config));
        let (store, recovered): (Arc<dyn HistoryStore>, _) = match config.history.store {
            // In a cluster, history lives on the bus; the windows are loaded from it.
            _ if config.cluster.enabled() => (Arc::new(MemoryStore), None),
            StoreKind::Memory => (Arc::new(MemoryStore), None),
            StoreKind::Disk => {
                let (store, recovered) = DiskStore::open(&config.history, disk::retention_lookup(settings.clone()))?;
                (Arc::new(store), Some(recovered))
            }
        };
        Ok(Self::assemble(config, settings, store, recovered))
    }

    /// A hub over a store the caller made (a test's store that fails on demand, say).
    pub fn with_store(config: Config, store: Arc<dyn HistoryStore>) -> Arc<Hub> {
        let settings = Arc::new(SettingsResolver::new(&config));
        Self::assemble(config, settings, store, None)
    }

    fn assemble(config: Config, settings: Arc<SettingsResolver>, store: Arc<dyn HistoryStore>, recovered: Option<Recovered>) -> Arc<Hub> {
        // Positions come from the bus in a cluster; alone, from the clock (and the store).
        let start = if config.cluster.enabled() { 0 } else { now_wall_us().max(recovered.as_ref().map_or(0, |r| r.newest)) };
        let budget = Arc::new(MemoryBudget::new(config.history.max_memory.as_usize()));
        // What happened before this process started is known from the disk store (every floor)
        // or from the bus (which says where its history begins); a memory store knows nothing.
        let base_floor = if recovered.is_some() || config.cluster.enabled() { 0 } else { start };
        let floors = Floors::new(base_floor, config.max_channels);
        let lost_upto = recovered.as_ref().and_then(|r| r.lost_upto);
        if let Some(base) = recovered.as_ref().map(|r| r.base_floor).filter(|&b| b > 0) {
            floors.raise_base(base);
        }
        let dedupe = dedupe::Dedupe::new(config.dedupe_window);
        let (recovered_channels, dormant, marks) = recovered.map(|r| (r.channels, r.dormant, r.marks)).unwrap_or_default();
        dedupe.restore(marks, now_wall_us());
        for (name, floor) in dormant {
            floors.departed(name, floor);
        }
        let hub = Hub {
            floors,
            visibility: Arc::new(Visibility::new(start, budget.clone())),
            budget,
            config: Arc::new(config),
            settings,
            channels: RwLock::new(HashMap::new()),
            seq: Mutex::new(start),
            store,
            evicting: Mutex::new(()),
            closing: AtomicBool::new(false),
            started: Instant::now(),
            published: AtomicU64::new(0),
            unapplied: AtomicU64::new(0),
            subscriptions: AtomicUsize::new(0),
            keepalive_ticks: AtomicU64::new(0),
            expiries: expiry::Expiries::default(),
            dedupe,
            bus: std::sync::OnceLock::new(),
            history_epoch: AtomicU64::new(0),
        };
        {
            let mut map = hub.channels.write();
            for name in hub.settings.declared() {
                let settings = hub.settings.resolve(name).expect("a declared channel resolves");
                let floor = hub.floors.for_new(name);
                map.insert(name.into(), Arc::new(Channel::new(name.into(), settings, true, floor)));
            }
            for (name, floor, events) in recovered_channels {
                let Some(settings) = hub.settings.resolve(&name) else {
                    tracing::warn!(channel = %name, "stored history of a channel the configuration no longer allows: not loaded");
                    continue;
                };
                let declared = map.contains_key(&name);
                let ch = map.entry(name.clone()).or_insert_with(|| Arc::new(Channel::new(name, settings, declared, floor)));
                ch.log.set_floor(floor);
                for ev in events {
                    hub.budget.add(ev.frame.len());
                    let freed = ch.log.push(ev);
                    hub.budget.release(freed);
                }
            }
        }
        if let Some(pos) = lost_upto {
            // Events up to here may be gone from any channel: whoever resumes from before is told.
            for ch in hub.channels.read().values() {
                ch.log.raise_floor(pos);
            }
            hub.floors.raise_base(pos);
        }
        // Loaded history past its age leaves now rather than at the first sweep.
        hub.sweep();
        if hub.budget.over() {
            hub.enforce_budget();
        }
        Arc::new(hub)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn settings(&self) -> &SettingsResolver {
        &self.settings
    }

    pub fn store(&self) -> &dyn HistoryStore {
        &*self.store
    }

    /// The channel called `name`, created on first use when its settings allow.
    pub fn channel(&self, name: &str) -> Result<Arc<Channel>, ChannelError> {
        self.channel_with(name, |_| ()).map(|(ch, ())| ch)
    }

    /// Like [`Hub::channel`], running `attach` while the registry is locked, so that the idle
    /// sweep cannot drop the channel between the lookup and what `attach` does.
    fn channel_with<T>(&self, name: &str, attach: impl FnOnce(&Arc<Channel>) -> T) -> Result<(Arc<Channel>, T), ChannelError> {
        if self.is_closing() {
            return Err(ChannelError::Closing);
        }
        if let Some(ch) = self.channels.read().get(name) {
            let t = attach(ch);
            return Ok((ch.clone(), t));
        }
        let user_log = users::parse(name);
        let settings = match user_log {
            // Made by the hub for a user it was given (validated then), never named by a client.
            Some((user, _)) => {
                users::validate_user(user).map_err(|e| ChannelError::User(e.to_string()))?;
                self.settings.resolve(name).expect("a user's log always resolves")
            }
            None => {
                pattern::validate_channel(name, self.config.max_channel_name_length)
                    .map_err(|reason| ChannelError::Invalid { name: name.to_owned(), reason })?;
                self.settings.resolve(name).ok_or_else(|| ChannelError::NotFound(name.to_owned()))?
            }
        };
        let mut map = self.channels.write();
        if let Some(ch) = map.get(name) {
            let t = attach(ch);
            return Ok((ch.clone(), t));
        }
        // Users' logs are bounded by the users streaming and addressed, not by max_channels.
        if user_log.is_none() && map.len() >= self.config.max_channels && self.reclaim_idle(&mut map) == 0 {
            return Err(ChannelError::Limit(map.len()));
        }
        let floor = self.floors.for_new(name);
        let name: Arc<str> = name.into();
        let ch = Arc::new(Channel::new(name.clone(), settings, false, floor));
        map.insert(name, ch.clone());
        let t = attach(&ch);
        Ok((ch, t))
    }

    /// Refuses a name no channel may have (invalid, or undefined where channels must be
    /// declared), without making the channel.
    pub fn check_channel_name(&self, name: &str) -> Result<(), ChannelError> {
        self.check_name(name)?;
        self.settings.resolve(name).map(drop).ok_or_else(|| ChannelError::NotFound(name.to_owned()))
    }

    /// Refuses a name that is not a valid channel name, as every name a client gives must be
    /// (the hub itself names users' logs, which no client may).
    pub fn check_name(&self, name: &str) -> Result<(), ChannelError> {
        pattern::validate_channel(name, self.config.max_channel_name_length)
            .map_err(|reason| ChannelError::Invalid { name: name.to_owned(), reason })
    }

    /// At `max_channels`: drops the idle channels (undeclared, no subscriber) used longest ago,
    /// a hundredth of the registry at a time so that a flood of new names costs one scan per
    /// hundred channels, with their history: a client resuming in one is told it missed events.
    /// Returns how many went.
    fn reclaim_idle(&self, map: &mut HashMap<Arc<str>, Arc<Channel>>) -> usize {
        let _no_publisher_between = self.seq.lock();
        let mut idle: Vec<&Arc<Channel>> = map.values().filter(|c| !c.declared && c.subscribers() == 0).collect();
        let n = (map.len() / 100).max(1).min(idle.len());
        if n == 0 {
            return 0;
        }
        if n < idle.len() {
            idle.select_nth_unstable_by_key(n - 1, |c| c.last_used());
        }
        let reclaimed: Vec<Arc<Channel>> = idle[..n].iter().map(|c| (*c).clone()).collect();
        for ch in reclaimed {
            ch.mark_removed();
            map.remove(&ch.name);
            let (freed, floor) = ch.log.clear();
            self.budget.release(freed);
            self.floors.departed(ch.name.clone(), floor);
            self.store.forget(&ch.name, floor);
        }
        tracing::info!(
            reclaimed = n,
            max_channels = self.config.max_channels,
            "max_channels reached: reclaimed the idle channels used longest ago"
        );
        n
    }

    /// Refuses a request that would create more than `limits.max_new_channels_per_request`
    /// channels, before it creates any.
    pub fn admit_new<'a, I>(&self, names: I) -> Result<(), ChannelError>
    where
        I: IntoIterator<Item = &'a str>,
        I::IntoIter: Clone,
    {
        let limit = self.config.limits.max_new_channels_per_request;
        let names = names.into_iter();
        let map = self.channels.read();
        // Counted without allocating; only a request past the limit is looked at twice, for
        // names it repeats.
        let new = names.clone().filter(|n| !map.contains_key(*n)).count();
        if new <= limit {
            return Ok(());
        }
        let mut new: Vec<&str> = names.filter(|n| !map.contains_key(*n)).collect();
        drop(map);
        new.sort_unstable();
        new.dedup();
        if new.len() > limit {
            return Err(ChannelError::TooManyNew { wanted: new.len(), limit });
        }
        Ok(())
    }

    /// Publishes events in order; returns their ids. Alone, each gets the next position, is in
    /// its channels' windows before any subscriber is woken, and in the store before this
    /// returns. In a cluster, the events are appended to the bus, and reach the windows (here
    /// and on every node) when the bus is read back.
    pub async fn publish(&self, items: Vec<Publication>) -> Result<Vec<String>, PublishError> {
        self.publish_keyed(items, None).await.map(|(ids, _)| ids)
    }

    /// [`Hub::publish`] under an idempotency key: the key is stored with the events (or, in a
    /// cluster, given to the bus, which may find it published already: then nothing is
    /// appended, and the ids are the first publish's, with `true`).
    async fn publish_keyed(&self, items: Vec<Publication>, claim: Option<&dedupe::Claimed>) -> Result<(Vec<String>, bool), PublishError> {
        // Instrumented only when traces are exported: otherwise the publish pays for no span.
        if crate::telemetry::otlp::enabled() {
            let span = crate::telemetry::otlp::hub_publish_span(items.len());
            tracing::Instrument::instrument(self.publish_keyed_inner(items, claim), span).await
        } else {
            self.publish_keyed_inner(items, claim).await
        }
    }

    async fn publish_keyed_inner(
        &self,
        items: Vec<Publication>,
        claim: Option<&dedupe::Claimed>,
    ) -> Result<(Vec<String>, bool), PublishError> {
        if let Some(bus) = self.bus.get() {
            let outgoing: Vec<Outgoing> = items
                .into_iter()
                .map(|item| Outgoing {
                    channels: item.channels.iter().map(|c| c.name.clone()).collect(),
                    custom_id: item.custom_id,
                    partial: item.frame.into_partial(),
                })
                .collect();
            // Counted as published when read back from the bus, like every node's events.
            let appended = bus.append(&outgoing, claim.and_then(|c| c.bus_key())).await?;
            let ids =
                outgoing.iter().zip(appended.positions).map(|(o, pos)| o.custom_id.clone().unwrap_or_else(|| pos.to_string())).collect();
            return Ok((ids, appended.repeat));
        }
        let covered: Vec<dedupe::Covered> = claim.map(|claim| dedupe::Covered { claim, items: 0..items.len() }).into_iter().collect();
        let events = self.publish_local(items, &covered).await?;
        Ok((events.iter().map(|e| e.wire_id().into_owned()).collect(), false))
    }

    /// Events read from the cluster bus, in bus order: into the windows with the bus's
    /// positions. An event at or before the newest position applied is a repeat (the bus
    /// delivers at least once) and is skipped.
    pub fn apply_from_bus(&self, incoming: Vec<Incoming>) {
        let mut items = Vec::with_capacity(incoming.len());
        for ev in incoming {
            let mut channels = Vec::with_capacity(ev.channels.len());
            for name in &ev.channels {
                match self.channel(name) {
                    Ok(ch) => channels.push(ch),
                    Err(e) => {
                        // Other nodes delivered it: this node's clients of that channel miss
                        // it, which an operator must be able to see (/stats, /healthz).
                        let total = self.unapplied.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::error!(channel = %name, pos = ev.pos, error = %e, unapplied = total, "event from the cluster bus not applied to this channel");
                    }
                }
            }
            if !channels.is_empty() {
                items.push(Publication {
                    channels,
                    frame: FrameBuilder::from_partial(&ev.partial),
                    custom_id: ev.custom_id,
                    pos: Some(ev.pos),
                    published_wall_us: Some(ev.published_wall_us),
                });
            }
        }
        // The memory store completes at once: nothing to wait for.
        futures_util::FutureExt::now_or_never(self.publish_local(items, &[]));
    }

    /// In a cluster, what the bus retains starts after `pos` (at the first load, or after a
    /// reconnect that found entries trimmed before this node read them): positions continue
    /// from there, a client resuming from before it is told it may have missed events, and live
    /// streams end so that their clients resume the same way.
    pub fn begin_history_at(&self, pos: u64) {
        let channels: Vec<Arc<Channel>> = self.channels.read().values().cloned().collect();
        let mut seq = self.seq.lock();
        if *seq < pos {
            *seq = pos;
            self.visibility.raise_to(pos);
        }
        for ch in &channels {
            ch.log.raise_floor(pos);
        }
        self.floors.raise_base(pos);
        // Bumped after the floors are raised (a stream opened after the bump is told what it
        // missed) and before any event after the discontinuity is pushed (the caller applies
        // them next, under this lock), so a stream that reads one of them sees the new epoch.
        self.history_epoch.fetch_add(1, Ordering::AcqRel);
        drop(seq);
        for ch in &channels {
            ch.wake_all();
        }
    }

    pub(crate) fn history_epoch(&self) -> u64 {
        self.history_epoch.load(Ordering::Acquire)
    }

    pub(crate) fn attach_bus(&self, bus: Arc<dyn Bus>) {
        if self.bus.set(bus).is_err() {
            tracing::error!("a cluster bus was attached twice");
        }
    }

    /// The cluster bus, if this hub is a cluster node.
    pub fn bus(&self) -> Option<&Arc<dyn Bus>> {
        self.bus.get()
    }

    /// Publishes on this node (no bus); `covered` says which items each idempotency key
    /// covers, so that the keys are stored with their events.
    async fn publish_local(&self, mut items: Vec<Publication>, covered: &[dedupe::Covered<'_>]) -> Result<Vec<Arc<Event>>, PublishError> {
        let (events, appended) = loop {
            match self.sequence(items, covered) {
                Ok(done) => break done,
                // A channel was dropped as idle while we held it: look the names up again.
                Err(mut back) => {
                    for item in &mut back {
                        for ch in &mut item.channels {
                            if ch.is_removed() {
                                *ch = self.channel(&ch.name)?;
                            }
                        }
                    }
                    items = back;
                }
            }
        };
        if self.budget.over() {
            self.enforce_budget();
        }
        match appended? {
            Appended::Visible(targets) => wake_targets(targets),
            Appended::Settling(settling) if crate::telemetry::otlp::enabled() => {
                tracing::Instrument::instrument(settling.wait(), crate::telemetry::otlp::store_sync_span()).await?
            }
            Appended::Settling(settling) => settling.wait().await?,
            Appended::Nothing => {}
        }
        Ok(events)
    }

    /// Numbers the events, appends them to their windows and hands them to the store, under the
    /// sequencing lock (so the store receives them in position order). Gives the publications
    /// back untouched when one of their channels was removed meanwhile.
    fn sequence(&self, items: Vec<Publication>, covered: &[dedupe::Covered<'_>]) -> Result<Sequenced, Vec<Publication>> {
        let now = Instant::now();
        let now_ms = now_wall_us() / 1000;
        let mut seq = self.seq.lock();
        if items.iter().any(|i| i.channels.iter().any(|c| c.is_removed())) {
            return Err(items);
        }
        let mut events = Vec::with_capacity(items.len());
        let mut targets: Targets = Vec::with_capacity(items.len());
        let mut freed = 0;
        for item in items {
            let pos = match item.pos {
                Some(pos) if pos <= *seq => continue,
                Some(pos) => pos,
                None => (*seq + 1).max(now_wall_us()),
            };
            *seq = pos;
            let frame = match &item.custom_id {
                Some(id) => item.frame.finish_with_id(id),
                None => item.frame.finish_with_seq(pos),
            };
            let ev = Arc::new(Event {
                pos,
                custom_id: item.custom_id.map(String::into_boxed_str),
                channels: item.channels.iter().map(|c| c.name.clone()).collect(),
                frame,
                published_at: item.published_wall_us.map_or(now, published_instant),
            });
            for ch in &item.channels {
                self.budget.add(ev.frame.len());
                freed += ch.log.push(ev.clone());
                ch.mark_appended();
                ch.count_published(1);
                ch.touch(now_ms);
            }
            events.push(ev);
            targets.push((pos, item.channels));
        }
        let appended = if events.is_empty() {
            Ok(Appended::Nothing)
        } else {
            let stored = if covered.is_empty() {
                self.store.append(&events)
            } else {
                // Local publications are never skipped, so item i is event i.
                let now = now_wall_us();
                let marks = covered
                    .iter()
                    .map(|c| c.claim.mark(events[c.items.clone()].iter().map(|e| e.wire_id().into_owned()).collect(), now))
                    .collect();
                self.store.append_marked(&events, marks)
            };
            match stored {
                // Durable at once (the memory store): visible now, unless an earlier publish is
                // still settling.
                Ok(None) => Ok(self.visibility.pushed(*seq, targets, true).map_or(Appended::Nothing, Appended::Visible)),
                Ok(Some(durable)) => {
                    self.visibility.pushed(*seq, targets, false);
                    Ok(Appended::Settling(Settling::new(self.visibility.clone(), *seq, durable)))
                }
                Err(e) => {
                    // Never queued: taken back at once, in order with the rest.
                    self.visibility.pushed(*seq, targets, false);
                    self.visibility.settle(*seq, false);
                    Err(e)
                }
            }
        };
        drop(seq);
        self.budget.release(freed);
        self.published.fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok((events, appended))
    }

    /// Evicts the hub's oldest events, whatever their channel, until history is back under
    /// the low-water mark of `history.max_memory`.
    fn enforce_budget(&self) {
        let Some(_one_at_a_time) = self.evicting.try_lock() else { return };
        let channels: Vec<Arc<Channel>> = self.channels.read().values().cloned().collect();
        let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> =
            channels.iter().enumerate().filter_map(|(i, ch)| ch.log.front_pos().map(|p| std::cmp::Reverse((p, i)))).collect();
        let target = self.budget.low_water();
        while self.budget.used() > target {
            let Some(std::cmp::Reverse((_, i))) = heap.pop() else { break };
            self.budget.release(channels[i].log.evict_front());
            if let Some(p) = channels[i].log.front_pos() {
                heap.push(std::cmp::Reverse((p, i)));
            }
        }
    }

    /// Opens a subscription to `names`, resuming after `last_event_id` when given; a stream of
    /// `user` also reads the user's logs of each of `names`, and, when `own_log`, the user's own.
    pub fn subscribe(
        self: &Arc<Self>,
        names: &[String],
        (user, own_log): (Option<&str>, bool),
        last_event_id: Option<&str>,
        replay_all: bool,
    ) -> Result<Subscription, ChannelError> {
        // Names from a client are channel names: never a user's log (see `users.rs`).
        for name in names {
            self.check_name(name)?;
        }
        self.admit_new(names.iter().map(String::as_str))?;
        let waker = Arc::new(AtomicWaker::new());
        let logs: Vec<std::borrow::Cow<'static, str>> = match user {
            Some(user) => {
                users::validate_user(user).map_err(|e| ChannelError::User(e.to_string()))?;
                users::logs_of(user, own_log || names.is_empty(), names).collect()
            }
            None => Vec::new(),
        };
        let mut distinct: Vec<&str> = Vec::with_capacity(names.len() + logs.len());
        for name in names.iter().map(String::as_str).chain(logs.iter().map(|l| &**l)) {
            if !distinct.contains(&name) {
                distinct.push(name);
            }
        }
        // Several channels: each marks which of them has news, so a wake reads only those.
        let pending = (distinct.len() > 1).then(|| Arc::new(pending::PendingSet::all(distinct.len(), waker.clone())));
        let mut channels: Vec<(Arc<Channel>, usize)> = Vec::with_capacity(distinct.len());
        let registered = (|| {
            for (slot, name) in distinct.iter().enumerate() {
                channels.push(self.channel_with(name, |ch| match &pending {
                    None => ch.register(waker.clone()),
                    // At most 65,535 channels per connection (config validation).
                    Some(pending) => ch.register_merged(channel::MergedWaiter { pending: pending.clone(), slot: slot as u32 }),
                })?);
            }
            Ok(())
        })();
        if let Err(e) = registered {
            for (ch, key) in channels {
                if pending.is_some() { ch.unregister_merged(key) } else { ch.unregister(key) }
            }
            return Err(e);
        }
        // Taken before the starting points: a discontinuity after it ends this stream.
        let epoch = self.history_epoch();
        let hub_last = self.visibility.watermark();
        let resume = match last_event_id {
            Some(id) => channels
                .iter()
                .find_map(|(ch, _)| ch.log.find_custom(id))
                .or_else(|| parse_position(id))
                .map_or(Resume::Unknown, Resume::After),
            None if replay_all => Resume::All,
            // "From now" is the same cut in every channel.
            None => Resume::After(hub_last),
        };
        let mut missed = None;
        let starts: Vec<u64> = channels
            .iter()
            .map(|(ch, _)| {
                let (start, m) = ch.log.start(resume, hub_last);
                missed = missed.or(m);
                start
            })
            .collect();
        if last_event_id.is_some() || replay_all {
            let behind: u64 = channels.iter().zip(&starts).map(|((ch, _), &start)| ch.log.backlog(start)).sum();
            crate::telemetry::counters::replaying(behind);
        }
        let missed_notice = missed.map(|m| missed_notice(m, last_event_id.unwrap_or_default(), &channels));
        let options = SubscriptionOptions::from_config(&self.config);
        Ok(Subscription::new(self.clone(), (waker, pending), channels, starts, missed_notice, options, epoch))
    }

    pub(crate) fn watermark(&self) -> u64 {
        self.visibility.watermark()
    }

    /// Events from the bus this node could not apply (see [`Totals::bus_unapplied`]).
    pub fn unapplied(&self) -> u64 {
        self.unapplied.load(Ordering::Relaxed)
    }

    /// In a cluster, waits up to `limit` for this node to have read position `pos` from the
    /// bus: a client that published on another node and reconnects here with that id is then
    /// served from it (read-your-writes) instead of being told the id is unknown.
    pub async fn caught_up_to(&self, pos: u64, limit: Duration) {
        if self.bus.get().is_none() || self.watermark() >= pos {
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        while self.watermark() < pos && tokio::time::Instant::now() < deadline && !self.is_closing() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn subscription_opened(&self) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn subscription_closed(&self) {
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    /// One keep-alive period has passed: every subscription is woken, and those that wrote
    /// nothing since the previous tick send a keep-alive. Called every `keepalive_interval`.
    pub fn keepalive_tick(&self) {
        self.keepalive_ticks.fetch_add(1, Ordering::Release);
        let channels: Vec<Arc<Channel>> = self.channels.read().values().cloned().collect();
        for ch in channels {
            ch.wake_all();
        }
    }

    /// Wakes `waker` once the second `at` (since the Unix epoch) has come.
    pub(crate) fn wake_at(&self, at: u64, waker: &Arc<futures_util::task::AtomicWaker>) {
        self.expiries.add(at, waker);
    }

    pub(crate) fn keepalive_ticks(&self) -> u64 {
        self.keepalive_ticks.load(Ordering::Acquire)
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Ends every stream: each subscription sends what it has and finishes its response.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        for ch in self.channels.read().values() {
            ch.wake_all();
        }
    }

    /// Background upkeep: expires events past their age, and drops channels that are not
    /// declared, have no subscriber and no history.
    pub fn sweep(&self) {
        self.expiries.wake_due(unix_now());
        self.dedupe.expire(now_wall_us());
        let now = Instant::now();
        let channels: Vec<Arc<Channel>> = self.channels.read().values().cloned().collect();
        let mut idle = Vec::new();
        for ch in channels {
            self.budget.release(ch.log.expire(now));
            if !ch.declared && ch.log.is_empty() && ch.subscribers() == 0 {
                idle.push(ch);
            }
        }
        if idle.is_empty() {
            return;
        }
        let mut map = self.channels.write();
        let _no_publisher_between = self.seq.lock();
        for ch in idle {
            // Check again under the locks: a subscriber or an event may have arrived.
            if ch.log.is_empty() && ch.subscribers() == 0 {
                ch.mark_removed();
                map.remove(&ch.name);
                // Made again later, it starts where it left off.
                self.floors.departed(ch.name.clone(), ch.log.floor());
            }
        }
    }

    /// A snapshot for `/stats`: totals over every channel, and at most `limit` channels by
    /// name after `after`, with `next` naming where the following page starts.
    pub fn stats(&self, limit: usize, after: Option<&str>) -> Stats {
        let channels: Vec<Arc<Channel>> = self.channels.read().values().cloned().collect();
        let mut out = Stats {
            uptime_seconds: self.started.elapsed().as_secs(),
            // In a cluster, history is the bus.
            store: self.bus.get().map_or(self.store.kind(), |bus| bus.kind()),
            totals: Totals {
                channels: channels.iter().filter(|c| !users::is_user_log(&c.name)).count(),
                subscriptions: self.subscriptions.load(Ordering::Relaxed),
                published: self.published.load(Ordering::Relaxed),
                bus_unapplied: self.unapplied(),
                history_memory_cap: self.budget.cap(),
                ..Totals::default()
            },
            channels: Default::default(),
            next: None,
        };
        let mut page: Vec<&Arc<Channel>> = Vec::new();
        for ch in &channels {
            let (history_len, history_bytes) = ch.log.stats();
            out.totals.subscribers += ch.subscribers();
            out.totals.history_len += history_len;
            out.totals.history_bytes += history_bytes;
            // Users' logs count in the totals, but their names (user ids) are not listed.
            if users::is_user_log(&ch.name) {
                out.totals.user_logs += 1;
                continue;
            }
            if after.is_none_or(|a| &*ch.name > a) {
                page.push(ch);
            }
        }
        if page.len() > limit {
            page.select_nth_unstable_by(limit, |a, b| a.name.cmp(&b.name));
            page.truncate(limit);
            out.next = page.iter().map(|c| c.name.to_string()).max();
        }
        for ch in page {
            let (history_len, history_bytes) = ch.log.stats();
            let s = ChannelStats { subscribers: ch.subscribers(), published: ch.published(), history_len, history_bytes };
            out.channels.insert(ch.name.to_string(), s);
        }
        out
    }

    /// The figures of the channels declared by name in `[[channels]]` (not the patterns), in
    /// declaration order: a set the configuration bounds, for per-channel metrics.
    pub fn declared_channel_stats(&self) -> Vec<(Arc<str>, ChannelStats)> {
        let registry = self.channels.read();
        self.config
            .channels
            .iter()
            .filter(|c| !crate::config::pattern::is_pattern(&c.pattern))
            .filter_map(|c| registry.get(c.pattern.as_str()))
            .map(|ch| {
                let (history_len, history_bytes) = ch.log.stats();
                (ch.name.clone(), ChannelStats { subscribers: ch.subscribers(), published: ch.published(), history_len, history_bytes })
            })
            .collect()
    }

    /// How long shutdown waits for connections once streams are ended.
    pub fn shutdown_timeout(&self) -> Duration {
        self.config.shutdown_timeout
    }
}

/// A publish's events, numbered and in their windows, and what the store made of them.
type Sequenced = (Vec<Arc<Event>>, Result<Appended, StoreError>);

/// What became of a publish's events once they were in their windows.
enum Appended {
    /// Durable and visible: their channels are to be woken.
    Visible(Targets),
    /// The store is making them durable; they become visible when it answers.
    Settling(Settling),
    /// Nothing to wait for (no event, or visible once the publishes before them settle).
    Nothing,
}

/// A Herald id is the decimal position: digits only, no sign, no leading zero.
pub fn parse_position(id: &str) -> Option<u64> {
    let canonical = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && (id == "0" || !id.starts_with('0'));
    if canonical { id.parse().ok() } else { None }
}

/// The notice a resuming client gets when history cannot give it everything it missed.
fn missed_notice(missed: Missed, last_event_id: &str, channels: &[(Arc<Channel>, usize)]) -> bytes::Bytes {
    let reason = match missed {
        Missed::Evicted => "evicted",
        Missed::Unknown => "unknown",
    };
    let names: Vec<&str> = channels.iter().map(|(c, _)| &*c.name).collect();
    let data = serde_json::json!({ "reason": reason, "last_event_id": last_event_id, "channels": names });
    crate::sse::encode::notice("missed", &data.to_string())
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// An event of the batch is not valid (`too_large`: it is over `limits.max_event_size`).
    #[error("event {index}: {reason}")]
    Event { index: usize, reason: String, too_large: bool },
    /// An idempotency key already published with other contents.
    #[error("idempotency key `{0}` was already used for a different request")]
    KeyReused(String),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

#[derive(Debug, serde::Serialize)]
pub struct Stats {
    pub uptime_seconds: u64,
    pub store: &'static str,
    pub totals: Totals,
    pub channels: std::collections::BTreeMap<String, ChannelStats>,
    /// More channels follow: ask again with `after` set to this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Totals {
    pub channels: usize,
    /// Users' logs (see `users.rs`): what events addressed to users are kept in.
    pub user_logs: usize,
    /// Open subscriptions (streams).
    pub subscriptions: usize,
    /// Subscriptions counted once per channel they read.
    pub subscribers: usize,
    pub published: u64,
    /// Events from the cluster bus this node could not apply (once per channel).
    pub bus_unapplied: u64,
    pub history_len: usize,
    pub history_bytes: usize,
    pub history_memory_cap: usize,
}

#[derive(Debug, serde::Serialize)]
pub struct ChannelStats {
    pub subscribers: usize,
    pub published: u64,
    pub history_len: usize,
    pub history_bytes: usize,
}

/// Seconds since the Unix epoch: what token expiry times are written in.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
