//! Raw VMBus packet payloads into the host's TDISP VMBus device (the bytes a guest puts in the
//! ring, padding included), mixed with well-formed framed commands (some naming another
//! device) and host configuration changes. Nothing may panic; every payload gets one framed
//! response that decodes; the response's states are the machine's (the host's Error sent as
//! UNINITIALIZED); a command for another device changes nothing. Behind the machine, the TSM
//! reaches the emulated device over the plain channel (see `host.rs` for why).

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
use prost::Message;
use std::sync::Arc;
use std::sync::Mutex;
use tdisp_host::backend::TsmBackend;
use tdisp_host::dsm::DsmConfig;
use tdisp_host::dsm::EmulatedDsm;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_host::state_machine::TdiStateMachine;
use tdisp_host::vmbus::TdispVmbusDevice;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::ResponsePacket;
use tdisp_proto::wire::frame;
use tdisp_proto::wire::proto;
use tdisp_proto::wire::state_to_wire;
use tdisp_proto::wire::unframe;

const RID: u16 = 0x0901;
const ADDR: u32 = 0x0900;
const DEVICE: u64 = 4;

#[derive(Debug, Arbitrary)]
enum Op {
    /// A raw ring payload.
    Raw(Vec<u8>),
    /// A frame around raw bytes.
    Framed(Vec<u8>),
    /// A protobuf command with fuzzed fields (variant, enum value, device id, unknown field).
    Proto {
        variant: u8,
        value: i32,
        other_device: bool,
        unknown: Option<u8>,
        padding: u8,
    },
    /// A well-formed command.
    Command { kind: u8, argument: u8 },
    /// A host configuration change.
    Change { kind: u8, value: u32 },
}

fn proto_command(variant: u8, value: i32, device_id: u64, unknown: Option<u8>) -> Vec<u8> {
    use proto::guest_to_host_command::Command;
    let command = match variant % 6 {
        0 => Some(Command::GetDeviceInterfaceInfo(
            proto::TdispCommandRequestGetDeviceInterfaceInfo {
                guest_protocol_type: value,
            },
        )),
        1 => Some(Command::Bind(proto::TdispCommandRequestBind {})),
        2 => Some(Command::GetTdiReport(
            proto::TdispCommandRequestGetTdiReport {
                report_type: value,
                nonce: Vec::new(),
            },
        )),
        3 => Some(Command::StartTdi(proto::TdispCommandRequestStartTdi {})),
        4 => Some(Command::Unbind(proto::TdispCommandRequestUnbind {
            unbind_reason: value,
        })),
        _ => None,
    };
    let mut bytes = proto::GuestToHostCommand { device_id, command }.encode_to_vec();
    if let Some(extra) = unknown {
        bytes.extend_from_slice(&[0x78, extra & 0x7f]);
    }
    bytes
}

fuzz_target!(|ops: Vec<Op>| {
    let dsm = Arc::new(Mutex::new(
        EmulatedDsm::new(DsmConfig::single_function(RID)).unwrap(),
    ));
    let lock = EmulatedAssignment::default_lock();
    let tsm = host::bound_tsm(ADDR, RID, DEVICE, lock, Box::new(dsm.clone()));
    let machine = TdiStateMachine::new(MachineConfig::new(DEVICE), TsmBackend::new(tsm, ADDR));
    let mut device = TdispVmbusDevice::new(DEVICE, Box::new(machine));
    let host = device.shared();
    let host_state = || host.lock().unwrap().tdi_state();
    for op in ops.into_iter().take(64) {
        let before = host_state();
        let (payload, foreign) = match op {
            Op::Raw(bytes) => (bytes, false),
            Op::Framed(bytes) => (frame(&bytes).unwrap_or_default(), false),
            Op::Proto {
                variant,
                value,
                other_device,
                unknown,
                padding,
            } => {
                let device_id = if other_device { DEVICE + 1 } else { DEVICE };
                let mut payload =
                    frame(&proto_command(variant, value, device_id, unknown)).unwrap();
                payload.resize(payload.len() + usize::from(padding % 8), 0);
                (payload, other_device)
            }
            Op::Command { kind, argument } => {
                let packet = CommandPacket {
                    device_id: DEVICE,
                    command: command(kind, argument),
                };
                (frame(&packet.encode()).unwrap(), false)
            }
            Op::Change { kind, value } => {
                let _ = dsm
                    .lock()
                    .unwrap()
                    .apply_config_change(change(RID, 3, kind, value));
                continue;
            }
        };
        let reply = device.handle_payload(&payload);
        let message = unframe(&reply).expect("every response is framed");
        let response = ResponsePacket::decode(message).expect("every response decodes");
        let after = host_state();
        assert_eq!(state_to_wire(response.state_before), state_to_wire(before));
        assert_eq!(state_to_wire(response.state_after), state_to_wire(after));
        if foreign {
            assert!(response.result.is_err());
            assert_eq!(
                after, before,
                "a command for another device changed this one"
            );
        }
    }
});
