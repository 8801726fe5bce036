//! The command lines the bench sends, in SPEC section 2's syntax: IAMAT with client ids unique to
//! this run (so a long-running target never holds a newer time for them) and client times that
//! only increase, and WHATSAT. Formatting only: no I/O, no clock after `Names::new`.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::load::{Expect, Workload};

/// Every IAMAT reports this location; where a client is does not change what the server does.
pub const LOCATION: &str = "+34.068930-118.445127";

/// Run-unique parts of client ids and the base of client times.
#[derive(Clone)]
pub struct Names {
    nonce: String,
    base_secs: u64,
}

impl Names {
    pub fn new() -> Names {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mix = now.as_nanos() as u64 ^ ((std::process::id() as u64) << 20);
        Names {
            nonce: format!("{:06x}", mix & 0xff_ffff),
            base_secs: now.as_secs(),
        }
    }

    /// Nanoseconds since `base_secs`: a client time later than every one used before.
    pub fn now_tick(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        now.as_nanos()
            .saturating_sub(self.base_secs as u128 * 1_000_000_000) as u64
    }

    /// A client id of this run: `{kind}{n}.{nonce}.bench`.
    pub fn client(&self, kind: &str, n: u64) -> String {
        format!("{kind}{n}.{}.bench", self.nonce)
    }

    /// A whole IAMAT line for `client` at client time base + `tick` nanoseconds.
    pub fn iamat(&self, client: &str, tick: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        self.push_iamat(&mut out, client, tick);
        out
    }

    /// A whole IAMAT line for `client` at `location` (e.g. [`distinct_location`]).
    pub fn iamat_at(&self, client: &str, location: &str, tick: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(b"IAMAT ");
        out.extend_from_slice(client.as_bytes());
        self.push_rest_at(&mut out, location, tick);
        out
    }

    /// Appends the IAMAT line of `iamat` to `out` (no allocation, for the load generator).
    pub fn push_iamat(&self, out: &mut Vec<u8>, client: &str, tick: u64) {
        out.extend_from_slice(b"IAMAT ");
        out.extend_from_slice(client.as_bytes());
        self.push_rest(out, tick);
    }

    /// The client time of `tick` in nanoseconds since the Unix epoch, as a reply's time field
    /// reads back with `parse_client_time`.
    pub fn time_ns(&self, tick: u64) -> u128 {
        self.base_secs as u128 * 1_000_000_000 + tick as u128
    }

    /// ` LOCATION SECS.NANOS\n`, the part of an IAMAT after the client id.
    fn push_rest(&self, out: &mut Vec<u8>, tick: u64) {
        self.push_rest_at(out, LOCATION, tick);
    }

    fn push_rest_at(&self, out: &mut Vec<u8>, location: &str, tick: u64) {
        out.push(b' ');
        out.extend_from_slice(location.as_bytes());
        out.push(b' ');
        push_decimal(out, self.base_secs + tick / 1_000_000_000, 1);
        out.push(b'.');
        push_decimal(out, tick % 1_000_000_000, 9);
        out.push(b'\n');
    }
}

/// A client time field (`SECS.FRACTION`, as an AT line carries it) in nanoseconds since the
/// epoch, read by the server's own parser.
pub fn parse_client_time(field: &[u8]) -> Option<u128> {
    let time = herd::protocol::ClientTime::parse(field)?;
    u128::try_from(time.as_nanos()).ok()
}

/// The `n`-th of up to 20,100 locations at least 0.8 degrees apart (a grid of 150 latitudes
/// by 134 longitudes): far enough that no rounding a lookup cache might do (to a kilometre, to
/// the radius) makes two of them one lookup.
pub fn distinct_location(n: usize) -> String {
    let lat = -60.0 + (n % 150) as f64 * 0.8;
    let lon = -170.0 + (n / 150 % 134) as f64 * 2.5;
    format!("{lat:+.6}{lon:+.6}")
}

