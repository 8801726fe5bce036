//! Scenario 16: TLS against clear, the same build in the same run. (1) IAMAT over a client TLS
//! port (`tls NAME IP:PORT CERT KEY`) at C=50 x P=1 and P=16 beside the same over the plain
//! port; (2) new connections per second, full TLS handshakes against plain connects; (3) RSS
//! per idle connection, TLS against plain; (4) flood latency in the five-server herd with
//! `peer tls` against the same herd in clear, idle; (5) staleness after load with `peer tls`
//! against clear. Certificates come from `herd certs`; the bench's TLS client (bench/tls.rs)
//! trusts the herd's CA only and does one full handshake per connection.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use herd_test_support::harness::{accepts, find_program, free_ports, Process, TempDir};

use super::staleness::{
    catch_up_row, load_and_catch_up, polled_directives, wait_for_links, Caught, Clients,
    CONNECTIONS, IN_FLIGHT, ORIGIN,
};
use crate::commands::{IamatLoad, LOCATION};
use crate::cpu::CpuMark;
use crate::herd::{need_open_files, refused_places_url, rss_bytes, Herd, HerdConfig};
use crate::hist::Histogram;
use crate::load::{run_load, Expect, LoadReport, LoadSpec, Workload};
use crate::report::{fmt_bytes, fmt_count, fmt_latency, fmt_ns, fmt_rate, fmt_share, Row, Section};
use crate::scenarios::{farthest, five_servers, load_row, round3, Ctx, Fleet};
use crate::tls::{cert_and_key, make_certs, round_trip, TlsClient};
use crate::watch::{first_update, time_updates, Flood, FloodTimes};

/// The one server of the client measurements, and the name its certificate is for.
const SERVER: &str = "Bench";
/// IAMAT shapes over the client TLS port, with the targets (TLS rate over plain rate).
const SHAPES: [((usize, usize), f64); 2] = [((50, 1), 0.8), ((50, 16), 0.7)];
/// Each shape runs this many times each way, alternating which goes first, on a fresh server
/// each time: a disturbance of the machine falls on both alike.
const ROUNDS: usize = 4;
/// Idle connections held for the memory figure.
const IDLE: usize = 2_000;
/// RSS per idle TLS connection allowed.
const IDLE_TARGET: f64 = 48.0 * 1024.0;
/// Flood: each server asked at most every 100 µs, as in scenario 2.
const PACE: Duration = Duration::from_micros(100);
/// Flood: updates are timed in chunks of this many, the two herds in turn.
const FLOOD_CHUNK: usize = 25;
/// Flood over TLS links: p99 at most this much above clear.
const FLOOD_MARGIN_NS: u64 = 100_000;

pub fn run(ctx: &Ctx) -> Section {
    Section::new("16 tls", "TLS against clear").measured(|section| measure(ctx, section))
}

fn measure(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    if ctx.target.is_some() {
        return Err(
            "with --target: the scenario makes its own certificates and starts its own servers"
                .into(),
        );
    }
    need_open_files(IDLE as u64 + 300)?;
    let certs = TempDir::new("tls-certs")?;
    let dir = certs.path().join("bench");
    make_certs(&ctx.bin, &HerdConfig::single(SERVER)?, &dir)?;
    let client = Arc::new(TlsClient::new(&dir.join("ca.pem"), SERVER)?);

    let herd_tls_rates = clients(ctx, section, &dir, &client)?;
    redis(ctx, section, &dir, &client, &herd_tls_rates)?;
    handshakes(ctx, section, &dir, &client)?;
    idle_memory(ctx, section, &dir, &client)?;
    flood(ctx, section)?;
    staleness(ctx, section)?;
    section.notes.push(format!(
        "every TLS connection of the bench is a session of its own (rustls client, resumption off, the herd's CA as its only root, TLS 1.3 negotiated), its handshake done before timing starts; `gen` is the generator thread's CPU, encryption included; IAMAT: {ROUNDS} runs each way per shape, alternating which goes first, a fresh server each run"
    ));
    Ok(())
}

