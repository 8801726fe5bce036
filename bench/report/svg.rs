//! The SVG chart of scenario 1's latency distributions: latency (log scale, up) against
//! percentile (in nines, across), one step line per curve, a legend at the right. Drawing only.

use std::fmt::Write as _;

use crate::hist::Histogram;

const WIDTH: f64 = 980.0;
const HEIGHT: f64 = 580.0;
/// The plot area's edges; the legend sits right of it.
const LEFT: f64 = 80.0;
const RIGHT: f64 = 720.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 510.0;
const GRID: &str = r##"stroke="#ddd""##;

const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// The percentile ticks across: the fraction each marks, and its label.
const TICKS: [(f64, &str); 7] = [
    (0.0, "0%"),
    (0.5, "50%"),
    (0.9, "90%"),
    (0.99, "99%"),
    (0.999, "99.9%"),
    (0.9999, "99.99%"),
    (0.99999, "99.999%"),
];

/// Latency against percentile, one step line per curve labelled `C=.. P=.. log on|off`: the
/// colour follows C x P (the label before " log"), the line is dashed when logging is off.
pub fn latency_svg(curves: &[&(String, Histogram)], command: &str) -> String {
    let scale = Scale::of(curves);
    let mut svg = Svg::begin(command);
    svg.grid(&scale);
    svg.frame();
    let mut shapes: Vec<&str> = Vec::new();
    for (i, (label, hist)) in curves.iter().enumerate() {
        if hist.count() == 0 {
            continue;
        }
        let shape = label.split(" log").next().unwrap_or(label);
        let color_index = shapes.iter().position(|s| *s == shape).unwrap_or_else(|| {
            shapes.push(shape);
            shapes.len() - 1
        });
        let color = COLORS[color_index % COLORS.len()];
        let dash = if label.contains("off") {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        svg.curve(
            &scale,
            hist,
            &format!(r#"stroke="{color}" stroke-width="1.6"{dash}"#),
        );
        svg.legend(
            i,
            label,
            &format!(r#"stroke="{color}" stroke-width="2"{dash}"#),
        );
    }
    svg.0 += "</svg>\n";
    svg.0
}

/// Percentile as "nines": 0 at 0 %, 1 at 90 %, 2 at 99 %, ... capped at 5 (99.999 %).
fn nines(fraction: f64) -> f64 {
    (-(1.0 - fraction).max(1e-5).log10()).clamp(0.0, 5.0)
}

fn escape_xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `1 µs`, `10 µs`, `100 µs`, `1 ms`, ... for 10^exponent nanoseconds.
fn decade_label(exponent: u32) -> String {
    let unit = ["ns", "µs", "ms", "s"][(exponent / 3).min(3) as usize];
    let scale = exponent - 3 * (exponent / 3).min(3);
    format!("{} {unit}", 10u64.pow(scale))
}

/// Where a point lands: nines across, whole decades of nanoseconds up, from the decade below
/// the fastest value charted to the one above the slowest.
struct Scale {
    lo_decade: f64,
    hi_decade: f64,
}

impl Scale {
    fn of(curves: &[&(String, Histogram)]) -> Scale {
        let lo = curves
            .iter()
            .filter(|c| c.1.count() > 0)
            .map(|c| c.1.min().max(1))
            .min()
            .unwrap_or(1_000);
        let hi = curves.iter().map(|c| c.1.max()).max().unwrap_or(1_000_000);
        Scale {
            lo_decade: (lo as f64).log10().floor(),
            hi_decade: (hi.max(lo * 10) as f64).log10().ceil(),
        }
    }

    fn x(&self, nines: f64) -> f64 {
        LEFT + (RIGHT - LEFT) * nines / 5.0
    }

    fn y(&self, ns: f64) -> f64 {
        let d = ns.max(1.0).log10();
        BOTTOM - (BOTTOM - TOP) * (d - self.lo_decade) / (self.hi_decade - self.lo_decade)
    }
}

/// The document being written, an element (or a grid line and its label) a line.
struct Svg(String);

impl Svg {
    /// The opening tag, the white background, the title and the command under it.
    fn begin(command: &str) -> Svg {
        let mut svg = Svg(format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        ));
        svg.0 += "\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
        let title = "herd IAMAT latency by percentile (scenario 1)";
        svg.text((LEFT, 24.0), r#" font-size="15""#, title);
        svg.0.push('\n');
        svg.text((LEFT, 40.0), r##" fill="#666""##, &escape_xml(command));
        svg.0.push('\n');
        svg
    }

    fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), style: &str) {
        let _ = write!(
            self.0,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" {style}/>"#
        );
    }

    fn text(&mut self, (x, y): (f64, f64), attributes: &str, content: &str) {
        let _ = write!(
            self.0,
            r#"<text x="{x:.1}" y="{y:.1}"{attributes}>{content}</text>"#
        );
    }

    /// A line across at every decade of latency and one up at every percentile tick, labelled.
    fn grid(&mut self, scale: &Scale) {
        let mut decade = scale.lo_decade;
        while decade <= scale.hi_decade {
            let y = scale.y(10f64.powf(decade));
            self.line((LEFT, y), (RIGHT, y), GRID);
            let label = decade_label(decade as u32);
            self.text((LEFT - 6.0, y + 4.0), r#" text-anchor="end""#, &label);
            self.0.push('\n');
            decade += 1.0;
        }
        for (fraction, label) in TICKS {
            let x = scale.x(nines(fraction));
            self.line((x, TOP), (x, BOTTOM), GRID);
            self.text((x, BOTTOM + 18.0), r#" text-anchor="middle""#, label);
            self.0.push('\n');
        }
    }

    /// The plot area's border and the two axes' titles.
    fn frame(&mut self) {
        let _ = writeln!(
            self.0,
            r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            RIGHT - LEFT,
            BOTTOM - TOP
        );
        let across = "percentile (log scale of 1 - p)";
        let middle = r#" text-anchor="middle""#;
        self.text(((LEFT + RIGHT) / 2.0, BOTTOM + 40.0), middle, across);
        self.0.push('\n');
        let _ = writeln!(
            self.0,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">latency, write to reply (log scale)</text>"#,
            (TOP + BOTTOM) / 2.0
        );
    }

    /// One step line: each bucket's value held from the fraction below it to its own.
    fn curve(&mut self, scale: &Scale, hist: &Histogram, style: &str) {
        let mut points = String::new();
        let mut before = 0.0;
        for (value, fraction) in hist.cumulative() {
            let y = scale.y(value as f64);
            let (x1, x2) = (scale.x(nines(before)), scale.x(nines(fraction)));
            let _ = write!(points, "{x1:.1},{y:.1} {x2:.1},{y:.1} ");
            before = fraction;
        }
        let _ = writeln!(
            self.0,
            r#"<polyline fill="none" {style} points="{}"/>"#,
            points.trim_end()
        );
    }

    /// The `i`-th legend entry: a stroke of the curve's style and its label.
    fn legend(&mut self, i: usize, label: &str, style: &str) {
        let y = TOP + 10.0 + 20.0 * i as f64;
        self.line((RIGHT + 16.0, y), (RIGHT + 46.0, y), style);
        self.text((RIGHT + 52.0, y + 4.0), "", &escape_xml(label));
        self.0.push('\n');
    }
}
