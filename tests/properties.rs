//! Property tests of the three parsers that take bytes from outside: client lines
//! (`protocol`), peer lines (`peer_wire`, AT lines) and the config file (`config`).
//!
//! Three kinds of property:
//! - differential: each parser against a reference written here from SPEC's rules in another
//!   way (string slicing and exact decimal comparison on digit strings), on inputs biased
//!   towards the edges (valid fields, out-of-range ones, mutations, separator runs);
//! - total: any bytes give `Ok`/a value or a clear refusal (a config error names a line of the
//!   file and is printable ASCII), never a panic;
//! - round trips: format then parse gives the fields back (time differences, AT lines, hellos,
//!   config directives), and canonical forms are fixed points.
//!
//! `cargo test` runs each property a bounded number of times (the whole file in a few seconds
//! in debug). `PROPTEST_CASES=N` runs every property N times. The long run gives each parser
//! 10^7 arbitrary inputs through the `any_` properties (a few minutes on 2 cores):
//! `PROPTEST_CASES=10000000 cargo test --release --test properties -- any_`.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use herd::config::{parse_config, parse_config_bytes, Config, PeerSecret, PlacesApi};
use herd::peer_wire::{
    check_hello, check_proof, format_welcome, is_hello, is_ping, redact_proofs, Greeting,
    GreetingStep, HelloCheck, PeerAuth,
};
use herd::protocol::{
    fields, format_at_line, format_invalid, format_time_diff, is_field_separator, parse_request,
    parse_time_diff, AtLine, AtRecord, ClientTime, Command, Invalid, Location, LocationFault,
    NumberFault, Parsed, Radius, Request, TimeFault,
};
use herd::secret::Secret;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};

/// `cases` runs per property, unless `PROPTEST_CASES` says otherwise (an explicit `cases`
/// would otherwise override proptest's own reading of the variable).
fn runs(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The reference: SPEC section 2's rules, written independently of src/protocol.rs.

const SEPARATORS: &[u8] = b" \t\r\n\x0c\x0b";

fn ref_fields(line: &[u8]) -> Vec<&[u8]> {
    line.split(|b| SEPARATORS.contains(b))
        .filter(|f| !f.is_empty())
        .collect()
}

/// `digits[.digits]` -> (whole digits without leading zeros, fraction digits).
fn ref_decimal(field: &[u8]) -> Option<(&str, &str)> {
    let text = std::str::from_utf8(field).ok()?;
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return None;
    }
    Some((whole.trim_start_matches('0'), fraction.unwrap_or("")))
}

/// `whole.fraction` (whole without leading zeros) against a whole number, exactly.
fn ref_cmp(whole: &str, fraction: &str, limit: u64) -> Ordering {
    let limit = limit.to_string();
    let limit = limit.trim_start_matches('0');
    whole
        .len()
        .cmp(&limit.len())
        .then_with(|| whole.cmp(limit))
        .then_with(|| {
            if fraction.bytes().all(|b| b == b'0') {
                Ordering::Equal
            } else {
                Ordering::Greater
            }
        })
}

fn ref_client_time(field: &[u8]) -> Option<ClientTime> {
    let (whole, fraction) = ref_decimal(field)?;
    if fraction.len() > 9 || ref_cmp(whole, "", i64::MAX as u64) == Ordering::Greater {
        return None;
    }
    Some(ClientTime {
        secs: if whole.is_empty() {
            0
        } else {
            whole.parse().unwrap()
        },
        nanos: format!("{fraction:0<9}").parse().unwrap(),
    })
}

fn ref_signed_within(part: &[u8], limit: u64) -> bool {
    matches!(part.first(), Some(b'+' | b'-'))
        && ref_decimal(&part[1..]).is_some_and(|(w, f)| ref_cmp(w, f, limit) != Ordering::Greater)
}

/// `±LAT±LON`: exactly two signs (the first byte and one more), each part in range.
fn ref_location(field: &[u8]) -> bool {
    let signs: Vec<usize> = (0..field.len())
        .filter(|&i| field[i] == b'+' || field[i] == b'-')
        .collect();
    match signs[..] {
        [0, second] => {
            ref_signed_within(&field[..second], 90) && ref_signed_within(&field[second..], 180)
        }
        _ => false,
    }
}

/// A radius in km: 0 < r <= 50.
fn ref_radius(field: &[u8]) -> Option<f64> {
    let (whole, fraction) = ref_decimal(field)?;
    let zero = whole.is_empty() && fraction.bytes().all(|b| b == b'0');
    (!zero && ref_cmp(whole, fraction, 50) != Ordering::Greater)
        .then(|| std::str::from_utf8(field).unwrap().parse::<f64>().unwrap() * 1000.0)
}

fn ref_bound(field: &[u8]) -> Option<u8> {
    let (whole, fraction) = ref_decimal(field)?;
    let in_range = !field.contains(&b'.')
        && !whole.is_empty()
        && ref_cmp(whole, fraction, 20) != Ordering::Greater;
    in_range.then(|| whole.parse().unwrap())
}

/// `±S.NNNNNNNNN`, exactly nine fraction digits, S within i64.
fn ref_time_diff(field: &[u8]) -> Option<i128> {
    let (sign, magnitude) = field.split_first()?;
    let negative = match sign {
        b'+' => false,
        b'-' => true,
        _ => return None,
    };
    let (_, fraction) = ref_decimal(magnitude)?;
    if fraction.len() != 9 {
        return None;
    }
    let nanos = ref_client_time(magnitude)?.as_nanos();
    Some(if negative { -nanos } else { nanos })
}

