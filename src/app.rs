//! What the server does with a command, given the client table and the time: the reply, the
//! update to flood, or the lookup to make (SPEC sections 2 and 3).
//!
//! Pure: no sockets, no clock (the loop passes `now` in), no threads. The event loop carries
//! out what these functions decide.

use crate::places::PlacesQuery;
use crate::protocol::{self, AtLine, ClientTime, Location, Parsed, Request};
use crate::store::{Applied, ClientTable, RecordIndex};

/// What one client line comes to.
#[derive(Debug, PartialEq)]
pub enum ClientOutcome {
    /// A blank line: no reply.
    Silent,
    /// A reply that is ready now (an AT line for a stale IAMAT, or `? ` + the line).
    Reply(Vec<u8>),
    /// An IAMAT that updated the table: reply, and flood the record to the neighbours.
    Stored { reply: Vec<u8>, record: RecordIndex },
    /// A WHATSAT for a known client: ask Places; the reply starts with `at_line`.
    Lookup {
        at_line: Box<[u8]>,
        query: PlacesQuery,
    },
}

/// The state one server keeps about the world: its name and what it knows of every client.
pub struct App {
    name: String,
    clients: ClientTable,
}

impl App {
    pub fn new(name: &str) -> App {
        App {
            name: name.to_string(),
            clients: ClientTable::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn clients(&self) -> &ClientTable {
        &self.clients
    }

    /// Handles one line (without terminator) from a client connection, received at `now`.
    pub fn handle_client_line(&mut self, line: &[u8], now: ClientTime) -> ClientOutcome {
        match protocol::parse_request(line) {
            Parsed::Blank => ClientOutcome::Silent,
            Parsed::Invalid => ClientOutcome::Reply(protocol::format_invalid(line)),
            Parsed::Request(Request::IAmAt {
                client,
                location,
                time,
                client_time,
            }) => {
                let diff = now.as_nanos() - client_time.as_nanos();
                let at_line = protocol::format_at_line(&self.name, diff, client, location, time);
                let applied = match AtLine::parse(&at_line) {
                    Some(at) => self.clients.apply(&at_line, &at),
                    // Unreachable for a valid IAMAT; answering is still right.
                    None => Applied::Stale,
                };
                let mut reply = at_line;
                reply.push(b'\n');
                match applied {
                    Applied::Stored(record) => ClientOutcome::Stored { reply, record },
                    Applied::Stale => ClientOutcome::Reply(reply),
                }
            }
            Parsed::Request(Request::WhatsAt {
                client,
                radius,
                bound,
            }) => {
                let known = self.clients.line_of(client).and_then(|line| {
                    let at = AtLine::parse(line)?;
                    Some((line, Location::parse(at.location)?))
                });
                match known {
                    Some((at_line, location)) => ClientOutcome::Lookup {
                        at_line: at_line.into(),
                        query: PlacesQuery {
                            latitude: location.latitude,
                            longitude: location.longitude,
                            radius_metres: radius.metres,
                            bound,
                        },
                    },
                    None => ClientOutcome::Reply(protocol::format_invalid(line)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, nanos: u32) -> ClientTime {
        ClientTime { secs, nanos }
    }

    fn text(outcome: &ClientOutcome) -> String {
        match outcome {
            ClientOutcome::Reply(r) | ClientOutcome::Stored { reply: r, .. } => {
                String::from_utf8_lossy(r).into_owned()
            }
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn iamat_reply_matches_the_spec_example() {
        let mut app = App::new("Campbell");
        let outcome = app.handle_client_line(
            b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503",
            at(1621464828, 223_371_889),
        );
        assert!(matches!(outcome, ClientOutcome::Stored { record: 0, .. }));
        assert_eq!(
            text(&outcome),
            "AT Campbell +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503\n"
        );
    }

    #[test]
    fn a_time_in_the_future_gives_a_negative_difference() {
        let mut app = App::new("Bona");
        let outcome = app.handle_client_line(b"IAMAT c +1+1 100.5", at(100, 0));
        assert_eq!(text(&outcome), "AT Bona -0.500000000 c +1+1 100.5\n");
    }

    #[test]
    fn an_older_iamat_is_answered_but_not_stored() {
        let mut app = App::new("Bona");
        app.handle_client_line(b"IAMAT c +1+1 200", at(300, 0));
        let older = app.handle_client_line(b"IAMAT c +2+2 150", at(300, 0));
        assert_eq!(
            older,
            ClientOutcome::Reply(b"AT Bona +150.000000000 c +2+2 150\n".to_vec())
        );
        assert_eq!(
            app.clients().line_of(b"c").unwrap(),
            b"AT Bona +100.000000000 c +1+1 200"
        );
    }

    #[test]
    fn a_repeated_iamat_changes_nothing() {
        let mut app = App::new("Bona");
        app.handle_client_line(b"IAMAT c +1+1 200", at(300, 0));
        // Same client time, received later: a larger difference, so it loses the tie.
        let again = app.handle_client_line(b"IAMAT c +1+1 200", at(301, 0));
        assert!(matches!(again, ClientOutcome::Reply(_)));
        assert_eq!(
            app.clients().line_of(b"c").unwrap(),
            b"AT Bona +100.000000000 c +1+1 200"
        );
    }

    #[test]
    fn whatsat_for_a_known_client_asks_places() {
        let mut app = App::new("Clark");
        app.handle_client_line(b"IAMAT kiwi +34.068930-118.445127 1", at(2, 0));
        let outcome = app.handle_client_line(b"WHATSAT kiwi 10 5", at(3, 0));
        assert_eq!(
            outcome,
            ClientOutcome::Lookup {
                at_line: b"AT Clark +1.000000000 kiwi +34.068930-118.445127 1"[..].into(),
                query: PlacesQuery {
                    latitude: 34.06893,
                    longitude: -118.445127,
                    radius_metres: 10000.0,
                    bound: 5
                },
            }
        );
    }

    #[test]
    fn whatsat_for_an_unknown_client_is_invalid() {
        let mut app = App::new("Clark");
        let outcome = app.handle_client_line(b"WHATSAT nobody.example 10 5", at(3, 0));
        assert_eq!(text(&outcome), "? WHATSAT nobody.example 10 5\n");
    }

    #[test]
    fn an_at_line_from_a_client_is_invalid() {
        let mut app = App::new("Clark");
        let line = b"AT Bona +0.000000000 c +1+1 1";
        assert_eq!(
            text(&app.handle_client_line(line, at(3, 0))),
            "? AT Bona +0.000000000 c +1+1 1\n"
        );
        assert!(app.clients().is_empty());
    }

    #[test]
    fn blank_lines_are_silent() {
        let mut app = App::new("Clark");
        assert_eq!(
            app.handle_client_line(b" \t ", at(3, 0)),
            ClientOutcome::Silent
        );
    }
}
