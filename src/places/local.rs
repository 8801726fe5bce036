//! The local places source of `places api local` (Places without Google): a file of places
//! read into memory once, and searches for the places nearest a point within a radius,
//! answered in the shape of the Places API (New) so that a WHATSAT reply looks like Google's.
//!
//! Pure apart from reading the file at load: no sockets, no threads, no clock. A search is fast
//! enough for the event loop to answer on the spot (a few microseconds, answer written, for
//! the world file herd ships and a 10 km radius); nothing here waits.
//!
//! What a file may be:
//!
//! - GeoJSON: a `FeatureCollection` of `Point` features (`coordinates` are `[longitude,
//!   latitude]`, a third number is ignored). `properties.name` is required; `properties.types`
//!   (a list of strings) or else `properties.type` (one string) gives the types; the id is the
//!   feature's `id`, else `properties.id`. Every other property is kept, in file order, as it
//!   is. Features are named in errors by their index in `features`, from 0.
//! - CSV: a header row naming at least `name`, `lat` (or `latitude`) and `lon` (or `lng`,
//!   `longitude`), in any case and order, and optionally `types` (`;`-separated) and `id`. Other
//!   columns are kept as string properties (an empty cell is left out). Fields may be quoted
//!   (`"a, b"`, `""` for a quote, line breaks inside quotes); every row has the header's number
//!   of fields. Rows are named in errors by the line they start on, from 1.
//!
//! Either may be gzip-compressed (found by its magic bytes, whatever the name). Which format a
//! file is comes from its name (`.csv`, `.geojson` or `.json`, before any `.gz`), else from its
//! first character (`{`: GeoJSON).
//!
//! A place without an id gets one made from where it is in the file and its name
//! (`local-17-9b1cd2f0`: line 17 or feature 17), the same at every load of the same file.
//! The answer's own fields (`id`, `displayName`, `location`, `types`) win over properties of
//! the same name, which are left out.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::bufread::MultiGzDecoder;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::request::PlacesQuery;
use super::response::{OutcomeKind, ShapedJson};
use crate::escape::Escaped;

/// The Earth's mean radius (IUGG), for great-circle distances.
const EARTH_RADIUS_METRES: f64 = 6_371_008.8;

/// Height of one band of the index. A 50 km search spans about 10 bands, in each of which two
/// binary searches find the places within the search's range of longitudes.
const BAND_DEGREES: f64 = 0.1;
const BANDS: usize = 1800;

/// Slack added to the ranges a search looks in, so that a place exactly at the radius is not
/// missed by a rounding of the range's bounds; the exact distance decides.
const RANGE_SLACK_DEGREES: f64 = 1e-9;

/// How far west of a search's range its binary search over the `f32` longitude keys starts:
/// more than an `f32`'s rounding of a longitude (at most 180 x 2^-24, 1.1e-5 degrees).
const KEY_SLACK: f64 = 1e-4;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Places read from a file, ready for searches.
///
/// Memory: 36 bytes a place (its position and offsets, and an `f32` key) plus its text (id,
/// name, and the rest as an answer prints it) in one string, and 7 KB for the bands; the
/// world file herd ships (171,075 places) takes about 26 MiB.
#[derive(Debug)]
pub struct LocalPlaces {
    path: PathBuf,
    /// The file as it was when it was opened (`None`: read from something else).
    stamp: Option<FileStamp>,
    /// Sorted by band, then longitude, then file order.
    places: Vec<Place>,
    /// The places of band `b` are `places[band_start[b]..band_start[b + 1]]`.
    band_start: Vec<u32>,
    /// Each place's longitude as an `f32`, in the order of `places`: what a search's binary
    /// search probes. A fifth of the bytes of `places`, so that its probes mostly hit the
    /// cache where those into `places` missed it (they were a third of a search's time).
    longitude_keys: Vec<f32>,
    /// Every place's id, name and rest, one after another in the order of `places`, so
    /// that the places a search finds, which are near each other in `places`, have their
    /// words near each other too (fetching them from memory was half a search's time when
    /// they lay in file order, all over the world file).
    text: String,
}

/// What tells a file that changed from one that did not, without reading it: which file it
/// is and its size, modification and change times. The change time (ctime) moves with any
/// write or rename into place and cannot be set back by a user, so an edit that keeps the
/// size and resets the modification time still shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    bytes: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            device: metadata.dev(),
            inode: metadata.ino(),
            bytes: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }
}

/// One place: its position, where it is in the file, and where its words are in
/// [`LocalPlaces::text`]: `id..name` is its id, `name..rest` its name, and `rest` up to the
/// next place's `id` (or the end of the text) its types and other fields, printed as an
/// answer prints them.
#[derive(Clone, Copy, Debug)]
struct Place {
    latitude: f64,
    longitude: f64,
    id: u32,
    name: u32,
    rest: u32,
    /// Its place in the file, from 0: equal distances are answered in file order.
    order: u32,
}

/// Why a file of places could not be read, and where in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPlacesError {
    pub path: PathBuf,
    pub at: Option<Where>,
    pub problem: String,
}

/// Where in a file a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// A CSV line, from 1.
    Line(usize),
    /// A GeoJSON feature, by its index in `features` (from 0).
    Feature(usize),
}

impl fmt::Display for LocalPlacesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = Escaped(self.path.as_os_str().as_bytes());
        match self.at {
            Some(Where::Line(line)) => write!(f, "{path}:{line}: {}", self.problem),
            Some(Where::Feature(index)) => write!(f, "{path}: feature {index}: {}", self.problem),
            None => write!(f, "{path}: {}", self.problem),
        }
    }
}

impl std::error::Error for LocalPlacesError {}

/// A problem and where it is, before the file's name is put to it.
type Problem = (Option<Where>, String);

fn at_line(line: usize, problem: impl Into<String>) -> Problem {
    (Some(Where::Line(line)), problem.into())
}