/// A server with its plain port and a `tls` port, certificates from `certs`; killed on drop.
struct TlsServer {
    herd: Herd,
    tls_addr: SocketAddr,
}

impl TlsServer {
    fn start(ctx: &Ctx, certs: &Path, directives: &[&str]) -> Result<TlsServer, String> {
        let tls_addr = free_ports(1)?[0];
        let (cert, key) = cert_and_key(certs, SERVER);
        let mut config = HerdConfig::single(SERVER)?.with(&format!(
            "tls {SERVER} {tls_addr} {} {}",
            cert.display(),
            key.display()
        ));
        for directive in directives {
            config = config.with(directive);
        }
        let herd = Herd::start(&ctx.bin, config, "tls")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !accepts(tls_addr) {
            if Instant::now() >= deadline {
                return Err(format!("the TLS port {tls_addr} did not open in 5 s"));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(TlsServer { herd, tls_addr })
    }

    fn plain_addr(&self) -> SocketAddr {
        self.herd.config.addrs[0]
    }

    fn pid(&self) -> Option<u32> {
        self.herd.pid(0)
    }
}

/// IAMAT over the TLS port against the plain port, per shape.
fn clients(
    ctx: &Ctx,
    section: &mut Section,
    certs: &Path,
    client: &Arc<TlsClient>,
) -> Result<Vec<f64>, String> {
    let mut tls_rates = Vec::new();
    for ((connections, in_flight), target) in SHAPES {
        let (plain, tls) = alternate(|over_tls| {
            let server = TlsServer::start(ctx, certs, &[])?;
            let addr = if over_tls {
                server.tls_addr
            } else {
                server.plain_addr()
            };
            let mut spec =
                LoadSpec::new(addr, connections, in_flight, ctx.secs(2.0)).server(server.pid());
            if over_tls {
                spec = spec.tls(client.clone());
            }
            run_load(&spec, &mut IamatLoad::cycling(&ctx.names, connections))
        })?;
        tls_rates.push(tls.rate());
        let ratio = tls.rate() / plain.rate().max(1.0);
        let shape = format!("IAMAT C={connections} P={in_flight}");
        section.rows.push(
            load_row(format!("{shape}, plain port"), &plain)
                .figure("connections", connections)
                .figure("in_flight", in_flight)
                .figure("tls", false),
        );
        let mut row = load_row(format!("{shape}, TLS port"), &tls)
            .figure("connections", connections)
            .figure("in_flight", in_flight)
            .figure("tls", true)
            .figure("ratio_to_plain", round3(ratio))
            .figure(
                "p99_minus_plain_ns",
                tls.latency.percentile(0.99) as i64 - plain.latency.percentile(0.99) as i64,
            )
            .check(
                format!(">= {target}x plain (is {ratio:.2}x)"),
                ratio >= target,
            );
        row.result += &format!("  = {ratio:.2}x plain");
        section.rows.push(row);
    }
    Ok(tls_rates)
}

/// Runs `one(over_tls)` `ROUNDS` times each way, alternating which goes first: the plain
/// runs' report and the TLS runs' report, each over all its windows.
fn alternate(
    mut one: impl FnMut(bool) -> Result<LoadReport, String>,
) -> Result<(LoadReport, LoadReport), String> {
    let mut plain: Option<LoadReport> = None;
    let mut tls: Option<LoadReport> = None;
    for round in 0..ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for over_tls in order {
            let load = one(over_tls)?;
            let slot = if over_tls { &mut tls } else { &mut plain };
            match slot {
                Some(sum) => sum.absorb(load),
                None => *slot = Some(load),
            }
        }
    }
    plain.zip(tls).ok_or_else(|| "no run".to_string())
}

/// Redis `SET`s for the load generator, shaped like `IamatLoad::cycling`: each connection
/// cycles through 100 keys of its own, each value a location and an ever newer time.
struct RedisSets {
    ticks: Vec<u64>,
}

impl Workload for RedisSets {
    fn next_command(&mut self, conn: usize, out: &mut Vec<u8>) -> Option<Expect> {
        let tick = self.ticks[conn];
        self.ticks[conn] += 1;
        let key = tick % 100;
        out.extend_from_slice(format!("SET c{conn}-{key}.bench {LOCATION}/{tick}\r\n").as_bytes());
        Some(Expect::Line)
    }
}

/// Redis (`redis-server` on PATH) with a plain port and a TLS port showing `certs`' Bench
/// certificate, driven like the herd's client rows: `SET` at the same shapes over each port.
fn redis(
    ctx: &Ctx,
    section: &mut Section,
    certs: &Path,
    client: &Arc<TlsClient>,
    herd_tls_rates: &[f64],
) -> Result<(), String> {
    let Some(program) = find_program("redis-server") else {
        section.notes.push(
            "redis-server is not installed: no Redis rows (Debian: apt-get install redis-server)"
                .into(),
        );
        return Ok(());
    };
    let version = Command::new(&program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let dir = TempDir::new("tls-redis")?;
    let ports = free_ports(2)?;
    let (plain_addr, tls_addr) = (ports[0], ports[1]);
    let (cert, key) = cert_and_key(certs, SERVER);
    let mut command = Command::new(&program);
    command
        .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
        .args(["--port", &plain_addr.port().to_string()])
        .args(["--tls-port", &tls_addr.port().to_string()])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(certs.join("ca.pem"))
        .args(["--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no", "--logfile", ""])
        .arg("--dir")
        .arg(dir.path());
    // Killed when dropped, a panic included.
    let mut process = Process::spawn(command, &dir.path().join("redis.stderr"))?;
    process.wait_listening(&[plain_addr, tls_addr])?;
    let pid = Some(process.pid());
    for (&((connections, in_flight), _), &herd_tls) in SHAPES.iter().zip(herd_tls_rates) {
        let (plain, tls) = alternate(|over_tls| {
            let addr = if over_tls { tls_addr } else { plain_addr };
            let mut spec = LoadSpec::new(addr, connections, in_flight, ctx.secs(2.0)).server(pid);
            if over_tls {
                spec = spec.tls(client.clone());
            }
            let mut work = RedisSets {
                ticks: vec![0; connections],
            };
            run_load(&spec, &mut work)
        })?;
        let shape = format!("Redis SET C={connections} P={in_flight}");
        section
            .rows
            .push(load_row(format!("{shape}, plain port"), &plain).figure("redis", true));
        let ratio = tls.rate() / plain.rate().max(1.0);
        let herd_over = herd_tls / tls.rate().max(1.0);
        let mut row = load_row(format!("{shape}, TLS port"), &tls)
            .figure("redis", true)
            .figure("ratio_to_plain", round3(ratio))
            .figure("herd_tls_over_redis_tls", round3(herd_over))
            .check(
                format!("herd's TLS IAMAT rate above it (is {herd_over:.2}x)"),
                herd_over > 1.0,
            );
        row.result += &format!("  = {ratio:.2}x plain");
        section.rows.push(row);
    }
    section.notes.push(format!(
        "Redis: {version}; one process with its defaults (one I/O thread), no persistence, TLS with the same certificate and the same client; its `+OK` replies are counted as the herd's AT lines; the same {ROUNDS} runs each way"
    ));
    drop(process);
    Ok(())
}

/// What a loop of new connections measured.
struct Connects {
    count: u64,
    window: Duration,
    latency: Histogram,
    server_cpu: Option<f64>,
    /// The bench process (every client thread).
    generator_cpu: Option<f64>,
    other_cpu: Option<f64>,
}

/// `threads` threads each connecting in a loop for `secs`: connect, the TLS handshake when
/// `tls`, one `PING` answered, close (TLS: close_notify first). Timed from connect to answer.
fn connect_loop(
    addr: SocketAddr,
    tls: Option<&TlsClient>,
    threads: usize,
    secs: Duration,
    pid: Option<u32>,
) -> Result<Connects, String> {
    let one = |latency: &mut Histogram| -> Result<(), String> {
        let started = Instant::now();
        match tls {
            Some(client) => {
                let mut stream = client.connect(addr)?;
                round_trip(&mut stream)?;
                stream.conn.send_close_notify();
                let _ = stream.conn.write_tls(&mut stream.sock);
            }
            None => {
                let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                    .map_err(|e| format!("connect to {addr}: {e}"))?;
                stream
                    .set_nodelay(true)
                    .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(5))))
                    .map_err(|e| format!("socket options: {e}"))?;
                round_trip(&mut stream)?;
            }
        }
        latency.record(started.elapsed().as_nanos() as u64);
        Ok(())
    };
    let before = CpuMark::take(&[pid]);
    let started = Instant::now();
    let results: Vec<Result<Histogram, String>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut latency = Histogram::default();
                    while started.elapsed() < secs {
                        one(&mut latency)?;
                    }
                    Ok(latency)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err("a client thread panicked".into()))
            })
            .collect()
    });
    let window = started.elapsed();
    let shares = before.shares(&CpuMark::take(&[pid]));
    let mut latency = Histogram::default();
    for result in results {
        latency.merge(&result?);
    }
    Ok(Connects {
        count: latency.count(),
        window,
        latency,
        server_cpu: shares.servers[0],
        generator_cpu: shares.process,
        other_cpu: shares.other,
    })
}

