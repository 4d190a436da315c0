//! Times for people.

/// `7.2s`, `4m05s`, `3h12m`, `2d03h`: short, and precise where it matters (the last seconds).
pub fn seconds(secs: f64) -> String {
    if !secs.is_finite() {
        return "never".into();
    }
    let secs = secs.abs();
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    let whole = secs as u64;
    let (d, h, m, s) = (
        whole / 86_400,
        whole / 3_600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else {
        format!("{m}m{s:02}s")
    }
}

/// When a lease ends, from `LockInfo::expires_in`: `in 7.2s`, `3.1s ago`, `never`, `-`.
pub fn expiry(expires_in: Option<f64>) -> String {
    match expires_in {
        None => "-".into(),
        Some(left) if left.is_infinite() => "never".into(),
        Some(left) if left >= 0.0 => format!("in {}", seconds(left)),
        Some(left) => format!("{} ago", seconds(left)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(seconds(7.25), "7.2s");
        assert_eq!(seconds(-3.0), "3.0s");
        assert_eq!(seconds(245.0), "4m05s");
        assert_eq!(seconds(3.0 * 3600.0 + 720.0), "3h12m");
        assert_eq!(seconds(2.0 * 86_400.0 + 3.0 * 3600.0), "2d03h");
        assert_eq!(expiry(None), "-");
        assert_eq!(expiry(Some(f64::INFINITY)), "never");
        assert_eq!(expiry(Some(1.0)), "in 1.0s");
        assert_eq!(expiry(Some(-1.0)), "1.0s ago");
    }
}
