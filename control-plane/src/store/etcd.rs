//! The etcd backend (written next).
