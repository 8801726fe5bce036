//! The client protocol of SPEC section 2: splitting a line into fields, parsing IAMAT and
//! WHATSAT, exact client times, and formatting AT and `? ` replies. A line that is not a valid
//! command is [`Parsed::Invalid`] with the reason ([`Invalid`]): which field, what is wrong
//! with it, what is allowed. The reply does not carry it (`? ` + the line, nothing more); the
//! log does.
//!
//! Pure: no sockets, no clock. Lines are bytes (not necessarily UTF-8); every field handed back
//! borrows from the line, so parsing allocates nothing, valid or not.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Range;

use crate::escape::Escaped;

/// The six bytes that separate fields (SPEC section 2). Anything else, U+00A0 included, belongs
/// to a field.
pub fn is_field_separator(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n' | 0x0c | 0x0b)
}

/// The fields of a line: runs of non-separator bytes, leading and trailing white space ignored.
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| is_field_separator(b))
        .filter(|field| !field.is_empty())
}

/// Splits a line into exactly `N` fields, or `None` when it has another count.
fn exact_fields<const N: usize>(line: &[u8]) -> Option<[&[u8]; N]> {
    counted_fields(line).ok()
}

/// Splits a line into exactly `N` fields, or says how many it has.
fn counted_fields<const N: usize>(line: &[u8]) -> Result<[&[u8]; N], usize> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut iter = fields(line);
    for (count, slot) in out.iter_mut().enumerate() {
        *slot = iter.next().ok_or(count)?;
    }
    match iter.next() {
        Some(_) => Err(N + 1 + iter.count()),
        None => Ok(out),
    }
}

/// A POSIX time as the client wrote it, kept exactly: whole seconds plus nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientTime {
    pub secs: i64,
    pub nanos: u32,
}

impl ClientTime {
    /// Digits, then optionally `.` and 1 to 9 digits. No sign, no exponent, no `nan`/`inf`.
    pub fn parse(field: &[u8]) -> Option<ClientTime> {
        ClientTime::check(field).ok()
    }

    /// [`ClientTime::parse`], saying what is wrong with a field that is not a time.
    pub fn check(field: &[u8]) -> Result<ClientTime, TimeFault> {
        let (whole, fraction) = split_decimal(field).ok_or(TimeFault::Malformed)?;
        if fraction.is_some_and(|f| f.len() > 9) {
            return Err(TimeFault::Malformed);
        }
        let secs = parse_digits_i64(whole).ok_or(TimeFault::TooLarge)?;
        let mut nanos = 0u32;
        let fraction = fraction.unwrap_or(&[]);
        for i in 0..9 {
            let digit = fraction.get(i).map_or(0, |d| u32::from(d - b'0'));
            nanos = nanos * 10 + digit;
        }
        Ok(ClientTime { secs, nanos })
    }

    pub fn as_nanos(self) -> i128 {
        i128::from(self.secs) * 1_000_000_000 + i128::from(self.nanos)
    }
}

/// Splits `digits[.digits]` into its whole and fractional digit runs; both must be non-empty
/// and contain only ASCII digits.
fn split_decimal(field: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (whole, fraction) = match field.iter().position(|&b| b == b'.') {
        Some(dot) => (&field[..dot], Some(&field[dot + 1..])),
        None => (field, None),
    };
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !all_digits(whole) || fraction.is_some_and(|f| !all_digits(f)) {
        return None;
    }
    Some((whole, fraction))
}

fn parse_digits_i64(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0i64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(i64::from(d - b'0'))
    })
}

/// Whether the decimal `whole.fraction` is at most `limit`, compared exactly (no float).
fn decimal_at_most(whole: &[u8], fraction: Option<&[u8]>, limit: u32) -> bool {
    let significant = match whole.iter().position(|&d| d != b'0') {
        Some(first) => &whole[first..],
        None => &[][..],
    };
    if significant.len() > 10 {
        return false;
    }
    let value = significant
        .iter()
        .fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
    let fraction_is_zero = fraction.is_none_or(|f| f.iter().all(|&d| d == b'0'));
    match value.cmp(&u64::from(limit)) {
        Ordering::Less => true,
        Ordering::Equal => fraction_is_zero,
        Ordering::Greater => false,
    }
}

fn decimal_is_zero(whole: &[u8], fraction: Option<&[u8]>) -> bool {
    whole.iter().all(|&d| d == b'0') && fraction.is_none_or(|f| f.iter().all(|&d| d == b'0'))
}

/// A location in ISO 6709 decimal degrees, e.g. `+34.068930-118.445127`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Location {
    pub latitude: f64,
    pub longitude: f64,
}

impl Location {
    /// Two signed decimals, latitude then longitude, each within its range (checked exactly).
    pub fn parse(field: &[u8]) -> Option<Location> {
        let (latitude, longitude) = split_location(field).ok()?;
        Some(Location {
            latitude: to_f64(latitude)?,
            longitude: to_f64(longitude)?,
        })
    }

