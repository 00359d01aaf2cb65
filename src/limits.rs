//! Per-client caps (`--max-per-ip`): how many of something one client address may hold at once
//! (HTTP connections, WHEP POSTs waiting for their stream, WebRTC sessions). A slot is a drop
//! guard: the count is right however the thing it stands for ends (closed, answered, the
//! client gone, a session removed by its shard).
//!
//! ```text
//!  accept / POST ──► PerIp::acquire(ip) ──► Ok(IpSlot) ── held by the connection / wait / session
//!                          │                                   │ dropped
//!                          └─► Err(AtLimit): 503 + Retry-After └─► count - 1 (entry gone at 0)
//! ```
//!
//! The map holds only addresses that hold something now: a flood of one-off addresses costs
//! nothing once their slots are gone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tracing::warn;

/// What one address holds of one kind, and whether its refusal was logged in this burst.
#[derive(Debug, Default)]
struct Held {
    count: usize,
    logged: bool,
}

#[derive(Debug, Default)]
struct Counts {
    by_ip: HashMap<IpAddr, Held>,
}

/// A cap per client address on one kind of thing (`what`, for logs: "HTTP connections").
#[derive(Debug, Clone)]
pub struct PerIp {
    /// 0: no cap (nothing is counted).
    max: usize,
    what: &'static str,
    /// Addresses never capped (trusted proxies: many clients behind one address).
    exempt: Arc<[IpAddr]>,
    counts: Arc<Mutex<Counts>>,
}

/// `ip` already holds `max` (503 + Retry-After for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("your address ({ip}) holds {max} {what}, the most allowed per address (--max-per-ip); retry later")]
pub struct AtLimit {
    pub ip: IpAddr,
    pub max: usize,
    pub what: &'static str,
}

/// One thing held by one address; dropping it gives the place back.
#[derive(Debug)]
pub struct IpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<Counts>>,
}

impl PerIp {
    /// A cap of `max` per address (0: off); `exempt` addresses are never capped.
    pub fn new(max: usize, what: &'static str, exempt: &[IpAddr]) -> Self {
        PerIp {
            max,
            what,
            exempt: exempt.into(),
            counts: Default::default(),
        }
    }

    /// A place for `ip`, or [`AtLimit`] (logged once per burst of refusals of that address).
    /// `Ok(None)` when nothing is counted: no cap, no address known, an exempt address.
    pub fn acquire(&self, ip: Option<IpAddr>) -> Result<Option<IpSlot>, AtLimit> {
        let Some(ip) = ip.filter(|ip| self.max > 0 && !self.exempt.contains(ip)) else {
            return Ok(None);
        };
        let mut counts = self.counts.lock();
        let held = counts.by_ip.entry(ip).or_default();
        if held.count >= self.max {
            if !held.logged {
                held.logged = true;
                warn!(%ip, max = self.max, what = self.what,
                    "a client address is at its limit (--max-per-ip): answering 503");
            }
            return Err(AtLimit {
                ip,
                max: self.max,
                what: self.what,
            });
        }
        held.count += 1;
        Ok(Some(IpSlot {
            ip,
            counts: self.counts.clone(),
        }))
    }

    /// What `ip` holds now.
    pub fn held(&self, ip: IpAddr) -> usize {
        self.counts.lock().by_ip.get(&ip).map_or(0, |h| h.count)
    }

    /// How many addresses hold something now.
    pub fn addresses(&self) -> usize {
        self.counts.lock().by_ip.len()
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(held) = counts.by_ip.get_mut(&self.ip) {
            held.count = held.count.saturating_sub(1);
            held.logged = false;
            if held.count == 0 {
                counts.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([192, 0, 2, last]))
    }

    #[test]
    fn an_address_gets_max_places_and_the_next_is_refused() {
        let cap = PerIp::new(2, "sessions", &[]);
        let a = cap.acquire(ip(1)).unwrap();
        let b = cap.acquire(ip(1)).unwrap();
        assert!(a.is_some() && b.is_some());
        let refused = cap.acquire(ip(1)).unwrap_err();
        assert_eq!(refused.max, 2);
        assert!(refused.to_string().contains("--max-per-ip"), "{refused}");
        // Another address is not affected.
        assert!(cap.acquire(ip(2)).unwrap().is_some());
    }

    #[test]
    fn a_dropped_slot_gives_its_place_back_and_empty_addresses_are_forgotten() {
        let cap = PerIp::new(1, "connections", &[]);
        let a = cap.acquire(ip(1)).unwrap();
        assert!(cap.acquire(ip(1)).is_err());
        drop(a);
        assert_eq!(cap.held(ip(1).unwrap()), 0);
        assert_eq!(cap.addresses(), 0);
        let again = cap.acquire(ip(1)).unwrap();
        assert_eq!(cap.held(ip(1).unwrap()), 1);
        drop(again);
        for n in 0..=255 {
            drop(cap.acquire(ip(n)).unwrap());
        }
        assert_eq!(cap.addresses(), 0, "one-off addresses leave nothing behind");
    }

    #[test]
    fn no_cap_no_address_or_an_exempt_one_counts_nothing() {
        let off = PerIp::new(0, "connections", &[]);
        for _ in 0..10 {
            assert!(off.acquire(ip(1)).unwrap().is_none());
        }
        let cap = PerIp::new(1, "connections", &[ip(9).unwrap()]);
        assert!(cap.acquire(None).unwrap().is_none());
        let _held: Vec<_> = (0..10).map(|_| cap.acquire(ip(9)).unwrap()).collect();
        assert_eq!(cap.addresses(), 0);
    }
}
