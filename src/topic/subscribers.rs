//! `Subscribers`: the set of values subscribed to one pattern, stored so that delivery
//! scans a contiguous slice. Owns only the set representation; which pattern it belongs
//! to and when an empty set is dropped is `index`'s business.
//!
//! Three shapes, chosen by size:
//! - `One`: inline, no heap allocation (most channels have a single subscriber).
//! - `Many`: a `Vec` scanned linearly for duplicate checks and removal; below
//!   [`LARGE_AT`] values that is a few cache lines and cheaper than hashing.
//! - `Large`: a `Vec` plus a value -> position map, so insert and remove are O(1) and a
//!   mass disconnect from a 20,000-subscriber channel is not quadratic. Removal is
//!   `swap_remove`, fixing the position of the one moved value.

use std::collections::HashMap;
use std::hash::Hash;

/// At this many values a `Many` list gains a position map.
const LARGE_AT: usize = 64;
/// At this many values a `Large` list drops its map again (hysteresis, so a list hovering
/// around the threshold does not rebuild the map on every change).
const SMALL_AT: usize = 32;

/// The set of values subscribed to one pattern. Can be transiently empty (after the last
/// `remove`); the owner drops it then.
#[derive(Debug)]
pub(super) enum Subscribers<V> {
    One(V),
    Many(Vec<V>),
    Large(Box<Large<V>>),
}

#[derive(Debug)]
pub(super) struct Large<V> {
    list: Vec<V>,
    // Invariant: `pos[list[i]] == i` for every i, and `pos.len() == list.len()`.
    pos: HashMap<V, usize>,
}

impl<V: Copy + Eq + Hash> Subscribers<V> {
    /// A set holding just `v`.
    pub(super) fn new(v: V) -> Self {
        Subscribers::One(v)
    }

    /// The values, contiguous, in no particular order.
    pub(super) fn as_slice(&self) -> &[V] {
        match self {
            Subscribers::One(v) => std::slice::from_ref(v),
            Subscribers::Many(list) => list,
            Subscribers::Large(large) => &large.list,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Adds `v`; false if it was already there.
    pub(super) fn insert(&mut self, v: V) -> bool {
        match self {
            Subscribers::One(x) => {
                let x = *x;
                if x == v {
                    return false;
                }
                *self = Subscribers::Many(vec![x, v]);
            }
            Subscribers::Many(list) => {
                if list.contains(&v) {
                    return false;
                }
                list.push(v);
                if list.len() >= LARGE_AT {
                    let list = std::mem::take(list);
                    let pos = list.iter().enumerate().map(|(i, &x)| (x, i)).collect();
                    *self = Subscribers::Large(Box::new(Large { list, pos }));
                }
            }
            Subscribers::Large(large) => {
                let Large { list, pos } = &mut **large;
                if pos.contains_key(&v) {
                    return false;
                }
                pos.insert(v, list.len());
                list.push(v);
            }
        }
        true
    }

    /// Removes `v`; false if it was not there.
    pub(super) fn remove(&mut self, v: V) -> bool {
        match self {
            Subscribers::One(x) => {
                if *x != v {
                    return false;
                }
                *self = Subscribers::Many(Vec::new());
            }
            Subscribers::Many(list) => {
                let Some(i) = list.iter().position(|&x| x == v) else {
                    return false;
                };
                list.swap_remove(i);
                if let [only] = list.as_slice() {
                    *self = Subscribers::One(*only);
                }
            }
            Subscribers::Large(large) => {
                let Large { list, pos } = &mut **large;
                let Some(i) = pos.remove(&v) else {
                    return false;
                };
                list.swap_remove(i);
                // The former last value now sits at `i` (unless `v` was the last one).
                if let Some(&moved) = list.get(i) {
                    pos.insert(moved, i);
                }
                if list.len() <= SMALL_AT {
                    let mut list = std::mem::take(list);
                    list.shrink_to_fit();
                    *self = Subscribers::Many(list);
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(s: &Subscribers<u32>) -> Vec<u32> {
        let mut v = s.as_slice().to_vec();
        v.sort_unstable();
        v
    }

    #[test]
    fn one_many_one_empty() {
        let mut s = Subscribers::new(1u32);
        assert!(matches!(s, Subscribers::One(1)));
        assert!(!s.insert(1));
        assert!(s.insert(2));
        assert!(!s.insert(2));
        assert_eq!(sorted(&s), [1, 2]);
        assert!(!s.remove(3));
        assert!(s.remove(1));
        assert!(matches!(s, Subscribers::One(2)));
        assert!(s.remove(2));
        assert!(s.is_empty());
        assert!(!s.remove(2));
    }

    #[test]
    fn large_grows_shrinks_and_keeps_positions() {
        let mut s = Subscribers::new(0u32);
        for v in 1..1000 {
            assert!(s.insert(v));
        }
        assert!(matches!(s, Subscribers::Large(_)));
        assert!(!s.insert(500));
        assert_eq!(s.len(), 1000);
        // Remove in an order that moves values around a lot.
        let mut x = 7u32;
        let mut model: Vec<u32> = (0..1000).collect();
        while model.len() > 1 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let i = (x >> 8) as usize % model.len();
            let v = model.swap_remove(i);
            assert!(s.remove(v), "{v}");
            assert!(!s.remove(v), "{v}");
            assert_eq!(s.len(), model.len());
            if model.len().is_multiple_of(97) || model.len() < 70 {
                let mut m = model.clone();
                m.sort_unstable();
                assert_eq!(sorted(&s), m);
            }
        }
        assert!(matches!(s, Subscribers::One(_)));
    }
}
