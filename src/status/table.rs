//! What `herd status` shows of each server, computed from its metrics pages: one [`Row`]
//! per server from the latest page and the one before it (for the per-second rates), the
//! quantiles of the Places latency histogram, the table as text, and whether the herd is
//! well (every server up, every link up). Pure: pages and times in, text out.

use super::exposition::Scrape;

/// How a server answered.
#[derive(Clone, Debug, PartialEq)]
pub enum Health {
    /// Its metrics page was read.
    Up,
    /// Its metrics address did not answer with a page: why.
    Down(String),
    /// The config gives it no `metrics` line: nothing to ask.
    NoMetrics,
}

/// What one server's metrics were, as read.
#[derive(Clone, Debug)]
pub enum Observed {
    Page(Scrape),
    Down(String),
    NoMetrics,
}

/// One line of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub server: String,
    pub health: Health,
    pub uptime_secs: Option<f64>,
    pub clients: Option<f64>,
    pub connections: Option<f64>,
    pub iamat_per_sec: Option<f64>,
    pub whatsat_per_sec: Option<f64>,
    /// Links up, links configured.
    pub links: Option<(u64, u64)>,
    /// The links are TLS (`peer tls`: the page shows the expiry of the herd's CA).
    pub links_tls: bool,
    pub max_owed: Option<f64>,
    /// Places latency quantiles over every call since the server started, in seconds.
    pub places_p50: Option<f64>,
    pub places_p99: Option<f64>,
    /// Failed Places calls over finished ones, since the server started.
    pub places_error_rate: Option<f64>,
}

impl Row {
    /// Up, with every configured link up.
    pub fn is_well(&self) -> bool {
        self.health == Health::Up && self.links.is_some_and(|(up, all)| up == all)
    }
}

/// The row of `server` from its page `now`, read at `now_unix`, and the page before it with
/// the seconds between the two (rates need both; without, they are left empty).
pub fn row(server: &str, now: &Observed, before: Option<(&Scrape, f64)>, now_unix: f64) -> Row {
    let mut row = Row {
        server: server.to_string(),
        health: Health::NoMetrics,
        uptime_secs: None,
        clients: None,
        connections: None,
        iamat_per_sec: None,
        whatsat_per_sec: None,
        links: None,
        links_tls: false,
        max_owed: None,
        places_p50: None,
        places_p99: None,
        places_error_rate: None,
    };
    let page = match now {
        Observed::NoMetrics => return row,
        Observed::Down(why) => {
            row.health = Health::Down(why.clone());
            return row;
        }
        Observed::Page(page) => page,
    };
    row.health = Health::Up;
    row.uptime_secs = page
        .get("herd_start_time_seconds", &[])
        .map(|start| (now_unix - start).max(0.0));
    row.clients = page.get("herd_clients_known", &[]);
    row.connections = page.get("herd_connections", &[]);
    if let Some((earlier, secs)) = before {
        let rate = |kind: &str| {
            let labels = [("kind", kind)];
            let (now, then) = (
                page.get("herd_commands_total", &labels)?,
                earlier.get("herd_commands_total", &labels)?,
            );
            // A counter that went down means the server restarted in between.
            (secs > 0.0 && now >= then).then(|| (now - then) / secs)
        };
        row.iamat_per_sec = rate("iamat");
        row.whatsat_per_sec = rate("whatsat");
    }
    let configured = page.get("herd_links_configured", &[]);
    let up = page.sum("herd_link_up").unwrap_or(0.0);
    row.links = configured.map(|all| (up as u64, all as u64));
    row.links_tls = page
        .get(
            "herd_tls_certificate_expiry_seconds",
            &[("certificate", "ca")],
        )
        .is_some();
    row.max_owed = page
        .all("herd_link_records_owed")
        .map(|s| s.value)
        .fold(None, |max: Option<f64>, v| {
            Some(max.map_or(v, |m| m.max(v)))
        })
        .or(configured.filter(|&all| all == 0.0));
    let buckets: Vec<(f64, f64)> = page
        .all("herd_places_latency_seconds_bucket")
        .filter_map(|s| Some((parse_le(s.label("le")?)?, s.value)))
        .collect();
    row.places_p50 = quantile(&buckets, 0.5);
    row.places_p99 = quantile(&buckets, 0.99);
    let finished = page.get("herd_places_latency_seconds_count", &[]);
    let errors = page.sum("herd_places_errors_total");
    row.places_error_rate = match (errors, finished) {
        (Some(errors), Some(finished)) if finished > 0.0 => Some(errors / finished),
        _ => None,
    };
    row
}

fn parse_le(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        _ => text.parse().ok(),
    }
}