/// New connections per second: plain connects, then full TLS handshakes, one client thread and
/// two.
fn handshakes(
    ctx: &Ctx,
    section: &mut Section,
    certs: &Path,
    client: &TlsClient,
) -> Result<(), String> {
    let server = TlsServer::start(ctx, certs, &["log lines off"])?;
    let runs = [
        ("plain", None, 1),
        ("TLS", Some(client), 1),
        ("TLS", Some(client), 2),
    ];
    let mut plain_rate = None;
    for (kind, tls, threads) in runs {
        let addr = if tls.is_some() {
            server.tls_addr
        } else {
            server.plain_addr()
        };
        // Plain connects run far faster: a shorter run keeps the TIME_WAIT sockets few.
        let secs = ctx.secs(if tls.is_some() { 3.0 } else { 1.0 });
        let run = connect_loop(addr, tls, threads, secs, server.pid())?;
        let rate = run.count as f64 / run.window.as_secs_f64().max(1e-9);
        let mut result = format!(
            "{}  {}  srv {} gen {} other {}",
            fmt_rate(rate),
            fmt_latency(&run.latency),
            fmt_share(run.server_cpu),
            fmt_share(run.generator_cpu),
            fmt_share(run.other_cpu)
        );
        if let (Some(plain), true) = (plain_rate, tls.is_some()) {
            result += &format!("  = {:.2}x plain", rate / f64::max(plain, 1.0));
        }
        if tls.is_none() {
            plain_rate = Some(rate);
        }
        let what = if tls.is_some() {
            "full handshakes"
        } else {
            "connects"
        };
        let mut row = Row::new(format!(
            "new {kind} connections ({what}, PING answered, closed), {threads} client thread{}",
            if threads > 1 { "s" } else { "" }
        ))
        .result(result)
        .figure("tls", tls.is_some())
        .figure("client_threads", threads)
        .figure("connections_per_s", rate.round())
        .figure("connections", run.count)
        .figure("window_s", round3(run.window.as_secs_f64()))
        .latency("", &run.latency);
        for (key, share) in [
            ("server_cpu", run.server_cpu),
            ("generator_cpu", run.generator_cpu),
            ("other_cpu", run.other_cpu),
        ] {
            if let Some(share) = share {
                row = row.figure(key, round3(share));
            }
        }
        section.rows.push(row);
    }
    Ok(())
}