#[derive(Debug, PartialEq)]
enum Kind<'a> {
    Blank,
    IAmAt(&'a [u8], &'a [u8], ClientTime),
    WhatsAt(&'a [u8], f64, u8),
    /// With the reason the log gives: which field (the first at fault, in the order of the
    /// line) and what is wrong with it.
    Invalid(Invalid<'a>),
}

/// The first words of the lines servers exchange on a link.
const SERVER_WORDS: [&[u8]; 7] = [
    b"AT",
    b"HERD-HELLO",
    b"HERD-CHALLENGE",
    b"HERD-PROOF",
    b"HERD-WELCOME",
    b"HERD-PING",
    b"HERD-PONG",
];

fn ref_request(line: &[u8]) -> Kind<'_> {
    let fields = ref_fields(line);
    let fault = |command| {
        Kind::Invalid(Invalid::FieldCount {
            command,
            fields: fields.len(),
        })
    };
    match fields[..] {
        [] => Kind::Blank,
        [b"IAMAT", client, location, time] => match (
            ref_location_fault(location),
            ref_client_time(time),
            ref_time_fault(time),
        ) {
            (Some(fault), _, _) => Kind::Invalid(Invalid::Location(location, fault)),
            (None, Some(t), _) => Kind::IAmAt(client, location, t),
            (None, None, fault) => Kind::Invalid(Invalid::Time(time, fault)),
        },
        [b"WHATSAT", client, radius, bound] => match (ref_radius(radius), ref_bound(bound)) {
            (Some(r), Some(b)) => Kind::WhatsAt(client, r, b),
            (None, _) => Kind::Invalid(Invalid::Radius(radius, ref_radius_fault(radius))),
            (Some(_), None) => Kind::Invalid(Invalid::Bound(bound, ref_bound_fault(bound))),
        },
        [b"IAMAT", ..] => fault(Command::IAmAt),
        [b"WHATSAT", ..] => fault(Command::WhatsAt),
        [word, ..] if SERVER_WORDS.contains(&word) => Kind::Invalid(Invalid::ServerLine(word)),
        [word, ..] => Kind::Invalid(Invalid::UnknownCommand(word)),
    }
}

/// What is wrong with a location: the latitude runs to the first sign after the first byte,
/// the longitude from there to the end.
fn ref_location_fault(field: &[u8]) -> Option<LocationFault<'_>> {
    let Some(second) = (1..field.len()).find(|&i| field[i] == b'+' || field[i] == b'-') else {
        return Some(LocationFault::NotTwoParts);
    };
    let (latitude, longitude) = field.split_at(second);
    let part_fault = |part: &[u8], limit| {
        if !matches!(part.first(), Some(b'+' | b'-')) {
            return Some(NumberFault::Malformed);
        }
        match ref_decimal(&part[1..]) {
            None => Some(NumberFault::Malformed),
            Some((w, f)) if ref_cmp(w, f, limit) == Ordering::Greater => {
                Some(NumberFault::OutOfRange)
            }
            Some(_) => None,
        }
    };
    let found = part_fault(latitude, 90)
        .map(|fault| LocationFault::Latitude(latitude, fault))
        .or_else(|| part_fault(longitude, 180).map(|f| LocationFault::Longitude(longitude, f)));
    assert_eq!(found.is_none(), ref_location(field), "{field:?}");
    found
}

/// What is wrong with a time that is not one (`ref_client_time` gives `None`).
fn ref_time_fault(field: &[u8]) -> TimeFault {
    match ref_decimal(field) {
        Some((_, fraction)) if fraction.len() <= 9 => TimeFault::TooLarge,
        _ => TimeFault::Malformed,
    }
}

/// What is wrong with a radius that is not one.
fn ref_radius_fault(field: &[u8]) -> NumberFault {
    match ref_decimal(field) {
        Some(_) => NumberFault::OutOfRange,
        None => NumberFault::Malformed,
    }
}

/// What is wrong with a bound that is not one.
fn ref_bound_fault(field: &[u8]) -> NumberFault {
    match ref_decimal(field) {
        Some(_) if !field.contains(&b'.') => NumberFault::OutOfRange,
        _ => NumberFault::Malformed,
    }
}

/// A reason as the log shows it: something to read, and nothing but printable ASCII (every
/// byte of the line in it escaped).
fn check_reason(why: &Invalid<'_>) -> Result<(), TestCaseError> {
    let text = why.to_string();
    prop_assert!(text.len() > 10, "{:?}: {:?}", why, text);
    prop_assert!(
        text.bytes().all(|b| (b' '..=b'~').contains(&b)),
        "{:?}: {:?}",
        why,
        text
    );
    Ok(())
}

fn kind_of<'a>(parsed: &Parsed<'a>) -> Kind<'a> {
    match parsed {
        Parsed::Blank => Kind::Blank,
        Parsed::Invalid(why) => Kind::Invalid(*why),
        Parsed::Request(Request::IAmAt {
            client,
            location,
            client_time,
            ..
        }) => Kind::IAmAt(client, location, *client_time),
        Parsed::Request(Request::WhatsAt {
            client,
            radius,
            bound,
        }) => Kind::WhatsAt(client, radius.metres, *bound),
    }
}

