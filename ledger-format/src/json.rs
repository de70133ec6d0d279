//! Strict JSON for signed documents (SPEC.md §3): a parser that refuses everything the canonical form
//! cannot express, and the two renderings of a value: compact JCS (the bytes that are signed and hashed)
//! and the canonical file form (the bytes stored in the repository).
//!
//! Owns: byte-level syntax and canonical rendering. Must not know about document kinds or signatures.
//!
//! The accepted subset is RFC 8785 (JCS) restricted further, so that one value has exactly one
//! rendering and no two parsers can disagree on it: objects, arrays, strings, booleans and
//! non-negative integers up to 2^53 - 1. No `null`, no fractions or exponents, no negative numbers,
//! member names are printable ASCII and unique within their object.

use serde_json::{Map, Value};
use std::fmt;

/// Largest integer the format accepts: the largest integer every JSON implementation represents exactly.
pub const MAX_INTEGER: u64 = (1 << 53) - 1;
/// Deepest nesting of objects and arrays the parser accepts.
pub const MAX_DEPTH: usize = 16;

/// Why bytes are not strict JSON, with the byte offset where the parser stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at byte {offset}")]
pub struct JsonError {
    pub offset: usize,
    pub reason: JsonErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonErrorKind {
    InvalidUtf8,
    UnexpectedEnd,
    UnexpectedByte(u8),
    TrailingBytes,
    DuplicateKey(String),
    NonAsciiKey,
    Null,
    NonInteger,
    NegativeNumber,
    LeadingZero,
    IntegerTooLarge,
    ControlCharacterInString,
    InvalidEscape,
    LoneSurrogate,
    TooDeep,
}

impl fmt::Display for JsonErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUtf8 => write!(f, "invalid UTF-8"),
            Self::UnexpectedEnd => write!(f, "unexpected end of input"),
            Self::UnexpectedByte(b) if b.is_ascii_graphic() => write!(f, "unexpected character '{}'", *b as char),
            Self::UnexpectedByte(b) => write!(f, "unexpected byte 0x{b:02x}"),
            Self::TrailingBytes => write!(f, "trailing bytes after the document"),
            Self::DuplicateKey(k) => write!(f, "duplicate key \"{k}\""),
            Self::NonAsciiKey => write!(f, "object member name is not printable ASCII"),
            Self::Null => write!(f, "null is not allowed (omit the member instead)"),
            Self::NonInteger => write!(f, "fractions and exponents are not allowed (integers only)"),
            Self::NegativeNumber => write!(f, "negative numbers are not allowed"),
            Self::LeadingZero => write!(f, "number with a leading zero"),
            Self::IntegerTooLarge => write!(f, "integer larger than 2^53 - 1"),
            Self::ControlCharacterInString => write!(f, "unescaped control character in string"),
            Self::InvalidEscape => write!(f, "invalid escape sequence"),
            Self::LoneSurrogate => write!(f, "escape encodes a lone UTF-16 surrogate"),
            Self::TooDeep => write!(f, "nesting deeper than {MAX_DEPTH} levels"),
        }
    }
}

