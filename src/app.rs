//! What the server does with a command, given the client table and the time: the reply, the
//! update to flood, or the lookup to make (SPEC sections 2 and 3).
//!
//! Pure: no sockets, no clock (the loop passes `now` in), no threads. The event loop carries
//! out what these functions decide.

use crate::peer_wire::{self, Challenge, Greeting, HelloCheck, PeerAuth};
use crate::places::PlacesQuery;
use crate::protocol::{self, AtLine, AtRecord, ClientTime, Location, Parsed, Request};
use crate::table::{Applied, ClientTable, LinkId, RecordIndex, Source};

/// What one client line comes to.
#[derive(Debug, PartialEq)]
pub enum ClientOutcome {
    /// A blank line: no reply.
    Silent,
    /// A reply that is ready now (an AT line for a stale IAMAT, or `? ` + the line), without
    /// its terminator.
    Reply(Vec<u8>),
    /// An IAMAT that updated the table: reply, and flood the record to the neighbours.
    Stored { reply: Vec<u8>, record: RecordIndex },
    /// A WHATSAT for a known client: ask Places; the reply starts with `at_line`.
    Lookup {
        at_line: Box<[u8]>,
        query: PlacesQuery,
    },
    /// A hello from a neighbour, with a secret set: send `reply` (the challenge) and hold
    /// `challenge` on the connection for its proof. `link` is our link to the neighbour.
    Challenged {
        link: LinkId,
        challenge: Challenge,
        reply: Vec<u8>,
    },
    /// A neighbour proved itself (or said a valid hello, without a secret): from now on the
    /// connection carries its updates. `link` is our outbound link to the same neighbour.
    PeerAccepted {
        link: LinkId,
        name: String,
        reply: Vec<u8>,
    },
}

/// What one line from a neighbour comes to.
#[derive(Debug, PartialEq)]
pub enum PeerOutcome {
    /// Newer than what was known: flood it to every other neighbour.
    Stored(RecordIndex),
    /// Known already (or older): stop here, which is what ends every flood.
    Stale,
    /// A ping: answer with this line.
    Ping(&'static [u8]),
    /// Not an AT line: the neighbour is broken or not a neighbour; drop the connection.
    Invalid,
    /// A valid AT line whose client time is further ahead of our clock than `limit
    /// future-seconds`: not stored (it would shadow every real update of that client), logged,
    /// and the link stays up (the neighbour's server is not broken, a client's clock is).
    FromTheFuture,
}

/// Client commands by what they came to (`herd_commands_total{kind}`): an IAMAT or a WHATSAT
/// answered with an AT line, or a line answered with `? ` (not a command, a time too far
/// ahead, a WHATSAT for an unknown client, a refused hello, a line over the limit). Blank
/// lines and accepted hellos are none of these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommandCounts {
    pub iamat: u64,
    pub whatsat: u64,
    pub invalid: u64,
}

/// The state one server keeps about the world: its name, who its neighbours are, and what it
/// knows of every client.
pub struct App {
    name: String,
    /// In config order, then in the order reloads added them: a neighbour's position is its
    /// [`LinkId`]. A neighbour a reload removed stays as `None`, so ids never shift.
    neighbours: Vec<Option<String>>,
    /// Every server of the herd: an update names the server that took it, and one naming a
    /// server the config does not know is forged or from another herd.
    servers: Vec<String>,
    /// The herd's secret and the nonces of handshakes; `None` with `peer secret none`.
    peer_auth: Option<PeerAuth>,
    /// How far past our clock a client time may be (`limit future-seconds`).
    max_future_nanos: i128,
    clients: ClientTable,
    commands: CommandCounts,
}

impl App {
    pub fn new(
        name: &str,
        neighbours: Vec<String>,
        servers: Vec<String>,
        peer_auth: Option<PeerAuth>,
        max_future_secs: u64,
    ) -> App {
        App {
            name: name.to_string(),
            neighbours: neighbours.into_iter().map(Some).collect(),
            servers,
            peer_auth,
            max_future_nanos: i128::from(max_future_secs) * 1_000_000_000,
            clients: ClientTable::new(),
            commands: CommandCounts::default(),
        }
    }

    pub fn commands(&self) -> CommandCounts {
        self.commands
    }

