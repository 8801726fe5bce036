//! The client table: the newest AT line known for every client, and the newest-wins rule of
//! SPEC section 2 that decides whether an update replaces it.
//!
//! Pure. Records live in a `Vec` that only grows (a client is never forgotten), so an index is
//! a stable cursor: a link resyncing a neighbour walks indices while updates keep arriving.

use std::cmp::Ordering;
use std::hash::{BuildHasher, RandomState};

use std::collections::BTreeMap;

use crate::changes::{ChangeOrder, Epoch, ReaderId, Version};
use crate::client_index::ClientIndex;
use crate::digest::{self, Digest};
use crate::protocol::{AtLine, AtRecord, ClientTime};

/// The index of a record; stable for the life of the table.
pub type RecordIndex = usize;

/// An outbound link, by its index in the server's list of neighbours (config order).
pub type LinkId = usize;

/// Where the current version of a record came from. A link never sends a record back to the
/// neighbour it came from (SPEC section 3), so the table remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// An IAMAT this server took.
    Client,
    /// An update that arrived from this neighbour.
    Neighbour(LinkId),
}

impl Source {
    /// Packed into the record: 0 for a client, `link + 1` for a neighbour.
    fn pack(self) -> u16 {
        match self {
            Source::Client => 0,
            Source::Neighbour(link) => u16::try_from(link + 1).unwrap_or(u16::MAX),
        }
    }

    fn unpack(packed: u16) -> Source {
        match packed {
            0 => Source::Client,
            n => Source::Neighbour(usize::from(n) - 1),
        }
    }
}

/// One client's newest location, as the AT line the taking server made.
#[derive(Debug)]
struct Record {
    line: Box<[u8]>,
    /// The client time, kept as its two parts: a nested `ClientTime` would bring its own
    /// padding, and a record would grow from 40 to 48 bytes.
    client_secs: i64,
    client_nanos: u32,
    client_start: u32,
    client_len: u32,
    /// [`Source::pack`]ed; fits in the padding, so a record stays 40 bytes.
    source: u16,
}

impl Record {
    fn client_time(&self) -> ClientTime {
        ClientTime {
            secs: self.client_secs,
            nanos: self.client_nanos,
        }
    }

    fn client(&self) -> &[u8] {
        let start = self.client_start as usize;
        &self.line[start..start + self.client_len as usize]
    }
}

/// What [`ClientTable::apply`] did with an update.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// It is the client's newest record now (and should be flooded).
    Stored(RecordIndex),
    /// What was known is as new or newer; nothing changed.
    Stale,
}

/// How far this server holds a neighbour's history: every record the neighbour sent with a
/// version up to `version` of its `epoch` is in this table (or something newer is). The
/// neighbour says it with `HERD-MARK`; the store keeps it; the next link-up starts after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub epoch: Epoch,
    pub version: Version,
}

#[derive(Default)]
pub struct ClientTable {
    records: Vec<Record>,
    /// Indices into `records`, hashed by client id: the id is stored once, inside the line.
    index: ClientIndex,
    hasher: RandomState,
    /// The bytes of every record's line, summed (what a compacted store holds, less newlines).
    line_bytes: u64,
    /// Every record's version, in the order they last changed; the links read it.
    changes: ChangeOrder,
    /// The name of this table's history of versions.
    epoch: Epoch,
    /// Per neighbour (by name), how far this table holds its history.
    marks: BTreeMap<String, Mark>,
    digest: Digest,
}

impl ClientTable {
    pub fn new() -> ClientTable {
        ClientTable::default()
    }

