//! The lines servers exchange on a link (the peer wire format is ours to design; README.md
//! documents it):
//!
//! ```text
//! HERD-HELLO FROM [CNONCE]       connector -> acceptor, first line of a link
//! HERD-CHALLENGE SNONCE PROOF    acceptor -> connector, with a secret: prove it
//! HERD-PROOF PROOF               connector -> acceptor, the answer to the challenge
//! HERD-WELCOME NAME [EPOCH VERSION]
//!                                acceptor -> connector, the connector is taken; the acceptor
//!                                holds the connector's history up to VERSION of EPOCH
//! AT SERVER DIFF CLIENT LOCATION TIME
//!                                connector -> acceptor, one location update (the AT line)
//! HERD-MARK EPOCH VERSION        connector -> acceptor, after updates: it now has every
//!                                record of the connector's history up to VERSION
//! HERD-PING                      connector -> acceptor, when the link has been quiet
//! HERD-PONG                      acceptor -> connector, the answer: the neighbour is alive
//! HERD-DIGEST HEX16              connector -> acceptor, every few seconds when caught up: a
//!                                digest of the connector's whole table
//! HERD-BUCKETS HEX16 x 256       acceptor -> connector, when its own digest differs: the
//!                                digests of its 256 buckets (one run of hex)
//! ```
//!
//! How resync by difference and the periodic check use these lines is told in
//! docs/protocol.md; `changes`, `owed` and `digest` hold the rules.
//!
//! With a shared secret each side proves it over both sides' fresh nonces (16 random bytes,
//! hex): the acceptor's PROOF is HMAC-SHA256(secret, "herd-accept TO FROM CNONCE SNONCE"), the
//! connector's HMAC-SHA256(secret, "herd-connect FROM TO CNONCE SNONCE"), both in hex. The
//! secret never crosses the wire; a proof names both servers and its role, so it is useless
//! for another server or the other direction; and it answers a nonce made for this connection
//! alone, so a hello or a proof seen once (on the wire, in a log) is worth nothing when sent
//! again. Logs show proofs as `<redacted>` all the same ([`redact_proofs`]).
//! Without a secret (`peer secret none`) the hello is `HERD-HELLO FROM` and is welcomed at once.
//!
//! Pure: formatting, checking, and the connector's side of the exchange ([`Greeting`]) as a
//! small state machine; nonces come from a [`Nonces`] seeded by the caller.

use std::borrow::Cow;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::changes::{Epoch, Version};
use crate::digest::{self, BUCKETS};
use crate::protocol::fields;
use crate::secret::Secret;
use crate::table::Mark;

pub const HELLO: &[u8] = b"HERD-HELLO";
pub const CHALLENGE: &[u8] = b"HERD-CHALLENGE";
pub const PROOF: &[u8] = b"HERD-PROOF";
pub const WELCOME: &[u8] = b"HERD-WELCOME";
pub const MARK: &[u8] = b"HERD-MARK";
pub const DIGEST: &[u8] = b"HERD-DIGEST";
pub const BUCKETS_WORD: &[u8] = b"HERD-BUCKETS";
/// Every line here is without its terminator: the one function that sends a line adds it.
pub const PING_LINE: &[u8] = b"HERD-PING";
pub const PONG_LINE: &[u8] = b"HERD-PONG";
/// Longest line a link reads from its neighbour (a welcome, a pong, the bucket digests); an
/// AT line from a neighbour is bounded by the client line limit instead.
pub const MAX_REPLY_LINE_BYTES: usize = 8192;
/// Random bytes in a nonce.
const NONCE_BYTES: usize = 16;
/// What a logged handshake line shows instead of a proof.
const REDACTED: &[u8] = b"<redacted>";

type HmacSha256 = Hmac<Sha256>;

/// A number used once: made fresh for every hello and every challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_BYTES]);

impl Nonce {
    fn hex(&self) -> String {
        hex(&self.0)
    }

    /// Exactly [`NONCE_BYTES`] bytes in hex, or nothing.
    fn parse(text: &[u8]) -> Option<Nonce> {
        let bytes = unhex(text)?;
        Some(Nonce(bytes.try_into().ok()?))
    }
}

