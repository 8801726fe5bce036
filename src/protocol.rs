//! The client protocol of SPEC section 2: splitting a line into fields, parsing IAMAT and
//! WHATSAT, exact client times, and formatting AT and `? ` replies.
//!
//! Pure: no sockets, no clock. Lines are bytes (not necessarily UTF-8); every field handed back
//! borrows from the line, so parsing allocates nothing.

use std::cmp::Ordering;
use std::ops::Range;

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
    let mut out: [&[u8]; N] = [&[]; N];
    let mut iter = fields(line);
    for slot in out.iter_mut() {
        *slot = iter.next()?;
    }
    match iter.next() {
        Some(_) => None,
        None => Some(out),
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
        let (whole, fraction) = split_decimal(field)?;
        if fraction.is_some_and(|f| f.len() > 9) {
            return None;
        }
        let secs = parse_digits_i64(whole)?;
        let mut nanos = 0u32;
        let fraction = fraction.unwrap_or(&[]);
        for i in 0..9 {
            let digit = fraction.get(i).map_or(0, |d| u32::from(d - b'0'));
            nanos = nanos * 10 + digit;
        }
        Some(ClientTime { secs, nanos })
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
        let (latitude, longitude) = split_location(field)?;
        Some(Location {
            latitude: to_f64(latitude)?,
            longitude: to_f64(longitude)?,
        })
    }

    /// The same check as [`Location::parse`] without computing the numbers: IAMAT and peer
    /// updates only validate a location and copy it as written, and float parsing was a fifth
    /// of the work of an IAMAT.
    pub fn is_valid(field: &[u8]) -> bool {
        split_location(field).is_some()
    }
}

/// Splits a valid location into its signed latitude and longitude texts.
fn split_location(field: &[u8]) -> Option<(&[u8], &[u8])> {
    let split = 1 + field
        .get(1..)?
        .iter()
        .position(|&b| b == b'+' || b == b'-')?;
    let (latitude, longitude) = field.split_at(split);
    (signed_degrees_within(latitude, 90) && signed_degrees_within(longitude, 180))
        .then_some((latitude, longitude))
}

fn signed_degrees_within(field: &[u8], limit: u32) -> bool {
    let Some((&sign, magnitude)) = field.split_first() else {
        return false;
    };
    if sign != b'+' && sign != b'-' {
        return false;
    }
    split_decimal(magnitude)
        .is_some_and(|(whole, fraction)| decimal_at_most(whole, fraction, limit))
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
        let (whole, fraction) = split_decimal(field)?;
        if decimal_is_zero(whole, fraction) || !decimal_at_most(whole, fraction, Self::MAX_KM) {
            return None;
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
        Some(Radius {
            metres: metres.parse().ok()?,
        })
    }
}

/// The most results a WHATSAT may ask for.
pub const MAX_BOUND: u8 = 20;

fn parse_bound(field: &[u8]) -> Option<u8> {
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = parse_digits_i64(field)?;
    (1..=i64::from(MAX_BOUND))
        .contains(&value)
        .then_some(value as u8)
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
    /// Anything else: answered `? ` + the line.
    Invalid,
}

/// Parses one client line (without its terminator).
pub fn parse_request(line: &[u8]) -> Parsed<'_> {
    let Some(command) = fields(line).next() else {
        return Parsed::Blank;
    };
    let request = match command {
        b"IAMAT" => parse_iamat(line),
        b"WHATSAT" => parse_whatsat(line),
        _ => None,
    };
    request.map_or(Parsed::Invalid, Parsed::Request)
}

fn parse_iamat(line: &[u8]) -> Option<Request<'_>> {
    let [_, client, location, time] = exact_fields::<4>(line)?;
    if !Location::is_valid(location) {
        return None;
    }
    let client_time = ClientTime::parse(time)?;
    Some(Request::IAmAt {
        client,
        location,
        time,
        client_time,
    })
}

fn parse_whatsat(line: &[u8]) -> Option<Request<'_>> {
    let [_, client, radius, bound] = exact_fields::<4>(line)?;
    Some(Request::WhatsAt {
        client,
        radius: Radius::parse(radius)?,
        bound: parse_bound(bound)?,
    })
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
        parse_request(line.as_bytes()) == Parsed::Invalid
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
    fn invalid_reply_echoes_the_line() {
        assert_eq!(format_invalid(b" HELLO x"), b"?  HELLO x");
    }
}
