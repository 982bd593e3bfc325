//! Bounded heavy-hitter counting (Space-Saving, Metwally et al. 2005).
//!
//! A flood from spoofed addresses brings millions of distinct sources; counting
//! each would let the attacker choose our memory use. Space-Saving keeps `k`
//! counters: a source that is not tracked replaces the smallest counter and
//! inherits its count as an over-estimate, so every source with more than
//! `total / k` packets is guaranteed to be in the table.

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Clone, Debug)]
struct Entry<K> {
    key: K,
    count: u64,
    /// Upper bound of how much of `count` was inherited from an evicted key.
    error: u64,
}

/// Top-`k` counter with fixed memory.
#[derive(Clone, Debug)]
pub struct SpaceSaving<K> {
    cap: usize,
    entries: Vec<Entry<K>>,
    index: HashMap<K, usize, ahash::RandomState>,
}

impl<K: Eq + Hash + Copy> SpaceSaving<K> {
    /// `cap` is clamped to at least 1.
    pub fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        Self {
            cap,
            entries: Vec::with_capacity(cap),
            index: HashMap::with_capacity_and_hasher(cap, Default::default()),
        }
    }

    pub fn add(&mut self, key: K, n: u64) {
        if let Some(&i) = self.index.get(&key) {
            self.entries[i].count += n;
            return;
        }
        if self.entries.len() < self.cap {
            self.index.insert(key, self.entries.len());
            self.entries.push(Entry {
                key,
                count: n,
                error: 0,
            });
            return;
        }
        // Linear scan for the minimum: `cap` is small (tens) and this path runs
        // on sampled packets only, so a heap would cost more than it saves.
        let (min_i, _) = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.count)
            .expect("cap >= 1 so entries is not empty");
        let old = self.entries[min_i].key;
        self.index.remove(&old);
        let base = self.entries[min_i].count;
        self.entries[min_i] = Entry {
            key,
            count: base + n,
            error: base,
        };
        self.index.insert(key, min_i);
    }

    /// The `n` largest counters, largest first, as (key, estimated count,
    /// guaranteed lower bound).
    pub fn top(&self, n: usize) -> Vec<(K, u64, u64)> {
        let mut v: Vec<_> = self
            .entries
            .iter()
            .map(|e| (e.key, e.count, e.count - e.error))
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v.truncate(n);
        v
    }

    /// Halve every counter so the table follows recent traffic; counters that
    /// reach zero are dropped.
    pub fn decay(&mut self) {
        for e in &mut self.entries {
            e.count /= 2;
            e.error /= 2;
        }
        self.entries.retain(|e| e.count > 0);
        self.index.clear();
        for (i, e) in self.entries.iter().enumerate() {
            self.index.insert(e.key, i);
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_heavy_hitters_among_many_small_sources() {
        let mut s = SpaceSaving::new(8);
        for round in 0..1000u32 {
            s.add(1u32, 5);
            s.add(2u32, 3);
            // 1000 distinct one-packet sources per round: far more than capacity.
            s.add(1_000_000 + round, 1);
        }
        let top = s.top(2);
        assert_eq!(top[0].0, 1);
        assert_eq!(top[1].0, 2);
        assert!(top[0].2 <= 5000 && top[0].1 >= 5000);
        assert!(s.len() <= 8);
    }

    #[test]
    fn decay_forgets_old_sources() {
        let mut s = SpaceSaving::new(4);
        s.add(7u8, 1);
        s.add(8u8, 100);
        s.decay();
        assert_eq!(s.top(4).len(), 1);
        assert_eq!(s.top(1)[0], (8, 50, 50));
        s.add(7u8, 3);
        assert_eq!(s.top(4).len(), 2);
    }
}