    /// A table ready for about `clients` clients without growing its index on the way (a
    /// store read at start-up knows roughly how many lines it holds; growing re-hashes every
    /// client each time the index doubles).
    pub fn with_capacity(clients: usize) -> ClientTable {
        let mut table = ClientTable::new();
        table.index = ClientIndex::with_capacity(clients);
        table
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The bytes of the newest line of every client, summed.
    pub fn line_bytes(&self) -> u64 {
        self.line_bytes
    }

    /// The AT line known for `client`.
    pub fn line_of(&self, client: &[u8]) -> Option<&[u8]> {
        self.find(client).map(|i| &*self.records[i].line)
    }

    /// The AT line at `index` (for walking the table in index order).
    pub fn line_at(&self, index: RecordIndex) -> Option<&[u8]> {
        self.records.get(index).map(|r| &*r.line)
    }

    /// Where the record at `index` came from (a client for an index past the end).
    pub fn source_at(&self, index: RecordIndex) -> Source {
        self.records
            .get(index)
            .map_or(Source::Client, |r| Source::unpack(r.source))
    }

    fn find(&self, client: &[u8]) -> Option<RecordIndex> {
        let hash = self.hasher.hash_one(client);
        let records = &self.records;
        self.index
            .find(hash, |&i| records[i as usize].client() == client)
            .map(|&i| i as usize)
    }

    /// Keeps `update`, which came from `source`, if it supersedes what is known of its client;
    /// a record kept takes this server's next version.
    pub fn apply(&mut self, update: &AtRecord, source: Source) -> Applied {
        let applied = self.apply_unversioned(update, source);
        if let Applied::Stored(record) = applied {
            self.changes.touch(record);
        }
        applied
    }

    /// Keeps `update` read back from a store, where it had `version`: the order of changes is
    /// rebuilt once every record is in ([`ClientTable::finish_restore`]).
    pub fn restore(&mut self, update: &AtRecord, version: Version) -> Applied {
        let applied = self.apply_unversioned(update, Source::Client);
        if let Applied::Stored(record) = applied {
            self.changes.restore(record, version);
        }
        applied
    }

    /// After the last [`ClientTable::restore`]: orders the records by version. Versions a
    /// store repeats (two stores concatenated, a hand edit) cannot place a neighbour's
    /// position, so such a history is renumbered under `fresh` (neighbours then send it
    /// everything once); returns whether that happened.
    pub fn finish_restore(&mut self, epoch: Epoch, fresh: Epoch) -> bool {
        let renumbered = self.changes.finish_restore();
        self.epoch = if renumbered { fresh } else { epoch };
        renumbered
    }

    fn apply_unversioned(&mut self, update: &AtRecord, source: Source) -> Applied {
        let client = update.client();
        let hash = self.hasher.hash_one(client);
        let records = &self.records;
        let found = self
            .index
            .find(hash, |&i| records[i as usize].client() == client)
            .map(|&i| i as usize);
        match found {
            Some(i) => {
                let current = &self.records[i];
                // Fast path: the client time alone decides unless the times are equal.
                let newer = match update.client_time.cmp(&current.client_time()) {
                    Ordering::Greater => true,
                    Ordering::Less => false,
                    Ordering::Equal => {
                        match (AtLine::parse(&update.line), AtLine::parse(&current.line)) {
                            (Some(new), Some(known)) => {
                                new.precedence(&update.line, &known, &current.line)
                                    == Ordering::Greater
                            }
                            _ => false,
                        }
                    }
                };
                if !newer {
                    return Applied::Stale;
                }
                self.line_bytes -= current.line.len() as u64;
                self.line_bytes += update.line.len() as u64;
                self.digest
                    .replace(client, Some(&current.line), &update.line);
                self.records[i] = make_record(update, source);
                Applied::Stored(i)
            }
            None => {
                let i = self.records.len();
                self.line_bytes += update.line.len() as u64;
                self.digest.replace(client, None, &update.line);
                self.records.push(make_record(update, source));
                let records = &self.records;
                let hasher = &self.hasher;
                self.index.insert_unique(hash, i as u32, |&j| {
                    hasher.hash_one(records[j as usize].client())
                });
                Applied::Stored(i)
            }
        }
    }
}

/// Versions, readers, marks and the digest: what links need to send what a neighbour lacks.
impl ClientTable {
    /// The name of this table's history (see [`Epoch`]).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn set_epoch(&mut self, epoch: Epoch) {
        self.epoch = epoch;
    }

    /// The highest version given.
    pub fn latest_version(&self) -> Version {
        self.changes.latest()
    }

