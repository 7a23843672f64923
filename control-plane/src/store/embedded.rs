//! The embedded backend (written next).
