//! `places api local` at start: the places file is found beside the config, and a missing
//! `places file` line, an unreadable file or a broken one is refused like a config error (one
//! stderr line naming the file and the line or feature, exit status 2, no port opened). What
//! a good file answers is in tests/places_local.rs.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use herd_test_support::{
    harness::{accepts, free_ports, TempDir},
    run::run_herd,
};

/// Writes `conf/herd.conf` (server Alpha, then `places`) and each of `files` into `conf/`,
/// runs `herd Alpha conf/herd.conf` from the directory above, and returns its one stderr line
/// after checking exit status 2 and that no port was opened.
fn start_error(places: &str, files: &[(&str, Vec<u8>)]) -> String {
    let dir = TempDir::new("places-local").unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let addr = free_ports(1).unwrap()[0];
    std::fs::write(
        conf.join("herd.conf"),
        format!("server Alpha {addr}\n{places}"),
    )
    .unwrap();
    for (name, bytes) in files {
        std::fs::write(conf.join(name), bytes).unwrap();
    }
    let run = run_herd(&["Alpha", "conf/herd.conf"], dir.path());
    let line = run.refusal().to_string();
    assert!(!accepts(addr), "no port opened");
    line
}

fn gzip(text: &str) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(text.as_bytes()).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn places_api_local_without_a_file_names_the_config_line() {
    assert_eq!(
        start_error("log lines off\nplaces api local\n", &[]),
        "conf/herd.conf:3: places api local needs a 'places file PATH' line (a CSV or GeoJSON \
         file of places)"
    );
}

#[test]
fn a_broken_csv_file_is_named_with_its_line() {
    let csv = "name,lat,lon\nGood,1,1\nBad,123.4,0\n";
    assert_eq!(
        start_error(
            "places api local\nplaces file places.csv\n",
            &[("places.csv", csv.as_bytes().to_vec())]
        ),
        "conf/places.csv:3: latitude 123.4 is out of range (-90 to 90)"
    );
}

#[test]
fn a_broken_gzipped_geojson_file_is_named_with_its_feature() {
    let geojson = r#"{"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]},
         "properties": {"name": "Good"}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]},
         "properties": {"title": "Nameless"}}]}"#;
    assert_eq!(
        start_error(
            "places file world.geojson.gz\nplaces api local\n",
            &[("world.geojson.gz", gzip(geojson))]
        ),
        "conf/world.geojson.gz: feature 1: properties.name is missing"
    );
}

#[test]
fn a_missing_places_file_is_named() {
    let line = start_error("places api local\nplaces file nowhere.csv\n", &[]);
    assert!(
        line.starts_with("conf/nowhere.csv: cannot read: "),
        "{line}"
    );
}