/// RSS per idle connection: `IDLE` plain connections, then on a fresh server `IDLE` TLS ones
/// (handshake done), before any of them sends a command and after one `PING` answered on each.
fn idle_memory(
    ctx: &Ctx,
    section: &mut Section,
    certs: &Path,
    client: &TlsClient,
) -> Result<(), String> {
    for over_tls in [false, true] {
        let server = TlsServer::start(ctx, certs, &[])?;
        let pid = server.pid().ok_or("no server pid")?;
        thread::sleep(Duration::from_millis(200));
        let before = rss_bytes(pid).ok_or("no RSS")?;
        let started = Instant::now();
        let mut plain_conns = Vec::new();
        let mut tls_conns = Vec::new();
        for _ in 0..IDLE {
            if over_tls {
                tls_conns.push(client.connect(server.tls_addr)?);
            } else {
                let stream =
                    TcpStream::connect_timeout(&server.plain_addr(), Duration::from_secs(5))
                        .map_err(|e| format!("connect: {e}"))?;
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(|e| format!("socket options: {e}"))?;
                plain_conns.push(stream);
            }
        }
        let opening = started.elapsed();
        thread::sleep(Duration::from_millis(500));
        let idle = rss_bytes(pid).ok_or("no RSS")?;
        for stream in &mut tls_conns {
            round_trip(stream)?;
        }
        for stream in &mut plain_conns {
            round_trip(stream)?;
        }
        thread::sleep(Duration::from_millis(500));
        let spoke = rss_bytes(pid).ok_or("no RSS")?;
        let per = |after: u64| (after as f64 - before as f64) / IDLE as f64;
        let (kind, what) = if over_tls {
            ("TLS", "handshake done")
        } else {
            ("plain", "connected")
        };
        let mut row = Row::new(format!(
            "{} idle {kind} connections",
            fmt_count(IDLE as u64)
        ))
        .result(format!(
            "RSS {} each ({what}), {} each after one PING answered on each; opened in {:.1} s",
            fmt_bytes(per(idle)),
            fmt_bytes(per(spoke)),
            opening.as_secs_f64()
        ))
        .figure("tls", over_tls)
        .figure("connections", IDLE)
        .figure("rss_before_bytes", before)
        .figure("rss_idle_bytes", idle)
        .figure("rss_after_ping_bytes", spoke)
        .figure("rss_per_connection_bytes", per(idle).round())
        .figure("rss_per_connection_after_ping_bytes", per(spoke).round());
        if over_tls {
            row = row.check(
                "<= 48 KiB each, idle and after a PING",
                per(idle).max(per(spoke)) <= IDLE_TARGET,
            );
        }
        section.rows.push(row);
        // Closed before the server goes.
        for mut stream in tls_conns {
            stream.conn.send_close_notify();
            let _ = stream.conn.write_tls(&mut stream.sock);
            let _ = stream.sock.flush();
        }
        drop(plain_conns);
    }
    Ok(())
}

