//! Wall-clock time for what is sent to other machines (abs-capture-time, the ingest marks of a
//! cluster pull): one reading of the system clock per process, moved on by `Instant`, so the
//! values are as steady as `Instant` and a clock step does not bend a measurement.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch at `at`.
pub fn unix_micros(at: Instant) -> u64 {
    static ANCHOR: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(i0, us0) = ANCHOR.get_or_init(|| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH);
        (Instant::now(), now.map_or(0, |d| d.as_micros() as u64))
    });
    match at.checked_duration_since(i0) {
        Some(after) => us0 + after.as_micros() as u64,
        None => us0.saturating_sub(i0.duration_since(at).as_micros() as u64),
    }
}

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A Unix time in µs as a 64-bit NTP timestamp (32.32 fixed point seconds since 1900).
pub fn ntp64(unix_us: u64) -> u64 {
    let secs = unix_us / 1_000_000 + NTP_UNIX_OFFSET;
    let frac = ((unix_us % 1_000_000) << 32) / 1_000_000;
    secs << 32 | frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn micros_follow_the_system_clock_and_instants() {
        let now = Instant::now();
        let sys = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let us = unix_micros(now);
        assert!(us.abs_diff(sys.as_micros() as u64) < 50_000);
        assert_eq!(unix_micros(now + Duration::from_millis(5)) - us, 5_000);
        assert_eq!(us - unix_micros(now - Duration::from_millis(7)), 7_000);
    }

    #[test]
    fn ntp_timestamps_count_from_1900_in_32_32_fixed_point() {
        assert_eq!(ntp64(0), NTP_UNIX_OFFSET << 32);
        assert_eq!(ntp64(1_500_000), (NTP_UNIX_OFFSET + 1) << 32 | 1 << 31);
    }
}
