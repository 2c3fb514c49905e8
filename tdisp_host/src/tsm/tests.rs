//! Unit tests of the TSM: probe filtering, connect/bind life cycle, scopes, the one outstanding
//! command, request + exec, and hostile device answers.

use super::*;
use crate::dsm::DsmConfig;
use crate::dsm::EmulatedDsm;
use std::sync::Arc;
use std::sync::Mutex;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdiState;
use tdisp_proto::pcie::TdispErrorCode;
use tdisp_proto::pcie::TdispRequest;
use tdisp_proto::pcie::TdispResponse;

const ADDR: PciAddress = 0x0100;
const RID: u16 = 0x0101;
const GUEST: u64 = 7;

fn tdi() -> InterfaceId {
    InterfaceId::from_requester_id(RID)
}

fn shared_dsm(config: DsmConfig) -> Arc<Mutex<EmulatedDsm>> {
    Arc::new(Mutex::new(EmulatedDsm::new(config).unwrap()))
}

fn tsm_with(mailbox: Box<dyn DoeMailbox>) -> Tsm {
    let mut tsm = Tsm::new();
    assert_eq!(
        tsm.probe(
            PciDeviceInfo::tee_io(ADDR),
            mailbox,
            Box::new(PlainChannel::insecure_opt_in())
        ),
        ProbeOutcome::Handled
    );
    tsm
}

fn bound_tsm() -> (Tsm, Arc<Mutex<EmulatedDsm>>) {
    let dsm = shared_dsm(DsmConfig::single_function(RID));
    let mut tsm = tsm_with(Box::new(dsm.clone()));
    tsm.connect(ADDR).unwrap();
    tsm.bind(ADDR, BindParams::new(tdi(), GUEST)).unwrap();
    (tsm, dsm)
}

fn dsm_state(dsm: &Arc<Mutex<EmulatedDsm>>) -> Option<TdiState> {
    dsm.lock().unwrap().tdi_state(RID)
}

mod lifecycle {
    use super::*;

    #[test]
    fn probe_declines_devices_without_doe_or_tee_io_and_duplicates() {
        let mut tsm = Tsm::new();
        let dsm = || Box::new(shared_dsm(DsmConfig::single_function(RID)));
        let channel = || Box::new(PlainChannel::insecure_opt_in());
        let no_doe = PciDeviceInfo {
            has_doe: false,
            ..PciDeviceInfo::tee_io(1)
        };
        let no_tee = PciDeviceInfo {
            tee_io: false,
            ..PciDeviceInfo::tee_io(2)
        };
        assert!(matches!(
            tsm.probe(no_doe, dsm(), channel()),
            ProbeOutcome::Declined(_)
        ));
        assert!(matches!(
            tsm.probe(no_tee, dsm(), channel()),
            ProbeOutcome::Declined(_)
        ));
        assert_eq!(tsm.device_state(1), None);
        assert_eq!(
            tsm.probe(PciDeviceInfo::tee_io(3), dsm(), channel()),
            ProbeOutcome::Handled
        );
        assert!(matches!(
            tsm.probe(PciDeviceInfo::tee_io(3), dsm(), channel()),
            ProbeOutcome::Declined(_)
        ));
        assert_eq!(tsm.device_state(3), Some(TsmDeviceState::Init));
    }

    #[test]
    fn bind_needs_a_connection_and_connect_happens_once() {
        let dsm = shared_dsm(DsmConfig::single_function(RID));
        let mut tsm = tsm_with(Box::new(dsm));
        assert_eq!(
            tsm.bind(ADDR, BindParams::new(tdi(), GUEST)),
            Err(TsmError::WrongState(TsmDeviceState::Init))
        );
        tsm.connect(ADDR).unwrap();
        assert_eq!(tsm.is_channel_secure(ADDR), Some(false));
        assert_eq!(
            tsm.connect(ADDR),
            Err(TsmError::WrongState(TsmDeviceState::Connected))
        );
        let caps = tsm.bind(ADDR, BindParams::new(tdi(), GUEST)).unwrap();
        assert_eq!(Some(caps), tsm.capabilities(ADDR));
        assert_eq!(tsm.device_state(ADDR), Some(TsmDeviceState::Bound));
    }

    #[test]
    fn bind_of_an_unknown_tdi_reports_the_device_error() {
        let dsm = shared_dsm(DsmConfig::single_function(RID));
        let mut tsm = tsm_with(Box::new(dsm));
        tsm.connect(ADDR).unwrap();
        let other = InterfaceId::from_requester_id(RID + 1);
        assert_eq!(
            tsm.bind(ADDR, BindParams::new(other, GUEST)),
            Err(TsmError::Device {
                code: TdispErrorCode::INVALID_INTERFACE,
                data: 0
            })
        );
        assert_eq!(tsm.device_state(ADDR), Some(TsmDeviceState::Connected));
    }