/// Equal kinds, radii within float rounding (the parser moves the decimal point in text, the
/// reference multiplies by 1000).
fn same_kind(got: &Kind<'_>, want: &Kind<'_>) -> bool {
    match (got, want) {
        (Kind::WhatsAt(c1, m1, b1), Kind::WhatsAt(c2, m2, b2)) => {
            c1 == c2 && b1 == b2 && (m1 - m2).abs() <= 1e-9 * m2.abs().max(1.0)
        }
        _ => got == want,
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn separator() -> impl Strategy<Value = u8> {
    select(SEPARATORS.to_vec())
}

/// A run of separators, at least `min` long.
fn gap(min: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(separator(), min..min + 4)
}

/// Any byte but a separator (mapped, not filtered: filters count against proptest's reject
/// limit, which a run of 10^7 cases would reach).
fn field_byte() -> impl Strategy<Value = u8> {
    any::<u8>().prop_map(|b| if is_field_separator(b) { b'_' } else { b })
}

fn field() -> impl Strategy<Value = Vec<u8>> {
    vec(field_byte(), 1..16)
}

/// A name as `&str`: no separators, any Unicode otherwise.
fn name() -> impl Strategy<Value = String> {
    "[^ \t\r\n\u{b}\u{c}]{1,10}"
}

fn digit() -> impl Strategy<Value = u8> {
    (b'0'..=b'9').boxed()
}

/// `0*WHOLE[.FRACTION]` with WHOLE <= limit and the value <= limit.
fn decimal_within(limit: u64, max_fraction: usize) -> impl Strategy<Value = String> {
    (0..=limit, 0usize..3, vec(digit(), 0..=max_fraction)).prop_map(move |(whole, zeros, fr)| {
        let fraction: String = fr
            .iter()
            .map(|&d| if whole == limit { '0' } else { char::from(d) })
            .collect();
        let mut text = format!("{}{whole}", "0".repeat(zeros));
        if !fraction.is_empty() {
            text = format!("{text}.{fraction}");
        }
        text
    })
}

fn sign() -> impl Strategy<Value = char> {
    select(vec!['+', '-'])
}

fn valid_location() -> impl Strategy<Value = String> {
    (
        sign(),
        decimal_within(90, 8),
        sign(),
        decimal_within(180, 8),
    )
        .prop_map(|(s1, lat, s2, lon)| format!("{s1}{lat}{s2}{lon}"))
}

/// Just past a limit: the limit with a non-zero fraction, or a larger whole number.
fn beyond(limit: u64) -> impl Strategy<Value = String> {
    prop_oneof![
        (0usize..9, 1u8..=9)
            .prop_map(move |(zeros, d)| format!("{limit}.{}{d}", "0".repeat(zeros))),
        (limit + 1..=limit * 1000).prop_map(|n| n.to_string()),
    ]
}

fn out_of_range_location() -> impl Strategy<Value = String> {
    prop_oneof![
        (sign(), beyond(90), sign(), decimal_within(180, 4))
            .prop_map(|(s1, lat, s2, lon)| format!("{s1}{lat}{s2}{lon}")),
        (sign(), decimal_within(90, 4), sign(), beyond(180))
            .prop_map(|(s1, lat, s2, lon)| format!("{s1}{lat}{s2}{lon}")),
    ]
}

/// A time SPEC accepts: seconds within i64, at most nine fraction digits.
fn valid_time() -> impl Strategy<Value = String> {
    let secs = prop_oneof![0i64..2_000_000_000, Just(i64::MAX), Just(0), (0..=i64::MAX)];
    (secs, 0usize..3, vec(digit(), 0..=9)).prop_map(|(secs, zeros, fraction)| {
        let mut text = format!("{}{secs}", "0".repeat(zeros));
        if !fraction.is_empty() {
            text.push('.');
            text.extend(fraction.iter().map(|&d| char::from(d)));
        }
        text
    })
}

/// Bytes that look like numbers, mostly: digits, signs, dots, and a few other bytes.
fn numberish() -> impl Strategy<Value = Vec<u8>> {
    vec(select(b"0000111222345678999++--...e_".to_vec()), 0..24)
}

/// A valid field with one byte inserted, removed or replaced.
fn mutated(valid: BoxedStrategy<String>) -> impl Strategy<Value = Vec<u8>> {
    (
        valid,
        any::<Index>(),
        0u8..3,
        select(b"0159+-.e \x00\xff".to_vec()),
    )
        .prop_map(|(text, at, op, byte)| {
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => bytes.push(byte),
            }
            // A separator would change the field count, which other properties cover.
            bytes.retain(|b| !is_field_separator(*b));
            bytes
        })
}

fn location_field() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => valid_location().prop_map(String::into_bytes),
        2 => out_of_range_location().prop_map(String::into_bytes),
        2 => numberish(),
        3 => mutated(valid_location().boxed()),
    ]
}

fn time_field() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => valid_time().prop_map(String::into_bytes),
        1 => Just(b"9223372036854775808".to_vec()),
        1 => (valid_time(), 10usize..14).prop_map(|(t, n)| format!("{t}.{}", "1".repeat(n)).into_bytes()),
        2 => numberish(),
        3 => mutated(valid_time().boxed()),
    ]
}

fn radius_field() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => decimal_within(50, 6).prop_map(String::into_bytes),
        2 => beyond(50).prop_map(String::into_bytes),
        2 => numberish(),
        2 => mutated(decimal_within(50, 6).boxed()),
    ]
}

fn bound_field() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (0u64..=25, 0usize..3).prop_map(|(n, z)| format!("{}{n}", "0".repeat(z)).into_bytes()),
        1 => Just(b"99999999999999999999999".to_vec()),
        2 => numberish(),
    ]
}

/// Fields joined by separator runs, with leading and trailing white space.
fn joined(parts: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let n = parts.len();
    (gap(0), vec(gap(1), n), gap(0)).prop_map(move |(lead, gaps, trail)| {
        let mut line = lead;
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                line.extend_from_slice(&gaps[i]);
            }
            line.extend_from_slice(part);
        }
        line.extend_from_slice(&trail);
        line
    })
}

/// Lines made of words the parsers know (commands, keywords, edge numbers, valid fields) and
/// noise, so that random lines reach deep into each parser instead of stopping at the first
/// word.
fn word() -> impl Strategy<Value = Vec<u8>> {
    let keywords: Vec<&'static [u8]> = vec![
        b"IAMAT",
        b"WHATSAT",
        b"AT",
        b"HERD-HELLO",
        b"HERD-CHALLENGE",
        b"HERD-PROOF",
        b"HERD-WELCOME",
        b"HERD-PING",
        b"HERD-PONG",
        b"Bona",
        b"Campbell",
        b"+0.000000000",
        b"-1.500000000",
        b"+9223372036854775807.999999999",
        b"-9223372036854775808.000000000",
        b"9223372036854775807",
        b"9223372036854775808",
        b"-9223372036854775808",
        b"+90-180",
        b"-90.0000001+0",
        b"50",
        b"50.001",
        b"0",
        b"20",
        b"21",
        b"1621464827.959498503",
        b"\xc2\xa0",
        b"IAMAT\xc2\xa0",
    ];
    prop_oneof![
        4 => select(keywords).prop_map(<[u8]>::to_vec),
        2 => valid_location().prop_map(String::into_bytes),
        2 => valid_time().prop_map(String::into_bytes),
        2 => numberish(),
        1 => field(),
        1 => vec(select(b"0123456789abcdef".to_vec()), 64..=64),
        1 => vec(select(b"0123456789abcdef".to_vec()), 32..=32),
    ]
}

fn wordy_line() -> impl Strategy<Value = Vec<u8>> {
    let command: Vec<&'static [u8]> = vec![
        b"IAMAT",
        b"WHATSAT",
        b"AT",
        b"HERD-HELLO",
        b"HERD-CHALLENGE",
        b"HERD-PROOF",
    ];
    prop_oneof![
        vec(word(), 0..8),
        // A command and about as many words as it takes.
        (select(command), vec(word(), 2..6)).prop_map(|(c, w)| [vec![c.to_vec()], w].concat()),
    ]
    .prop_flat_map(joined)
}

/// Raw bytes, or a line of known words.
fn any_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..128), wordy_line()]
}

fn iamat_line() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>)> {
    (field(), location_field(), time_field()).prop_flat_map(|(client, location, time)| {
        let parts = vec![
            b"IAMAT".to_vec(),
            client.clone(),
            location.clone(),
            time.clone(),
        ];
        (joined(parts), Just(client), Just(location), Just(time))
    })
}

/// Any i128 of nanoseconds whose whole seconds fit in i64, edges included.
fn time_diff() -> impl Strategy<Value = i128> {
    let max = i128::from(i64::MAX) * 1_000_000_000 + 999_999_999;
    prop_oneof![
        -max..=max,
        -10_000_000_000i128..10_000_000_000,
        Just(max),
        Just(-max),
        Just(0),
    ]
}

