//! The emulated device's PCIe IDE_KM responder (PCIe 6.x §6.33.3, vendor-defined protocol id 0).
//!
//! Peer: DMTF spdm-emu's `spdm_requester_emu`, whose application phase runs QUERY, then
//! KEY_PROG + K_SET_GO for the six K0 substreams of stream 0 at port 1, TDISP, then K_SET_STOP
//! for the same six. Layouts match libspdm's `industry_standard/pci_idekm.h` byte for byte.
//!
//! The device has ports `0..=MAX_PORT_INDEX` and stream ids `0..STREAM_COUNT`; each
//! (port, stream, key set, direction, substream) has a key slot. Keys are zeroized when a slot is
//! stopped, reprogrammed or dropped and are never logged. IDE_KM must only be served inside a
//! secured SPDM session: [`crate::dsm::EmulatedDsm::handle_session_vendor`] is the only way in.

use open_enum::open_enum;
use std::collections::BTreeMap;
use thiserror::Error;
use zerocopy::FromBytes;
use zerocopy::Immutable;
use zerocopy::IntoBytes;
use zerocopy::KnownLayout;
use zeroize::Zeroize;
use zeroize::ZeroizeOnDrop;

/// Highest port index of the emulated device (ports 0 and 1).
pub const MAX_PORT_INDEX: u8 = 1;
/// Stream ids `0..STREAM_COUNT` can hold keys.
pub const STREAM_COUNT: u8 = 8;
/// Size of an AES-256-GCM key in KEY_PROG.
pub const KEY_SIZE: usize = 32;
/// Size of the IV invocation field in KEY_PROG.
pub const IFV_SIZE: usize = 8;

/// IDE_KM object ids.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum ObjectId {
    /// QUERY.
    QUERY = 0x00,
    /// QUERY_RESP.
    QUERY_RESP = 0x01,
    /// KEY_PROG.
    KEY_PROG = 0x02,
    /// KP_ACK.
    KP_ACK = 0x03,
    /// K_SET_GO.
    K_SET_GO = 0x04,
    /// K_SET_STOP.
    K_SET_STOP = 0x05,
    /// K_GOSTOP_ACK.
    K_GOSTOP_ACK = 0x06,
}

/// KP_ACK status codes.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum KpAckStatus {
    /// Key programmed.
    SUCCESS = 0x00,
    /// The KEY_PROG object had the wrong length.
    INCORRECT_LENGTH = 0x01,
    /// No such port.
    UNSUPPORTED_PORT_INDEX = 0x02,
    /// A field value the device does not support.
    UNSUPPORTED_VALUE = 0x03,
    /// Anything else.
    UNSPECIFIED_FAILURE = 0x04,
}

/// QUERY: object id, reserved, port index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QueryWire {
    /// [`ObjectId::QUERY`].
    pub object_id: u8,
    /// Reserved.
    pub reserved: u8,
    /// Port queried.
    pub port_index: u8,
}
const _: () = assert!(size_of::<QueryWire>() == 3);

/// QUERY_RESP without its trailing IDE register block (dwords).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct QueryRespWire {
    /// [`ObjectId::QUERY_RESP`].
    pub object_id: u8,
    /// Reserved.
    pub reserved: u8,
    /// Port queried.
    pub port_index: u8,
    /// Device/function number of the port.
    pub dev_func_num: u8,
    /// Bus number of the port.
    pub bus_num: u8,
    /// Segment of the port.
    pub segment: u8,
    /// Highest port index of the device.
    pub max_port_index: u8,
}
const _: () = assert!(size_of::<QueryRespWire>() == 7);

/// The header shared by KEY_PROG, KP_ACK, K_SET_GO, K_SET_STOP and K_GOSTOP_ACK. Byte 4 is
/// reserved except in KP_ACK, where it is the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StreamHeaderWire {
    /// The object id.
    pub object_id: u8,
    /// Reserved.
    pub reserved: [u8; 2],
    /// Stream id.
    pub stream_id: u8,
    /// Reserved, or the KP_ACK status.
    pub status: u8,
    /// Key set (bit 0), direction (bit 1), substream (bits 7:4).
    pub key_sub_stream: u8,
    /// Port index.
    pub port_index: u8,
}
const _: () = assert!(size_of::<StreamHeaderWire>() == 7);

