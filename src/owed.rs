//! What one outbound link still owes its neighbour: every record changed past the link's
//! reader in the table's order of changes (see `changes`), each at most once and as the table
//! holds it *when the socket can take it*. A newer update of a record still owed adds nothing:
//! the link sends the newest version when it gets there. So a link's memory is its position,
//! never the update rate, and a slow neighbour gets the latest state instead of a backlog of
//! every update.
//!
//! A link starts in one of two ways (chosen at link-up from what the neighbour says it holds):
//! - **catch-up** from a version the neighbour holds: it owes what changed after it, and skips
//!   records whose newest version came from the neighbour itself (SPEC section 3: the
//!   neighbour stored them before it sent them, so it has them);
//! - **full copy** when the neighbour cannot place our history (a new or wiped store, a
//!   server never seen): the whole table, records from the neighbour included (it may have
//!   lost what it once sent us), then live updates.
//!
//! Besides, a **repair** sends every record of some digest buckets, whatever their source:
//! what the periodic check found the neighbour lacks.
//!
//! Pure: no I/O, no clock.

use crate::changes::Version;
use crate::digest::BUCKETS;
use crate::table::{ClientTable, LinkId, RecordIndex, Source};

/// How a link starts, from what the neighbour holds of our history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// It holds everything up to this version.
    Since(Version),
    /// It cannot place our history: send everything.
    Full,
}

#[derive(Debug)]
pub struct Owed {
    /// The neighbour this link goes to (and its reader in the table).
    link: LinkId,
    /// Records of versions up to this are sent whatever their source (a full copy); 0 when
    /// catching up.
    full_until: Version,
    /// The catch-up or full copy the link started with, until it is done.
    catch_up: Option<CatchUp>,
    repair: Option<Repair>,
}

#[derive(Debug)]
struct CatchUp {
    /// The latest version when the link came up: past it, updates are live.
    until: Version,
    sent: usize,
    full: bool,
}

/// Digest buckets being sent again: a walk of the table by index.
#[derive(Debug)]
struct Repair {
    /// One bit per bucket.
    buckets: [u64; BUCKETS / 64],
    next: RecordIndex,
}

impl Repair {
    fn has(&self, bucket: usize) -> bool {
        self.buckets[bucket / 64] & (1 << (bucket % 64)) != 0
    }
}

/// What a finished catch-up came to (reported once, for the log).
#[derive(Debug, PartialEq, Eq)]
pub struct CaughtUp {
    pub records: usize,
    pub full: bool,
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
    /// A link that just came up, starting as `start` says: opens its reader in `table`.
    pub fn open(link: LinkId, start: Start, table: &mut ClientTable) -> Owed {
        let until = table.latest_version();
        let (since, full_until) = match start {
            Start::Since(version) => (version, 0),
            Start::Full => (0, until),
        };
        table.open_reader(link, since);
        Owed {
            link,
            full_until,
            catch_up: Some(CatchUp {
                until,
                sent: 0,
                full: start == Start::Full,
            }),
            repair: None,
        }
    }

    /// The next record to send: changed records in version order (records whose newest
    /// version came from this neighbour skipped, but in a full copy), then repairs.
    pub fn next_record(&mut self, table: &mut ClientTable) -> NextRecord {
        while let Some(record) = table.next_for(self.link) {
            let version = table.version_at(record);
            if version > self.full_until && table.source_at(record) == Source::Neighbour(self.link)
            {
                continue;
            }
            if let Some(catch_up) = self.catch_up.as_mut().filter(|c| version <= c.until) {
                catch_up.sent += 1;
            }
            return NextRecord::Send(record);
        }
        if let Some(repair) = &mut self.repair {
            while repair.next < table.len() {
                let record = repair.next;
                repair.next += 1;
                if table.bucket_at(record).is_some_and(|b| repair.has(b)) {
                    return NextRecord::Send(record);
                }
            }
            self.repair = None;
        }
        NextRecord::Nothing
    }

