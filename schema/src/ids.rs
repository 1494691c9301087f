//! Identifier newtypes. Each is built by `parse`, which enforces the contract's limits, so a
//! value of these types is always valid wherever it travels.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest user id accepted (CONTRACT.md §1).
pub const MAX_USER_ID_BYTES: usize = 128;
/// Longest entity id accepted (CONTRACT.md §3).
pub const MAX_ENTITY_ID_BYTES: usize = 256;
/// Longest device id accepted; device ids only steer echo suppression.
pub const MAX_DEVICE_ID_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{0} must be a non-empty string")]
    Empty(&'static str),
    #[error("{what} is longer than {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{0} contains a control character")]
    Control(&'static str),
}

fn check(value: &str, what: &'static str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty(what));
    }
    if value.len() > max {
        return Err(IdError::TooLong { what, max });
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::Control(what));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check(&value, $what, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An opaque user id (the JWT `sub`): 1..=128 bytes, no control characters.
    UserId,
    "user id",
    MAX_USER_ID_BYTES
);
id_type!(
    /// An entity id inside one user and type: 1..=256 bytes, no control characters.
    EntityId,
    "id",
    MAX_ENTITY_ID_BYTES
);
id_type!(
    /// A client device id (`X-Device-ID` or `deviceId`), used to avoid echoes.
    DeviceId,
    "device id",
    MAX_DEVICE_ID_BYTES
);

/// An entity id borrowed from the message it is read from, checked as [`EntityId`] is: for
/// readers that only look at it (fanout), so that no id is copied out of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityIdRef<'a>(&'a str);

impl<'a> EntityIdRef<'a> {
    pub fn parse(value: &'a str) -> Result<Self, IdError> {
        check(value, "id", MAX_ENTITY_ID_BYTES)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for EntityIdRef<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = <&'de str>::deserialize(deserializer)?;
        EntityIdRef::parse(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_limits() {
        assert!(UserId::parse("user_abc").is_ok());
        assert_eq!(UserId::parse(""), Err(IdError::Empty("user id")));
        assert!(UserId::parse("x".repeat(128)).is_ok());
        assert!(matches!(
            UserId::parse("x".repeat(129)),
            Err(IdError::TooLong { .. })
        ));
        assert!(matches!(UserId::parse("a\nb"), Err(IdError::Control(_))));
    }

    #[test]
    fn entity_id_allows_256_bytes_of_unicode() {
        assert!(EntityId::parse("é".repeat(128)).is_ok());
        assert!(EntityId::parse("é".repeat(129)).is_err());
    }

    #[test]
    fn ids_deserialize_through_parse() {
        let err = serde_json::from_str::<UserId>("\"\"").unwrap_err();
        assert!(err.to_string().contains("non-empty"));
        // Borrowed ids are checked too (read from MessagePack, as fanout reads them).
        let read = |s: &str| {
            let bytes = rmp_serde::to_vec(s).unwrap();
            rmp_serde::from_slice::<EntityIdRef>(&bytes).map(|id| id.as_str().to_owned())
        };
        assert!(read("a\u{7}b").unwrap_err().to_string().contains("control"));
        assert!(read(&"x".repeat(257)).is_err());
        assert!(read("").is_err());
        assert_eq!(read("e1").unwrap(), "e1");
    }
}