// ---------------------------------------------------------------------------------------------
// Client lines.

proptest! {
    #![proptest_config(runs(4000))]

    /// Any line: fields split on the six separators only, and the parser agrees with the
    /// reference (Blank, IAMAT, WHATSAT, or Invalid with the same reason); every refusal has
    /// a reason to log; `? ` replies echo the line.
    #[test]
    fn any_client_line_is_classified_as_the_spec_says(line in any_line()) {
        prop_assert_eq!(fields(&line).collect::<Vec<_>>(), ref_fields(&line));
        let parsed = parse_request(&line);
        let (got, want) = (kind_of(&parsed), ref_request(&line));
        prop_assert!(same_kind(&got, &want), "{:?}: got {:?}, want {:?}", line, got, want);
        if let Parsed::Invalid(why) = &parsed {
            check_reason(why)?;
        }
        prop_assert_eq!(format_invalid(&line), [&b"? "[..], &line].concat());
    }

    /// IAMAT with fields anywhere from valid to out of range or malformed, any separator runs:
    /// IAmAt with the same fields exactly when each field is valid, Invalid otherwise, with
    /// the reason naming the first field at fault.
    #[test]
    fn iamat_fields_are_checked_exactly((line, client, location, time) in iamat_line()) {
        let want_location = ref_location(&location);
        let want_time = ref_client_time(&time);
        prop_assert_eq!(Location::is_valid(&location), want_location);
        prop_assert_eq!(Location::parse(&location).is_some(), want_location);
        prop_assert_eq!(ClientTime::parse(&time), want_time);
        match (parse_request(&line), want_location, want_time) {
            (Parsed::Request(Request::IAmAt { client: c, location: l, time: t, client_time }), true, Some(want)) => {
                prop_assert_eq!(c, &client[..]);
                prop_assert_eq!(l, &location[..]);
                prop_assert_eq!(t, &time[..]);
                prop_assert_eq!(client_time, want);
            }
            // The reference says which (an empty field makes it a line of three fields).
            (Parsed::Invalid(why), false, _) | (Parsed::Invalid(why), _, None) => {
                prop_assert_eq!(Kind::Invalid(why), ref_request(&line));
                check_reason(&why)?;
            }
            (other, _, _) => prop_assert!(false, "{:?} parsed as {:?}", line, other),
        }
    }

    /// A valid location's numbers are the ones written (as Rust reads the decimal text).
    #[test]
    fn valid_locations_parse_to_their_numbers(
        (s1, lat, s2, lon) in (sign(), decimal_within(90, 12), sign(), decimal_within(180, 12))
    ) {
        let text = format!("{s1}{lat}{s2}{lon}");
        let parsed = Location::parse(text.as_bytes());
        prop_assert!(parsed.is_some(), "{}", text);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.latitude, format!("{s1}{lat}").parse::<f64>().unwrap());
        prop_assert_eq!(parsed.longitude, format!("{s2}{lon}").parse::<f64>().unwrap());
        prop_assert!(parsed.latitude.abs() <= 90.0 && parsed.longitude.abs() <= 180.0);
    }

    /// WHATSAT: valid exactly when 0 < radius <= 50 and 1 <= bound <= 20; otherwise the
    /// reason names the radius if it is at fault, else the bound.
    #[test]
    fn whatsat_fields_are_checked_exactly(
        (client, radius, bound) in (field(), radius_field(), bound_field()),
        (lead, g1, g2, g3, trail) in (gap(0), gap(1), gap(1), gap(1), gap(0)),
    ) {
        let line = [&lead[..], b"WHATSAT", &g1, &client, &g2, &radius, &g3, &bound, &trail].concat();
        let got = kind_of(&parse_request(&line));
        let want = ref_request(&line);
        prop_assert!(same_kind(&got, &want), "{:?}: got {:?}, want {:?}", line, got, want);
        prop_assert_eq!(Radius::parse(&radius).is_some(), ref_radius(&radius).is_some());
        match got {
            Kind::WhatsAt(_, metres, bound) => {
                prop_assert!(metres > 0.0 && metres <= 50_000.0);
                prop_assert!((1..=20).contains(&bound));
            }
            Kind::Invalid(why) => check_reason(&why)?,
            other => prop_assert!(false, "{:?} parsed as {:?}", line, other),
        }
    }

    /// One field too few or too many, or a command in another case: Invalid, saying which.
    #[test]
    fn wrong_field_counts_and_commands_are_invalid(
        client in field(),
        location in valid_location(),
        time in valid_time(),
        extra in field(),
        command in select(vec![&b"IAMAT"[..], b"iamat", b"IAMAT\xc2\xa0", b"IAMA", b"IAMATT"]),
        shape in 0u8..3,
    ) {
        let mut parts = vec![command.to_vec(), client, location.into_bytes(), time.into_bytes()];
        match shape {
            0 => { parts.pop(); }
            1 => parts.push(extra),
            _ => {}
        }
        let exact = shape == 2 && command == b"IAMAT";
        let line = parts.join(&b' ');
        let fields = parts.len();
        match parse_request(&line) {
            Parsed::Request(_) => prop_assert!(exact, "{:?}", line),
            Parsed::Invalid(why) => {
                prop_assert!(!exact, "{:?}", line);
                let want = if command == b"IAMAT" {
                    Invalid::FieldCount { command: Command::IAmAt, fields }
                } else {
                    Invalid::UnknownCommand(command)
                };
                prop_assert_eq!(why, want);
                check_reason(&why)?;
            }
            Parsed::Blank => prop_assert!(false, "{:?} is not blank", line),
        }
    }

    /// A time difference formats as `±S.NNNNNNNNN` and parses back to the same nanoseconds.
    #[test]
    fn time_diff_round_trips(diff in time_diff()) {
        let mut text = Vec::new();
        format_time_diff(diff, &mut text);
        prop_assert_eq!(text[0], if diff < 0 { b'-' } else { b'+' });
        let dot = text.iter().position(|&b| b == b'.').unwrap();
        prop_assert_eq!(text.len() - dot - 1, 9);
        prop_assert_eq!(parse_time_diff(&text), Some(diff));
    }

    /// Any field: `parse_time_diff` agrees with the reference.
    #[test]
    fn time_diff_parsing_is_exact(field in prop_oneof![
        numberish(),
        (sign(), valid_time()).prop_map(|(s, t)| format!("{s}{t}").into_bytes()),
        time_diff().prop_map(|d| { let mut v = Vec::new(); format_time_diff(d, &mut v); v }),
    ]) {
        prop_assert_eq!(parse_time_diff(&field), ref_time_diff(&field), "{:?}", field);
    }
}

