//! Interop with DMTF's spdm-emu, opt-in: ignored unless run by `cargo xtask interop spdm-emu
//! --bin-dir DIR`, which starts `spdm_responder_emu` from the user's own build and passes its
//! port (`SPDM_EMU_PORT`) and root certificate (`SPDM_EMU_ROOT`, DER) here.

use std::net::TcpStream;
use tdisp_host::spdm::channel::SpdmChannel;
use tdisp_host::spdm::emu_socket::EmuSocketMailbox;
use tdisp_host::spdm::requester::RequesterConfig;
use tdisp_host::tsm::BindParams;
use tdisp_host::tsm::PciDeviceInfo;
use tdisp_host::tsm::ProbeOutcome;
use tdisp_host::tsm::Tsm;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::TdiState;

const ADDRESS: u32 = 0x0100;

#[test]
#[ignore = "needs spdm_responder_emu; run by `cargo xtask interop spdm-emu --bin-dir DIR`"]
fn our_tsm_runs_a_tdisp_cycle_inside_a_session_with_spdm_emu_responder() {
    let port: u16 = std::env::var("SPDM_EMU_PORT").unwrap().parse().unwrap();
    let root = std::fs::read(std::env::var("SPDM_EMU_ROOT").unwrap()).unwrap();
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut control = EmuSocketMailbox::new(stream.try_clone().unwrap());
    let mut tsm = Tsm::new();
    assert_eq!(
        tsm.probe(
            PciDeviceInfo::tee_io(ADDRESS),
            Box::new(EmuSocketMailbox::new(stream)),
            Box::new(SpdmChannel::new(RequesterConfig::new(root))),
        ),
        ProbeOutcome::Handled
    );
    tsm.connect(ADDRESS).unwrap();
    assert_eq!(tsm.is_channel_secure(ADDRESS), Some(true));
    tsm.bind(ADDRESS, BindParams::new(InterfaceId::default(), 1))
        .unwrap();
    tsm.lock(ADDRESS).unwrap();
    let report = tsm.read_interface_report(ADDRESS).unwrap();
    println!("interface report: {} bytes", report.len());
    tsm.start(ADDRESS).unwrap();
    assert_eq!(tsm.interface_state(ADDRESS).unwrap(), TdiState::Run);
    tsm.stop(ADDRESS).unwrap();
    tsm.unbind(ADDRESS).unwrap();
    tsm.disconnect(ADDRESS).unwrap();
    control.shutdown().unwrap();
}
