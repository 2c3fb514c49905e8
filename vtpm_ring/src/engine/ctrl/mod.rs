//! swtpm's control channel, byte for byte: command numbers, result codes, and the layout of
//! every request and reply this crate sends or serves.
//!
//! The peer is swtpm's socket control channel (`tpm_ioctl.h`, checked against swtpm 0.7.1 and
//! QEMU's `tpm_emulator.c`): a request is a big-endian `u32` command number followed by a
//! fixed big-endian body (SET_STATEBLOB: a 12-byte header and `length` blob bytes); a reply is
//! a big-endian `u32` result (0 = success, otherwise a TPM 1.2 style code such as
//! `TPM_BAD_PARAMETER`) followed by the command's fixed reply body. Two exceptions:
//! GET_CAPABILITY's reply is a bare `u64` of capability bits with no result, and
//! GET_STATEBLOB's reply is a 16-byte header (result, flags, total length, length) followed by
//! `length` blob bytes. On an error swtpm sends only the 4-byte result (GET_STATEBLOB may also
//! send the whole header with a non-zero result), so a reader stops after a non-zero result.
//!
//! Nothing marks message boundaries on the wire; [`request_len`] tells a stream reader how many
//! bytes a request needs, and [`reply_fixed_len`] how many a successful reply has before any
//! blob. The same encoding is the payload of the manager stream's control frames.
//!
//! Not carried (swtpm has them, this crate neither sends nor serves them): HASH_START/DATA/END
//! (the D-RTM hash interface) and GET_INFO. SET_DATAFD passes a descriptor, so it never
//! decodes as a request: only [`crate::qemu`] serves it, with the descriptor in hand.

mod reply;
mod request;
#[cfg(test)]
mod tests;

pub use reply::decode_reply;
pub use reply::encode_reply;
pub use reply::reply_fixed_len;
pub use request::decode_request;
pub use request::encode_request;
pub use request::request_cmd;
pub use request::request_len;

use bitfield_struct::bitfield;
use open_enum::open_enum;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::big_endian::U32;

/// Control command numbers (`CMD_*` of swtpm's `tpm_ioctl.h`).
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u32)]
pub enum CtrlCmd {
    /// Capability bits.
    GET_CAPABILITY = 1,
    /// Power on / reset the TPM.
    INIT = 2,
    /// Terminate the TPM (swtpm exits).
    SHUTDOWN = 3,
    /// Read the TPM-established flag.
    GET_TPMESTABLISHED = 4,
    /// Locality of the following commands.
    SET_LOCALITY = 5,
    /// D-RTM hash start (not carried).
    HASH_START = 6,
    /// D-RTM hash data (not carried).
    HASH_DATA = 7,
    /// D-RTM hash end (not carried).
    HASH_END = 8,
    /// Cancel the command under way.
    CANCEL_TPM_CMD = 9,
    /// Write the volatile state to the state directory.
    STORE_VOLATILE = 0xa,
    /// Reset the TPM-established flag.
    RESET_TPMESTABLISHED = 0xb,
    /// Read a state blob.
    GET_STATEBLOB = 0xc,
    /// Write a state blob (TPM stopped).
    SET_STATEBLOB = 0xd,
    /// Stop the TPM without terminating swtpm.
    STOP = 0xe,
    /// Configuration flags.
    GET_CONFIG = 0xf,
    /// Pass the data socket (unix socket only; not carried).
    SET_DATAFD = 0x10,
    /// Query or set the TPM's I/O buffer size.
    SET_BUFFERSIZE = 0x11,
    /// Information strings (not carried).
    GET_INFO = 0x12,
}

/// Result codes of the control channel: swtpm reports libtpms' TPM 1.2 `TPM_RESULT` values.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u32)]
pub enum CtrlResult {
    /// Success.
    SUCCESS = 0,
    /// Malformed request (wrong body size).
    BAD_PARAMETER = 3,
    /// The operation failed.
    FAIL = 9,
    /// Unknown command, or not allowed in the TPM's current state (running / stopped).
    BAD_ORDINAL = 0xa,
    /// Out of memory.
    SIZE = 0x17,
    /// I/O error.
    IOERROR = 0x1f,
    /// Locality out of range.
    BAD_LOCALITY = 0x3d,
}