/// Where nonces come from: HMAC-SHA256 of a counter under a key of random bytes the caller
/// reads once at start. Unpredictable to anyone without the key, never repeated in a run,
/// and pure (no system call per nonce, and tests can seed it).
pub struct Nonces {
    key: HmacSha256,
    counter: u64,
}

impl Nonces {
    pub fn new(seed: [u8; 32]) -> Nonces {
        Nonces {
            key: HmacSha256::new_from_slice(&seed).expect("HMAC accepts any key length"),
            counter: 0,
        }
    }

    pub fn fresh(&mut self) -> Nonce {
        self.counter += 1;
        let mut mac = self.key.clone();
        mac.update(&self.counter.to_le_bytes());
        let digest = mac.finalize().into_bytes();
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&digest[..NONCE_BYTES]);
        Nonce(nonce)
    }
}

/// A herd's shared secret with the nonces its handshakes use (one per server).
pub struct PeerAuth {
    secret: Secret,
    nonces: Nonces,
}

impl PeerAuth {
    pub fn new(secret: Secret, seed: [u8; 32]) -> PeerAuth {
        PeerAuth {
            secret,
            nonces: Nonces::new(seed),
        }
    }
}

/// The two roles a proof can be made for: a proof made as one is never valid as the other.
#[derive(Clone, Copy)]
enum Role {
    Accept,
    Connect,
}

/// HMAC-SHA256(secret, "herd-ROLE NAME NAME CNONCE SNONCE") before it is finalised: names in
/// the role's order (the acceptor's first when it accepts, the connector's when it connects).
fn proof_mac(secret: &Secret, role: Role, names: [&str; 2], nonces: [Nonce; 2]) -> HmacSha256 {
    let label = match role {
        Role::Accept => "herd-accept",
        Role::Connect => "herd-connect",
    };
    let message = format!(
        "{label} {} {} {} {}",
        names[0],
        names[1],
        nonces[0].hex(),
        nonces[1].hex()
    );
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(message.as_bytes());
    mac
}

fn proof(secret: &Secret, role: Role, names: [&str; 2], nonces: [Nonce; 2]) -> String {
    hex(&proof_mac(secret, role, names, nonces)
        .finalize()
        .into_bytes())
}

/// Whether `shown` (hex) is the proof; in constant time, so how far a guess matched does not
/// show in how long the check took.
fn proof_matches(
    secret: &Secret,
    role: Role,
    names: [&str; 2],
    nonces: [Nonce; 2],
    shown: &[u8],
) -> bool {
    unhex(shown).is_some_and(|shown| {
        proof_mac(secret, role, names, nonces)
            .verify_slice(&shown)
            .is_ok()
    })
}

/// What the acceptor holds between its challenge and the connector's proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    from: String,
    connector_nonce: Nonce,
    acceptor_nonce: Nonce,
}

impl Challenge {
    /// The neighbour the hello claimed to be.
    pub fn from(&self) -> &str {
        &self.from
    }
}

/// What an acceptor makes of a hello.
#[derive(Debug, PartialEq, Eq)]
pub enum HelloCheck<'a> {
    /// No secret is set: a configured neighbour is welcomed at once.
    Welcome(&'a str),
    /// Send `reply` (the challenge) and hold `challenge` until the proof comes.
    Challenge {
        challenge: Challenge,
        reply: Vec<u8>,
    },
    /// Not a configured neighbour, or not a hello of the form this server expects.
    Refused,
}

