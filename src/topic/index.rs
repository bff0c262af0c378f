//! `Index`: which values (connection ids per shard, or shard ids in the global interest
//! table) are subscribed to which patterns, and fast lookup of everything a published
//! topic matches. Owns the data structure only; patterns arrive already validated
//! (`topic::validate_pattern`) and callers dedup values that match via several patterns.
//!
//! Layout (after nats-server's sublist):
//! - exact patterns (no wildcard) live in one `HashMap` keyed by the whole pattern, so
//!   the common case is a single hash of the topic;
//! - wildcard patterns live in a trie by level: each node has literal children, a `+`
//!   child, the pattern ending at this node, and the `…/#` pattern rooted here. Matching
//!   walks the topic's levels with `split_once` on the borrowed `&str`, allocating nothing.
//!
//! Each node is visited at most once per lookup (a node sits at a fixed depth and the topic
//! has one level per depth), so matching is O(trie nodes on matching paths + matches).

use super::subscribers::Subscribers;
use std::collections::HashMap;
use std::hash::Hash;

/// Subscription index from patterns to values `V` (e.g. `u32` connection ids, `u16`
/// shard ids).
#[derive(Debug)]
pub struct Index<V> {
    /// Patterns without wildcards, keyed by the full pattern.
    exact: HashMap<Box<str>, Subscribers<V>>,
    /// Root of the wildcard trie (zero levels consumed).
    root: Node<V>,
    /// Number of wildcard patterns with at least one subscriber.
    wildcard_patterns: usize,
}

#[derive(Debug)]
struct Node<V> {
    children: HashMap<Box<str>, Node<V>>,
    plus: Option<Box<Node<V>>>,
    /// The wildcard pattern whose last level is this node (e.g. `a/+` at the `+` child of `a`).
    here: Option<Box<Terminal<V>>>,
    /// The pattern `<path to this node>/#` (or `#` itself at the root).
    hash: Option<Box<Terminal<V>>>,
}

/// A pattern's subscribers in the trie. The pattern text is kept so `patterns()` can
/// lend `&str`s without rebuilding them from the path.
#[derive(Debug)]
struct Terminal<V> {
    pattern: Box<str>,
    subs: Subscribers<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            plus: None,
            here: None,
            hash: None,
        }
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.here.is_none()
            && self.hash.is_none()
    }
}

impl<V> Default for Index<V> {
    fn default() -> Self {
        Index {
            exact: HashMap::new(),
            root: Node::default(),
            wildcard_patterns: 0,
        }
    }
}

/// Result of removing a value from a trie terminal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// The value was not subscribed to the pattern.
    NotFound,
    /// Removed; other subscribers remain.
    Removed,
    /// Removed the last subscriber; the pattern is gone.
    Emptied,
}

