//! The metrics endpoint (README "Running it for real"): `GET /metrics` answers while clients
//! load the server, its page passes `promtool check metrics`, a real Prometheus stores
//! samples of a three-server herd, and the listener's own limits (connections, request size,
//! time) hold and are logged.
//!
//! promtool and prometheus come from Debian's `prometheus` package (`.ci/run` installs it);
//! where they are missing, the two tests that need them say so on stderr (`skipped: ...`) and
//! pass without running.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use herd_test_support::client::Client;
use herd_test_support::cluster::Herd;
use herd_test_support::harness::{free_ports, poll, program_or_skip, wait_until, Process, TempDir};
use herd_test_support::metrics::{
    http_get, http_raw, metrics_lines, read_answer, sample, scrape, HTTP_TIMEOUT,
};
use herd_test_support::server::Server;

/// How long one scrape may take, also while the client port is under load (a debug build on
/// two shared cores answers in milliseconds; this is the safety margin).
const SCRAPE_DEADLINE: Duration = Duration::from_secs(2);

/// A single server with a metrics address and `extra` config lines.
#[track_caller]
fn server_with_metrics(extra: &[&str]) -> (Server, SocketAddr) {
    let (lines, addrs) = metrics_lines(&["Alpha"]);
    let mut builder = Server::builder("Alpha").line(&lines[0]);
    for line in extra {
        builder = builder.line(line);
    }
    let server = builder.start();
    let page = format!("a metrics page at {}", addrs[0]);
    wait_until(&page, Duration::from_secs(5), || scrape(addrs[0]).map(drop));
    (server, addrs[0])
}

fn iamats(page: &str) -> f64 {
    sample(page, "herd_commands_total", "kind=\"iamat\"").expect("an iamat count")
}

#[test]
fn metrics_answer_while_clients_hammer_the_port() {
    let (server, metrics) = server_with_metrics(&["log lines off"]);
    let accepted = |page: &str| sample(page, "herd_connections_accepted_total", "").unwrap();
    // The harness's own probe of the port was accepted before the hammers.
    let accepted_before = accepted(&scrape(metrics).expect("a first scrape"));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let hammers: Vec<_> = (0..3)
        .map(|t| {
            let (stop, answered, port) = (Arc::clone(&stop), Arc::clone(&answered), server.port);
            thread::spawn(move || {
                let mut client = Client::connect(port);
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // 50 pipelined IAMATs, then their 50 replies.
                    let batch: String = (0..50)
                        .map(|i| format!("IAMAT h{t}-{i} +1+2 {}\n", 1_600_000_000 + round))
                        .collect();
                    client.send_raw(batch.as_bytes());
                    for _ in 0..50 {
                        assert!(client.read_line().starts_with("AT Alpha "));
                    }
                    answered.fetch_add(50, Ordering::Relaxed);
                    round += 1;
                }
            })
        })
        .collect();
    wait_until("the load to get going", Duration::from_secs(5), || {
        answered.load(Ordering::Relaxed) > 0
    });
    let mut last = 0.0;
    for round in 0..6 {
        let seen = answered.load(Ordering::Relaxed);
        let started = Instant::now();
        let page = scrape(metrics).unwrap_or_else(|e| panic!("scrape {round}: {e}"));
        let took = started.elapsed();
        assert!(
            took < SCRAPE_DEADLINE,
            "scrape {round} took {took:?} under load"
        );
        let now = iamats(&page);
        assert!(
            now >= seen as f64 && now > last,
            "round {round}: {now} IAMATs counted, {seen} answered before, {last} at the last scrape"
        );
        assert_eq!(sample(&page, "herd_connections", ""), Some(3.0));
        last = now;
        // The next scrape comes after more replies were read, so its count must be higher.
        let more = format!("more replies after round {round} (the load stalled)");
        wait_until(&more, Duration::from_secs(5), || {
            answered.load(Ordering::Relaxed) > now as u64
        });
    }
    stop.store(true, Ordering::Relaxed);
    for hammer in hammers {
        hammer.join().expect("a hammer thread");
    }
    let total = answered.load(Ordering::Relaxed) as f64;
    let page = scrape(metrics).expect("a last scrape");
    assert_eq!(iamats(&page), total, "every answered IAMAT counted once");
    assert_eq!(sample(&page, "herd_clients_known", ""), Some(150.0));
    assert_eq!(
        sample(&page, "herd_lines_received_total", ""),
        Some(total),
        "{page}"
    );
    assert_eq!(sample(&page, "herd_lines_sent_total", ""), Some(total));
    let bytes_in = sample(&page, "herd_received_bytes_total", "").unwrap();
    assert!(
        bytes_in > total * 20.0,
        "{bytes_in} bytes for {total} lines"
    );
    assert_eq!(accepted(&page) - accepted_before, 3.0);
}