/// The five-server herd of SPEC section 4 with `directives`, its links in clear or with
/// `peer tls` (certificates made first); killed when dropped, the certificates after it.
struct FiveServers {
    fleet: Fleet,
    _certs: Option<TempDir>,
}

fn five_server_herd(
    ctx: &Ctx,
    label: &str,
    over_tls: bool,
    directives: &[String],
) -> Result<FiveServers, String> {
    let (names, links) = five_servers();
    let mut config = HerdConfig::new(&names, &links)?;
    for directive in directives {
        config = config.with(directive);
    }
    let certs = if over_tls {
        let dir = TempDir::new(&format!("{label}-certs"))?;
        let path: PathBuf = dir.path().join("herd");
        make_certs(&ctx.bin, &config, &path)?;
        config = config.with(&format!("peer tls {}", path.display()));
        Some(dir)
    } else {
        None
    };
    let fleet = Fleet::start_config(ctx, label, config)?;
    Ok(FiveServers {
        fleet,
        _certs: certs,
    })
}

fn links(over_tls: bool) -> &'static str {
    if over_tls {
        "peer tls"
    } else {
        "links in clear"
    }
}

/// Flood latency, idle, the herd in clear and the herd over TLS both running, their updates
/// timed in alternating chunks.
fn flood(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    let directives = [refused_places_url()?];
    let herds = [
        five_server_herd(ctx, "tls-flood-plain", false, &directives)?,
        five_server_herd(ctx, "tls-flood-tls", true, &directives)?,
    ];
    let names = herds[0].fleet.names.clone();
    let (hops, far) = farthest(names.len(), &herds[0].fleet.links, 0);
    let far_names: Vec<&str> = far.iter().map(|&i| names[i + 1].as_str()).collect();
    let mut floods = Vec::new();
    for herd in &herds {
        let fleet = &herd.fleet;
        let mut flood = Flood::new(fleet.addrs[0], &fleet.addrs[1..], &ctx.names, PACE)?;
        first_update(&mut flood, &fleet.names[1..], Duration::from_secs(10))?;
        floods.push(flood);
    }
    let count = ctx.count(300);
    let mut times = [FloodTimes::default(), FloodTimes::default()];
    let mut chunk = 0;
    while times[0].to_all.count() + times[0].lost < count as u64 {
        let order = if chunk % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let kind = if i == 0 { "fp" } else { "ft" };
            let part = time_updates(
                &mut floods[i],
                kind,
                &far,
                FLOOD_CHUNK,
                Duration::from_secs(10),
                Duration::from_secs(2),
            )?;
            times[i].to_all.merge(&part.to_all);
            times[i].to_farthest.merge(&part.to_farthest);
            times[i].lost += part.lost;
        }
        chunk += 1;
    }
    drop(floods);
    let plain_p99 = times[0].to_farthest.percentile(0.99);
    for (i, over_tls) in [(0, false), (1, true)] {
        let t = &times[i];
        let p99 = t.to_farthest.percentile(0.99);
        let mut row = Row::new(format!(
            "flood idle, {} -> {} ({} hops), {}",
            names[0],
            far_names.join(", "),
            hops.unwrap_or(0),
            links(over_tls)
        ))
        .result(format!(
            "{}  (n={}){}",
            fmt_latency(&t.to_farthest),
            t.to_farthest.count(),
            if t.lost > 0 {
                format!("  {} updates lost", t.lost)
            } else {
                String::new()
            }
        ))
        .figure("tls", over_tls)
        .figure("lost", t.lost)
        .latency("farthest_", &t.to_farthest)
        .latency("all_", &t.to_all);
        if over_tls {
            let diff = p99 as i64 - plain_p99 as i64;
            row.result += &format!(
                "  p99 {}{} vs clear",
                if diff < 0 { "-" } else { "+" },
                fmt_ns(diff.unsigned_abs())
            );
            row = row.figure("p99_minus_plain_ns", diff).check(
                "p99 <= clear + 100 µs",
                p99 <= plain_p99 + FLOOD_MARGIN_NS && t.lost == 0,
            );
        }
        section.rows.push(row);
    }
    Ok(())
}

