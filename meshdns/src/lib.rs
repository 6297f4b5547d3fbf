//! meshdns library.