    /// The same check as [`Location::parse`] without computing the numbers: IAMAT and peer
    /// updates only validate a location and copy it as written, and float parsing was a fifth
    /// of the work of an IAMAT.
    pub fn is_valid(field: &[u8]) -> bool {
        split_location(field).is_ok()
    }

    /// [`Location::is_valid`], saying what is wrong with a field that is not a location.
    pub fn check(field: &[u8]) -> Result<(), LocationFault<'_>> {
        split_location(field).map(|_| ())
    }
}

/// Splits a valid location into its signed latitude and longitude texts: the latitude runs
/// from the first byte to the next sign.
fn split_location(field: &[u8]) -> Result<(&[u8], &[u8]), LocationFault<'_>> {
    let split = field
        .get(1..)
        .and_then(|rest| rest.iter().position(|&b| b == b'+' || b == b'-'))
        .ok_or(LocationFault::NotTwoParts)?;
    let (latitude, longitude) = field.split_at(1 + split);
    signed_degrees_within(latitude, 90)
        .map_err(|fault| LocationFault::Latitude(latitude, fault))?;
    signed_degrees_within(longitude, 180)
        .map_err(|fault| LocationFault::Longitude(longitude, fault))?;
    Ok((latitude, longitude))
}

fn signed_degrees_within(field: &[u8], limit: u32) -> Result<(), NumberFault> {
    let Some((&(b'+' | b'-'), magnitude)) = field.split_first() else {
        return Err(NumberFault::Malformed);
    };
    let (whole, fraction) = split_decimal(magnitude).ok_or(NumberFault::Malformed)?;
    if decimal_at_most(whole, fraction, limit) {
        Ok(())
    } else {
        Err(NumberFault::OutOfRange)
    }
}

fn to_f64(signed_decimal: &[u8]) -> Option<f64> {
    std::str::from_utf8(signed_decimal).ok()?.parse().ok()
}

/// A WHATSAT radius: `digits[.digits]` km with 0 < radius <= 50.
#[derive(Clone, Debug, PartialEq)]
pub struct Radius {
    pub metres: f64,
}

impl Radius {
    pub const MAX_KM: u32 = 50;

    pub fn parse(field: &[u8]) -> Option<Radius> {
        Radius::check(field).ok()
    }

    /// [`Radius::parse`], saying what is wrong with a field that is not a radius.
    pub fn check(field: &[u8]) -> Result<Radius, NumberFault> {
        let (whole, fraction) = split_decimal(field).ok_or(NumberFault::Malformed)?;
        if decimal_is_zero(whole, fraction) || !decimal_at_most(whole, fraction, Self::MAX_KM) {
            return Err(NumberFault::OutOfRange);
        }
        // km -> m by moving the decimal point three places, so 1.1 km is exactly 1100 m
        // rather than 1100.0000000000002 through a float multiplication.
        let fraction = fraction.unwrap_or(&[]);
        let mut metres = String::with_capacity(whole.len() + fraction.len() + 4);
        metres.extend(whole.iter().map(|&d| char::from(d)));
        for i in 0..3 {
            metres.push(fraction.get(i).map_or('0', |&d| char::from(d)));
        }
        if fraction.len() > 3 {
            metres.push('.');
            metres.extend(fraction[3..].iter().map(|&d| char::from(d)));
        }
        // Digits with at most one `.`: always a valid float.
        let metres = metres.parse().map_err(|_| NumberFault::Malformed)?;
        Ok(Radius { metres })
    }
}

/// The most results a WHATSAT may ask for.
pub const MAX_BOUND: u8 = 20;

fn parse_bound(field: &[u8]) -> Result<u8, NumberFault> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return Err(NumberFault::Malformed);
    }
    match parse_digits_i64(field) {
        Some(value) if (1..=i64::from(MAX_BOUND)).contains(&value) => Ok(value as u8),
        _ => Err(NumberFault::OutOfRange),
    }
}

/// A valid client command. Fields borrow from the line.
#[derive(Clone, Debug, PartialEq)]
pub enum Request<'a> {
    IAmAt {
        client: &'a [u8],
        location: &'a [u8],
        time: &'a [u8],
        client_time: ClientTime,
    },
    WhatsAt {
        client: &'a [u8],
        radius: Radius,
        bound: u8,
    },
}

/// What a client line is.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed<'a> {
    /// Nothing but white space: no reply (SPEC section 2).
    Blank,
    Request(Request<'a>),
    /// Anything else: answered `? ` + the line; the reason goes to the log.
    Invalid(Invalid<'a>),
}

/// Parses one client line (without its terminator).
pub fn parse_request(line: &[u8]) -> Parsed<'_> {
    let Some(command) = fields(line).next() else {
        return Parsed::Blank;
    };
    let request = match command {
        b"IAMAT" => parse_iamat(line),
        b"WHATSAT" => parse_whatsat(line),
        _ if is_server_word(command) => Err(Invalid::ServerLine(command)),
        _ => Err(Invalid::UnknownCommand(command)),
    };
    match request {
        Ok(request) => Parsed::Request(request),
        Err(why) => Parsed::Invalid(why),
    }
}

