//! Wire formats and the guest request contract for PCIe TDISP (TEE Device Interface Security
//! Protocol, PCIe 6.1 section 11).
//!
//! This crate owns every byte layout of the TDISP stack and performs no I/O:
//!
//! - [`pcie`]: the TDISP messages a TSM and a device exchange: [`pcie::TdispMessage`] with a
//!   typed [`pcie::TdispRequest`] or [`pcie::TdispResponse`] body, the device interface report,
//!   error codes, capabilities and TDI states.
//! - [`framing`]: SPDM vendor-defined messages ([`framing::spdm`]) and PCIe DOE data objects
//!   ([`framing::doe`]) that carry TDISP messages to the device.
//! - [`interface`]: the [`TdispGuestRequestInterface`] trait a guest uses to drive a device
//!   through TDISP, and its types.
//! - [`wire`]: OpenVMM's `tdisp.proto` guest<->host messages (`prost`), each trait call and its
//!   reply, and the frame that carries them on a VMBus channel.
//! - [`evidence`]: what a guest needs to check device-signed evidence itself: SPDM certificate
//!   chains and signatures, the session evidence container served as the `Measurements`
//!   report, the SPDM MEASUREMENTS response and its blocks (one parser, the host's SPDM
//!   requester's too), and the TDI binding block that ties an interface report to an SPDM
//!   session.
//! - `testing` (feature `test-suite`): a conformance suite every implementation of the trait
//!   runs.
//!
//! A TSM builds a request, frames it and decodes the device's answer:
//!
//! ```
//! use tdisp_proto::framing::doe::{DoeObject, DoeObjectType};
//! use tdisp_proto::framing::spdm::{self, Direction};
//! use tdisp_proto::pcie::{InterfaceId, TdispMessage, TdispRequest, TdispResponse, TdiState};
//!
//! let tdi = InterfaceId::from_requester_id(0x0100);
//! let request = TdispMessage::new(tdi, TdispRequest::GetDeviceInterfaceState);
//! let mut spdm_bytes = Vec::new();
//! spdm::encode_tdisp(spdm::SPDM_VERSION_1_2, Direction::Request, &request, &mut spdm_bytes)?;
//! let mut doe_bytes = Vec::new();
//! DoeObject::new(DoeObjectType::SPDM, &spdm_bytes).encode(&mut doe_bytes);
//!
//! // ... the device answers; here we build its answer ourselves.
//! let answer = TdispMessage::new(tdi, TdispResponse::DeviceInterfaceState { state: TdiState::ConfigUnlocked });
//! let mut wire = Vec::new();
//! spdm::encode_tdisp(spdm::SPDM_VERSION_1_2, Direction::Response, &answer, &mut wire)?;
//! let (_version, decoded) = spdm::decode_tdisp::<TdispResponse>(&wire, Direction::Response)?;
//! assert_eq!(decoded, answer);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A guest call travels as a `tdisp.GuestToHostCommand` ([`wire::CommandPacket`]) and comes
//! back as a `tdisp.GuestToHostResponse` ([`wire::ResponsePacket`]); the host runs it with
//! [`wire::GuestCommand::dispatch`]. See [`wire`] for the schema, the state mapping and an
//! example.
//!
//! # Implementing the trait
//!
//! Implement [`TdispGuestRequestInterface`] (state rules in its docs) and run the conformance
//! suite from your tests with the `test-suite` feature enabled (for example
//! `tdisp_proto = { workspace = true, features = ["test-suite"] }` in `[dev-dependencies]`):
//!
//! ```
//! # use tdisp_proto::testing::reference::ReferenceModel as MyImpl;
//! let report = tdisp_proto::testing::run_conformance(&Default::default(), MyImpl::default);
//! assert!(report.is_ok(), "{report}");
//! ```
//!
//! # Design notes
//!
//! - **One codec per format.** [`pcie::TdispMessage`] is the only TDISP encoder/decoder; the
//!   body enums carry no header, so the interface id travels beside the body. Decoders parse
//!   into `zerocopy` wire structs, then validate (exact length, version 1.0, reserved fields,
//!   code/body match, counts against bytes, size caps) into typed values; encoders write only
//!   what decoders accept, so every decodable buffer re-encodes to itself (fuzzed).
//! - **Strict on reserved fields** everywhere except the capability words `tsm_caps` and
//!   `dsm_caps`, which are carried as received so that a newer device's bits do not break us.
//! - **Request bitmap**: bit `code - 0x80` of `req_msg_supported` marks request `code`
//!   (GET_TDISP_VERSION is bit 1), as in the DMTF validator; see [`pcie::RequestBitmap`].
//! - **BIND_P2P_STREAM** accepts the one-byte TDISP 1.0 body and the two-byte body with
//!   `stream_config`; the variant records which one it was.
//! - **Caps**: reports up to 64 KiB (the u16 offset/length of portioned reads), vendor-defined
//!   bodies and extended error data up to 4 KiB, guest
//!   report buffers up to 64 KiB ([`wire::MAX_REPORT_BUFFER`]).
//! - **Conformance by behaviour only**: the suite infers state from call results (a lock
//!   succeeds only from `Unlocked`, a report only in `Locked`/`Run`), so the host state machine
//!   and the guest client run it unchanged; no extra state-query trait is required.
//! - **Not here**: the SPDM session itself (secured messages, key schedule) and any I/O; the
//!   secured-SPDM DOE type is only a code point in [`framing::doe`]. [`evidence`] verifies
//!   signatures and certificate chains (RustCrypto `p384`, `sha2`, `x509-cert`) but holds no
//!   keys and opens no session.

#![forbid(unsafe_code)]

pub mod evidence;
pub mod framing;
pub mod interface;
pub mod pcie;
#[cfg(any(test, feature = "test-suite"))]
pub mod testing;
pub mod wire;

pub use interface::FEATURE_SESSION_EVIDENCE;
pub use interface::REPORT_NONCE_SIZE;
pub use interface::TdispDeviceInterfaceInfo;
pub use interface::TdispGuestOperationError;
pub use interface::TdispGuestProtocolType;
pub use interface::TdispGuestRequestInterface;
pub use interface::TdispGuestUnbindReason;
pub use interface::TdispReportType;
pub use interface::TdispTdiState;
