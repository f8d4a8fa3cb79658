//! Fields given twice in one JSON object. serde_json hands every key on and the message
//! reader keeps the last value, so `{"name": "v1", "name": "v2"}` was read as `v2`; the
//! protobuf JSON mapping asks a reader to refuse a field given twice, and both spellings of a
//! field (`graceful_timeout_seconds` and `gracefulTimeoutSeconds`) are the same field.
//!
//! A second reading of the text (after it was read as the message, so it is known to be
//! valid JSON of that shape) that walks it beside the message's descriptor: in an object of a
//! message, keys count by the field they name; in any other object (a map field's entries,
//! `google.protobuf.Struct`), by their text. Values are skipped, not built.

use std::{borrow::Cow, collections::HashSet, fmt};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// `Err` names the first field given twice, with its path (`items[1].name`).
pub(super) fn refuse_fields_given_twice(
    text: &[u8],
    message: MessageDescriptor,
) -> Result<(), String> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let mut walk = Walk { path: Vec::new(), twice: None };
    let read = Value { of: Of::Message(message), walk: &mut walk }.deserialize(&mut deserializer);
    match (walk.twice, read) {
        (Some(twice), _) => Err(twice),
        (None, read) => read.map_err(|error| error.to_string()),
    }
}

/// What an object's keys are.
#[derive(Clone)]
enum Of {
    /// The fields of this message.
    Message(MessageDescriptor),
    /// A map field's keys, its values of this message if they are messages.
    Entries(Option<MessageDescriptor>),
    /// Anything else (well-known types with free keys): keys by their text.
    Any,
}

impl Of {
    /// The values of `field`: the elements of its list, if it is one.
    fn field(field: &FieldDescriptor) -> Of {
        match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                Of::Entries(Of::message(entry.map_entry_value_field().kind()))
            }
            kind => Of::message(kind).map_or(Of::Any, Of::Message),
        }
    }

    /// The message of `kind`, unless it has a JSON form of its own (`google.protobuf.*`).
    fn message(kind: Kind) -> Option<MessageDescriptor> {
        match kind {
            Kind::Message(message) if message.package_name() != "google.protobuf" => Some(message),
            _ => None,
        }
    }
}

/// Where the reading is, and the field found twice.
struct Walk<'de> {
    path: Vec<Segment<'de>>,
    twice: Option<String>,
}

enum Segment<'de> {
    Key(Cow<'de, str>),
    Index(usize),
}

impl Walk<'_> {
    /// Records `key` as given twice (first as `first`) and ends the reading.
    fn twice<E: de::Error>(&mut self, key: &str, first: &str) -> E {
        let mut path = String::new();
        for segment in self.path.iter().map(Segment::text).chain([Cow::Borrowed(key)]) {
            if !path.is_empty() && !segment.starts_with('[') {
                path.push('.');
            }
            path.push_str(&segment);
        }
        let spellings =
            if key == first { String::new() } else { format!(" (as {first} and as {key})") };
        self.twice = Some(format!("{path}: the field is given twice{spellings}"));
        E::custom("a field is given twice")
    }
}

impl Segment<'_> {
    /// As the message's reading names it: `items`, `[1]`.
    fn text(&self) -> Cow<'_, str> {
        match self {
            Segment::Key(key) => Cow::Borrowed(key),
            Segment::Index(index) => Cow::Owned(format!("[{index}]")),
        }
    }
}

/// One value, of `of` if it is an object or a list of them.
struct Value<'w, 'de> {
    of: Of,
    walk: &'w mut Walk<'de>,
}

