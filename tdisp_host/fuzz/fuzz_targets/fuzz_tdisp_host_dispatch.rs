//! The whole host stack under attack from both ends: arbitrary guest packets (raw and well
//! formed) into the dispatcher, arbitrary DOE objects answered to the TSM in place of the
//! device's, arbitrary DOE objects into the device, and host configuration changes. Nothing may
//! panic; every guest packet gets a reply that decodes, and a well-formed command's reply
//! answers it with the machine's real state.

#![forbid(unsafe_code)]
#![no_main]

#[path = "commands.rs"]
mod commands;
#[path = "host.rs"]
mod host;

use arbitrary::Arbitrary;
use commands::change;
use commands::command;
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use tdisp_host::backend::TsmBackend;
use tdisp_host::dispatch::HostDispatcher;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::state_machine::TdiStateMachine;
use tdisp_host::tsm::DoeMailbox;
use tdisp_host::tsm::MailboxError;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::framing::spdm::PciProtocolId;
use tdisp_proto::framing::spdm::SpdmVendorMessage;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispErrorResponse;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::ResponsePacket;
use tdisp_proto::wire::state_to_wire;

const RID: u16 = 0x0701;
const ADDR: u32 = 0x0700;
const DEVICE: u64 = 1;

/// The device's mailbox with a hostile tap: queued answers replace the device's.
struct Tap {
    dsm: Arc<Mutex<EmulatedDsm>>,
    injected: Arc<Mutex<VecDeque<Vec<u8>>>>,
}

impl DoeMailbox for Tap {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
        let honest = self.dsm.lock().unwrap().exchange(request);
        match self.injected.lock().unwrap().pop_front() {
            Some(forged) => Ok(forged),
            None => honest,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Raw bytes to the dispatcher.
    Packet(Vec<u8>),
    /// A well-formed command (kind and argument chosen by the fuzzer).
    Command { kind: u8, argument: u8 },
    /// Raw bytes to the device's mailbox, as a hostile host would send them.
    DeviceObject(Vec<u8>),
    /// The next DOE answer the TSM receives is these bytes.
    ForgeObject(Vec<u8>),
    /// The next DOE answer is a well-framed SPDM vendor message around these TDISP bytes.
    ForgeTdisp(Vec<u8>),
    /// The next DOE answer is a TDISP_ERROR with this code.
    ForgeError(u32),
    /// A host configuration change.
    Change { kind: u8, value: u32 },
}

fn doe(object_type: DoeObjectType, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    DoeObject::new(object_type, payload).encode(&mut out);
    out
}

fn spdm_around(tdisp: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let payload = tdisp.get(..60_000).unwrap_or(tdisp);
    SpdmVendorMessage {
        spdm_version: 0x12,
        direction: Direction::Response,
        protocol_id: PciProtocolId::TDISP,
        payload,
    }
    .encode(&mut out)
    .unwrap();
    doe(DoeObjectType::SPDM, &out)
}

fuzz_target!(|ops: Vec<Op>| {
    let dsm = Arc::new(Mutex::new(
        EmulatedDsm::new(DsmConfig::single_function(RID)).unwrap(),
    ));
    let injected = Arc::new(Mutex::new(VecDeque::new()));
    let lock = LockInterfaceParams {
        flags: LockInterfaceFlags::new()
            .with_no_fw_update(true)
            .with_lock_msix(true),
        ..Default::default()
    };
    let tap = Tap {
        dsm: dsm.clone(),
        injected: injected.clone(),
    };
    let tsm = host::bound_tsm(ADDR, RID, DEVICE, lock, Box::new(tap));
    let machine = TdiStateMachine::new(
        MachineConfig::new(DEVICE),
        TsmBackend::new(tsm.clone(), ADDR),
    );
    let mut dispatcher = HostDispatcher::new();
    dispatcher.insert(DEVICE, Box::new(machine));

    for op in ops.into_iter().take(64) {
        match op {
            Op::Packet(bytes) => {
                ResponsePacket::decode(&dispatcher.handle(&bytes)).unwrap();
            }
            Op::Command { kind, argument } => {
                let packet = CommandPacket {
                    device_id: DEVICE,
                    command: command(kind, argument),
                };
                let reply = ResponsePacket::decode(&dispatcher.handle(&packet.encode())).unwrap();
                reply.check_answers(&packet.command).unwrap();
                // The wire has no Error value: the host sends its Error as Uninitialized.
                let host = dispatcher.tdi_state(DEVICE).map(state_to_wire);
                assert_eq!(Some(state_to_wire(reply.state_after)), host);
            }
            Op::DeviceObject(bytes) => {
                let _ = dsm.lock().unwrap().exchange(&bytes);
            }
            Op::ForgeObject(bytes) => injected.lock().unwrap().push_back(bytes),
            Op::ForgeTdisp(bytes) => injected.lock().unwrap().push_back(spdm_around(&bytes)),
            Op::ForgeError(code) => {
                let mut tdisp = Vec::new();
                TdispResponse::Error(TdispErrorResponse::new(TdispErrorCode(code)))
                    .encode(InterfaceId::from_requester_id(RID), &mut tdisp);
                injected.lock().unwrap().push_back(spdm_around(&tdisp));
            }
            Op::Change { kind, value } => {
                let _ = dsm
                    .lock()
                    .unwrap()
                    .apply_config_change(change(RID, 7, kind, value));
            }
        }
    }
});
