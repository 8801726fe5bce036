//! The client table's index: record numbers hashed by client id, grown a few slots at a time.
//!
//! Pure. An open-addressing table with linear probing over a power-of-two number of slots: a
//! tag byte per slot (0 for empty, else seven bits of the hash with the top bit set, so that a
//! probe rarely looks at a record that is not the one sought) and the record number beside it;
//! a probe compares eight tags at a time, read as one word. It stores only `u32`s; the caller gives the hash of what it seeks, an equality test on a
//! stored number, and, when inserting, the hash of any stored number (the client id lives in
//! the record, so the index keeps no copy of it).
//!
//! Growing never rehashes every entry at once, the way Redis's dict.c grows: when the table is
//! 7/8 full, a table twice its size takes over and the old one stays until it is emptied into
//! the new, [`STEP_SLOTS`] of its slots with each insert. Meanwhile a lookup tries the new
//! table, then the old; an insert goes to the new one. Nothing is ever removed (clients are
//! never forgotten) and a client's record number never changes, so the old table is copied,
//! not emptied: an entry found in both is the same number, and the old table's probe chains
//! stay whole until it is dropped. Each insert copies at most `STEP_SLOTS` entries, and the old
//! table is gone after `slots / STEP_SLOTS` inserts, long before the new one is 7/8 full. The
//! new table's slots come zeroed from the allocator (`calloc`), which for large tables means
//! fresh pages, not a pass over them.
//!
//! Lookups take `&self` and do not move entries: only inserts fill the new table, so only
//! they need to empty the old one first.

/// Slots of the old table copied into the new one with each insert while it grows: at most
/// this many entries rehashed by one insert. Copying an entry costs a few cache misses (its
/// record, its client id, its new slot), 0.2 to 0.3 µs, so a growing table's insert takes a few
/// microseconds more than others, for `slots / 16` of the `slots * 7 / 8` inserts between two
/// growths.
/// Fewer slots per step (down to two: the old table, 7/8 full, must be copied before the new
/// one is) make each such insert cheaper but keep two tables, and two lookups per miss, for
/// longer: at two, the server took distinct clients about 20% slower over a run to 10,000,000
/// (bench `grow`), for no better latency.
pub const STEP_SLOTS: usize = 16;

/// The smallest table.
const MIN_SLOTS: usize = 16;

/// A table of `slots` holds up to `slots * 7 / 8` entries.
fn max_entries(slots: usize) -> usize {
    slots / 8 * 7
}

/// The tag byte of a hash: its top seven bits, with the top bit set (0 is an empty slot).
fn tag(hash: u64) -> u8 {
    (hash >> 57) as u8 | 0x80
}

/// Tags read at once: a probe compares eight slots' tags in one word.
const GROUP: usize = 8;
/// Every byte of a word: multiplied by a byte, that byte eight times.
const BYTES: u64 = 0x0101_0101_0101_0101;
/// The top bit of every byte of a word.
const TOP_BITS: u64 = 0x8080_8080_8080_8080;

/// One open-addressing table: a tag and a record number per slot. The tags run `GROUP` bytes
/// past the last slot, a copy of the first ones, so that a word read near the end wraps.
#[derive(Default)]
struct Slots {
    tags: Box<[u8]>,
    values: Box<[u32]>,
}

impl Slots {
    /// `slots` empty slots (a power of two), zeroed by the allocator.
    fn zeroed(slots: usize) -> Slots {
        debug_assert!(slots.is_power_of_two() && slots >= GROUP);
        Slots {
            tags: vec![0u8; slots + GROUP].into_boxed_slice(),
            values: vec![0u32; slots].into_boxed_slice(),
        }
    }

    fn len(&self) -> usize {
        self.values.len()
    }

    fn mask(&self) -> usize {
        self.values.len().wrapping_sub(1)
    }

    /// The tags of slots `i .. i + GROUP` (wrapping), the first in the lowest byte.
    fn group(&self, i: usize) -> u64 {
        let mut word = [0u8; GROUP];
        word.copy_from_slice(&self.tags[i..i + GROUP]);
        u64::from_le_bytes(word)
    }

