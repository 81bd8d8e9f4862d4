//! Latency summaries and the latency plot.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

/// A latency histogram in microseconds, from 1 µs to 60 s at 3 significant
/// digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    pub(crate) max: f64,
    pub(crate) count: u64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1000.0,
            count: histogram.len(),
        }
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50": round(self.p50),
            "p99": round(self.p99),
            "p999": round(self.p999),
            "max": round(self.max),
            "samples": self.count,
        })
    }

    pub(crate) fn text(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            self.p50, self.p99, self.p999
        )
    }
}

/// Three decimals are plenty for milliseconds and ratios.
pub(crate) fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// Writes an SVG percentile plot of latency histograms: x is the
/// percentile on a log scale of "nines" (50 %, 90 %, 99 %, …), y the
/// latency in milliseconds on a log scale, one line per series.
pub(crate) fn plot(
    path: &Path,
    title: &str,
    series: &[(String, &Histogram<u64>)],
) -> anyhow::Result<()> {
    const W: f64 = 860.0;
    const H: f64 = 440.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 300.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    let nines_max = 4.0; // up to 99.99 %
    let points = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        (0..=80)
            .map(|i| {
                let nines = nines_max * f64::from(i) / 80.0;
                let quantile = 1.0 - 10f64.powf(-nines);
                let ms = (h.value_at_quantile(quantile) as f64 / 1000.0).max(0.001);
                (nines, ms)
            })
            .collect()
    };
    let all: Vec<Vec<(f64, f64)>> = series.iter().map(|(_, h)| points(h)).collect();
    let y_max = all
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(1.0_f64, f64::max)
        .log10()
        .ceil();
    let y_min = all
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(1000.0_f64, f64::min)
        .log10()
        .floor()
        .min(y_max - 1.0);
    let x = |nines: f64| LEFT + (W - LEFT - RIGHT) * nines / nines_max;
    let y = |ms: f64| TOP + (H - TOP - BOTTOM) * (y_max - ms.log10()) / (y_max - y_min);

    let mut svg = String::new();
    writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    )?;
    writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#)?;
    writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        escape(title)
    )?;
    for (nines, label) in [
        (0.0, "0%"),
        (0.301, "50%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
    ] {
        let px = x(nines);
        writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{}" stroke="#ddd"/><text x="{px:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0
        )?;
    }
    let mut decade = y_min;
    while decade <= y_max {
        let ms = 10f64.powf(decade);
        let py = y(ms);
        let label = if ms < 1.0 {
            format!("{ms}")
        } else {
            format!("{ms:.0}")
        };
        writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0
        )?;
        decade += 1.0;
    }
    writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0
    )?;
    writeln!(
        svg,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">latency (ms, log scale)</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0
    )?;
    for (i, ((name, _), pts)) in series.iter().zip(&all).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line = pts
            .iter()
            .map(|&(n, ms)| format!("{:.1},{:.1}", x(n), y(ms)))
            .collect::<Vec<_>>()
            .join(" ");
        writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>"#
        )?;
        let ly = TOP + 20.0 * i as f64 + 10.0;
        writeln!(
            svg,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 12.0,
            W - RIGHT + 36.0,
            W - RIGHT + 42.0,
            ly + 4.0,
            escape(name)
        )?;
    }
    writeln!(svg, "</svg>")?;
    std::fs::write(path, svg)?;
    Ok(())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
