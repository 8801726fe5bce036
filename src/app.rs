//! What the server does with a command, given the client table and the time: the reply, the
//! update to flood, or the lookup to make (SPEC sections 2 and 3); or the reason a line is
//! refused, which the log gives beside its `? `.
//!
//! Pure: no sockets, no clock (the loop passes `now` in), no threads. The event loop carries
//! out what these functions decide.

use std::fmt;

use crate::escape::Escaped;
use crate::peer_wire::{self, Challenge, Greeting, HelloCheck, PeerAuth, SyncLine};
use crate::places::PlacesQuery;
use crate::protocol::{self, AtLine, AtRecord, ClientTime, Invalid, Location, Parsed, Request};
use crate::table::{Applied, ClientTable, LinkId, Mark, RecordIndex, Source};

/// What one client line comes to. Borrows from the line (a refusal's reason names its fields).
#[derive(Debug, PartialEq)]
pub enum ClientOutcome<'a> {
    /// A blank line: no reply.
    Silent,
    /// A reply that is ready now (the AT line of a stale IAMAT), without its terminator.
    Reply(Vec<u8>),
    /// Not a command this server takes: answered `? ` + the line; the reason goes to the log.
    Refused(Refusal<'a>),
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

/// Why a line on a client connection is answered `? ` (the protocol's "Anything else"): what
/// the parser found ([`Invalid`]), or what this server's state or limits say of a line that
/// parsed. The reply is `? ` + the line whatever the reason; the reason is for the log, and
/// its [`Display`](fmt::Display) shows every byte from the network escaped and never a proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal<'a> {
    Invalid(Invalid<'a>),
    /// A WHATSAT for a client no IAMAT has told this server of.
    UnknownClient(&'a [u8]),
    /// An IAMAT whose time is further ahead of our clock than `limit future-seconds`.
    TooFarAhead {
        time: &'a [u8],
        ahead_nanos: i128,
        max_future_nanos: i128,
    },
    /// A hello this server does not take.
    Hello(HelloFault<'a>),
    /// A proof that does not make the connection a neighbour's link; `from` is the neighbour
    /// the hello claimed to be.
    Proof {
        from: &'a str,
        fault: ProofFault,
    },
    /// A line over `limit line-bytes`: the reply echoes its first `max_line_bytes`.
    TooLong {
        max_line_bytes: usize,
    },
}

/// Why a hello is refused. Only the hello's name is shown: a word after it may be a proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelloFault<'a> {
    /// Another number of fields than the hello's form here (`secret`: it has a nonce).
    Form { fields: usize, secret: bool },
    /// The name is not one of this server's neighbours in the config.
    NotNeighbour(&'a [u8]),
    /// Links here prove a secret, and the hello has no nonce to prove it over.
    NoNonce(&'a [u8]),
    /// The nonce is not 32 hex digits.
    BadNonce(&'a [u8]),
    /// `peer secret none`, and the hello carries a nonce (a herd with a secret).
    UnwantedNonce(&'a [u8]),
}

/// Why a proof is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProofFault {
    /// It does not answer the challenge this connection was sent.
    Wrong,
    /// A reload unlinked the neighbour between the challenge and the proof.
    Unlinked,
}

impl fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Refusal::Invalid(why) => why.fmt(f),
            Refusal::UnknownClient(client) => write!(
                f,
                "invalid WHATSAT: unknown client {} (no IAMAT for it has reached this server)",
                Escaped(client)
            ),
            Refusal::TooFarAhead {
                time,
                ahead_nanos,
                max_future_nanos,
            } => write!(
                f,
                "invalid IAMAT: time {} is {}.{:09} s ahead of this server's clock \
                 (at most {} s: limit future-seconds)",
                Escaped(time),
                ahead_nanos / 1_000_000_000,
                ahead_nanos % 1_000_000_000,
                max_future_nanos / 1_000_000_000
            ),
            Refusal::Hello(fault) => fault.fmt(f),
            Refusal::Proof {
                from,
                fault: ProofFault::Wrong,
            } => write!(
                f,
                "proof refused: it does not answer the challenge sent to {}",
                Escaped(from.as_bytes())
            ),
            Refusal::Proof {
                from,
                fault: ProofFault::Unlinked,
            } => write!(
                f,
                "proof refused: {} is no longer a neighbour (a reload removed its link)",
                Escaped(from.as_bytes())
            ),
            Refusal::TooLong { max_line_bytes } => write!(
                f,
                "line over limit line-bytes: more than {max_line_bytes} bytes \
                 (the reply echoes the first {max_line_bytes})"
            ),
        }
    }
}

impl fmt::Display for HelloFault<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            HelloFault::Form { fields, secret } => write!(
                f,
                "hello refused: {fields} field{}, a hello here is {}",
                if fields == 1 { "" } else { "s" },
                if secret {
                    "HERD-HELLO NAME NONCE"
                } else {
                    "HERD-HELLO NAME"
                }
            ),
            HelloFault::NotNeighbour(from) => write!(
                f,
                "hello refused: {} is not a neighbour of this server (no link to it in the config)",
                Escaped(from)
            ),
            HelloFault::NoNonce(from) => write!(
                f,
                "hello refused: {} sent no nonce, and links here prove a shared secret \
                 (HERD-HELLO NAME NONCE)",
                Escaped(from)
            ),
            HelloFault::BadNonce(from) => write!(
                f,
                "hello refused: the nonce of {} is not 32 hex digits (HERD-HELLO NAME NONCE)",
                Escaped(from)
            ),
            HelloFault::UnwantedNonce(from) => write!(
                f,
                "hello refused: {} sent a nonce, and this server has no secret \
                 (peer secret none: HERD-HELLO NAME)",
                Escaped(from)
            ),
        }
    }
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
    /// The neighbour's `HERD-MARK`: this table holds its history up to the mark now (kept in
    /// the table; the store must keep it too).
    Marked(Mark),
    /// The neighbour's digest matches this table's.
    InSync,
    /// The neighbour's digest differs from this table's: answer with this line, the digests
    /// of this table's buckets.
    Differs(Vec<u8>),
    /// Not an AT line: the neighbour is broken or not a neighbour; drop the connection.
    Invalid,
    /// A valid AT line whose client time is further ahead of our clock than `limit
    /// future-seconds`: not stored (it would shadow every real update of that client), logged,
    /// and the link stays up (the neighbour's server is not broken, a client's clock is).
    FromTheFuture,
}

