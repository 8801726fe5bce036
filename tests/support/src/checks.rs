//! Checks of what a server replies (SPEC section 2): AT lines, time differences, WHATSAT
//! framing, Places JSON and its error shape.

use crate::client::{parse_nanos, Client};

/// One reply to WHATSAT: the AT line, the JSON text between it and the blank line, and the
/// whole reply as received (ending in the blank line).
pub struct WhatsatReply {
    pub at_line: String,
    pub json_text: String,
    pub raw: String,
}

impl WhatsatReply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.json_text)
            .unwrap_or_else(|e| panic!("WHATSAT reply is not JSON ({e}):\n{}", self.raw))
    }
}

impl Client {
    /// Reads one WHATSAT reply: AT line, JSON, blank line.
    pub fn read_whatsat_reply(&mut self) -> WhatsatReply {
        let raw = self.read_until_blank_line();
        let (at_line, rest) = raw.split_once('\n').expect("reply has a first line");
        let json_text = rest.strip_suffix("\n\n").unwrap_or(rest).to_string();
        WhatsatReply {
            at_line: at_line.to_string(),
            json_text,
            raw: raw.clone(),
        }
    }
}

/// Checks the framing every WHATSAT reply must have (SPEC section 2): the stored AT line, JSON
/// with no blank line inside, then one empty line. Returns the parsed JSON.
pub fn check_framing(reply: &WhatsatReply, at_line: &str) -> serde_json::Value {
    assert_eq!(
        reply.at_line, at_line,
        "first line is the stored AT line:\n{}",
        reply.raw
    );
    assert!(
        reply.raw.ends_with("}\n\n"),
        "reply ends with the JSON's '}}' and a blank line: {:?}",
        reply.raw
    );
    let body = &reply.raw[..reply.raw.len() - 2];
    assert!(
        !body.contains("\n\n"),
        "no blank line inside the reply: {:?}",
        reply.raw
    );
    assert!(
        reply.json_text.starts_with('{'),
        "JSON starts right after the AT line: {:?}",
        reply.raw
    );
    reply.json()
}

/// The ids of the places in `json[list]` (`places`/`id` or `results`/`place_id`).
pub fn place_ids(json: &serde_json::Value, list: &str, id_key: &str) -> Vec<String> {
    json[list]
        .as_array()
        .unwrap_or_else(|| panic!("{list:?} is an array in {json}"))
        .iter()
        .map(|place| place[id_key].as_str().expect("place id").to_string())
        .collect()
}

/// The ids the fake gives its first `count` places.
pub fn fake_ids(count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("FAKE{i:04}")).collect()
}

/// Checks a WHATSAT failure JSON has the new API's error shape and returns (code, status).
pub fn check_error_shape(json: &serde_json::Value) -> (i64, String) {
    let object = json
        .as_object()
        .unwrap_or_else(|| panic!("error reply is an object: {json}"));
    assert_eq!(object.len(), 1, "only an \"error\" key: {json}");
    let error = &json["error"];
    let code = error["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("error.code is a number: {json}"));
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error.message is a string: {json}"));
    assert!(!message.is_empty(), "error.message says something: {json}");
    let status = error["status"]
        .as_str()
        .unwrap_or_else(|| panic!("error.status is a string: {json}"));
    (code, status.to_string())
}

/// The AT line a server named `server` gives for this IAMAT, checked field by field; returns
/// the time difference in nanoseconds.
pub fn check_at_line(reply: &str, server: &str, client: &str, location: &str, time: &str) -> i128 {
    let fields: Vec<&str> = reply.split(' ').collect();
    assert_eq!(
        fields.len(),
        6,
        "AT reply has 6 single-space-separated fields: {reply:?}"
    );
    assert_eq!(fields[0], "AT", "reply {reply:?}");
    assert_eq!(fields[1], server, "server name in {reply:?}");
    assert_eq!(fields[3], client, "client id copied in {reply:?}");
    assert_eq!(fields[4], location, "location copied in {reply:?}");
    assert_eq!(fields[5], time, "time copied in {reply:?}");
    check_diff_format(fields[2])
}

/// Checks `+D.DDDDDDDDD` / `-D.DDDDDDDDD` (sign, digits, exactly 9 fractional digits) and
/// returns the value in nanoseconds.
pub fn check_diff_format(diff: &str) -> i128 {
    let bytes = diff.as_bytes();
    assert!(
        matches!(bytes.first(), Some(b'+') | Some(b'-')),
        "time difference {diff:?} starts with + or -"
    );
    let (int, frac) = diff[1..]
        .split_once('.')
        .unwrap_or_else(|| panic!("time difference {diff:?} has a '.'"));
    assert!(
        !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()),
        "integer part of {diff:?} is digits"
    );
    assert!(
        frac.len() == 9 && frac.bytes().all(|b| b.is_ascii_digit()),
        "time difference {diff:?} has exactly 9 fractional digits"
    );
    parse_nanos(diff).expect("diff parses")
}
