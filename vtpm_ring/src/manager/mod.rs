//! The stream between the backend and the vTPM manager, multiplexing every instance.
//!
//! - [`codec`]: the frames (seed 004's instance prefix, plus control frames);
//! - `client`: the backend's side, [`MuxClient`], which sends requests and waits for replies;
//! - `router`: [`MuxRouter`], which hands each reply to the request it answers;
//! - `server`: [`VtpmManager`], which owns the engines and serves the manager's side.
//!
//! Ordering rule: replies are matched by tag, never by order ([`MuxRouter`] enforces it); the
//! manager runs each instance's requests one at a time in arrival order, a cancel alone
//! overtaking (at most one cancel per instance runs; one arriving meanwhile is merged into
//! it), and different instances concurrently ([`VtpmManager::serve`] enforces it), so a
//! reset never overtakes a command the backend gave up on; the backend has one request of a
//! device outstanding at a time, its posted cancel excepted.

pub mod codec;

mod client;
mod router;
mod server;
mod stream;

pub use client::MuxClient;
pub use client::mux;
pub use codec::CONTROL_FLAG;
pub use codec::FRAME_HEADER_SIZE;
pub use codec::Frame;
pub use codec::FrameError;
pub use codec::MAX_INSTANCE;
pub use codec::decode_control;
pub use codec::decode_control_reply;
pub use codec::encode_control;
pub use codec::encode_control_reply;
pub use router::MuxRouter;
pub use server::VtpmManager;

use stream::FrameRx;
use stream::FrameTx;
use stream::frame_queue;

/// One end of the message stream.
#[derive(Debug)]
pub struct StreamEnd {
    tx: FrameTx,
    rx: FrameRx,
}

/// A connected pair of stream ends (backend side, manager side).
pub fn stream_pair() -> (StreamEnd, StreamEnd) {
    let (atx, arx) = frame_queue();
    let (btx, brx) = frame_queue();
    (
        StreamEnd { tx: atx, rx: brx },
        StreamEnd { tx: btx, rx: arx },
    )
}