/// Client commands by what they came to (`herd_commands_total{kind}`): an IAMAT or a WHATSAT
/// answered with an AT line, or a line answered with `? ` (every [`Refusal`]: not a command,
/// a time too far ahead, a WHATSAT for an unknown client, a refused hello or proof, a line
/// over the limit). Blank lines and accepted hellos are none of these.
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
        match peer_wire::parse_sync_line(line) {
            Some(SyncLine::Mark(mark)) => {
                let Some(Some(name)) = self.neighbours.get(from) else {
                    return PeerOutcome::Invalid;
                };
                self.clients.set_mark(name, mark);
                return PeerOutcome::Marked(mark);
            }
            Some(SyncLine::Digest(whole)) if whole == self.clients.digest().whole() => {
                return PeerOutcome::InSync;
            }
            Some(SyncLine::Digest(_)) => {
                let buckets = peer_wire::format_buckets(self.clients.digest().buckets());
                return PeerOutcome::Differs(buckets);
            }
            // Bucket digests go the other way: from this side, never to it.
            Some(SyncLine::Buckets(_)) => return PeerOutcome::Invalid,
            None => {}
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

    /// The table, for the links: their readers of its changes live in it.
    pub fn clients_mut(&mut self) -> &mut ClientTable {
        &mut self.clients
    }

    /// Handles one line (without terminator) from a client connection, received at `now`.
    pub fn handle_client_line<'a>(&mut self, line: &'a [u8], now: ClientTime) -> ClientOutcome<'a> {
        let outcome = self.decide_client_line(line, now);
        let counts = &mut self.commands;
        match &outcome {
            ClientOutcome::Silent
            | ClientOutcome::Challenged { .. }
            | ClientOutcome::PeerAccepted { .. } => {}
            ClientOutcome::Stored { .. } => counts.iamat += 1,
            ClientOutcome::Lookup { .. } => counts.whatsat += 1,
            ClientOutcome::Refused(_) => counts.invalid += 1,
            // The AT line of a stale IAMAT (the only ready reply that is not a refusal).
            ClientOutcome::Reply(_) => counts.iamat += 1,
        }
        outcome
    }

    fn decide_client_line<'a>(&mut self, line: &'a [u8], now: ClientTime) -> ClientOutcome<'a> {
        if peer_wire::is_hello(line) {
            return self.handle_hello(line);
        }
        match protocol::parse_request(line) {
            Parsed::Blank => ClientOutcome::Silent,
            Parsed::Invalid(why) => ClientOutcome::Refused(Refusal::Invalid(why)),
            Parsed::Request(Request::IAmAt {
                time, client_time, ..
            }) if self.is_too_far_ahead(client_time, now) => {
                ClientOutcome::Refused(Refusal::TooFarAhead {
                    time,
                    ahead_nanos: client_time.as_nanos() - now.as_nanos(),
                    max_future_nanos: self.max_future_nanos,
                })
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
                    None => ClientOutcome::Refused(Refusal::UnknownClient(client)),
                }
            }
        }
    }
}