/// Checks a hello received by `me`: a configured neighbour's (`is_neighbour`) is welcomed, or
/// with a secret challenged; anything else is refused.
pub fn check_hello<'a>(
    line: &'a [u8],
    me: &str,
    auth: Option<&mut PeerAuth>,
    is_neighbour: impl Fn(&str) -> bool,
) -> HelloCheck<'a> {
    let words: Vec<&[u8]> = fields(line).take(4).collect();
    let (from, nonce) = match words[..] {
        [HELLO, from] => (from, None),
        [HELLO, from, nonce] => (from, Some(nonce)),
        _ => return HelloCheck::Refused,
    };
    let Some(from) = std::str::from_utf8(from).ok().filter(|f| is_neighbour(f)) else {
        return HelloCheck::Refused;
    };
    match (auth, nonce.map(Nonce::parse)) {
        (None, None) => HelloCheck::Welcome(from),
        (Some(auth), Some(Some(connector_nonce))) => {
            let acceptor_nonce = auth.nonces.fresh();
            let nonces = [connector_nonce, acceptor_nonce];
            let shown = proof(&auth.secret, Role::Accept, [me, from], nonces);
            let reply = format!("HERD-CHALLENGE {} {shown}", acceptor_nonce.hex());
            HelloCheck::Challenge {
                challenge: Challenge {
                    from: from.to_string(),
                    connector_nonce,
                    acceptor_nonce,
                },
                reply: reply.into_bytes(),
            }
        }
        _ => HelloCheck::Refused,
    }
}

/// Whether a line is a proof at all (whatever its validity).
pub fn is_proof(line: &[u8]) -> bool {
    fields(line).next() == Some(PROOF)
}

/// Checks the connector's answer to `challenge`, received by `me`. A challenge is good for
/// one answer: the caller drops it either way.
pub fn check_proof(line: &[u8], me: &str, auth: &PeerAuth, challenge: &Challenge) -> bool {
    let words: Vec<&[u8]> = fields(line).take(3).collect();
    let [PROOF, shown] = words[..] else {
        return false;
    };
    let nonces = [challenge.connector_nonce, challenge.acceptor_nonce];
    let names = [challenge.from.as_str(), me];
    proof_matches(&auth.secret, Role::Connect, names, nonces, shown)
}

/// The welcome of `name`, saying how far it holds the connector's history (if at all).
pub fn format_welcome(name: &str, held: Option<Mark>) -> Vec<u8> {
    match held {
        None => format!("HERD-WELCOME {name}"),
        Some(mark) => format!("HERD-WELCOME {name} {} {}", mark.epoch, mark.version),
    }
    .into_bytes()
}

/// `HERD-MARK EPOCH VERSION`: the acceptor now holds the history up to VERSION.
pub fn format_mark(epoch: Epoch, version: Version) -> Vec<u8> {
    format!("HERD-MARK {epoch} {version}").into_bytes()
}

pub fn format_digest(whole: u64) -> Vec<u8> {
    format!("HERD-DIGEST {whole:016x}").into_bytes()
}

pub fn format_buckets(buckets: &[u64; BUCKETS]) -> Vec<u8> {
    format!("HERD-BUCKETS {}", digest::format_buckets(buckets)).into_bytes()
}

/// The lines of resync by difference and the periodic check, read by either side.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncLine {
    Mark(Mark),
    Digest(u64),
    Buckets(Box<[u64; BUCKETS]>),
}

/// A `HERD-MARK`, `HERD-DIGEST` or `HERD-BUCKETS` line, or `None` (another line, or one of
/// these malformed).
pub fn parse_sync_line(line: &[u8]) -> Option<SyncLine> {
    // Every AT line of a flood passes here first: it costs them one comparison, no allocation.
    if !line.starts_with(b"HERD-") {
        return None;
    }
    let words: Vec<&[u8]> = fields(line).take(4).collect();
    match words[..] {
        [MARK, epoch, version] => Some(SyncLine::Mark(Mark {
            epoch: Epoch::parse(epoch)?,
            version: parse_version(version)?,
        })),
        [DIGEST, whole] => digest::parse_hex(whole).map(SyncLine::Digest),
        [BUCKETS_WORD, buckets] => digest::parse_buckets(buckets).map(SyncLine::Buckets),
        _ => None,
    }
}

fn parse_version(text: &[u8]) -> Option<Version> {
    if text.is_empty() || text.len() > 20 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The connector's side of a link's handshake: the hello, the answer to a challenge, and
/// what the acceptor's lines come to.
#[derive(Debug)]
pub struct Greeting {
    from: String,
    to: String,
    /// With a secret: it, and the nonce of this connection's hello.
    auth: Option<(Secret, Nonce)>,
    /// The acceptor proved the secret and has our proof: only its welcome may follow.
    proved: bool,
}

/// What one line from the acceptor comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum GreetingStep {
    /// Send this line (our proof) and wait for the welcome.
    Send(Vec<u8>),
    /// The acceptor took us: the link is up. It holds our history up to this mark, if it
    /// can place it.
    Welcomed(Option<Mark>),
    /// Not a neighbour we can take.
    Refused(Refusal),
}

