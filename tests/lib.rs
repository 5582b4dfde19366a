//! End-to-end suites live in `e2e/`; this crate has no library code.
