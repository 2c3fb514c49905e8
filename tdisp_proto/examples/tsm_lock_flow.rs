//! A TSM-side walk through locking a TDI and reading its interface report, with a tiny
//! in-process responder standing in for the device: every message is framed as it would be on
//! the wire (DOE object -> SPDM vendor-defined message -> TDISP), and the report is read in
//! portions. Then the same device is driven through the guest request packets.

#![forbid(unsafe_code)]

use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::framing::doe::DoeObject;
use tdisp_proto::framing::doe::DoeObjectType;
use tdisp_proto::framing::spdm;
use tdisp_proto::framing::spdm::Direction;
use tdisp_proto::pcie::DeviceInterfaceReport;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceFlags;
use tdisp_proto::pcie::LockInterfaceParams;
use tdisp_proto::pcie::MmioRange;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispErrorResponse;
use tdisp_proto::pcie::TdispMessage;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;
use tdisp_proto::pcie::report::InterfaceInfo;
use tdisp_proto::pcie::report::MmioRangeAttributes;
use tdisp_proto::pcie::report::ReportAssembler;
use tdisp_proto::pcie::report::report_portion;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::GuestReply;
use tdisp_proto::wire::ResponsePacket;

type Error = Box<dyn std::error::Error>;

/// The smallest device that answers LOCK, GET_DEVICE_INTERFACE_REPORT and STATE correctly.
struct ToyDevice {
    state: TdiState,
    report: Vec<u8>,
}

impl ToyDevice {
    fn answer(&mut self, request: TdispRequest) -> TdispResponse {
        match (request, self.state) {
            (TdispRequest::LockInterface(_), TdiState::ConfigUnlocked) => {
                self.state = TdiState::ConfigLocked;
                TdispResponse::LockInterface { nonce: [0x5a; 32] }
            }
            (TdispRequest::GetDeviceInterfaceReport { offset, length }, state)
                if state.report_readable() =>
            {
                // This device sends at most 48 bytes per response.
                match report_portion(&self.report, offset, length, 48) {
                    Ok((portion, remainder_length)) => TdispResponse::DeviceInterfaceReport {
                        remainder_length,
                        portion: portion.to_vec(),
                    },
                    Err(_) => TdispResponse::Error(TdispErrorResponse::new(
                        TdispErrorCode::INVALID_REQUEST,
                    )),
                }
            }
            (TdispRequest::GetDeviceInterfaceState, state) => {
                TdispResponse::DeviceInterfaceState { state }
            }
            _ => TdispResponse::Error(TdispErrorResponse::new(
                TdispErrorCode::INVALID_INTERFACE_STATE,
            )),
        }
    }

    /// Unframes a DOE object carrying a TDISP request and frames the answer the same way.
    fn exchange(&mut self, doe_request: &[u8]) -> Result<Vec<u8>, Error> {
        let object = DoeObject::decode(doe_request)?;
        let message = spdm::strip_doe_padding(object.payload)?;
        let (version, request) = spdm::decode_tdisp::<TdispRequest>(message, Direction::Request)?;
        let response = TdispMessage::new(request.interface_id, self.answer(request.body));
        let mut spdm_bytes = Vec::new();
        spdm::encode_tdisp(version, Direction::Response, &response, &mut spdm_bytes)?;
        let mut out = Vec::new();
        DoeObject::new(DoeObjectType::SPDM, &spdm_bytes).encode(&mut out);
        Ok(out)
    }
}

/// The TSM side of one request/response exchange.
fn call(
    device: &mut ToyDevice,
    tdi: InterfaceId,
    request: TdispRequest,
) -> Result<TdispResponse, Error> {
    let mut spdm_bytes = Vec::new();
    spdm::encode_tdisp(
        spdm::SPDM_VERSION_1_2,
        Direction::Request,
        &TdispMessage::new(tdi, request),
        &mut spdm_bytes,
    )?;
    let mut doe = Vec::new();
    DoeObject::new(DoeObjectType::SPDM, &spdm_bytes).encode(&mut doe);
    let answer = device.exchange(&doe)?;
    let object = DoeObject::decode(&answer)?;
    // DOE pads to a dword; the SPDM length field says where the message ends.
    let message = spdm::strip_doe_padding(object.payload)?;
    let (_, response) = spdm::decode_tdisp::<TdispResponse>(message, Direction::Response)?;
    assert_eq!(response.interface_id, tdi);
    Ok(response.body)
}

