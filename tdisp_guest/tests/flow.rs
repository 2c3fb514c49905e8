//! The lock -> report -> verify -> start flow against a host serving a real interface report.

#![forbid(unsafe_code)]

use tdisp_guest::AssignedBar;
use tdisp_guest::BindingPolicy;
use tdisp_guest::FlowError;
use tdisp_guest::InterfacePolicy;
use tdisp_guest::PolicyCheck;
use tdisp_guest::PolicyViolation;
use tdisp_guest::accept_device;
use tdisp_host::emulated::EmulatedAssignment;
use tdisp_host::state_machine::MachineConfig;
use tdisp_proto::TdispDeviceInterfaceInfo;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestRequestInterface;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::pcie::LockInterfaceFlags;
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
    unbinds: Vec<TdispGuestUnbindReason>,
}

impl Device {
    fn serving(report: Vec<u8>) -> Self {
        Self {
            model: ReferenceModel::default(),
            report,
            tdisp_capable: true,
            unbinds: Vec::new(),
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
        self.unbinds.push(reason);
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

fn bars() -> Vec<AssignedBar> {
    vec![
        AssignedBar {
            index: 0,
            address: 0xfe00_0000,
            size: 0x4000,
            non_tee_expected: false,
        },
        AssignedBar {
            index: 2,
            address: 0xfe10_0000,
            size: 0x1000,
            non_tee_expected: false,
        },
    ]
}

fn strict_policy() -> InterfacePolicy {
    InterfacePolicy {
        require_no_fw_update: true,
        assigned_bars: Some(bars()),
        lock_flags: Some(LockInterfaceFlags::new().with_no_fw_update(true)),
        expected_ranges: assigned(),
        allow_non_tee_ranges: false,
        expected_device_specific_info: Some(vec![0xde, 0xad]),
        binding: Default::default(),
    }
}

/// The strict policy without the exact range list, so each check can fail on its own.
fn structural_policy() -> InterfacePolicy {
    InterfacePolicy {
        expected_ranges: Vec::new(),
        ..strict_policy()
    }
}

#[test]
fn each_refusal_names_its_check_and_unbinds_gracefully() {
    type Mutation = fn(&mut DeviceInterfaceReport);
    let cases: [(&str, Mutation, PolicyCheck); 10] = [
        (
            "firmware updatable",
            |r| r.interface_info.set_no_fw_update(false),
            PolicyCheck::FirmwareLock,
        ),
        (
            "unaligned",
            |r| r.mmio_ranges[0].first_page += 0x10,
            PolicyCheck::RangeShape,
        ),
        (
            "overlap",
            |r| r.mmio_ranges.push(range(0xfe00_3000, 1, 0)),
            PolicyCheck::Overlap,
        ),
        (
            "BAR not given",
            |r| r.mmio_ranges[1].range_id = 4,
            PolicyCheck::BarMembership,
        ),
        (
            "range past its BAR",
            |r| r.mmio_ranges[1].number_of_pages = 2,
            PolicyCheck::BarMembership,
        ),
        (
            "extra range in another BAR",
            |r| r.mmio_ranges.push(range(0xfd00_0000, 1, 5)),
            PolicyCheck::BarMembership,
        ),
        (
            "MSI-X table without LOCK_MSIX",
            |r| {
                r.mmio_ranges[0].attributes = MmioRangeAttributes::new().with_msix_table(true);
            },
            PolicyCheck::Msix,
        ),
        (
            "MSI-X control without LOCK_MSIX",
            |r| r.msi_x_message_control = 0x8000,
            PolicyCheck::Msix,
        ),
        (
            "non-TEE range not expected",
            |r| {
                r.mmio_ranges[1].attributes = MmioRangeAttributes::new().with_non_tee_memory(true);
            },
            PolicyCheck::NonTee,
        ),
        (
            "other device",
            |r| r.device_specific_info = vec![0xbe, 0xef],
            PolicyCheck::DeviceSpecificInfo,
        ),
    ];
    for (name, mutate, check) in cases {
        let mut r = report(assigned());
        mutate(&mut r);
        let mut device = Device::serving(r.to_bytes());
        let err = accept_device(
            &mut device,
            TdispGuestProtocolType::AmdSevTioV1,
            &structural_policy(),
        )
        .unwrap_err();
        let FlowError::Policy(violation) = err else {
            panic!("{name}: not a policy refusal: {err:?}");
        };
        assert_eq!(violation.check(), check, "{name}: {violation}");
        assert_eq!(device.unbinds, [TdispGuestUnbindReason::Graceful], "{name}");
        assert_eq!(device.model.state, TdispTdiState::Unlocked, "{name}");
    }
}

#[test]
fn non_tee_range_in_a_bar_that_expects_it_is_accepted() {
    let mut r = report(assigned());
    r.mmio_ranges[1].attributes = MmioRangeAttributes::new().with_non_tee_memory(true);
    let mut policy = structural_policy();
    if let Some(bars) = &mut policy.assigned_bars {
        bars[1].non_tee_expected = true;
    }
    let mut device = Device::serving(r.to_bytes());
    accept_device(&mut device, TdispGuestProtocolType::AmdSevTioV1, &policy).unwrap();
    assert_eq!(device.model.state, TdispTdiState::Run);
}

/// The flow runs directly against the host state machine (no transport at all), with a policy
/// built from what the host assigned: the emulated device passes every check.
#[test]
fn strict_policy_accepts_the_emulated_host_device_and_refuses_unrequested_msix() {
    let assignment = EmulatedAssignment::single(0x0900, 0x0901, 3).unwrap();
    let function = {
        let dsm = assignment.dsm().lock().unwrap();
        dsm.config().function(0x0901).unwrap().clone()
    };
    let bars: Vec<_> = function
        .bars
        .iter()
        .map(|b| AssignedBar {
            index: b.index.into(),
            address: b.address,
            size: b.size,
            non_tee_expected: b.non_tee,
        })
        .collect();
    let mut policy = InterfacePolicy {
        assigned_bars: Some(bars),
        lock_flags: Some(EmulatedAssignment::default_lock().flags),
        expected_device_specific_info: Some(function.device_specific_info.clone()),
        binding: BindingPolicy::require(vec![assignment.root_der().to_vec()]),
        ..Default::default()
    };
    let mut machine = assignment.machine(MachineConfig::new(3));
    let accepted =
        accept_device(&mut machine, TdispGuestProtocolType::AmdSevTioV1, &policy).unwrap();
    assert!(
        accepted
            .report
            .mmio_ranges
            .iter()
            .any(|r| r.attributes.msix_table())
    );
    assert_eq!(machine.state(), TdispTdiState::Run);
    machine
        .request_unbind(TdispGuestUnbindReason::Graceful)
        .unwrap();

    // A guest that did not ask for LOCK_MSIX refuses a report carrying MSI-X ranges.
    policy.lock_flags = Some(LockInterfaceFlags::new());
    let err =
        accept_device(&mut machine, TdispGuestProtocolType::AmdSevTioV1, &policy).unwrap_err();
    assert!(
        matches!(err, FlowError::Policy(ref v) if v.check() == PolicyCheck::Msix),
        "{err:?}"
    );
    assert_eq!(machine.state(), TdispTdiState::Unlocked);
    let dsm = assignment.dsm().lock().unwrap();
    assert_eq!(
        dsm.tdi_state(0x0901),
        Some(tdisp_proto::pcie::TdiState::ConfigUnlocked)
    );
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
    assert!(device.unbinds.is_empty());
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
    assert_eq!(
        err,
        FlowError::Policy(PolicyViolation::OutsideBar {
            index: 1,
            range_id: 2
        })
    );
    assert_eq!(device.model.state, TdispTdiState::Unlocked);
}

#[test]
fn range_inside_its_bar_but_not_as_assigned_is_refused() {
    let mut shrunk = assigned();
    shrunk[0].number_of_pages = 3;
    let mut device = Device::serving(report(shrunk).to_bytes());
    let err = accept_device(
        &mut device,
        TdispGuestProtocolType::AmdSevTioV1,
        &strict_policy(),
    )
    .unwrap_err();
    assert!(matches!(
        err,
        FlowError::Policy(PolicyViolation::RangeMismatch { index: 0, .. })
    ));
    assert_eq!(device.unbinds, [TdispGuestUnbindReason::Graceful]);
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
fn lock_refusal_stops_the_flow_and_unbinds_gracefully() {
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
    // A failed lock may have left the device locked (a lost answer): the flow unbinds.
    assert_eq!(device.unbinds, [TdispGuestUnbindReason::Graceful]);
    assert_eq!(device.model.state, TdispTdiState::Unlocked);
}