fn at_feature(index: usize, problem: impl Into<String>) -> Problem {
    (Some(Where::Feature(index)), problem.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    GeoJson,
}

impl LocalPlaces {
    /// Reads the file at `path` (see the module's comment for what it may hold).
    pub fn load(path: &Path) -> Result<LocalPlaces, LocalPlacesError> {
        let cannot_read = |e: io::Error| LocalPlacesError {
            path: path.to_path_buf(),
            at: None,
            problem: format!("cannot read: {e}"),
        };
        let file = File::open(path).map_err(cannot_read)?;
        // Taken before reading: a change made while the file is read shows at the next check.
        let stamp = FileStamp::of(&file.metadata().map_err(cannot_read)?);
        let mut places = LocalPlaces::read(path, BufReader::with_capacity(64 * 1024, file))?;
        places.stamp = Some(stamp);
        Ok(places)
    }

    /// True when `path` is the file these places were loaded from and it has not changed
    /// since (same file, size, modification and change times), so reading it again would
    /// give the same places: a SIGHUP sent to rotate the log need not read a world file again.
    pub fn is_unchanged(&self, path: &Path) -> bool {
        let now = std::fs::metadata(path).ok().map(|m| FileStamp::of(&m));
        path == self.path && now.is_some() && now == self.stamp
    }

    /// Reads places from `input`, called `path` in errors; the format comes from the path's
    /// name or the first character, as for a file.
    pub fn read(path: &Path, input: impl BufRead) -> Result<LocalPlaces, LocalPlacesError> {
        read_places(path, input).map_err(|(at, problem)| LocalPlacesError {
            path: path.to_path_buf(),
            at,
            problem,
        })
    }

    /// The file the places came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.places.len()
    }

    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// The memory the places take (for the log line of a load).
    pub fn heap_bytes(&self) -> usize {
        self.places.capacity() * std::mem::size_of::<Place>()
            + self.band_start.capacity() * std::mem::size_of::<u32>()
            + self.longitude_keys.capacity() * std::mem::size_of::<f32>()
            + self.text.capacity()
    }

    /// What was read, for the log: `PATH: N places, M MiB`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} places, {:.1} MiB",
            Escaped(self.path.as_os_str().as_bytes()),
            self.places.len(),
            self.heap_bytes() as f64 / (1024.0 * 1024.0)
        )
    }

    /// The answer to a WHATSAT: the places within `query.radius_metres` of the query's point by
    /// great-circle distance, nearest first, at most `query.bound`, as `{"places": [...]}` in
    /// the shape of the Places API (New); `{}` when there are none. Shaped as a Places answer
    /// is, so the loop hands it to the waiting WHATSATs the same way.
    ///
    /// Written out directly, byte for byte what `serde_json::to_string_pretty` prints for the
    /// same JSON (a test holds it to that): building a `Value` for each place and printing it
    /// took most of a WHATSAT's time on the loop.
    pub fn search(&self, query: &PlacesQuery) -> ShapedJson {
        let found = self.nearest(
            query.latitude,
            query.longitude,
            query.radius_metres,
            usize::from(query.bound),
        );
        let mut out = Vec::with_capacity(64 + found.len() * 384);
        if found.is_empty() {
            out.extend_from_slice(b"{}");
        } else {
            out.extend_from_slice(b"{\n  \"places\": [\n");
            for (i, found) in found.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b",\n");
                }
                self.write_place(found.index, &mut out);
            }
            out.extend_from_slice(b"\n  ]\n}");
        }
        ShapedJson {
            text: Arc::from(out),
            summary: format!("ok results={}", found.len()),
            kind: OutcomeKind::Ok,
        }
    }

    /// The places within `radius_metres` of the point, nearest first (equal distances in file
    /// order), at most `bound`.
    fn nearest(
        &self,
        latitude: f64,
        longitude: f64,
        radius_metres: f64,
        bound: usize,
    ) -> Vec<Found> {
        let nowhere = !latitude.is_finite() || !longitude.is_finite();
        if nowhere || radius_metres.is_nan() || radius_metres <= 0.0 || bound == 0 {
            return Vec::new();
        }
        let reach_degrees = (radius_metres / EARTH_RADIUS_METRES).to_degrees();
        let lowest = (latitude - reach_degrees - RANGE_SLACK_DEGREES).max(-90.0);
        let highest = (latitude + reach_degrees + RANGE_SLACK_DEGREES).min(90.0);
        let longitudes = longitude_ranges(latitude, longitude, reach_degrees);
        let from = Haversine::from(latitude, longitude);
        let within = Haversine::of_metres(radius_metres);
        let mut found = Vec::new();
        for band in band_of(lowest)..=band_of(highest) {
            let (start, end) = (
                self.band_start[band] as usize,
                self.band_start[band + 1] as usize,
            );
            let keys = &self.longitude_keys[start..end];
            for &(west, east) in longitudes.iter().flatten() {
                // The key is the longitude rounded to an f32 (off by at most 1.1e-5 degrees),
                // so the first candidate is found a little to the west; the exact longitude
                // decides, and the band is sorted by it, so the scan stops past `east`.
                let first = start + keys.partition_point(|&k| f64::from(k) < west - KEY_SLACK);
                for (index, place) in self.places[first..end].iter().enumerate() {
                    if place.longitude > east {
                        break;
                    }
                    let outside = place.longitude < west
                        || place.latitude < lowest
                        || place.latitude > highest;
                    if outside {
                        continue;
                    }
                    let haversine = from.to(place.latitude, place.longitude);
                    if haversine <= within {
                        found.push(Found {
                            index: first + index,
                            order: place.order,
                            distance_metres: metres(haversine),
                        });
                    }
                }
            }
        }
        let nearer = |a: &Found, b: &Found| {
            a.distance_metres
                .total_cmp(&b.distance_metres)
                .then(a.order.cmp(&b.order))
        };
        if found.len() > bound {
            found.select_nth_unstable_by(bound - 1, nearer);
            found.truncate(bound);
        }
        found.sort_unstable_by(nearer);
        found
    }

    /// Where the words of `places[index]` end in `text`.
    fn end_of(&self, index: usize) -> u32 {
        self.places
            .get(index + 1)
            .map_or(self.text.len() as u32, |next| next.id)
    }

    /// One place of an answer's `places` list, printed as `to_string_pretty` prints it there
    /// (four spaces in): `id`, `displayName.text`, `location`, then its types and other fields
    /// as the file gave them, which [`Builder::add`] printed already.
    fn write_place(&self, index: usize, out: &mut Vec<u8>) {
        let place = &self.places[index];
        let text = |from: u32, to: u32| &self.text[from as usize..to as usize];
        out.extend_from_slice(b"    {\n      \"id\": ");
        write_json(out, text(place.id, place.name));
        out.extend_from_slice(b",\n      \"displayName\": {\n        \"text\": ");
        write_json(out, text(place.name, place.rest));
        out.extend_from_slice(b"\n      },\n      \"location\": {\n        \"latitude\": ");
        write_json(out, &place.latitude);
        out.extend_from_slice(b",\n        \"longitude\": ");
        write_json(out, &place.longitude);
        out.extend_from_slice(b"\n      }");
        let rest = text(place.rest, self.end_of(index));
        if !rest.is_empty() {
            out.extend_from_slice(b",\n");
            out.extend_from_slice(rest.as_bytes());
        }
        out.extend_from_slice(b"\n    }");
    }

    /// One place as a JSON value: what [`LocalPlaces::write_place`] must print (see the tests).
    #[cfg(test)]
    fn place_json(&self, index: usize) -> Value {
        let place = &self.places[index];
        let text = |from: u32, to: u32| &self.text[from as usize..to as usize];
        let mut object = Map::new();
        object.insert("id".into(), text(place.id, place.name).into());
        object.insert(
            "displayName".into(),
            serde_json::json!({ "text": text(place.name, place.rest) }),
        );
        object.insert(
            "location".into(),
            serde_json::json!({ "latitude": place.latitude, "longitude": place.longitude }),
        );
        // Written by `Builder::add` as the fields of an object, so it parses.
        let rest = format!("{{\n{}\n}}", text(place.rest, self.end_of(index)));
        if let Ok(Value::Object(rest)) = serde_json::from_str(&rest) {
            object.extend(rest);
        }
        Value::Object(object)
    }
}

/// A place a search found: where it is in `places`, and its place in the file.
#[derive(Debug)]
struct Found {
    index: usize,
    order: u32,
    distance_metres: f64,
}

/// The band a latitude falls in (90 is in the last one).
fn band_of(latitude: f64) -> usize {
    // Monotonic in the latitude (IEEE addition and division are), which the searches rely on:
    // a latitude between two others is in a band between theirs.
    (((latitude + 90.0) / BAND_DEGREES).floor().max(0.0) as usize).min(BANDS - 1)
}

/// The longitudes (west, east) in which every point within `reach_degrees` (a great-circle
/// angle) of the point lies: one range, two where it crosses the antimeridian, or the whole
/// circle where the circle of the search holds a pole. Beyond the pole case, the widest a
/// circle of angular radius r around latitude φ reaches in longitude is asin(sin r / cos φ).
fn longitude_ranges(latitude: f64, longitude: f64, reach_degrees: f64) -> [Option<(f64, f64)>; 2] {
    const WHOLE: [Option<(f64, f64)>; 2] = [Some((-180.0, 180.0)), None];
    if latitude + reach_degrees >= 90.0 || latitude - reach_degrees <= -90.0 {
        return WHOLE;
    }
    let ratio = reach_degrees.to_radians().sin() / latitude.to_radians().cos();
    if ratio.is_nan() || ratio >= 1.0 {
        return WHOLE;
    }
    let half_width = ratio.asin().to_degrees() + RANGE_SLACK_DEGREES;
    let (west, east) = (longitude - half_width, longitude + half_width);
    if west < -180.0 {
        [Some((west + 360.0, 180.0)), Some((-180.0, east))]
    } else if east > 180.0 {
        [Some((west, 180.0)), Some((-180.0, east - 360.0))]
    } else {
        [Some((west, east)), None]
    }
}

/// Great-circle distances from one point by the haversine formula (accurate at small
/// distances; across the antimeridian the longitude difference works out the same), kept as
/// the haversine `h` of the angle: the distance is `2 R asin(sqrt(h))`, which grows with `h`,
/// so a search tells a place outside its radius by `h` alone and takes the arcsine only of
/// those inside (equal distances must compare equal: they are answered in file order). The
/// point's cosine is taken once per search, not once per place.
struct Haversine {
    phi: f64,
    cos_phi: f64,
    longitude: f64,
}

impl Haversine {
    fn from(latitude: f64, longitude: f64) -> Haversine {
        let phi = latitude.to_radians();
        Haversine {
            phi,
            cos_phi: phi.cos(),
            longitude,
        }
    }

    /// `h` for the angle from this point to the other.
    fn to(&self, latitude: f64, longitude: f64) -> f64 {
        let phi = latitude.to_radians();
        let half_dphi = (phi - self.phi) / 2.0;
        let half_dlambda = (longitude - self.longitude).to_radians() / 2.0;
        half_dphi.sin().powi(2) + self.cos_phi * phi.cos() * half_dlambda.sin().powi(2)
    }

    /// `h` for a distance (up to half the earth's circumference).
    fn of_metres(metres: f64) -> f64 {
        let half_angle = (metres / EARTH_RADIUS_METRES / 2.0).min(std::f64::consts::FRAC_PI_2);
        half_angle.sin().powi(2)
    }
}

/// The great-circle distance between two points.
#[cfg(test)]
fn distance_metres(lat_a: f64, lon_a: f64, lat_b: f64, lon_b: f64) -> f64 {
    metres(Haversine::from(lat_a, lon_a).to(lat_b, lon_b))
}

/// The distance of a haversine.
fn metres(haversine: f64) -> f64 {
    2.0 * EARTH_RADIUS_METRES * haversine.sqrt().min(1.0).asin()
}

/// Reads and indexes a file's places.
fn read_places(path: &Path, mut input: impl BufRead) -> Result<LocalPlaces, Problem> {
    let head = input.fill_buf().map_err(cannot_read)?;
    let mut input: Box<dyn BufRead> = if head.starts_with(&GZIP_MAGIC) {
        Box::new(BufReader::with_capacity(
            64 * 1024,
            MultiGzDecoder::new(input),
        ))
    } else {
        Box::new(input)
    };
    let format = match format_by_name(path) {
        Some(format) => format,
        None => {
            let head = input.fill_buf().map_err(cannot_read)?;
            let text = head.strip_prefix(b"\xef\xbb\xbf").unwrap_or(head);
            match text.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(b'{') => Format::GeoJson,
                _ => Format::Csv,
            }
        }
    };
    let mut builder = Builder::default();
    match format {
        Format::Csv => read_csv(input, &mut builder)?,
        Format::GeoJson => read_geojson(input, &mut builder)?,
    }
    Ok(builder.finish(path))
}

fn cannot_read(e: io::Error) -> Problem {
    (None, format!("cannot read: {e}"))
}

