//! The lock -> report -> verify -> start flow against a host serving a real interface report.

use tdisp_guest::FlowError;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::PolicyViolation;
use tdisp_guest::accept_device;
use tdisp_proto::TdispDeviceInterfaceInfo;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::pcie::report::DeviceInterfaceReport;
use tdisp_proto::pcie::report::InterfaceInfo;
use tdisp_proto::pcie::report::MmioRange;
use tdisp_proto::pcie::report::MmioRangeAttributes;
use tdisp_proto::testing::reference::ReferenceModel;

/// The reference state rules, serving `report` as its interface report.
struct Device {
    model: ReferenceModel,
    report: Vec<u8>,
    tdisp_capable: bool,
}

impl Device {
    fn serving(report: Vec<u8>) -> Self {
        Self {
            model: ReferenceModel::default(),
            report,
            tdisp_capable: true,
        }
    }
}

impl TdispGuestRequestInterface for Device {
    fn tdisp_negotiate_protocol(
        &mut self,
        requested: TdispGuestProtocolType,
    ) -> Result<TdispDeviceInterfaceInfo, TdispGuestOperationError> {
        let mut info = self.model.tdisp_negotiate_protocol(requested)?;
        if !self.tdisp_capable {
            info.guest_protocol_type = TdispGuestProtocolType::Invalid;
        }
        Ok(info)
    }
    fn request_lock_device_resources(&mut self) -> Result<(), TdispGuestOperationError> {
        self.model.request_lock_device_resources()
    }
    fn request_start_tdi(&mut self) -> Result<(), TdispGuestOperationError> {
        self.model.request_start_tdi()
    }
    fn request_attestation_report(
        &mut self,
        report_type: TdispReportType,
    ) -> Result<Vec<u8>, TdispGuestOperationError> {
        self.model.request_attestation_report(report_type)?;
        Ok(self.report.clone())
    }
    fn request_unbind(
        &mut self,
        reason: TdispGuestUnbindReason,
    ) -> Result<(), TdispGuestOperationError> {
        self.model.request_unbind(reason)
    }
}

fn range(first_page: u64, pages: u32, range_id: u16) -> MmioRange {
    MmioRange {
        first_page,
        number_of_pages: pages,
        attributes: MmioRangeAttributes::new(),
        range_id,
    }
}

fn report(ranges: Vec<MmioRange>) -> DeviceInterfaceReport {
    DeviceInterfaceReport {
        interface_info: InterfaceInfo::new()
            .with_no_fw_update(true)
            .with_dma_without_pasid(true),
        msi_x_message_control: 0,
        lnr_control: 0,
        tph_control: 0,
        mmio_ranges: ranges,
        device_specific_info: vec![0xde, 0xad],
    }
}

fn assigned() -> Vec<MmioRange> {
    vec![range(0xfe00_0000, 4, 0), range(0xfe10_0000, 1, 2)]
}

fn strict_policy() -> InterfacePolicy {
    InterfacePolicy {
        require_no_fw_update: true,
        expected_ranges: assigned(),
        allow_non_tee_ranges: false,
        expected_device_specific_info: Some(vec![0xde, 0xad]),
    }
}

#[test]
fn matching_report_is_accepted_and_device_runs() {
    let bytes = report(assigned()).to_bytes();
    let mut device = Device::serving(bytes.clone());
    let accepted = accept_device(
        &mut device,
        TdispGuestProtocolType::AmdSevTioV1,
        &strict_policy(),
    )
    .unwrap();
    assert_eq!(accepted.report_bytes, bytes);
    assert_eq!(accepted.report.mmio_ranges, assigned());
    assert_eq!(device.model.state, TdispTdiState::Run);
}

#[test]
fn moved_range_is_refused_and_device_unbound() {
    let mut moved = assigned();
    moved[1].first_page += 0x1000;
    let mut device = Device::serving(report(moved).to_bytes());
    let err = accept_device(
        &mut device,
        TdispGuestProtocolType::AmdSevTioV1,
        &strict_policy(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        FlowError::Policy(PolicyViolation::RangeMismatch { index: 1, .. })
    ));
    assert_eq!(device.model.state, TdispTdiState::Unlocked);
}

#[test]
fn firmware_updatable_device_is_refused_when_policy_requires_lockout() {
    let mut r = report(assigned());
    r.interface_info.set_no_fw_update(false);
    let mut device = Device::serving(r.to_bytes());
    let err = accept_device(
        &mut device,
        TdispGuestProtocolType::AmdSevTioV1,
        &strict_policy(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        FlowError::Policy(PolicyViolation::FirmwareUpdatesAllowed)
    );
    assert_eq!(device.model.state, TdispTdiState::Unlocked);
}

#[test]
fn malformed_report_is_refused_and_device_unbound() {
    let mut bytes = report(assigned()).to_bytes();
    bytes.pop();
    let mut device = Device::serving(bytes);
    let err = accept_device(
        &mut device,
        TdispGuestProtocolType::AmdSevTioV1,
        &InterfacePolicy::default(),
    )
    .unwrap_err();
    assert!(matches!(err, FlowError::ReportDecode(_)));
    assert_eq!(device.model.state, TdispTdiState::Unlocked);
}

#[test]
fn device_without_tdisp_is_not_locked() {
    let mut device = Device::serving(report(assigned()).to_bytes());
    device.tdisp_capable = false;
    let err = accept_device(
        &mut device,
        TdispGuestProtocolType::AmdSevTioV1,
        &InterfacePolicy::default(),
    )
    .unwrap_err();
    assert_eq!(err, FlowError::NotTdispCapable);
    assert_eq!(device.model.state, TdispTdiState::Unlocked);
}

#[test]
fn lock_refusal_stops_the_flow() {
    let mut device = Device::serving(report(assigned()).to_bytes());
    device
        .model
        .tdisp_negotiate_protocol(TdispGuestProtocolType::AmdSevTioV1)
        .unwrap();
    device.model.request_lock_device_resources().unwrap();
    // Already locked: the flow's lock is a wrong-state request, which unbinds.
    let err = accept_device(
        &mut device,
        TdispGuestProtocolType::AmdSevTioV1,
        &InterfacePolicy::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        FlowError::Lock(TdispGuestOperationError::InvalidDeviceState)
    );
}
