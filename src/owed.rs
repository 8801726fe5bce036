//! What one outbound link still owes its neighbour: a set of client records, each at most once,
//! sent as the table holds them *when the socket can take them*. A newer update of a record that
//! is still owed adds nothing: the link sends the newest version when it gets there. So a link's
//! memory follows the number of clients, never the update rate, and a slow neighbour gets the
//! latest state instead of a backlog of every update.
//!
//! Two parts, both in table-index terms (indices are stable, see `store`):
//! - a cursor: every record at or past `next` has never been sent on this link. New clients
//!   land past the cursor, so flooding a new client costs the link nothing until it is sent; a
//!   resync on link-up is the cursor starting at 0.
//! - a dirty queue: records behind the cursor updated since they were sent, oldest first, with
//!   a bit per record so each is queued once.
//!
//! A record whose newest version came from this link's neighbour is not sent back to it (SPEC
//! section 3), except by a resync, which sends everything the table held at link-up (a
//! neighbour that restarted has lost what it once sent us).
//!
//! Pure: no I/O, no clock.

use std::collections::VecDeque;

use crate::table::{ClientTable, LinkId, RecordIndex, Source};

#[derive(Debug)]
pub struct Owed {
    /// The neighbour this link goes to: records from it are not sent back.
    link: LinkId,
    /// Records at or past this index have not been sent on this link.
    next: RecordIndex,
    /// While a resync runs: the table's length at link-up. Records below it are sent whatever
    /// their source. `None` once the cursor has passed it.
    resync_end: Option<RecordIndex>,
    /// Records behind the cursor that changed since they were sent, oldest first.
    dirty: VecDeque<u32>,
    /// One bit per record: whether it is in `dirty`.
    queued: Vec<u64>,
}

/// What [`Owed::next_record`] hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum NextRecord {
    /// Send this record now.
    Send(RecordIndex),
    /// Nothing is owed.
    Nothing,
}

impl Owed {
    /// A link that just came up: it owes the whole table (the resync) and everything after.
    pub fn resync(link: LinkId, table: &ClientTable) -> Owed {
        Owed {
            link,
            next: 0,
            resync_end: Some(table.len()),
            dirty: VecDeque::new(),
            queued: Vec::new(),
        }
    }

    /// `record` was stored (from a client, or from a neighbour). A record past the cursor is
    /// owed already; one behind it is queued unless it is queued, or came from this neighbour.
    pub fn mark(&mut self, record: RecordIndex, source: Source) {
        if record >= self.next || source == Source::Neighbour(self.link) {
            return;
        }
        let (word, bit) = (record / 64, 1u64 << (record % 64));
        if word >= self.queued.len() {
            self.queued.resize(word + 1, 0);
        }
        if self.queued[word] & bit != 0 {
            return;
        }
        self.queued[word] |= bit;
        // Record indices fit in u32: the table indexes its records with u32 too.
        self.dirty.push_back(record as u32);
    }

    /// The next record to send: queued updates first (they are the oldest news), then the
    /// cursor. Records whose newest version came from this neighbour are skipped.
    pub fn next_record(&mut self, table: &ClientTable) -> NextRecord {
        while let Some(record) = self.dirty.pop_front() {
            let record = record as usize;
            self.queued[record / 64] &= !(1u64 << (record % 64));
            if table.source_at(record) != Source::Neighbour(self.link) {
                return NextRecord::Send(record);
            }
        }
        while self.next < table.len() {
            let record = self.next;
            self.next += 1;
            let in_resync = self.resync_end.is_some_and(|end| record < end);
            if in_resync || table.source_at(record) != Source::Neighbour(self.link) {
                return NextRecord::Send(record);
            }
        }
        NextRecord::Nothing
    }

    /// Once, when the cursor has passed the end of the resync: how many records it sent
    /// (all of them: the resync skips none).
    pub fn take_finished_resync(&mut self) -> Option<usize> {
        match self.resync_end {
            Some(end) if self.next >= end => {
                self.resync_end = None;
                Some(end)
            }
            _ => None,
        }
    }

    /// Whether anything may be owed (records from the neighbour that [`next_record`] would
    /// skip count until it skips them).
    ///
    /// [`next_record`]: Owed::next_record
    pub fn is_empty(&self, table: &ClientTable) -> bool {
        self.dirty.is_empty() && self.next >= table.len()
    }

    /// Everything still owed: queued updates and every record past the cursor, the rest of a
    /// resync included (records from the neighbour are counted until they are skipped).
    pub fn count(&self, table: &ClientTable) -> usize {
        self.dirty.len() + table.len().saturating_sub(self.next)
    }