/// The first word of every line servers exchange on a link but an AT line (`peer_wire`'s
/// words all begin with it).
const SERVER_WORD_PREFIX: &[u8] = b"HERD-";
/// The word of the connector's answer to a challenge (`peer_wire::PROOF`), which a client's
/// connection is told it sent out of turn.
const PROOF_WORD: &[u8] = b"HERD-PROOF";

/// Whether `word` begins a line servers exchange on a link: an AT line, or one of `peer_wire`'s
/// `HERD-` lines.
pub fn is_server_word(word: &[u8]) -> bool {
    word == b"AT" || word.starts_with(SERVER_WORD_PREFIX)
}

fn parse_iamat(line: &[u8]) -> Result<Request<'_>, Invalid<'_>> {
    let [_, client, location, time] =
        counted_fields::<4>(line).map_err(|fields| Invalid::FieldCount {
            command: Command::IAmAt,
            fields,
        })?;
    Location::check(location).map_err(|fault| Invalid::Location(location, fault))?;
    let client_time = ClientTime::check(time).map_err(|fault| Invalid::Time(time, fault))?;
    Ok(Request::IAmAt {
        client,
        location,
        time,
        client_time,
    })
}

fn parse_whatsat(line: &[u8]) -> Result<Request<'_>, Invalid<'_>> {
    let [_, client, radius, bound] =
        counted_fields::<4>(line).map_err(|fields| Invalid::FieldCount {
            command: Command::WhatsAt,
            fields,
        })?;
    Ok(Request::WhatsAt {
        client,
        radius: Radius::check(radius).map_err(|fault| Invalid::Radius(radius, fault))?,
        bound: parse_bound(bound).map_err(|fault| Invalid::Bound(bound, fault))?,
    })
}

/// A client command, as a reason names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    IAmAt,
    WhatsAt,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::IAmAt => "IAMAT",
            Command::WhatsAt => "WHATSAT",
        }
    }

    /// The command's form, as a reason shows what is allowed.
    fn form(self) -> &'static str {
        match self {
            Command::IAmAt => "IAMAT CLIENT LOCATION TIME",
            Command::WhatsAt => "WHATSAT CLIENT RADIUS BOUND",
        }
    }
}

/// What is wrong with a number: not written as the protocol writes it, or outside its range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberFault {
    Malformed,
    OutOfRange,
}

/// What is wrong with a time field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeFault {
    /// Not digits with an optional `.` and 1 to 9 digits.
    Malformed,
    /// Written right, but more seconds than a time holds (`i64`).
    TooLarge,
}