// ---------------------------------------------------------------------------------------------
// Peer lines.

fn at_fields() -> impl Strategy<Value = (Vec<u8>, i128, Vec<u8>, String, String)> {
    (
        field(),
        time_diff(),
        field(),
        valid_location(),
        valid_time(),
    )
}

proptest! {
    #![proptest_config(runs(4000))]

    /// AT lines built from fields parse back to those fields; the stored record locates the
    /// client id and is what parsing any spacing of the line canonicalises to.
    #[test]
    fn at_lines_round_trip(
        (server, diff, client, location, time) in at_fields(),
        (lead, gaps, trail) in (gap(0), vec(gap(1), 5), gap(0)),
    ) {
        let line = format_at_line(&server, diff, &client, location.as_bytes(), time.as_bytes());
        let parsed = AtLine::parse(&line);
        prop_assert!(parsed.is_some(), "{:?}", line);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.server, &server[..]);
        prop_assert_eq!(parsed.diff_nanos, diff);
        prop_assert_eq!(parsed.client, &client[..]);
        prop_assert_eq!(parsed.location, location.as_bytes());
        prop_assert_eq!(Some(parsed.client_time), ClientTime::parse(time.as_bytes()));

        let record = AtRecord::new(&server, diff, &client, location.as_bytes(), time.as_bytes(), parsed.client_time);
        prop_assert_eq!(&record.line, &line);
        prop_assert_eq!(record.client(), &client[..]);

        // The same line with other white space: the same fields, the same canonical record.
        let words = ref_fields(&line);
        let mut spaced = lead;
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                spaced.extend_from_slice(&gaps[i - 1]);
            }
            spaced.extend_from_slice(w);
        }
        spaced.extend_from_slice(&trail);
        let reparsed = AtLine::parse(&spaced);
        prop_assert_eq!(reparsed.as_ref(), Some(&parsed));
        prop_assert_eq!(AtRecord::from_parsed(&reparsed.unwrap(), &spaced), record);
    }

    /// Any line: AtLine::parse agrees with the reference, and whatever it accepts has a
    /// canonical record that is a fixed point (parsing it gives the same fields and record).
    #[test]
    fn any_at_line_is_parsed_as_the_spec_says(line in prop_oneof![
        any_line(),
        vec(word(), 5).prop_flat_map(|w| joined([vec![b"AT".to_vec()], w].concat())),
        at_fields().prop_map(|(s, d, c, l, t)| format_at_line(&s, d, &c, l.as_bytes(), t.as_bytes())),
    ]) {
        let parsed = AtLine::parse(&line);
        let want = match ref_fields(&line)[..] {
            [b"AT", server, diff, client, location, time] if ref_location(location) => {
                ref_time_diff(diff).zip(ref_client_time(time)).map(|(d, t)| (server, d, client, location, t))
            }
            _ => None,
        };
        let got = parsed.as_ref().map(|a| (a.server, a.diff_nanos, a.client, a.location, a.client_time));
        prop_assert_eq!(got, want, "{:?}", line);
        if let Some(at) = parsed {
            let record = AtRecord::from_parsed(&at, &line);
            prop_assert_eq!(record.client(), at.client);
            let again = AtLine::parse(&record.line);
            prop_assert_eq!(again.as_ref(), Some(&at));
            prop_assert_eq!(AtRecord::from_parsed(&again.unwrap(), &record.line), record);
        }
    }

    /// Any line: ping and hello detection follow the fields; a hello is welcomed only as
    /// `HERD-HELLO NAME` without a secret and challenged only as `HERD-HELLO NAME NONCE` with
    /// one; no line is a valid proof or gets a connector with a secret past its handshake
    /// (that takes the secret); redaction shows no word past those that carry no proof.
    #[test]
    fn any_peer_line_is_read_as_the_wire_format_says(line in any_line(), seed in any::<u8>()) {
        let words = ref_fields(&line);
        prop_assert_eq!(is_ping(&line), words[..] == [b"HERD-PING"]);
        prop_assert_eq!(is_hello(&line), words.first() == Some(&&b"HERD-HELLO"[..]));

        let plain = match words[..] {
            [b"HERD-HELLO", from] => std::str::from_utf8(from).ok(),
            _ => None,
        };
        let want = plain.map_or(HelloCheck::Refused, HelloCheck::Welcome);
        prop_assert_eq!(check_hello(&line, "Campbell", None, |_| true), want);
        prop_assert_eq!(check_hello(&line, "Campbell", None, |_| false), HelloCheck::Refused);

        let mut campbell = auth("s3cret", seed);
        let nonce_hello = matches!(
            words[..],
            [b"HERD-HELLO", from, nonce] if std::str::from_utf8(from).is_ok()
                && nonce.len() == 32 && nonce.iter().all(u8::is_ascii_hexdigit)
        );
        let checked = check_hello(&line, "Campbell", Some(&mut campbell), |_| true);
        prop_assert_eq!(matches!(checked, HelloCheck::Challenge { .. }), nonce_hello);
        if let HelloCheck::Challenge { challenge, .. } = checked {
            prop_assert!(!check_proof(&line, "Campbell", &campbell, &challenge));
        }

        // A connector with a secret takes nothing but a challenge that proves the secret.
        let mut bona = auth("s3cret", seed.wrapping_add(1));
        let mut greeting = Greeting::new("Bona", "Campbell", Some(&mut bona));
        prop_assert!(matches!(greeting.on_line(&line), GreetingStep::Refused(_)));
        // Without one, only the welcome of the server it called.
        let mut plain_greeting = Greeting::new("Bona", "Campbell", None);
        let welcomed = words[..] == [&b"HERD-WELCOME"[..], b"Campbell"];
        prop_assert_eq!(
            plain_greeting.on_line(&line) == GreetingStep::Welcomed(None),
            welcomed
        );

        let shown = redact_proofs(&line);
        let (echo, handshake) = match line.strip_prefix(b"? ") {
            Some(rest) => (&b"? "[..], rest),
            None => (&b""[..], &line[..]),
        };
        let handshake_words = ref_fields(handshake);
        let kept = match handshake_words.first() {
            Some(&b"HERD-HELLO") => 3,
            Some(&b"HERD-CHALLENGE") => 2,
            Some(&b"HERD-PROOF") => 1,
            _ => usize::MAX,
        };
        if handshake_words.len() > kept {
            let want = [echo, &handshake_words[..kept].join(&b' ')[..], b" <redacted>"].concat();
            prop_assert_eq!(&*shown, &want[..]);
        } else {
            prop_assert_eq!(&*shown, &line[..]);
        }
    }

    /// Between two servers that hold one secret, the handshake ends in a welcome; its proof is
    /// worth nothing at another server, with another secret, or sent again (a fresh challenge);
    /// and no logged form of its lines shows a proof.
    #[test]
    fn handshakes_hold_for_one_secret_one_target_and_one_connection(
        (from, to, other) in (name(), name(), name()),
        (key, other_key) in (".{1,24}", ".{1,24}"),
        (seed_a, seed_b) in (any::<u8>(), any::<u8>()),
    ) {
        let mut connector = auth(&key, seed_a);
        let mut acceptor = auth(&key, seed_b.wrapping_add(seed_a).wrapping_add(1));
        let neighbour = |n: &str| n == from;
        let mut greeting = Greeting::new(&from, &to, Some(&mut connector));
        let hello = greeting.hello();
        prop_assert!(is_hello(&hello));
        let HelloCheck::Challenge { challenge, reply } =
            check_hello(&hello, &to, Some(&mut acceptor), neighbour)
        else {
            panic!("a hello from a neighbour is challenged");
        };
        let GreetingStep::Send(proof) = greeting.on_line(&reply) else {
            panic!("a challenge with the acceptor's proof is answered");
        };
        prop_assert!(check_proof(&proof, &to, &acceptor, &challenge));
        prop_assert_eq!(
            greeting.on_line(&format_welcome(&to, None)),
            GreetingStep::Welcomed(None)
        );

        if other != to {
            prop_assert!(!check_proof(&proof, &other, &acceptor, &challenge));
        }
        // HMAC pads a key with zero bytes: keys that differ only in trailing NULs are the same
        // key (a property of HMAC, not of herd, which refuses empty secrets).
        if other_key.trim_end_matches('\0') != key.trim_end_matches('\0') {
            let stranger = auth(&other_key, seed_b);
            prop_assert!(!check_proof(&proof, &to, &stranger, &challenge));
        }
        let HelloCheck::Challenge { challenge: fresh, .. } =
            check_hello(&hello, &to, Some(&mut acceptor), neighbour)
        else {
            panic!("the replayed hello is challenged again");
        };
        prop_assert!(!check_proof(&proof, &to, &acceptor, &fresh));

        for line in [&hello, &reply, &proof] {
            let shown = redact_proofs(line);
            for word in ref_fields(line).into_iter().filter(|w| w.len() == 64) {
                prop_assert!(!shown.windows(64).any(|w| w == word), "{:?}", shown);
            }
        }
    }
}

