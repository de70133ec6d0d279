//! The wall clock, read in one place: the I/O shell reads it and hands times to the pure core (which
//! never reads it). Must not: be called from `ledger_format`, `plan` or `report`.

use ledger_format::Timestamp;
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, to the second, as the ledger and status files spell times.
pub fn now() -> Timestamp {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    Timestamp::from_unix(secs).expect("the system clock is between 1970 and 9999")
}
