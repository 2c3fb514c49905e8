//! Wire formats for PCIe TDISP (TEE Device Interface Security Protocol, PCIe 6.1 section 11).
//!
//! This crate owns every byte layout of the TDISP stack and performs no I/O. Start with
//! [`framing::doe`], which wraps and unwraps PCIe DOE data objects:
//!
//! ```
//! use tdisp_proto::framing::doe::{DoeObject, DoeObjectType};
//!
//! let mut wire = Vec::new();
//! DoeObject::new(DoeObjectType::SPDM, &[1, 2, 3]).encode(&mut wire);
//! assert_eq!(wire.len(), 12); // 8-byte header + payload padded to a dword
//! let decoded = DoeObject::decode(&wire)?;
//! assert_eq!(decoded.object_type, DoeObjectType::SPDM);
//! # Ok::<(), tdisp_proto::framing::doe::DoeError>(())
//! ```

#![forbid(unsafe_code)]

pub mod framing;
