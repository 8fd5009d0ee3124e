//! Policy runtime benchmarks (being written).
fn main() {}