/// Parses `bytes` as one strict JSON value (SPEC.md §3.1). Insignificant whitespace is accepted here;
/// whether the bytes are canonical is a separate check ([`to_file_form`] and compare).
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(JsonError { offset: e.valid_up_to(), reason: JsonErrorKind::InvalidUtf8 });
    }
    let mut p = Parser { bytes, pos: 0 };
    p.skip_ws();
    let value = p.value(0)?;
    p.skip_ws();
    if p.pos != bytes.len() {
        return Err(p.err(JsonErrorKind::TrailingBytes));
    }
    Ok(value)
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, reason: JsonErrorKind) -> JsonError {
        JsonError { offset: self.pos, reason }
    }

    fn peek(&self) -> Result<u8, JsonError> {
        self.bytes.get(self.pos).copied().ok_or_else(|| self.err(JsonErrorKind::UnexpectedEnd))
    }

    fn skip_ws(&mut self) {
        while matches!(self.bytes.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), JsonError> {
        let got = self.peek()?;
        if got != b {
            return Err(self.err(JsonErrorKind::UnexpectedByte(got)));
        }
        self.pos += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonError> {
        for &b in word {
            self.expect(b)?;
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        match self.peek()? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => Ok(Value::String(self.string()?)),
            b't' => self.literal(b"true").map(|()| Value::Bool(true)),
            b'f' => self.literal(b"false").map(|()| Value::Bool(false)),
            b'n' => Err(self.err(JsonErrorKind::Null)),
            b'-' => Err(self.err(JsonErrorKind::NegativeNumber)),
            b'0'..=b'9' => self.number(),
            other => Err(self.err(JsonErrorKind::UnexpectedByte(other))),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err(JsonErrorKind::TooDeep));
        }
        self.expect(b'{')?;
        let mut map = Map::new();
        self.skip_ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_ws();
            let key_at = self.pos;
            let key = self.string()?;
            if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(JsonError { offset: key_at, reason: JsonErrorKind::NonAsciiKey });
            }
            if map.contains_key(&key) {
                return Err(JsonError { offset: key_at, reason: JsonErrorKind::DuplicateKey(key) });
            }
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value(depth)?;
            map.insert(key, value);
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                other => return Err(self.err(JsonErrorKind::UnexpectedByte(other))),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err(JsonErrorKind::TooDeep));
        }
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek()? == b']' {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                other => return Err(self.err(JsonErrorKind::UnexpectedByte(other))),
            }
        }
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.pos;
        while matches!(self.bytes.get(self.pos), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        if matches!(self.bytes.get(self.pos), Some(b'.' | b'e' | b'E')) {
            return Err(self.err(JsonErrorKind::NonInteger));
        }
        let digits = &self.bytes[start..self.pos];
        if digits.len() > 1 && digits[0] == b'0' {
            return Err(JsonError { offset: start, reason: JsonErrorKind::LeadingZero });
        }
        // At most 16 digits fit below 2^53; more cannot parse into u64 safely either way.
        let n = std::str::from_utf8(digits)
            .ok()
            .filter(|d| d.len() <= 16)
            .and_then(|d| d.parse::<u64>().ok())
            .filter(|n| *n <= MAX_INTEGER)
            .ok_or(JsonError { offset: start, reason: JsonErrorKind::IntegerTooLarge })?;
        Ok(Value::Number(n.into()))
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let mut v: u16 = 0;
        for _ in 0..4 {
            let b = self.peek()?;
            let d = (b as char).to_digit(16).ok_or_else(|| self.err(JsonErrorKind::InvalidEscape))?;
            v = v * 16 + d as u16;
            self.pos += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while let Some(&b) = self.bytes.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The whole input was checked to be UTF-8 and the run stops only at ASCII bytes.
            out.push_str(std::str::from_utf8(&self.bytes[run_start..self.pos]).expect("input is valid UTF-8"));
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    self.pos += 1;
                    let esc = self.peek()?;
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let at = self.pos - 2;
                            let hi = self.hex4()?;
                            let c = if (0xd800..0xdc00).contains(&hi) {
                                if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                    return Err(JsonError { offset: at, reason: JsonErrorKind::LoneSurrogate });
                                }
                                self.pos += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(JsonError { offset: at, reason: JsonErrorKind::LoneSurrogate });
                                }
                                0x10000 + (((hi as u32) - 0xd800) << 10) + ((lo as u32) - 0xdc00)
                            } else if (0xdc00..0xe000).contains(&hi) {
                                return Err(JsonError { offset: at, reason: JsonErrorKind::LoneSurrogate });
                            } else {
                                hi as u32
                            };
                            out.push(char::from_u32(c).expect("surrogates were excluded above"));
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.err(JsonErrorKind::InvalidEscape));
                        }
                    }
                }
                _ => return Err(self.err(JsonErrorKind::ControlCharacterInString)),
            }
        }
    }
}

/// Why a `serde_json::Value` cannot be rendered canonically (it holds something [`parse_strict`] refuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("value contains null")]
    Null,
    #[error("value contains a number that is not an integer in 0..=2^53-1")]
    Number,
    #[error("object member name {0:?} is not printable ASCII")]
    Key(String),
}

/// Compact JCS rendering (RFC 8785 on the strict subset): members sorted by name, no whitespace.
/// These are the bytes that signatures and hashes cover.
pub fn to_jcs(value: &Value) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::with_capacity(256);
    render(value, None, &mut out)?;
    Ok(out)
}

/// Canonical file rendering (SPEC.md §3.3): the JCS value laid out with two-space indentation, one
/// member or item per line, `": "` after names, and a final newline. One value has exactly one file
/// form, so a verifier re-renders what it parsed and compares bytes.
pub fn to_file_form(value: &Value) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::with_capacity(512);
    render(value, Some(0), &mut out)?;
    out.push(b'\n');
    Ok(out)
}

fn newline_indent(out: &mut Vec<u8>, depth: usize) {
    out.push(b'\n');
    out.resize(out.len() + 2 * depth, b' ');
}

