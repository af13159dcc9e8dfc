//! rec
