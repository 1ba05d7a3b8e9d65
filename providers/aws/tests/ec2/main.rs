//! The aws provider against moto (the AWS EC2 API emulator) in server
//! mode, started by each test on a port of its own: through the
//! `Provider` trait (`provider`), and as `drover run` / `--resume` /
//! `rollback` of workflows/cloud-aws.k (`run`).
//!
//! One test binary: each binary that links the AWS SDK is hundreds of MB
//! in a debug build.

mod common;
mod provider;
mod run;
mod units;