    fn find(&self, hash: u64, mut eq: impl FnMut(&u32) -> bool) -> Option<&u32> {
        if self.values.is_empty() {
            return None;
        }
        let (mask, tag) = (self.mask(), tag(hash));
        let wanted = u64::from(tag) * BYTES;
        let mut i = hash as usize & mask;
        loop {
            let group = self.group(i);
            // A byte equal to the tag is zero here; the bit trick marks every zero byte (and
            // may mark a byte above one: the tag is checked again).
            let diff = group ^ wanted;
            let mut candidates = diff.wrapping_sub(BYTES) & !diff & TOP_BITS;
            while candidates != 0 {
                let k = candidates.trailing_zeros() as usize / 8;
                let slot = (i + k) & mask;
                if self.tags[i + k] == tag && eq(&self.values[slot]) {
                    return Some(&self.values[slot]);
                }
                candidates &= candidates - 1;
            }
            // An empty slot ends the run a stored entry would be in (a tag has its top bit).
            if !group & TOP_BITS != 0 {
                return None;
            }
            i = (i + GROUP) & mask;
        }
    }

    /// Puts `value` in the first empty slot from its hash's home; the table must have one.
    fn place(&mut self, hash: u64, value: u32) {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        let slot = loop {
            let empty = !self.group(i) & TOP_BITS;
            if empty != 0 {
                break (i + empty.trailing_zeros() as usize / 8) & mask;
            }
            i = (i + GROUP) & mask;
        };
        let tag = tag(hash);
        self.tags[slot] = tag;
        if slot < GROUP {
            self.tags[self.len() + slot] = tag;
        }
        self.values[slot] = value;
    }
}

/// Record numbers indexed by the hash of their client id. See the module's documentation.
#[derive(Default)]
pub struct ClientIndex {
    /// Where inserts go.
    new: Slots,
    /// The table being copied into `new` while the index grows (empty otherwise).
    old: Slots,
    /// The next slot of `old` to copy.
    cursor: usize,
    /// Entries in all (each counted once, wherever it is).
    len: usize,
}

impl ClientIndex {
    pub fn new() -> ClientIndex {
        ClientIndex::default()
    }

