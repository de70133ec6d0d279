//! Document parsing (SPEC.md §5.2, checks D1-D5) for each of the five kinds (revision 4 adds the
//! timestamp and the observation). What parses must render
//! back to exactly the input (a document has one file form) and hash as its PAE says.
#![no_main]

use ledger_format::crypto::document_hash;
use ledger_format::document::Payload;
use ledger_format::types::{Entry, Environment, Observation, Policy, TimestampDoc};
use ledger_format::Document;
use libfuzzer_sys::fuzz_target;

fn check<T: Payload + std::fmt::Debug>(data: &[u8]) {
    let Ok(doc) = Document::<T>::parse(data) else { return };
    assert_eq!(doc.to_file_bytes(), data, "a parsed document renders back to other bytes");
    assert_eq!(doc.hash(), document_hash(doc.pae()), "the hash is not the hash of the PAE");
    let again = Document::<T>::parse(&doc.to_file_bytes()).expect("the file form of a document parses");
    assert_eq!(again.hash(), doc.hash());
}

fuzz_target!(|data: &[u8]| {
    check::<Policy>(data);
    check::<Environment>(data);
    check::<Entry>(data);
    check::<TimestampDoc>(data);
    check::<Observation>(data);
});