/// `PTM_INIT_FLAG_DELETE_VOLATILE`.
pub const INIT_FLAG_DELETE_VOLATILE: u32 = 1;
/// Largest state blob accepted from a peer (swtpm's blobs are tens of KiB).
pub const MAX_STATE_BLOB: usize = 1 << 20;

/// Capability bits (`PTM_CAP_*`), the bare `u64` GET_CAPABILITY returns.
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Capabilities {
    /// INIT.
    pub init: bool,
    /// SHUTDOWN.
    pub shutdown: bool,
    /// GET_TPMESTABLISHED.
    pub get_tpm_established: bool,
    /// SET_LOCALITY.
    pub set_locality: bool,
    /// HASH_START/DATA/END.
    pub hashing: bool,
    /// CANCEL_TPM_CMD.
    pub cancel_tpm_cmd: bool,
    /// STORE_VOLATILE.
    pub store_volatile: bool,
    /// RESET_TPMESTABLISHED.
    pub reset_tpm_established: bool,
    /// GET_STATEBLOB.
    pub get_stateblob: bool,
    /// SET_STATEBLOB.
    pub set_stateblob: bool,
    /// STOP.
    pub stop: bool,
    /// GET_CONFIG.
    pub get_config: bool,
    /// SET_DATAFD.
    pub set_datafd: bool,
    /// SET_BUFFERSIZE.
    pub set_buffersize: bool,
    /// GET_INFO.
    pub get_info: bool,
    /// The data channel accepts swtpm's command header.
    pub send_command_header: bool,
    #[bits(48)]
    _reserved: u64,
}

/// State blob types (`PTM_BLOB_TYPE_*`).
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(u32)]
pub enum BlobType {
    /// Permanent state (NV, seeds, persistent objects).
    PERMANENT = 1,
    /// Volatile state (PCRs, loaded objects, sessions).
    VOLATILE = 2,
    /// State saved by TPM2_Shutdown(STATE).
    SAVESTATE = 3,
}

/// State blob flags (`PTM_STATE_FLAG_*`).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct StateFlags {
    /// GET_STATEBLOB request: return the blob decrypted.
    pub decrypted: bool,
    /// The blob is encrypted (GET reply, SET request).
    pub encrypted: bool,
    #[bits(30)]
    _reserved: u32,
}

/// Configuration flags (`PTM_CONFIG_FLAG_*`), GET_CONFIG's reply.
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct ConfigFlags {
    /// The state files are encrypted with a key.
    pub file_key: bool,
    /// State blobs are encrypted with a migration key.
    pub migration_key: bool,
    #[bits(30)]
    _reserved: u32,
}

/// INIT request body (`ptm_init.u.req`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct InitRequest {
    /// [`INIT_FLAG_DELETE_VOLATILE`].
    pub flags: U32,
}
const _: () = assert!(size_of::<InitRequest>() == 4);

/// SET_LOCALITY / RESET_TPMESTABLISHED request body as QEMU sends it (the C union is 4 bytes;
/// swtpm reads only the first, and tpm2-tss sends only that one).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct LocalityRequest {
    /// Locality 0..=4.
    pub locality: u8,
    /// Padding.
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<LocalityRequest>() == 4);

/// GET_STATEBLOB request body (`ptm_getstate.u.req`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GetStateRequest {
    /// [`StateFlags`].
    pub flags: U32,
    /// [`BlobType`].
    pub blob_type: U32,
    /// Offset into the blob.
    pub offset: U32,
}
const _: () = assert!(size_of::<GetStateRequest>() == 12);

/// SET_STATEBLOB request header (`ptm_setstate.u.req` up to `data`); `length` bytes follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SetStateHeader {
    /// [`StateFlags`].
    pub flags: U32,
    /// [`BlobType`].
    pub blob_type: U32,
    /// Blob bytes that follow.
    pub length: U32,
}
const _: () = assert!(size_of::<SetStateHeader>() == 12);