/// Why a connector gave up on a handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The acceptor sent this line (a `? ` refusal, or a line out of turn), proofs redacted.
    Line(Vec<u8>),
    /// The acceptor's challenge carried a proof that does not match the secret.
    NoProof,
    /// The acceptor welcomed us under another name than the config gives it.
    Misnamed(String),
}

impl Greeting {
    /// The handshake of a link from `from` to `to`; with a secret, `auth` takes a nonce.
    pub fn new(from: &str, to: &str, auth: Option<&mut PeerAuth>) -> Greeting {
        Greeting {
            from: from.to_string(),
            to: to.to_string(),
            auth: auth.map(|auth| (auth.secret.clone(), auth.nonces.fresh())),
            proved: false,
        }
    }

    /// The first line of the link.
    pub fn hello(&self) -> Vec<u8> {
        match &self.auth {
            None => format!("HERD-HELLO {}", self.from),
            Some((_, nonce)) => format!("HERD-HELLO {} {}", self.from, nonce.hex()),
        }
        .into_bytes()
    }

    pub fn on_line(&mut self, line: &[u8]) -> GreetingStep {
        let words: Vec<&[u8]> = fields(line).take(5).collect();
        match (&self.auth, &words[..]) {
            (Some((secret, connector_nonce)), [CHALLENGE, nonce, shown]) if !self.proved => {
                let Some(acceptor_nonce) = Nonce::parse(nonce) else {
                    return self.refused(line);
                };
                let nonces = [*connector_nonce, acceptor_nonce];
                let acceptor = [self.to.as_str(), self.from.as_str()];
                if !proof_matches(secret, Role::Accept, acceptor, nonces, shown) {
                    return GreetingStep::Refused(Refusal::NoProof);
                }
                self.proved = true;
                let connector = [self.from.as_str(), self.to.as_str()];
                let ours = proof(secret, Role::Connect, connector, nonces);
                GreetingStep::Send(format!("HERD-PROOF {ours}").into_bytes())
            }
            (None, [WELCOME, ..]) => self.welcomed_by(line, &words),
            (Some(_), [WELCOME, ..]) if self.proved => self.welcomed_by(line, &words),
            _ => self.refused(line),
        }
    }

    /// `HERD-WELCOME NAME [EPOCH VERSION]`, split in words.
    fn welcomed_by(&self, line: &[u8], words: &[&[u8]]) -> GreetingStep {
        let held = match words[1..] {
            [_] => None,
            [_, epoch, version] => match (Epoch::parse(epoch), parse_version(version)) {
                (Some(epoch), Some(version)) => Some(Mark { epoch, version }),
                _ => return self.refused(line),
            },
            _ => return self.refused(line),
        };
        let name = words[1];
        if name == self.to.as_bytes() {
            GreetingStep::Welcomed(held)
        } else {
            GreetingStep::Refused(Refusal::Misnamed(
                String::from_utf8_lossy(name).into_owned(),
            ))
        }
    }

    /// A refusal (`? ` + our line) or a line out of turn, shown as the log may show it.
    fn refused(&self, line: &[u8]) -> GreetingStep {
        GreetingStep::Refused(Refusal::Line(redact_proofs(line).into_owned()))
    }
}

/// Whether a line from a neighbour is a ping (its answer is [`PONG_LINE`]).
pub fn is_ping(line: &[u8]) -> bool {
    let mut words = fields(line);
    words.next() == Some(PING_LINE) && words.next().is_none()
}

/// Whether a line is a keepalive, a ping or its pong: the lines a quiet link carries every
/// `peer ping-ms`, logged only at `log level debug`.
pub fn is_keepalive(line: &[u8]) -> bool {
    let mut words = fields(line);
    matches!(words.next(), Some(PING_LINE | PONG_LINE)) && words.next().is_none()
}

/// Whether a line is a hello at all (whatever its validity).
pub fn is_hello(line: &[u8]) -> bool {
    fields(line).next() == Some(HELLO)
}