fn auth(key: &str, seed: u8) -> PeerAuth {
    PeerAuth::new(Secret::new(key.to_string()), [seed; 32])
}

// ---------------------------------------------------------------------------------------------
// The config file.

/// The line count of a file as an editor shows it (a last line without `\n` counts), at
/// least 1.
fn line_count(bytes: &[u8]) -> usize {
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
    let unterminated = usize::from(!bytes.is_empty() && !bytes.ends_with(b"\n"));
    (newlines + unterminated).max(1)
}

fn config_word() -> impl Strategy<Value = String> {
    let words = vec![
        "server",
        "link",
        "places",
        "log",
        "limit",
        "peer",
        "A",
        "B",
        "127.0.0.1:1",
        "127.0.0.1:2",
        "[::1]:3",
        "localhost:80",
        "api",
        "new",
        "legacy",
        "url",
        "https://x",
        "ftp://x",
        "key-env",
        "field-mask",
        "workers",
        "timeout-ms",
        "queue",
        "cache-ms",
        "cache-entries",
        "max-per-second",
        "dir",
        "lines",
        "level",
        "on",
        "off",
        "debug",
        "line-bytes",
        "output-bytes",
        "connections",
        "future-seconds",
        "secret",
        "secret-env",
        "secret-file",
        "none",
        "backoff-min-ms",
        "backoff-max-ms",
        "ping-ms",
        "max-owed",
        "stall-ms",
        "queue-bytes",
        "0",
        "1",
        "16",
        "+5",
        "-1",
        "4096",
        "1099511627776",
        "18446744073709551615",
        "18446744073709551616",
        "#",
        "\u{a0}",
        "\u{85}",
        "\u{2028}",
        "\u{1b}[2J",
        "\\",
        "\u{7f}",
        "é",
    ];
    prop_oneof![
        6 => select(words).prop_map(str::to_string),
        1 => ".{1,8}",
        1 => "[A-Za-z0-9_]{1,8}",
    ]
}

/// A line of config words: random ones, a directive with a setting and a value, or a valid
/// line.
fn config_words() -> impl Strategy<Value = Vec<String>> {
    let directive = select(vec!["server", "link", "places", "log", "limit", "peer"]);
    prop_oneof![
        2 => vec(config_word(), 0..5),
        3 => (directive, config_word(), config_word()).prop_map(|(d, a, b)| vec![d.into(), a, b]),
        2 => setting().prop_map(|s| s.line().split(' ').map(str::to_string).collect()),
        1 => (select(vec!["A", "B", "C"]), select(vec!["127.0.0.1:1", "[::1]:2", "10.0.0.1:3"]))
            .prop_map(|(n, a)| vec!["server".into(), n.into(), a.into()]),
        1 => (select(vec!["A", "B", "C"]), select(vec!["A", "B", "C"]))
            .prop_map(|(a, b)| vec!["link".into(), a.into(), b.into()]),
    ]
}

/// Config-like text: lines of known words, comments, blank lines, CRLF, odd white space.
fn config_text() -> impl Strategy<Value = String> {
    let line = (
        config_words(),
        select(vec![" ", "\t", "  ", "\u{a0}", "\u{3000}"]),
        select(vec!["\n", "\r\n", "\n\n", " # c\n"]),
    )
        .prop_map(|(words, sep, end)| words.join(sep) + end);
    (vec(line, 0..12), any::<bool>()).prop_map(|(lines, unterminated)| {
        let mut text = lines.concat();
        if unterminated {
            text.pop();
        }
        text
    })
}

/// Config bytes: raw, config-like text, or config-like text with a stray byte that breaks
/// UTF-8.
fn config_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        6 => config_text().prop_map(String::into_bytes),
        1 => (config_text(), any::<Index>(), 0x80u8..=0xff).prop_map(|(text, at, byte)| {
            let mut bytes = text.into_bytes();
            let i = at.index(bytes.len() + 1);
            bytes.insert(i, byte);
            bytes
        }),
    ]
}