pub fn whatsat(client: &str, radius_km: u32, bound: u32) -> Vec<u8> {
    format!("WHATSAT {client} {radius_km} {bound}\n").into_bytes()
}

/// Appends `value` in decimal, zero-padded to `width` digits, with the server's own digit
/// writer (cheaper than `write!` on the hot path: the generator formats one command per reply).
fn push_decimal(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut buf = [0u8; herd::protocol::MAX_DECIMAL_DIGITS];
    let digits = herd::protocol::decimal(value, &mut buf);
    out.extend(std::iter::repeat_n(
        b'0',
        width.saturating_sub(digits.len()),
    ));
    out.extend_from_slice(digits);
}

/// IAMATs for the load generator. `Cycling`: each connection cycles through its own few clients
/// with ever newer times, so every command is a real update (and is flooded in a herd) while the
/// client table stays small. `Distinct`: every command names a client never seen before.
pub struct IamatLoad {
    names: Names,
    mode: ClientMode,
    ticks: Vec<u64>,
    issued: u64,
    limit: u64,
}

enum ClientMode {
    Cycling { clients_per_connection: u64 },
    Distinct,
}

impl IamatLoad {
    pub fn cycling(names: &Names, connections: usize) -> IamatLoad {
        IamatLoad {
            names: names.clone(),
            mode: ClientMode::Cycling {
                clients_per_connection: 100,
            },
            // Start from the wall clock, so a later run's updates are newer than an earlier
            // run's for the same client ids (an older time would be answered but not flooded).
            ticks: vec![names.now_tick(); connections],
            issued: 0,
            limit: u64::MAX,
        }
    }

    pub fn distinct(names: &Names, limit: u64) -> IamatLoad {
        IamatLoad {
            names: names.clone(),
            mode: ClientMode::Distinct,
            ticks: Vec::new(),
            issued: 0,
            limit,
        }
    }
}

impl Workload for IamatLoad {
    fn next_command(&mut self, conn: usize, out: &mut Vec<u8>) -> Option<Expect> {
        if self.issued >= self.limit {
            return None;
        }
        self.issued += 1;
        out.extend_from_slice(b"IAMAT ");
        let tick = match self.mode {
            ClientMode::Cycling {
                clients_per_connection,
            } => {
                let tick = self.ticks[conn];
                self.ticks[conn] += 1;
                out.push(b'c');
                push_decimal(out, conn as u64, 1);
                out.push(b'-');
                push_decimal(out, tick % clients_per_connection, 1);
                tick
            }
            ClientMode::Distinct => {
                out.push(b'm');
                push_decimal(out, self.issued, 1);
                0
            }
        };
        out.push(b'.');
        out.extend_from_slice(self.names.nonce.as_bytes());
        out.extend_from_slice(b".bench");
        self.names.push_rest(out, tick);
        Some(Expect::Line)
    }
}

/// WHATSATs about already-known clients: one client per connection (`new`), or every command
/// about the next client in turn, whichever connection sends it (`rotating`: with more
/// clients than commands in flight, no two outstanding WHATSATs name the same client).
pub struct WhatsatLoad {
    lines: Vec<Vec<u8>>,
    rotating: bool,
    issued: usize,
}

impl WhatsatLoad {
    pub fn new(clients: &[String]) -> WhatsatLoad {
        WhatsatLoad {
            lines: clients.iter().map(|c| whatsat(c, 10, 5)).collect(),
            rotating: false,
            issued: 0,
        }
    }

    pub fn rotating(clients: &[String]) -> WhatsatLoad {
        WhatsatLoad {
            rotating: true,
            ..WhatsatLoad::new(clients)
        }
    }
}

impl Workload for WhatsatLoad {
    fn next_command(&mut self, conn: usize, out: &mut Vec<u8>) -> Option<Expect> {
        let which = if self.rotating { self.issued } else { conn };
        self.issued += 1;
        out.extend_from_slice(&self.lines[which % self.lines.len()]);
        Some(Expect::Whatsat)
    }
}
