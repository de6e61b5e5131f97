//! Decoding lists no longer than a reader keeps: serde `deserialize_with` functions that
//! refuse a sequence as soon as its element `MAX + 1` appears (or, for string pairs, its
//! bytes pass a budget), before that element is stored. For lists whose decoded form is
//! larger than their encoding (enums, strings, structs of vectors), so that the size of a
//! file bounds what decoding it costs.
//!
//! ```ignore
//! #[serde(deserialize_with = "vmrr_format::bounded::vec::<_, _, 64>")]
//! devices: Vec<Device>,
//! ```

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

type Size<T> = fn(&T) -> usize;

struct Capped<T> {
    max: usize,
    bytes: Option<(Size<T>, usize)>,
    _t: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Capped<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a sequence of at most {} elements", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        if let Some(n) = seq.size_hint().filter(|n| *n > self.max) {
            return Err(serde::de::Error::custom(format!(
                "a list of {n} elements, over the limit of {}",
                self.max
            )));
        }
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max).min(4096));
        let mut total = 0usize;
        while let Some(x) = seq.next_element::<T>()? {
            if v.len() == self.max {
                return Err(serde::de::Error::custom(format!(
                    "more than {} elements, over the limit of {}",
                    self.max, self.max
                )));
            }
            if let Some((size, max_bytes)) = self.bytes {
                total = total.saturating_add(size(&x));
                if total > max_bytes {
                    return Err(serde::de::Error::custom(format!(
                        "elements of more than {max_bytes} bytes together, over the limit of {max_bytes} bytes"
                    )));
                }
            }
            v.push(x);
        }
        Ok(v)
    }
}

/// A sequence of at most `MAX` elements.
///
/// # Errors
/// More than `MAX` elements, or an element's own error.
pub fn vec<'de, D, T, const MAX: usize>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_seq(Capped::<T> { max: MAX, bytes: None, _t: std::marker::PhantomData })
}

/// `(key, value)` string pairs: at most `MAX` of them, and at most `MAX_BYTES` of keys and
/// values together (annotations).
///
/// # Errors
/// Over either limit, or an element's own error.
pub fn pairs<'de, D, const MAX: usize, const MAX_BYTES: usize>(
    d: D,
) -> Result<Vec<(String, String)>, D::Error>
where
    D: Deserializer<'de>,
{
    let size: Size<(String, String)> = |(k, v)| k.len() + v.len();
    d.deserialize_seq(Capped { max: MAX, bytes: Some((size, MAX_BYTES)), _t: std::marker::PhantomData })
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)] // only decoded
    struct L {
        #[serde(deserialize_with = "super::vec::<_, _, 3>")]
        v: Vec<u8>,
        #[serde(deserialize_with = "super::pairs::<_, 2, 4>")]
        p: Vec<(String, String)>,
    }

    #[test]
    fn caps_hold() {
        assert!(serde_json::from_str::<L>(r#"{"v":[1,2,3],"p":[["a","b"],["c","d"]]}"#).is_ok());
        let e = serde_json::from_str::<L>(r#"{"v":[1,2,3,4],"p":[]}"#).err().unwrap().to_string();
        assert!(e.contains("over the limit of 3"), "{e}");
        let e =
            serde_json::from_str::<L>(r#"{"v":[],"p":[["ab","cd"],["e",""]]}"#).err().unwrap().to_string();
        assert!(e.contains("4 bytes"), "{e}");
    }
}
