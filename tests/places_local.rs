//! `places api local` (Places without Google): WHATSAT answered from a file of places on the
//! server's disk, CSV or GeoJSON, plain or gzip — the places within the radius, nearest first,
//! at most `bound`, `{}` when none, framed as a Google answer is; no key asked for, and the
//! lookups counted apart from Places calls. SIGHUP reads the file again (a new file, the same
//! file changed, a switch to Google and back), and a broken file refuses the reload with the
//! old places kept.
//!
//! Each test runs real servers from one herd.conf in a directory of its own, with the places
//! files beside it.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use herd_test_support::checks::check_framing;
use herd_test_support::client::Client;
use herd_test_support::harness::{
    free_ports, herd_bin, refused_places_url, wait_for_log, Process, TempDir,
};
use herd_test_support::metrics::{sample, scrape};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// kiwi.cs.ucla.edu's location in the protocol's examples.
const KIWI: &str = "+34.068930-118.445127";
const KIWI_TIME: &str = "1621464827.959498503";

/// Places around UCLA, out of distance order; from KIWI: Royce Hall 0.52 km, Westwood
/// Village 0.82 km, the Getty Center 2.85 km, the Santa Monica Pier 8.05 km, downtown Los
/// Angeles 18.6 km, San Diego 192 km.
const UCLA_CSV: &str = "\
id,name,lat,lon,types,country
sm-pier,Santa Monica Pier,34.0101,-118.4960,tourist_attraction;point_of_interest,US
dtla,Downtown,34.0522,-118.2437,neighborhood,US
royce,Royce Hall,34.0729,-118.4422,university;point_of_interest,US
sd,San Diego,32.7157,-117.1611,locality,US
getty,Getty Center,34.0780,-118.4741,museum,US
westwood,\"Westwood Village, Los Angeles\",34.0617,-118.4468,,US
";

/// A herd of `names` run from `dir/herd.conf`.
struct Herd {
    /// First, so that the servers are stopped before their directory goes.
    processes: Vec<Option<Process>>,
    dir: TempDir,
    names: Vec<&'static str>,
    addrs: Vec<SocketAddr>,
}

impl Herd {
    fn new(names: &[&'static str]) -> Herd {
        Herd {
            dir: TempDir::new("places-local").expect("a temporary directory"),
            names: names.to_vec(),
            addrs: free_ports(names.len()).expect("free ports"),
            processes: names.iter().map(|_| None).collect(),
        }
    }

    /// Writes herd.conf: every server, each linked to the next, then `places`.
    fn write_config(&self, places: &str) {
        let mut text = String::new();
        for (name, addr) in self.names.iter().zip(&self.addrs) {
            text += &format!("server {name} {addr}\n");
        }
        for pair in self.names.windows(2) {
            text += &format!("link {} {}\n", pair[0], pair[1]);
        }
        text += "peer backoff-min-ms 50\npeer backoff-max-ms 400\n";
        text += places;
        self.write("herd.conf", text.as_bytes());
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.dir.path().join(name), bytes).expect("file written");
    }

    fn index(&self, name: &str) -> usize {
        self.names
            .iter()
            .position(|n| *n == name)
            .expect("a server")
    }

    #[track_caller]
    fn start(&mut self, name: &str) {
        let i = self.index(name);
        let mut command = Command::new(herd_bin());
        command
            .arg(name)
            .arg("herd.conf")
            .current_dir(self.dir.path())
            // No key in the environment: with places api local none is needed.
            .env_remove("GOOGLE_PLACES_API_KEY");
        let stderr = self.dir.path().join(format!("{name}.stderr"));
        let mut process = Process::spawn(command, &stderr).expect("herd started");
        if let Err(why) = process.wait_listening(&self.addrs[i..=i]) {
            panic!("{name} {why}");
        }
        self.processes[i] = Some(process);
    }

    fn process(&self, name: &str) -> &Process {
        self.processes[self.index(name)].as_ref().expect("running")
    }

    fn hangup(&self, name: &str) {
        self.process(name).signal("HUP").expect("SIGHUP sent");
    }

    /// Waits for `count` log lines of `name` holding `needle`; returns the log.
    #[track_caller]
    fn wait_log(&self, name: &str, needle: &str, count: usize) -> String {
        let path = self.dir.path().join(format!("{name}.log"));
        wait_for_log(&path, needle, count, WAIT)
    }

    fn client(&self, name: &str) -> Client {
        Client::connect(self.addrs[self.index(name)].port())
    }

    /// Tells `name` where kiwi is; returns the AT line.
    fn kiwi_at(&self, name: &str) -> String {
        self.client(name).iamat("kiwi.cs.ucla.edu", KIWI, KIWI_TIME)
    }