/// One valid setting line and how to check it was read.
#[derive(Clone, Debug)]
enum Setting {
    Api(PlacesApi),
    Url(String),
    KeyEnv(String),
    FieldMask(String),
    Workers(usize),
    TimeoutMs(u64),
    Queue(usize),
    CacheMs(u64),
    CacheEntries(usize),
    MaxPerSecond(u32),
    LogDir(String),
    LogLines(bool),
    LogLevel(log::LevelFilter),
    LineBytes(usize),
    OutputBytes(usize),
    Connections(usize),
    FutureSeconds(u64),
    Secret(PeerSecret),
    PingMs(u64),
    MaxOwed(usize),
    StallMs(u64),
}

impl Setting {
    fn line(&self) -> String {
        match self {
            Setting::Api(api) => format!("places api {}", api.name()),
            Setting::Url(url) => format!("places url {url}"),
            Setting::KeyEnv(v) => format!("places key-env {v}"),
            Setting::FieldMask(v) => format!("places field-mask {v}"),
            Setting::Workers(n) => format!("places workers {n}"),
            Setting::TimeoutMs(n) => format!("places timeout-ms {n}"),
            Setting::Queue(n) => format!("places queue {n}"),
            Setting::CacheMs(n) => format!("places cache-ms {n}"),
            Setting::CacheEntries(n) => format!("places cache-entries {n}"),
            Setting::MaxPerSecond(n) => format!("places max-per-second {n}"),
            Setting::LogDir(d) => format!("log dir {d}"),
            Setting::LogLines(on) => format!("log lines {}", if *on { "on" } else { "off" }),
            Setting::LogLevel(l) => format!("log level {}", l.as_str().to_lowercase()),
            Setting::LineBytes(n) => format!("limit line-bytes {n}"),
            Setting::OutputBytes(n) => format!("limit output-bytes {n}"),
            Setting::Connections(n) => format!("limit connections {n}"),
            Setting::FutureSeconds(n) => format!("limit future-seconds {n}"),
            Setting::Secret(PeerSecret::None) => "peer secret none".into(),
            Setting::Secret(PeerSecret::Env(v)) => format!("peer secret-env {v}"),
            Setting::Secret(PeerSecret::File(p)) => format!("peer secret-file {}", p.display()),
            Setting::Secret(PeerSecret::BesideConfig) => unreachable!("not a line"),
            Setting::PingMs(n) => format!("peer ping-ms {n}"),
            Setting::MaxOwed(n) => format!("peer max-owed {n}"),
            Setting::StallMs(n) => format!("peer stall-ms {n}"),
        }
    }

    /// Applies the setting to the expected config (the last line of a setting decides).
    fn expect(&self, c: &mut Config, url: &mut Option<String>) {
        let ms = |n: &u64| Duration::from_millis(*n);
        match self {
            Setting::Api(api) => c.places.api = *api,
            Setting::Url(u) => *url = Some(u.clone()),
            Setting::KeyEnv(v) => c.places.key_env = v.clone(),
            Setting::FieldMask(v) => c.places.field_mask = v.clone(),
            Setting::Workers(n) => c.places.workers = *n,
            Setting::TimeoutMs(n) => c.places.timeout = ms(n),
            Setting::Queue(n) => c.places.queue = *n,
            Setting::CacheMs(n) => c.places.cache_ms = *n,
            Setting::CacheEntries(n) => c.places.cache_entries = *n,
            Setting::MaxPerSecond(n) => c.places.max_per_second = *n,
            Setting::LogDir(d) => c.log.dir = PathBuf::from(d),
            Setting::LogLines(on) => c.log.lines = *on,
            Setting::LogLevel(l) => c.log.level = *l,
            Setting::LineBytes(n) => c.limits.max_line_bytes = *n,
            Setting::OutputBytes(n) => c.limits.max_output_bytes = *n,
            Setting::Connections(n) => c.limits.max_connections = *n,
            Setting::FutureSeconds(n) => c.limits.max_future_secs = *n,
            Setting::Secret(s) => c.peer.secret = s.clone(),
            Setting::PingMs(n) => c.peer.ping_interval = ms(n),
            Setting::MaxOwed(n) => c.peer.max_owed = *n,
            Setting::StallMs(n) => c.peer.stall_limit = ms(n),
        }
    }
}

/// A config value word: no white space (Unicode's, as the config splits), no `#`.
fn value_word() -> impl Strategy<Value = String> {
    "[^\\s#]{1,12}"
}

fn env_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,10}"
}

const DAY_MS: u64 = 24 * 3600 * 1000;

fn setting() -> impl Strategy<Value = Setting> {
    let levels = vec![
        log::LevelFilter::Off,
        log::LevelFilter::Error,
        log::LevelFilter::Warn,
        log::LevelFilter::Info,
        log::LevelFilter::Debug,
        log::LevelFilter::Trace,
    ];
    prop_oneof![
        select(vec![PlacesApi::New, PlacesApi::Legacy]).prop_map(Setting::Api),
        (select(vec!["http://", "https://"]), "[^\\s#]{0,12}")
            .prop_map(|(s, rest)| Setting::Url(format!("{s}{rest}"))),
        env_name().prop_map(Setting::KeyEnv),
        value_word().prop_map(Setting::FieldMask),
        (1usize..=4096).prop_map(Setting::Workers),
        (1..=DAY_MS).prop_map(Setting::TimeoutMs),
        (1usize..=1 << 20).prop_map(Setting::Queue),
        (0..=DAY_MS).prop_map(Setting::CacheMs),
        (1usize..=1 << 24).prop_map(Setting::CacheEntries),
        (0u32..=1_000_000).prop_map(Setting::MaxPerSecond),
        value_word().prop_map(Setting::LogDir),
        any::<bool>().prop_map(Setting::LogLines),
        select(levels).prop_map(Setting::LogLevel),
        (16usize..=1 << 30).prop_map(Setting::LineBytes),
        (1024usize..=1 << 40).prop_map(Setting::OutputBytes),
        (1usize..=1 << 24).prop_map(Setting::Connections),
        (0u64..=100 * 365 * 86_400).prop_map(Setting::FutureSeconds),
        prop_oneof![
            Just(PeerSecret::None),
            env_name().prop_map(PeerSecret::Env),
            value_word().prop_map(|p| PeerSecret::File(PathBuf::from(p))),
        ]
        .prop_map(Setting::Secret),
        (1..=DAY_MS).prop_map(Setting::PingMs),
        (1usize..=1 << 30).prop_map(Setting::MaxOwed),
        (1..=DAY_MS).prop_map(Setting::StallMs),
    ]
}

