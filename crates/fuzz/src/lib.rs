//! Fuzz targets for what reads untrusted bytes: the image decoders (framing,
//! protobuf messages, pagemaps) and the page server's wire (both header sizes).
//! They live in tests/ as bolero targets:
//!
//! * `cargo test -p lazy-pages-fuzz` (part of `npm test`): each target runs random
//!   inputs for 1 s (bolero's default), on stable Rust.
//! * Longer: `BOLERO_RANDOM_TEST_TIME_MS=600000 cargo test --release -p lazy-pages-fuzz`,
//!   or coverage-guided with libFuzzer where a nightly toolchain and cargo-bolero are
//!   installed: `cargo +nightly bolero test -p lazy-pages-fuzz framing --profile release -T 10min`
//!   (README "Fuzzing").
//!
//! Every target asserts more than "no panic": decoded values keep their invariants,
//! errors are one line naming the file, and the page server's replies are compared
//! byte for byte with a model of what it must answer. A failing input found by a run
//! becomes a plain #[test] next to its target.
