//! SPDM 1.2 (DMTF DSP0274 / DSP0277), the subset TDISP needs: both ends of a secured session
//! over a PCIe DOE mailbox, with SHA-384, ECDSA P-384, ECDHE secp384r1, AES-256-GCM and the
//! SPDM key schedule, from RustCrypto crates.
//!
//! - [`codes`] and [`messages`]: the code spaces and message codecs.
//! - [`crypto`]: transcripts, signatures, ECDHE and the key schedule.
//! - [`secured`]: secured messages (DOE object type 2).
//! - [`cert`]: certificate chains in slot format, validated against a configured root.

pub mod cert;
pub mod channel;
pub mod codes;
pub mod crypto;
pub mod emu_socket;
pub mod messages;
pub mod requester;
pub mod responder;
pub mod secured;
pub mod transport;
