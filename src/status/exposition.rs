//! Reading a metrics page in the Prometheus text format (what `herd status` scrapes) into
//! samples: `name{label="value",...} value [timestamp]` lines; `#` lines and blank lines are
//! skipped. Pure.

/// One sample of a page.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Every sample of one page, in page order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses a page; the error names the first line that is not a sample.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut samples = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line)
                .ok_or_else(|| format!("line {}: not a sample: {line:?}", index + 1))?;
            samples.push(sample);
        }
        Ok(Scrape { samples })
    }

    /// Samples named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the first sample named `name` that has all of `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.all(name)
            .find(|s| labels.iter().all(|&(k, v)| s.label(k) == Some(v)))
            .map(|s| s.value)
    }

    /// The sum over every sample named `name`, if there is one.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = false;
        let total = self.all(name).fold(0.0, |total, s| {
            found = true;
            total + s.value
        });
        found.then_some(total)
    }
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let valid_name = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if !valid_name {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next()?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().ok()?;
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `label="value",...}` -> the labels and what follows the `}`.
fn parse_labels(mut text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = text.find('=')?;
        let label = text[..eq].trim();
        if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let quoted = text[eq + 1..].trim_start();
        let mut chars = quoted.char_indices();
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (i, c) in chars {
            match (escaped, c) {
                (true, 'n') => value.push('\n'),
                (true, c) => value.push(c),
                (false, '\\') => {
                    escaped = true;
                    continue;
                }
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                (false, c) => value.push(c),
            }
            escaped = false;
        }
        labels.push((label.to_string(), value));
        text = quoted[end? + 1..].trim_start();
        text = text.strip_prefix(',').unwrap_or(text);
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if text
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            text.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# HELP herd_commands_total Client commands.
# TYPE herd_commands_total counter
herd_commands_total{kind=\"iamat\"} 12
herd_commands_total{kind=\"whatsat\"} 3

herd_info{server=\"Camp \\\"bell\\\"\",version=\"0.1.0\"} 1
herd_start_time_seconds 1700000000.5
herd_places_latency_seconds_bucket{le=\"+Inf\"} 7
some_sample_with_time 4 1700000000000
";

    #[test]
    fn samples_are_read_with_their_labels() {
        let page = Scrape::parse(PAGE).unwrap();
        assert_eq!(page.samples.len(), 6);
        assert_eq!(
            page.get("herd_commands_total", &[("kind", "iamat")]),
            Some(12.0)
        );
        assert_eq!(
            page.get("herd_commands_total", &[("kind", "invalid")]),
            None
        );
        assert_eq!(page.sum("herd_commands_total"), Some(15.0));
        assert_eq!(page.sum("herd_nothing"), None);
        let info = page.all("herd_info").next().unwrap();
        assert_eq!(info.label("server"), Some("Camp \"bell\""));
        assert_eq!(info.label("version"), Some("0.1.0"));
        assert_eq!(
            page.get("herd_start_time_seconds", &[]),
            Some(1_700_000_000.5)
        );
        assert_eq!(
            page.get("herd_places_latency_seconds_bucket", &[("le", "+Inf")]),
            Some(7.0)
        );
        assert_eq!(page.get("some_sample_with_time", &[]), Some(4.0));
    }

    #[test]
    fn special_values_and_escapes() {
        let page = Scrape::parse("a +Inf\nb NaN\nc -Inf\nd{x=\"1\\\\2\\n\"} 1e3\n").unwrap();
        assert_eq!(page.get("a", &[]), Some(f64::INFINITY));
        assert!(page.get("b", &[]).unwrap().is_nan());
        assert_eq!(page.get("c", &[]), Some(f64::NEG_INFINITY));
        assert_eq!(page.get("d", &[("x", "1\\2\n")]), Some(1000.0));
    }

    #[test]
    fn what_is_not_a_sample_is_an_error_naming_its_line() {
        for bad in [
            "x",
            "x y",
            "x{a=\"1\" 2",
            "x{a=1} 2",
            "1x 2",
            "x 1 2 3",
            "x 1 notatime",
            "<html> 1",
        ] {
            let e = Scrape::parse(&format!("# ok\n{bad}\n")).unwrap_err();
            assert!(e.starts_with("line 2: "), "{bad}: {e}");
        }
    }
}
