//! The order in which the client table's records last changed, and the readers that walk it.
//!
//! Every record stored gets the next *version* of this server (1, 2, 3, ...), and the records
//! are kept in a list ordered by version, oldest first: a record that changes leaves its place
//! and goes to the end with its new version. A reader (one per outbound link) walks the list
//! from a version onward and is handed each record once, in its newest version: an update of
//! a record the reader has not reached yet costs nothing, one of a record it has passed puts
//! the record back in front of it. So what a link owes is always "every record past my
//! position", its memory is the position, and a link that was told "I have everything of
//! yours through version X" starts just past X (see docs/protocol.md, resync by difference).
//!
//! Versions survive restarts (the store writes them), and a history is named by an [`Epoch`]
//! made when the store is new: a version means something only with its epoch.
//!
//! Pure: no I/O, no clock. O(1) per change plus O(readers).

use std::fmt;

/// A position in this server's history of changes: the version of a record is the value of
/// the server's change counter when it was stored.
pub type Version = u64;

/// "No record" in the links of the list.
const NONE: u32 = u32::MAX;

/// The name of one history of versions: made at random when a store is new (or with no store,
/// at every start), kept by the store across restarts and compactions. A version of another
/// epoch says nothing about this one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(pub u64);

impl Epoch {
    /// Sixteen hex digits, as the wire and the store write it.
    pub fn parse(text: &[u8]) -> Option<Epoch> {
        if text.len() != 16 {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        u64::from_str_radix(text, 16).ok().map(Epoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Identifies a reader (the link it belongs to).
pub type ReaderId = usize;

/// Where one reader stands.
#[derive(Clone, Copy, Debug)]
struct Reader {
    /// The last record it was handed, or [`NONE`]: the next is the one after it.
    after: u32,
    /// It has been handed every record whose version is at most this, in that version.
    passed: Version,
    /// Records it has not been handed yet.
    unread: usize,
    /// Records changed after it opened ([`Reader::live_from`]) that it has not been handed:
    /// the live updates it owes, as against the catch-up it started with.
    live: usize,
    live_from: Version,
}

#[derive(Debug)]
pub struct ChangeOrder {
    /// Per record (by table index): its version, and its neighbours in the list.
    version: Vec<Version>,
    older: Vec<u32>,
    newer: Vec<u32>,
    oldest: u32,
    newest: u32,
    /// The highest version given.
    latest: Version,
    readers: Vec<Option<Reader>>,
}

impl Default for ChangeOrder {
    fn default() -> ChangeOrder {
        ChangeOrder::new()
    }
}

impl ChangeOrder {
    pub fn new() -> ChangeOrder {
        ChangeOrder {
            version: Vec::new(),
            older: Vec::new(),
            newer: Vec::new(),
            oldest: NONE,
            newest: NONE,
            latest: 0,
            readers: Vec::new(),
        }
    }

    /// The order of records that were stored with these versions (a store read back): sorted
    /// by version. If two records share a version (a store that is two stores concatenated,
    /// or edited by hand), every record is renumbered 1, 2, ... in version order instead (such
    /// a history is given a new epoch), and the second value is true.
    pub fn from_versions(mut version: Vec<Version>) -> (ChangeOrder, bool) {
        // Pairs, not indices sorted by a key looked up in `version`: at a million records
        // every comparison of the latter misses the cache. An appended store is in version
        // order already, and the sort then only checks it.
        let mut by_version: Vec<(Version, u32)> = (0..version.len() as u32)
            .map(|r| (version[r as usize], r))
            .collect();
        by_version.sort_unstable();
        let repeated = by_version.windows(2).any(|w| w[0].0 == w[1].0);
        if repeated {
            for (n, (v, r)) in by_version.iter_mut().enumerate() {
                *v = n as Version + 1;
                version[*r as usize] = *v;
            }
        }
        let mut order = ChangeOrder {
            older: vec![NONE; version.len()],
            newer: vec![NONE; version.len()],
            latest: by_version.last().map_or(0, |&(v, _)| v),
            version,
            ..ChangeOrder::new()
        };
        for &(_, record) in &by_version {
            order.append(record);
        }
        (order, repeated)
    }

    /// A record read back from a store, with the version it was stored at (`record == len`
    /// for a new one); the list is built by [`ChangeOrder::finish_restore`].
    pub fn restore(&mut self, record: usize, version: Version) {
        if record == self.version.len() {
            self.version.push(version);
        } else {
            self.version[record] = version;
        }
    }

    /// Links the records restored, by version. If two share a version, every record is
    /// renumbered 1, 2, ... in version order instead, and this returns true.
    pub fn finish_restore(&mut self) -> bool {
        let (order, renumbered) = ChangeOrder::from_versions(std::mem::take(&mut self.version));
        *self = order;
        renumbered
    }

    pub fn latest(&self) -> Version {
        self.latest
    }

    /// The version of `record` (0 past the end).
    pub fn version_of(&self, record: usize) -> Version {
        self.version.get(record).copied().unwrap_or(0)
    }

    /// `record` was stored (`record == len` for a new one): it takes the next version and goes
    /// to the end of the list. Returns its version.
    pub fn touch(&mut self, record: usize) -> Version {
        let record32 = record as u32;
        if record == self.version.len() {
            self.version.push(0);
            self.older.push(NONE);
            self.newer.push(NONE);
            for reader in self.readers.iter_mut().flatten() {
                reader.unread += 1;
                reader.live += 1;
            }
        } else {
            let old = self.version[record];
            let before = self.older[record];
            for reader in self.readers.iter_mut().flatten() {
                if reader.after == record32 {
                    reader.after = before;
                }
                if old <= reader.passed {
                    // Passed: owed again.
                    reader.unread += 1;
                    reader.live += 1;
                } else if old <= reader.live_from {
                    // Owed as catch-up until now; owed as a live update from now on.
                    reader.live += 1;
                }
            }
            self.unlink(record32);
        }
        self.latest += 1;
        self.version[record] = self.latest;
        self.append(record32);
        self.latest
    }

    fn unlink(&mut self, record: u32) {
        let (older, newer) = (self.older[record as usize], self.newer[record as usize]);
        match older {
            NONE => self.oldest = newer,
            o => self.newer[o as usize] = newer,
        }
        match newer {
            NONE => self.newest = older,
            n => self.older[n as usize] = older,
        }
    }

    fn append(&mut self, record: u32) {
        self.older[record as usize] = self.newest;
        self.newer[record as usize] = NONE;
        match self.newest {
            NONE => self.oldest = record,
            n => self.newer[n as usize] = record,
        }
        self.newest = record;
    }

    /// Opens reader `id` (replacing one of that id) just past version `since`: it is handed
    /// every record changed after it, each once in its newest version. `since` 0 hands it
    /// everything. Walks back from the newest record over the ones it will hand out, so the
    /// cost is that of what the reader owes (nothing at all for everything).
    pub fn open_reader(&mut self, id: ReaderId, since: Version) {
        let (mut after, mut unread) = (self.newest, 0);
        let oldest_version = match self.oldest {
            NONE => 0,
            oldest => self.version[oldest as usize],
        };
        if since < oldest_version {
            (after, unread) = (NONE, self.version.len());
        }
        while after != NONE && self.version[after as usize] > since {
            unread += 1;
            after = self.older[after as usize];
        }
        if id >= self.readers.len() {
            self.readers.resize(id + 1, None);
        }
        self.readers[id] = Some(Reader {
            after,
            passed: since,
            unread,
            live: 0,
            live_from: self.latest,
        });
    }

    pub fn close_reader(&mut self, id: ReaderId) {
        if let Some(slot) = self.readers.get_mut(id) {
            *slot = None;
        }
    }

    /// The next record for reader `id`, which then counts as handed over.
    pub fn next_for(&mut self, id: ReaderId) -> Option<usize> {
        let reader = self.readers.get_mut(id)?.as_mut()?;
        let next = match reader.after {
            NONE => self.oldest,
            after => self.newer[after as usize],
        };
        if next == NONE {
            return None;
        }
        let version = self.version[next as usize];
        reader.after = next;
        reader.passed = version;
        reader.unread -= 1;
        if version > reader.live_from {
            reader.live -= 1;
        }
        Some(next as usize)
    }

    /// The version reader `id` has passed: it has been handed every record up to it.
    pub fn passed(&self, id: ReaderId) -> Version {
        self.reader(id).map_or(0, |r| r.passed)
    }

    /// Records reader `id` has not been handed yet.
    pub fn unread(&self, id: ReaderId) -> usize {
        self.reader(id).map_or(0, |r| r.unread)
    }

    /// Of those, the ones changed since it opened.
    pub fn live(&self, id: ReaderId) -> usize {
        self.reader(id).map_or(0, |r| r.live)
    }

    /// The version the reader opened at: records up to it were its catch-up.
    pub fn opened_at(&self, id: ReaderId) -> Version {
        self.reader(id).map_or(0, |r| r.live_from)
    }

    fn reader(&self, id: ReaderId) -> Option<&Reader> {
        self.readers.get(id).and_then(Option::as_ref)
    }

    /// Bytes this takes per record (for the memory figures).
    pub const BYTES_PER_RECORD: usize = 16;
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINK: ReaderId = 2;

    fn drain(order: &mut ChangeOrder, id: ReaderId) -> Vec<usize> {
        std::iter::from_fn(|| order.next_for(id)).collect()
    }

    fn order_of(order: &ChangeOrder) -> Vec<usize> {
        let mut records = Vec::new();
        let mut r = order.oldest;
        while r != NONE {
            records.push(r as usize);
            r = order.newer[r as usize];
        }
        records
    }

    /// Records 0..n stored in order, versions 1..=n.
    fn stored(n: usize) -> ChangeOrder {
        let mut order = ChangeOrder::new();
        for r in 0..n {
            order.touch(r);
        }
        order
    }

    #[test]
    fn a_record_that_changes_moves_to_the_end_with_the_next_version() {
        let mut order = stored(3);
        assert_eq!(order_of(&order), [0, 1, 2]);
        assert_eq!(order.touch(0), 4);
        assert_eq!(order_of(&order), [1, 2, 0]);
        assert_eq!(order.touch(2), 5);
        assert_eq!(order_of(&order), [1, 0, 2]);
        assert_eq!(order.touch(2), 6, "the newest changing again stays last");
        assert_eq!(order_of(&order), [1, 0, 2]);
        assert_eq!(order.version_of(1), 2);
        assert_eq!(order.latest(), 6);
    }

    #[test]
    fn a_reader_from_zero_is_handed_everything_once_in_version_order() {
        let mut order = stored(3);
        order.touch(0);
        order.open_reader(LINK, 0);
        assert_eq!(order.unread(LINK), 3);
        assert_eq!(order.live(LINK), 0, "all of it is catch-up");
        assert_eq!(drain(&mut order, LINK), [1, 2, 0]);
        assert_eq!(order.passed(LINK), 4);
        assert_eq!(order.unread(LINK), 0);
    }

    #[test]
    fn a_reader_since_a_version_is_handed_only_what_changed_after_it() {
        let mut order = stored(1000);
        for r in [5, 700, 5] {
            order.touch(r);
        }
        order.open_reader(LINK, 1000);
        assert_eq!(order.unread(LINK), 2);
        assert_eq!(drain(&mut order, LINK), [700, 5]);
        order.open_reader(LINK, 1001);
        assert_eq!(
            drain(&mut order, LINK),
            [700, 5],
            "1001 was 5's, changed since"
        );
        order.open_reader(LINK, order.latest());
        assert_eq!(drain(&mut order, LINK), Vec::<usize>::new());
    }

    #[test]
    fn a_record_changed_before_the_reader_reaches_it_is_handed_once_at_its_newest() {
        let mut order = stored(4);
        order.open_reader(LINK, 0);
        assert_eq!(order.next_for(LINK), Some(0));
        for _ in 0..10 {
            order.touch(3); // not reached yet
        }
        assert_eq!(order.unread(LINK), 3);
        assert_eq!(
            order.live(LINK),
            1,
            "its newest version is a live update now"
        );
        assert_eq!(drain(&mut order, LINK), [1, 2, 3]);
        assert_eq!(order.passed(LINK), 14);
        assert_eq!(order.live(LINK), 0);
    }

    #[test]
    fn a_record_changed_after_the_reader_passed_it_is_handed_again() {
        let mut order = stored(3);
        order.open_reader(LINK, 0);
        assert_eq!(drain(&mut order, LINK), [0, 1, 2]);
        order.touch(1);
        order.touch(3); // a new record
        assert_eq!((order.unread(LINK), order.live(LINK)), (2, 2));
        assert_eq!(drain(&mut order, LINK), [1, 3]);
    }

    #[test]
    fn the_record_a_reader_stands_on_may_change_under_it() {
        let mut order = stored(4);
        order.open_reader(LINK, 0);
        assert_eq!(order.next_for(LINK), Some(0));
        assert_eq!(order.next_for(LINK), Some(1));
        order.touch(1); // the reader's position moves away
        order.touch(0);
        assert_eq!(drain(&mut order, LINK), [2, 3, 1, 0]);
        assert_eq!(order.unread(LINK), 0);
    }

    #[test]
    fn readers_are_independent() {
        let mut order = stored(3);
        order.open_reader(0, 0);
        order.open_reader(1, 3);
        order.touch(0);
        assert_eq!(drain(&mut order, 1), [0]);
        assert_eq!(drain(&mut order, 0), [1, 2, 0]);
        order.close_reader(0);
        order.touch(2);
        assert_eq!(order.next_for(0), None, "a closed reader is handed nothing");
        assert_eq!(drain(&mut order, 1), [2]);
    }

    #[test]
    fn an_order_rebuilt_from_versions_continues_where_it_left_off() {
        let (mut order, renumbered) = ChangeOrder::from_versions(vec![7, 3, 9, 4]);
        assert!(!renumbered);
        assert_eq!(order_of(&order), [1, 3, 0, 2]);
        assert_eq!(order.latest(), 9);
        order.open_reader(LINK, 4);
        assert_eq!(drain(&mut order, LINK), [0, 2]);
        assert_eq!(order.touch(1), 10);
        assert_eq!(drain(&mut order, LINK), [1]);
        let (order, renumbered) = ChangeOrder::from_versions(vec![7, 3, 7]);
        assert!(renumbered, "two records of version 7");
        assert_eq!(order_of(&order), [1, 0, 2]);
        assert_eq!(order.latest(), 3);
    }

    #[test]
    fn counts_match_a_walk_under_random_changes() {
        // A small deterministic generator: no dependency for one test.
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut order = stored(50);
        order.open_reader(LINK, 20);
        let mut records = 50;
        for _ in 0..2000 {
            match next(4) {
                0 => {
                    order.touch(records);
                    records += 1;
                }
                1 => {
                    order.next_for(LINK);
                }
                _ => {
                    order.touch(next(records as u64) as usize);
                }
            }
            let unread: Vec<usize> = {
                let passed = order.passed(LINK);
                order_of(&order)
                    .into_iter()
                    .filter(|&r| order.version_of(r) > passed)
                    .collect()
            };
            assert_eq!(order.unread(LINK), unread.len());
            let live = unread
                .iter()
                .filter(|&&r| order.version_of(r) > order.opened_at(LINK))
                .count();
            assert_eq!(order.live(LINK), live);
        }
    }
}
