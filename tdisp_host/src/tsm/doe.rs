//! The DOE mailbox: the one transport between the TSM and a device's security manager.
//!
//! Two levels, as in PCIe 6.1 section 6.30 and the Linux DOE helper:
//!
//! - [`DoeRegisters`]: the DOE extended capability's registers, accessed one dword at a time
//!   ([`regs`] has the layout). A device implements it
//!   ([`crate::dsm::DoeFunction`] emulates one).
//! - [`DoeMailbox`]: one whole data object to the device, the one object it answers with. It
//!   is a thin layer: [`super::doe_driver::RegisterMailbox`] implements it by driving the
//!   registers (Go, Busy, Data Object Ready, Error, Abort, the 1 s timeout). In the "request +
//!   exec" model a TSM request is serviced by one or more such exchanges. Whole-object
//!   responders ([`crate::dsm::EmulatedDsm`], test scripts) implement it directly too.

use std::sync::Arc;
use std::sync::Mutex;
use tdisp_proto::framing::spdm::SPDM_VENDOR_DEFINED_REQUEST;
use tdisp_proto::framing::spdm::SPDM_VENDOR_DEFINED_RESPONSE;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zerocopy::little_endian::U16;

/// Largest data object a mailbox in this crate moves (header included). DOE allows 1 MiB; TDISP
/// messages stay far below 128 KiB, and the cap bounds what a hostile peer can make us hold.
pub const MAX_DOE_OBJECT_SIZE: usize = 128 * 1024;

/// Why a DOE exchange failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MailboxError {
    /// The device set the DOE Error bit: it could not process the object.
    #[error("the device reported a DOE error: {0}")]
    DeviceError(&'static str),
    /// The device did not answer within the DOE timeout (PCIe: 1 s). Whether it processed the
    /// object is unknown.
    #[error("the device did not answer within the DOE timeout")]
    Timeout,
    /// The object exceeds [`MAX_DOE_OBJECT_SIZE`].
    #[error("DOE object of {0} bytes is too large")]
    TooLarge(usize),
    /// The mailbox is gone (device removed, or its owner panicked).
    #[error("the DOE mailbox is not available")]
    Unavailable,
}

/// One PCIe DOE mailbox: write a request object, read the response object.
pub trait DoeMailbox: Send {
    /// Sends the whole data object `request` (header included) and returns the whole response
    /// object. The answer is untrusted: callers decode and validate it.
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError>;

    /// The DOE discovery version requests on this mailbox carry: 2 when the DOE capability is
    /// version 2 or later (PCIe 6.1), else 0. Mailboxes without a capability to read say 0.
    fn discovery_version(&self) -> u8 {
        0
    }
}

impl<T: DoeMailbox + ?Sized> DoeMailbox for Box<T> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        (**self).exchange(request)
    }
    fn discovery_version(&self) -> u8 {
        (**self).discovery_version()
    }
}

impl<T: DoeMailbox + ?Sized> DoeMailbox for &mut T {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        (**self).exchange(request)
    }
    fn discovery_version(&self) -> u8 {
        (**self).discovery_version()
    }
}

/// A mailbox shared with its owner, so a test or a VMM can still reach the device (for example
/// to change its configuration) while the TSM holds the mailbox.
impl<T: DoeMailbox + ?Sized> DoeMailbox for Arc<Mutex<T>> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let mut device = self.lock().map_err(|_| MailboxError::Unavailable)?;
        device.exchange(request)
    }
    fn discovery_version(&self) -> u8 {
        self.lock().map_or(0, |d| d.discovery_version())
    }
}

/// The DOE extended capability's register layout (PCIe 6.1 section 7.9.24), as offsets from
/// the capability and bits of each register.
pub mod regs {
    /// Extended capability header: id, version (bits 19:16), next capability.
    pub const HEADER: u16 = 0x00;
    /// DOE Capabilities (interrupt support and message number; none here).
    pub const CAPABILITIES: u16 = 0x04;
    /// DOE Control.
    pub const CONTROL: u16 = 0x08;
    /// DOE Status.
    pub const STATUS: u16 = 0x0c;
    /// DOE Write Data Mailbox: each write appends one dword of the request object.
    pub const WRITE_MAILBOX: u16 = 0x10;
    /// DOE Read Data Mailbox: a read returns the current dword of the response object, a write
    /// (of any value) moves to the next one.
    pub const READ_MAILBOX: u16 = 0x14;

    /// The DOE extended capability id.
    pub const CAPABILITY_ID: u32 = 0x002e;

    /// Control: abort whatever exchange is in progress and empty both mailboxes.
    pub const CONTROL_ABORT: u32 = 1 << 0;
    /// Control: the request object in the write mailbox is complete; process it.
    pub const CONTROL_GO: u32 = 1 << 31;