    /// A WHATSAT about kiwi at `name`: its JSON, after checking the framing.
    #[track_caller]
    fn whatsat(&self, name: &str, at_line: &str, radius_km: &str, bound: u8) -> Value {
        let mut client = self.client(name);
        client.send(&format!("WHATSAT kiwi.cs.ucla.edu {radius_km} {bound}"));
        check_framing(&client.read_whatsat_reply(), at_line)
    }
}

/// The names of the places of an answer, in order.
fn names(json: &Value) -> Vec<String> {
    json["places"]
        .as_array()
        .map(|places| {
            places
                .iter()
                .map(|p| p["displayName"]["text"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// UCLA_CSV as GeoJSON: the same places, each with a `type` instead of `types`, and a
/// property of its own.
fn ucla_geojson() -> String {
    let mut features = Vec::new();
    for row in [
        (
            "Santa Monica Pier",
            34.0101,
            -118.4960,
            "tourist_attraction",
        ),
        ("Royce Hall", 34.0729, -118.4422, "university"),
        ("San Diego", 32.7157, -117.1611, "locality"),
        ("Getty Center", 34.0780, -118.4741, "museum"),
    ] {
        let (name, lat, lon, kind) = row;
        features.push(serde_json::json!({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"name": name, "type": kind, "rating": 4.5},
        }));
    }
    serde_json::json!({"type": "FeatureCollection", "features": features}).to_string()
}

const LOCAL_CSV: &str = "places api local\nplaces file ucla.csv\n";

#[test]
fn whatsat_is_answered_from_a_csv_file_nearest_first() {
    let mut herd = Herd::new(&["Alpha"]);
    herd.write("ucla.csv", UCLA_CSV.as_bytes());
    let (metrics_line, metrics) = herd_test_support::metrics::metrics_lines(&["Alpha"]);
    herd.write_config(&format!("{LOCAL_CSV}{}\n", metrics_line[0]));
    herd.start("Alpha");
    let at = herd.kiwi_at("Alpha");

    let json = herd.whatsat("Alpha", &at, "10", 5);
    assert_eq!(
        names(&json),
        [
            "Royce Hall",
            "Westwood Village, Los Angeles",
            "Getty Center",
            "Santa Monica Pier"
        ],
        "within 10 km, nearest first: {json}"
    );
    let royce = &json["places"][0];
    assert_eq!(royce["id"], "royce");
    assert_eq!(royce["location"]["latitude"].as_f64(), Some(34.0729));
    assert_eq!(royce["location"]["longitude"].as_f64(), Some(-118.4422));
    assert_eq!(
        royce["types"],
        serde_json::json!(["university", "point_of_interest"])
    );
    assert_eq!(royce["country"], "US", "other columns are kept");
    assert_eq!(
        json["places"][1]["types"],
        serde_json::json!([]),
        "an empty types cell is an empty list: {json}"
    );

    // The bound, then the radius, cut the list; a radius with nothing in it is `{}`.
    assert_eq!(
        names(&herd.whatsat("Alpha", &at, "50", 2)),
        ["Royce Hall", "Westwood Village, Los Angeles"]
    );
    assert_eq!(
        names(&herd.whatsat("Alpha", &at, "50", 20)).len(),
        5,
        "San Diego is 192 km away"
    );
    assert_eq!(
        names(&herd.whatsat("Alpha", &at, "0.6", 20)),
        ["Royce Hall"]
    );
    let mut client = herd.client("Alpha");
    client.send("WHATSAT kiwi.cs.ucla.edu 0.1 20");
    let reply = client.read_whatsat_reply();
    assert_eq!(reply.raw, format!("{at}\n{{}}\n\n"), "nothing within 100 m");

    // Logged as other lookups are, counted apart from the calls, and no key asked for.
    let log = herd.wait_log("Alpha", "local ok results=0 in ", 1);
    assert!(log.contains(" local ok results=4 in "), "{log}");
    assert!(log.contains("places file ucla.csv: 6 places"), "{log}");
    let stderr = herd.process("Alpha").stderr_text();
    assert!(!stderr.contains("is not set"), "no key warning: {stderr}");
    let page = scrape(metrics[0]).expect("metrics");
    assert_eq!(sample(&page, "herd_places_local_total", ""), Some(5.0));
    assert_eq!(sample(&page, "herd_places_calls_total", ""), Some(0.0));
}

#[test]
fn whatsat_is_answered_from_a_gzipped_geojson_file_at_another_server() {
    let mut herd = Herd::new(&["Alpha", "Bravo"]);
    herd.write("ucla.geojson.gz", &gzip(ucla_geojson().as_bytes()));
    herd.write_config("places api local\nplaces file ucla.geojson.gz\n");
    herd.start("Alpha");
    herd.start("Bravo");
    let at = herd.kiwi_at("Alpha");
    // Bravo answers once the flood has brought it kiwi, with Alpha's AT line.
    herd.wait_log("Bravo", "kiwi.cs.ucla.edu", 1);
    let mut json = Value::Null;
    herd_test_support::harness::wait_until("Bravo to know kiwi", WAIT, || {
        let mut client = herd.client("Bravo");
        client.send("WHATSAT kiwi.cs.ucla.edu 10 3");
        let reply = client.read_whatsat_reply();
        if reply.at_line.starts_with("AT ") {
            json = check_framing(&reply, &at);
            Ok(())
        } else {
            Err(reply.raw)
        }
    });
    assert_eq!(
        names(&json),
        ["Royce Hall", "Getty Center", "Santa Monica Pier"]
    );
    let royce = &json["places"][0];
    assert_eq!(royce["types"], serde_json::json!(["university"]));
    assert_eq!(royce["rating"].as_f64(), Some(4.5));
    assert!(
        royce["id"].as_str().is_some_and(|id| !id.is_empty()),
        "a place without an id gets one: {royce}"
    );
}

#[test]
fn a_reload_reads_a_new_file_and_refuses_a_broken_one_keeping_the_old() {
    let mut herd = Herd::new(&["Alpha"]);
    herd.write("ucla.csv", UCLA_CSV.as_bytes());
    herd.write_config(LOCAL_CSV);
    herd.start("Alpha");
    let at = herd.kiwi_at("Alpha");
    assert_eq!(names(&herd.whatsat("Alpha", &at, "1", 1)), ["Royce Hall"]);

    // Another file.
    herd.write(
        "other.csv",
        b"name,lat,lon\nPauley Pavilion,34.0702,-118.4468\n",
    );
    herd.write_config("places api local\nplaces file other.csv\n");
    herd.hangup("Alpha");
    herd.wait_log("Alpha", "reload herd.conf: places; places file read", 1);
    assert_eq!(
        names(&herd.whatsat("Alpha", &at, "1", 5)),
        ["Pauley Pavilion"]
    );

    // Nothing changed (logrotate's SIGHUP): the file is not read again.
    herd.hangup("Alpha");
    herd.wait_log("Alpha", "reload herd.conf: places file unchanged", 1);
    assert_eq!(
        names(&herd.whatsat("Alpha", &at, "1", 5)),
        ["Pauley Pavilion"]
    );

    // The same file, changed, with the config as it was.
    herd.write(
        "other.csv",
        b"name,lat,lon\nAckerman Union,34.0705,-118.4441\n",
    );
    herd.hangup("Alpha");
    herd.wait_log("Alpha", "reload herd.conf: places file read", 1);
    assert_eq!(
        names(&herd.whatsat("Alpha", &at, "1", 5)),
        ["Ackerman Union"]
    );

    // A broken file: the reload is refused, saying where, and the old places stay.
    herd.write(
        "other.csv",
        b"name,lat,lon\nGood,34.07,-118.44\nBad,123.4,0\n",
    );
    herd.hangup("Alpha");
    let log = herd.wait_log("Alpha", "reload refused", 1);
    assert!(
        log.contains("reload refused: other.csv:3: latitude 123.4 is out of range (-90 to 90)"),
        "{log}"
    );
    assert_eq!(
        names(&herd.whatsat("Alpha", &at, "1", 5)),
        ["Ackerman Union"]
    );

    // A file that is gone, named as the config gives it.
    herd.write_config("places api local\nplaces file gone.csv\n");
    herd.hangup("Alpha");
    let log = herd.wait_log("Alpha", "reload refused", 2);
    assert!(
        log.contains("reload refused: gone.csv: cannot read: "),
        "{log}"
    );
    assert_eq!(
        names(&herd.whatsat("Alpha", &at, "1", 5)),
        ["Ackerman Union"]
    );
}

#[test]
fn a_reload_switches_to_google_and_back() {
    let mut herd = Herd::new(&["Alpha"]);
    herd.write("ucla.csv", UCLA_CSV.as_bytes());
    herd.write_config(LOCAL_CSV);
    herd.start("Alpha");
    let at = herd.kiwi_at("Alpha");

    // Google (at a closed port here: the answer is the framed 503), keeping the file line.
    let google = format!(
        "{}\nplaces file ucla.csv\n",
        refused_places_url().expect("a free port")
    );
    herd.write_config(&google);
    herd.hangup("Alpha");
    herd.wait_log("Alpha", "reload herd.conf: places", 1);
    let json = herd.whatsat("Alpha", &at, "10", 5);
    assert_eq!(json["error"]["code"], 503, "{json}");

    herd.write_config(LOCAL_CSV);
    herd.hangup("Alpha");
    herd.wait_log("Alpha", "reload herd.conf: places; places file read", 1);
    assert_eq!(
        names(&herd.whatsat("Alpha", &at, "1", 5)),
        ["Royce Hall", "Westwood Village, Los Angeles"]
    );
}