/// Staleness after a C=50 P=16 load at Campbell (scenario 7's method, its 50-client and its
/// distinct rows, `log lines on`), the herd in clear and then over TLS.
fn staleness(ctx: &Ctx, section: &mut Section) -> Result<(), String> {
    let directives = polled_directives()?;
    for clients in [Clients::Own, Clients::Distinct(ctx.count(100_000))] {
        for over_tls in [false, true] {
            let herd = five_server_herd(ctx, "tls-staleness", over_tls, &directives)?;
            let fleet = &herd.fleet;
            let origin = fleet.names.iter().position(|n| n == ORIGIN).unwrap_or(0);
            let other_names: Vec<String> = fleet
                .others(origin)
                .iter()
                .map(|&i| fleet.names[i].clone())
                .collect();
            wait_for_links(ctx, fleet, origin)?;
            let (addr, pid) = fleet.server(origin);
            let mut spec = LoadSpec::new(addr, CONNECTIONS, IN_FLIGHT, ctx.secs(10.0)).server(pid);
            if clients != Clients::Own {
                spec.warmup = Duration::ZERO;
            }
            let Caught { load, caught, .. } =
                load_and_catch_up(ctx, fleet, origin, clients, &spec)?;
            let label = format!("staleness, {}, {}", clients.label(), links(over_tls));
            section
                .rows
                .push(catch_up_row(label, &caught, &other_names, &load).figure("tls", over_tls));
            section.rows.push(load_row(
                format!("  load at {ORIGIN} (C={CONNECTIONS} P={IN_FLIGHT})"),
                &load,
            ));
        }
    }
    Ok(())
}