    #[test]
    fn bind_with_lock_flags_the_device_lacks_is_refused() {
        let mut config = DsmConfig::single_function(RID);
        config.capabilities.lock_flags_supported =
            tdisp_proto::pcie::LockInterfaceFlags::new().with_no_fw_update(true);
        let mut tsm = tsm_with(Box::new(shared_dsm(config)));
        tsm.connect(ADDR).unwrap();
        let mut params = BindParams::new(tdi(), GUEST);
        params.lock.flags = params.lock.flags.with_bind_p2p(true);
        assert!(matches!(
            tsm.bind(ADDR, params),
            Err(TsmError::DeviceLacks(_))
        ));
        params.lock.flags = params
            .lock
            .flags
            .with_bind_p2p(false)
            .with_no_fw_update(true);
        tsm.bind(ADDR, params).unwrap();
    }

    #[test]
    fn bind_of_a_locked_tdi_is_refused() {
        let dsm = shared_dsm(DsmConfig::single_function(RID));
        dsm.lock()
            .unwrap()
            .respond(tdi(), &TdispRequest::LockInterface(Default::default()));
        let mut tsm = tsm_with(Box::new(dsm));
        tsm.connect(ADDR).unwrap();
        assert_eq!(
            tsm.bind(ADDR, BindParams::new(tdi(), GUEST)),
            Err(TsmError::TdiNotUnlocked(TdiState::ConfigLocked))
        );
    }

    #[test]
    fn full_cycle_drives_the_device_through_every_state() {
        let (mut tsm, dsm) = bound_tsm();
        tsm.lock(ADDR).unwrap();
        assert_eq!(dsm_state(&dsm), Some(TdiState::ConfigLocked));
        assert_eq!(tsm.device_state(ADDR), Some(TsmDeviceState::Locked));
        let report = tsm.read_interface_report(ADDR).unwrap();
        assert!(DeviceInterfaceReportExt::decodes(&report));
        tsm.start(ADDR).unwrap();
        assert_eq!(dsm_state(&dsm), Some(TdiState::Run));
        assert_eq!(tsm.interface_state(ADDR), Ok(TdiState::Run));
        tsm.stop(ADDR).unwrap();
        assert_eq!(dsm_state(&dsm), Some(TdiState::ConfigUnlocked));
        assert_eq!(tsm.device_state(ADDR), Some(TsmDeviceState::Bound));
        assert_eq!(tsm.start(ADDR), Err(TsmError::NoNonce));
        tsm.unbind(ADDR).unwrap();
        assert_eq!(tsm.binding(ADDR), None);
        tsm.disconnect(ADDR).unwrap();
        assert_eq!(tsm.device_state(ADDR), Some(TsmDeviceState::Init));
    }

    struct DeviceInterfaceReportExt;
    impl DeviceInterfaceReportExt {
        fn decodes(bytes: &[u8]) -> bool {
            tdisp_proto::pcie::DeviceInterfaceReport::decode(bytes).is_ok()
        }
    }

    #[test]
    fn remove_stops_a_running_tdi_and_forgets_the_device() {
        let (mut tsm, dsm) = bound_tsm();
        tsm.lock(ADDR).unwrap();
        tsm.start(ADDR).unwrap();
        tsm.remove(ADDR).unwrap();
        assert_eq!(dsm_state(&dsm), Some(TdiState::ConfigUnlocked));
        assert_eq!(tsm.device_state(ADDR), None);
        assert_eq!(tsm.remove(ADDR), Err(TsmError::UnknownDevice(ADDR)));
    }

    #[test]
    fn disconnect_unbinds_first() {
        let (mut tsm, dsm) = bound_tsm();
        tsm.lock(ADDR).unwrap();
        tsm.disconnect(ADDR).unwrap();
        assert_eq!(dsm_state(&dsm), Some(TdiState::ConfigUnlocked));
        assert_eq!(tsm.binding(ADDR), None);
    }
}

mod scopes {
    use super::*;

    fn request(tsm: &mut Tsm, scope: GuestRequestScope, request: TdispRequest) -> TsmError {
        tsm.guest_request(ADDR, GUEST, scope, GuestRequest::Tdisp(request))
            .unwrap_err()
    }

