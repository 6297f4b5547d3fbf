//! meshctl library.