/// The format a file's name says, looking past a `.gz`.
fn format_by_name(path: &Path) -> Option<Format> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    let (_, extension) = name.rsplit_once('.')?;
    match extension {
        "csv" => Some(Format::Csv),
        "geojson" | "json" => Some(Format::GeoJson),
        _ => None,
    }
}

/// What a place of the file says, checked, for [`Builder::add`].
struct Entry<'a> {
    latitude: f64,
    longitude: f64,
    /// `None`: made from `index` and the name.
    id: Option<Cow<'a, str>>,
    name: &'a str,
    /// The line (CSV) or feature index (GeoJSON): what the made-up id is made from.
    index: usize,
    /// The types, then the other fields to keep, in order.
    rest: Rest<'a>,
}

/// A place's types and other fields, as its file gave them.
enum Rest<'a> {
    /// A GeoJSON feature's: `types` first, then the properties kept.
    Object(Map<String, Value>),
    /// A CSV row's, read straight from its fields: no map of values is built for each of
    /// the world file's places (that was a third of its load time).
    Row {
        columns: &'a Columns,
        fields: &'a [String],
    },
}

impl Rest<'_> {
    /// Appends the fields as an answer prints them (see [`push_fields`]).
    fn push_to(&self, text: &mut String) {
        match self {
            Rest::Object(object) => push_fields(text, object),
            Rest::Row { columns, fields } => push_row_fields(text, columns, fields),
        }
    }
}

/// Collects the places of a file as they are read.
#[derive(Default)]
struct Builder {
    places: Vec<Place>,
    text: String,
}

impl Builder {
    fn add(&mut self, entry: Entry<'_>) -> Result<(), String> {
        let offset = |text: &String| {
            u32::try_from(text.len())
                .map_err(|_| "the file holds more than 4 GiB of place text".to_string())
        };
        let id = offset(&self.text)?;
        match &entry.id {
            Some(given) => self.text.push_str(given),
            None => {
                let made = format!("local-{}-{:08x}", entry.index, fnv1a(entry.name));
                self.text.push_str(&made);
            }
        }
        let name = offset(&self.text)?;
        self.text.push_str(entry.name);
        let rest = offset(&self.text)?;
        entry.rest.push_to(&mut self.text);
        // Checked here, so that every offset of the text fits in a u32 when it is laid out
        // again in `finish`.
        offset(&self.text)?;
        let order = u32::try_from(self.places.len())
            .map_err(|_| "the file holds more than 2^32 places".to_string())?;
        self.places.push(Place {
            latitude: entry.latitude,
            longitude: entry.longitude,
            id,
            name,
            rest,
            order,
        });
        Ok(())
    }

    fn finish(mut self, path: &Path) -> LocalPlaces {
        // Each place's words end where the next place's begin, in file order.
        let ends: Vec<u32> = self
            .places
            .iter()
            .skip(1)
            .map(|p| p.id)
            .chain([self.text.len() as u32])
            .collect();
        // Each place's band worked out once, not at every comparison (the sort was a tenth
        // of the load).
        let mut keyed: Vec<(usize, Place)> = self
            .places
            .iter()
            .map(|p| (band_of(p.latitude), *p))
            .collect();
        keyed.sort_unstable_by(|(band_a, a), (band_b, b)| {
            band_a
                .cmp(band_b)
                .then(a.longitude.total_cmp(&b.longitude))
                .then(a.order.cmp(&b.order))
        });
        self.places = keyed.into_iter().map(|(_, place)| place).collect();
        // The words laid out again in the order of the places.
        let mut text = String::with_capacity(self.text.len());
        for place in &mut self.places {
            let (from, to) = (place.id as usize, ends[place.order as usize] as usize);
            let moved_to = text.len() as u32;
            text.push_str(&self.text[from..to]);
            let shift = |offset: u32| offset - place.id + moved_to;
            (place.name, place.rest) = (shift(place.name), shift(place.rest));
            place.id = moved_to;
        }
        let mut band_start = Vec::with_capacity(BANDS + 1);
        let mut next = 0;
        for band in 0..BANDS {
            band_start.push(next as u32);
            next += self.places[next..].partition_point(|p| band_of(p.latitude) <= band);
        }
        band_start.push(next as u32);
        self.places.shrink_to_fit();
        let longitude_keys = self.places.iter().map(|p| p.longitude as f32).collect();
        LocalPlaces {
            path: path.to_path_buf(),
            stamp: None,
            places: self.places,
            band_start,
            longitude_keys,
            text,
        }
    }
}

/// Appends the fields of `object` as `to_string_pretty` prints them inside a place of an
/// answer's `places` list: each line six spaces further in, without the object's braces, so
/// that a search copies them as they are. Nothing for an empty object.
fn push_fields(text: &mut String, object: &Map<String, Value>) {
    if object.is_empty() {
        return;
    }
    // A map of values always prints. Its lines are split at newlines, which only the printer
    // writes: a newline in a string is written `\n`.
    let printed = serde_json::to_string_pretty(object).unwrap_or_default();
    let lines: Vec<&str> = printed.lines().collect();
    if lines.len() < 3 {
        return;
    }
    for (i, line) in lines[1..lines.len() - 1].iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str("    ");
        text.push_str(line);
    }
}

/// Appends `value` as serde_json writes it (a string quoted and escaped, a number as `Value`
/// prints it).
fn write_json(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) {
    // Writing a string or a number to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// 32-bit FNV-1a: a stable hash for made-up ids (std's hashers may change between releases).
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// A latitude or longitude as the file wrote it: a finite number within ±`limit`.
fn coordinate(what: &str, text: &str, limit: f64) -> Result<f64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{what} is missing"));
    }
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() => check_range(what, value, text, limit),
        _ => Err(format!(
            "{what} '{}' is not a number",
            Escaped(text.as_bytes())
        )),
    }
}

fn check_range(what: &str, value: f64, shown: &str, limit: f64) -> Result<f64, String> {
    if (-limit..=limit).contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{what} {} is out of range (-{limit} to {limit})",
            Escaped(shown.as_bytes())
        ))
    }
}

// ---- CSV ----

/// The columns of a CSV file, from its header.
struct Columns {
    name: usize,
    latitude: usize,
    longitude: usize,
    types: Option<usize>,
    id: Option<usize>,
    /// Every other column, with its name as the header gave it.
    others: Vec<(usize, String)>,
    count: usize,
}

fn read_csv(input: impl BufRead, builder: &mut Builder) -> Result<(), Problem> {
    let mut records = CsvRecords::new(input);
    let Some(header_line) = records.next_record()? else {
        return Err((
            None,
            "the file is empty (a CSV file needs a header row)".into(),
        ));
    };
    let columns = columns(records.fields()).map_err(|problem| at_line(header_line, problem))?;
    while let Some(line) = records.next_record()? {
        csv_place(&columns, line, records.fields(), builder)
            .map_err(|problem| at_line(line, problem))?;
    }
    Ok(())
}

fn columns(header: &[String]) -> Result<Columns, String> {
    let mut found: [Option<(usize, &str)>; 5] = [None; 5];
    let mut others = Vec::new();
    for (index, raw) in header.iter().enumerate() {
        let title = raw.trim();
        let lower = title.to_ascii_lowercase();
        let slot = match lower.as_str() {
            "name" => Some(0),
            "lat" | "latitude" => Some(1),
            "lon" | "lng" | "longitude" => Some(2),
            "types" => Some(3),
            "id" => Some(4),
            _ => None,
        };
        match slot {
            Some(slot) => match found[slot] {
                Some((_, earlier)) => {
                    return Err(format!(
                        "columns '{}' and '{}' say the same thing",
                        Escaped(earlier.as_bytes()),
                        Escaped(title.as_bytes())
                    ))
                }
                None => found[slot] = Some((index, title)),
            },
            None if title.is_empty() => {
                return Err(format!("column {} has no name in the header", index + 1))
            }
            None if others
                .iter()
                .any(|(_, other): &(usize, String)| other == title) =>
            {
                return Err(format!(
                    "column '{}' appears twice in the header",
                    Escaped(title.as_bytes())
                ))
            }
            None => others.push((index, title.to_string())),
        }
    }
    let required = |slot: usize, what: &str| {
        found[slot].map(|(index, _)| index).ok_or_else(|| {
            format!(
                "the header has no {what} column (it must name name, lat or latitude, \
                 and lon, lng or longitude)"
            )
        })
    };
    Ok(Columns {
        name: required(0, "name")?,
        latitude: required(1, "latitude")?,
        longitude: required(2, "longitude")?,
        types: found[3].map(|(index, _)| index),
        id: found[4].map(|(index, _)| index),
        others,
        count: header.len(),
    })
}

fn csv_place(
    columns: &Columns,
    line: usize,
    fields: &[String],
    builder: &mut Builder,
) -> Result<(), String> {
    if fields.len() != columns.count {
        return Err(format!(
            "{} fields where the header names {} columns",
            fields.len(),
            columns.count
        ));
    }
    let name = fields[columns.name].trim();
    if name.is_empty() {
        return Err("name is empty".into());
    }
    let latitude = coordinate("latitude", &fields[columns.latitude], 90.0)?;
    let longitude = coordinate("longitude", &fields[columns.longitude], 180.0)?;
    let id = columns
        .id
        .map(|index| fields[index].trim())
        .filter(|id| !id.is_empty())
        .map(Cow::Borrowed);
    builder.add(Entry {
        latitude,
        longitude,
        id,
        name,
        index: line,
        rest: Rest::Row { columns, fields },
    })
}