/// How to install promtool and prometheus.
const PROMETHEUS_PACKAGE: &str = "Debian: apt-get install prometheus";

/// A two-server herd with metrics, after commands of every kind and one Places call at Alpha.
fn busy_pair() -> (Herd, Vec<SocketAddr>) {
    let mut herd = Herd::new(&["Alpha", "Beta"], &[("Alpha", "Beta")]);
    let (lines, addrs) = metrics_lines(&["Alpha", "Beta"]);
    for line in &lines {
        herd.line(line);
    }
    herd.line("store dir data");
    herd.start_all();
    herd.wait_all_linked();
    let mut client = herd.client("Alpha");
    client.iamat("kiwi", "+34.068930-118.445127", "1621464827.959498503");
    assert_eq!(client.request("HELLO"), "? HELLO");
    client.send("WHATSAT kiwi 10 2");
    client.read_until_blank_line(); // the AT line, the error JSON of a refused Places, a blank
    (herd, addrs)
}

#[test]
fn the_page_passes_promtool_check_metrics() {
    let Some(promtool) = program_or_skip("promtool", PROMETHEUS_PACKAGE) else {
        return;
    };
    let (_herd, addrs) = busy_pair();
    let page = scrape(addrs[0]).expect("Alpha's page");
    // Every kind of family is on it: labelled counters, per-link gauges, the histogram.
    for needle in [
        "herd_info{server=\"Alpha\",version=\"",
        "herd_commands_total{kind=\"invalid\"} 1",
        "herd_link_state{link=\"Beta\",state=\"up\"} 1",
        "herd_link_up{link=\"Beta\"} 1",
        "herd_places_errors_total{kind=\"transport\"} 1",
        "herd_places_latency_seconds_bucket{le=\"+Inf\"} 1",
        "herd_places_latency_seconds_count 1",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "herd_store_enabled 1",
        "herd_store_failing 0",
        "herd_store_errors_total 0",
        "herd_log_dropped_bytes_total 0",
    ] {
        assert!(page.contains(needle), "no {needle:?} in:\n{page}");
    }
    // The IAMAT and the flood it made at Beta are in Alpha's store; the log has been written.
    let store_bytes = sample(&page, "herd_store_bytes", "").expect("herd_store_bytes");
    assert!(store_bytes > 0.0, "{page}");
    let log_bytes = sample(&page, "herd_log_written_bytes_total", "").expect("log bytes");
    assert!(log_bytes > 0.0, "{page}");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    check
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(page.as_bytes())
        .expect("feed promtool");
    let output = check.wait_with_output().expect("promtool's verdict");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics: {} {said}\npage:\n{page}",
        output.status
    );
}

#[test]
fn a_real_prometheus_scrapes_a_three_server_herd() {
    let Some(prometheus) = program_or_skip("prometheus", PROMETHEUS_PACKAGE) else {
        return;
    };
    let names = ["Alpha", "Beta", "Gamma"];
    let mut herd = Herd::chain(&names);
    let (lines, addrs) = metrics_lines(&names);
    for line in &lines {
        herd.line(line);
    }
    herd.start_all();
    let dir = TempDir::new("prometheus").expect("a temp dir");
    let targets: Vec<String> = addrs.iter().map(|a| format!("'{a}'")).collect();
    let config = dir
        .write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: herd\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("prometheus.yml");
    let web = free_ports(1).expect("a free port")[0];
    let mut command = Command::new(prometheus);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .current_dir(dir.path());
    let process =
        Process::spawn(command, &dir.path().join("prometheus.stderr")).expect("start prometheus");
    let stored = poll(Duration::from_secs(60), || {
        let answer = http_get(web, "/api/v1/query?query=herd_clients_known")?;
        if series_of(&answer.body) == 3 {
            Ok(())
        } else {
            Err(answer.body)
        }
    });
    if let Err(timed_out) = stored {
        panic!(
            "Prometheus never held herd_clients_known of all three servers: {timed_out}\n\
             its stderr:\n{}",
            tail_of(&dir.path().join("prometheus.stderr"))
        );
    }
    drop(process); // killed and reaped
}