/// Size of a KEY_PROG object: header, key (8 DW), IFV (2 DW).
pub const KEY_PROG_SIZE: usize = size_of::<StreamHeaderWire>() + KEY_SIZE + IFV_SIZE;

/// Which key of a stream a KEY_PROG/K_SET_* names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotId {
    /// Port index.
    pub port_index: u8,
    /// Stream id.
    pub stream_id: u8,
    /// Key set K0 (false) or K1 (true).
    pub key_set: bool,
    /// Transmit (true) or receive (false).
    pub transmit: bool,
    /// Substream: 0 posted, 1 non-posted, 2 completions.
    pub substream: u8,
}

/// Why an IDE_KM request could not be answered with its own ack.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdeKmError {
    /// Empty request.
    #[error("empty IDE_KM request")]
    Empty,
    /// Object id the device does not accept as a request.
    #[error("unsupported IDE_KM object id {0:#04x}")]
    UnsupportedObject(u8),
    /// Wrong size for the object.
    #[error("IDE_KM object {object:#04x} has {len} bytes, expected {expected}")]
    Length {
        /// The object id.
        object: u8,
        /// Its length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// No such port.
    #[error("port index {0} out of range")]
    Port(u8),
    /// Stream id outside the device's range.
    #[error("stream id {0} out of range")]
    Stream(u8),
    /// Key-substream byte with reserved bits set or an unknown substream.
    #[error("invalid key/substream byte {0:#04x}")]
    KeySubStream(u8),
    /// K_SET_GO for a slot with no programmed key.
    #[error("K_SET_GO for a slot with no key")]
    NoKey,
}

/// A parsed, validated IDE_KM request.
#[derive(Debug, PartialEq, Eq)]
pub enum IdeKmRequest {
    /// QUERY for a port.
    Query {
        /// The port.
        port_index: u8,
    },
    /// KEY_PROG (key material held zeroize-on-drop).
    KeyProg {
        /// The echoed header.
        header: StreamHeaderWire,
        /// The key and IFV.
        key: KeyMaterial,
    },
    /// K_SET_GO.
    SetGo(StreamHeaderWire),
    /// K_SET_STOP.
    SetStop(StreamHeaderWire),
}

/// A key and its IV invocation field; zeroized on drop, never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct KeyMaterial {
    key: [u8; KEY_SIZE],
    ifv: [u8; IFV_SIZE],
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMaterial(..)")
    }
}

fn stream_header(
    object: u8,
    request: &[u8],
    expected: usize,
) -> Result<StreamHeaderWire, IdeKmError> {
    if request.len() != expected {
        return Err(IdeKmError::Length {
            object,
            len: request.len(),
            expected,
        });
    }
    StreamHeaderWire::read_from_prefix(request)
        .map(|(h, _)| h)
        .map_err(|_| IdeKmError::Length {
            object,
            len: request.len(),
            expected,
        })
}

impl IdeKmRequest {
    /// Parses one IDE_KM request object (the vendor payload after the protocol id byte).
    pub fn parse(request: &[u8]) -> Result<Self, IdeKmError> {
        let &object = request.first().ok_or(IdeKmError::Empty)?;
        match ObjectId(object) {
            ObjectId::QUERY => {
                let expected = size_of::<QueryWire>();
                let query =
                    QueryWire::read_from_bytes(request).map_err(|_| IdeKmError::Length {
                        object,
                        len: request.len(),
                        expected,
                    })?;
                Ok(Self::Query {
                    port_index: query.port_index,
                })
            }
            ObjectId::KEY_PROG => {
                let header = stream_header(object, request, KEY_PROG_SIZE)?;
                let mut key = KeyMaterial {
                    key: [0; KEY_SIZE],
                    ifv: [0; IFV_SIZE],
                };
                let body = &request[size_of::<StreamHeaderWire>()..];
                key.key.copy_from_slice(&body[..KEY_SIZE]);
                key.ifv.copy_from_slice(&body[KEY_SIZE..]);
                Ok(Self::KeyProg { header, key })
            }
            ObjectId::K_SET_GO => Ok(Self::SetGo(stream_header(
                object,
                request,
                size_of::<StreamHeaderWire>(),
            )?)),
            ObjectId::K_SET_STOP => Ok(Self::SetStop(stream_header(
                object,
                request,
                size_of::<StreamHeaderWire>(),
            )?)),
            _ => Err(IdeKmError::UnsupportedObject(object)),
        }
    }
}

