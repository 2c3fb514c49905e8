//! The emulated device security manager (DSM): a TDISP responder for a configurable device.
//!
//! [`config`] describes the device (its virtual functions with BARs, MSI-X and device-specific
//! information, and its TDISP capabilities); [`responder`] answers PCIe TDISP requests for it
//! exactly as the PCIe 6.1 specification describes, at the TDISP, SPDM or DOE level;
//! [`entropy`] supplies the START_INTERFACE nonces; [`doe_function`] is the DOE capability's
//! register interface in front of it; [`ide_km`] is its PCIe IDE_KM responder (key slots),
//! served only inside a secured SPDM session.

pub mod config;
pub mod doe_function;
pub mod entropy;
pub mod ide_km;
pub mod responder;

pub use config::ConfigChange;
pub use config::ConfigError;
pub use config::DsmConfig;
pub use config::FunctionConfig;
pub use doe_function::DoeFunction;
pub use entropy::EntropySource;
pub use entropy::OsEntropy;
pub use responder::EmulatedDsm;