/// What is wrong with a location field; a part is named by its text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationFault<'a> {
    /// No second sign after the first byte: not a latitude and a longitude.
    NotTwoParts,
    Latitude(&'a [u8], NumberFault),
    Longitude(&'a [u8], NumberFault),
}

/// Why a client line is not a valid command: the reason the log gives for its `? ` (the
/// protocol's "Anything else"). Fields borrow from the line, so making one allocates nothing;
/// its [`Display`](fmt::Display) names the field, says what is wrong and what is allowed, and
/// shows every byte of the line escaped as the log escapes network bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid<'a> {
    /// The first field is not a command (`iamat` included: commands are upper case).
    UnknownCommand(&'a [u8]),
    /// The first word of a line servers exchange on a link (`AT`, `HERD-PROOF`, ...), sent
    /// by a client or out of its turn.
    ServerLine(&'a [u8]),
    /// A command with another number of fields than its form has (`fields` counts them all,
    /// the command's own included).
    FieldCount {
        command: Command,
        fields: usize,
    },
    Location(&'a [u8], LocationFault<'a>),
    Time(&'a [u8], TimeFault),
    Radius(&'a [u8], NumberFault),
    Bound(&'a [u8], NumberFault),
}

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use NumberFault::{Malformed, OutOfRange};
        const SIGNED: &str = "a sign, digits, optionally . and digits";
        match *self {
            Invalid::UnknownCommand(word) => write!(
                f,
                "unknown command '{}' (IAMAT or WHATSAT, upper case)",
                Escaped(word)
            ),
            Invalid::ServerLine(word) if word == PROOF_WORD => write!(
                f,
                "{} out of turn: it answers a challenge, and this connection has none pending",
                Escaped(word)
            ),
            Invalid::ServerLine(word) => write!(
                f,
                "{} from a client: a line servers exchange on a link, not a client command \
                 (IAMAT or WHATSAT)",
                Escaped(word)
            ),
            Invalid::FieldCount { command, fields } => write!(
                f,
                "invalid {}: {fields} field{}, {} takes 4 ({})",
                command.name(),
                if fields == 1 { "" } else { "s" },
                command.name(),
                command.form()
            ),
            Invalid::Location(location, LocationFault::NotTwoParts) => write!(
                f,
                "invalid IAMAT: location {} is not a latitude and a longitude \
                 (ISO 6709, each signed: +34.068930-118.445127)",
                Escaped(location)
            ),
            Invalid::Location(_, LocationFault::Latitude(part, Malformed)) => write!(
                f,
                "invalid IAMAT: latitude {} is not a signed decimal ({SIGNED})",
                Escaped(part)
            ),
            Invalid::Location(_, LocationFault::Latitude(part, OutOfRange)) => write!(
                f,
                "invalid IAMAT: latitude {} is out of range (-90 to +90)",
                Escaped(part)
            ),
            Invalid::Location(_, LocationFault::Longitude(part, Malformed)) => write!(
                f,
                "invalid IAMAT: longitude {} is not a signed decimal ({SIGNED}; \
                 nothing after it)",
                Escaped(part)
            ),
            Invalid::Location(_, LocationFault::Longitude(part, OutOfRange)) => write!(
                f,
                "invalid IAMAT: longitude {} is out of range (-180 to +180)",
                Escaped(part)
            ),
            Invalid::Time(time, TimeFault::Malformed) => write!(
                f,
                "invalid IAMAT: time {} is not POSIX seconds \
                 (digits, optionally . and 1 to 9 digits)",
                Escaped(time)
            ),
            Invalid::Time(time, TimeFault::TooLarge) => write!(
                f,
                "invalid IAMAT: time {} is too large (at most {} seconds)",
                Escaped(time),
                i64::MAX
            ),
            Invalid::Radius(radius, Malformed) => write!(
                f,
                "invalid WHATSAT: radius {} is not a number of km \
                 (digits, optionally . and digits)",
                Escaped(radius)
            ),
            Invalid::Radius(radius, OutOfRange) => write!(
                f,
                "invalid WHATSAT: radius {} is out of range (0 < km <= {})",
                Escaped(radius),
                Radius::MAX_KM
            ),
            Invalid::Bound(bound, Malformed) => write!(
                f,
                "invalid WHATSAT: bound {} is not a whole number (1 to {MAX_BOUND})",
                Escaped(bound)
            ),
            Invalid::Bound(bound, OutOfRange) => write!(
                f,
                "invalid WHATSAT: bound {} is out of range (1 to {MAX_BOUND})",
                Escaped(bound)
            ),
        }
    }
}

/// `? ` + the line as received (without a terminator, like every line handed to be sent).
pub fn format_invalid(line: &[u8]) -> Vec<u8> {
    let mut reply = Vec::with_capacity(line.len() + 3);
    reply.extend_from_slice(b"? ");
    reply.extend_from_slice(line);
    reply
}

/// A signed time difference in nanoseconds as `+S.NNNNNNNNN` (always a sign, 9 digits).
pub fn format_time_diff(diff_nanos: i128, out: &mut Vec<u8>) {
    out.push(if diff_nanos < 0 { b'-' } else { b'+' });
    let magnitude = diff_nanos.unsigned_abs();
    // Whole seconds fit in u64: a client time is at most i64::MAX seconds.
    push_decimal(
        out,
        u64::try_from(magnitude / 1_000_000_000).unwrap_or(u64::MAX),
    );
    out.push(b'.');
    // Exactly nine digits, leading zeros kept. (Hand-rolled: this runs for every IAMAT and
    // `fmt` machinery was a tenth of the work.)
    let mut fraction = magnitude % 1_000_000_000;
    let mut digits = [b'0'; 9];
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    out.extend_from_slice(&digits);
}

/// Appends `value` in decimal.
fn push_decimal(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(decimal(value, &mut [0; MAX_DECIMAL_DIGITS]));
}

/// Digits of the largest `u64`.
pub const MAX_DECIMAL_DIGITS: usize = 20;

/// `value` in decimal, written into the tail of `buf`. Hand-rolled: it runs for every IAMAT
/// and every traffic record, where `fmt` machinery was a tenth of the work.
pub fn decimal(mut value: u64, buf: &mut [u8; MAX_DECIMAL_DIGITS]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &buf[start..];
        }
    }
}

/// Parses `+S.NNNNNNNNN` back into nanoseconds (the exact inverse of [`format_time_diff`]).
pub fn parse_time_diff(field: &[u8]) -> Option<i128> {
    let (&sign, magnitude) = field.split_first()?;
    let negative = match sign {
        b'+' => false,
        b'-' => true,
        _ => return None,
    };
    let (_, fraction) = split_decimal(magnitude)?;
    if fraction?.len() != 9 {
        return None;
    }
    let nanos = ClientTime::parse(magnitude)?.as_nanos();
    Some(if negative { -nanos } else { nanos })
}

/// The AT line a server makes for an IAMAT it took (without `\n`):
/// `AT SERVER DIFF CLIENT LOCATION TIME`.
pub fn format_at_line(
    server: &[u8],
    diff_nanos: i128,
    client: &[u8],
    location: &[u8],
    time: &[u8],
) -> Vec<u8> {
    let mut line =
        Vec::with_capacity(3 + server.len() + 22 + client.len() + location.len() + time.len() + 4);
    line.extend_from_slice(b"AT ");
    line.extend_from_slice(server);
    line.push(b' ');
    format_time_diff(diff_nanos, &mut line);
    for field in [client, location, time] {
        line.push(b' ');
        line.extend_from_slice(field);
    }
    line
}

/// An AT line ready to store: the line (single spaces between fields), where the client id
/// sits in it, and the client time it carries.
#[derive(Clone, Debug, PartialEq)]
pub struct AtRecord {
    pub line: Vec<u8>,
    pub client: Range<usize>,
    pub client_time: ClientTime,
}

impl AtRecord {
    /// The record a server makes for an IAMAT it took (fields already validated).
    pub fn new(
        server: &[u8],
        diff_nanos: i128,
        client: &[u8],
        location: &[u8],
        time: &[u8],
        client_time: ClientTime,
    ) -> AtRecord {
        let line = format_at_line(server, diff_nanos, client, location, time);
        // The client id is followed by " LOCATION TIME" at the end of the line.
        let client_end = line.len() - time.len() - location.len() - 2;
        AtRecord {
            line,
            client: client_end - client.len()..client_end,
            client_time,
        }
    }

    /// The canonical record of a parsed AT line (`line` is the text `at` was parsed from;
    /// its time field is copied as written).
    pub fn from_parsed(at: &AtLine<'_>, line: &[u8]) -> AtRecord {
        let time = fields(line).last().unwrap_or_default();
        AtRecord::new(
            at.server,
            at.diff_nanos,
            at.client,
            at.location,
            time,
            at.client_time,
        )
    }

    pub fn client(&self) -> &[u8] {
        &self.line[self.client.clone()]
    }
}

/// The fields of an AT line, borrowed from it.
#[derive(Clone, Debug, PartialEq)]
pub struct AtLine<'a> {
    pub server: &'a [u8],
    pub diff_nanos: i128,
    pub client: &'a [u8],
    pub location: &'a [u8],
    pub client_time: ClientTime,
}