/// Validates a stream header's port, stream and key/substream fields into a slot.
pub fn validate_slot(header: &StreamHeaderWire) -> Result<SlotId, IdeKmError> {
    if header.port_index > MAX_PORT_INDEX {
        return Err(IdeKmError::Port(header.port_index));
    }
    if header.stream_id >= STREAM_COUNT {
        return Err(IdeKmError::Stream(header.stream_id));
    }
    let ks = header.key_sub_stream;
    let substream = ks >> 4;
    if ks & 0x0c != 0 || substream > 2 {
        return Err(IdeKmError::KeySubStream(ks));
    }
    Ok(SlotId {
        port_index: header.port_index,
        stream_id: header.stream_id,
        key_set: ks & 0x01 != 0,
        transmit: ks & 0x02 != 0,
        substream,
    })
}

#[derive(Debug)]
struct KeySlot {
    #[expect(
        dead_code,
        reason = "held as a device holds it; the emulation encrypts no link traffic"
    )]
    key: KeyMaterial,
    active: bool,
}

/// The device's IDE key slots and port information.
#[derive(Debug, Default)]
pub struct IdeKmDevice {
    slots: BTreeMap<SlotId, KeySlot>,
}

/// The IDE register block QUERY_RESP carries (PCIe 6.x §7.9.26): IDE Capability, IDE Control,
/// then one Selective IDE Stream block (capability with no address association blocks,
/// control, status, RID association 1 and 2). No link IDE streams.
const IDE_CAPABILITY: u32 = (1 << 1) // selective IDE streams supported
    | (1 << 6) // IDE_KM protocol supported
    | (((STREAM_COUNT - 1) as u32) << 16); // selective streams supported, 0-based
const IDE_REG_BLOCK: [u32; 7] = [IDE_CAPABILITY, 0, 0, 0, 0, 0xffff00, 0];

impl IdeKmDevice {
    /// A device with every key slot empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the key of `slot` is programmed and in use (after K_SET_GO).
    pub fn is_active(&self, slot: &SlotId) -> bool {
        self.slots.get(slot).is_some_and(|s| s.active)
    }

    /// How many slots hold a key.
    pub fn programmed(&self) -> usize {
        self.slots.len()
    }