/// A handshake line as it may be logged, or echoed in a refusal's reason: every word past
/// those that carry no proof (a hello's name and nonce, a challenge's nonce, nothing of a
/// proof line) is replaced by `<redacted>`, and so is the same line after `? `. Any other line
/// is returned as it is, without allocating (every line of the traffic log passes here).
pub fn redact_proofs(line: &[u8]) -> Cow<'_, [u8]> {
    let (echo, handshake) = match line.strip_prefix(b"? ") {
        Some(echoed) => (&b"? "[..], echoed),
        None => (&b""[..], line),
    };
    let shown_words = match fields(handshake).next() {
        Some(HELLO) => 3,
        Some(CHALLENGE) => 2,
        Some(PROOF) => 1,
        _ => return Cow::Borrowed(line),
    };
    let words: Vec<&[u8]> = fields(handshake).collect();
    if words.len() <= shown_words {
        return Cow::Borrowed(line);
    }
    let mut shown = echo.to_vec();
    for word in &words[..shown_words] {
        shown.extend_from_slice(word);
        shown.push(b' ');
    }
    shown.extend_from_slice(REDACTED);
    Cow::Owned(shown)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 128 {
        return None;
    }
    text.chunks(2)
        .map(|pair| {
            let digits = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(digits, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escape::Escaped;
    use crate::protocol::{self, Invalid, Parsed};

    #[test]
    fn a_client_that_sends_a_line_of_the_links_is_told_so() {
        let words = [
            HELLO,
            CHALLENGE,
            PROOF,
            WELCOME,
            MARK,
            DIGEST,
            BUCKETS_WORD,
            PING_LINE,
            PONG_LINE,
        ];
        for word in words {
            assert!(protocol::is_server_word(word), "{}", Escaped(word));
            let line = [word, b" x"].concat();
            let Parsed::Invalid(why) = protocol::parse_request(&line) else {
                panic!("{} parsed", Escaped(&line));
            };
            assert_eq!(why, Invalid::ServerLine(word));
            let expected = match word {
                PROOF => "HERD-PROOF out of turn",
                _ => "from a client",
            };
            assert!(why.to_string().contains(expected), "{why}");
        }
    }

    fn auth(secret: &str, seed: u8) -> PeerAuth {
        PeerAuth::new(Secret::new(secret.into()), [seed; 32])
    }

    fn neighbours(name: &str) -> bool {
        name == "Bona" || name == "Clark"
    }

    /// Bona's hello to Campbell, Campbell's challenge, Bona's proof: the lines of a handshake
    /// between two servers that share `secret`, and Campbell's challenge state.
    fn handshake(bona: &mut PeerAuth, campbell: &mut PeerAuth) -> (Vec<u8>, Challenge, Vec<u8>) {
        let mut greeting = Greeting::new("Bona", "Campbell", Some(bona));
        let hello = greeting.hello();
        let HelloCheck::Challenge { challenge, reply } =
            check_hello(&hello, "Campbell", Some(campbell), neighbours)
        else {
            panic!("no challenge for {:?}", String::from_utf8_lossy(&hello));
        };
        let GreetingStep::Send(answer) = greeting.on_line(&reply) else {
            panic!("no proof for the challenge");
        };
        (hello, challenge, answer)
    }

    #[test]
    fn a_plain_hello_from_a_neighbour_is_welcomed() {
        let mut greeting = Greeting::new("Bona", "Campbell", None);
        let hello = greeting.hello();
        assert_eq!(hello, b"HERD-HELLO Bona");
        assert_eq!(
            check_hello(&hello, "Campbell", None, neighbours),
            HelloCheck::Welcome("Bona")
        );
        let welcome = format_welcome("Campbell", None);
        assert_eq!(greeting.on_line(&welcome), GreetingStep::Welcomed(None));
    }

    #[test]
    fn a_hello_from_a_stranger_or_out_of_form_is_refused() {
        for line in [
            &b"HERD-HELLO Mallory"[..],
            b"HERD-HELLO",
            b"HERD-HELLO Bona x",
            b"HERD-HELLO Bona 1000 0123",
            b"HELLO Bona",
        ] {
            assert_eq!(
                check_hello(line, "Campbell", None, neighbours),
                HelloCheck::Refused,
                "{line:?}"
            );
        }
    }

    #[test]
    fn with_a_secret_both_sides_prove_it_and_the_connector_is_welcomed() {
        let (mut bona, mut campbell) = (auth("s3cret", 1), auth("s3cret", 2));
        let (hello, challenge, answer) = handshake(&mut bona, &mut campbell);
        assert_eq!(fields(&hello).count(), 3, "a name and a nonce");
        assert_eq!(challenge.from(), "Bona");
        assert!(is_proof(&answer));
        assert!(check_proof(&answer, "Campbell", &campbell, &challenge));
    }

    #[test]
    fn a_captured_hello_and_proof_are_worth_nothing_when_sent_again() {
        let (mut bona, mut campbell) = (auth("s3cret", 1), auth("s3cret", 2));
        let (hello, first, answer) = handshake(&mut bona, &mut campbell);
        assert!(check_proof(&answer, "Campbell", &campbell, &first));
        // Replayed on a new connection, the same hello gets a fresh challenge...
        let HelloCheck::Challenge { challenge, .. } =
            check_hello(&hello, "Campbell", Some(&mut campbell), neighbours)
        else {
            panic!("a hello of the right form is challenged");
        };
        assert_ne!(challenge, first);
        // ...which the captured proof does not answer, here or at another server.
        assert!(!check_proof(&answer, "Campbell", &campbell, &challenge));
        let mut clark = auth("s3cret", 3);
        let HelloCheck::Challenge { challenge, .. } =
            check_hello(&hello, "Clark", Some(&mut clark), |n| n == "Bona")
        else {
            panic!("a hello of the right form is challenged");
        };
        assert!(!check_proof(&answer, "Clark", &clark, &challenge));
    }

    #[test]
    fn a_proof_is_for_one_server_one_role_and_one_secret() {
        let (mut bona, mut campbell) = (auth("s3cret", 1), auth("s3cret", 2));
        let (_, challenge, answer) = handshake(&mut bona, &mut campbell);
        // Not at another server holding the same challenge.
        assert!(!check_proof(&answer, "Clark", &campbell, &challenge));
        // Not with another secret.
        let other = auth("other", 2);
        assert!(!check_proof(&answer, "Campbell", &other, &challenge));
        // The acceptor's own proof, reflected back as the connector's, is refused.
        let mut greeting = Greeting::new("Bona", "Campbell", Some(&mut bona));
        let HelloCheck::Challenge { challenge, reply } = check_hello(
            &greeting.hello(),
            "Campbell",
            Some(&mut campbell),
            neighbours,
        ) else {
            panic!("challenged");
        };
        let reflected = [PROOF, b" ", fields(&reply).nth(2).unwrap()].concat();
        assert!(!check_proof(&reflected, "Campbell", &campbell, &challenge));
        assert!(matches!(greeting.on_line(&reply), GreetingStep::Send(_)));
        // Tampered or malformed proofs.
        for bad in [
            &b"HERD-PROOF"[..],
            b"HERD-PROOF zz",
            b"HERD-PROOF 00 00",
            b"PROOF 00",
        ] {
            assert!(
                !check_proof(bad, "Campbell", &campbell, &challenge),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_acceptor_that_cannot_prove_the_secret_is_refused_before_our_proof_leaves() {
        let (mut bona, mut impostor) = (auth("s3cret", 1), auth("guess", 2));
        let mut greeting = Greeting::new("Bona", "Campbell", Some(&mut bona));
        let HelloCheck::Challenge { reply, .. } = check_hello(
            &greeting.hello(),
            "Campbell",
            Some(&mut impostor),
            neighbours,
        ) else {
            panic!("challenged");
        };
        assert_eq!(
            greeting.on_line(&reply),
            GreetingStep::Refused(Refusal::NoProof)
        );
    }

    #[test]
    fn the_secret_settings_must_agree() {
        let mut campbell = auth("s3cret", 2);
        // A plain hello where a secret is set, and a nonce where none is.
        assert_eq!(
            check_hello(
                b"HERD-HELLO Bona",
                "Campbell",
                Some(&mut campbell),
                neighbours
            ),
            HelloCheck::Refused
        );
        let mut bona = auth("s3cret", 1);
        let hello = Greeting::new("Bona", "Campbell", Some(&mut bona)).hello();
        assert_eq!(
            check_hello(&hello, "Campbell", None, neighbours),
            HelloCheck::Refused
        );
        // A welcome without a challenge first is not taken when we hold a secret.
        let mut greeting = Greeting::new("Bona", "Campbell", Some(&mut bona));
        assert!(matches!(
            greeting.on_line(b"HERD-WELCOME Campbell"),
            GreetingStep::Refused(Refusal::Line(_))
        ));
    }

    #[test]
    fn a_refusal_or_a_stray_line_ends_the_greeting_with_proofs_redacted() {
        let mut bona = auth("s3cret", 1);
        let mut greeting = Greeting::new("Bona", "Campbell", Some(&mut bona));
        assert_eq!(
            greeting.on_line(b"? HERD-PROOF 0123abcd"),
            GreetingStep::Refused(Refusal::Line(b"? HERD-PROOF <redacted>".to_vec()))
        );
        let mut plain = Greeting::new("Bona", "Campbell", None);
        assert_eq!(
            plain.on_line(b"HERD-WELCOME Clark"),
            GreetingStep::Refused(Refusal::Misnamed("Clark".into()))
        );
        assert_eq!(
            plain.on_line(b"? HERD-HELLO Bona"),
            GreetingStep::Refused(Refusal::Line(b"? HERD-HELLO Bona".to_vec()))
        );
    }

    #[test]
    fn proofs_are_redacted_and_other_lines_kept() {
        let cases: [(&[u8], &[u8]); 8] = [
            (b"HERD-HELLO Bona 00ff", b"HERD-HELLO Bona 00ff"),
            (
                b"HERD-HELLO Bona 1000 0123abcd",
                b"HERD-HELLO Bona 1000 <redacted>",
            ),
            (
                b"HERD-CHALLENGE 00ff 0123abcd",
                b"HERD-CHALLENGE 00ff <redacted>",
            ),
            (b"HERD-PROOF 0123abcd", b"HERD-PROOF <redacted>"),
            (b"? HERD-PROOF 0123abcd", b"? HERD-PROOF <redacted>"),
            (b"? HERD-CHALLENGE a b c", b"? HERD-CHALLENGE a <redacted>"),
            (b"IAMAT a b c", b"IAMAT a b c"),
            (b"? IAMAT a", b"? IAMAT a"),
        ];
        for (line, shown) in cases {
            assert_eq!(&*redact_proofs(line), shown, "{line:?}");
        }
        assert!(matches!(redact_proofs(b"AT x"), Cow::Borrowed(_)));
    }

    #[test]
    fn nonces_are_fresh_and_read_strictly() {
        let mut nonces = Nonces::new([7; 32]);
        let (a, b) = (nonces.fresh(), nonces.fresh());
        assert_ne!(a, b);
        assert_ne!(
            Nonces::new([8; 32]).fresh(),
            a,
            "another seed, other nonces"
        );
        assert_eq!(Nonce::parse(a.hex().as_bytes()), Some(a));
        assert_eq!(Nonce::parse(b"00ff"), None);
        assert_eq!(Nonce::parse(&[b'g'; 32]), None);
    }

    #[test]
    fn ping_detection() {
        assert!(is_ping(PING_LINE));
        assert!(is_ping(b"HERD-PING "));
        assert!(!is_ping(b"HERD-PING x"));
        assert!(!is_ping(b"HERD-PONG"));
        for keepalive in [PING_LINE, PONG_LINE, b"HERD-PING ", b"  HERD-PONG\t"] {
            assert!(is_keepalive(keepalive), "{keepalive:?}");
        }
        for other in [
            &b"HERD-PING x"[..],
            b"HERD-PONGS",
            b"AT HERD-PING",
            b"",
            b"? HERD-PONG",
        ] {
            assert!(!is_keepalive(other), "{other:?}");
        }
    }

    #[test]
    fn hello_detection() {
        assert!(is_hello(b"  HERD-HELLO x"));
        assert!(!is_hello(b"HELLO x"));
    }
}