/// The types of a CSV row (its `types` cell split at `;`, each trimmed, empty ones left out)
/// and every other column with a value (trimmed), in column order: the fields [`push_fields`]
/// prints for a row.
fn row_types<'a>(columns: &Columns, fields: &'a [String]) -> impl Iterator<Item = &'a str> {
    let cell = columns.types.map_or("", |index| fields[index].as_str());
    cell.split(';').map(str::trim).filter(|t| !t.is_empty())
}

fn row_others<'a>(
    columns: &'a Columns,
    fields: &'a [String],
) -> impl Iterator<Item = (&'a str, &'a str)> {
    columns
        .others
        .iter()
        .map(|(index, title)| (title.as_str(), fields[*index].trim()))
        .filter(|(title, value)| !value.is_empty() && !is_answer_field(title))
}

/// What [`push_fields`] prints for a CSV row's map of types and other columns, written
/// straight from the row.
fn push_row_fields(text: &mut String, columns: &Columns, fields: &[String]) {
    text.push_str("      \"types\": [");
    let mut types = row_types(columns, fields).peekable();
    if types.peek().is_some() {
        for (i, kind) in types.enumerate() {
            text.push_str(if i == 0 { "\n        " } else { ",\n        " });
            push_json_string(text, kind);
        }
        text.push_str("\n      ");
    }
    text.push(']');
    for (title, value) in row_others(columns, fields) {
        text.push_str(",\n      ");
        push_json_string(text, title);
        text.push_str(": ");
        push_json_string(text, value);
    }
}

/// Appends `value` as a JSON string, escaped as serde_json escapes it.
fn push_json_string(text: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    text.push('"');
    let mut plain = 0;
    for (at, byte) in value.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        text.push_str(&value[plain..at]);
        plain = at + 1;
        if escape.is_empty() {
            text.push_str("\\u00");
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            text.push_str(escape);
        }
    }
    text.push_str(&value[plain..]);
    text.push('"');
}

/// The fields the answer makes itself; a property of the same name is left out.
fn is_answer_field(name: &str) -> bool {
    matches!(name, "id" | "displayName" | "location" | "types")
}

/// The records of a CSV text, each with the line it starts on. Fields are separated by `,`;
/// a field that starts with `"` (after any spaces) is quoted: up to the next lone `"`, with
/// `""` for a quote and line breaks kept; spaces around a field are dropped. A `"` inside an
/// unquoted field is an ordinary character. Blank lines are skipped.
struct CsvRecords<R> {
    input: R,
    /// Lines read so far.
    line: usize,
    raw: Vec<u8>,
    /// The last record's fields are `fields[..count]`; the strings are kept from record to
    /// record and written over, so that a file's fields are not each a new allocation.
    fields: Vec<String>,
    count: usize,
}

/// Where the parser is within a record.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldState {
    /// At the start of a field, before anything but spaces.
    Start,
    Unquoted,
    Quoted,
    /// Just after a `"` inside a quoted field: a second `"` is a quote, else the field ended.
    QuoteInQuoted,
    /// After a quoted field's closing quote: only spaces until the `,` or the line's end.
    AfterQuoted,
}

/// What one byte of a record does.
enum Step {
    /// The parser goes on in this state (the byte, if it is text, was added to the field).
    Go(FieldState),
    /// A `,`: the field is whole.
    FieldEnd,
    /// Text after a quoted field's closing quote.
    TextAfterQuote,
}

impl FieldState {
    /// The parser's move on `byte`, text added to `field`.
    fn step(self, byte: u8, field: &mut Vec<u8>) -> Step {
        use FieldState::{AfterQuoted, QuoteInQuoted, Quoted, Start, Unquoted};
        let next = match (self, byte) {
            (Start, b' ' | b'\t') => Start,
            (Start, b'"') => Quoted,
            (Start | Unquoted | QuoteInQuoted | AfterQuoted, b',') => return Step::FieldEnd,
            (Start | Unquoted, _) => {
                field.push(byte);
                Unquoted
            }
            (Quoted, b'"') => QuoteInQuoted,
            (Quoted, _) => {
                field.push(byte);
                Quoted
            }
            (QuoteInQuoted, b'"') => {
                field.push(b'"');
                Quoted
            }
            (QuoteInQuoted | AfterQuoted, b' ' | b'\t') => AfterQuoted,
            (QuoteInQuoted | AfterQuoted, _) => return Step::TextAfterQuote,
        };
        Step::Go(next)
    }
}

impl<R: BufRead> CsvRecords<R> {
    fn new(input: R) -> Self {
        CsvRecords {
            input,
            line: 0,
            raw: Vec::new(),
            fields: Vec::new(),
            count: 0,
        }
    }

    /// The fields of the record [`CsvRecords::next_record`] read last.
    fn fields(&self) -> &[String] {
        &self.fields[..self.count]
    }

    /// Keeps one finished field of the record being read.
    fn push_field(
        &mut self,
        field: &mut Vec<u8>,
        state: FieldState,
        line: usize,
    ) -> Result<(), Problem> {
        let text = finish_field(field, state, line)?;
        match self.fields.get_mut(self.count) {
            Some(kept) => {
                kept.clear();
                kept.push_str(text);
            }
            None => self.fields.push(text.to_string()),
        }
        self.count += 1;
        field.clear();
        Ok(())
    }

    /// Reads the next record (its fields are then [`CsvRecords::fields`]); returns the line
    /// it starts on, `None` at the end of the text.
    fn next_record(&mut self) -> Result<Option<usize>, Problem> {
        self.count = 0;
        let mut field = Vec::new();
        let mut state = FieldState::Start;
        let mut first_line = 0;
        loop {
            self.raw.clear();
            let read = self
                .input
                .read_until(b'\n', &mut self.raw)
                .map_err(|e| at_line(self.line + 1, format!("cannot read: {e}")))?;
            if read == 0 {
                if state == FieldState::Quoted {
                    return Err(at_line(
                        first_line,
                        "a quoted field is not closed by the end of the file",
                    ));
                }
                return Ok(None);
            }
            self.line += 1;
            // Taken out for the record's fields to be written while its bytes are read.
            let raw = std::mem::take(&mut self.raw);
            let mut bytes = raw.as_slice();
            if self.line == 1 {
                bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
            }
            bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
            bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            if state == FieldState::Start && self.count == 0 {
                if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                    self.raw = raw;
                    continue;
                }
                first_line = self.line;
            }
            for &byte in bytes {
                state = match state.step(byte, &mut field) {
                    Step::Go(next) => next,
                    Step::FieldEnd => {
                        self.push_field(&mut field, state, first_line)?;
                        FieldState::Start
                    }
                    Step::TextAfterQuote => {
                        return Err(at_line(
                            self.line,
                            format!(
                                "field {} has text after its closing quote (a quote inside \
                                 a quoted field is written \"\")",
                                self.count + 1
                            ),
                        ))
                    }
                };
            }
            self.raw = raw;
            if state == FieldState::Quoted {
                // The line break is part of the quoted field; the record goes on.
                field.push(b'\n');
                continue;
            }
            self.push_field(&mut field, state, first_line)?;
            return Ok(Some(first_line));
        }
    }
}

/// A field's text: unquoted fields lose their trailing spaces (leading ones were skipped).
/// A field's text: unquoted, without the spaces after it; checked to be UTF-8.
fn finish_field(field: &mut Vec<u8>, state: FieldState, line: usize) -> Result<&str, Problem> {
    if state == FieldState::Unquoted {
        while field.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
            field.pop();
        }
    }
    match std::str::from_utf8(field) {
        Ok(text) => Ok(text),
        Err(_) => Err(at_line(
            line,
            format!("not UTF-8 text in '{}'", Escaped(field)),
        )),
    }
}

// ---- GeoJSON ----

/// Reads a FeatureCollection as it streams in, one feature at a time: a world file's whole
/// tree of JSON values would take several times the file's size.
fn read_geojson(input: impl Read, builder: &mut Builder) -> Result<(), Problem> {
    let mut failure = None;
    let mut deserializer = serde_json::Deserializer::from_reader(input);
    let read = Collection {
        builder,
        failure: &mut failure,
    }
    .deserialize(&mut deserializer)
    .and_then(|()| deserializer.end());
    match (failure, read) {
        (Some(problem), _) => Err(problem),
        (None, Err(e)) if e.is_io() => Err((None, format!("cannot read: {e}"))),
        (None, Err(e)) => Err((None, format!("not GeoJSON: {e}"))),
        (None, Ok(())) => Ok(()),
    }
}

/// The top-level object: `type` must be `FeatureCollection`; `features` are read one by one.
struct Collection<'a> {
    builder: &'a mut Builder,
    /// Our own reason to stop, which the deserializer's error (made to stop it) stands for.
    failure: &'a mut Option<Problem>,
}

impl<'de> DeserializeSeed<'de> for Collection<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Collection<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a GeoJSON FeatureCollection")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut kind: Option<Value> = None;
        let mut features = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "type" => kind = Some(map.next_value()?),
                "features" => {
                    map.next_value_seed(Features {
                        builder: &mut *self.builder,
                        failure: &mut *self.failure,
                    })?;
                    features = true;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let problem = match kind {
            Some(Value::String(kind)) if kind == "FeatureCollection" => None,
            Some(other) => Some(format!(
                "type is {}, not \"FeatureCollection\"",
                shown(&other)
            )),
            None => Some("no \"type\": \"FeatureCollection\"".to_string()),
        };
        let problem = problem.or_else(|| (!features).then(|| "no features list".to_string()));
        match problem {
            Some(problem) => {
                *self.failure = Some((None, problem));
                Err(de::Error::custom("not a FeatureCollection"))
            }
            None => Ok(()),
        }
    }
}

