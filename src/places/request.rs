//! What one lookup asks Places: the JSON body of `api new`, the query string of `api legacy`.
//!
//! Pure. The API key is not handled here: the pool adds it at the last moment, so nothing built
//! here can leak it into a log.

use serde_json::json;

/// One WHATSAT turned into a Places search.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacesQuery {
    pub latitude: f64,
    pub longitude: f64,
    pub radius_metres: f64,
    /// Most results wanted (1..=20).
    pub bound: u8,
}

impl PlacesQuery {
    /// What makes two lookups the same request: the API, the URL and the field mask are the
    /// server's own, so the center, the radius and the result count decide.
    pub fn key(&self) -> LookupKey {
        LookupKey {
            latitude: self.latitude.to_bits(),
            longitude: self.longitude.to_bits(),
            radius_metres: self.radius_metres.to_bits(),
            bound: self.bound,
        }
    }
}

/// A lookup by what it sends, for coalescing and the cache (floats by their bits: equal
/// requests print the same numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LookupKey {
    latitude: u64,
    longitude: u64,
    radius_metres: u64,
    bound: u8,
}

/// The `searchNearby` body of Places API v1.
pub fn new_api_body(query: &PlacesQuery) -> String {
    json!({
        "maxResultCount": query.bound,
        "locationRestriction": {
            "circle": {
                "center": {"latitude": query.latitude, "longitude": query.longitude},
                "radius": query.radius_metres,
            }
        }
    })
    .to_string()
}

/// The legacy `nearbysearch/json` query string, without the key: `location=LAT,LON&radius=M`.
/// Numbers print in their shortest exact form (`34.06893`, `10000`), which needs no escaping.
pub fn legacy_query(query: &PlacesQuery) -> String {
    format!(
        "location={},{}&radius={}",
        query.latitude, query.longitude, query.radius_metres
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> PlacesQuery {
        PlacesQuery {
            latitude: 34.06893,
            longitude: -118.445127,
            radius_metres: 10000.0,
            bound: 5,
        }
    }

    #[test]
    fn new_api_body_has_the_documented_shape() {
        let body: serde_json::Value = serde_json::from_str(&new_api_body(&query())).unwrap();
        assert_eq!(body["maxResultCount"], 5);
        let circle = &body["locationRestriction"]["circle"];
        assert_eq!(circle["center"]["latitude"], 34.06893);
        assert_eq!(circle["center"]["longitude"], -118.445127);
        assert_eq!(circle["radius"], 10000.0);
    }

    #[test]
    fn legacy_query_uses_plain_numbers() {
        assert_eq!(
            legacy_query(&query()),
            "location=34.06893,-118.445127&radius=10000"
        );
        let fractional = PlacesQuery {
            radius_metres: 1500.5,
            ..query()
        };
        assert!(legacy_query(&fractional).ends_with("radius=1500.5"));
    }
}
