//! A row's fields as the JSON object text they arrived in.
//!
//! A row crosses five hands between the source and the destination (sync-start, the
//! queue message, delivery, the request body, the failed-row index). Kept as a parsed
//! map, every hand parsed and re-serialised it (a tenth of a row's CPU, measured). Kept
//! as text, it is validated once where it enters (the source line, a stored payload)
//! and spliced verbatim everywhere else; only destinations that map fields (Salesforce,
//! HubSpot) parse it, once per request.
//!
//! The text is the source's own: field order, spacing and number spelling are kept. A
//! JSON Lines row that names a field twice is forwarded as written (a parsed map used
//! to keep the last value; receivers' JSON parsers do the same).

use std::fmt;

use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{value::RawValue, Map, Value};

/// A row's fields: always one valid JSON object, stored as its text.
#[derive(Clone)]
pub struct RowFields(Box<RawValue>);

impl RowFields {
    /// Takes JSON text that must be one object (surrounding whitespace is dropped).
    pub fn from_text(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        let mut text: String = text.into();
        let trimmed = text.trim();
        if trimmed.len() != text.len() {
            text = trimmed.to_owned();
        }
        let raw = RawValue::from_string(text)?;
        Self::from_raw(raw)
    }

    /// Takes text already validated as JSON, checking only that it is an object.
    fn from_raw(raw: Box<RawValue>) -> Result<Self, serde_json::Error> {
        if raw.get().starts_with('{') {
            Ok(Self(raw))
        } else {
            Err(serde_json::Error::custom(
                "row fields must be a JSON object",
            ))
        }
    }

    /// The fields of a parsed map (e.g. a CSV record's cells).
    pub fn from_map(fields: &Map<String, Value>) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(fields).map(Self)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The text as a raw JSON value (serialises verbatim).
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// Parses every field (for destinations that map them).
    ///
    /// Fallible on purpose: planning validates a row as JSON text without building its
    /// values, so text that is valid JSON but has no `serde_json::Value` (a lone surrogate
    /// escape such as `"\ud800"`, a number beyond `f64` such as `1e400`, nesting deeper
    /// than 128 levels) is accepted and forwarded verbatim by the webhook; a destination
    /// that maps fields fails such a row alone (see [`UnmappableRow`]).
    pub fn to_map(&self) -> Result<Map<String, Value>, UnmappableRow> {
        serde_json::from_str(self.0.get()).map_err(|err| UnmappableRow {
            reason: format!("the row's fields cannot be read as JSON values: {err}"),
        })
    }

    /// Parses only the fields whose names `wanted` accepts (the last occurrence of each,
    /// as a parsed map keeps it); the others are skipped unread, so a value that no
    /// `serde_json::Value` can hold fails the row only where a destination maps it.
    pub fn pick(&self, wanted: &dyn Fn(&str) -> bool) -> Result<Map<String, Value>, UnmappableRow> {
        let mut de = serde_json::Deserializer::from_str(self.0.get());
        let picked = serde::de::DeserializeSeed::deserialize(Picked { wanted }, &mut de)
            .and_then(|picked| de.end().map(|()| picked));
        picked.map_err(|err| UnmappableRow {
            reason: format!("the row's mapped fields cannot be read as JSON values: {err}"),
        })
    }

    /// One field's value (the last occurrence, as a parsed map keeps it), read without
    /// building the others.
    pub fn field(&self, name: &str) -> Option<Value> {
        field_of(self.as_str(), name).ok().flatten()
    }

    /// Size of the text in bytes.
    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    /// Whether the text is empty (never: an object is at least `{}`).
    pub fn is_empty(&self) -> bool {
        self.0.get().is_empty()
    }
}

/// Why a destination could not map a row's fields: the row is valid JSON text, but a
/// value it maps has no parsed form. The row fails alone, permanently, with code
/// [`UnmappableRow::CODE`]; the rest of its request is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct UnmappableRow {
    /// What could not be read (positions and kinds, never values).
    pub reason: String,
}

impl UnmappableRow {
    /// The error code a row that a destination cannot map fails with.
    pub const CODE: &'static str = "unmappable_row";
}

/// Validates `text` as one JSON object and returns the value of its field `name` (the
/// last occurrence, as a parsed map keeps it), allocating nothing for the other fields.
pub(crate) fn field_of(text: &str, name: &str) -> Result<Option<Value>, serde_json::Error> {
    one_field(text, name)
}

/// Validates `text` as one JSON object and returns the text of its field `name` exactly
/// as written (the last occurrence), e.g. `7.50`, `1e2` or `"x "` with its quotes.
pub(crate) fn raw_field_of<'t>(
    text: &'t str,
    name: &str,
) -> Result<Option<&'t RawValue>, serde_json::Error> {
    one_field(text, name)
}