impl<V: Copy + Eq + Hash> Index<V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes `v` to `pattern` (already validated). Returns true iff the pattern had
    /// no subscribers before. Inserting an existing `(pattern, v)` pair is a no-op that
    /// returns false.
    pub fn insert(&mut self, pattern: &str, v: V) -> bool {
        if !is_wildcard(pattern) {
            if let Some(subs) = self.exact.get_mut(pattern) {
                subs.insert(v);
                return false;
            }
            self.exact.insert(pattern.into(), Subscribers::new(v));
            return true;
        }
        let slot = self.root.slot_mut(pattern);
        match slot {
            Some(terminal) => {
                terminal.subs.insert(v);
                false
            }
            None => {
                *slot = Some(Box::new(Terminal {
                    pattern: pattern.into(),
                    subs: Subscribers::new(v),
                }));
                self.wildcard_patterns += 1;
                true
            }
        }
    }

    /// Unsubscribes `v` from `pattern`. Returns true iff `v` was subscribed and was the
    /// last subscriber; the pattern's memory (and trie nodes nobody else uses) is freed.
    pub fn remove(&mut self, pattern: &str, v: V) -> bool {
        if !is_wildcard(pattern) {
            let Some(subs) = self.exact.get_mut(pattern) else {
                return false;
            };
            if subs.remove(v) && subs.is_empty() {
                self.exact.remove(pattern);
                return true;
            }
            return false;
        }
        let removed = self.root.remove(Some(pattern), v);
        if removed == Removal::Emptied {
            self.wildcard_patterns -= 1;
            return true;
        }
        false
    }

    /// Calls `f(v)` for every `(pattern, v)` whose pattern matches `topic`. A value
    /// subscribed through several matching patterns is reported once per pattern.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(V)) {
        if let Some(subs) = self.exact.get(topic) {
            subs.as_slice().iter().for_each(|&v| f(v));
        }
        if self.wildcard_patterns == 0 {
            return;
        }
        if super::is_broker_topic(topic) {
            // Root `#` and `+` do not reach broker topics (see `topic::is_broker_topic`).
            let (level, tail) = split_level(topic);
            if let Some(child) = self.root.children.get(level) {
                child.for_each_match(tail, &mut f);
            }
            return;
        }
        self.root.for_each_match(Some(topic), &mut f);
    }

    /// Number of values subscribed to exactly this pattern (0 when unknown).
    pub fn subscriber_count(&self, pattern: &str) -> usize {
        if !is_wildcard(pattern) {
            return self.exact.get(pattern).map_or(0, Subscribers::len);
        }
        self.root.find(pattern).map_or(0, |t| t.subs.len())
    }

    /// Number of patterns with at least one subscriber.
    pub fn pattern_count(&self) -> usize {
        self.exact.len() + self.wildcard_patterns
    }

    /// Every pattern with its subscriber count, in no particular order.
    pub fn patterns(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        let exact = self.exact.iter().map(|(p, subs)| (&**p, subs.len()));
        let wildcard = Nodes {
            stack: vec![&self.root],
        }
        .flat_map(|node| node.here.as_deref().into_iter().chain(node.hash.as_deref()))
        .map(|t| (&*t.pattern, t.subs.len()));
        exact.chain(wildcard)
    }

    /// True when no pattern has a subscriber.
    pub fn is_empty(&self) -> bool {
        self.pattern_count() == 0
    }
}

impl<V: Copy + Eq + Hash> Node<V> {
    fn for_each_match<F: FnMut(V)>(&self, rest: Option<&str>, f: &mut F) {
        // `…/#` matches whatever is left, including nothing (`a/#` matches `a`).
        if let Some(t) = &self.hash {
            t.subs.as_slice().iter().for_each(|&v| f(v));
        }
        let Some(rest) = rest else {
            if let Some(t) = &self.here {
                t.subs.as_slice().iter().for_each(|&v| f(v));
            }
            return;
        };
        let (level, tail) = split_level(rest);
        if !self.children.is_empty() {
            if let Some(child) = self.children.get(level) {
                child.for_each_match(tail, f);
            }
        }
        if let Some(plus) = &self.plus {
            plus.for_each_match(tail, f);
        }
    }

    /// The terminal slot for `pattern`, creating trie nodes on the way.
    fn slot_mut(&mut self, pattern: &str) -> &mut Option<Box<Terminal<V>>> {
        let mut node = self;
        let mut rest = pattern;
        loop {
            let (level, tail) = split_level(rest);
            if level == "#" && tail.is_none() {
                return &mut node.hash;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                // Allocates the key even when the child exists; subscribing is off the
                // delivery path and this keeps the borrow checker happy without unwraps.
                node.children.entry(level.into()).or_default()
            };
            match tail {
                Some(t) => rest = t,
                None => return &mut node.here,
            }
        }
    }

    fn find(&self, pattern: &str) -> Option<&Terminal<V>> {
        let mut node = self;
        let mut rest = pattern;
        loop {
            let (level, tail) = split_level(rest);
            if level == "#" && tail.is_none() {
                return node.hash.as_deref();
            }
            node = if level == "+" {
                node.plus.as_deref()?
            } else {
                node.children.get(level)?
            };
            match tail {
                Some(t) => rest = t,
                None => return node.here.as_deref(),
            }
        }
    }

