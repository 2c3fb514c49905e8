//! Transport framing around TDISP messages: PCIe DOE data objects.

pub mod doe;