    /// A client line over `limit line-bytes`, answered `? ` without reaching the parser.
    pub fn count_too_long(&mut self) {
        self.commands.invalid += 1;
    }

    /// SPEC section 2 leaves clocks to the clients; one far ahead would win every later
    /// comparison of its client, forever, so such a time is refused.
    fn is_too_far_ahead(&self, client_time: ClientTime, now: ClientTime) -> bool {
        client_time.as_nanos() - now.as_nanos() > self.max_future_nanos
    }

    /// The handshake of a new connection of this server's link to `to`.
    pub fn greeting_to(&mut self, to: &str) -> Greeting {
        Greeting::new(&self.name, to, self.peer_auth.as_mut())
    }

    /// Handles one line from the neighbour at `from`: an AT line as the taking server made it.
    pub fn handle_peer_line(&mut self, line: &[u8], from: LinkId, now: ClientTime) -> PeerOutcome {
        if peer_wire::is_ping(line) {
            return PeerOutcome::Ping(peer_wire::PONG_LINE);
        }
        let Some(at) = AtLine::parse(line) else {
            return PeerOutcome::Invalid;
        };
        if !self.servers.iter().any(|s| s.as_bytes() == at.server) {
            return PeerOutcome::Invalid;
        }
        if self.is_too_far_ahead(at.client_time, now) {
            return PeerOutcome::FromTheFuture;
        }
        // Stored as the canonical line, so every server holds byte-identical records.
        let record = AtRecord::from_parsed(&at, line);
        match self.clients.apply(&record, Source::Neighbour(from)) {
            Applied::Stored(record) => PeerOutcome::Stored(record),
            Applied::Stale => PeerOutcome::Stale,
        }
    }

    /// A reload linked a new neighbour: its id is the next one.
    pub fn add_neighbour(&mut self, name: &str) -> LinkId {
        self.neighbours.push(Some(name.to_string()));
        self.neighbours.len() - 1
    }

    /// A reload unlinked this neighbour: its hellos are refused from now on.
    pub fn remove_neighbour(&mut self, link: LinkId) {
        if let Some(slot) = self.neighbours.get_mut(link) {
            *slot = None;
        }
    }

    /// A reload changed the herd's servers (whose updates are taken) or the future limit.
    pub fn set_herd(&mut self, servers: Vec<String>, max_future_secs: u64) {
        self.servers = servers;
        self.max_future_nanos = i128::from(max_future_secs) * 1_000_000_000;
    }

    /// Starts from the records a store held (before any connection exists).
    pub fn restore(&mut self, clients: ClientTable) {
        self.clients = clients;
    }

    pub fn clients(&self) -> &ClientTable {
        &self.clients
    }

    /// Handles one line (without terminator) from a client connection, received at `now`.
    pub fn handle_client_line(&mut self, line: &[u8], now: ClientTime) -> ClientOutcome {
        let outcome = self.decide_client_line(line, now);
        let counts = &mut self.commands;
        match &outcome {
            ClientOutcome::Silent
            | ClientOutcome::Challenged { .. }
            | ClientOutcome::PeerAccepted { .. } => {}
            ClientOutcome::Stored { .. } => counts.iamat += 1,
            ClientOutcome::Lookup { .. } => counts.whatsat += 1,
            ClientOutcome::Reply(reply) if reply.starts_with(b"? ") => counts.invalid += 1,
            // The AT line of a stale IAMAT (the only other ready reply).
            ClientOutcome::Reply(_) => counts.iamat += 1,
        }
        outcome
    }