    /// Removes `v` from the pattern `rest` below this node and prunes nodes left empty.
    /// Recursion depth is the pattern's level count, bounded by `client.max_topic_levels`.
    fn remove(&mut self, rest: Option<&str>, v: V) -> Removal {
        let Some(rest) = rest else {
            return remove_from(&mut self.here, v);
        };
        let (level, tail) = split_level(rest);
        if level == "#" && tail.is_none() {
            return remove_from(&mut self.hash, v);
        }
        if level == "+" {
            let Some(plus) = self.plus.as_deref_mut() else {
                return Removal::NotFound;
            };
            let removed = plus.remove(tail, v);
            if plus.is_empty() {
                self.plus = None;
            }
            removed
        } else {
            let Some(child) = self.children.get_mut(level) else {
                return Removal::NotFound;
            };
            let removed = child.remove(tail, v);
            if child.is_empty() {
                self.children.remove(level);
                // Keep a once-wide node from pinning a large table after churn.
                if self.children.capacity() > 4 * self.children.len() + 8 {
                    self.children.shrink_to_fit();
                }
            }
            removed
        }
    }
}

fn remove_from<V: Copy + Eq + Hash>(slot: &mut Option<Box<Terminal<V>>>, v: V) -> Removal {
    let Some(t) = slot else {
        return Removal::NotFound;
    };
    if !t.subs.remove(v) {
        return Removal::NotFound;
    }
    if t.subs.is_empty() {
        *slot = None;
        return Removal::Emptied;
    }
    Removal::Removed
}

/// Depth-first walk over every trie node.
struct Nodes<'a, V> {
    stack: Vec<&'a Node<V>>,
}

impl<'a, V> Iterator for Nodes<'a, V> {
    type Item = &'a Node<V>;

    fn next(&mut self) -> Option<Self::Item> {
        let node = self.stack.pop()?;
        self.stack.extend(node.children.values());
        self.stack.extend(node.plus.as_deref());
        Some(node)
    }
}

/// First level of `rest` and what follows the `/`, `None` when it was the last level.
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, tail)) => (level, Some(tail)),
        None => (rest, None),
    }
}

/// Whether a (validated) pattern belongs in the trie. Only whole-level `+`/`#` are
/// wildcards, but validation guarantees they never appear otherwise.
fn is_wildcard(pattern: &str) -> bool {
    pattern.bytes().any(|b| b == b'+' || b == b'#')
}

#[cfg(test)]
mod tests {
    use super::super::pattern_matches;
    use super::*;

    fn matches(index: &Index<u32>, topic: &str) -> Vec<u32> {
        let mut out = Vec::new();
        index.for_each_match(topic, |v| out.push(v));
        out.sort_unstable();
        out
    }

    const TABLE: &[(&str, &str, bool)] = &[
        ("a/#", "a", true),
        ("a/#", "a/b", true),
        ("a/#", "a/b/c", true),
        ("a/#", "a/", true),
        ("a/#", "b", false),
        ("a/#", "ab", false),
        ("#", "a", true),
        ("#", "/", true),
        ("#", "a/b/c", true),
        ("#", "process:build-1", true),
        ("#", "$sys/stats", false),
        ("+/stats", "$sys/stats", false),
        ("$sys/#", "$sys/stats", true),
        ("$sys/+", "$sys/stats", true),
        ("$sys/stats", "$sys/stats", true),
        ("a/#", "a/$x", true),
        ("+", "a", true),
        ("+", "a/b", false),
        ("+", "/", false),
        ("+/+", "a/b", true),
        ("+/+", "/b", true),
        ("+/+", "a/", true),
        ("+/+", "/", true),
        ("+/+", "a", false),
        ("+/+", "a/b/c", false),
        ("a/+/c", "a/b/c", true),
        ("a/+/c", "a//c", true),
        ("a/+/c", "a/b/d", false),
        ("a/+/c", "a/c", false),
        ("+/#", "a", true),
        ("+/#", "a/b/c", true),
        ("+/#", "/", true),
        ("/+", "/a", true),
        ("/+", "a", false),
        ("+/b/#", "x/b", true),
        ("+/b/#", "x/c/b", false),
        ("a/b", "a/b", true),
        ("a/b", "a", false),
        ("a", "a/b", false),
        ("a//b", "a//b", true),
        ("a//b", "a/b", false),
        ("process:build-1", "process:build-1", true),
        ("process:build-1", "process:build-2", false),
        ("日本/+", "日本/語", true),
    ];

