//! SPDM 1.2 (DMTF DSP0274 / DSP0277), the subset TDISP needs: both ends of a secured session
//! over a PCIe DOE mailbox, with SHA-384, ECDSA P-384, ECDHE secp384r1, AES-256-GCM and the
//! SPDM key schedule, from RustCrypto crates.
//!
//! - [`codes`] and [`messages`]: the code spaces and message codecs (parse, then validate).
//! - [`crypto`]: transcripts, the SPDM 1.2 signing prefix, ECDHE and the key schedule.
//! - [`secured`]: secured messages (DOE object type 2), AES-256-GCM with per-direction
//!   sequence numbers.
//! - [`cert`]: certificate chains in slot format, validated against a configured root, and
//!   generated device identities.
//! - [`requester`] (the TSM's end) and [`responder`] (the device's end, a
//!   [`crate::tsm::DoeMailbox`] around a [`responder::VendorHandler`] such as the emulated DSM).
//! - [`channel`]: [`channel::SpdmChannel`], the TSM's [`crate::tsm::SecureChannel`].
//! - [`transport`]: DOE object framing; [`emu_socket`]: DOE over TCP in spdm-emu's framing,
//!   as a client ([`emu_socket::EmuSocketMailbox`]) and as a server
//!   ([`emu_socket::serve`]).
//! - [`cert`] also loads identities and roots from files (DER or PEM, PKCS#8 or SEC1 keys),
//!   such as spdm-emu's sample keys.
//!
//! # Interoperability with DMTF spdm-emu
//!
//! `cargo xtask interop spdm-emu --bin-dir DIR` runs this stack against DMTF's
//! `spdm_responder_emu` and `spdm_requester_emu` (libspdm), built by the user from DMTF's
//! sources (see the README). Checked against DMTF spdm-emu `main` with its OpenSSL build:
//! - our requester (the TSM) against `spdm_responder_emu`: the handshake, the chain validated
//!   against the emulator's sample root, and a TDISP lock/report/start/stop cycle inside the
//!   session all pass;
//! - `spdm_requester_emu` against our responder (the emulated DSM, with the emulator's sample
//!   responder key and chain loaded at run time): KEY_EXCHANGE, FINISH and END_SESSION pass;
//!   with `--exe_session KEY_EX,APP` its whole PCIe application phase passes inside the
//!   session: IDE_KM QUERY, KEY_PROG/KP_ACK and K_SET_GO for six substreams
//!   ([`crate::dsm::ide_km`]), TDISP version, capabilities, lock, report, start and stop (to
//!   the interface 0xbeef it hard-codes), IDE_KM K_SET_STOP for the six. It then starts CXL
//!   IDE_KM (VendorID 0x1e98), which the emulated PCIe DSM refuses (SPDM ERROR), and exits 1
//!   (`do_app_session_via_spdm - 8001000a`); CXL IDE_KM and CXL TSP are not implemented.
//!
//! The responder never hands IDE_KM (it carries keys) to its vendor handler outside a
//! session, even with `allow_vendor_in_clear`.
//!
//! `tests/spdm_emu_capture.rs` replays a session captured from `spdm_responder_emu` as
//! known answers: libspdm's KEY_EXCHANGE_RSP signature over our transcript, its
//! ResponderVerifyData, and its records under our handshake and application keys.
//! Interop found one bug: the requester refused any MeasurementHashAlgo but SHA-384, while
//! that field is the responder's own choice (spdm-emu picks SHA-512).
//!
//! Not implemented: CHALLENGE, mutual authentication, PSK, HEARTBEAT, KEY_UPDATE, chunking,
//! multiple slots or sessions, and any algorithm outside the one suite above (a peer that
//! selects another is refused).
//!
//! # What the guest is served, and what it can conclude
//!
//! The `CertificateChain` report is the device's chain in SPDM slot format, as the TSM's
//! session validated it against the root the host configured. The `Measurements` report is
//! session evidence ([`tdisp_proto::evidence::bundle`]): VCA, this session's KEY_EXCHANGE and
//! KEY_EXCHANGE_RSP with its signature, then a GET_MEASUREMENTS (all blocks, signed, over the
//! guest's nonce when it sent one, else a fresh TSM nonce) sent inside the session and the MEASUREMENTS answer with its signature. The
//! responder adds to the answer, only inside a session, the blocks its
//! [`responder::VendorHandler::session_measurements`] gives for the session's TH1; the emulated
//! DSM gives one TDI binding block per CONFIG_LOCKED or RUN TDI
//! ([`tdisp_proto::evidence::binding`]: interface id, state, SHA-384 of the report it serves,
//! TH1). The TSM verifies both signatures before serving the evidence.
//!
//! A guest that validates the chain against **its own** root and checks the evidence
//! (`tdisp_guest::verify_binding`) can conclude that the device's key signed session S and,
//! in a connection with the same negotiation, bound exactly the report bytes it received to S
//! and its interface while CONFIG_LOCKED, after its own nonce was drawn when it sent one. It
//! cannot conclude freshness without its nonce (a host can then replay a whole older
//! session's evidence with that session's report), what happens after the signature, or that
//! the host relays or starts faithfully (the session keys stay with the TSM), that certificates are unrevoked (never checked) or in
//! date (checked only against a time the guest's policy supplies),
//! or anything from a device that does not report binding blocks: TDISP 1.0 does not sign
//! its report, SPDM 1.2 measurement signatures do not cover the key exchange, and the
//! binding block is this project's format, which DMTF spdm-emu does not produce. The full
//! statement is in `tdisp_guest`'s crate docs and `docs/security.md`.
//!
//! # Example
//!
//! ```
//! use tdisp_host::dsm::{DsmConfig, EmulatedDsm};
//! use tdisp_host::spdm::cert::DeviceIdentity;
//! use tdisp_host::spdm::requester::{RequesterConfig, SpdmRequester};
//! use tdisp_host::spdm::responder::{ResponderConfig, SpdmResponder};
//!
//! let identity = DeviceIdentity::generate("example device")?;
//! let mut requester = SpdmRequester::new(RequesterConfig::new(identity.root_der.clone()));
//! let dsm = EmulatedDsm::new(DsmConfig::single_function(0x0101))?;
//! let mut device = SpdmResponder::new(ResponderConfig::new(identity, Vec::new()), dsm);
//! let session_id = requester.connect(&mut device)?;
//! assert_eq!(device.session_id(), Some(session_id));
//! requester.end_session(&mut device)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
