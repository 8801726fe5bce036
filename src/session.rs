//! What one line read on an accepted connection does: a client's command is answered in order
//! or becomes a lookup, a line it refuses is answered `? ` with the reason for the log beside
//! the reply; a neighbour's update is applied and becomes a flood. [`handle_line`]
//! changes only the connection and the server's state and returns what the loop must carry
//! out ([`Effect`]), so every rule here is tested without a socket or a thread.

use log::{debug, info, warn};

use crate::app::{App, ClientOutcome, PeerOutcome, Refusal};
use crate::buffer::Line;
use crate::conn::{ConnState, Connection, LinkSecurity, Peer};
use crate::escape::Escaped;
use crate::peer_wire;
use crate::places::PlacesQuery;
use crate::protocol::ClientTime;
use crate::table::{Mark, RecordIndex};

/// What a line asks of the world beyond its connection; the loop carries it out.
#[derive(Debug, PartialEq)]
pub enum Effect {
    /// The record was stored in the table: it goes to the store (when there is one) and every
    /// link owes it now (but the one toward its source).
    StoreAndFlood(RecordIndex),
    /// The connection is a neighbour's link from now on (its hello was accepted).
    Peered,
    /// The neighbour `name` marked how far this server holds its history: the store keeps it.
    Mark { neighbour: String, mark: Mark },
    /// Ask Places; the reply goes into the slot `seq` reserved on the connection, and starts
    /// with `at_line`.
    Lookup {
        seq: u64,
        at_line: Box<[u8]>,
        query: PlacesQuery,
    },
}

/// Handles one framed line received on `conn` at `now`.
pub fn handle_line(
    conn: &mut Connection,
    app: &mut App,
    line: Line<'_>,
    now: ClientTime,
) -> Option<Effect> {
    if conn.state != ConnState::Open && conn.state != ConnState::Draining {
        return None; // the rest of a chunk from a dropped neighbour is ignored
    }
    if conn.peer.is_some() {
        return handle_peer_line(conn, app, line, now);
    }
    let line = match line {
        Line::Complete(line) => line,
        Line::TooLong(cut) => {
            conn.received(cut);
            app.count_too_long();
            warn!(
                "limit line-bytes conn={}: line of more than {} bytes",
                conn.id,
                cut.len()
            );
            let why = Refusal::TooLong {
                max_line_bytes: cut.len(),
            };
            conn.refuse(cut, &why);
            return None;
        }
    };
    conn.received(line);
    if peer_wire::is_hello(line) {
        if let Some(why) = tls_refusal(&conn.link_security, line) {
            warn!("tls conn={}: hello refused: {why}", conn.id);
            conn.refuse(line, &why);
            // Not a link, and not a client either: answered, then closed.
            conn.state = ConnState::Draining;
            return None;
        }
    }
    // A challenge is answered by the line that follows it, or not at all.
    let challenged = conn.challenged.take();
    let proved = challenged
        .as_ref()
        .and_then(|(link, challenge)| app.handle_proof(line, *link, challenge));
    match proved.unwrap_or_else(|| app.handle_client_line(line, now)) {
        ClientOutcome::Silent => None,
        ClientOutcome::Reply(reply) => {
            conn.deliver(reply);
            None
        }
        ClientOutcome::Refused(why) => {
            conn.refuse(line, &why);
            None
        }
        ClientOutcome::Stored { reply, record } => {
            conn.deliver(reply);
            Some(Effect::StoreAndFlood(record))
        }
        ClientOutcome::Challenged {
            link,
            challenge,
            reply,
        } => {
            conn.deliver(reply);
            conn.challenged = Some((link, challenge));
            None
        }
        ClientOutcome::PeerAccepted { link, name, reply } => {
            info!("peer conn={} is {name}", conn.id);
            conn.deliver(reply);
            conn.peer = Some(Peer { link, name });
            Some(Effect::Peered)
        }
        ClientOutcome::Lookup { at_line, query } => Some(Effect::Lookup {
            seq: conn.reserve_reply(),
            at_line,
            query,
        }),
    }
}

/// Why a hello may not go on to be checked as a neighbour's (SPEC section 9): links are TLS
/// here and this connection is not, or its certificate does not name the server the hello
/// claims to be (so a server of the herd cannot pass for another). Only the claimed name is
/// shown: a later word may be a proof.
fn tls_refusal(security: &LinkSecurity, hello: &[u8]) -> Option<String> {
    let claimed = hello.split(|b| *b == b' ').nth(1).unwrap_or_default();
    let claimed = Escaped(claimed);
    match security {
        LinkSecurity::Clear => None,
        LinkSecurity::TlsRequired => Some(format!(
            "not TLS: {claimed} said its hello in clear, and links here are TLS (peer tls)"
        )),
        LinkSecurity::Tls(None) => Some(format!(
            "{claimed} said its hello before the TLS handshake was done"
        )),
        LinkSecurity::Tls(Some(certificate)) => {
            let name = hello
                .split(|b| *b == b' ')
                .nth(1)
                .and_then(|word| std::str::from_utf8(word).ok());
            match name {
                Some(name) if crate::tls::certificate_names(certificate, name) => None,
                _ => Some(format!(
                    "wrong name: the hello claims {claimed}, and the TLS certificate does \
                     not name it"
                )),
            }
        }
    }
}

