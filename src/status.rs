//! Status write-back to the status branch, being built.
