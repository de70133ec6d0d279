//! The status file (`status/<env>.json` on the status branch): what `stele::status::parse` accepts
//! renders and parses back to the same status, and rendering is a fixed point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stele::status::{parse, render};

fuzz_target!(|data: &[u8]| {
    let Ok(status) = parse(data) else { return };
    let rendered = render(&status);
    let again = parse(&rendered).expect("a rendered status parses");
    assert_eq!(again, status, "rendering changes the status");
    assert_eq!(render(&again), rendered, "rendering is not a fixed point");
});