    pub fn version_at(&self, index: RecordIndex) -> Version {
        self.changes.version_of(index)
    }

    /// Opens the reader of link `id` just past version `since` (0: everything).
    pub fn open_reader(&mut self, id: ReaderId, since: Version) {
        self.changes.open_reader(id, since);
    }

    pub fn close_reader(&mut self, id: ReaderId) {
        self.changes.close_reader(id);
    }

    /// The next record changed for reader `id`, in version order.
    pub fn next_for(&mut self, id: ReaderId) -> Option<RecordIndex> {
        self.changes.next_for(id)
    }

    /// The version reader `id` has passed.
    pub fn passed(&self, id: ReaderId) -> Version {
        self.changes.passed(id)
    }

    /// Records reader `id` has not been handed yet, and of those the ones changed since it
    /// opened (live updates, as against the catch-up it opened with).
    pub fn unread(&self, id: ReaderId) -> (usize, usize) {
        (self.changes.unread(id), self.changes.live(id))
    }

    /// The version at which reader `id` opened.
    pub fn reader_opened_at(&self, id: ReaderId) -> Version {
        self.changes.opened_at(id)
    }

    /// How far this table holds `neighbour`'s history.
    pub fn mark_of(&self, neighbour: &str) -> Option<Mark> {
        self.marks.get(neighbour).copied()
    }

    pub fn set_mark(&mut self, neighbour: &str, mark: Mark) {
        match self.marks.get_mut(neighbour) {
            Some(known) => *known = mark,
            None => {
                self.marks.insert(neighbour.to_string(), mark);
            }
        }
    }

