//! Identifiers, validated once when they enter the system.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// Empty identifiers are never meaningful.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier.
        kind: &'static str,
    },
    /// Too long for the storage it is used in.
    #[error("{kind} is {len} bytes, longer than the {max} allowed")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Contains characters that cannot appear in resource names.
    #[error("{kind} '{value}' may only contain a-z, 0-9 and '-' and must start with a letter")]
    BadCharacters {
        /// Which identifier.
        kind: &'static str,
        /// The refused value (identifiers are configuration, never row data).
        value: String,
    },
}

fn check_name(kind: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !first_ok
        || !value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(IdError::BadCharacters {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an identifier.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_name($kind, &value, $max)?;
                Ok(Self(value))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// A sync's identifier: part of queue, schedule and metric names, so kept to DNS-like characters.
    SyncId,
    "sync id",
    48
);
name_id!(
    /// A destination's identifier: names its delivery queue and dead-letter queue.
    DestinationId,
    "destination id",
    40
);

/// A run's identifier: sortable by start time, derived from the scheduling event so that
/// a retried sync-start invocation resumes the same run instead of opening another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(String);

impl RunId {
    /// Builds a run id from the schedule's firing time (RFC 3339 compact form) and the
    /// event's unique id.
    pub fn from_event(started: time::OffsetDateTime, event_id: &str) -> Self {
        let stamp = crate::domain::timestamp::compact(started);
        let digest = short_digest(event_id);
        Self(format!("{stamp}-{digest}"))
    }

    /// Wraps an id read back from storage or a message.
    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        if value.is_empty() {
            return Err(IdError::Empty { kind: "run id" });
        }
        if value.len() > 64 {
            return Err(IdError::TooLong {
                kind: "run id",
                len: value.len(),
                max: 64,
            });
        }
        Ok(Self(value))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn short_digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::digest(text.as_bytes());
    hex::encode(&hash[..4])
}

/// The value of a sync's primary key for one row, as text: exactly the text the source
/// wrote (a string's characters, never trimmed; a number's literal JSON text such as
/// `7.50` or `12345678901234567890123`), so two rows share a key only when their sources
/// wrote the same text (see `domain::source`, "Keys").
///
/// Keys are stored as DynamoDB sort keys (at most 1,024 bytes) and may appear in logs;
/// they are the only part of a row that ever does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PrimaryKey(String);

impl PrimaryKey {
    /// The longest key DynamoDB accepts as a sort key.
    pub const MAX_BYTES: usize = 1024;

    /// Validates and wraps a key value.
    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        if value.is_empty() {
            return Err(IdError::Empty {
                kind: "primary key",
            });
        }
        if value.len() > Self::MAX_BYTES {
            return Err(IdError::TooLong {
                kind: "primary key",
                len: value.len(),
                max: Self::MAX_BYTES,
            });
        }
        Ok(Self(value))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PrimaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_ids_must_be_dns_like() {
        assert!(SyncId::parse("accounts-to-crm").is_ok());
        assert!(matches!(
            SyncId::parse("Accounts"),
            Err(IdError::BadCharacters { .. })
        ));
        assert!(matches!(SyncId::parse(""), Err(IdError::Empty { .. })));
        assert!(matches!(
            SyncId::parse("a".repeat(49)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn run_ids_are_stable_for_the_same_event_and_sort_by_time() {
        let t1 = time::macros::datetime!(2026-11-28 10:00:00 UTC);
        let t2 = time::macros::datetime!(2026-11-28 11:00:00 UTC);
        assert_eq!(
            RunId::from_event(t1, "evt-1"),
            RunId::from_event(t1, "evt-1")
        );
        assert_ne!(
            RunId::from_event(t1, "evt-1"),
            RunId::from_event(t1, "evt-2")
        );
        assert!(RunId::from_event(t1, "zzz") < RunId::from_event(t2, "aaa"));
    }

    #[test]
    fn primary_keys_longer_than_a_dynamodb_sort_key_are_refused() {
        assert!(PrimaryKey::parse("x".repeat(1024)).is_ok());
        assert!(PrimaryKey::parse("x".repeat(1025)).is_err());
        assert!(PrimaryKey::parse("").is_err());
    }
}