fn one_field<'de, T: Deserialize<'de>>(
    text: &'de str,
    name: &str,
) -> Result<Option<T>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde::de::DeserializeSeed::deserialize(
        OneField {
            name,
            value: std::marker::PhantomData,
        },
        &mut de,
    )?;
    de.end()?;
    Ok(value)
}

/// Deserialises a JSON object into the value of one field, skipping every other field.
struct OneField<'a, T> {
    name: &'a str,
    value: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> serde::de::DeserializeSeed<'de> for OneField<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for OneField<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_it) = map.next_key_seed(FieldIs(self.name))? {
            if is_it {
                found = Some(map.next_value::<T>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Deserialises a JSON object into the fields a predicate names, skipping the others.
struct Picked<'a> {
    wanted: &'a dyn Fn(&str) -> bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for Picked<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Picked<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut picked = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if (self.wanted)(&name) {
                let value = map
                    .next_value::<Value>()
                    .map_err(|err| A::Error::custom(format_args!("field '{name}': {err}")))?;
                picked.insert(name, value);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(picked)
    }
}

/// Whether a field name equals the given one (escaped names included).
struct FieldIs<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for FieldIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<bool, E> {
        Ok(name == self.0)
    }
}

impl Serialize for RowFields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RowFields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Self::from_raw(raw).map_err(D::Error::custom)
    }
}

/// Two rows are equal when their fields are, whatever the spelling of the text (rows
/// whose values have no parsed form are equal only when their texts are).
impl PartialEq for RowFields {
    fn eq(&self, other: &Self) -> bool {
        if self.as_str() == other.as_str() {
            return true;
        }
        match (self.to_map(), other.to_map()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

/// Never prints the values (rows stay out of logs): only the size.
impl fmt::Debug for RowFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RowFields({} bytes)", self.len())
    }
}

impl TryFrom<Map<String, Value>> for RowFields {
    type Error = serde_json::Error;

    fn try_from(fields: Map<String, Value>) -> Result<Self, Self::Error> {
        Self::from_map(&fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_kept_verbatim_and_spliced_into_bodies() {
        let fields = RowFields::from_text("  {\"b\": 1.50, \"a\":\"x\"}\n").unwrap();
        assert_eq!(fields.as_str(), "{\"b\": 1.50, \"a\":\"x\"}");
        #[derive(Serialize, Deserialize)]
        struct Body {
            row: RowFields,
        }
        let body = serde_json::to_string(&Body {
            row: fields.clone(),
        })
        .unwrap();
        assert_eq!(body, "{\"row\":{\"b\": 1.50, \"a\":\"x\"}}");
        let back: Body = serde_json::from_str(&body).unwrap();
        assert_eq!(back.row.as_str(), fields.as_str());
        assert_eq!(back.row.to_map().unwrap()["a"], json!("x"));
    }

    #[test]
    fn only_objects_are_fields() {
        assert!(RowFields::from_text("[1]").is_err());
        assert!(RowFields::from_text("\"x\"").is_err());
        assert!(RowFields::from_text("{\"a\":").is_err());
        assert!(RowFields::from_text("{} {}").is_err());
        #[derive(Debug, Deserialize)]
        struct Body {
            #[allow(dead_code)]
            row: RowFields,
        }
        let err = serde_json::from_str::<Body>("{\"row\":[1,2]}").unwrap_err();
        assert!(err.to_string().contains("JSON object"), "{err}");
    }

    #[test]
    fn one_field_is_read_as_a_parsed_map_would_give_it() {
        let fields =
            RowFields::from_text(r#"{"a":{"x":[1]},"p\u0061rent":"A1","parent":"A2"}"#).unwrap();
        assert_eq!(fields.field("parent"), Some(json!("A2")));
        assert_eq!(
            fields.field("parent"),
            fields.to_map().unwrap().get("parent").cloned()
        );
        assert_eq!(fields.field("a"), Some(json!({"x": [1]})));
        assert_eq!(fields.field("missing"), None);
    }

    #[test]
    fn equality_is_by_fields_and_debug_hides_values() {
        let a = RowFields::from_text("{\"a\": 1, \"b\": \"secret\"}").unwrap();
        let b = RowFields::try_from(json!({"b": "secret", "a": 1}).as_object().unwrap().clone())
            .unwrap();
        assert_eq!(a, b);
        assert_ne!(
            a,
            RowFields::from_text("{\"a\":2,\"b\":\"secret\"}").unwrap()
        );
        let debug = format!("{a:?}");
        assert!(!debug.contains("secret"), "{debug}");
    }
}
