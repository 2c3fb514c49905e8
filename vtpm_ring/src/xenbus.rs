//! The xenbus device handshake: connection states and the store layout of a vTPM device.
//!
//! Layout (seed 004, with the v2 additions), under each domain's home:
//! - backend `/local/domain/<backend>/backend/vtpm/<frontend>/<handle>/`
//!   `{frontend-id, frontend, instance, pref_instance, domain, uuid, state, feature-protocol-v2}`
//! - frontend `/local/domain/<frontend>/device/vtpm/<handle>/`
//!   `{backend-id, backend, ring-ref, event-channel, feature-protocol-v2, state}`

use crate::domain::DomainId;
use crate::domain::Toolstack;
use crate::store::Perm;
use crate::store::Perms;
use crate::store::StoreError;
use crate::store::StoreHandle;
use open_enum::open_enum;
use uuid::Uuid;

/// A xenbus device connection state, as stored (in decimal) under `state`.
#[open_enum]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum XenbusState {
    /// Not yet known.
    UNKNOWN = 0,
    /// Setting up.
    INITIALISING = 1,
    /// Backend: waiting for the frontend's details.
    INIT_WAIT = 2,
    /// Frontend: details published.
    INITIALISED = 3,
    /// Connected.
    CONNECTED = 4,
    /// Tearing down.
    CLOSING = 5,
    /// Closed.
    CLOSED = 6,
}

/// Key names.
pub mod keys {
    /// Connection state.
    pub const STATE: &str = "state";
    /// Grant reference of the shared (v2) or ring (v1) page.
    pub const RING_REF: &str = "ring-ref";
    /// Frontend's event channel port.
    pub const EVENT_CHANNEL: &str = "event-channel";
    /// Protocol v2 support, "1" when present.
    pub const FEATURE_V2: &str = "feature-protocol-v2";
    /// `1`: this side carries swtpm control operations on the ring (this crate's extension,
    /// see [`crate::protocol::PacketKind`]); both sides must write it.
    pub const FEATURE_CONTROL: &str = "feature-vtpm-control";
    /// Frontend's domain id (backend side).
    pub const FRONTEND_ID: &str = "frontend-id";
    /// Path of the frontend directory (backend side).
    pub const FRONTEND: &str = "frontend";
    /// Backend's domain id (frontend side).
    pub const BACKEND_ID: &str = "backend-id";
    /// Path of the backend directory (frontend side).
    pub const BACKEND: &str = "backend";
    /// vTPM instance number the backend routes by.
    pub const INSTANCE: &str = "instance";
    /// Instance number from the VM configuration.
    pub const PREF_INSTANCE: &str = "pref_instance";
    /// Name of the frontend's domain.
    pub const DOMAIN: &str = "domain";
    /// Why the backend refused the device (present while it stays Closed for that reason).
    pub const ERROR: &str = "error";
    /// vTPM instance UUID.
    pub const UUID: &str = "uuid";
}

/// Directory the backend domain watches for vTPM devices.
pub fn backend_root(backend: DomainId) -> String {
    format!("/local/domain/{backend}/backend/vtpm")
}

/// Backend directory of one device.
pub fn backend_dir(backend: DomainId, frontend: DomainId, handle: u32) -> String {
    format!("{}/{frontend}/{handle}", backend_root(backend))
}

/// Frontend directory of one device.
pub fn frontend_dir(frontend: DomainId, handle: u32) -> String {
    format!("/local/domain/{frontend}/device/vtpm/{handle}")
}

/// Reads a state node; a missing or garbage value reads as `UNKNOWN`.
pub fn read_state(store: &StoreHandle, dir: &str) -> XenbusState {
    store
        .read_num::<u8>(&format!("{dir}/{}", keys::STATE))
        .map_or(XenbusState::UNKNOWN, XenbusState)
}

/// Writes a device directory's state node; fails (`NotFound`) once the toolstack removed the
/// directory, which a late state change must not bring back
/// ([`StoreHandle::write_in_place`]).
pub fn write_state(store: &StoreHandle, dir: &str, state: XenbusState) -> Result<(), StoreError> {
    tracing::debug!(dir, ?state, "xenbus state");
    store.write_in_place(&format!("{dir}/{}", keys::STATE), &state.0.to_string())
}

/// A vTPM device as the toolstack configures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VtpmDevice {
    /// Domain running the backend.
    pub backend: DomainId,
    /// Guest domain running the frontend.
    pub frontend: DomainId,
    /// Device handle (the `<id>` / `<n>` in the paths).
    pub handle: u32,
    /// vTPM instance the backend routes to.
    pub instance: u32,
    /// Instance UUID.
    pub uuid: Uuid,
}