    /// An index that takes `entries` entries without growing.
    pub fn with_capacity(entries: usize) -> ClientIndex {
        let mut index = ClientIndex::new();
        if entries > 0 {
            index.new = Slots::zeroed(slots_for(entries));
        }
        index
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many entries it can hold before it next grows.
    pub fn capacity(&self) -> usize {
        max_entries(self.new.len())
    }

    /// Whether an old table is still being copied into the new one.
    pub fn is_growing(&self) -> bool {
        !self.old.values.is_empty()
    }

    /// The stored number with hash `hash` for which `eq` holds.
    pub fn find(&self, hash: u64, mut eq: impl FnMut(&u32) -> bool) -> Option<&u32> {
        self.new
            .find(hash, &mut eq)
            .or_else(|| self.old.find(hash, &mut eq))
    }

    /// Stores `value` under `hash`; no equal entry may be stored already (`find` first).
    /// `rehash` gives the hash of a stored number: the entries copied while the index grows
    /// are hashed again. Copies at most [`STEP_SLOTS`] entries.
    pub fn insert_unique(&mut self, hash: u64, value: u32, mut rehash: impl FnMut(&u32) -> u64) {
        if self.len + 1 > self.capacity() {
            self.grow(&mut rehash);
        }
        self.step(&mut rehash);
        self.new.place(hash, value);
        self.len += 1;
    }

    /// A table twice the size takes the inserts; the current one becomes the old, copied a
    /// step at a time from now on.
    fn grow(&mut self, rehash: &mut impl FnMut(&u32) -> u64) {
        // The previous growth ends long before the next (see the module's documentation);
        // should it not have, finish it first.
        while self.is_growing() {
            self.step(rehash);
        }
        let slots = (self.new.len() * 2).max(MIN_SLOTS);
        self.old = std::mem::replace(&mut self.new, Slots::zeroed(slots));
        self.cursor = 0;
        if self.len == 0 {
            self.old = Slots::default();
        }
    }

    /// Copies the next `STEP_SLOTS` slots of the old table into the new one; drops the old
    /// table once it is all copied.
    fn step(&mut self, rehash: &mut impl FnMut(&u32) -> u64) {
        if !self.is_growing() {
            return;
        }
        let end = (self.cursor + STEP_SLOTS).min(self.old.len());
        for i in self.cursor..end {
            if self.old.tags[i] != 0 {
                let value = self.old.values[i];
                self.new.place(rehash(&value), value);
            }
        }
        self.cursor = end;
        if end == self.old.len() {
            self.old = Slots::default();
            self.cursor = 0;
        }
    }
}

/// The slots of a table that holds `entries` (a power of two, at least `MIN_SLOTS`).
fn slots_for(entries: usize) -> usize {
    let wanted = entries.saturating_mul(8).div_ceil(7);
    wanted.next_power_of_two().max(MIN_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A cheap, well-mixed hash of a key (splitmix64's finaliser).
    fn mix(key: u64) -> u64 {
        let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The caller's side, as the client table is: keys kept outside the index, in a `Vec`
    /// whose positions the index stores.
    #[derive(Default)]
    struct Keyed {
        keys: Vec<u64>,
        index: ClientIndex,
        hash: Option<fn(u64) -> u64>,
    }

    impl Keyed {
        fn with_hash(hash: fn(u64) -> u64) -> Keyed {
            Keyed {
                hash: Some(hash),
                ..Keyed::default()
            }
        }

        fn hash(&self, key: u64) -> u64 {
            self.hash.unwrap_or(mix)(key)
        }

        fn get(&self, key: u64) -> Option<u32> {
            let keys = &self.keys;
            self.index
                .find(self.hash(key), |&i| keys[i as usize] == key)
                .copied()
        }

        /// Inserts `key` if new; its position either way, and the positions copied.
        fn insert(&mut self, key: u64) -> (u32, Vec<u32>) {
            if let Some(i) = self.get(key) {
                return (i, Vec::new());
            }
            let i = self.keys.len() as u32;
            self.keys.push(key);
            let moved = RefCell::new(Vec::new());
            let (keys, hash) = (&self.keys, self.hash.unwrap_or(mix));
            let h = hash(key);
            self.index.insert_unique(h, i, |&j| {
                moved.borrow_mut().push(j);
                hash(keys[j as usize])
            });
            (i, moved.into_inner())
        }
    }

    #[test]
    fn finds_what_was_inserted_and_nothing_else() {
        let mut t = Keyed::default();
        assert_eq!(t.get(7), None);
        for key in 0..1000u64 {
            assert_eq!(t.insert(key * 3).0, key as u32);
        }
        for key in 0..3000u64 {
            let expected = (key % 3 == 0).then_some((key / 3) as u32);
            assert_eq!(t.get(key), expected, "key {key}");
        }
        assert_eq!(t.index.len(), 1000);
    }

    #[test]
    fn lookups_are_right_at_every_insert_while_growing() {
        let mut t = Keyed::default();
        let mut saw_growing = 0;
        for key in 0..20_000u64 {
            t.insert(key);
            saw_growing += usize::from(t.index.is_growing());
            // The newest, the oldest, one in the middle, and one never inserted.
            for probe in [key, 0, key / 2] {
                assert_eq!(t.get(probe), Some(probe as u32), "{probe} after {key}");
            }
            assert_eq!(t.get(key + 1), None);
        }
        assert!(saw_growing > 0, "never caught growing");
        for key in 0..20_000u64 {
            assert_eq!(t.get(key), Some(key as u32));
        }
    }

    #[test]
    fn every_entry_is_copied_exactly_once_per_growth() {
        let mut t = Keyed::default();
        // Per position: copies seen, and growths that began after it was stored.
        let (mut copies, mut growths_since) = (Vec::<u32>::new(), Vec::<u32>::new());
        let mut growths = 0;
        for key in 0u64.. {
            let (slots_before, stored_before) = (t.index.new.len(), t.keys.len());
            let (_, moved) = t.insert(key);
            copies.push(0);
            growths_since.push(0);
            if t.index.new.len() != slots_before {
                growths += 1;
                growths_since[..stored_before]
                    .iter_mut()
                    .for_each(|g| *g += 1);
            }
            for j in moved {
                copies[j as usize] += 1;
            }
            if key >= 50_000 && !t.index.is_growing() {
                break;
            }
        }
        assert!(growths >= 10, "{growths}");
        assert_eq!(copies, growths_since);
    }

    #[test]
    fn each_insert_copies_at_most_a_step() {
        let mut t = Keyed::default();
        let mut most = 0;
        let mut total = 0;
        for key in 0..200_000u64 {
            let (_, moved) = t.insert(key);
            most = most.max(moved.len());
            total += moved.len();
        }
        assert!(most <= STEP_SLOTS, "{most} copied by one insert");
        assert!(most > 0);
        // Each growth copies what was stored before it, half as much as the next one: in all,
        // less than twice the entries.
        assert!(total < 2 * 200_000, "{total}");
    }

    #[test]
    fn a_growth_ends_long_before_the_next_would_begin() {
        let mut t = Keyed::default();
        for key in 0..100_000u64 {
            let before = t.index.new.len();
            t.insert(key);
            if t.index.new.len() != before && before > 0 {
                // At most slots / STEP_SLOTS inserts to empty the old table of `before` slots,
                // while the new one takes 7/8 of `2 * before` entries.
                let ends_after = before / STEP_SLOTS;
                assert!(ends_after < max_entries(2 * before) - t.index.len());
            }
        }
    }

    #[test]
    fn colliding_hashes_still_tell_keys_apart() {
        // Every key in one of four homes with the same tag: long chains across growths.
        let mut t = Keyed::with_hash(|k| (k % 4) << 8);
        for key in 0..500u64 {
            t.insert(key);
        }
        for key in 0..500u64 {
            assert_eq!(t.get(key), Some(key as u32));
        }
        assert_eq!(t.get(500), None);
    }

    #[test]
    fn runs_wrap_past_the_last_slot() {
        // Homes in the last few slots whatever the size: runs go on from slot 0, through the
        // copy of the first tags.
        let mut t = Keyed::with_hash(|k| u64::MAX - (k % 3));
        for key in 0..300u64 {
            t.insert(key);
            assert_eq!(t.get(key), Some(key as u32));
            assert_eq!(t.get(key / 2), Some((key / 2) as u32));
        }
        assert_eq!(t.get(300), None);
    }

    #[test]
    fn with_capacity_never_grows_below_it() {
        let mut t = Keyed {
            index: ClientIndex::with_capacity(10_000),
            ..Keyed::default()
        };
        let slots = t.index.new.len();
        assert!(t.index.capacity() >= 10_000);
        for key in 0..10_000u64 {
            t.insert(key);
            assert!(!t.index.is_growing());
        }
        assert_eq!(t.index.new.len(), slots);
        assert_eq!(ClientIndex::with_capacity(0).capacity(), 0);
    }

    #[test]
    fn agrees_with_a_hash_map() {
        // A seeded stream of inserts (repeats included) and lookups (of misses too), checked
        // against std's HashMap after every operation.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..4 {
            let mut t = Keyed::default();
            let mut model: HashMap<u64, u32> = HashMap::new();
            let key_space = 1u64 << (10 + 3 * round);
            for _ in 0..60_000 {
                let key = next() % key_space;
                if next() % 3 == 0 {
                    assert_eq!(t.get(key), model.get(&key).copied(), "lookup {key}");
                } else {
                    let n = model.len() as u32;
                    let expected = *model.entry(key).or_insert(n);
                    assert_eq!(t.insert(key).0, expected, "insert {key}");
                }
                assert_eq!(t.index.len(), model.len());
            }
            for (&key, &i) in &model {
                assert_eq!(t.get(key), Some(i));
            }
        }
    }
}
