//! JSON written as it is made: the audit's `--json` body holds a row per step of the history (twice:
//! in `timeline` and under its environment or `policy`), so building it as one `serde_json::Value`
//! costs memory in proportion to the history. A [`Json`] is the same document with its long arrays
//! left as recipes that make one element at a time while it is written, so memory stays bounded by
//! what the rows are made from, not by the text.
//!
//! Owns: the shape of such documents and writing them. The bytes are those `serde_json` writes for
//! the equivalent `Value` (members in key order, as `serde_json::Map` keeps them).

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;

/// A JSON document some of whose arrays are made element by element while it is written.
pub(crate) enum Json<'a> {
    Value(Value),
    /// Members in key order, as a `serde_json::Map` keeps them.
    Object(BTreeMap<String, Json<'a>>),
    /// An array made each time it is written.
    Lazy(Box<dyn Fn() -> Box<dyn Iterator<Item = Value> + 'a> + 'a>),
}

impl<'a> Json<'a> {
    /// An array whose elements `make` gives, one at a time.
    pub fn lazy<I: Iterator<Item = Value> + 'a>(make: impl Fn() -> I + 'a) -> Self {
        Json::Lazy(Box::new(move || Box::new(make())))
    }

    /// `header`'s members (an object), then `self`'s (an object), a member of `self` replacing one of
    /// `header` with the same name.
    pub fn after(self, header: Value) -> Self {
        let mut all: BTreeMap<String, Json<'a>> = match header {
            Value::Object(map) => map.into_iter().map(|(k, v)| (k, Json::Value(v))).collect(),
            _ => BTreeMap::new(),
        };
        match self {
            Json::Object(body) => all.extend(body),
            Json::Value(Value::Object(body)) => all.extend(body.into_iter().map(|(k, v)| (k, Json::Value(v)))),
            _ => {}
        }
        Json::Object(all)
    }

    /// The whole document as one value (for the HTML page and the agent's page, which keep it).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("audit JSON serializes")
    }

    /// Writes the document as `serde_json::to_string_pretty` would, then a newline, to stdout.
    pub fn print(&self) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, self).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
        out.flush()
    }
}

impl Serialize for Json<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Json::Value(v) => v.serialize(s),
            Json::Object(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Json::Lazy(make) => {
                let mut seq = s.serialize_seq(None)?;
                for v in make() {
                    seq.serialize_element(&v)?;
                }
                seq.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Json;
    use serde_json::json;
    use std::collections::BTreeMap;

    /// The streamed document is written byte for byte as the equivalent value, empty arrays and
    /// nested objects included, and members of the body replace the header's.
    #[test]
    fn streamed_documents_are_written_as_their_values() {
        let rows = vec![json!({"b": 1, "a": [1, 2]}), json!({"z": null})];
        let mut envs = BTreeMap::new();
        envs.insert("prod".to_owned(), Json::lazy(|| rows.clone().into_iter()));
        envs.insert("dev".to_owned(), Json::lazy(std::iter::empty));
        let mut body = BTreeMap::new();
        body.insert("timeline".to_owned(), Json::lazy(|| rows.clone().into_iter()));
        body.insert("environments".to_owned(), Json::Object(envs));
        body.insert("empty".to_owned(), Json::lazy(std::iter::empty));
        body.insert("ok".to_owned(), Json::Value(json!(false)));
        let doc = Json::Object(body).after(json!({"ok": true, "head": "abc", "list": []}));
        let expected = json!({
            "head": "abc", "list": [], "ok": false, "empty": [],
            "timeline": rows, "environments": {"prod": rows, "dev": []},
        });
        assert_eq!(serde_json::to_string_pretty(&doc).unwrap(), serde_json::to_string_pretty(&expected).unwrap());
        assert_eq!(doc.to_value(), expected);
    }
}
