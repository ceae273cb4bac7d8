//! Deterministic cluster simulator (under construction).
