//! The providers this build drives, listed in one place.
//!
//! Adding a provider: its folder `providers/<name>/` (the `kcl/`
//! declaration and a crate implementing `drover_provider::Provider`), a
//! dependency line in this crate's Cargo.toml and a `.with(...)` line
//! below. Nothing else names a provider: the CLI, the server and the
//! benchmarks get the registry from here and hand it to the executor.

use drover_provider::Providers;

/// Every provider of this build.
pub fn providers() -> Providers {
    Providers::new()
        .with(drover_provider_local::LocalProvider)
        .with(drover_provider_static::StaticProvider)
        .with(drover_provider_aws::AwsProvider::new())
        .with(drover_provider_upcloud::UpcloudProvider::new())
}
