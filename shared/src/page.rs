//! Pages: their sizes, and the cursors the API hands out, opaque to clients (base64url of a
//! versioned text), decoded strictly (a cursor this API did not issue is a 400, never an
//! error of the database): keyset cursors by time and id (tenants, runs), and by slug (a
//! run's tenants).

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A page's size when the request names none.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest page a request may ask for.
pub const MAX_LIMIT: i64 = 500;

/// Position after the last row of a page ordered by (a timestamp, an id): tenants by
/// `created_at` (oldest first), runs by `started_at` (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// The range of `created_at` a cursor can hold: every tenant was created in it, and all of it
/// is within PostgreSQL's `timestamptz` (a forged cursor out of it is a 400, not an error of
/// the server's range check).
const CURSOR_MICROS: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999_999; // 1970 to 9999

impl Cursor {
    /// Opaque to clients: base64url of `v1:{created_at in µs}:{id}`.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "v1:{}:{}",
            self.created_at.timestamp_micros(),
            self.id
        ))
    }

    pub fn decode(raw: &str) -> Option<Cursor> {
        let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let mut parts = text.splitn(3, ':');
        if parts.next()? != "v1" {
            return None;
        }
        let micros: i64 = parts
            .next()?
            .parse()
            .ok()
            .filter(|m| CURSOR_MICROS.contains(m))?;
        let id = Uuid::parse_str(parts.next()?).ok()?;
        Some(Cursor {
            created_at: DateTime::from_timestamp_micros(micros)?,
            id,
        })
    }
}

/// A position in a run's tenants (by slug): base64url of `t1:{slug}`.
pub fn encode_slug(slug: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("t1:{slug}"))
}

pub fn decode_slug(raw: &str) -> Option<String> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let slug = text.strip_prefix("t1:")?;
    crate::domain::Slug::parse(slug).ok().map(|s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_to_the_microsecond() {
        let c = Cursor {
            created_at: DateTime::from_timestamp_micros(1_768_644_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
    }

    #[test]
    fn cursor_rejects_garbage() {
        for bad in [
            "",
            "x",
            "!!!",
            &URL_SAFE_NO_PAD.encode("v2:1:abc"),
            &URL_SAFE_NO_PAD.encode("v1:1:not-a-uuid"),
            // Valid shape, but out of any range a tenant was created in (PostgreSQL would
            // refuse the timestamp).
            &URL_SAFE_NO_PAD.encode(format!("v1:-9223372036854775808:{}", Uuid::nil())),
            &URL_SAFE_NO_PAD.encode(format!("v1:-210866803200000001:{}", Uuid::nil())),
            &URL_SAFE_NO_PAD.encode(format!("v1:253402300800000000:{}", Uuid::nil())),
            &URL_SAFE_NO_PAD.encode(format!("v1:-1:{}", Uuid::nil())),
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
