//! Kubernetes syntax the intent must follow: resource quantities and DNS-1123 names.

use super::*;

/// Parses the Kubernetes quantity syntax (`<sign><number><suffix>`, where the suffix is a binary
/// SI suffix `Ki..Ei`, a decimal SI suffix `n u m k M G T P E`, or a decimal exponent `e<int>`)
/// and returns its approximate value. `None` if the syntax is wrong. The exponent is an integer
/// as in Kubernetes' own parser (the CRD's regular expression is looser).
///
/// Hand-written rather than built on `str::parse::<f64>`: it runs for every resource of every
/// render, and the value is only used for comparisons.
pub fn parse_quantity(s: &str) -> Option<f64> {
    const MANTISSA_LIMIT: u64 = 1_000_000_000_000_000_000;
    let b = s.as_bytes();
    let (negative, mut i) = match b.first() {
        Some(b'+') => (false, 1),
        Some(b'-') => (true, 1),
        _ => (false, 0),
    };
    // up to 19 significant digits in `mantissa`; `scale` is the power of ten applied to it
    let mut mantissa: u64 = 0;
    let mut scale: i32 = 0;
    let mut digits = 0usize;
    while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
        if mantissa < MANTISSA_LIMIT {
            mantissa = mantissa * 10 + u64::from(c - b'0');
        } else {
            scale = scale.saturating_add(1);
        }
        digits += 1;
        i += 1;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if mantissa < MANTISSA_LIMIT {
                mantissa = mantissa * 10 + u64::from(c - b'0');
                scale -= 1;
            }
            digits += 1;
            i += 1;
        }
    }
    if digits == 0 {
        return None;
    }
    let (binary_exp, decimal_exp): (i32, i32) = match &b[i..] {
        [] => (0, 0),
        [c] => match c {
            b'n' => (0, -9),
            b'u' => (0, -6),
            b'm' => (0, -3),
            b'k' => (0, 3),
            b'M' => (0, 6),
            b'G' => (0, 9),
            b'T' => (0, 12),
            b'P' => (0, 15),
            b'E' => (0, 18),
            _ => return None,
        },
        [c, b'i'] => match c {
            b'K' => (10, 0),
            b'M' => (20, 0),
            b'G' => (30, 0),
            b'T' => (40, 0),
            b'P' => (50, 0),
            b'E' => (60, 0),
            _ => return None,
        },
        [b'e' | b'E', exp @ ..] => {
            let (sign, exp_digits) = match exp {
                [b'+', d @ ..] => (1, d),
                [b'-', d @ ..] => (-1, d),
                d => (1, d),
            };
            if exp_digits.is_empty()
                || exp_digits.len() > 9
                || !exp_digits.iter().all(u8::is_ascii_digit)
            {
                return None;
            }
            let e = exp_digits
                .iter()
                .fold(0i32, |acc, d| acc * 10 + i32::from(d - b'0'));
            (0, sign * e)
        }
        _ => return None,
    };
    // binary suffixes are 2^(10k), k <= 6: exact as a shifted integer
    let value =
        mantissa as f64 * pow10(scale.saturating_add(decimal_exp)) * (1u64 << binary_exp) as f64;
    Some(if negative { -value } else { value })
}

/// `10^e`, exact for `|e| <= 22`.
pub(super) fn pow10(e: i32) -> f64 {
    const EXACT: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let i = e.unsigned_abs() as usize;
    match EXACT.get(i) {
        Some(p) if e >= 0 => *p,
        Some(p) => 1.0 / p,
        None => 10f64.powi(e),
    }
}

/// A Kubernetes resource name: a qualified name, optionally prefixed by a DNS subdomain.
pub(super) fn is_resource_name(name: &str) -> bool {
    if matches!(name, "cpu" | "memory" | "ephemeral-storage" | GPU_RESOURCE) {
        return true; // the usual ones, without the general check
    }
    let (prefix, local) = split_prefix(name);
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return false;
    }
    let b = local.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// DNS-1123 subdomain: dot-separated labels of lowercase alphanumerics and '-', each starting
/// and ending alphanumeric, at most 253 characters in all. One pass over the bytes.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 253 {
        return false;
    }
    let mut prev = b'.'; // a label boundary before the first byte
    for &c in b {
        let ok = match c {
            b'a'..=b'z' | b'0'..=b'9' => true,
            // '-' inside a label only; '.' only after an alphanumeric
            b'-' => prev != b'.',
            b'.' => prev != b'.' && prev != b'-',
            _ => false,
        };
        if !ok {
            return false;
        }
        prev = c;
    }
    prev != b'-' && prev != b'.'
}