/// The `features` list, each feature added to the builder as soon as it is read.
struct Features<'a> {
    builder: &'a mut Builder,
    failure: &'a mut Option<Problem>,
}

impl<'de> DeserializeSeed<'de> for Features<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Features<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of GeoJSON features")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(feature) = seq.next_element::<Value>()? {
            if let Err(problem) = geojson_place(index, feature, self.builder) {
                *self.failure = Some(at_feature(index, problem));
                return Err(de::Error::custom("a feature is not a place"));
            }
            index += 1;
        }
        Ok(())
    }
}

/// A JSON value as an error quotes it: short, escaped.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    let cut: String = text.chars().take(40).collect();
    let more = if cut.len() < text.len() { "..." } else { "" };
    format!("{}{more}", Escaped(cut.as_bytes()))
}

fn geojson_place(index: usize, feature: Value, builder: &mut Builder) -> Result<(), String> {
    let Value::Object(mut feature) = feature else {
        return Err(format!("is {}, not an object", shown(&feature)));
    };
    match feature.get("type") {
        Some(Value::String(kind)) if kind == "Feature" => {}
        Some(other) => return Err(format!("type is {}, not \"Feature\"", shown(other))),
        None => return Err("has no \"type\": \"Feature\"".into()),
    }
    let (longitude, latitude) = point(feature.get("geometry"))?;
    let mut properties = match feature.shift_remove("properties") {
        Some(Value::Object(properties)) => properties,
        None | Some(Value::Null) => Map::new(),
        Some(other) => return Err(format!("properties is {}, not an object", shown(&other))),
    };
    let name = match properties.shift_remove("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => name,
        Some(Value::String(_)) => return Err("properties.name is empty".into()),
        Some(other) => {
            return Err(format!(
                "properties.name is {}, not a string",
                shown(&other)
            ))
        }
        None => return Err("properties.name is missing".into()),
    };
    let types = if let Some(types) = properties.shift_remove("types") {
        match types {
            Value::Array(list) if list.iter().all(Value::is_string) => list,
            other => {
                return Err(format!(
                    "properties.types is {}, not a list of strings",
                    shown(&other)
                ))
            }
        }
    } else {
        match properties.shift_remove("type") {
            Some(Value::String(kind)) => vec![Value::String(kind)],
            Some(other) => {
                return Err(format!(
                    "properties.type is {}, not a string",
                    shown(&other)
                ))
            }
            None => Vec::new(),
        }
    };
    let id = match feature.shift_remove("id") {
        Some(id) => Some(id),
        None => properties.shift_remove("id"),
    };
    let id = match id {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(Cow::Owned(id)),
        Some(Value::Number(id)) => Some(Cow::Owned(id.to_string())),
        Some(other) => return Err(format!("id is {}, not a string or number", shown(&other))),
    };
    let mut rest = Map::new();
    rest.insert("types".into(), Value::Array(types));
    for (key, value) in properties {
        if !is_answer_field(&key) {
            rest.insert(key, value);
        }
    }
    builder.add(Entry {
        latitude,
        longitude,
        id,
        name: name.trim(),
        index,
        rest: Rest::Object(rest),
    })
}