    pub fn marks(&self) -> impl Iterator<Item = (&str, Mark)> {
        self.marks.iter().map(|(name, mark)| (name.as_str(), *mark))
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The digest bucket of the record at `index`.
    pub fn bucket_at(&self, index: RecordIndex) -> Option<usize> {
        self.records
            .get(index)
            .map(|r| digest::bucket_of(r.client()))
    }
}

fn make_record(update: &AtRecord, source: Source) -> Record {
    Record {
        line: update.line.as_slice().into(),
        client_secs: update.client_time.secs,
        client_nanos: update.client_time.nanos,
        client_start: update.client.start as u32,
        client_len: update.client.len() as u32,
        source: source.pack(),
    }
}

/// For the tests of the modules built on the table: stores `AT S +0.000000000 CLIENT +1+1
/// TIME` from `source`; it must be newer than what is known.
#[cfg(test)]
pub fn store_for_test(
    table: &mut ClientTable,
    client: &str,
    time: u32,
    source: Source,
) -> RecordIndex {
    let line = format!("AT S +0.000000000 {client} +1+1 {time}");
    let at = AtLine::parse(line.as_bytes()).unwrap();
    match table.apply(&AtRecord::from_parsed(&at, line.as_bytes()), source) {
        Applied::Stored(record) => record,
        Applied::Stale => panic!("{line}: stale"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(table: &mut ClientTable, line: &str) -> Applied {
        let at = AtLine::parse(line.as_bytes()).unwrap();
        table.apply(&AtRecord::from_parsed(&at, line.as_bytes()), Source::Client)
    }

    fn known(table: &ClientTable, client: &str) -> Option<String> {
        table
            .line_of(client.as_bytes())
            .map(|l| String::from_utf8(l.to_vec()).unwrap())
    }

    #[test]
    fn line_bytes_follow_the_newest_line_of_each_client() {
        let mut table = ClientTable::new();
        let first = "AT A +0.000000000 kiwi +1+1 10";
        apply(&mut table, first);
        assert_eq!(table.line_bytes(), first.len() as u64);
        let newer = "AT A +0.000000000 kiwi +10.5+1 11.25";
        apply(&mut table, newer);
        assert_eq!(table.line_bytes(), newer.len() as u64);
        apply(&mut table, "AT A +0.000000000 kiwi +1+1 9"); // stale: nothing changes
        assert_eq!(table.line_bytes(), newer.len() as u64);
        let other = "AT B +0.000000000 pear +1+1 1";
        apply(&mut table, other);
        assert_eq!(table.line_bytes(), (newer.len() + other.len()) as u64);
    }

    #[test]
    fn first_update_is_stored() {
        let mut t = ClientTable::new();
        let line = "AT Campbell +0.263873386 kiwi +34.068930-118.445127 1621464827.959498503";
        assert_eq!(apply(&mut t, line), Applied::Stored(0));
        assert_eq!(known(&t, "kiwi").as_deref(), Some(line));
        assert_eq!(known(&t, "kiw"), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn newer_replaces_older_is_ignored() {
        let mut t = ClientTable::new();
        apply(&mut t, "AT A +0.000000000 c +1+1 100");
        assert_eq!(
            apply(&mut t, "AT A +0.000000000 c +2+2 101"),
            Applied::Stored(0)
        );
        assert_eq!(
            apply(&mut t, "AT A +0.000000000 c +3+3 100.5"),
            Applied::Stale
        );
        assert_eq!(known(&t, "c").unwrap(), "AT A +0.000000000 c +2+2 101");
    }

    #[test]
    fn a_repeat_changes_nothing() {
        let mut t = ClientTable::new();
        let line = "AT A +1.000000000 c +1+1 100";
        apply(&mut t, line);
        assert_eq!(apply(&mut t, line), Applied::Stale);
    }

    #[test]
    fn equal_times_converge_whatever_the_arrival_order() {
        let contenders = [
            "AT Bona +2.000000000 c +1+1 100",
            "AT Alfa +1.000000000 c +9+9 100",
            "AT Alfa +1.000000000 c +1+1 100",
            "AT Clark +1.000000000 c +1+1 100",
        ];
        let winner = "AT Alfa +1.000000000 c +1+1 100";
        for rotation in 0..contenders.len() {
            let mut t = ClientTable::new();
            for i in 0..contenders.len() {
                apply(&mut t, contenders[(rotation + i) % contenders.len()]);
            }
            assert_eq!(known(&t, "c").unwrap(), winner);
        }
    }

    #[test]
    fn indices_are_stable_while_clients_are_added_and_updated() {
        let mut t = ClientTable::new();
        for n in 0..1000 {
            apply(&mut t, &format!("AT A +0.000000000 client{n} +1+1 1"));
        }
        assert_eq!(
            apply(&mut t, "AT A +0.000000000 client7 +1+1 2"),
            Applied::Stored(7)
        );
        assert_eq!(t.line_at(7).unwrap(), b"AT A +0.000000000 client7 +1+1 2");
        assert_eq!(t.line_at(1000), None);
        for n in 0..1000 {
            assert!(known(&t, &format!("client{n}")).is_some());
        }
    }

    #[test]
    fn client_ids_are_bytes() {
        let mut t = ClientTable::new();
        let line = b"AT A +0.000000000 \xff\xc2\xa0 +1+1 1";
        let at = AtLine::parse(line).unwrap();
        assert_eq!(
            t.apply(&AtRecord::from_parsed(&at, line), Source::Client),
            Applied::Stored(0)
        );
        assert!(t.line_of(b"\xff\xc2\xa0").is_some());
    }

    #[test]
    fn the_table_remembers_where_the_newest_version_came_from() {
        let mut t = ClientTable::new();
        let record = |line: &str| {
            let at = AtLine::parse(line.as_bytes()).unwrap();
            AtRecord::from_parsed(&at, line.as_bytes())
        };
        t.apply(&record("AT A +0.000000000 c +1+1 1"), Source::Client);
        assert_eq!(t.source_at(0), Source::Client);
        t.apply(&record("AT B +0.000000000 c +1+1 2"), Source::Neighbour(2));
        assert_eq!(t.source_at(0), Source::Neighbour(2));
        // A stale update changes nothing, its source included.
        t.apply(&record("AT C +0.000000000 c +1+1 1"), Source::Neighbour(0));
        assert_eq!(t.source_at(0), Source::Neighbour(2));
        assert_eq!(std::mem::size_of::<Record>(), 40);
    }
}