    /// Live updates owed: queued ones and new clients past the cursor, not counting what a
    /// running resync still has to send (a resync is as large as the table, and stopping
    /// clients for it would stall the server every time a neighbour comes back).
    pub fn live_count(&self, table: &ClientTable) -> usize {
        let from = self.next.max(self.resync_end.unwrap_or(0));
        self.dirty.len() + table.len().saturating_sub(from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::store_for_test as store;

    const ME: LinkId = 1;

    /// Updates `client` in the table and tells the owed set, as a flood does.
    fn update(owed: &mut Owed, table: &mut ClientTable, client: &str, time: u32, source: Source) {
        let record = store(table, client, time, source);
        owed.mark(record, source);
    }

    fn drain(owed: &mut Owed, table: &ClientTable) -> Vec<String> {
        let mut sent = Vec::new();
        while let NextRecord::Send(record) = owed.next_record(table) {
            sent.push(String::from_utf8(table.line_at(record).unwrap().to_vec()).unwrap());
        }
        sent
    }

    fn clients(lines: &[String]) -> Vec<&str> {
        lines.iter().map(|l| l.split(' ').nth(3).unwrap()).collect()
    }

    /// A link that came up on an empty table and has sent what it owed.
    fn caught_up(table: &ClientTable) -> Owed {
        let mut owed = Owed::resync(ME, table);
        drain(&mut owed, table);
        owed.take_finished_resync();
        owed
    }

    #[test]
    fn a_resync_sends_the_whole_table_in_index_order_whatever_its_source() {
        let mut table = ClientTable::new();
        store(&mut table, "a", 1, Source::Client);
        store(&mut table, "b", 1, Source::Neighbour(ME));
        store(&mut table, "c", 1, Source::Neighbour(0));
        let mut owed = Owed::resync(ME, &table);
        assert_eq!(owed.take_finished_resync(), None);
        assert_eq!(clients(&drain(&mut owed, &table)), ["a", "b", "c"]);
        assert_eq!(owed.take_finished_resync(), Some(3));
        assert_eq!(owed.take_finished_resync(), None);
        assert!(owed.is_empty(&table));
    }

    #[test]
    fn an_empty_table_finishes_its_resync_at_once() {
        let table = ClientTable::new();
        let mut owed = Owed::resync(ME, &table);
        assert_eq!(owed.take_finished_resync(), Some(0));
    }

    #[test]
    fn many_updates_of_one_client_are_sent_once_as_the_newest() {
        let mut table = ClientTable::new();
        store(&mut table, "kiwi", 1, Source::Client);
        let mut owed = caught_up(&table);
        for time in 2..=1000 {
            update(&mut owed, &mut table, "kiwi", time, Source::Client);
        }
        assert_eq!(owed.live_count(&table), 1);
        assert_eq!(
            drain(&mut owed, &table),
            ["AT S +0.000000000 kiwi +1+1 1000"]
        );
        assert!(owed.is_empty(&table));
    }

    #[test]
    fn new_clients_are_owed_by_the_cursor_without_being_queued() {
        let mut table = ClientTable::new();
        let mut owed = caught_up(&table);
        for n in 0..100 {
            update(&mut owed, &mut table, &format!("c{n}"), 1, Source::Client);
        }
        assert!(owed.dirty.is_empty());
        assert_eq!(owed.live_count(&table), 100);
        let sent = drain(&mut owed, &table);
        assert_eq!(sent.len(), 100);
        assert_eq!(clients(&sent)[..3], ["c0", "c1", "c2"]);
    }

    #[test]
    fn records_from_the_neighbour_are_not_sent_back() {
        let mut table = ClientTable::new();
        store(&mut table, "old", 1, Source::Client);
        let mut owed = caught_up(&table);
        // A new client from the neighbour, and an update of a known one from it.
        update(&mut owed, &mut table, "theirs", 1, Source::Neighbour(ME));
        update(&mut owed, &mut table, "old", 2, Source::Neighbour(ME));
        // From another neighbour: passed on.
        update(&mut owed, &mut table, "other", 1, Source::Neighbour(0));
        assert_eq!(clients(&drain(&mut owed, &table)), ["other"]);
    }

    #[test]
    fn a_queued_record_whose_newest_version_came_from_the_neighbour_is_skipped() {
        let mut table = ClientTable::new();
        store(&mut table, "c", 1, Source::Client);
        let mut owed = caught_up(&table);
        update(&mut owed, &mut table, "c", 2, Source::Client);
        update(&mut owed, &mut table, "c", 3, Source::Neighbour(ME));
        assert!(drain(&mut owed, &table).is_empty());
        // Dequeued, so a later update queues it again.
        update(&mut owed, &mut table, "c", 4, Source::Client);
        assert_eq!(drain(&mut owed, &table), ["AT S +0.000000000 c +1+1 4"]);
    }

    #[test]
    fn updates_during_a_resync_are_sent_once_at_their_newest() {
        let mut table = ClientTable::new();
        for n in 0..4 {
            store(&mut table, &format!("c{n}"), 1, Source::Client);
        }
        let mut owed = Owed::resync(ME, &table);
        assert_eq!(owed.next_record(&table), NextRecord::Send(0));
        assert_eq!(owed.next_record(&table), NextRecord::Send(1));
        // c0 was sent: queued again. c3 is still ahead of the cursor: sent once, newest.
        update(&mut owed, &mut table, "c0", 2, Source::Client);
        update(&mut owed, &mut table, "c3", 2, Source::Client);
        assert_eq!(owed.live_count(&table), 1);
        let sent = drain(&mut owed, &table);
        assert_eq!(
            sent,
            [
                "AT S +0.000000000 c0 +1+1 2",
                "AT S +0.000000000 c2 +1+1 1",
                "AT S +0.000000000 c3 +1+1 2"
            ]
        );
    }

    #[test]
    fn memory_follows_the_clients_not_the_updates() {
        let mut table = ClientTable::new();
        for n in 0..1000 {
            store(&mut table, &format!("c{n}"), 1, Source::Client);
        }
        let mut owed = caught_up(&table);
        for time in 2..50 {
            for n in 0..1000 {
                update(
                    &mut owed,
                    &mut table,
                    &format!("c{n}"),
                    time,
                    Source::Client,
                );
            }
        }
        assert_eq!(owed.dirty.len(), 1000);
        assert_eq!(owed.queued.len(), 1000_usize.div_ceil(64));
        let sent = drain(&mut owed, &table);
        assert_eq!(sent.len(), 1000);
        assert!(sent.iter().all(|l| l.ends_with(" 49")));
    }
}