    /// Answers one IDE_KM request object. `Err` means the request gets an SPDM ERROR (IDE_KM has
    /// no error object for it); KEY_PROG problems are reported in KP_ACK's status instead.
    pub fn handle(&mut self, request: &[u8]) -> Result<Vec<u8>, IdeKmError> {
        // A KEY_PROG of the wrong length still gets KP_ACK(INCORRECT_LENGTH) when its header is
        // readable, as the spec asks.
        if request.first() == Some(&ObjectId::KEY_PROG.0)
            && request.len() != KEY_PROG_SIZE
            && let Ok((header, _)) = StreamHeaderWire::read_from_prefix(request)
        {
            tracing::debug!(len = request.len(), "IDE_KM KEY_PROG of the wrong length");
            return Ok(kp_ack(header, KpAckStatus::INCORRECT_LENGTH));
        }
        match IdeKmRequest::parse(request)? {
            IdeKmRequest::Query { port_index } => {
                if port_index > MAX_PORT_INDEX {
                    return Err(IdeKmError::Port(port_index));
                }
                let head = QueryRespWire {
                    object_id: ObjectId::QUERY_RESP.0,
                    reserved: 0,
                    port_index,
                    dev_func_num: 0,
                    bus_num: 0,
                    segment: 0,
                    max_port_index: MAX_PORT_INDEX,
                };
                let mut out = head.as_bytes().to_vec();
                for reg in IDE_REG_BLOCK {
                    out.extend_from_slice(&reg.to_le_bytes());
                }
                Ok(out)
            }
            IdeKmRequest::KeyProg { header, key } => {
                let status = match validate_slot(&header) {
                    Err(IdeKmError::Port(_)) => KpAckStatus::UNSUPPORTED_PORT_INDEX,
                    Err(_) => KpAckStatus::UNSUPPORTED_VALUE,
                    // A key set in use is not overwritten: stop it first.
                    Ok(slot) if self.is_active(&slot) => KpAckStatus::UNSUPPORTED_VALUE,
                    Ok(slot) => {
                        self.slots.insert(slot, KeySlot { key, active: false });
                        KpAckStatus::SUCCESS
                    }
                };
                if status != KpAckStatus::SUCCESS {
                    tracing::debug!(?status, "IDE_KM KEY_PROG refused");
                }
                Ok(kp_ack(header, status))
            }
            IdeKmRequest::SetGo(header) => {
                let slot = validate_slot(&header)?;
                let entry = self.slots.get_mut(&slot).ok_or(IdeKmError::NoKey)?;
                entry.active = true;
                Ok(gostop_ack(header))
            }
            IdeKmRequest::SetStop(header) => {
                let slot = validate_slot(&header)?;
                // Stopping discards (and, by drop, zeroizes) the key; stopping an empty slot
                // is acknowledged so a retried teardown converges.
                self.slots.remove(&slot);
                Ok(gostop_ack(header))
            }
        }
    }
}

fn kp_ack(header: StreamHeaderWire, status: KpAckStatus) -> Vec<u8> {
    StreamHeaderWire {
        object_id: ObjectId::KP_ACK.0,
        reserved: [0; 2],
        status: status.0,
        ..header
    }
    .as_bytes()
    .to_vec()
}

