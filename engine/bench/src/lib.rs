//! What the benchmark binaries share: the generated drover home
//! ([`home`]), a real `drover serve` with its token ([`server`]) and the
//! figures they report ([`figures`]): statistics of
//! samples, the rows of BENCHMARKS.md's top table, and the JSON file each
//! binary writes with `--json FILE`, which `scripts/bench.py` turns into
//! BENCHMARKS.md.

pub mod figures;
pub mod home;
pub mod server;