impl<'de> DeserializeSeed<'de> for Value<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_, 'de> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        loop {
            self.walk.path.push(Segment::Index(index));
            let element = seq.next_element_seed(Value { of: self.of.clone(), walk: self.walk })?;
            self.walk.path.pop();
            if element.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Value { of, walk } = self;
        let mut fields: Vec<(u32, Cow<'de, str>)> = Vec::new();
        let mut keys = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let value = match &of {
                Of::Message(message) => {
                    let field = message.get_field_by_json_name(&key);
                    match field.or_else(|| message.get_field_by_name(&key)) {
                        Some(field) => {
                            let first = fields.iter().find(|(number, _)| *number == field.number());
                            if let Some((_, first)) = first {
                                return Err(walk.twice(&key, first));
                            }
                            fields.push((field.number(), key.clone()));
                            Of::field(&field)
                        }
                        // Refused by the message's reading already.
                        None => Of::Any,
                    }
                }
                Of::Entries(_) | Of::Any if keys.contains(&key) => {
                    return Err(walk.twice(&key, &key));
                }
                Of::Entries(values) => {
                    keys.insert(key.clone());
                    values.clone().map_or(Of::Any, Of::Message)
                }
                Of::Any => {
                    keys.insert(key.clone());
                    Of::Any
                }
            };
            walk.path.push(Segment::Key(key));
            map.next_value_seed(Value { of: value, walk })?;
            walk.path.pop();
        }
        Ok(())
    }
}

/// An object's key, borrowed from the text unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        json::{JsonError, from_json},
        pb,
    };

    /// The error reading `text` as `M`, or why there is none.
    fn refusal<M>(text: &str) -> Result<String, String>
    where
        M: prost::Message + prost::Name + Default + std::fmt::Debug,
    {
        match from_json::<M>(text.as_bytes()) {
            Err(JsonError::Invalid(message)) => Ok(message),
            Err(other) => Err(format!("{text}: {other}")),
            Ok(read) => Err(format!("{text}: read as {read:?}")),
        }
    }

    #[test]
    fn a_field_given_twice_is_refused_naming_it() -> Result<(), String> {
        let job = r#"{"name": "v1", "repository": "/r", "name": "v2"}"#;
        assert_eq!(refusal::<pb::Job>(job)?, "name: the field is given twice");
        let null_first = r#"{"name": null, "name": "v2"}"#;
        assert_eq!(refusal::<pb::Job>(null_first)?, "name: the field is given twice");
        Ok(())
    }

    #[test]
    fn both_spellings_of_a_field_are_the_same_field() -> Result<(), String> {
        let stop = r#"{"graceful_timeout_seconds": 5, "gracefulTimeoutSeconds": 7}"#;
        assert_eq!(
            refusal::<pb::StopJobRequest>(stop)?,
            "gracefulTimeoutSeconds: the field is given twice (as graceful_timeout_seconds and \
             as gracefulTimeoutSeconds)"
        );
        Ok(())
    }

    #[test]
    fn fields_are_counted_in_every_nested_message_and_array_item() -> Result<(), String> {
        let cases = [
            (r#"{"name": "j", "schedule": {"cron": "a", "cron": "b"}}"#, "schedule.cron"),
            (r#"{"items": [{"name": "a"}, {"name": "b", "name": "c"}]}"#, "items[1].name"),
            (
                r#"{"items": [{"name": "a", "vm": {"disks": ["/a"], "disks": ["/b"]}}]}"#,
                "items[0].vm.disks",
            ),
            (
                r#"{"items": [{"vm": {"qmp_socket": "a", "qmpSocket": "b"}}]}"#,
                "items[0].vm.qmpSocket",
            ),
        ];
        for (job, path) in cases {
            let refused = refusal::<pb::Job>(job)?;
            assert!(refused.starts_with(&format!("{path}: the field is given twice")), "{refused}");
        }
        Ok(())
    }

    #[test]
    fn one_name_in_different_objects_is_no_repeat() -> Result<(), String> {
        let job = r#"{"name": "j", "items": [{"name": "a", "vm": {"disks": ["/a", "/a"]}},
            {"name": "b", "vm": {"disks": ["/b"]}}], "schedule": {"cron": "0 2 * * *"}}"#;
        let read = from_json::<pb::Job>(job.as_bytes()).map_err(|e| e.to_string())?;
        assert_eq!((read.name.as_str(), read.items.len()), ("j", 2));
        Ok(())
    }
}