/// A Point geometry's `[longitude, latitude]`, checked.
fn point(geometry: Option<&Value>) -> Result<(f64, f64), String> {
    let geometry = match geometry {
        Some(Value::Object(geometry)) => geometry,
        None | Some(Value::Null) => return Err("geometry is missing".into()),
        Some(other) => return Err(format!("geometry is {}, not an object", shown(other))),
    };
    match geometry.get("type") {
        Some(Value::String(kind)) if kind == "Point" => {}
        Some(Value::String(kind)) => {
            return Err(format!(
                "geometry is a {}, not a Point",
                Escaped(kind.as_bytes())
            ))
        }
        _ => return Err("geometry has no \"type\": \"Point\"".into()),
    }
    let numbers = match geometry.get("coordinates") {
        Some(Value::Array(numbers)) if numbers.len() >= 2 => numbers,
        _ => {
            return Err("geometry.coordinates is not [longitude, latitude]".into());
        }
    };
    let number = |value: &Value, what: &str| {
        value
            .as_f64()
            .ok_or_else(|| format!("{what} {} is not a number", shown(value)))
    };
    let longitude = number(&numbers[0], "longitude")?;
    let latitude = number(&numbers[1], "latitude")?;
    Ok((
        check_range("longitude", longitude, &numbers[0].to_string(), 180.0)?,
        check_range("latitude", latitude, &numbers[1].to_string(), 90.0)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use proptest::prelude::*;
    use serde_json::json;
    use std::io::Write;

    fn csv(text: &str) -> Result<LocalPlaces, LocalPlacesError> {
        LocalPlaces::read(Path::new("places.csv"), text.as_bytes())
    }

    fn geojson(text: &str) -> Result<LocalPlaces, LocalPlacesError> {
        LocalPlaces::read(Path::new("world.geojson"), text.as_bytes())
    }

    fn csv_error(text: &str) -> String {
        csv(text)
            .expect_err("the file should be refused")
            .to_string()
    }

    fn geojson_error(text: &str) -> String {
        geojson(text)
            .expect_err("the file should be refused")
            .to_string()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn query(latitude: f64, longitude: f64, radius_metres: f64, bound: u8) -> PlacesQuery {
        PlacesQuery {
            latitude,
            longitude,
            radius_metres,
            bound,
        }
    }

    /// The JSON a search answers, parsed.
    fn answer(places: &LocalPlaces, q: &PlacesQuery) -> Value {
        serde_json::from_slice(&places.search(q).text).unwrap()
    }

    /// The names a search finds, nearest first.
    fn names(places: &LocalPlaces, q: &PlacesQuery) -> Vec<String> {
        let answer = answer(places, q);
        match answer.get("places") {
            Some(list) => list
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["displayName"]["text"].as_str().unwrap().to_string())
                .collect(),
            None => {
                assert_eq!(answer, json!({}), "no places: {{}}");
                Vec::new()
            }
        }
    }

    /// A GeoJSON FeatureCollection of these features.
    fn collection(features: &[Value]) -> String {
        json!({"type": "FeatureCollection", "features": features}).to_string()
    }

    fn point_feature(name: &str, longitude: f64, latitude: f64) -> Value {
        json!({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [longitude, latitude]},
            "properties": {"name": name},
        })
    }

    /// A place `metres` north of (0, 0) along the meridian.
    fn north_of_origin(metres: f64) -> f64 {
        (metres / EARTH_RADIUS_METRES).to_degrees()
    }

    // ---- CSV ----

    #[test]
    fn a_csv_place_answers_in_the_shape_of_the_new_api() {
        let places = csv("name,lat,lon,types,id,country,population\n\
             Eiffel Tower,48.8584,2.2945,tourist_attraction;landmark,ChIJ1,FR,\n")
        .unwrap();
        assert_eq!(places.len(), 1);
        let shaped = places.search(&query(48.8584, 2.2945, 1000.0, 5));
        assert_eq!(shaped.summary, "ok results=1");
        assert!(shaped.is_reusable());
        let value: Value = serde_json::from_slice(&shaped.text).unwrap();
        assert_eq!(
            value,
            json!({"places": [{
                "id": "ChIJ1",
                "displayName": {"text": "Eiffel Tower"},
                "location": {"latitude": 48.8584, "longitude": 2.2945},
                "types": ["tourist_attraction", "landmark"],
                "country": "FR",
            }]})
        );
        // Keys in this order, pretty-printed as Places answers are, with no blank lines.
        let text = std::str::from_utf8(&shaped.text).unwrap();
        let at = |key: &str| text.find(key).unwrap();
        assert!(at("\"id\"") < at("\"displayName\"") && at("\"displayName\"") < at("\"location\""));
        assert!(at("\"location\"") < at("\"types\"") && at("\"types\"") < at("\"country\""));
        assert!(text.starts_with("{\n  \"places\": [") && !text.contains("\n\n"));
        assert!(!text.ends_with('\n'));
    }

    #[test]
    fn csv_headers_may_use_any_of_the_names_in_any_case_and_order() {
        for header in [
            "lat,lon,name",
            "Latitude,Longitude,NAME",
            " lat , lng , name ",
            "LATITUDE,LON,Name",
        ] {
            let places = csv(&format!("{header}\n10,20,Here\n")).unwrap();
            assert_eq!(
                names(&places, &query(10.0, 20.0, 10.0, 1)),
                ["Here"],
                "{header}"
            );
        }
        let places = csv("name,longitude,latitude\nSwapped,20,10\n").unwrap();
        assert_eq!(names(&places, &query(10.0, 20.0, 10.0, 1)), ["Swapped"]);
    }

    #[test]
    fn quoted_csv_fields_hold_commas_quotes_and_line_breaks() {
        let places = csv("\u{feff}name,lat,lon,note\r\n\
             \"Caf\u{e9}, Paris\",1,1,\"He said \"\"hi\"\"\"\r\n\
             \"Two\nlines\", 1.001 , 1 ,  plain text  \r\n\
             \"\"\"Quoted\"\" start\",1.002,1,\"\"\n\
             Bare \"quote\" inside,1.003,1,x\n")
        .unwrap();
        let value = answer(&places, &query(1.0, 1.0, 1000.0, 10));
        let list = value["places"].as_array().unwrap();
        let name = |i: usize| list[i]["displayName"]["text"].as_str().unwrap();
        assert_eq!(name(0), "Caf\u{e9}, Paris");
        assert_eq!(list[0]["note"], "He said \"hi\"");
        assert_eq!(name(1), "Two\nlines");
        assert_eq!(list[1]["note"], "plain text");
        assert_eq!(list[1]["location"]["latitude"], 1.001);
        assert_eq!(name(2), "\"Quoted\" start");
        assert!(list[2].get("note").is_none(), "an empty cell is left out");
        assert_eq!(name(3), "Bare \"quote\" inside");
    }

    #[test]
    fn a_csv_without_types_or_id_gets_empty_types_and_a_stable_made_up_id() {
        let text = "name,lat,lon\nA,1,1\nB,1,1.001\n\nA,1,1.002\n";
        let value = answer(&csv(text).unwrap(), &query(1.0, 1.0, 1000.0, 10));
        let ids: Vec<&str> = value["places"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert_eq!(p["types"], json!([]));
                p["id"].as_str().unwrap()
            })
            .collect();
        assert_eq!(ids[0], format!("local-2-{:08x}", fnv1a("A")));
        assert!(ids[1].starts_with("local-3-") && ids[2].starts_with("local-5-"));
        assert_ne!(ids[0], ids[2], "same name, other line: another id");
        let again = answer(&csv(text).unwrap(), &query(1.0, 1.0, 1000.0, 10));
        assert_eq!(value, again, "the same file gives the same ids");
    }

    #[test]
    fn a_csv_header_without_a_required_column_is_refused_at_line_1() {
        assert_eq!(
            csv_error("name,lat\nA,1\n"),
            "places.csv:1: the header has no longitude column (it must name name, lat or \
             latitude, and lon, lng or longitude)"
        );
        assert!(csv_error("title,lat,lon\n").starts_with("places.csv:1: the header has no name"));
        assert!(
            csv_error("\n\nname,lon,x\n").starts_with("places.csv:3: the header has no latitude")
        );
        assert_eq!(
            csv_error("name,lat,latitude,lon\n"),
            "places.csv:1: columns 'lat' and 'latitude' say the same thing"
        );
        assert_eq!(
            csv_error("name,lat,lon,x,x\n"),
            "places.csv:1: column 'x' appears twice in the header"
        );
        assert_eq!(
            csv_error("name,lat,lon,\n"),
            "places.csv:1: column 4 has no name in the header"
        );
        assert_eq!(
            csv_error(""),
            "places.csv: the file is empty (a CSV file needs a header row)"
        );
        assert!(csv("name,lat,lon\n").unwrap().is_empty());
    }

    #[test]
    fn a_csv_row_with_missing_or_extra_fields_names_its_line() {
        let text = "name,lat,lon\nA,1,1\n\n\"multi\nline\",1,1\nB,1\n";
        assert_eq!(
            csv_error(text),
            "places.csv:6: 2 fields where the header names 3 columns"
        );
        assert_eq!(
            csv_error("name,lat,lon\nA,1,1,extra\n"),
            "places.csv:2: 4 fields where the header names 3 columns"
        );
    }

    #[test]
    fn bad_csv_numbers_name_their_line_and_value() {
        let mut text = "name,lat,lon\n".to_string();
        for n in 0..15 {
            text.push_str(&format!("P{n},{},{}\n", n, n));
        }
        let with = |row: &str| csv_error(&format!("{text}{row}\n"));
        assert_eq!(
            with("Far,123.4,0"),
            "places.csv:17: latitude 123.4 is out of range (-90 to 90)"
        );
        assert_eq!(
            with("Far,0,-180.5"),
            "places.csv:17: longitude -180.5 is out of range (-180 to 180)"
        );
        assert_eq!(
            with("X,abc,0"),
            "places.csv:17: latitude 'abc' is not a number"
        );
        assert_eq!(
            with("X,0,NaN"),
            "places.csv:17: longitude 'NaN' is not a number"
        );
        assert_eq!(
            with("X,inf,0"),
            "places.csv:17: latitude 'inf' is not a number"
        );
        assert_eq!(with("X,,0"), "places.csv:17: latitude is missing");
        assert_eq!(with(" ,0,0"), "places.csv:17: name is empty");
        // The edges themselves are in range.
        let edges = csv("name,lat,lon\nN,90,180\nS,-90,-180\n").unwrap();
        assert_eq!(edges.len(), 2);
    }

    #[test]
    fn broken_csv_quoting_is_refused_with_its_line() {
        assert_eq!(
            csv_error("name,lat,lon\nA,1,1\n\"open,1,1\nmore\n"),
            "places.csv:3: a quoted field is not closed by the end of the file"
        );
        assert_eq!(
            csv_error("name,lat,lon\n\"A\"B,1,1\n"),
            "places.csv:2: field 1 has text after its closing quote (a quote inside a quoted \
             field is written \"\")"
        );
        // Spaces after a closing quote are fine.
        assert_eq!(csv("name,lat,lon\n\"A\" ,1,1\n").unwrap().len(), 1);
    }

    #[test]
    fn csv_text_that_is_not_utf8_is_refused_with_its_line() {
        let bytes = b"name,lat,lon\nA,1,1\ncaf\xe9,1,1\n";
        let e = LocalPlaces::read(Path::new("places.csv"), &bytes[..]).unwrap_err();
        assert_eq!(e.to_string(), "places.csv:3: not UTF-8 text in 'caf\\xe9'");
    }

    #[test]
    fn properties_named_like_the_answer_fields_are_left_out() {
        let places = csv("name,lat,lon,location,displayName\nA,1,1,somewhere,shown\n").unwrap();
        let value = answer(&places, &query(1.0, 1.0, 10.0, 1));
        let place = &value["places"][0];
        assert_eq!(
            place["location"],
            json!({"latitude": 1.0, "longitude": 1.0})
        );
        assert_eq!(place["displayName"], json!({"text": "A"}));
    }

    // ---- GeoJSON ----

    #[test]
    fn geojson_features_keep_their_types_id_and_other_properties() {
        let text = collection(&[
            json!({
                "type": "Feature",
                "id": 42,
                "geometry": {"type": "Point", "coordinates": [2.2945, 48.8584, 35.0]},
                "properties": {
                    "name": "Eiffel Tower",
                    "types": ["landmark"],
                    "height_m": 330,
                    "address": {"city": "Paris"},
                    "type": "ignored beside types",
                },
            }),
            json!({
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [2.295, 48.8584]},
                "properties": {"name": "Kiosk", "type": "store", "id": "k-1"},
            }),
            json!({
                "type": "Feature",
                "geometry": {"type": "Point", "coordinates": [2.296, 48.8584]},
                "properties": {"name": "Bench", "properties": null},
            }),
        ]);
        let value = answer(&geojson(&text).unwrap(), &query(48.8584, 2.2945, 500.0, 20));
        assert_eq!(
            value["places"][0],
            json!({
                "id": "42",
                "displayName": {"text": "Eiffel Tower"},
                "location": {"latitude": 48.8584, "longitude": 2.2945},
                "types": ["landmark"],
                "height_m": 330,
                "address": {"city": "Paris"},
                "type": "ignored beside types",
            })
        );
        assert_eq!(value["places"][1]["id"], "k-1");
        assert_eq!(value["places"][1]["types"], json!(["store"]));
        assert!(value["places"][1].get("type").is_none());
        assert_eq!(value["places"][2]["types"], json!([]));
        assert!(value["places"][2]["id"]
            .as_str()
            .unwrap()
            .starts_with("local-2-"));
    }

    #[test]
    fn a_feature_collection_may_give_its_features_before_its_type() {
        let text = format!(
            r#"{{"features": [{}], "bbox": [0, 0, 1, 1], "type": "FeatureCollection"}}"#,
            point_feature("A", 1.0, 1.0)
        );
        assert_eq!(geojson(&text).unwrap().len(), 1);
    }

    #[test]
    fn geojson_problems_name_the_feature() {
        let good = point_feature("Good", 0.0, 0.0);
        let with = |bad: Value| {
            let mut features = vec![good.clone(); 5];
            features.push(bad);
            geojson_error(&collection(&features))
        };
        assert_eq!(
            with(
                json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]},
                        "properties": {"title": "x"}})
            ),
            "world.geojson: feature 5: properties.name is missing"
        );
        assert_eq!(
            with(
                json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]},
                        "properties": {"name": 7}})
            ),
            "world.geojson: feature 5: properties.name is 7, not a string"
        );
        assert_eq!(
            with(json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}})),
            "world.geojson: feature 5: properties.name is missing"
        );
        assert_eq!(
            with(json!({"type": "Feature",
                        "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]},
                        "properties": {"name": "Road"}})),
            "world.geojson: feature 5: geometry is a LineString, not a Point"
        );
        assert_eq!(
            with(json!({"type": "Feature", "geometry": null, "properties": {"name": "X"}})),
            "world.geojson: feature 5: geometry is missing"
        );
        assert_eq!(
            with(
                json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 123.4]},
                        "properties": {"name": "X"}})
            ),
            "world.geojson: feature 5: latitude 123.4 is out of range (-90 to 90)"
        );
        assert_eq!(
            with(
                json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": ["0", 1]},
                        "properties": {"name": "X"}})
            ),
            "world.geojson: feature 5: longitude \"0\" is not a number"
        );
        assert_eq!(
            with(
                json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [1]},
                        "properties": {"name": "X"}})
            ),
            "world.geojson: feature 5: geometry.coordinates is not [longitude, latitude]"
        );
        assert_eq!(
            with(
                json!({"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]},
                        "properties": {"name": "X", "types": ["a", 1]}})
            ),
            "world.geojson: feature 5: properties.types is [\"a\",1], not a list of strings"
        );
        assert_eq!(
            with(json!({"type": "Place"})),
            "world.geojson: feature 5: type is \"Place\", not \"Feature\""
        );
        assert_eq!(
            with(json!([1, 2])),
            "world.geojson: feature 5: is [1,2], not an object"
        );
    }

    #[test]
    fn a_file_that_is_not_a_feature_collection_is_refused() {
        assert_eq!(
            geojson_error(r#"{"type": "Feature", "features": []}"#),
            "world.geojson: type is \"Feature\", not \"FeatureCollection\""
        );
        assert_eq!(
            geojson_error(r#"{"type": "FeatureCollection"}"#),
            "world.geojson: no features list"
        );
        let e = geojson_error(r#"{"type": "FeatureCollection", "features": [}"#);
        assert!(
            e.starts_with("world.geojson: not GeoJSON: ") && e.contains("line 1"),
            "{e}"
        );
        let e = geojson_error("[1, 2]");
        assert!(e.contains("expected a GeoJSON FeatureCollection"), "{e}");
        let e = geojson_error(&format!("{} trailing", collection(&[])));
        assert!(e.starts_with("world.geojson: not GeoJSON: trailing"), "{e}");
        assert!(geojson(&collection(&[])).unwrap().is_empty());
    }

    // ---- Files, gzip, formats ----

    #[test]
    fn gzip_is_read_by_its_magic_bytes_for_both_formats() {
        let csv_text = "name,lat,lon\nA,1,1\n";
        let geo_text = collection(&[point_feature("B", 1.0, 1.0)]);
        for (name, text) in [
            ("places.csv.gz", csv_text.to_string()),
            ("places.csv", csv_text.to_string()),
            ("world.geojson.gz", geo_text.clone()),
            ("world.json", geo_text.clone()),
            ("places.dat", csv_text.to_string()),
            ("world.dat", geo_text.clone()),
        ] {
            let compressed = gzip(text.as_bytes());
            let places = LocalPlaces::read(Path::new(name), &compressed[..]).unwrap();
            assert_eq!(places.len(), 1, "{name}");
            let plain = LocalPlaces::read(Path::new(name), text.as_bytes());
            if !name.ends_with(".gz") {
                assert_eq!(plain.unwrap().len(), 1, "{name} uncompressed");
            }
        }
        // A gzip file that is cut short is refused, not half read.
        let compressed = gzip(csv_text.repeat(200).as_bytes());
        let cut = &compressed[..compressed.len() / 2];
        let e = LocalPlaces::read(Path::new("places.csv.gz"), cut).unwrap_err();
        assert!(e.problem.starts_with("cannot read"), "{e}");
    }

    #[test]
    fn files_are_loaded_from_disk_and_a_missing_one_is_named() {
        let dir = std::env::temp_dir().join(format!("herd-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("places.csv");
        std::fs::write(&plain, "name,lat,lon\nA,1,1\nB,2,2\n").unwrap();
        assert_eq!(LocalPlaces::load(&plain).unwrap().len(), 2);
        let packed = dir.join("world.geojson.gz");
        let text = collection(&[point_feature("C", 3.0, 3.0)]);
        std::fs::write(&packed, gzip(text.as_bytes())).unwrap();
        let places = LocalPlaces::load(&packed).unwrap();
        assert_eq!(places.path(), packed.as_path());
        assert_eq!(names(&places, &query(3.0, 3.0, 10.0, 1)), ["C"]);
        // Unchanged until it is written again.
        let loaded = LocalPlaces::load(&plain).unwrap();
        assert!(loaded.is_unchanged(&plain));
        assert!(!loaded.is_unchanged(&packed), "another file");
        std::fs::write(&plain, "name,lat,lon\nC,1,1\nD,2,2\nE,3,3\n").unwrap();
        assert!(!loaded.is_unchanged(&plain), "written again");
        let read = LocalPlaces::read(&plain, "name,lat,lon\n".as_bytes()).unwrap();
        assert!(!read.is_unchanged(&plain), "not loaded from a file");
        let missing = dir.join("nowhere.csv");
        let e = LocalPlaces::load(&missing).unwrap_err();
        assert_eq!(e.at, None);
        assert!(
            e.to_string()
                .starts_with(&format!("{}: cannot read: ", missing.display())),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // ---- Answers ----

    /// What `search` must print for `q`: the places it finds, as `Value`s, printed by
    /// serde_json (as every Places answer is printed, see `response::shape_value`).
    fn printed_by_serde(places: &LocalPlaces, q: &PlacesQuery) -> String {
        let found = places.nearest(q.latitude, q.longitude, q.radius_metres, q.bound.into());
        let json = if found.is_empty() {
            json!({})
        } else {
            let list: Vec<Value> = found.iter().map(|f| places.place_json(f.index)).collect();
            json!({ "places": list })
        };
        serde_json::to_string_pretty(&json).unwrap()
    }

    #[track_caller]
    fn assert_printed_as_serde_would(places: &LocalPlaces, q: &PlacesQuery) {
        let shaped = places.search(q);
        let written = String::from_utf8(shaped.text.to_vec()).unwrap();
        assert_eq!(written, printed_by_serde(places, q));
        let found = places.nearest(q.latitude, q.longitude, q.radius_metres, q.bound.into());
        assert_eq!(shaped.summary, format!("ok results={}", found.len()));
        assert_eq!(shaped.kind, OutcomeKind::Ok);
    }

    #[test]
    fn answers_are_printed_as_serde_json_prints_them() {
        let text = "id,name,lat,lon,types,country,note\n\
                    a1,\"Caf\u{e9}, \"\"Le Z\u{e8}bre\"\"\",1,1,cafe;food,FR,\"two\nlines\"\n\
                    ,Tab\there \\ back\u{1}slash,1.001,1.0,,,\n\
                    x,Plain,1.002,0.999,  ,US,\"\"\n";
        let places = csv(text).unwrap();
        assert_eq!(places.len(), 3);
        for bound in [1, 2, 3, 20] {
            assert_printed_as_serde_would(&places, &query(1.0, 1.0, 50_000.0, bound));
        }
        assert_printed_as_serde_would(&places, &query(-40.0, 1.0, 50_000.0, 5));

        let features = [
            json!({"type": "Feature", "id": 7,
                   "geometry": {"type": "Point", "coordinates": [2.0, 2.0, 100.0]},
                   "properties": {"name": "Nested", "types": [], "empty": {}, "list": [],
                                  "deep": {"a": [1, {"b": null}], "c": true}, "n": -0.5e-7,
                                  "big": 12345678901234567890u64, "s": "\u{2028}\"/"}}),
            json!({"type": "Feature",
                   "geometry": {"type": "Point", "coordinates": [2.0001, 2.0]},
                   "properties": {"name": "\u{1F600} emoji", "type": "park", "id": "given"}}),
        ];
        let places = geojson(&collection(&features)).unwrap();
        for bound in [1, 2] {
            assert_printed_as_serde_would(&places, &query(2.0, 2.0, 1_000.0, bound));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_names_and_fields_print_as_serde_json_prints_them(
            rows in prop::collection::vec(
                ("[^\r\n]{0,12}", "[^\r\n]{1,12}", -0.01..0.01f64, -0.01..0.01f64,
                 "[a-z;_ ]{0,12}", "[^\r\n]{0,8}"),
                1..8,
            ),
        ) {
            let quote = |field: &str| format!("\"{}\"", field.replace('"', "\"\""));
            let mut text = "id,name,lat,lon,types,extra\n".to_string();
            for (id, name, lat, lon, types, extra) in &rows {
                if name.trim().is_empty() {
                    continue;
                }
                text.push_str(&format!(
                    "{},{},{lat},{lon},{},{}\n",
                    quote(id), quote(name), quote(types), quote(extra)
                ));
            }
            let places = csv(&text).unwrap();
            for bound in [1, 3, 20] {
                let q = query(0.0, 0.0, 5_000.0, bound);
                let written = String::from_utf8(places.search(&q).text.to_vec()).unwrap();
                prop_assert_eq!(written, printed_by_serde(&places, &q));
            }
        }
    }

    /// The map of a CSV row's types and other columns, as it was built before rows were
    /// printed straight from their fields.
    fn row_map(columns: &Columns, fields: &[String]) -> Map<String, Value> {
        let mut map = Map::new();
        let types: Vec<Value> = row_types(columns, fields).map(Value::from).collect();
        map.insert("types".into(), Value::Array(types));
        for (title, value) in row_others(columns, fields) {
            map.insert(title.to_string(), value.into());
        }
        map
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(value in any::<String>()) {
            let mut text = String::new();
            push_json_string(&mut text, &value);
            prop_assert_eq!(text, serde_json::to_string(&value).unwrap());
        }

        #[test]
        fn rows_print_their_fields_as_their_map_prints(
            types in "[a-z; \u{1}\"\\\\]{0,16}",
            others in prop::collection::vec(("[a-zA-Z\u{e9}\"]{1,6}", "[^,]{0,8}"), 0..4),
        ) {
            let mut header = vec!["name".to_string(), "lat".into(), "lon".into(), "types".into()];
            let mut fields = vec!["X".to_string(), "1".into(), "2".into(), types];
            for (title, value) in others {
                if header.iter().any(|h| h.eq_ignore_ascii_case(&title)) {
                    continue;
                }
                header.push(title);
                fields.push(value);
            }
            let Ok(columns) = columns(&header) else {
                return Ok(());
            };
            let mut direct = String::new();
            push_row_fields(&mut direct, &columns, &fields);
            let mut printed = String::new();
            push_fields(&mut printed, &row_map(&columns, &fields));
            prop_assert_eq!(direct, printed);
        }
    }

    // ---- Searches ----

    /// Places due north of (0, 0) at these distances in metres, named by the distance.
    fn along_the_meridian(distances: &[f64]) -> LocalPlaces {
        let mut text = "name,lat,lon\n".to_string();
        for d in distances {
            text.push_str(&format!("m{d},{},0\n", north_of_origin(*d)));
        }
        csv(&text).unwrap()
    }

    #[test]
    fn results_come_nearest_first_up_to_the_bound() {
        let places = along_the_meridian(&[900.0, 100.0, 5000.0, 300.0, 2000.0]);
        assert_eq!(
            names(&places, &query(0.0, 0.0, 10_000.0, 20)),
            ["m100", "m300", "m900", "m2000", "m5000"]
        );
        assert_eq!(
            names(&places, &query(0.0, 0.0, 10_000.0, 2)),
            ["m100", "m300"]
        );
        assert_eq!(names(&places, &query(0.0, 0.0, 10_000.0, 1)), ["m100"]);
        // From the far end, the order turns round.
        let far = north_of_origin(5000.0);
        assert_eq!(
            names(&places, &query(far, 0.0, 4_200.0, 3)),
            ["m5000", "m2000", "m900"]
        );
    }

    #[test]
    fn equal_distances_come_in_file_order() {
        let places = csv("name,lat,lon\nEast,0,0.01\nWest,0,-0.01\nNorth,0.01,0\n").unwrap();
        assert_eq!(
            names(&places, &query(0.0, 0.0, 5000.0, 3)),
            ["East", "West", "North"]
        );
    }

    #[test]
    fn a_place_at_the_radius_is_in_and_one_past_it_is_not() {
        let places = along_the_meridian(&[10_000.0, 10_001.0]);
        assert_eq!(names(&places, &query(0.0, 0.0, 10_000.0, 5)), ["m10000"]);
        assert_eq!(names(&places, &query(0.0, 0.0, 10_000.5, 5)), ["m10000"]);
        assert_eq!(
            names(&places, &query(0.0, 0.0, 10_001.0, 5)),
            ["m10000", "m10001"]
        );
        assert_eq!(
            names(&places, &query(0.0, 0.0, 9_999.0, 5)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn nothing_found_is_an_empty_object() {
        let places = along_the_meridian(&[100_000.0]);
        let shaped = places.search(&query(0.0, 0.0, 50_000.0, 20));
        assert_eq!(&*shaped.text, b"{}");
        assert_eq!(shaped.summary, "ok results=0");
        let empty = csv("name,lat,lon\n").unwrap();
        assert_eq!(&*empty.search(&query(0.0, 0.0, 50_000.0, 20)).text, b"{}");
    }

    #[test]
    fn searches_reach_across_the_antimeridian() {
        let places = csv(
            "name,lat,lon\nWest of it,10,179.95\nEast of it,10,-179.95\nOn it,10,180\n\
             On it too,10,-180\nFar,10,179\n",
        )
        .unwrap();
        let mut from_east = names(&places, &query(10.0, 179.9, 20_000.0, 20));
        from_east.sort();
        assert_eq!(
            from_east,
            ["East of it", "On it", "On it too", "West of it"]
        );
        let from_west = names(&places, &query(10.0, -179.9, 20_000.0, 20));
        assert_eq!(from_west[0], "East of it");
        assert_eq!(from_west.len(), 4);
        // 0.05 degrees of longitude at 10 N is 5.47 km; 0.1 degrees 10.95 km.
        assert_eq!(
            names(&places, &query(10.0, -179.9, 6_000.0, 20)),
            ["East of it"]
        );
        assert_eq!(
            names(&places, &query(10.0, -179.9, 5_000.0, 20)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn searches_reach_across_a_pole() {
        // Around the north pole every longitude is near; 89.9 N is 11.1 km from the pole.
        let places = csv(
            "name,lat,lon\nPole,90,0\nA,89.9,0\nB,89.9,90\nC,89.9,180\nD,89.9,-90\n\
             Lower,89.5,45\nSouth pole,-90,0\nNear south,-89.95,123\n",
        )
        .unwrap();
        // From the pole itself (its longitude means nothing), all four are 11.1 km away.
        let mut found = names(&places, &query(90.0, -135.0, 30_000.0, 20));
        assert_eq!(found.remove(0), "Pole");
        found.sort();
        assert_eq!(found, ["A", "B", "C", "D"]);
        // Near the pole, the nearest is round the pole at the next longitude, not the pole.
        assert_eq!(
            names(&places, &query(89.9, -135.0, 30_000.0, 2)),
            ["D", "C"]
        );
        // From 89.9 N at longitude 0, the place across the pole is 22.2 km away.
        let across = names(&places, &query(89.9, 0.0, 23_000.0, 20));
        assert_eq!(across.first().map(String::as_str), Some("A"));
        assert_eq!(across.last().map(String::as_str), Some("C"));
        assert_eq!(
            names(&places, &query(-89.99, -60.0, 10_000.0, 20)),
            ["South pole", "Near south"]
        );
    }

    #[test]
    fn a_zero_or_bad_radius_or_bound_finds_nothing() {
        let places = along_the_meridian(&[0.0]);
        assert!(places.nearest(0.0, 0.0, 0.0, 5).is_empty());
        assert!(places.nearest(0.0, 0.0, f64::NAN, 5).is_empty());
        assert!(places.nearest(0.0, 0.0, 10.0, 0).is_empty());
        assert_eq!(places.nearest(0.0, 0.0, 10.0, 5).len(), 1);
    }

    #[test]
    fn distances_are_great_circle_distances() {
        // One degree of a great circle, at the equator and along a meridian.
        let degree = EARTH_RADIUS_METRES * std::f64::consts::PI / 180.0;
        assert!((distance_metres(0.0, 0.0, 0.0, 1.0) - degree).abs() < 1e-6);
        assert!((distance_metres(10.0, 20.0, 11.0, 20.0) - degree).abs() < 1e-6);
        assert!((distance_metres(0.0, 179.5, 0.0, -179.5) - degree).abs() < 1e-6);
        assert!((distance_metres(89.5, 0.0, 89.5, 180.0) - degree).abs() < 1e-6);
        // Paris to London, about 343.5 km.
        let d = distance_metres(48.8566, 2.3522, 51.5074, -0.1278);
        assert!((d - 343_500.0).abs() < 1_000.0, "{d}");
    }

    /// What a search must find, by looking at every place.
    fn brute_force(
        places: &LocalPlaces,
        latitude: f64,
        longitude: f64,
        radius_metres: f64,
        bound: usize,
    ) -> Vec<(u32, f64)> {
        let mut all: Vec<(u32, f64)> = places
            .places
            .iter()
            .map(|p| {
                (
                    p.order,
                    distance_metres(latitude, longitude, p.latitude, p.longitude),
                )
            })
            .filter(|(_, d)| *d <= radius_metres)
            .collect();
        all.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        all.truncate(bound);
        all
    }

    /// A latitude, longitude pair, often close to a pole or the antimeridian, where the index
    /// has its special cases.
    fn position() -> impl Strategy<Value = (f64, f64)> {
        let latitude = prop_oneof![
            -90.0..=90.0f64,
            85.0..=90.0f64,
            -90.0..=-85.0f64,
            -1.0..=1.0f64
        ];
        let longitude = prop_oneof![-180.0..=180.0f64, 179.0..=180.0f64, -180.0..=-179.0f64];
        (latitude, longitude)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn searches_find_what_looking_at_every_place_finds(
            spots in prop::collection::vec(position(), 1..40),
            spread in 0.0..0.8f64,
            seed in any::<u64>(),
            queries in prop::collection::vec((position(), 1.0..50_000.0f64, 1..=20usize), 1..20),
        ) {
            // Places clustered around a few spots (so that searches find some), plus some
            // anywhere; the spread is in degrees.
            let mut state = seed | 1;
            let mut random = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 53) as f64
            };
            let mut text = "name,lat,lon\n".to_string();
            for (n, &(lat, lon)) in spots.iter().enumerate() {
                for k in 0..25 {
                    let plat = (lat + (random() - 0.5) * spread).clamp(-90.0, 90.0);
                    let mut plon = lon + (random() - 0.5) * spread;
                    if plon > 180.0 { plon -= 360.0 }
                    if plon < -180.0 { plon += 360.0 }
                    text.push_str(&format!("p{n}-{k},{plat},{plon}\n"));
                }
            }
            let places = csv(&text).unwrap();
            for ((lat, lon), radius, bound) in queries {
                let want = brute_force(&places, lat, lon, radius, bound);
                let got: Vec<(u32, f64)> = places
                    .nearest(lat, lon, radius, bound)
                    .iter()
                    .map(|f| (f.order, f.distance_metres))
                    .collect();
                prop_assert_eq!(got, want, "query {} {} radius {} bound {}", lat, lon, radius, bound);
            }
            // And from the spots themselves, where the places are.
            for &(lat, lon) in &spots {
                let want = brute_force(&places, lat, lon, 50_000.0, 20);
                let got: Vec<(u32, f64)> = places
                    .nearest(lat, lon, 50_000.0, 20)
                    .iter()
                    .map(|f| (f.order, f.distance_metres))
                    .collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}