/// The `q` quantile of a histogram given as cumulative `(upper bound, count)` buckets, as
/// Prometheus' `histogram_quantile` estimates it: linear within the bucket the rank falls
/// in (from 0 for the first); a rank in the `+Inf` bucket is the highest finite bound.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let mut buckets = buckets.to_vec();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().filter(|b| b.0.is_infinite())?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(upper, count) in &buckets {
        if count >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            if count == below {
                return Some(upper);
            }
            return Some(lower + (upper - lower) * (rank - below) / (count - below));
        }
        (lower, below) = (upper, count);
    }
    None
}

/// The table, with a header, one line per row, and then one line per server that is down
/// saying why.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "server",
        "state",
        "uptime",
        "clients",
        "conns",
        "iamat/s",
        "whatsat/s",
        "links",
        "max owed",
        "places p50",
        "p99",
        "errors",
    ];
    let cells: Vec<Vec<String>> = rows.iter().map(cells).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for line in &cells {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut write_line = |line: &[String]| {
        let mut out = String::new();
        for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
            // Names and states to the left, figures to the right.
            let padded = if i < 2 {
                format!("{cell:<width$}")
            } else {
                format!("{cell:>width$}")
            };
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(&padded);
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    write_line(&header.map(String::from));
    for line in &cells {
        write_line(line);
    }
    for row in rows {
        if let Health::Down(why) = &row.health {
            text.push_str(&format!("{}: {why}\n", row.server));
        }
    }
    text
}

fn cells(row: &Row) -> Vec<String> {
    let state = match &row.health {
        Health::Up if row.is_well() => "up",
        Health::Up => "up, link down",
        Health::Down(_) => "down",
        Health::NoMetrics => "no metrics",
    };
    let dash = || "-".to_string();
    let count = |v: Option<f64>| v.map_or_else(dash, |v| format!("{v:.0}"));
    let rate = |v: Option<f64>| v.map_or_else(dash, |v| format!("{v:.1}"));
    let millis = |v: Option<f64>| v.map_or_else(dash, format_seconds);
    vec![
        row.server.clone(),
        state.to_string(),
        row.uptime_secs.map_or_else(dash, format_uptime),
        count(row.clients),
        count(row.connections),
        rate(row.iamat_per_sec),
        rate(row.whatsat_per_sec),
        row.links.map_or_else(dash, |(up, all)| {
            let tls = if row.links_tls { " tls" } else { "" };
            format!("{up}/{all}{tls}")
        }),
        count(row.max_owed),
        millis(row.places_p50),
        millis(row.places_p99),
        row.places_error_rate
            .map_or_else(dash, |r| format!("{:.1}%", r * 100.0)),
    ]
}

/// `42s`, `12m03s`, `3h04m`, `2d03h`.
pub fn format_uptime(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A latency: `850 µs`, `142 ms`, `2.50 s`.
fn format_seconds(secs: f64) -> String {
    if secs < 0.001 {
        format!("{:.0} µs", secs * 1e6)
    } else if secs < 1.0 {
        format!("{:.0} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(text: &str) -> Observed {
        Observed::Page(Scrape::parse(text).unwrap())
    }

    const CAMPBELL: &str = "\
herd_start_time_seconds 1000
herd_clients_known 250
herd_connections 12
herd_commands_total{kind=\"iamat\"} 600
herd_commands_total{kind=\"whatsat\"} 30
herd_links_configured 2
herd_link_up{link=\"Bona\"} 1
herd_link_up{link=\"Bailey\"} 1
herd_link_records_owed{link=\"Bona\"} 3
herd_link_records_owed{link=\"Bailey\"} 17
herd_places_errors_total{kind=\"timeout\"} 1
herd_places_errors_total{kind=\"status\"} 1
herd_places_latency_seconds_bucket{le=\"0.1\"} 10
herd_places_latency_seconds_bucket{le=\"0.2\"} 90
herd_places_latency_seconds_bucket{le=\"0.5\"} 99
herd_places_latency_seconds_bucket{le=\"+Inf\"} 100
herd_places_latency_seconds_count 100
";

    fn earlier() -> Scrape {
        Scrape::parse(
            "herd_commands_total{kind=\"iamat\"} 400\nherd_commands_total{kind=\"whatsat\"} 30\n",
        )
        .unwrap()
    }

    #[test]
    fn a_row_from_two_pages() {
        let before = earlier();
        let row = row("Campbell", &page(CAMPBELL), Some((&before, 2.0)), 4723.0);
        assert_eq!(row.health, Health::Up);
        assert_eq!(row.uptime_secs, Some(3723.0));
        assert_eq!((row.clients, row.connections), (Some(250.0), Some(12.0)));
        assert_eq!(row.iamat_per_sec, Some(100.0));
        assert_eq!(row.whatsat_per_sec, Some(0.0));
        assert_eq!(row.links, Some((2, 2)));
        assert_eq!(row.max_owed, Some(17.0));
        assert!((row.places_p50.unwrap() - 0.15).abs() < 1e-9, "{row:?}");
        assert!((row.places_p99.unwrap() - 0.5).abs() < 1e-9, "{row:?}");
        assert_eq!(row.places_error_rate, Some(0.02));
        assert!(row.is_well());
    }

    #[test]
    fn without_an_earlier_page_or_after_a_restart_there_is_no_rate() {
        let row1 = row("Campbell", &page(CAMPBELL), None, 4723.0);
        assert_eq!(row1.iamat_per_sec, None);
        let restarted = Scrape::parse("herd_commands_total{kind=\"iamat\"} 9000\n").unwrap();
        let row2 = row("Campbell", &page(CAMPBELL), Some((&restarted, 1.0)), 4723.0);
        assert_eq!(row2.iamat_per_sec, None);
    }

    #[test]
    fn a_link_down_or_a_server_down_is_not_well() {
        let cut = CAMPBELL.replace(
            "herd_link_up{link=\"Bona\"} 1",
            "herd_link_up{link=\"Bona\"} 0",
        );
        let row_cut = row("Campbell", &page(&cut), None, 4723.0);
        assert_eq!(row_cut.links, Some((1, 2)));
        assert!(!row_cut.is_well());
        let down = row(
            "Bona",
            &Observed::Down("connection refused".into()),
            None,
            0.0,
        );
        assert_eq!(down.health, Health::Down("connection refused".into()));
        assert!(!down.is_well());
        let unknown = row("Clark", &Observed::NoMetrics, None, 0.0);
        assert!(!unknown.is_well());
        let alone = row("Solo", &page("herd_links_configured 0\n"), None, 0.0);
        assert_eq!((alone.links, alone.max_owed), (Some((0, 0)), Some(0.0)));
        assert!(alone.is_well(), "a server without links has every link up");
    }

    #[test]
    fn links_over_tls_say_so() {
        let plain = row("Campbell", &page(CAMPBELL), None, 4723.0);
        assert!(!plain.links_tls);
        assert_eq!(cells(&plain)[7], "2/2");
        let clients_only = format!(
            "{CAMPBELL}herd_tls_certificate_expiry_seconds{{certificate=\"clients\"}} 2e9\n"
        );
        assert!(!row("Campbell", &page(&clients_only), None, 4723.0).links_tls);
        let tls = format!(
            "{clients_only}herd_tls_certificate_expiry_seconds{{certificate=\"ca\"}} 2e9\n"
        );
        let tls = row("Campbell", &page(&tls), None, 4723.0);
        assert!(tls.links_tls && tls.is_well());
        assert_eq!(cells(&tls)[7], "2/2 tls");
    }

    #[test]
    fn quantiles_follow_histogram_quantile() {
        let buckets = [
            (0.1, 0.0),
            (0.2, 50.0),
            (0.4, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(quantile(&buckets, 0.5), Some(0.2));
        assert!((quantile(&buckets, 0.25).unwrap() - 0.15).abs() < 1e-12);
        assert!((quantile(&buckets, 0.75).unwrap() - 0.3).abs() < 1e-12);
        // Above the highest finite bound: that bound.
        let slow = [(0.1, 1.0), (f64::INFINITY, 10.0)];
        assert_eq!(quantile(&slow, 0.99), Some(0.1));
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[(0.1, 3.0)], 0.5), None, "no +Inf bucket");
        // The first bucket starts at 0.
        assert!(
            (quantile(&[(0.1, 10.0), (f64::INFINITY, 10.0)], 0.5).unwrap() - 0.05).abs() < 1e-12
        );
    }

    #[test]
    fn the_table_lines_up_and_says_why_a_server_is_down() {
        let before = earlier();
        let rows = [
            row("Campbell", &page(CAMPBELL), Some((&before, 2.0)), 4723.0),
            row(
                "Bona",
                &Observed::Down("127.0.0.1:9101: connection refused".into()),
                None,
                0.0,
            ),
            row("Clark", &Observed::NoMetrics, None, 0.0),
        ];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(
            lines[0].starts_with("server    state       uptime  clients"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("Campbell  up           1h02m      250"),
            "{text}"
        );
        assert!(lines[1].contains("100.0"), "{text}");
        assert!(lines[1].contains("2/2"), "{text}");
        assert!(lines[1].ends_with("150 ms  500 ms    2.0%"), "{text}");
        assert!(
            lines[2].starts_with("Bona      down             -"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("Clark     no metrics       -"),
            "{text}"
        );
        assert_eq!(lines[4], "Bona: 127.0.0.1:9101: connection refused");
    }

    #[test]
    fn uptimes_and_latencies_read_easily() {
        assert_eq!(format_uptime(42.9), "42s");
        assert_eq!(format_uptime(723.0), "12m03s");
        assert_eq!(format_uptime(11_040.0), "3h04m");
        assert_eq!(format_uptime(183_600.0), "2d03h");
        assert_eq!(format_seconds(0.00085), "850 µs");
        assert_eq!(format_seconds(0.142), "142 ms");
        assert_eq!(format_seconds(2.5), "2.50 s");
    }
}