/// How many series a Prometheus instant-query answer holds.
fn series_of(answer: &str) -> usize {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(answer) else {
        return 0;
    };
    if json["status"] != "success" {
        return 0;
    }
    json["data"]["result"].as_array().map_or(0, Vec::len)
}

fn tail_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[test]
fn index_page_links_to_metrics_and_other_paths_are_not_found() {
    let (server, metrics) = server_with_metrics(&[]);
    let index = http_get(metrics, "/").expect("GET /");
    assert_eq!(index.status, 200);
    assert!(
        index.head.contains("Content-Type: text/html"),
        "{}",
        index.head
    );
    assert!(
        index.body.contains("<a href=\"/metrics\">"),
        "{}",
        index.body
    );
    let page = http_get(metrics, "/metrics").expect("GET /metrics");
    assert!(
        page.head
            .contains("\r\nContent-Type: text/plain; version=0.0.4"),
        "{}",
        page.head
    );
    assert!(page.head.contains("\r\nConnection: close"), "{}", page.head);
    assert_eq!(http_get(metrics, "/metrics/x").unwrap().status, 404);
    let answer = http_raw(metrics, b"DELETE /metrics HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(answer.status, 405);
    let answer = http_raw(metrics, b"GET /metrics SPDY/3\r\n\r\n").unwrap();
    assert_eq!(answer.status, 400);
    // The client port is another thing altogether.
    let mut client = server.client();
    assert_eq!(
        client.request("GET /metrics HTTP/1.1"),
        "? GET /metrics HTTP/1.1"
    );
}

#[test]
fn the_metrics_listener_holds_its_limits_and_logs_them() {
    let (server, metrics) = server_with_metrics(&[
        "limit metrics-connections 2",
        "limit metrics-request-bytes 512",
        "limit metrics-timeout-ms 700",
    ]);
    // Two connections that say nothing hold both slots; a third is turned away at once.
    let mut idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(metrics).expect("connect"))
        .collect();
    for stream in &idle {
        stream.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    }
    let mut third = TcpStream::connect(metrics).expect("connect a third");
    third.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let busy = read_answer(&mut third).expect("an answer for the third");
    assert_eq!(busy.status, 503, "{busy:?}");
    server.wait_for_log("limit metrics-connections: 2 open, refusing 127.0.0.1:");
    // Clients are served all the while.
    let mut client = server.client();
    assert!(client.iamat("kiwi", "+1+2", "100").starts_with("AT Alpha "));
    // The idle ones are closed after the timeout, with a 408.
    let started = Instant::now();
    for stream in &mut idle {
        let answer = read_answer(stream).expect("a 408 and a close");
        assert_eq!(answer.status, 408, "{answer:?}");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}");
    server.wait_for_log("limit metrics-timeout-ms: 127.0.0.1:");
    // With the slots free again, a request head over the limit gets 431.
    let long = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(1000)
    );
    let answer = http_raw(metrics, long.as_bytes()).expect("an answer to a long head");
    assert_eq!(answer.status, 431, "{answer:?}");
    server.wait_for_log("limit metrics-request-bytes: 127.0.0.1:");
    // A request that trickles in a byte at a time but never ends is cut off at the timeout.
    let mut slow = TcpStream::connect(metrics).expect("connect");
    slow.set_read_timeout(Some(HTTP_TIMEOUT)).unwrap();
    let started = Instant::now();
    let mut cut_off = false;
    for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle().take(40) {
        if slow.write_all(&[*byte]).is_err() {
            cut_off = true;
            break;
        }
        // Not a wait: the trickle itself, a byte every 50 ms.
        thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        cut_off || text.starts_with("HTTP/1.1 408 "),
        "a trickling request was not cut off: {text:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    // And the listener still serves a normal scrape.
    assert!(scrape(metrics).is_ok());
}