/// SET_BUFFERSIZE request body; 0 queries.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BufferSizeRequest {
    /// Requested size, 0 to query.
    pub size: U32,
}
const _: () = assert!(size_of::<BufferSizeRequest>() == 4);

/// A reply that is only a result (`ptm_res`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ResultReply {
    /// [`CtrlResult`].
    pub result: U32,
}
const _: () = assert!(size_of::<ResultReply>() == 4);

/// GET_TPMESTABLISHED reply (`ptm_est.u.resp`, padded to 8 like the C struct).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EstablishedReply {
    /// [`CtrlResult`].
    pub result: U32,
    /// The flag (bit 0).
    pub bit: u8,
    /// Padding.
    pub pad: [u8; 3],
}
const _: () = assert!(size_of::<EstablishedReply>() == 8);

/// GET_STATEBLOB reply header; `length` blob bytes follow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GetStateHeader {
    /// [`CtrlResult`].
    pub result: U32,
    /// [`StateFlags`].
    pub flags: U32,
    /// Length of the whole blob from the requested offset.
    pub total_length: U32,
    /// Blob bytes in this reply.
    pub length: U32,
}
const _: () = assert!(size_of::<GetStateHeader>() == 16);

/// SET_BUFFERSIZE reply.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BufferSizeReply {
    /// [`CtrlResult`].
    pub result: U32,
    /// The buffer size now in effect.
    pub size: U32,
    /// Smallest size accepted.
    pub min: U32,
    /// Largest size accepted.
    pub max: U32,
}
const _: () = assert!(size_of::<BufferSizeReply>() == 16);

/// GET_CONFIG reply.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ConfigReply {
    /// [`CtrlResult`].
    pub result: U32,
    /// [`ConfigFlags`].
    pub flags: U32,
}
const _: () = assert!(size_of::<ConfigReply>() == 8);

/// A state blob read with GET_STATEBLOB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateBlob {
    /// Flags of the blob (encrypted or not).
    pub flags: StateFlags,
    /// Total length the TPM reported from the requested offset.
    pub total_length: u32,
    /// The blob bytes.
    pub data: Vec<u8>,
}

/// SET_BUFFERSIZE's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSizes {
    /// The size in effect.
    pub size: u32,
    /// Smallest accepted.
    pub min: u32,
    /// Largest accepted.
    pub max: u32,
}

/// Why control-channel bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CtrlError {
    /// Fewer bytes than the command or reply needs.
    #[error("control message of {got} bytes is shorter than the {needed} needed")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// More bytes than the command or reply has.
    #[error("control message of {got} bytes is longer than the {expected} expected")]
    Trailing {
        /// Bytes expected.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// A command number this crate does not know.
    #[error("unknown control command {0:?}")]
    Unknown(CtrlCmd),
    /// A known command this crate does not carry (hashing, SET_DATAFD, GET_INFO).
    #[error("control command {0:?} is not carried")]
    NotCarried(CtrlCmd),
    /// A state blob larger than [`MAX_STATE_BLOB`].
    #[error("state blob of {0} bytes is too large")]
    BlobTooLarge(usize),
    /// A success reply whose kind does not match the request.
    #[error("reply does not match {0:?}")]
    Mismatch(CtrlCmd),
}

impl CtrlError {
    /// Why neither decoder takes `cmd`: a command known but not carried, or an unknown one.
    fn not_decoded(cmd: CtrlCmd) -> Self {
        match cmd {
            CtrlCmd::HASH_START
            | CtrlCmd::HASH_DATA
            | CtrlCmd::HASH_END
            | CtrlCmd::SET_DATAFD
            | CtrlCmd::GET_INFO => CtrlError::NotCarried(cmd),
            other => CtrlError::Unknown(other),
        }
    }

    /// The result code swtpm gives for such a request.
    pub fn result_code(&self) -> CtrlResult {
        match self {
            CtrlError::Unknown(_) | CtrlError::NotCarried(_) => CtrlResult::BAD_ORDINAL,
            CtrlError::BlobTooLarge(_) => CtrlResult::SIZE,
            CtrlError::Truncated { .. } | CtrlError::Trailing { .. } | CtrlError::Mismatch(_) => {
                CtrlResult::BAD_PARAMETER
            }
        }
    }
}
