//! The lines servers exchange on a link (SPEC section 3 leaves the format to us; README.md
//! documents it):
//!
//! ```text
//! HERD-HELLO FROM [SECS MAC]   connector -> acceptor, first line of a link
//! HERD-WELCOME NAME            acceptor -> connector, the hello was accepted
//! AT SERVER DIFF CLIENT LOCATION TIME
//!                              connector -> acceptor, one location update (SPEC's AT line)
//! HERD-PING                    connector -> acceptor, when the link has been quiet
//! HERD-PONG                    acceptor -> connector, the answer: the neighbour is alive
//! ```
//!
//! With a shared secret, `MAC` is hex HMAC-SHA256(secret, "FROM TO SECS") and `SECS` the
//! connector's Unix time, accepted within [`HELLO_MAX_SKEW_SECS`]: the secret never crosses the
//! wire and a hello made for one server is useless at another.
//!
//! Pure: formatting and checking only.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::protocol::fields;
use crate::secret::Secret;

pub const HELLO: &[u8] = b"HERD-HELLO";
pub const WELCOME: &[u8] = b"HERD-WELCOME";
/// Every line here is without its terminator: the one function that sends a line adds it.
pub const PING_LINE: &[u8] = b"HERD-PING";
pub const PONG_LINE: &[u8] = b"HERD-PONG";
/// Longest line a link reads from its neighbour (a welcome, a pong); an AT line from a
/// neighbour is bounded by the client line limit instead.
pub const MAX_REPLY_LINE_BYTES: usize = 4096;
/// How far a hello's time may be from the acceptor's clock.
pub const HELLO_MAX_SKEW_SECS: i64 = 60;

type HmacSha256 = Hmac<Sha256>;

/// The first line of a link from `from` to `to`.
pub fn format_hello(from: &str, to: &str, secret: Option<&Secret>, now_secs: i64) -> Vec<u8> {
    let line = match secret {
        None => format!("HERD-HELLO {from}"),
        Some(secret) => {
            let mac = hello_mac(secret, from.as_bytes(), to.as_bytes(), now_secs);
            format!("HERD-HELLO {from} {now_secs} {}", hex(&mac))
        }
    };
    line.into_bytes()
}

pub fn format_welcome(name: &str) -> Vec<u8> {
    format!("HERD-WELCOME {name}").into_bytes()
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

/// Checks a hello received by `me`: returns the neighbour's name when `is_neighbour` accepts
/// it and, with a secret, when its proof is valid and fresh.
pub fn check_hello<'a>(
    line: &'a [u8],
    me: &str,
    secret: Option<&Secret>,
    now_secs: i64,
    is_neighbour: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    let mut words = fields(line);
    if words.next()? != HELLO {
        return None;
    }
    let from = std::str::from_utf8(words.next()?).ok()?;
    if !is_neighbour(from) {
        return None;
    }
    let proof = (words.next(), words.next(), words.next());
    match (secret, proof) {
        (None, (None, None, None)) => Some(from),
        (Some(secret), (Some(secs), Some(mac), None)) => {
            let secs: i64 = std::str::from_utf8(secs).ok()?.parse().ok()?;
            // In u64: a time from the line some 2^63 away from ours must not overflow.
            if now_secs.abs_diff(secs) > HELLO_MAX_SKEW_SECS.unsigned_abs() {
                return None;
            }
            let mac = unhex(mac)?;
            let mut expected = keyed(secret);
            expected.update(&hello_message(from.as_bytes(), me.as_bytes(), secs));
            expected.verify_slice(&mac).ok()?;
            Some(from)
        }
        _ => None,
    }
}

/// A hello as it may be logged: its proof replaced, since a proof replayed to the same server
/// within the skew window would be accepted. Any other line is returned as it is.
pub fn redact_hello(line: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !is_hello(line) {
        return std::borrow::Cow::Borrowed(line); // every client line comes here: no allocation
    }
    let words: Vec<&[u8]> = fields(line).collect();
    match words.as_slice() {
        [HELLO, from, secs, _mac, ..] => {
            let mut shown = Vec::with_capacity(line.len());
            for part in [HELLO, from, secs] {
                shown.extend_from_slice(part);
                shown.push(b' ');
            }
            shown.extend_from_slice(b"<redacted>");
            std::borrow::Cow::Owned(shown)
        }
        _ => std::borrow::Cow::Borrowed(line),
    }
}

/// The name in a welcome line.
pub fn parse_welcome(line: &[u8]) -> Option<&[u8]> {
    let mut words = fields(line);
    if words.next()? != WELCOME {
        return None;
    }
    let name = words.next()?;
    words.next().is_none().then_some(name)
}