    /// Once, when the link has sent what it started with: how many records that was.
    pub fn take_caught_up(&mut self, table: &ClientTable) -> Option<CaughtUp> {
        self.catch_up.as_ref()?;
        // What is unread but not live is the rest of the catch-up.
        let (unread, live) = table.unread(self.link);
        if unread > live {
            return None;
        }
        self.catch_up.take().map(|c| CaughtUp {
            records: c.sent,
            full: c.full,
        })
    }

    /// Sends every record of these buckets again, whatever its source (a repair).
    pub fn repair(&mut self, buckets: &[usize]) {
        let repair = self.repair.get_or_insert(Repair {
            buckets: [0; BUCKETS / 64],
            next: 0,
        });
        for &bucket in buckets {
            repair.buckets[bucket / 64] |= 1 << (bucket % 64);
        }
        // Walk the whole table again: records before the walk's position may be in a new bucket.
        repair.next = 0;
    }

    /// The version this link has passed: the neighbour holds everything up to it once the
    /// bytes sent so far arrive.
    pub fn passed(&self, table: &ClientTable) -> Version {
        table.passed(self.link)
    }

    /// Whether anything may be owed (records from the neighbour that [`next_record`] would
    /// skip count until it skips them).
    ///
    /// [`next_record`]: Owed::next_record
    pub fn is_empty(&self, table: &ClientTable) -> bool {
        table.unread(self.link).0 == 0 && self.repair.is_none()
    }

    /// Everything still owed: the rest of the catch-up and every live update (a repair counts
    /// as one until it is done).
    pub fn count(&self, table: &ClientTable) -> usize {
        table.unread(self.link).0 + usize::from(self.repair.is_some())
    }

