//! The messages and device requests the control plane sends.

use super::*;

pub(super) fn device(offer: OfferId, channel: &Channel, action: DeviceAction) -> Output {
    Output::Device {
        offer,
        generation: channel.generation,
        action,
    }
}

fn status(ok: bool) -> i32 {
    if ok {
        control::STATUS_SUCCESS
    } else {
        control::STATUS_UNSUCCESSFUL
    }
}

pub(super) fn open_result(channel_id: u32, open_id: u32, ok: bool) -> MessageBuf {
    Message::OpenResult(control::OpenResult {
        channel_id: channel_id.into(),
        open_id: open_id.into(),
        status: status(ok).cast_unsigned().into(),
    })
    .encode()
}

pub(super) fn gpadl_created(channel_id: u32, id: GpadlId, ok: bool) -> MessageBuf {
    Message::GpadlCreated(control::GpadlCreated {
        channel_id: channel_id.into(),
        gpadl_id: id.0.into(),
        status: status(ok).into(),
    })
    .encode()
}

pub(super) fn gpadl_torndown(id: GpadlId) -> MessageBuf {
    Message::GpadlTorndown(control::GpadlTorndown {
        gpadl_id: id.0.into(),
    })
    .encode()
}

pub(super) fn version_response(version: Option<Version>, features: FeatureFlags) -> MessageBuf {
    let base = control::VersionResponse {
        version_supported: u8::from(version.is_some()),
        connection_state: control::ConnectionState::SUCCESSFUL.0,
        padding: 0.into(),
        selected_version_or_connection_id: if version.is_some_and(|v| v >= Version::WIN10_RS3_1) {
            control::MESSAGE_CONNECTION_ID
        } else {
            0
        }
        .into(),
    };
    match version {
        Some(v) if v.has_feature_flags() => Message::VersionResponse2(control::VersionResponse2 {
            base,
            supported_features: features.into_bits().into(),
        })
        .encode(),
        _ => Message::VersionResponse(base).encode(),
    }
}

pub(super) fn tl_refused(request: control::TlConnectRequest) -> Output {
    // No hvsocket provider lives in this crate: every connect is refused.
    Output::Guest(
        Message::TlConnectResult(control::TlConnectResult {
            endpoint_id: request.endpoint_id,
            service_id: request.service_id,
            status: control::STATUS_CONNECTION_REFUSED.into(),
        })
        .encode(),
    )
}