fn keyed(secret: &Secret) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    HmacSha256::new_from_slice(secret.expose().as_bytes()).expect("HMAC accepts any key length")
}

fn hello_message(from: &[u8], to: &[u8], secs: i64) -> Vec<u8> {
    let mut message = Vec::with_capacity(from.len() + to.len() + 24);
    message.extend_from_slice(from);
    message.push(b' ');
    message.extend_from_slice(to);
    message.extend_from_slice(format!(" {secs}").as_bytes());
    message
}

fn hello_mac(secret: &Secret, from: &[u8], to: &[u8], secs: i64) -> Vec<u8> {
    let mut mac = keyed(secret);
    mac.update(&hello_message(from, to, secs));
    mac.finalize().into_bytes().to_vec()
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

    fn secret() -> Secret {
        Secret::new("s3cret".into())
    }

    fn neighbours(name: &str) -> bool {
        name == "Bona" || name == "Clark"
    }

    #[test]
    fn a_plain_hello_from_a_neighbour_is_accepted() {
        let hello = format_hello("Bona", "Campbell", None, 0);
        assert_eq!(hello, b"HERD-HELLO Bona");
        let line = &hello[..];
        assert_eq!(
            check_hello(line, "Campbell", None, 0, neighbours),
            Some("Bona")
        );
    }

    #[test]
    fn a_hello_from_a_stranger_is_refused() {
        assert_eq!(
            check_hello(b"HERD-HELLO Mallory", "Campbell", None, 0, neighbours),
            None
        );
        assert_eq!(
            check_hello(b"HERD-HELLO", "Campbell", None, 0, neighbours),
            None
        );
        assert_eq!(
            check_hello(b"HERD-HELLO Bona x", "Campbell", None, 0, neighbours),
            None
        );
    }

    #[test]
    fn with_a_secret_the_proof_is_checked() {
        let s = secret();
        let hello = format_hello("Bona", "Campbell", Some(&s), 1000);
        let line = &hello[..];
        assert_eq!(
            check_hello(line, "Campbell", Some(&s), 1010, neighbours),
            Some("Bona")
        );
        // not for another server
        assert_eq!(check_hello(line, "Clark", Some(&s), 1010, neighbours), None);
        // not too old or from the future
        assert_eq!(
            check_hello(line, "Campbell", Some(&s), 1061, neighbours),
            None
        );
        assert_eq!(
            check_hello(line, "Campbell", Some(&s), 939, neighbours),
            None
        );
        // not with another secret
        let other = Secret::new("other".into());
        assert_eq!(
            check_hello(line, "Campbell", Some(&other), 1000, neighbours),
            None
        );
        // not without a proof
        assert_eq!(
            check_hello(b"HERD-HELLO Bona", "Campbell", Some(&s), 1000, neighbours),
            None
        );
    }

    #[test]
    fn a_tampered_mac_is_refused() {
        let s = secret();
        let mut hello = format_hello("Bona", "Campbell", Some(&s), 1000);
        hello.pop();
        let last = hello.len() - 1;
        hello[last] = if hello[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            check_hello(&hello, "Campbell", Some(&s), 1000, neighbours),
            None
        );
        assert_eq!(
            check_hello(
                b"HERD-HELLO Bona 1000 zz",
                "Campbell",
                Some(&s),
                1000,
                neighbours
            ),
            None
        );
    }

    #[test]
    fn welcome_round_trip() {
        let welcome = format_welcome("Campbell");
        assert_eq!(parse_welcome(&welcome), Some(&b"Campbell"[..]));
        assert_eq!(parse_welcome(b"? HERD-HELLO Bona"), None);
        assert_eq!(parse_welcome(b"HERD-WELCOME a b"), None);
    }

    #[test]
    fn a_hello_is_logged_without_its_proof() {
        let hello = format_hello("Bona", "Campbell", Some(&secret()), 1000);
        let mac = String::from_utf8(hello.clone()).unwrap();
        let mac = mac.rsplit(' ').next().unwrap().to_string();
        let shown = redact_hello(&hello);
        assert_eq!(&*shown, b"HERD-HELLO Bona 1000 <redacted>");
        assert!(!String::from_utf8_lossy(&shown).contains(&mac));
        assert_eq!(&*redact_hello(b"HERD-HELLO Bona"), b"HERD-HELLO Bona");
        assert_eq!(&*redact_hello(b"IAMAT a b c"), b"IAMAT a b c");
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
