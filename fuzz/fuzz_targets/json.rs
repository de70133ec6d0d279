//! The strict JSON parser (SPEC.md §3): any bytes, and for what it accepts, the properties the
//! canonical form rests on: both renderings succeed, the file form parses back to the same value, and
//! a value is what its renderings say (one value, one file form).
#![no_main]

use ledger_format::json::{parse_strict, to_file_form, to_jcs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = parse_strict(data) else { return };
    let jcs = to_jcs(&value).expect("a strictly parsed value renders as JCS");
    let file = to_file_form(&value).expect("a strictly parsed value renders in file form");
    assert_eq!(parse_strict(&file).expect("the file form parses"), value, "file form changes the value");
    assert_eq!(parse_strict(&jcs).expect("JCS parses"), value, "JCS changes the value");
});