    #[test]
    fn match_table_reference_and_index() {
        for &(pattern, topic, expected) in TABLE {
            assert_eq!(
                pattern_matches(pattern, topic),
                expected,
                "reference {pattern:?} vs {topic:?}"
            );
            let mut index = Index::new();
            index.insert(pattern, 7u32);
            let want: &[u32] = if expected { &[7] } else { &[] };
            assert_eq!(
                matches(&index, topic),
                want,
                "index {pattern:?} vs {topic:?}"
            );
        }
        // All patterns in one index: each topic gets exactly the matching ones.
        let mut index = Index::new();
        let mut patterns: Vec<&str> = TABLE.iter().map(|&(p, _, _)| p).collect();
        patterns.dedup();
        for (i, p) in patterns.iter().enumerate() {
            index.insert(p, i as u32);
        }
        for &(_, topic, _) in TABLE {
            let want: Vec<u32> = (0..patterns.len() as u32)
                .filter(|&i| pattern_matches(patterns[i as usize], topic))
                .collect();
            assert_eq!(matches(&index, topic), want, "{topic:?}");
        }
    }

    #[test]
    fn first_and_last_flags() {
        for pattern in ["a/b", "a/+", "a/#", "#", "+"] {
            let mut index = Index::new();
            assert!(index.insert(pattern, 1u32), "{pattern}");
            assert!(!index.insert(pattern, 2), "{pattern}");
            assert!(!index.insert(pattern, 1), "duplicate {pattern}");
            assert_eq!(index.subscriber_count(pattern), 2);
            assert_eq!(index.pattern_count(), 1);
            assert!(!index.remove(pattern, 3), "unknown value {pattern}");
            assert!(!index.remove("zzz", 1));
            assert!(!index.remove("zzz/+", 1));
            assert!(!index.remove(pattern, 1), "not last {pattern}");
            assert!(!index.remove(pattern, 1), "already removed {pattern}");
            assert!(index.remove(pattern, 2), "last {pattern}");
            assert!(!index.remove(pattern, 2));
            assert_eq!(index.subscriber_count(pattern), 0);
            assert_eq!(index.pattern_count(), 0);
            assert!(index.is_empty());
            assert!(index.root.is_empty(), "trie nodes freed for {pattern}");
            assert!(index.insert(pattern, 2), "first again {pattern}");
        }
    }

    #[test]
    fn trie_nodes_are_freed() {
        let mut index = Index::new();
        let patterns = ["a/b/+/d", "a/b/#", "a/+/c", "+/+/+/+", "a/b/c/#", "x", "#"];
        for p in patterns {
            assert!(index.insert(p, 1u32));
        }
        assert_eq!(index.pattern_count(), patterns.len());
        for p in patterns {
            assert!(index.remove(p, 1), "{p}");
        }
        assert!(index.is_empty());
        assert!(index.root.is_empty());
        assert!(index.exact.is_empty());
    }

    #[test]
    fn one_callback_per_matching_pattern() {
        let mut index = Index::new();
        for p in ["a/b", "a/+", "+/b", "a/#", "#", "+/+", "c"] {
            index.insert(p, 5u32);
        }
        index.insert("a/b", 6);
        assert_eq!(matches(&index, "a/b"), [5, 5, 5, 5, 5, 5, 6]);
        assert_eq!(matches(&index, "c"), [5, 5]);
    }