    /// Live updates owed: records changed since the link came up, not counting what the
    /// catch-up still has to send (a full copy is as large as the table, and stopping clients
    /// for it would stall the server every time a neighbour comes back).
    pub fn live_count(&self, table: &ClientTable) -> usize {
        table.unread(self.link).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::store_for_test as store;

    const ME: LinkId = 1;

    fn drain(owed: &mut Owed, table: &mut ClientTable) -> Vec<String> {
        let mut sent = Vec::new();
        while let NextRecord::Send(record) = owed.next_record(table) {
            sent.push(String::from_utf8(table.line_at(record).unwrap().to_vec()).unwrap());
        }
        sent
    }

    fn clients(lines: &[String]) -> Vec<&str> {
        lines.iter().map(|l| l.split(' ').nth(3).unwrap()).collect()
    }

    /// A link that came up on `table` as a full copy and has sent it.
    fn caught_up(table: &mut ClientTable) -> Owed {
        let mut owed = Owed::open(ME, Start::Full, table);
        drain(&mut owed, table);
        owed.take_caught_up(table);
        owed
    }

    #[test]
    fn a_full_copy_sends_the_whole_table_whatever_its_source() {
        let mut table = ClientTable::new();
        store(&mut table, "a", 1, Source::Client);
        store(&mut table, "b", 1, Source::Neighbour(ME));
        store(&mut table, "c", 1, Source::Neighbour(0));
        let mut owed = Owed::open(ME, Start::Full, &mut table);
        assert_eq!(owed.take_caught_up(&table), None);
        assert_eq!(clients(&drain(&mut owed, &mut table)), ["a", "b", "c"]);
        assert_eq!(
            owed.take_caught_up(&table),
            Some(CaughtUp {
                records: 3,
                full: true
            })
        );
        assert_eq!(owed.take_caught_up(&table), None);
        assert!(owed.is_empty(&table));
    }

    #[test]
    fn a_catch_up_sends_what_changed_after_the_neighbours_version_only() {
        let mut table = ClientTable::new();
        for n in 0..100 {
            store(&mut table, &format!("c{n}"), 1, Source::Client);
        }
        let held = table.latest_version();
        store(&mut table, "c7", 2, Source::Client);
        store(&mut table, "new", 1, Source::Neighbour(0));
        store(&mut table, "theirs", 1, Source::Neighbour(ME));
        let mut owed = Owed::open(ME, Start::Since(held), &mut table);
        assert_eq!(owed.count(&table), 3);
        assert_eq!(
            owed.live_count(&table),
            0,
            "a catch-up holds no client back"
        );
        assert_eq!(
            clients(&drain(&mut owed, &mut table)),
            ["c7", "new"],
            "not what came from the neighbour itself"
        );
        assert_eq!(
            owed.take_caught_up(&table),
            Some(CaughtUp {
                records: 2,
                full: false
            })
        );
        assert_eq!(owed.passed(&table), table.latest_version());
    }

    #[test]
    fn an_empty_table_finishes_its_copy_at_once() {
        let mut table = ClientTable::new();
        let mut owed = Owed::open(ME, Start::Full, &mut table);
        assert_eq!(
            owed.take_caught_up(&table),
            Some(CaughtUp {
                records: 0,
                full: true
            })
        );
    }

    #[test]
    fn many_updates_of_one_client_are_sent_once_as_the_newest() {
        let mut table = ClientTable::new();
        store(&mut table, "kiwi", 1, Source::Client);
        let mut owed = caught_up(&mut table);
        for time in 2..=1000 {
            store(&mut table, "kiwi", time, Source::Client);
        }
        assert_eq!(owed.live_count(&table), 1);
        assert_eq!(
            drain(&mut owed, &mut table),
            ["AT S +0.000000000 kiwi +1+1 1000"]
        );
        assert!(owed.is_empty(&table));
    }

    #[test]
    fn records_from_the_neighbour_are_not_sent_back() {
        let mut table = ClientTable::new();
        store(&mut table, "old", 1, Source::Client);
        let mut owed = caught_up(&mut table);
        store(&mut table, "theirs", 1, Source::Neighbour(ME));
        store(&mut table, "old", 2, Source::Neighbour(ME));
        store(&mut table, "other", 1, Source::Neighbour(0));
        assert_eq!(clients(&drain(&mut owed, &mut table)), ["other"]);
        // A later update from elsewhere is sent.
        store(&mut table, "old", 3, Source::Client);
        assert_eq!(
            drain(&mut owed, &mut table),
            ["AT S +0.000000000 old +1+1 3"]
        );
    }

    #[test]
    fn updates_during_a_copy_are_sent_once_at_their_newest() {
        let mut table = ClientTable::new();
        for n in 0..4 {
            store(&mut table, &format!("c{n}"), 1, Source::Client);
        }
        let mut owed = Owed::open(ME, Start::Full, &mut table);
        assert_eq!(owed.next_record(&mut table), NextRecord::Send(0));
        assert_eq!(owed.next_record(&mut table), NextRecord::Send(1));
        // c0 was sent: owed again. c3 is still ahead: sent once, newest.
        store(&mut table, "c0", 2, Source::Client);
        store(&mut table, "c3", 2, Source::Client);
        assert_eq!(owed.live_count(&table), 2);
        assert_eq!(
            drain(&mut owed, &mut table),
            [
                "AT S +0.000000000 c2 +1+1 1",
                "AT S +0.000000000 c0 +1+1 2",
                "AT S +0.000000000 c3 +1+1 2"
            ]
        );
    }

    #[test]
    fn a_repair_sends_its_buckets_whatever_their_source() {
        let mut table = ClientTable::new();
        for n in 0..300 {
            store(&mut table, &format!("c{n}"), 1, Source::Neighbour(ME));
        }
        let mut owed = caught_up(&mut table);
        let bucket = table.bucket_at(5).unwrap();
        owed.repair(&[bucket]);
        assert!(!owed.is_empty(&table));
        let sent = drain(&mut owed, &mut table);
        let expected = (0..300)
            .filter(|&i| table.bucket_at(i) == Some(bucket))
            .count();
        assert_eq!(sent.len(), expected);
        assert!(sent.contains(&"AT S +0.000000000 c5 +1+1 1".to_string()));
        assert!(owed.is_empty(&table));
    }
}