impl App {
    /// SPEC section 3: only a neighbour the config names (proving the secret, when one is set)
    /// may inject updates; any other hello is an invalid command.
    fn handle_hello<'a>(&mut self, line: &'a [u8]) -> ClientOutcome<'a> {
        let neighbours = &self.neighbours;
        let checked = peer_wire::check_hello(line, &self.name, self.peer_auth.as_mut(), |name| {
            neighbours.iter().flatten().any(|n| n == name)
        });
        let link = match &checked {
            HelloCheck::Welcome(name) => self.link_to(name),
            HelloCheck::Challenge { challenge, .. } => self.link_to(challenge.from()),
            HelloCheck::Refused => None,
        };
        match (checked, link) {
            (HelloCheck::Welcome(name), Some(link)) => ClientOutcome::PeerAccepted {
                link,
                name: name.to_string(),
                reply: peer_wire::format_welcome(&self.name, self.clients.mark_of(name)),
            },
            (HelloCheck::Challenge { challenge, reply }, Some(link)) => ClientOutcome::Challenged {
                link,
                challenge,
                reply,
            },
            _ => ClientOutcome::Refused(Refusal::Hello(self.hello_fault(line))),
        }
    }

    /// Why `check_hello` refused a hello, told from its words: its name is checked against
    /// the neighbours first, then its nonce against whether this server has a secret. No word
    /// after the name is kept: one may be a proof (an older hello's form).
    fn hello_fault<'a>(&self, line: &'a [u8]) -> HelloFault<'a> {
        let secret = self.peer_auth.is_some();
        let mut words = protocol::fields(line).skip(1);
        match (words.next(), words.next(), words.next()) {
            (Some(from), _, None) if !self.is_neighbour(from) => HelloFault::NotNeighbour(from),
            (Some(from), None, None) if secret => HelloFault::NoNonce(from),
            (Some(from), Some(_), None) if secret => HelloFault::BadNonce(from),
            (Some(from), Some(_), None) => HelloFault::UnwantedNonce(from),
            _ => HelloFault::Form {
                fields: protocol::fields(line).count(),
                secret,
            },
        }
    }

    fn is_neighbour(&self, name: &[u8]) -> bool {
        std::str::from_utf8(name).is_ok_and(|name| self.link_to(name).is_some())
    }

    /// The line that follows a challenge this server sent. A proof that answers it makes the
    /// connection the neighbour's link; a wrong one is an invalid command (the challenge is
    /// spent either way, so a proof cannot be guessed twice); any other line is `None`: an
    /// ordinary client line, to be handled as one.
    pub fn handle_proof<'a>(
        &mut self,
        line: &'a [u8],
        link: LinkId,
        challenge: &'a Challenge,
    ) -> Option<ClientOutcome<'a>> {
        if !peer_wire::is_proof(line) {
            return None;
        }
        let proved = self
            .peer_auth
            .as_ref()
            .is_some_and(|auth| peer_wire::check_proof(line, &self.name, auth, challenge));
        // The neighbour may have been unlinked by a reload since the challenge.
        let still_linked = self.link_to(challenge.from()) == Some(link);
        let fault = match (proved, still_linked) {
            (true, true) => {
                return Some(ClientOutcome::PeerAccepted {
                    link,
                    name: challenge.from().to_string(),
                    reply: peer_wire::format_welcome(
                        &self.name,
                        self.clients.mark_of(challenge.from()),
                    ),
                })
            }
            (false, _) => ProofFault::Wrong,
            (true, false) => ProofFault::Unlinked,
        };
        self.commands.invalid += 1;
        Some(ClientOutcome::Refused(Refusal::Proof {
            from: challenge.from(),
            fault,
        }))
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

    /// The reason the log gives for a refused line.
    fn why(outcome: &ClientOutcome) -> String {
        match outcome {
            ClientOutcome::Refused(why) => why.to_string(),
            other => panic!("not refused: {other:?}"),
        }
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
        assert_eq!(
            outcome,
            ClientOutcome::Refused(Refusal::UnknownClient(b"nobody.example"))
        );
        assert_eq!(
            why(&outcome),
            "invalid WHATSAT: unknown client nobody.example \
             (no IAMAT for it has reached this server)"
        );
        // Known, but the radius is out of range: the parser's reason.
        app.handle_client_line(b"IAMAT kiwi +1+1 1", at(3, 0));
        assert_eq!(
            why(&app.handle_client_line(b"WHATSAT kiwi 60 5", at(3, 0))),
            "invalid WHATSAT: radius 60 is out of range (0 < km <= 50)"
        );
    }

    #[test]
    fn an_at_line_from_a_client_is_invalid() {
        let mut app = app("Clark");
        let line = b"AT Bona +0.000000000 c +1+1 1";
        assert_eq!(
            why(&app.handle_client_line(line, at(3, 0))),
            "AT from a client: a line servers exchange on a link, not a client command \
             (IAMAT or WHATSAT)"
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
            why(&app.handle_client_line(b"HERD-HELLO Clark", at(1, 0))),
            "hello refused: Clark is not a neighbour of this server (no link to it in the config)"
        );
        assert_eq!(
            why(&app.handle_client_line(b"HERD-HELLO Bona 00ff", at(1, 0))),
            "hello refused: Bona sent a nonce, and this server has no secret \
             (peer secret none: HERD-HELLO NAME)"
        );
        assert_eq!(
            why(&app.handle_client_line(b"HERD-HELLO", at(1, 0))),
            "hello refused: 1 field, a hello here is HERD-HELLO NAME"
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
            why(&campbell.handle_client_line(b"HERD-HELLO Bona", now)),
            "hello refused: Bona sent no nonce, and links here prove a shared secret \
             (HERD-HELLO NAME NONCE)"
        );
        assert_eq!(
            why(&campbell.handle_client_line(b"HERD-HELLO Bona xyz", now)),
            "hello refused: the nonce of Bona is not 32 hex digits (HERD-HELLO NAME NONCE)"
        );
        // A hello of an older form, with a proof after its nonce: the proof is never shown.
        let old = format!("HERD-HELLO Bona 1800000000 {}", "ab".repeat(32));
        let shown = why(&campbell.handle_client_line(old.as_bytes(), now));
        assert_eq!(
            shown,
            "hello refused: 4 fields, a hello here is HERD-HELLO NAME NONCE"
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
        let refused = campbell.handle_proof(wrong, link, &challenge).unwrap();
        assert_eq!(
            why(&refused),
            "proof refused: it does not answer the challenge sent to Bona"
        );
        assert_eq!(campbell.commands().invalid, 4);
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
        let unlinked = campbell.handle_proof(&proof, link, &challenge).unwrap();
        assert_eq!(
            why(&unlinked),
            "proof refused: Bona is no longer a neighbour (a reload removed its link)"
        );
        let proof_hex = &proof[b"HERD-PROOF ".len()..];
        for refused in [refused, unlinked] {
            let shown = why(&refused);
            assert!(
                !shown.contains(std::str::from_utf8(proof_hex).unwrap()),
                "{shown}"
            );
        }
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
            why(&app.handle_client_line(beyond, now)),
            "invalid IAMAT: time 1086400.000000001 is 86400.000000001 s ahead of this \
             server's clock (at most 86400 s: limit future-seconds)"
        );
        let year_9999 = b"IAMAT c +4+4 253402300799";
        assert_eq!(
            why(&app.handle_client_line(year_9999, now)),
            "invalid IAMAT: time 253402300799 is 253401300799.000000000 s ahead of this \
             server's clock (at most 86400 s: limit future-seconds)"
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