    #[test]
    fn state_changes_need_the_state_change_scope() {
        let (mut tsm, dsm) = bound_tsm();
        let lock = TdispRequest::LockInterface(Default::default());
        assert_eq!(
            request(&mut tsm, GuestRequestScope::Info, lock),
            TsmError::ScopeViolation(GuestRequestScope::Info)
        );
        assert_eq!(dsm_state(&dsm), Some(TdiState::ConfigUnlocked));
    }

    #[test]
    fn reads_need_the_info_scope() {
        let (mut tsm, _) = bound_tsm();
        assert_eq!(
            request(
                &mut tsm,
                GuestRequestScope::StateChange,
                TdispRequest::GetDeviceInterfaceState
            ),
            TsmError::ScopeViolation(GuestRequestScope::StateChange)
        );
        let outcome = tsm
            .guest_request(
                ADDR,
                GUEST,
                GuestRequestScope::Info,
                GuestRequest::Tdisp(TdispRequest::GetVersion),
            )
            .unwrap();
        assert_eq!(
            outcome,
            TsmOutcome::Response(TdispResponse::Version {
                versions: vec![0x10]
            })
        );
    }

    #[test]
    fn no_request_passes_under_a_debug_scope_and_stop_never_passes() {
        let (mut tsm, _) = bound_tsm();
        for scope in [GuestRequestScope::DebugRead, GuestRequestScope::DebugWrite] {
            assert_eq!(
                request(&mut tsm, scope, TdispRequest::GetDeviceInterfaceState),
                TsmError::ScopeViolation(scope)
            );
        }
        for scope in [GuestRequestScope::Info, GuestRequestScope::StateChange] {
            assert_eq!(
                request(&mut tsm, scope, TdispRequest::StopInterface),
                TsmError::ScopeViolation(scope)
            );
        }
    }

    #[test]
    fn state_change_scope_covers_only_unlocked_to_locked_and_locked_to_run() {
        let (mut tsm, dsm) = bound_tsm();
        let start = TdispRequest::StartInterface { nonce: [0; 32] };
        assert_eq!(
            request(&mut tsm, GuestRequestScope::StateChange, start),
            TsmError::WrongState(TsmDeviceState::Bound)
        );
        tsm.lock(ADDR).unwrap();
        assert_eq!(
            tsm.lock(ADDR),
            Err(TsmError::WrongState(TsmDeviceState::Locked))
        );
        assert_eq!(dsm_state(&dsm), Some(TdiState::ConfigLocked));
    }

    #[test]
    fn another_guest_cannot_use_the_binding() {
        let (mut tsm, _) = bound_tsm();
        assert_eq!(
            tsm.guest_request(
                ADDR,
                GUEST + 1,
                GuestRequestScope::Info,
                GuestRequest::ReadInterfaceReport
            ),
            Err(TsmError::NotBoundGuest(GUEST + 1))
        );
    }

    #[test]
    fn device_errors_pass_through_typed() {
        let (mut tsm, dsm) = bound_tsm();
        tsm.lock(ADDR).unwrap();
        let wrong = TdispRequest::StartInterface { nonce: [0x5a; 32] };
        assert_eq!(
            request(&mut tsm, GuestRequestScope::StateChange, wrong),
            TsmError::Device {
                code: TdispErrorCode::INVALID_NONCE,
                data: 0
            }
        );
        assert_eq!(dsm_state(&dsm), Some(TdiState::ConfigLocked));
        tsm.start(ADDR).unwrap();
    }
}

mod request_exec {
    use super::*;

    #[test]
    fn one_command_is_outstanding_per_device() {
        let (mut tsm, _) = bound_tsm();
        assert_eq!(tsm.exec(ADDR), Err(TsmError::NothingPending));
        tsm.submit(ADDR, TsmOperation::Stop).unwrap();
        assert_eq!(tsm.submit(ADDR, TsmOperation::Stop), Err(TsmError::Busy));
        assert_eq!(tsm.lock(ADDR), Err(TsmError::Busy));
        assert_eq!(tsm.exec(ADDR), Ok(ExecStatus::Done(TsmOutcome::Stopped)));
        tsm.lock(ADDR).unwrap();
    }

