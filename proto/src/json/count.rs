//! The length of one array of a JSON object, read without building its elements: a job's
//! items are counted before the document is mapped to a message, which costs far more per
//! item (a 45 MB job of 1.4 million items took 2 GB and half a minute to be refused).

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Whether the top-level object in `text` has an array `field` of more than `max` elements,
/// counted over every time the field is given (the full reading builds each, then keeps the
/// last), also those read before the text turns out wrong further on (the full reading builds
/// them before it finds that). Anything that is not such an object says no: the full reading
/// reports what is wrong.
pub fn array_longer_than(text: &[u8], field: &str, max: usize) -> bool {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let count = Cell::new(0);
    let _read_to_the_end_or_an_error =
        Field { field, count: &count }.deserialize(&mut deserializer);
    count.get() > max
}

/// Reads an object, counting the elements of `field` only, into `count` as they are read.
struct Field<'a> {
    field: &'a str,
    count: &'a Cell<usize>,
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Read to its end (the reader refuses an object left half read).
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.field {
                map.next_value_seed(Elements(self.count))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// Counts the elements of an array into the cell.
struct Elements<'a>(&'a Cell<usize>);

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // Read to its end, each element skipped (the reader refuses an array left half read).
        while seq.next_element::<IgnoredAny>()?.is_some() {
            self.0.set(self.0.get().saturating_add(1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::array_longer_than;

    #[test]
    fn counts_only_the_named_array_of_the_top_object() {
        let three =
            br#"{"name":"a","items":[{"name":"x"},{"name":"y"},{"name":"z"}],"other":[1,2,3,4]}"#;
        assert!(array_longer_than(three, "items", 2));
        assert!(!array_longer_than(three, "items", 3));
        assert!(!array_longer_than(three, "missing", 0));
        assert!(!array_longer_than(br#"{"nested":{"items":[1,2,3]}}"#, "items", 1));
    }

    #[test]
    fn a_field_given_twice_counts_both_arrays() {
        let twice = br#"{"items":[1,2,3],"items":[]}"#;
        assert!(array_longer_than(twice, "items", 2), "the reader builds both");
        assert!(!array_longer_than(twice, "items", 3));
    }

    /// The full reading builds the elements it meets before the text goes wrong.
    #[test]
    fn elements_before_an_error_further_on_count() {
        assert!(array_longer_than(br#"{"items":[1,2,3],"items":null}"#, "items", 2));
        assert!(array_longer_than(br#"{"items":[1,2,3],"name":}"#, "items", 2));
        assert!(array_longer_than(br#"{"items":[1,2,3,"#, "items", 2));
    }

    #[test]
    fn what_is_not_such_an_object_says_no() {
        for text in [&b""[..], b"[1,2,3]", b"{\"items\":3}", b"not json"] {
            assert!(!array_longer_than(text, "items", 0), "{}", String::from_utf8_lossy(text));
        }
    }
}