/// A line on a neighbour's link: an update to apply and pass on. Anything else means the
/// neighbour is broken, and the connection is dropped (it reconnects and resyncs).
fn handle_peer_line(
    conn: &mut Connection,
    app: &mut App,
    line: Line<'_>,
    now: ClientTime,
) -> Option<Effect> {
    let peer = conn.peer.as_ref()?;
    let line = match line {
        Line::Complete(line) => line,
        Line::TooLong(_) => {
            warn!(
                "peer conn={} {}: line over the limit, dropping link",
                conn.id, peer.name
            );
            conn.state = ConnState::Closed("peer line too long");
            return None;
        }
    };
    conn.received(line);
    match app.handle_peer_line(line, peer.link, now) {
        PeerOutcome::Stored(record) => Some(Effect::StoreAndFlood(record)),
        PeerOutcome::Stale => None,
        PeerOutcome::Ping(pong) => {
            conn.deliver(pong.to_vec());
            None
        }
        PeerOutcome::Marked(mark) => Some(Effect::Mark {
            neighbour: peer.name.clone(),
            mark,
        }),
        PeerOutcome::InSync => None,
        PeerOutcome::Differs(buckets) => {
            debug!(
                "link check {}: its digest differs from ours; sending our bucket digests",
                peer.name
            );
            conn.deliver(buckets);
            None
        }
        PeerOutcome::FromTheFuture => {
            warn!(
                "limit future-seconds peer conn={} {}: not stored: {}",
                conn.id,
                peer.name,
                Escaped(line)
            );
            None
        }
        PeerOutcome::Invalid => {
            warn!(
                "peer conn={} {}: invalid line, dropping link: {}",
                conn.id,
                peer.name,
                Escaped(line)
            );
            conn.state = ConnState::Closed("invalid peer line");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::LineReader;
    use crate::conn::Reply;
    use crate::places::{PlacesError, Refusals};
    use crate::table::Source;

    const NOW: ClientTime = ClientTime {
        secs: 1_621_464_828,
        nanos: 223_371_889,
    };

    const MAX_LINE: usize = 100;

    fn app() -> App {
        let herd = ["Bona", "Campbell", "Clark"].map(String::from).to_vec();
        App::new(
            "Campbell",
            vec!["Bona".into(), "Clark".into()],
            herd,
            None,
            86_400,
        )
    }

    /// Feeds `input` through a reader as the loop does and collects the effects.
    fn feed(conn: &mut Connection, app: &mut App, input: &[u8]) -> Vec<Effect> {
        let mut reader = LineReader::new(MAX_LINE);
        let mut effects = Vec::new();
        reader.feed(input, |line| {
            effects.extend(handle_line(conn, app, line, NOW))
        });
        effects
    }

    fn output(conn: &Connection) -> String {
        String::from_utf8_lossy(conn.out.pending()).into_owned()
    }

    fn neighbour(app: &mut App, id: u64) -> Connection {
        let mut conn = Connection::new(id);
        feed(&mut conn, app, b"HERD-HELLO Bona\n");
        conn
    }

    fn client_with_pending_whatsat(app: &mut App) -> (Connection, u64) {
        let mut conn = Connection::new(1);
        feed(
            &mut conn,
            app,
            b"IAMAT kiwi +34.068930-118.445127 1621464827.959498503\n",
        );
        conn.out = Default::default();
        let effects = feed(&mut conn, app, b"WHATSAT kiwi 10 5\n");
        let [Effect::Lookup { seq, .. }] = effects[..] else {
            panic!("{effects:?}");
        };
        (conn, seq)
    }

    #[test]
    fn an_iamat_is_answered_and_flooded() {
        let mut app = app();
        let mut conn = Connection::new(1);
        let effects = feed(
            &mut conn,
            &mut app,
            b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503\r\n",
        );
        assert_eq!(effects, [Effect::StoreAndFlood(0)]);
        assert_eq!(
            output(&conn),
            "AT Campbell +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503\n"
        );
    }

    #[test]
    fn a_stale_iamat_is_answered_but_not_flooded() {
        let mut app = app();
        let mut conn = Connection::new(1);
        feed(&mut conn, &mut app, b"IAMAT c +1+1 1621464000\n");
        let effects = feed(&mut conn, &mut app, b"IAMAT c +2+2 1621463000\n");
        assert!(effects.is_empty());
        assert_eq!(output(&conn).lines().count(), 2);
    }

    #[test]
    fn bad_lines_get_a_question_mark_and_the_line() {
        let mut app = app();
        let mut conn = Connection::new(1);
        let effects = feed(
            &mut conn,
            &mut app,
            b"HELLO\nWHATSAT nobody 10 5\n  \nIAMAT c +91+0 1\nAT Bona +0.000000000 c +1+1 1\n",
        );
        assert!(effects.is_empty());
        assert_eq!(
            output(&conn),
            "? HELLO\n? WHATSAT nobody 10 5\n? IAMAT c +91+0 1\n? AT Bona +0.000000000 c +1+1 1\n"
        );
        assert_eq!(conn.state, ConnState::Open);
    }

    #[test]
    fn a_line_over_the_limit_is_answered_with_its_cut_copy() {
        let mut app = app();
        let mut conn = Connection::new(1);
        let long = [b'x'; 2 * MAX_LINE];
        let mut input = long.to_vec();
        input.extend_from_slice(b"\nIAMAT c +1+1 1\n");
        let effects = feed(&mut conn, &mut app, &input);
        assert_eq!(effects, [Effect::StoreAndFlood(0)]);
        let out = output(&conn);
        let first = out.lines().next().unwrap();
        assert_eq!(first, format!("? {}", "x".repeat(MAX_LINE)));
        assert!(out.lines().nth(1).unwrap().starts_with("AT Campbell "));
    }

    #[test]
    fn a_whatsat_for_a_known_client_becomes_a_lookup_holding_its_place() {
        let mut app = app();
        let (mut conn, seq) = client_with_pending_whatsat(&mut app);
        // A later command is quicker, but its reply waits behind the lookup's.
        feed(&mut conn, &mut app, b"bogus\n");
        assert_eq!(output(&conn), "");
        conn.fill_reply(seq, b"AT Campbell ...\n{}\n".to_vec().into());
        assert_eq!(output(&conn), "AT Campbell ...\n{}\n\n? bogus\n");
    }

    #[test]
    fn a_lookup_refused_for_a_full_queue_is_answered_429_in_order() {
        let mut app = app();
        let (mut conn, seq) = client_with_pending_whatsat(&mut app);
        feed(&mut conn, &mut app, b"bogus\n");
        let at = app.clients().line_of(b"kiwi").unwrap().into();
        // As the loop answers a lookup the Places front refused at once.
        let json = Refusals::new().json(PlacesError::QueueFull);
        conn.fill_reply(seq, Reply::Whatsat { at_line: at, json });
        let out = output(&conn);
        let mut blocks = out.split("\n\n");
        let reply = blocks.next().unwrap();
        assert!(reply.starts_with("AT Campbell "), "{reply}");
        let json: serde_json::Value =
            serde_json::from_str(reply.split_once('\n').unwrap().1).unwrap();
        assert_eq!(json["error"]["code"], 429);
        assert_eq!(json["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(blocks.next().unwrap(), "? bogus\n");
    }

    #[test]
    fn pipelined_commands_are_answered_in_the_order_sent() {
        let mut app = app();
        let mut conn = Connection::new(1);
        let effects = feed(
            &mut conn,
            &mut app,
            b"IAMAT a +1+1 1621464000\nWHATSAT a 1 1\nIAMAT b +1+1 1621464000\nWHATSAT a 2 2\nx\n",
        );
        let seqs: Vec<u64> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Lookup { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(effects.len(), 4);
        assert_eq!(output(&conn).lines().count(), 1); // only the reply before the first lookup
        conn.fill_reply(seqs[1], b"second".to_vec().into());
        assert_eq!(output(&conn).lines().count(), 1);
        conn.fill_reply(seqs[0], b"first".to_vec().into());
        let out = output(&conn);
        let replies: Vec<&str> = out.lines().collect();
        assert_eq!(replies.len(), 5);
        assert!(replies[0].starts_with("AT Campbell +828.223371889 a "));
        assert_eq!(replies[1], "first");
        assert!(replies[2].starts_with("AT Campbell +828.223371889 b "));
        assert_eq!(replies[3..], ["second", "? x"]);
    }

    #[test]
    fn a_hello_turns_the_connection_into_a_neighbours_link() {
        let mut app = app();
        let mut conn = Connection::new(3);
        let effects = feed(&mut conn, &mut app, b"HERD-HELLO Clark\n");
        assert_eq!(effects, [Effect::Peered]);
        assert_eq!(output(&conn), "HERD-WELCOME Campbell\n");
        assert_eq!(conn.peer.as_ref().map(|p| p.link), Some(1));
        let effects = feed(
            &mut conn,
            &mut app,
            b"AT Clark +0.100000000 kiwi +1+1 1621464000\nHERD-PING\n",
        );
        assert_eq!(effects, [Effect::StoreAndFlood(0)]);
        assert!(output(&conn).ends_with("HERD-PONG\n"));
        assert_eq!(app.clients().source_at(0), Source::Neighbour(1));
    }

    fn app_with_secret(name: &str, seed: u8) -> App {
        let herd = ["Bona", "Campbell", "Clark"].map(String::from).to_vec();
        let auth =
            crate::peer_wire::PeerAuth::new(crate::secret::Secret::new("k".into()), [seed; 32]);
        let neighbours = herd.iter().filter(|n| *n != name).cloned().collect();
        App::new(name, neighbours, herd, Some(auth), 86_400)
    }

    #[test]
    fn with_a_secret_only_the_proof_that_answers_the_challenge_makes_a_neighbour() {
        let mut campbell = app_with_secret("Campbell", 1);
        let mut clark = app_with_secret("Clark", 2);
        let mut greeting = clark.greeting_to("Campbell");
        let mut conn = Connection::new(3);
        let hello = [greeting.hello(), b"\n".to_vec()].concat();
        assert_eq!(feed(&mut conn, &mut campbell, &hello), []);
        let challenge = output(&conn);
        assert!(challenge.starts_with("HERD-CHALLENGE "), "{challenge}");
        let crate::peer_wire::GreetingStep::Send(proof) =
            greeting.on_line(challenge.trim_end().as_bytes())
        else {
            panic!("Clark answers the challenge");
        };
        // A client line in between spends the challenge: the proof comes too late.
        conn.out = Default::default();
        feed(&mut conn, &mut campbell, b"IAMAT c +1+1 1\n");
        assert!(output(&conn).starts_with("AT Campbell "));
        conn.out = Default::default();
        let late = [proof.clone(), b"\n".to_vec()].concat();
        assert_eq!(feed(&mut conn, &mut campbell, &late), []);
        assert_eq!(
            output(&conn),
            format!("? {}\n", String::from_utf8_lossy(&proof))
        );
        assert_eq!(conn.peer, None);

        // On a fresh connection, the same exchange with nothing in between is taken.
        let mut greeting = clark.greeting_to("Campbell");
        let mut conn = Connection::new(4);
        feed(
            &mut conn,
            &mut campbell,
            &[greeting.hello(), b"\n".to_vec()].concat(),
        );
        let crate::peer_wire::GreetingStep::Send(proof) =
            greeting.on_line(output(&conn).trim_end().as_bytes())
        else {
            panic!("Clark answers the challenge");
        };
        conn.out = Default::default();
        let effects = feed(&mut conn, &mut campbell, &[proof, b"\n".to_vec()].concat());
        assert_eq!(effects, [Effect::Peered]);
        assert_eq!(output(&conn), "HERD-WELCOME Campbell\n");
        assert_eq!(conn.peer.as_ref().map(|p| p.name.as_str()), Some("Clark"));
    }

    #[test]
    fn a_broken_neighbour_is_dropped_and_the_rest_of_its_input_ignored() {
        let mut app = app();
        let mut conn = neighbour(&mut app, 3);
        let effects = feed(
            &mut conn,
            &mut app,
            b"IAMAT c +1+1 1\nAT Bona +0.100000000 c +1+1 1621464000\n",
        );
        assert!(effects.is_empty());
        assert_eq!(conn.state, ConnState::Closed("invalid peer line"));
        assert!(app.clients().is_empty());
    }

    #[test]
    fn a_neighbours_update_from_the_far_future_is_dropped_but_the_link_stays() {
        let mut app = app();
        let mut conn = neighbour(&mut app, 3);
        let effects = feed(
            &mut conn,
            &mut app,
            b"AT Bona +0.000000000 c +1+1 253402300799\nAT Bona +0.1 c\n",
        );
        assert!(effects.is_empty());
        assert!(app.clients().is_empty());
        // The first line was refused alone; the second (malformed) one dropped the link.
        assert_eq!(conn.state, ConnState::Closed("invalid peer line"));
        let mut conn = neighbour(&mut app, 4);
        feed(
            &mut conn,
            &mut app,
            b"AT Bona +0.000000000 c +1+1 253402300799\n",
        );
        assert_eq!(conn.state, ConnState::Open);
    }

    #[test]
    fn a_line_after_a_half_close_is_still_answered() {
        let mut app = app();
        let mut conn = Connection::new(1);
        conn.state = ConnState::Draining;
        let effects = feed(&mut conn, &mut app, b"WHATSAT nobody 1 1\n");
        assert!(effects.is_empty());
        assert_eq!(output(&conn), "? WHATSAT nobody 1 1\n");
    }
}
