//! The kxdp command line.

fn main() {}