    /// Status: the device is processing (or aborting) and takes no new object.
    pub const STATUS_BUSY: u32 = 1 << 0;
    /// Status: the device could not process the object; only an abort clears it.
    pub const STATUS_ERROR: u32 = 1 << 2;
    /// Status: a response object is waiting in the read mailbox.
    pub const STATUS_DATA_OBJECT_READY: u32 = 1 << 31;

    /// The capability version in a header value.
    pub fn header_version(header: u32) -> u8 {
        ((header >> 16) & 0xf) as u8
    }
}

/// The DOE registers of one function, one dword at a time. Offsets are the [`regs`] constants;
/// reads of offsets the capability does not have return 0 and writes to them are ignored, as
/// for reserved configuration space.
pub trait DoeRegisters: Send {
    /// Reads the register at `offset`.
    fn read(&mut self, offset: u16) -> u32;
    /// Writes `value` to the register at `offset`.
    fn write(&mut self, offset: u16, value: u32);
}

impl<T: DoeRegisters + ?Sized> DoeRegisters for Box<T> {
    fn read(&mut self, offset: u16) -> u32 {
        (**self).read(offset)
    }
    fn write(&mut self, offset: u16, value: u32) {
        (**self).write(offset, value);
    }
}

/// Registers shared with their owner, so a test can reach the device while the TSM holds it.
impl<T: DoeRegisters + ?Sized> DoeRegisters for Arc<Mutex<T>> {
    fn read(&mut self, offset: u16) -> u32 {
        self.lock().map_or(u32::MAX, |mut r| r.read(offset))
    }
    fn write(&mut self, offset: u16, value: u32) {
        if let Ok(mut r) = self.lock() {
            r.write(offset, value);
        }
    }
}

/// The DOE discovery request payload (PCIe 6.1 section 6.30.1.1) as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DiscoveryRequestWire {
    /// Which supported protocol to describe.
    pub index: u8,
    /// DOE discovery version (0 for DOE 1.x requesters).
    pub version: u8,
    /// Reserved, zero.
    pub reserved: [u8; 2],
}
const _: () = assert!(size_of::<DiscoveryRequestWire>() == 4);

/// The DOE discovery response payload as it appears on the wire.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct DiscoveryResponseWire {
    /// Vendor id of the protocol at the requested index.
    pub vendor_id: U16,
    /// Data object type of that protocol.
    pub object_type: u8,
    /// Index of the next protocol, 0 after the last.
    pub next_index: u8,
}
const _: () = assert!(size_of::<DiscoveryResponseWire>() == 4);

/// Strips the zero padding a DOE object adds after a PCI-SIG vendor-defined SPDM message.
///
/// DOE lengths count dwords, so the SPDM message inside may be followed by up to three zero
/// bytes; the vendor-defined header says how long the message really is. Anything that is not a
/// vendor-defined message with at most three zero bytes of padding is returned unchanged, for
/// the decoder to reject.
pub fn trim_vendor_defined_padding(bytes: &[u8]) -> &[u8] {
    match bytes.get(1) {
        Some(&code)
            if code == SPDM_VENDOR_DEFINED_REQUEST || code == SPDM_VENDOR_DEFINED_RESPONSE =>
        {
            tdisp_proto::framing::spdm::strip_doe_padding(bytes).unwrap_or(bytes)
        }
        _ => bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor_message(payload_len: u16) -> Vec<u8> {
        let mut bytes = vec![0x12, SPDM_VENDOR_DEFINED_RESPONSE, 0, 0, 3, 0, 2, 1, 0];
        bytes.extend_from_slice(&payload_len.to_le_bytes());
        bytes.extend(std::iter::repeat_n(0xaa, payload_len.into()));
        bytes
    }

    #[test]
    fn padding_up_to_three_zero_bytes_is_trimmed() {
        let message = vendor_message(5);
        for pad in 0..4 {
            let mut padded = message.clone();
            padded.extend(std::iter::repeat_n(0, pad));
            assert_eq!(trim_vendor_defined_padding(&padded), &message[..]);
        }
    }

    #[test]
    fn non_zero_or_long_padding_is_left_for_the_decoder() {
        let mut message = vendor_message(5);
        message.push(1);
        assert_eq!(trim_vendor_defined_padding(&message).len(), message.len());
        let mut long = vendor_message(5);
        long.extend([0; 4]);
        assert_eq!(trim_vendor_defined_padding(&long).len(), long.len());
        let short = vendor_message(5);
        assert_eq!(trim_vendor_defined_padding(&short[..12]).len(), 12);
        assert_eq!(trim_vendor_defined_padding(&[]).len(), 0);
    }
}
