//! Per-node rate limits for what nodes post (install events, first-boot reports): a token
//! bucket per key. The decision is a pure function of the bucket and the time; the map only
//! holds keys the caller has already authenticated (node names of the bundle), and is capped
//! anyway.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    at: f64,
}

/// Take one token from `b` at time `now` (seconds), refilling `rate` per second up to
/// `capacity`. `false` when the bucket is empty.
pub fn take(b: &mut Bucket, now: f64, capacity: f64, rate: f64) -> bool {
    let elapsed = (now - b.at).max(0.0);
    b.tokens = (b.tokens + elapsed * rate).min(capacity);
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        true
    } else {
        false
    }
}

pub struct PerKey {
    start: Instant,
    capacity: f64,
    rate: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl PerKey {
    /// `capacity` posts at once, then `rate` per second.
    pub fn new(capacity: u32, rate: f64) -> PerKey {
        PerKey {
            start: Instant::now(),
            capacity: capacity as f64,
            rate,
            max_keys: 8192,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn allow(&self, key: &str) -> bool {
        let now = self.start.elapsed().as_secs_f64();
        let mut m = self.buckets.lock().unwrap();
        if m.len() >= self.max_keys && !m.contains_key(key) {
            // Forget the buckets that have refilled (they would start full anyway); only if
            // none has, every one: a node mid-flood keeps its empty bucket as long as it can.
            let (cap, rate) = (self.capacity, self.rate);
            m.retain(|_, b| b.tokens + (now - b.at).max(0.0) * rate < cap);
            if m.len() >= self.max_keys {
                m.clear();
            }
        }
        let b = m.entry(key.to_string()).or_insert(Bucket {
            tokens: self.capacity,
            at: now,
        });
        take(b, now, self.capacity, self.rate)
    }
}

/// What the node-facing routes allow per node: a burst of 60, then 2 a second. The installer
/// posts progress once a second; first boot sends a handful of notes.
pub fn node_posts() -> PerKey {
    PerKey::new(60, 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate() {
        let mut b = Bucket {
            tokens: 3.0,
            at: 0.0,
        };
        assert!((0..3).all(|_| take(&mut b, 0.0, 3.0, 1.0)));
        assert!(!take(&mut b, 0.0, 3.0, 1.0));
        assert!(!take(&mut b, 0.5, 3.0, 1.0));
        assert!(take(&mut b, 1.0, 3.0, 1.0));
        // A long pause refills to the capacity, not beyond.
        assert!((0..3).all(|_| take(&mut b, 100.0, 3.0, 1.0)));
        assert!(!take(&mut b, 100.0, 3.0, 1.0));
    }

    #[test]
    fn keys_are_limited_separately() {
        let l = PerKey::new(2, 0.0);
        assert!(l.allow("a") && l.allow("a"));
        assert!(!l.allow("a"));
        assert!(l.allow("b"));
    }
}
