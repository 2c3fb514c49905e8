//! Shared by the host fuzz targets: a TSM with one emulated device probed, connected and
//! bound to a guest over the plain channel, for the host state machine to drive.
//!
//! The SPDM session is left out on purpose. A device identity and a session per input took 93%
//! of every run of the VMBus target (42 runs a second); the session and the DOE path have
//! their own targets (`fuzz_spdm_*`, `fuzz_dsm_doe`).

use std::sync::Arc;
use std::sync::Mutex;
use tdisp_host::tsm::BindParams;
use tdisp_host::tsm::DoeMailbox;
use tdisp_host::tsm::PciAddress;
use tdisp_host::tsm::PciDeviceInfo;
use tdisp_host::tsm::PlainChannel;
use tdisp_host::tsm::Tsm;
use tdisp_proto::pcie::InterfaceId;
use tdisp_proto::pcie::LockInterfaceParams;

/// A TSM that reached the device at `address` through `mailbox`, connected it and bound its
/// function `requester_id` to `guest` with `lock`.
pub fn bound_tsm(
    address: PciAddress,
    requester_id: u16,
    guest: u64,
    lock: LockInterfaceParams,
    mailbox: Box<dyn DoeMailbox>,
) -> Arc<Mutex<Tsm>> {
    let tsm = Arc::new(Mutex::new(Tsm::new()));
    {
        let mut tsm = tsm.lock().unwrap();
        tsm.probe(
            PciDeviceInfo::tee_io(address),
            mailbox,
            Box::new(PlainChannel::insecure_opt_in()),
        );
        tsm.connect(address).unwrap();
        tsm.bind(
            address,
            BindParams {
                interface: InterfaceId::from_requester_id(requester_id),
                guest,
                lock,
            },
        )
        .unwrap();
    }
    tsm
}