fn socket_addr(port: u16) -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|ip| IpAddr::V4(Ipv4Addr::from(ip))),
        any::<[u16; 8]>().prop_map(|ip| IpAddr::V6(Ipv6Addr::from(ip))),
    ]
    .prop_map(move |ip| SocketAddr::new(ip, port))
}

/// A valid config: servers (distinct names and ports), links between them (each pair once,
/// either way round), settings, and backoff bounds written in an order that never has
/// min > max; then the config it must parse to.
/// (`PlacesSettings::url` is private: the url is returned beside the config.)
fn valid_config() -> impl Strategy<Value = (String, Config, String)> {
    let servers = (
        proptest::collection::btree_set(value_word(), 1..6),
        proptest::collection::btree_set(any::<u16>(), 6),
    )
        .prop_flat_map(|(names, ports)| {
            let names: Vec<String> = names.into_iter().collect();
            let addrs: Vec<_> = ports.into_iter().map(socket_addr).collect();
            (Just(names), addrs)
        });
    let backoff = (
        proptest::option::of(1..=DAY_MS),
        proptest::option::of(1..=DAY_MS),
    );
    (
        servers,
        vec((any::<Index>(), any::<Index>()), 0..8),
        vec(setting(), 0..12),
        backoff,
        select(vec![" ", "\t", "   ", " \t "]),
        select(vec!["\n", "\r\n", "  # note\n", "\n\n# comment\n"]),
    )
        .prop_map(|((names, addrs), links, settings, backoff, sep, end)| {
            let mut expected = Config::default();
            let mut lines = Vec::new();
            for (name, addr) in names.iter().zip(&addrs) {
                lines.push(format!("server {name} {addr}"));
                expected.servers.push(herd::config::ServerEntry {
                    name: name.clone(),
                    addr: *addr,
                });
            }
            for (a, b) in links {
                let (a, b) = (&names[a.index(names.len())], &names[b.index(names.len())]);
                let known = expected
                    .links
                    .iter()
                    .any(|(x, y)| (x == a && y == b) || (x == b && y == a));
                if a != b && !known {
                    lines.push(format!("link {a} {b}"));
                    expected.links.push((a.clone(), b.clone()));
                }
            }
            let mut url = None;
            for s in &settings {
                lines.push(s.line());
                s.expect(&mut expected, &mut url);
            }
            let (min, max) = match backoff {
                (Some(a), Some(b)) => (Some(a.min(b)), Some(a.max(b))),
                other => other,
            };
            let default_max = expected.peer.backoff_max.as_millis() as u64;
            let default_min = expected.peer.backoff_min.as_millis() as u64;
            let min_line = min
                .filter(|&m| m <= max.unwrap_or(default_max))
                .map(|m| format!("peer backoff-min-ms {m}"));
            let max_line = max
                .filter(|&m| m >= min.unwrap_or(default_min))
                .map(|m| format!("peer backoff-max-ms {m}"));
            // Set first whichever keeps min <= max after each line.
            let min_first = min.is_some_and(|m| m <= default_max);
            if min_first {
                lines.extend(min_line.iter().cloned());
                lines.extend(max_line.iter().cloned());
            } else {
                lines.extend(max_line.iter().cloned());
                lines.extend(min_line.iter().cloned());
            }
            if min_line.is_some() {
                expected.peer.backoff_min = Duration::from_millis(min.unwrap());
            }
            if max_line.is_some() {
                expected.peer.backoff_max = Duration::from_millis(max.unwrap());
            }
            let text: String = lines.iter().map(|l| l.replace(' ', sep) + end).collect();
            let url = url.unwrap_or_else(|| expected.places.api.default_url().to_string());
            (text, expected, url)
        })
}

proptest! {
    #![proptest_config(runs(2000))]

    /// Any bytes: a config, or an error naming a line of the file with a printable-ASCII
    /// problem; no error before that line; bytes and text parse alike.
    #[test]
    fn any_config_is_accepted_or_refused_clearly(bytes in config_bytes()) {
        let result = parse_config_bytes(&bytes);
        let text = std::str::from_utf8(&bytes);
        if let Ok(text) = text {
            prop_assert_eq!(&result, &parse_config(text));
        }
        match result {
            Ok(config) => prop_assert!(!config.servers.is_empty()),
            Err(e) => {
                prop_assert!((1..=line_count(&bytes)).contains(&e.line), "{:?}: line {}", bytes, e.line);
                prop_assert!(!e.problem.is_empty());
                prop_assert!(e.problem.bytes().all(|b| (b' '..=b'~').contains(&b)), "{:?}", e.problem);
                prop_assert_eq!(e.to_string(), format!("{}: {}", e.line, e.problem));
                // The lines before the error's are fine (at worst they lack a server).
                if let Ok(text) = text {
                    let before: String = text.split_inclusive('\n').take(e.line - 1).collect();
                    if let Err(earlier) = parse_config(&before) {
                        prop_assert!(earlier.problem.starts_with("no 'server' line"), "{:?}: {}", before, earlier);
                    }
                }
            }
        }
    }

    /// A config written from valid directives parses to exactly what they say.
    #[test]
    fn valid_configs_read_back((text, expected, url) in valid_config()) {
        let parsed = parse_config(&text);
        prop_assert!(parsed.is_ok(), "{}: {:?}", text, parsed);
        let parsed = parsed.unwrap();
        prop_assert_eq!(parsed.places.url(), url);
        prop_assert_eq!(&parsed.servers, &expected.servers);
        prop_assert_eq!(&parsed.links, &expected.links);
        prop_assert_eq!(&parsed.log, &expected.log);
        prop_assert_eq!(&parsed.limits, &expected.limits);
        prop_assert_eq!(&parsed.peer, &expected.peer);
        prop_assert_eq!(parsed.places.api, expected.places.api);
        prop_assert_eq!(&parsed.places.key_env, &expected.places.key_env);
        prop_assert_eq!(&parsed.places.field_mask, &expected.places.field_mask);
        prop_assert_eq!(
            (parsed.places.workers, parsed.places.timeout, parsed.places.queue),
            (expected.places.workers, expected.places.timeout, expected.places.queue)
        );
        prop_assert_eq!(
            (parsed.places.cache_ms, parsed.places.cache_entries, parsed.places.max_per_second),
            (expected.places.cache_ms, expected.places.cache_entries, expected.places.max_per_second)
        );
        prop_assert_eq!(parse_config_bytes(text.as_bytes()), Ok(parsed));
    }
}