    fn decide_client_line(&mut self, line: &[u8], now: ClientTime) -> ClientOutcome {
        if peer_wire::is_hello(line) {
            return self.handle_hello(line);
        }
        match protocol::parse_request(line) {
            Parsed::Blank => ClientOutcome::Silent,
            Parsed::Invalid(_) => ClientOutcome::Reply(protocol::format_invalid(line)),
            Parsed::Request(Request::IAmAt { client_time, .. })
                if self.is_too_far_ahead(client_time, now) =>
            {
                ClientOutcome::Reply(protocol::format_invalid(line))
            }
            Parsed::Request(Request::IAmAt {
                client,
                location,
                time,
                client_time,
            }) => {
                let diff = now.as_nanos() - client_time.as_nanos();
                let record = AtRecord::new(
                    self.name.as_bytes(),
                    diff,
                    client,
                    location,
                    time,
                    client_time,
                );
                let applied = self.clients.apply(&record, Source::Client);
                let reply = record.line;
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

impl App {
    /// SPEC section 3: only a neighbour the config names (proving the secret, when one is set)
    /// may inject updates; any other hello is an invalid command.
    fn handle_hello(&mut self, line: &[u8]) -> ClientOutcome {
        let neighbours = &self.neighbours;
        let checked = peer_wire::check_hello(line, &self.name, self.peer_auth.as_mut(), |name| {
            neighbours.iter().flatten().any(|n| n == name)
        });
        match checked {
            HelloCheck::Welcome(name) => match self.link_to(name) {
                Some(link) => ClientOutcome::PeerAccepted {
                    link,
                    name: name.to_string(),
                    reply: peer_wire::format_welcome(&self.name),
                },
                None => ClientOutcome::Reply(protocol::format_invalid(line)),
            },
            HelloCheck::Challenge { challenge, reply } => match self.link_to(challenge.from()) {
                Some(link) => ClientOutcome::Challenged {
                    link,
                    challenge,
                    reply,
                },
                None => ClientOutcome::Reply(protocol::format_invalid(line)),
            },
            HelloCheck::Refused => ClientOutcome::Reply(protocol::format_invalid(line)),
        }
    }

    /// The line that follows a challenge this server sent. A proof that answers it makes the
    /// connection the neighbour's link; a wrong one is an invalid command (the challenge is
    /// spent either way, so a proof cannot be guessed twice); any other line is `None`: an
    /// ordinary client line, to be handled as one.
    pub fn handle_proof(
        &mut self,
        line: &[u8],
        link: LinkId,
        challenge: &Challenge,
    ) -> Option<ClientOutcome> {
        if !peer_wire::is_proof(line) {
            return None;
        }
        let proved = self
            .peer_auth
            .as_ref()
            .is_some_and(|auth| peer_wire::check_proof(line, &self.name, auth, challenge));
        // The neighbour may have been unlinked by a reload since the challenge.
        let still_linked = self.link_to(challenge.from()) == Some(link);
        Some(if proved && still_linked {
            ClientOutcome::PeerAccepted {
                link,
                name: challenge.from().to_string(),
                reply: peer_wire::format_welcome(&self.name),
            }
        } else {
            self.commands.invalid += 1;
            ClientOutcome::Reply(protocol::format_invalid(line))
        })
    }

    /// Our link to the neighbour `name`, while the config links it.
    fn link_to(&self, name: &str) -> Option<LinkId> {
        self.neighbours
            .iter()
            .position(|n| n.as_deref() == Some(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_SECS: u64 = 86_400;

    fn herd() -> Vec<String> {
        ["Alfa", "Bona", "Campbell", "Clark", "Jaquez"]
            .map(String::from)
            .to_vec()
    }

    fn app(name: &str) -> App {
        App::new(
            name,
            vec!["Bona".into(), "Jaquez".into()],
            herd(),
            None,
            DAY_SECS,
        )
    }

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
        let mut app = app("Campbell");
        let outcome = app.handle_client_line(
            b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503",
            at(1621464828, 223_371_889),
        );
        assert!(matches!(outcome, ClientOutcome::Stored { record: 0, .. }));
        assert_eq!(
            text(&outcome),
            "AT Campbell +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"
        );
    }

    #[test]
    fn a_time_in_the_future_gives_a_negative_difference() {
        let mut app = app("Bona");
        let outcome = app.handle_client_line(b"IAMAT c +1+1 100.5", at(100, 0));
        assert_eq!(text(&outcome), "AT Bona -0.500000000 c +1+1 100.5");
    }

    #[test]
    fn an_older_iamat_is_answered_but_not_stored() {
        let mut app = app("Bona");
        app.handle_client_line(b"IAMAT c +1+1 200", at(300, 0));
        let older = app.handle_client_line(b"IAMAT c +2+2 150", at(300, 0));
        assert_eq!(
            older,
            ClientOutcome::Reply(b"AT Bona +150.000000000 c +2+2 150".to_vec())
        );
        assert_eq!(
            app.clients().line_of(b"c").unwrap(),
            b"AT Bona +100.000000000 c +1+1 200"
        );
    }

    #[test]
    fn a_repeated_iamat_changes_nothing() {
        let mut app = app("Bona");
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
        let mut app = app("Clark");
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
        let mut app = app("Clark");
        let outcome = app.handle_client_line(b"WHATSAT nobody.example 10 5", at(3, 0));
        assert_eq!(text(&outcome), "? WHATSAT nobody.example 10 5");
    }

    #[test]
    fn an_at_line_from_a_client_is_invalid() {
        let mut app = app("Clark");
        let line = b"AT Bona +0.000000000 c +1+1 1";
        assert_eq!(
            text(&app.handle_client_line(line, at(3, 0))),
            "? AT Bona +0.000000000 c +1+1 1"
        );
        assert!(app.clients().is_empty());
    }

    #[test]
    fn blank_lines_are_silent() {
        let mut app = app("Clark");
        assert_eq!(
            app.handle_client_line(b" \t ", at(3, 0)),
            ClientOutcome::Silent
        );
    }

    #[test]
    fn a_neighbour_hello_is_welcomed_and_a_stranger_is_not() {
        let mut app = app("Campbell");
        assert_eq!(
            app.handle_client_line(b"HERD-HELLO Bona", at(1, 0)),
            ClientOutcome::PeerAccepted {
                link: 0,
                name: "Bona".into(),
                reply: b"HERD-WELCOME Campbell".to_vec()
            }
        );
        assert!(matches!(
            app.handle_client_line(b"HERD-HELLO Jaquez", at(1, 0)),
            ClientOutcome::PeerAccepted { link: 1, .. }
        ));
        assert_eq!(
            text(&app.handle_client_line(b"HERD-HELLO Clark", at(1, 0))),
            "? HERD-HELLO Clark"
        );
    }

    fn with_secret(name: &str, neighbour: &str, seed: u8) -> App {
        let secret = crate::secret::Secret::new("k".into());
        let auth = PeerAuth::new(secret, [seed; 32]);
        App::new(name, vec![neighbour.into()], herd(), Some(auth), DAY_SECS)
    }

    #[test]
    fn with_a_secret_a_hello_is_challenged_and_only_its_proof_makes_a_peer() {
        let mut campbell = with_secret("Campbell", "Bona", 1);
        let mut bona = with_secret("Bona", "Campbell", 2);
        let now = at(1, 0);
        assert_eq!(
            text(&campbell.handle_client_line(b"HERD-HELLO Bona", now)),
            "? HERD-HELLO Bona"
        );
        let mut greeting = bona.greeting_to("Campbell");
        let ClientOutcome::Challenged {
            link,
            challenge,
            reply,
        } = campbell.handle_client_line(&greeting.hello(), now)
        else {
            panic!("the hello is challenged");
        };
        let peer_wire::GreetingStep::Send(proof) = greeting.on_line(&reply) else {
            panic!("Bona answers the challenge");
        };
        // A line that is not a proof leaves it to the client path.
        assert_eq!(
            campbell.handle_proof(b"IAMAT a +1+1 1", link, &challenge),
            None
        );
        let wrong = b"HERD-PROOF 00";
        let refused = campbell.handle_proof(wrong, link, &challenge);
        assert_eq!(
            refused,
            Some(ClientOutcome::Reply(b"? HERD-PROOF 00".to_vec()))
        );
        assert_eq!(campbell.commands().invalid, 2);
        assert_eq!(
            campbell.handle_proof(&proof, link, &challenge),
            Some(ClientOutcome::PeerAccepted {
                link: 0,
                name: "Bona".into(),
                reply: b"HERD-WELCOME Campbell".to_vec()
            })
        );
        // Unlinked by a reload between the challenge and the proof: refused.
        campbell.remove_neighbour(link);
        assert!(matches!(
            campbell.handle_proof(&proof, link, &challenge),
            Some(ClientOutcome::Reply(_))
        ));
    }

    #[test]
    fn peer_updates_are_stored_once() {
        let mut app = app("Campbell");
        let line = b"AT Bona +0.500000000 c +1+1 10";
        let now = at(20, 0);
        assert_eq!(app.handle_peer_line(line, 0, now), PeerOutcome::Stored(0));
        assert_eq!(app.handle_peer_line(line, 1, now), PeerOutcome::Stale);
        assert_eq!(
            app.handle_peer_line(b"AT Bona +0.5 c +1+1 9", 0, now),
            PeerOutcome::Invalid
        );
        assert_eq!(
            app.handle_peer_line(b"garbage", 0, now),
            PeerOutcome::Invalid
        );
        assert_eq!(
            app.handle_peer_line(b"HERD-PING", 0, now),
            PeerOutcome::Ping(b"HERD-PONG")
        );
        assert_eq!(app.clients().line_of(b"c").unwrap(), line);
        assert_eq!(app.clients().source_at(0), Source::Neighbour(0));
    }

    #[test]
    fn peer_lines_are_stored_in_canonical_form() {
        let mut app = app("Campbell");
        app.handle_peer_line(b"AT  Bona\t+0.500000000 c +1+1 10 ", 0, at(20, 0));
        assert_eq!(
            app.clients().line_of(b"c").unwrap(),
            b"AT Bona +0.500000000 c +1+1 10"
        );
    }

    #[test]
    fn an_iamat_from_too_far_ahead_is_invalid_and_changes_nothing() {
        let mut app = app("Bona");
        let now = at(1_000_000, 0);
        app.handle_client_line(b"IAMAT c +1+1 999999", now);
        let day_ahead = b"IAMAT c +2+2 1086400";
        assert!(matches!(
            app.handle_client_line(day_ahead, now),
            ClientOutcome::Stored { .. }
        ));
        let beyond = b"IAMAT c +3+3 1086400.000000001";
        assert_eq!(
            text(&app.handle_client_line(beyond, now)),
            "? IAMAT c +3+3 1086400.000000001"
        );
        let year_9999 = b"IAMAT c +4+4 253402300799";
        assert_eq!(
            app.handle_client_line(year_9999, now),
            ClientOutcome::Reply(b"? IAMAT c +4+4 253402300799".to_vec())
        );
        assert_eq!(
            app.clients().line_of(b"c").unwrap(),
            b"AT Bona -86400.000000000 c +2+2 1086400"
        );
    }

    #[test]
    fn an_update_naming_a_server_outside_the_herd_is_invalid() {
        let mut app = app("Campbell");
        let forged = b"AT Nobody +0.500000000 c +1+1 10";
        assert_eq!(
            app.handle_peer_line(forged, 0, at(20, 0)),
            PeerOutcome::Invalid
        );
        assert!(app.clients().is_empty());
        // A server two hops away is fine: floods carry the taking server's name.
        let relayed = b"AT Clark +0.500000000 c +1+1 10";
        assert_eq!(
            app.handle_peer_line(relayed, 0, at(20, 0)),
            PeerOutcome::Stored(0)
        );
    }

    #[test]
    fn a_peer_update_from_too_far_ahead_is_not_stored() {
        let mut app = app("Campbell");
        let line = b"AT Bona -9999.000000000 c +1+1 253402300799";
        assert_eq!(
            app.handle_peer_line(line, 0, at(1_000_000, 0)),
            PeerOutcome::FromTheFuture
        );
        assert!(app.clients().is_empty());
    }

    #[test]
    fn commands_are_counted_by_what_they_came_to() {
        let mut a = app("Campbell");
        let now = at(1_621_464_828, 0);
        for line in [
            &b"IAMAT kiwi +34.068930-118.445127 1621464827.959498503"[..],
            b"IAMAT kiwi +34.068930-118.445127 1621464000", // stale: still an AT line
            b"WHATSAT kiwi 10 5",
            b"WHATSAT nobody 10 5", // unknown client: `? `
            b"IAMAT kiwi +34.068930-118.445127 9999999999", // too far ahead: `? `
            b"HELLO",
            b"   ",
        ] {
            a.handle_client_line(line, now);
        }
        a.count_too_long();
        assert_eq!(
            a.commands(),
            CommandCounts {
                iamat: 2,
                whatsat: 1,
                invalid: 4
            }
        );
    }
}
