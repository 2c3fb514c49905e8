//! A guest accepts a device: negotiate -> lock -> report -> verify -> start, with every call
//! carried as a real command packet to a host and every reply checked.
//!
//! The host here is the protocol's reference state model behind the packet codec, serving a
//! four-range interface report; `tdisp_host` provides the full host (state machine, TSM, DSM).

use tdisp_guest::GuestTransport;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::TdispGuestClient;
use tdisp_guest::TransportError;
use tdisp_guest::accept_device;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::guest_packet::GuestCommand;
use tdisp_proto::guest_packet::GuestCommandPacket;
use tdisp_proto::guest_packet::GuestReply;
use tdisp_proto::guest_packet::GuestReplyPacket;
use tdisp_proto::pcie::report::DeviceInterfaceReport;
use tdisp_proto::pcie::report::InterfaceInfo;
use tdisp_proto::pcie::report::MmioRange;
use tdisp_proto::pcie::report::MmioRangeAttributes;
use tdisp_proto::testing::reference::ReferenceModel;

/// The host side: decode, run on the model, answer. A report request is answered with `report`.
struct Host {
    model: ReferenceModel,
    report: Vec<u8>,
}

impl GuestTransport for Host {
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        let packet = GuestCommandPacket::decode(command)
            .map_err(|e| TransportError::Failed(e.to_string()))?;
        let before = self.model.state;
        let result =
            packet
                .command
                .dispatch(&mut self.model)
                .map(|reply| match (packet.command, reply) {
                    (
                        GuestCommand::GetAttestationReport(_),
                        GuestReply::GetAttestationReport(_),
                    ) => GuestReply::GetAttestationReport(self.report.clone()),
                    (_, reply) => reply,
                });
        GuestReplyPacket::answer(&packet, before, self.model.state, result)
            .to_bytes()
            .map_err(|e| TransportError::Failed(e.to_string()))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bars: Vec<MmioRange> = [
        (0xfe00_0000, 16, 0, false),
        (0xfe01_0000, 1, 0, true),
        (0xfe02_0000, 1, 0, true),
        (0xfe10_0000, 4, 2, false),
    ]
    .into_iter()
    .map(|(first_page, pages, bar, msix)| MmioRange {
        first_page,
        number_of_pages: pages,
        attributes: MmioRangeAttributes::new().with_msix_table(msix),
        range_id: bar,
    })
    .collect();
    let report = DeviceInterfaceReport {
        interface_info: InterfaceInfo::new()
            .with_no_fw_update(true)
            .with_dma_without_pasid(true),
        mmio_ranges: bars.clone(),
        ..Default::default()
    };
    let host = Host {
        model: ReferenceModel::default(),
        report: report.to_bytes(),
    };
    let mut client = TdispGuestClient::new(host, 1);
    let policy = InterfacePolicy {
        require_no_fw_update: true,
        expected_ranges: bars,
        ..Default::default()
    };
    let accepted = accept_device(&mut client, TdispGuestProtocolType::AmdSevTioV1, &policy)?;
    assert_eq!(client.state(), TdispTdiState::Run);
    assert_eq!(accepted.report, report);
    println!(
        "device {} running: {} MMIO ranges verified, report {} bytes",
        accepted.info.tdisp_device_id,
        accepted.report.mmio_ranges.len(),
        accepted.report_bytes.len()
    );
    Ok(())
}