    #[test]
    fn patterns_lists_everything() {
        let mut index = Index::new();
        index.insert("a", 1u32);
        index.insert("a", 2);
        index.insert("a/#", 1);
        index.insert("a/+", 1);
        index.insert("#", 3);
        index.insert("+/x/#", 3);
        let mut got: Vec<(String, usize)> =
            index.patterns().map(|(p, n)| (p.to_owned(), n)).collect();
        got.sort();
        let want: Vec<(String, usize)> = [("#", 1), ("+/x/#", 1), ("a", 2), ("a/#", 1), ("a/+", 1)]
            .iter()
            .map(|&(p, n)| (p.to_owned(), n))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn works_with_u16() {
        let mut index: Index<u16> = Index::default();
        assert!(index.insert("a/+", 3));
        let mut got = Vec::new();
        index.for_each_match("a/b", |v| got.push(v));
        assert_eq!(got, [3]);
    }

    #[test]
    fn large_channel_mass_unsubscribe() {
        let mut index = Index::new();
        for v in 0..20_000u32 {
            assert_eq!(index.insert("room", v), v == 0);
            assert_eq!(index.insert("room/#", v), v == 0);
        }
        assert_eq!(index.subscriber_count("room"), 20_000);
        assert_eq!(matches(&index, "room").len(), 40_000);
        // Odd ids from the back, then even ids from the front: exercises swap_remove moves.
        let order = (0..20_000u32)
            .rev()
            .step_by(2)
            .chain((0..20_000).step_by(2));
        for (n, v) in order.enumerate() {
            let last = n == 19_999;
            assert_eq!(index.remove("room", v), last, "{v}");
            assert_eq!(index.remove("room/#", v), last, "{v}");
        }
        assert!(index.is_empty());
    }

    /// Tiny deterministic LCG so the randomized test needs no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) as usize) % n
        }
    }

    fn random_topic(rng: &mut Lcg, wildcards: bool) -> String {
        const LEVELS: [&str; 4] = ["a", "b", "", "cd"];
        let n = 1 + rng.below(4);
        let mut levels = Vec::new();
        for i in 0..n {
            let level = match rng.below(if wildcards { 8 } else { 4 }) {
                4 | 5 => "+",
                6 if i + 1 == n => "#",
                k => LEVELS[k % 4],
            };
            levels.push(level);
        }
        levels.join("/")
    }

    #[test]
    fn randomized_against_reference() {
        let mut rng = Lcg(0x5eed);
        let mut index = Index::new();
        let mut model: Vec<(String, u32)> = Vec::new();
        for round in 0..40 {
            for _ in 0..25 {
                let pattern = random_topic(&mut rng, true);
                let v = rng.below(6) as u32;
                let had_any = model.iter().any(|(p, _)| *p == pattern);
                let had_pair = model.iter().any(|(p, x)| *p == pattern && *x == v);
                assert_eq!(index.insert(&pattern, v), !had_any, "{pattern} {v}");
                if !had_pair {
                    model.push((pattern, v));
                }
            }
            for _ in 0..10 {
                let pattern = random_topic(&mut rng, true);
                let v = rng.below(6) as u32;
                let pos = model.iter().position(|(p, x)| *p == pattern && *x == v);
                if let Some(i) = pos {
                    model.swap_remove(i);
                }
                let last = pos.is_some() && !model.iter().any(|(p, _)| *p == pattern);
                assert_eq!(index.remove(&pattern, v), last, "{pattern} {v}");
            }
            let mut distinct: Vec<&str> = model.iter().map(|(p, _)| p.as_str()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(index.pattern_count(), distinct.len(), "round {round}");
            for _ in 0..50 {
                let topic = random_topic(&mut rng, false);
                let mut want: Vec<u32> = model
                    .iter()
                    .filter(|(p, _)| pattern_matches(p, &topic))
                    .map(|&(_, v)| v)
                    .collect();
                want.sort_unstable();
                assert_eq!(matches(&index, &topic), want, "{topic:?} round {round}");
            }
        }
        for (p, v) in std::mem::take(&mut model) {
            index.remove(&p, v);
        }
        assert!(index.is_empty());
        assert!(index.root.is_empty());
    }
}
