//! SSHSIG parsing and verification (SPEC.md §8.4), as the history verifier uses it for commit
//! signatures: namespace `git`. The input is the armored signature, optionally followed right after
//! its `-----END SSH SIGNATURE-----` line by the message it signs (empty otherwise), so a real
//! signature and its message are one seed.
#![no_main]

use ledger_format::crypto::verify_sshsig;
use libfuzzer_sys::fuzz_target;

const END: &[u8] = b"-----END SSH SIGNATURE-----\n";

fuzz_target!(|data: &[u8]| {
    let (armored, message) = match data.windows(END.len()).position(|w| w == END) {
        Some(i) => data.split_at(i + END.len()),
        None => (data, &data[data.len()..]),
    };
    if let Ok(key) = verify_sshsig(armored, "git", message) {
        // A verified signature verifies again with the same key, and not in another namespace.
        assert_eq!(verify_sshsig(armored, "git", message).expect("verifies twice"), key);
        assert!(verify_sshsig(armored, "file", message).is_err(), "namespace not checked");
    }
});
