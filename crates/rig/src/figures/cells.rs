//! A figure as the README's table cells write it.

use super::Fig;

/// A number with a real minus sign, as the README writes them.
pub(super) fn num(x: f64, decimals: usize) -> String {
    let s = format!("{x:.decimals$}");
    match s.strip_prefix('-') {
        // -0.000 is 0.
        Some(rest) if rest.chars().any(|c| c.is_ascii_digit() && c != '0') => {
            format!("−{rest}")
        }
        Some(rest) => rest.to_string(),
        None => s,
    }
}

/// Every point when there are few, else the summary: "median 137 ms, max
/// 245 ms" (and p99 where n ≥ 100). `conv` turns a stored value into the
/// unit shown.
pub(super) fn measured(f: &Fig, conv: f64, decimals: usize, unit: &str) -> String {
    let v = |x: f64| num(x * conv, decimals);
    if f.s.n <= 5 {
        let pts: Vec<String> = f.points.iter().map(|&x| v(x)).collect();
        return format!("{} {unit}", pts.join(", "));
    }
    let mut s = format!("median {} {unit}", v(f.s.median));
    if let Some(p) = f.s.p99 {
        s += &format!(", p99 {} {unit}", v(p));
    }
    s + &format!(", max {} {unit}", v(f.s.max))
}

/// Like [`measured`], for a signed quantity: median of x, max (and p99) of |x|.
pub(super) fn measured_signed(f: &Fig, conv: f64, decimals: usize, unit: &str) -> String {
    let v = |x: f64| num(x * conv, decimals);
    if f.s.n <= 5 {
        return measured(f, conv, decimals, unit);
    }
    let mut s = format!("median {} {unit}", v(f.s.median));
    if let Some(p) = f.abs.p99 {
        s += &format!(", p99 \\|x\\| {} {unit}", v(p));
    }
    s + &format!(", max \\|x\\| {} {unit}", v(f.abs.max))
}

pub(super) fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**no**"
    }
}

/// Markdown table cell: no pipes or newlines.
pub(super) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "; ")
}