fn main() -> Result<(), Error> {
    let report = DeviceInterfaceReport {
        interface_info: InterfaceInfo::new()
            .with_no_fw_update(true)
            .with_dma_without_pasid(true),
        msi_x_message_control: 0,
        lnr_control: 0,
        tph_control: 0,
        mmio_ranges: (0..6u16)
            .map(|i| MmioRange {
                first_page: 0xfe00_0000 + u64::from(i) * 0x1000,
                number_of_pages: 1,
                attributes: MmioRangeAttributes::new(),
                range_id: i,
            })
            .collect(),
        device_specific_info: b"toy".to_vec(),
    };
    let mut device = ToyDevice {
        state: TdiState::ConfigUnlocked,
        report: report.to_bytes(),
    };
    let tdi = InterfaceId::from_requester_id(0x0300);

    // Reading the report before locking is refused with INVALID_INTERFACE_STATE.
    let early = call(
        &mut device,
        tdi,
        TdispRequest::GetDeviceInterfaceReport {
            offset: 0,
            length: 64,
        },
    )?;
    assert!(
        matches!(early, TdispResponse::Error(e) if e.code == TdispErrorCode::INVALID_INTERFACE_STATE)
    );

    let lock = LockInterfaceParams {
        flags: LockInterfaceFlags::new().with_no_fw_update(true),
        ..Default::default()
    };
    let locked = call(&mut device, tdi, TdispRequest::LockInterface(lock))?;
    assert!(matches!(locked, TdispResponse::LockInterface { .. }));
    let state = call(&mut device, tdi, TdispRequest::GetDeviceInterfaceState)?;
    assert_eq!(
        state,
        TdispResponse::DeviceInterfaceState {
            state: TdiState::ConfigLocked
        }
    );

    // Read the report in portions.
    let mut assembler = ReportAssembler::new();
    let mut exchanges = 0;
    while let Some(offset) = assembler.next_offset() {
        let TdispResponse::DeviceInterfaceReport {
            remainder_length,
            portion,
        } = call(
            &mut device,
            tdi,
            TdispRequest::GetDeviceInterfaceReport {
                offset,
                length: 0x400,
            },
        )?
        else {
            return Err("device refused the report".into());
        };
        assembler.push(&portion, remainder_length)?;
        exchanges += 1;
    }
    let bytes = assembler.finish().ok_or("report incomplete")?;
    let read_back = DeviceInterfaceReport::decode(&bytes)?;
    assert_eq!(read_back, report);
    println!(
        "read a {}-byte report with {} MMIO ranges in {exchanges} portions",
        bytes.len(),
        read_back.mmio_ranges.len()
    );

    // The guest side of the same device: a tdisp.proto command and the host's response.
    let command = CommandPacket {
        device_id: 1,
        command: GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport),
    };
    let received = CommandPacket::decode(&command.encode())?;
    let reply = ResponsePacket {
        state_before: TdispTdiState::Locked,
        state_after: TdispTdiState::Locked,
        result: Ok(GuestReply::GetAttestationReport {
            report_type: TdispReportType::InterfaceReport,
            report: bytes.clone(),
        }),
    };
    let at_guest = ResponsePacket::decode(&reply.encode()?)?;
    at_guest.check_answers(&received.command)?;
    assert_eq!(at_guest, reply);
    let negotiate = CommandPacket {
        device_id: 1,
        command: GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
    };
    assert_eq!(CommandPacket::decode(&negotiate.encode())?, negotiate);
    println!("guest<->host messages round-tripped");
    Ok(())
}
