//! TCP peer transport (in progress).
