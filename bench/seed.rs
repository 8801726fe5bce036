//! Making clients known to a server before a scenario measures it: IAMATs in batches on one
//! blocking connection, every reply read and checked. Client traffic only.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::commands::{distinct_location, Names, LOCATION};

/// IAMATs per write: a batch's replies fit the socket buffers, so writing a batch before
/// reading its replies cannot deadlock.
const BATCH: usize = 500;

/// Where the seeded clients are said to be.
#[derive(Clone, Copy)]
pub enum Locations {
    /// All at `commands::LOCATION`.
    Same,
    /// Client `i` at `distinct_location(i)`, so no two are one Places lookup.
    Distinct,
}

/// Makes `clients` known to the server at `addr`, one IAMAT each.
pub fn seed(
    names: &Names,
    addr: SocketAddr,
    clients: &[String],
    locations: Locations,
) -> Result<(), String> {
    let placed: Vec<(&str, String)> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let location = match locations {
                Locations::Same => LOCATION.to_string(),
                Locations::Distinct => distinct_location(i),
            };
            (client.as_str(), location)
        })
        .collect();
    seed_at(names, addr, &placed)
}

/// Makes each client known to the server at `addr` at its location (ISO 6709, as an IAMAT
/// gives it), one IAMAT each.
pub fn seed_at(names: &Names, addr: SocketAddr, clients: &[(&str, String)]) -> Result<(), String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let tick = names.now_tick();
    let mut line = String::new();
    for batch in clients.chunks(BATCH) {
        let mut bytes = Vec::with_capacity(batch.len() * 96);
        for (client, location) in batch {
            bytes.extend_from_slice(&names.iamat_at(client, location, tick));
        }
        conn.write_all(&bytes).map_err(|e| format!("write: {e}"))?;
        for (client, _) in batch {
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("seeding {client}: {e}"))?;
            if !line.starts_with("AT ") {
                return Err(format!("IAMAT for {client} answered: {}", line.trim_end()));
            }
        }
    }
    Ok(())
}
