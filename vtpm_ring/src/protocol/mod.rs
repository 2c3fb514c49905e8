//! The two shared-memory layouts a vTPM frontend and backend can speak.
//!
//! [`v1`] is the seed's ring of `tpmif_tx_request` entries naming pre-granted packet pages;
//! [`v2`] is the single shared page (plus extra pages) of current Xen and Linux. Which one a
//! device uses is negotiated in the store through `feature-protocol-v2`.

pub mod v1;
pub mod v2;

use open_enum::open_enum;

use crate::grant::GrantError;
use crate::page::PageError;
use thiserror::Error;

/// What a request on either ring carries. Without `feature-vtpm-control` negotiated every
/// packet is a TPM command (and the field is ignored, as Linux and mini-os leave it zero);
/// with it, the frontend marks each request. The field lives outside the packet (v2: the
/// shared page's padding byte; v1: entry 0's `unused` field), so no packet content, whatever
/// a guest writes to its TPM, can ever be taken for a control operation.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketKind {
    /// A TPM command; the response is a TPM response.
    TPM_COMMAND = 0,
    /// An swtpm control-channel request, byte for byte as QEMU writes it to swtpm
    /// ([`crate::engine::ctrl`]); the response is swtpm's reply to it.
    CONTROL = 1,
}

/// A protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolVersion {
    /// The seed's multi-page ring.
    V1,
    /// The shared page with state/length/locality.
    V2,
}

/// Which protocol versions a side is willing to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protocols {
    /// Accept v1.
    pub v1: bool,
    /// Accept v2.
    pub v2: bool,
}

impl Default for Protocols {
    fn default() -> Self {
        Self { v1: true, v2: true }
    }
}

impl Protocols {
    /// Only v1.
    pub const V1_ONLY: Protocols = Protocols {
        v1: true,
        v2: false,
    };
    /// Only v2.
    pub const V2_ONLY: Protocols = Protocols {
        v1: false,
        v2: true,
    };

    /// The version both sides use: v2 when both offer it, else v1 when both accept it.
    pub fn negotiate(self, peer_v2: bool) -> Option<ProtocolVersion> {
        match (self.v2 && peer_v2, self.v1) {
            (true, _) => Some(ProtocolVersion::V2),
            (false, true) => Some(ProtocolVersion::V1),
            (false, false) => None,
        }
    }
}

/// Errors reading or writing a shared layout.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RingError {
    /// A page access failed.
    #[error("shared page access: {0}")]
    Page(#[from] PageError),
    /// A grant could not be made or mapped.
    #[error("grant: {0}")]
    Grant(#[from] GrantError),
    /// The packet length exceeds what the shared pages hold.
    #[error("packet of {len} bytes exceeds the {capacity} bytes the shared pages hold")]
    TooLarge {
        /// Length announced or asked for.
        len: usize,
        /// What fits.
        capacity: usize,
    },
    /// The layout contradicts itself (sizes that do not add up, too many extra pages...).
    #[error("inconsistent shared layout: {0}")]
    Inconsistent(&'static str),
}

/// A zeroed buffer for a packet of `len` bytes copied out of shared memory. Not
/// `vec![0; len]`, which asks the allocator for zeroed memory: glibc's `calloc` (2.36, as
/// on Debian 12) bypasses its per-thread cache, and costs several times a `malloc` for a
/// packet of a few dozen bytes, twice per command.
#[expect(
    clippy::slow_vector_initialization,
    reason = "vec![0; len] is the calloc this avoids"
)]
pub(crate) fn packet_buffer(len: usize) -> Vec<u8> {
    let mut packet = Vec::with_capacity(len);
    packet.resize(len, 0);
    packet
}