    #[test]
    fn report_read_takes_one_exec_per_portion() {
        let mut config = DsmConfig::single_function(RID);
        config.max_report_portion = 16;
        let expected = config.functions[0]
            .build_report(Default::default(), 0, false)
            .unwrap()
            .to_bytes();
        let dsm = shared_dsm(config);
        let mut tsm = tsm_with(Box::new(dsm));
        tsm.connect(ADDR).unwrap();
        tsm.bind(ADDR, BindParams::new(tdi(), GUEST)).unwrap();
        tsm.lock(ADDR).unwrap();
        tsm.submit(
            ADDR,
            TsmOperation::Guest {
                guest: GUEST,
                scope: GuestRequestScope::Info,
                request: GuestRequest::ReadInterfaceReport,
            },
        )
        .unwrap();
        let mut execs = 1;
        let report = loop {
            match tsm.exec(ADDR).unwrap() {
                ExecStatus::Pending => execs += 1,
                ExecStatus::Done(TsmOutcome::Report(report)) => break report,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(report, expected);
        assert_eq!(execs, expected.len().div_ceil(16));
    }

    #[test]
    fn connect_runs_discovery_then_establishes() {
        let dsm = shared_dsm(DsmConfig::single_function(RID));
        let mut tsm = tsm_with(Box::new(dsm));
        tsm.submit(ADDR, TsmOperation::Connect).unwrap();
        // Discovery index 0, discovery index 1, then the channel.
        assert_eq!(tsm.exec(ADDR), Ok(ExecStatus::Pending));
        assert_eq!(tsm.exec(ADDR), Ok(ExecStatus::Pending));
        assert_eq!(tsm.exec(ADDR), Ok(ExecStatus::Done(TsmOutcome::Connected)));
    }
}

mod hostile_device {
    use super::*;

    /// Wraps the DSM and rewrites its answers.
    struct Tamper {
        dsm: EmulatedDsm,
        rewrite: fn(Vec<u8>) -> Vec<u8>,
        /// Exchanges left before rewriting starts.
        honest: usize,
    }

    impl DoeMailbox for Tamper {
        fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, MailboxError> {
            let answer = self.dsm.exchange(request)?;
            if self.honest > 0 {
                self.honest -= 1;
                Ok(answer)
            } else {
                Ok((self.rewrite)(answer))
            }
        }
    }

    fn tsm_over(rewrite: fn(Vec<u8>) -> Vec<u8>, honest: usize) -> Tsm {
        let dsm = EmulatedDsm::new(DsmConfig::single_function(RID)).unwrap();
        tsm_with(Box::new(Tamper {
            dsm,
            rewrite,
            honest,
        }))
    }

    /// Offsets inside a DOE object carrying a vendor-defined TDISP response.
    const TDISP_OFFSET: usize = 8 + 11 + 1;

    #[test]
    fn no_spdm_in_discovery_fails_connect() {
        let mut tsm = tsm_over(
            |mut answer| {
                // Claim the discovery entry is vendor 0x1234 with no next entry.
                answer[8] = 0x34;
                answer[9] = 0x12;
                answer[11] = 0;
                answer
            },
            0,
        );
        assert_eq!(tsm.connect(ADDR), Err(TsmError::NoSpdm));
        assert_eq!(tsm.device_state(ADDR), Some(TsmDeviceState::Init));
    }

    #[test]
    fn response_about_another_tdi_is_rejected() {
        // Two discovery exchanges are honest; the version response is rewritten.
        let mut tsm = tsm_over(
            |mut answer| {
                answer[TDISP_OFFSET + 4] ^= 1;
                answer
            },
            2,
        );
        tsm.connect(ADDR).unwrap();
        assert!(matches!(
            tsm.bind(ADDR, BindParams::new(tdi(), GUEST)),
            Err(TsmError::InvalidResponse(_))
        ));
        assert_eq!(tsm.device_state(ADDR), Some(TsmDeviceState::Connected));
    }

    #[test]
    fn response_of_another_type_is_rejected() {
        let mut tsm = tsm_over(
            |mut answer| {
                // VERSION becomes DEVICE_INTERFACE_STATE (body still one count byte + version).
                answer[TDISP_OFFSET + 1] = 0x05;
                answer
            },
            2,
        );
        tsm.connect(ADDR).unwrap();
        assert!(tsm.bind(ADDR, BindParams::new(tdi(), GUEST)).is_err());
    }

    #[test]
    fn garbage_and_inconsistent_portions_fail_the_command_only() {
        let mut tsm = tsm_over(|_| vec![0xff; 3], 2);
        tsm.connect(ADDR).unwrap();
        assert!(matches!(
            tsm.bind(ADDR, BindParams::new(tdi(), GUEST)),
            Err(TsmError::Channel(_))
        ));
        // The device is still usable for another command (nothing stays outstanding).
        assert_eq!(tsm.exec(ADDR), Err(TsmError::NothingPending));
    }
}
