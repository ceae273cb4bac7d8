//! Parsing of option values shared by the subcommands: durations, hex ids, key ranges.

use std::time::Duration;

/// Parses `500ms`, `5s`, `2m`, `1h` or a bare number of seconds (`5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 5s, 2m"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    if duration.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(duration)
}

/// Parses a lease id in hex as etcdctl prints it (`694d77aa9e38260f`, optional `0x`).
pub fn parse_lease_id(text: &str) -> Result<i64, String> {
    let id = parse_hex_u64(text)?;
    // Lease ids are int64 on the wire; etcdctl prints their bits as unsigned hex.
    Ok(id as i64)
}

/// Parses a member id in hex as `cluster members` prints it.
pub fn parse_member_id(text: &str) -> Result<u64, String> {
    parse_hex_u64(text)
}

fn parse_hex_u64(text: &str) -> Result<u64, String> {
    let digits = text
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X");
    u64::from_str_radix(digits, 16).map_err(|_| format!("invalid hex id {text:?}"))
}

/// The `range_end` that makes a range cover every key starting with `prefix`: the prefix with
/// its last byte below 0xff incremented (trailing 0xff bytes dropped). An empty or all-0xff
/// prefix gives `[0]`, etcd's "to the end of the keyspace".
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            let at = end.len() - 1;
            end[at] = last + 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// `range_end` meaning "every key >= key".
pub const FROM_KEY_RANGE_END: &[u8] = &[0];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn lease_ids_are_hex_like_etcdctl_prints_them() {
        assert_eq!(parse_lease_id("694d77aa9e38260f"), Ok(0x694d77aa9e38260f));
        assert_eq!(parse_lease_id("0x10"), Ok(16));
        assert_eq!(parse_lease_id("ffffffffffffffff"), Ok(-1));
        assert!(parse_lease_id("xyz").is_err());
    }

    #[test]
    fn prefix_range_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_range_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_range_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_range_end(&[0xff, 0xff]), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }
}