fn gostop_ack(header: StreamHeaderWire) -> Vec<u8> {
    StreamHeaderWire {
        object_id: ObjectId::K_GOSTOP_ACK.0,
        reserved: [0; 2],
        status: 0,
        ..header
    }
    .as_bytes()
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_prog(stream: u8, ks: u8, port: u8) -> Vec<u8> {
        let mut v = vec![0x02, 0, 0, stream, 0, ks, port];
        v.extend((0..KEY_SIZE as u8).map(|i| i + 0x40));
        v.extend([0, 0, 0, 0, 1, 0, 0, 0]);
        v
    }

    #[test]
    fn query_answers_port_info_and_register_block() {
        let mut dev = IdeKmDevice::new();
        let resp = dev.handle(&[0x00, 0x00, 0x01]).unwrap();
        let golden: Vec<u8> = [
            &[0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01][..],
            &[0x42, 0x00, 0x07, 0x00], // capability: selective, IDE_KM, 8 streams
            &[0; 16],
            &[0x00, 0xff, 0xff, 0x00], // RID association 1: limit 0xffff
            &[0; 4],
        ]
        .concat();
        assert_eq!(resp, golden);
    }

    #[test]
    fn key_prog_go_stop_cycle_matches_golden_acks() {
        let mut dev = IdeKmDevice::new();
        // K0 | TX | NPR, stream 0, port 1.
        let ack = dev.handle(&key_prog(0, 0x12, 1)).unwrap();
        assert_eq!(ack, [0x03, 0, 0, 0, 0x00, 0x12, 1]);
        let ack = dev.handle(&[0x04, 0, 0, 0, 0, 0x12, 1]).unwrap();
        assert_eq!(ack, [0x06, 0, 0, 0, 0, 0x12, 1]);
        let slot = validate_slot(&StreamHeaderWire::read_from_bytes(&ack).unwrap()).unwrap();
        assert!(dev.is_active(&slot));
        let ack = dev.handle(&[0x05, 0, 0, 0, 0, 0x12, 1]).unwrap();
        assert_eq!(ack, [0x06, 0, 0, 0, 0, 0x12, 1]);
        assert!(!dev.is_active(&slot));
        assert_eq!(dev.programmed(), 0);
        // A retried teardown (the first ack lost) converges: the same ack, no slot.
        let ack = dev.handle(&[0x05, 0, 0, 0, 0, 0x12, 1]).unwrap();
        assert_eq!(ack, [0x06, 0, 0, 0, 0, 0x12, 1]);
        assert_eq!(dev.programmed(), 0);
    }

    proptest::proptest! {
        #[test]
        fn any_request_sequence_is_answered_or_refused_without_losing_keys(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..56),
                0..16,
            )
        ) {
            let mut dev = IdeKmDevice::new();
            dev.handle(&key_prog(3, 0x01, 0)).unwrap();
            for request in &requests {
                let before = dev.programmed();
                match dev.handle(request) {
                    Ok(response) => proptest::prop_assert!(response.len() >= 7),
                    Err(_) => proptest::prop_assert_eq!(dev.programmed(), before),
                }
            }
        }
    }

    #[test]
    fn key_prog_problems_are_reported_in_kp_ack_status() {
        let mut dev = IdeKmDevice::new();
        let mut short = key_prog(0, 0, 1);
        short.pop();
        assert_eq!(dev.handle(&short).unwrap(), [0x03, 0, 0, 0, 0x01, 0, 1]);
        assert_eq!(
            dev.handle(&key_prog(0, 0, 9)).unwrap(),
            [0x03, 0, 0, 0, 0x02, 0, 9]
        );
        assert_eq!(
            dev.handle(&key_prog(200, 0, 1)).unwrap(),
            [0x03, 0, 0, 200, 0x03, 0, 1]
        );
        assert_eq!(
            dev.handle(&key_prog(0, 0x30, 1)).unwrap(),
            [0x03, 0, 0, 0, 0x03, 0x30, 1]
        );
        assert_eq!(dev.programmed(), 0);
    }

    #[test]
    fn active_key_is_not_overwritten() {
        let mut dev = IdeKmDevice::new();
        dev.handle(&key_prog(1, 0, 0)).unwrap();
        dev.handle(&[0x04, 0, 0, 1, 0, 0, 0]).unwrap();
        assert_eq!(dev.handle(&key_prog(1, 0, 0)).unwrap()[4], 0x03);
    }

    #[test]
    fn hostile_requests_get_errors_and_keep_state() {
        let mut dev = IdeKmDevice::new();
        dev.handle(&key_prog(0, 0, 1)).unwrap();
        assert_eq!(dev.handle(&[]), Err(IdeKmError::Empty));
        assert_eq!(
            dev.handle(&[0x01, 0, 0]),
            Err(IdeKmError::UnsupportedObject(1))
        );
        assert_eq!(dev.handle(&[0x07]), Err(IdeKmError::UnsupportedObject(7)));
        assert!(matches!(
            dev.handle(&[0x00, 0]),
            Err(IdeKmError::Length { .. })
        ));
        assert_eq!(dev.handle(&[0x00, 0, 2]), Err(IdeKmError::Port(2)));
        assert_eq!(
            dev.handle(&[0x04, 0, 0, 8, 0, 0, 1]),
            Err(IdeKmError::Stream(8))
        );
        assert_eq!(
            dev.handle(&[0x04, 0, 0, 0, 0, 0x10, 1]),
            Err(IdeKmError::NoKey)
        );
        assert!(matches!(
            dev.handle(&[0x04, 0, 0, 0, 0, 0]),
            Err(IdeKmError::Length { .. })
        ));
        assert_eq!(dev.programmed(), 1);
        // The surviving key still goes.
        assert!(dev.handle(&[0x04, 0, 0, 0, 0, 0, 1]).is_ok());
    }

    #[test]
    fn key_material_debug_hides_bytes() {
        let IdeKmRequest::KeyProg { key, .. } = IdeKmRequest::parse(&key_prog(0, 0, 1)).unwrap()
        else {
            panic!("not KEY_PROG")
        };
        assert_eq!(format!("{key:?}"), "KeyMaterial(..)");
    }
}
