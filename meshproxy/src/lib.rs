//! meshproxy library.