impl<'a> AtLine<'a> {
    /// Parses and validates an AT line as servers exchange them.
    pub fn parse(line: &'a [u8]) -> Option<AtLine<'a>> {
        let [keyword, server, diff, client, location, time] = exact_fields::<6>(line)?;
        if keyword != b"AT" {
            return None;
        }
        if !Location::is_valid(location) {
            return None;
        }
        Some(AtLine {
            server,
            diff_nanos: parse_time_diff(diff)?,
            client,
            location,
            client_time: ClientTime::parse(time)?,
        })
    }

    /// SPEC section 2's total order between two records of one client: a newer client time
    /// wins; on equal times the smaller difference, then the server name sorting first, then
    /// the smaller line (byte order). `Greater` means `self` supersedes `other`.
    pub fn precedence(&self, self_line: &[u8], other: &AtLine<'_>, other_line: &[u8]) -> Ordering {
        self.client_time
            .cmp(&other.client_time)
            .then_with(|| other.diff_nanos.cmp(&self.diff_nanos))
            .then_with(|| other.server.cmp(self.server))
            .then_with(|| other_line.cmp(self_line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iamat(line: &str) -> Request<'_> {
        match parse_request(line.as_bytes()) {
            Parsed::Request(r @ Request::IAmAt { .. }) => r,
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    fn invalid(line: &str) -> bool {
        matches!(parse_request(line.as_bytes()), Parsed::Invalid(_))
    }

    /// The reason the log gives for `line`'s `? `.
    fn why(line: &[u8]) -> String {
        match parse_request(line) {
            Parsed::Invalid(why) => why.to_string(),
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn fields_split_on_the_six_separators_only() {
        let line = b" a\tb\x0bc\x0cd\re\n f\xc2\xa0g  ";
        let got: Vec<&[u8]> = fields(line).collect();
        assert_eq!(got, vec![&b"a"[..], b"b", b"c", b"d", b"e", b"f\xc2\xa0g"]);
    }

    #[test]
    fn blank_lines_are_blank() {
        assert_eq!(parse_request(b""), Parsed::Blank);
        assert_eq!(parse_request(b" \t\x0b\x0c\r "), Parsed::Blank);
    }

    #[test]
    fn iamat_from_the_spec() {
        let r = iamat("IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503");
        assert_eq!(
            r,
            Request::IAmAt {
                client: b"kiwi.cs.ucla.edu",
                location: b"+34.068930-118.445127",
                time: b"1621464827.959498503",
                client_time: ClientTime {
                    secs: 1621464827,
                    nanos: 959498503
                },
            }
        );
    }

    #[test]
    fn iamat_with_extra_white_space_and_crlf_is_valid() {
        iamat("  IAMAT\t\tkiwi  +34-118 \x0b 1621464827 \r");
    }

    #[test]
    fn iamat_wrong_field_counts_are_invalid() {
        assert!(invalid("IAMAT kiwi +34-118"));
        assert!(invalid("IAMAT kiwi +34-118 1 extra"));
        assert!(invalid("IAMAT"));
        assert!(invalid("iamat kiwi +34-118 1"));
    }

    #[test]
    fn client_time_forms() {
        let t = |s: &str| ClientTime::parse(s.as_bytes());
        assert_eq!(
            t("1621464827"),
            Some(ClientTime {
                secs: 1621464827,
                nanos: 0
            })
        );
        assert_eq!(
            t("0.5"),
            Some(ClientTime {
                secs: 0,
                nanos: 500_000_000
            })
        );
        assert_eq!(t("1.000000001"), Some(ClientTime { secs: 1, nanos: 1 }));
        assert_eq!(
            t("1.999999999"),
            Some(ClientTime {
                secs: 1,
                nanos: 999_999_999
            })
        );
        for bad in [
            "1.0000000001",
            "-5",
            "+5",
            "1e9",
            "nan",
            "inf",
            "1.",
            ".5",
            "",
            "1..2",
            "1.2.3",
            "99999999999999999999",
            "１",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn location_ranges_are_exact() {
        let ok = |s: &str| {
            let valid = Location::is_valid(s.as_bytes());
            assert_eq!(valid, Location::parse(s.as_bytes()).is_some(), "{s}");
            valid
        };
        for good in [
            "+34.068930-118.445127",
            "+34-118",
            "+90-180",
            "-90+180",
            "+90.000-180.0000",
            "-0+0",
            "+00090.0-0180",
            "+0.5-0.25",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "+90.0001-118",
            "-90.0000001+0",
            "+34-180.1",
            "+34+181",
            "34-118",
            "+34",
            "+34-",
            "+34.-118",
            "+.5-118",
            "+34-118/",
            "+34-118+10",
            "+34 -118",
            "",
            "+",
            "++34-118",
            "+34-118.",
            "+100-0",
            "+34.5e1-118",
        ] {
            assert!(!ok(bad), "{bad}");
        }
        let l = Location::parse(b"+34.068930-118.445127").unwrap();
        assert_eq!((l.latitude, l.longitude), (34.06893, -118.445127));
    }

    #[test]
    fn radius_and_bound_limits() {
        assert!(matches!(
            parse_request(b"WHATSAT kiwi 10 5"),
            Parsed::Request(Request::WhatsAt { bound: 5, .. })
        ));
        for good in ["50", "50.000", "0.001", "1.5", "0010"] {
            assert!(!invalid(&format!("WHATSAT kiwi {good} 20")), "{good}");
        }
        for bad in [
            "0", "0.0", "50.001", "51", "-1", "abc", "1e1", ".5", "5.", "+5",
        ] {
            assert!(invalid(&format!("WHATSAT kiwi {bad} 5")), "{bad}");
        }
        for bad in ["0", "21", "1.5", "-1", "+1", "99999999999999999999999"] {
            assert!(invalid(&format!("WHATSAT kiwi 10 {bad}")), "{bad}");
        }
        assert!(invalid("WHATSAT kiwi 10"));
        assert!(invalid("WHATSAT kiwi 10 5 5"));
    }

    #[test]
    fn radius_goes_out_in_exact_metres() {
        let m = |s: &str| Radius::parse(s.as_bytes()).unwrap().metres;
        assert_eq!(m("10"), 10000.0);
        assert_eq!(m("1.1"), 1100.0);
        assert_eq!(m("1.5"), 1500.0);
        assert_eq!(m("0.0001"), 0.1);
        assert_eq!(m("50"), 50000.0);
    }

    #[test]
    fn time_diff_formatting_is_exact_and_signed() {
        let f = |n: i128| {
            let mut out = Vec::new();
            format_time_diff(n, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(f(263_873_386), "+0.263873386");
        assert_eq!(f(0), "+0.000000000");
        assert_eq!(f(-1), "-0.000000001");
        assert_eq!(f(-1_500_000_000), "-1.500000000");
        assert_eq!(f(86_400_000_000_001), "+86400.000000001");
        for n in [0, 1, -1, 263_873_386, -99_999_999_999_999] {
            assert_eq!(parse_time_diff(f(n).as_bytes()), Some(n));
        }
    }

    #[test]
    fn decimals() {
        let mut buf = [0u8; MAX_DECIMAL_DIGITS];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(1234567, &mut buf), b"1234567");
        assert_eq!(decimal(u64::MAX, &mut buf), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn difference_is_computed_without_float_rounding() {
        // 1621464828.223371889 - 1621464827.959498503 = 0.263873386 exactly; through f64
        // the nanoseconds of such large times are lost.
        let server = ClientTime::parse(b"1621464828.223371889").unwrap();
        let client = ClientTime::parse(b"1621464827.959498503").unwrap();
        assert_eq!(server.as_nanos() - client.as_nanos(), 263_873_386);
    }

    #[test]
    fn at_line_round_trip() {
        let line = format_at_line(
            b"Campbell",
            263_873_386,
            b"kiwi.cs.ucla.edu",
            b"+34.068930-118.445127",
            b"1621464827.959498503",
        );
        assert_eq!(
            line,
            b"AT Campbell +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503"
        );
        let parsed = AtLine::parse(&line).unwrap();
        assert_eq!(parsed.server, b"Campbell");
        assert_eq!(parsed.diff_nanos, 263_873_386);
        assert_eq!(parsed.client, b"kiwi.cs.ucla.edu");
        assert_eq!(parsed.client_time.nanos, 959_498_503);
    }

    #[test]
    fn at_record_locates_the_client_id() {
        let time = ClientTime::parse(b"1.5").unwrap();
        let record = AtRecord::new(b"Bona", -7, b"kiwi", b"+1-2", b"1.5", time);
        assert_eq!(record.line, b"AT Bona -0.000000007 kiwi +1-2 1.5");
        assert_eq!(record.client(), b"kiwi");
        let line = b"AT  Bona\t+0.000000007 kiwi +1-2 1.5 ";
        let canonical = AtRecord::from_parsed(&AtLine::parse(line).unwrap(), line);
        assert_eq!(canonical.line, b"AT Bona +0.000000007 kiwi +1-2 1.5");
        assert_eq!(canonical.client(), b"kiwi");
        assert_eq!(canonical.client_time, time);
    }

    #[test]
    fn malformed_at_lines_are_rejected() {
        for bad in [
            "AT Campbell 0.263873386 kiwi +34-118 1",
            "AT Campbell +0.26 kiwi +34-118 1",
            "AT Campbell +0.263873386 kiwi +34 1",
            "AT Campbell +0.263873386 kiwi +34-118",
            "at Campbell +0.263873386 kiwi +34-118 1",
        ] {
            assert_eq!(AtLine::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn precedence_follows_the_tie_rule() {
        let rank = |a: &str, b: &str| {
            AtLine::parse(a.as_bytes()).unwrap().precedence(
                a.as_bytes(),
                &AtLine::parse(b.as_bytes()).unwrap(),
                b.as_bytes(),
            )
        };
        let newer = "AT Bona +9.000000000 c +1+1 2";
        let older = "AT Bona +0.000000000 c +1+1 1";
        assert_eq!(rank(newer, older), Ordering::Greater);
        assert_eq!(rank(older, newer), Ordering::Less);
        // equal times: smaller difference wins
        let small = "AT Zeta -1.000000000 c +1+1 5";
        let large = "AT Alfa +1.000000000 c +1+1 5";
        assert_eq!(rank(small, large), Ordering::Greater);
        // then the server name that sorts first
        let alfa = "AT Alfa +1.000000000 c +2+2 5";
        let zeta = "AT Zeta +1.000000000 c +1+1 5";
        assert_eq!(rank(alfa, zeta), Ordering::Greater);
        // then the smaller line
        let a = "AT Alfa +1.000000000 c +1+1 5";
        let b = "AT Alfa +1.000000000 c +2+2 5";
        assert_eq!(rank(a, b), Ordering::Greater);
        // a repeat changes nothing
        assert_eq!(rank(a, a), Ordering::Equal);
    }

    #[test]
    fn unknown_commands_say_which_and_what_is_allowed() {
        assert_eq!(
            why(b"iamat kiwi +34-118 1"),
            "unknown command 'iamat' (IAMAT or WHATSAT, upper case)"
        );
        assert_eq!(
            why(b"  HELLO there"),
            "unknown command 'HELLO' (IAMAT or WHATSAT, upper case)"
        );
        assert_eq!(
            why(b"IAMAT\xc2\xa0kiwi +1+1 1"),
            "unknown command 'IAMAT\\xc2\\xa0kiwi' (IAMAT or WHATSAT, upper case)",
            "a non-breaking space belongs to the field, and is escaped"
        );
        assert_eq!(
            why(b"\x1b[2J x"),
            "unknown command '\\x1b[2J' (IAMAT or WHATSAT, upper case)"
        );
    }

    #[test]
    fn field_counts_count_every_field() {
        assert_eq!(
            why(b"IAMAT kiwi +34.068930 -118.445127 T"),
            "invalid IAMAT: 5 fields, IAMAT takes 4 (IAMAT CLIENT LOCATION TIME)"
        );
        assert_eq!(
            why(b"IAMAT"),
            "invalid IAMAT: 1 field, IAMAT takes 4 (IAMAT CLIENT LOCATION TIME)"
        );
        assert_eq!(
            why(b"WHATSAT kiwi 10"),
            "invalid WHATSAT: 3 fields, WHATSAT takes 4 (WHATSAT CLIENT RADIUS BOUND)"
        );
        assert_eq!(
            why(b"WHATSAT kiwi 10 5 5 5 5"),
            "invalid WHATSAT: 7 fields, WHATSAT takes 4 (WHATSAT CLIENT RADIUS BOUND)"
        );
    }

    #[test]
    fn location_reasons_name_the_part_at_fault() {
        let at = |location: &str| why(format!("IAMAT kiwi {location} 1").as_bytes());
        assert_eq!(
            at("+99-118"),
            "invalid IAMAT: latitude +99 is out of range (-90 to +90)"
        );
        assert_eq!(
            at("-90.0000001+0"),
            "invalid IAMAT: latitude -90.0000001 is out of range (-90 to +90)"
        );
        assert_eq!(
            at("+34-180.1"),
            "invalid IAMAT: longitude -180.1 is out of range (-180 to +180)"
        );
        assert_eq!(
            at("+34.068930"),
            "invalid IAMAT: location +34.068930 is not a latitude and a longitude \
             (ISO 6709, each signed: +34.068930-118.445127)"
        );
        assert_eq!(
            at("34-118"),
            "invalid IAMAT: latitude 34 is not a signed decimal \
             (a sign, digits, optionally . and digits)"
        );
        assert_eq!(
            at("+3a-118"),
            "invalid IAMAT: latitude +3a is not a signed decimal \
             (a sign, digits, optionally . and digits)"
        );
        assert_eq!(
            at("+34-118/"),
            "invalid IAMAT: longitude -118/ is not a signed decimal \
             (a sign, digits, optionally . and digits; nothing after it)"
        );
        assert_eq!(
            at("+34-118+10"),
            "invalid IAMAT: longitude -118+10 is not a signed decimal \
             (a sign, digits, optionally . and digits; nothing after it)"
        );
    }

    #[test]
    fn time_reasons_say_what_a_time_is() {
        for bad in ["T", "-5", "1e9", "nan", "1.", ".5", "1.0000000001", "１"] {
            assert_eq!(
                why(format!("IAMAT kiwi +1+1 {bad}").as_bytes()),
                format!(
                    "invalid IAMAT: time {} is not POSIX seconds \
                     (digits, optionally . and 1 to 9 digits)",
                    Escaped(bad.as_bytes())
                )
            );
        }
        assert_eq!(
            why(b"IAMAT kiwi +1+1 99999999999999999999"),
            "invalid IAMAT: time 99999999999999999999 is too large \
             (at most 9223372036854775807 seconds)"
        );
        // The location is checked first: one reason, the first field at fault.
        assert_eq!(
            why(b"IAMAT kiwi +91+0 T"),
            "invalid IAMAT: latitude +91 is out of range (-90 to +90)"
        );
    }

    #[test]
    fn whatsat_reasons_name_the_number_and_its_range() {
        let w =
            |radius: &str, bound: &str| why(format!("WHATSAT kiwi {radius} {bound}").as_bytes());
        assert_eq!(
            w("60", "5"),
            "invalid WHATSAT: radius 60 is out of range (0 < km <= 50)"
        );
        assert_eq!(
            w("0.000", "5"),
            "invalid WHATSAT: radius 0.000 is out of range (0 < km <= 50)"
        );
        assert_eq!(
            w("-1", "5"),
            "invalid WHATSAT: radius -1 is not a number of km (digits, optionally . and digits)"
        );
        assert_eq!(
            w("10", "21"),
            "invalid WHATSAT: bound 21 is out of range (1 to 20)"
        );
        assert_eq!(
            w("10", "99999999999999999999999"),
            "invalid WHATSAT: bound 99999999999999999999999 is out of range (1 to 20)"
        );
        assert_eq!(
            w("10", "1.5"),
            "invalid WHATSAT: bound 1.5 is not a whole number (1 to 20)"
        );
        assert_eq!(
            w("60", "21"),
            "invalid WHATSAT: radius 60 is out of range (0 < km <= 50)",
            "the radius is checked first"
        );
    }

    #[test]
    fn server_lines_from_a_client_say_so() {
        assert_eq!(
            why(b"AT Bona +0.000000000 c +1+1 1"),
            "AT from a client: a line servers exchange on a link, not a client command \
             (IAMAT or WHATSAT)"
        );
        assert_eq!(
            why(b"HERD-PING"),
            "HERD-PING from a client: a line servers exchange on a link, not a client command \
             (IAMAT or WHATSAT)"
        );
        // Any HERD- word is the links' (a newer server's line included), and only that
        // prefix: a client command that merely starts alike is unknown.
        assert!(why(b"HERD-NEWER x").starts_with("HERD-NEWER from a client"));
        assert!(why(b"HERDS x").starts_with("unknown command 'HERDS'"));
        let proof = b"HERD-PROOF 0123456789abcdef";
        let shown = why(proof);
        assert_eq!(
            shown,
            "HERD-PROOF out of turn: it answers a challenge, and this connection has none pending"
        );
        assert!(!shown.contains("0123456789abcdef"), "no proof in a reason");
    }

    #[test]
    fn invalid_reply_echoes_the_line() {
        assert_eq!(format_invalid(b" HELLO x"), b"?  HELLO x");
    }
}