/// The toolstack (dom0) side: creates both device directories with Xen's permissions: each
/// side owns its directory and the other side may read it. It needs the [`Toolstack`]
/// capability; a guest's store handle does not do:
///
/// ```compile_fail
/// use vtpm_ring::domain::{DomainId, Host};
/// use vtpm_ring::xenbus::{create_device, VtpmDevice};
/// let host = Host::new();
/// let guest = host.create_domain(DomainId(2), 1).unwrap();
/// let dev = VtpmDevice {
///     backend: DomainId(1),
///     frontend: DomainId(2),
///     handle: 0,
///     instance: 1,
///     uuid: uuid::Uuid::nil(),
/// };
/// create_device(&guest.store(), &dev).unwrap();
/// ```
pub fn create_device(toolstack: &Toolstack, dev: &VtpmDevice) -> Result<(), StoreError> {
    let dom0 = toolstack.store();
    let back = backend_dir(dev.backend, dev.frontend, dev.handle);
    let front = frontend_dir(dev.frontend, dev.handle);
    let back_perms = Perms::private(dev.backend).with(dev.frontend, Perm::Read);
    let front_perms = Perms::private(dev.frontend).with(dev.backend, Perm::Read);
    for (dir, perms) in [(&back, &back_perms), (&front, &front_perms)] {
        dom0.mkdir(dir)?;
        dom0.set_perms(dir, perms.clone())?;
    }
    // The state goes first: a running backend starts serving (and announces InitWait) as
    // soon as it can read frontend-id, frontend and instance, and a state written after that
    // would overwrite its InitWait, leaving the frontend waiting forever.
    let back_values = [
        (keys::STATE, XenbusState::INITIALISING.0.to_string()),
        (keys::FRONTEND_ID, dev.frontend.to_string()),
        (keys::FRONTEND, front.clone()),
        (keys::INSTANCE, dev.instance.to_string()),
        (keys::PREF_INSTANCE, dev.instance.to_string()),
        (keys::DOMAIN, format!("domU-{}", dev.frontend)),
        (keys::UUID, dev.uuid.to_string()),
    ];
    for (k, v) in back_values {
        dom0.write(&format!("{back}/{k}"), &v)?;
    }
    let front_values = [
        (keys::BACKEND_ID, dev.backend.to_string()),
        (keys::BACKEND, back.clone()),
        (keys::STATE, XenbusState::INITIALISING.0.to_string()),
    ];
    for (k, v) in front_values {
        dom0.write(&format!("{front}/{k}"), &v)?;
    }
    // Children created by dom0 copy the directory's permissions, so the owners stay right.
    Ok(())
}

/// The toolstack removes a device (both directories).
pub fn destroy_device(toolstack: &Toolstack, dev: &VtpmDevice) -> Result<(), StoreError> {
    let dom0 = toolstack.store();
    dom0.rm(&backend_dir(dev.backend, dev.frontend, dev.handle))?;
    dom0.rm(&frontend_dir(dev.frontend, dev.handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Host;

    #[test]
    fn toolstack_layout_gives_each_side_its_own_directory() {
        let host = Host::new();
        let back_domain = host.create_domain(DomainId(1), 1).unwrap();
        let front_domain = host.create_domain(DomainId(2), 1).unwrap();
        let dev = VtpmDevice {
            backend: DomainId(1),
            frontend: DomainId(2),
            handle: 0,
            instance: 7,
            uuid: Uuid::nil(),
        };
        create_device(&host.toolstack(), &dev).unwrap();
        let back = back_domain.store();
        let front = front_domain.store();
        let bdir = backend_dir(dev.backend, dev.frontend, 0);
        let fdir = frontend_dir(dev.frontend, 0);
        assert_eq!(front.read(&format!("{bdir}/instance")).unwrap(), "7");
        assert_eq!(back.read(&format!("{fdir}/backend-id")).unwrap(), "1");
        front.write(&format!("{fdir}/ring-ref"), "5").unwrap();
        back.write(&format!("{bdir}/state"), "2").unwrap();
        assert!(front.write(&format!("{bdir}/state"), "4").is_err());
        assert!(front.write(&format!("{bdir}/instance"), "8").is_err());
        assert!(back.write(&format!("{fdir}/ring-ref"), "6").is_err());
        assert_eq!(read_state(&front, &bdir), XenbusState::INIT_WAIT);
    }

    #[test]
    fn the_backend_state_is_written_before_anything_a_running_backend_starts_from() {
        use futures::FutureExt;
        use futures::StreamExt;
        let host = Host::new();
        let back_domain = host.create_domain(DomainId(1), 1).unwrap();
        host.create_domain(DomainId(2), 1).unwrap();
        let dev = VtpmDevice {
            backend: DomainId(1),
            frontend: DomainId(2),
            handle: 0,
            instance: 7,
            uuid: Uuid::nil(),
        };
        let bdir = backend_dir(dev.backend, dev.frontend, 0);
        let mut watch = back_domain
            .store()
            .watch(&backend_root(dev.backend))
            .unwrap();
        create_device(&host.toolstack(), &dev).unwrap();
        let mut changed = Vec::new();
        while let Some(Some(path)) = watch.next().now_or_never() {
            changed.push(path);
        }
        let at = |key: &str| changed.iter().position(|p| *p == format!("{bdir}/{key}"));
        let state = at(keys::STATE).unwrap();
        for key in [keys::FRONTEND_ID, keys::FRONTEND, keys::INSTANCE] {
            assert!(state < at(key).unwrap(), "{key} before state: {changed:?}");
        }
    }

    #[test]
    fn garbage_state_reads_unknown() {
        let host = Host::new();
        let s = host.create_domain(DomainId(1), 1).unwrap().store();
        s.write("dev/state", "banana").unwrap();
        assert_eq!(read_state(&s, "dev"), XenbusState::UNKNOWN);
    }
}