/// Renders `value`; `indent` is `None` for compact output, or the current depth for the file form.
fn render(value: &Value, indent: Option<usize>, out: &mut Vec<u8>) -> Result<(), RenderError> {
    match value {
        Value::Null => return Err(RenderError::Null),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => match n.as_u64() {
            Some(n) if n <= MAX_INTEGER => out.extend_from_slice(n.to_string().as_bytes()),
            _ => return Err(RenderError::Number),
        },
        Value::String(s) => render_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if let Some(d) = indent {
                    newline_indent(out, d + 1);
                }
                render(item, indent.map(|d| d + 1), out)?;
            }
            if let (Some(d), false) = (indent, items.is_empty()) {
                newline_indent(out, d);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sort explicitly: serde_json's map order depends on a cargo feature another crate may enable.
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in members.iter().enumerate() {
                if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return Err(RenderError::Key(key.to_string()));
                }
                if i > 0 {
                    out.push(b',');
                }
                if let Some(d) = indent {
                    newline_indent(out, d + 1);
                }
                render_string(key, out);
                out.push(b':');
                if indent.is_some() {
                    out.push(b' ');
                }
                render(item, indent.map(|d| d + 1), out)?;
            }
            if let (Some(d), false) = (indent, members.is_empty()) {
                newline_indent(out, d);
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// RFC 8785 §3.2.2.2 string serialisation: the two-character escapes where JSON has them, `\u00xx`
/// with lowercase hex for other control characters, everything else as literal UTF-8.
fn render_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind(input: &str) -> JsonErrorKind {
        parse_strict(input.as_bytes()).expect_err(input).reason
    }

    #[test]
    fn refuses_what_the_canonical_form_cannot_express() {
        let table: &[(&str, JsonErrorKind)] = &[
            (r#"{"a":1,"a":2}"#, JsonErrorKind::DuplicateKey("a".into())),
            (r#"{"a":1.0}"#, JsonErrorKind::NonInteger),
            (r#"{"a":1e3}"#, JsonErrorKind::NonInteger),
            (r#"{"a":-1}"#, JsonErrorKind::NegativeNumber),
            (r#"{"a":01}"#, JsonErrorKind::LeadingZero),
            (r#"{"a":9007199254740992}"#, JsonErrorKind::IntegerTooLarge),
            (r#"{"a":null}"#, JsonErrorKind::Null),
            (r#"{"é":1}"#, JsonErrorKind::NonAsciiKey),
            (r#"{"a":"\ud800"}"#, JsonErrorKind::LoneSurrogate),
            (r#"{"a":"\x"}"#, JsonErrorKind::InvalidEscape),
            ("{\"a\":\"\u{1}\"}", JsonErrorKind::ControlCharacterInString),
            (r#"{"a":1} x"#, JsonErrorKind::TrailingBytes),
            (r#"{"a":1"#, JsonErrorKind::UnexpectedEnd),
            (r#"[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]"#, JsonErrorKind::TooDeep),
        ];
        for (input, expected) in table {
            assert_eq!(&kind(input), expected, "input {input}");
        }
        assert_eq!(parse_strict(b"{\"a\":\xff}").unwrap_err().reason, JsonErrorKind::InvalidUtf8);
    }

    #[test]
    fn largest_safe_integer_and_nesting_limit_are_accepted() {
        assert!(parse_strict(b"9007199254740991").is_ok());
        assert!(parse_strict(b"[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]").is_ok());
    }

    #[test]
    fn jcs_sorts_members_and_escapes_like_rfc_8785() {
        let v = parse_strict(r#"{"b":"\u0041\n\u001f\u00e9","a":[true,false,{}],"A":[]}"#.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(to_jcs(&v).unwrap()).unwrap(),
            "{\"A\":[],\"a\":[true,false,{}],\"b\":\"A\\n\\u001fé\"}"
        );
    }

    #[test]
    fn file_form_is_indented_and_ends_with_a_newline() {
        let v = parse_strict(br#"{"b":{"c":[1,2]},"a":"x","e":[],"f":{}}"#).unwrap();
        let expected = "{\n  \"a\": \"x\",\n  \"b\": {\n    \"c\": [\n      1,\n      2\n    ]\n  },\n  \"e\": [],\n  \"f\": {}\n}\n";
        assert_eq!(String::from_utf8(to_file_form(&v).unwrap()).unwrap(), expected);
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            (0..=MAX_INTEGER).prop_map(|n| Value::Number(n.into())),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[ -~]{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_renderings_round_trip(v in arb_value()) {
            let compact = to_jcs(&v).unwrap();
            let file = to_file_form(&v).unwrap();
            prop_assert_eq!(&parse_strict(&compact).unwrap(), &v);
            prop_assert_eq!(&parse_strict(&file).unwrap(), &v);
            // Rendering what was parsed gives the same bytes: the canonical form is a fixed point.
            prop_assert_eq!(to_file_form(&parse_strict(&file).unwrap()).unwrap(), file);
            prop_assert_eq!(to_jcs(&parse_strict(&compact).unwrap()).unwrap(), compact);
        }

        #[test]
        fn parser_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_strict(&bytes);
        }
    }
}
