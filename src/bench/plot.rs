//! Small SVG charts (no dependencies): horizontal bars with labels and values.

use crate::profile::svg::{self, esc};

/// One bar.
pub struct Bar {
    /// What the bar measures.
    pub label: String,
    /// Its length, in the chart's unit.
    pub value: f64,
    /// Printed value.
    pub text: String,
}

/// A horizontal bar chart.
pub fn bars(title: &str, subtitle: &str, bars: &[Bar]) -> String {
    let (w, label_w, row) = (760.0, 220.0, 34.0);
    let h = 70.0 + row * bars.len() as f64 + 20.0;
    let max = bars.iter().map(|b| b.value).fold(0.0f64, f64::max).max(f64::MIN_POSITIVE);
    let palette = ["#3b6ea8", "#d9822b", "#4f9a5d", "#b3446c", "#7a5fb0", "#5a8f9e"];
    let mut s = svg::open(w, h, title, subtitle);
    for (i, b) in bars.iter().enumerate() {
        let y = 70.0 + row * i as f64;
        let len = (w - label_w - 120.0) * (b.value / max).clamp(0.0, 1.0);
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{label_w}\" y=\"{}\" width=\"{len:.1}\" height=\"22\" fill=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>\n",
            label_w - 8.0,
            y + 16.0,
            esc(&b.label),
            y + 2.0,
            palette[i % palette.len()],
            label_w + len + 6.0,
            y + 16.0,
            esc(&b.text)
        ));
    }
    s.push_str("</svg>\n");
    s
}
