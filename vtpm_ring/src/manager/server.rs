//! The vTPM manager: owns one engine per instance and serves the multiplexed stream, running
//! each instance's frames one at a time in arrival order (cancels excepted, at most one of
//! them at a time per instance; see [`VtpmManager::serve`]).

use super::StreamEnd;
use super::codec::Frame;
use super::codec::encode_control_reply;
use crate::engine::ControlOp;
use crate::engine::ControlReply;
use crate::engine::EngineError;
use crate::engine::TpmEngine;
use crate::engine::TpmReply;
use crate::engine::TpmRequest;
use crate::engine::ctrl;
use crate::engine::ctrl::CtrlCmd;
use crate::task_set::TaskSet;
use crate::tpm_header::TpmRc;
use crate::tpm_header::error_response;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::collections::btree_map::Entry;
use std::sync::Arc;

/// The vTPM manager: owns one engine per instance and serves the multiplexed stream.
#[derive(Default)]
pub struct VtpmManager {
    engines: BTreeMap<u32, Arc<dyn TpmEngine>>,
}

impl VtpmManager {
    /// A manager without instances.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the engine of `instance`.
    pub fn add_instance(&mut self, instance: u32, engine: Arc<dyn TpmEngine>) {
        self.engines.insert(instance, engine);
    }

    /// Serves frames until the backend closes the stream.
    ///
    /// Ordering rule, enforced here: an instance's frames run one at a time, in the order
    /// they arrived (a queue per instance), so a `Stop` or `Init` (a guest's disconnect, the next
    /// connection's reset) never overtakes a command the backend gave up waiting for: a late
    /// command of the previous boot runs before the reset, never on the next boot's TPM. A
    /// cancel alone skips the queue, since it must reach the engine while the command it
    /// cancels runs; but at most one cancel per instance runs at a time: a cancel that
    /// arrives while its instance's previous one still runs is merged into it and answered
    /// at once as done (the running one already asks the engine to stop), so a backend side
    /// posting cancels to an engine that does not answer them cannot pile them up here.
    /// Different instances run concurrently. Replies carry their request's tag, which is all
    /// the backend matches on.
    pub async fn serve(self, end: StreamEnd) {
        let StreamEnd { tx, mut rx } = end;
        // Shared, not copied, by every request in flight.
        let engines = Arc::new(self.engines);
        let mut lanes = Lanes::default();
        let mut running = TaskSet::new();
        let run = |engines: &Arc<BTreeMap<u32, Arc<dyn TpmEngine>>>, job: Job| {
            let engines = engines.clone();
            async move {
                let reply = handle_frame(&engines, job.frame).await;
                (job.hold, reply)
            }
        };
        loop {
            // Biased: replies first, so a finished request's answer is never held up.
            futures::select_biased! {
                (hold, reply) = running.select_next_some() => {
                    if let Some(next) = lanes.finished(hold) {
                        running.push(run(&engines, next));
                    }
                    if let Some(reply) = reply
                        && tx.send(reply).is_err()
                    {
                        break;
                    }
                }
                frame = rx.next() => {
                    let Some(bytes) = frame else { break };
                    let frame = match Frame::into_request(bytes) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::warn!(error = %e, "malformed frame from the backend");
                            continue;
                        }
                    };
                    match lanes.admit(frame) {
                        Admit::Run(job) => running.push(run(&engines, job)),
                        Admit::Queued => {}
                        Admit::Refused(reply) => {
                            if tx.send(reply).is_err() {
                                break;
                            }
                        }
                        Admit::Merged { instance, tag, payload } => {
                            tracing::debug!(instance, "cancel merged into the one running");
                            let reply = merged_cancel(&engines, instance, tag, &payload);
                            if tx.send(reply).is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        }
        // Finish what was accepted; replies to a closed stream are dropped.
        while let Some((hold, reply)) = running.next().await {
            if let Some(next) = lanes.finished(hold) {
                running.push(run(&engines, next));
            }
            if let Some(reply) = reply {
                let _ = tx.send(reply);
            }
        }
    }
}

/// Most frames one instance may have waiting behind the one it runs. The backend has one
/// request of a device outstanding (and one device per instance), so only requests it gave
/// up on pile up here while an engine is stuck; past this, frames are refused at once.
const MAX_QUEUED_PER_INSTANCE: usize = 32;

/// What a running frame holds until it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Nothing: a response from the backend, refused by `handle_frame` at once.
    Nothing,
    /// Its instance's lane: the frames queued behind it wait for it.
    Lane(u32),
    /// Its instance's one cancel: further cancels for the instance are merged into it.
    Cancel(u32),
}

/// A frame to run, and what it holds.
struct Job {
    frame: Frame,
    hold: Hold,
}

enum Admit {
    /// Run it now.
    Run(Job),
    /// Its instance is busy: it runs when the frames before it have.
    Queued,
    /// Its instance's queue is full: the reply to send at once.
    Refused(Vec<u8>),
    /// A cancel for an instance whose cancel still runs: answered at once (`merged_cancel`).
    Merged {
        instance: u32,
        tag: u32,
        payload: Vec<u8>,
    },
}

/// Each instance's frames waiting behind the one it runs (an instance with an entry is busy),
/// and the instances with a cancel running.
#[derive(Default)]
struct Lanes {
    lanes: BTreeMap<u32, VecDeque<Frame>>,
    cancelling: BTreeSet<u32>,
}

impl Lanes {
    fn admit(&mut self, frame: Frame) -> Admit {
        let instance = match frame {
            Frame::Response { .. } => {
                return Admit::Run(Job {
                    frame,
                    hold: Hold::Nothing,
                });
            }
            // Outside the lane, so it reaches the engine while the command it cancels runs;
            // one at a time, so cancels posted to an engine that does not answer them do not
            // pile up.
            Frame::Control {
                instance,
                tag,
                payload,
            } if is_cancel(&payload) => {
                return if self.cancelling.insert(instance) {
                    Admit::Run(Job {
                        frame: Frame::Control {
                            instance,
                            tag,
                            payload,
                        },
                        hold: Hold::Cancel(instance),
                    })
                } else {
                    Admit::Merged {
                        instance,
                        tag,
                        payload,
                    }
                };
            }
            Frame::Command { instance, .. } | Frame::Control { instance, .. } => instance,
        };
        match self.lanes.entry(instance) {
            Entry::Vacant(v) => {
                v.insert(VecDeque::new());
                Admit::Run(Job {
                    frame,
                    hold: Hold::Lane(instance),
                })
            }
            Entry::Occupied(mut o) if o.get().len() < MAX_QUEUED_PER_INSTANCE => {
                o.get_mut().push_back(frame);
                Admit::Queued
            }
            Entry::Occupied(_) => {
                tracing::warn!(instance, "vTPM instance has too many requests queued");
                Admit::Refused(refusal(frame))
            }
        }
    }

    /// A job holding `hold` finished: the next one of its instance to run, if any.
    fn finished(&mut self, hold: Hold) -> Option<Job> {
        let instance = match hold {
            Hold::Nothing => return None,
            Hold::Cancel(instance) => {
                self.cancelling.remove(&instance);
                return None;
            }
            Hold::Lane(instance) => instance,
        };
        let Entry::Occupied(mut lane) = self.lanes.entry(instance) else {
            return None;
        };
        match lane.get_mut().pop_front() {
            Some(frame) => Some(Job {
                frame,
                hold: Hold::Lane(instance),
            }),
            None => {
                lane.remove();
                None
            }
        }
    }
}

fn is_cancel(payload: &[u8]) -> bool {
    payload.len() >= 4 && ctrl::request_cmd(payload) == CtrlCmd::CANCEL_TPM_CMD
}

/// The reply to a cancel merged into the one its instance runs: done, since the running one
/// already asks the engine to stop; or what running it would have answered without reaching
/// an engine (a request that does not decode, an unknown instance).
fn merged_cancel(
    engines: &BTreeMap<u32, Arc<dyn TpmEngine>>,
    instance: u32,
    tag: u32,
    payload: &[u8],
) -> Vec<u8> {
    let result = control_target(engines, instance, payload).map(|_| ControlReply::Done);
    control_reply(instance, tag, payload, result)
}

/// The control operation `payload` asks of `instance`, and that instance's engine; or the
/// failure to answer when the request does not decode (swtpm's own result code) or the
/// instance is unknown.
fn control_target<'a>(
    engines: &'a BTreeMap<u32, Arc<dyn TpmEngine>>,
    instance: u32,
    payload: &[u8],
) -> Result<(ControlOp, &'a Arc<dyn TpmEngine>), EngineError> {
    match (ctrl::decode_request(payload), engines.get(&instance)) {
        (Ok(op), Some(engine)) => Ok((op, engine)),
        (Err(e), _) => {
            tracing::warn!(instance, error = %e, "bad control frame");
            Err(EngineError::Refused(e.result_code()))
        }
        (_, None) => Err(EngineError::NotRunning),
    }
}

/// The answer to a frame that cannot be queued: a TPM failure for a command, swtpm's
/// failure result for a control operation (a response is never queued, see `Lanes::admit`).
fn refusal(frame: Frame) -> Vec<u8> {
    match frame {
        Frame::Command { instance, tag, .. } | Frame::Response { instance, tag, .. } => {
            failed_command(instance, tag)
        }
        Frame::Control {
            instance,
            tag,
            payload,
        } => control_reply(
            instance,
            tag,
            &payload,
            Err(EngineError::Failed("instance busy".into())),
        ),
    }
}

/// A command's reply when the engine did not answer it: TPM_RC_FAILURE.
fn failed_command(instance: u32, tag: u32) -> Vec<u8> {
    Frame::Response {
        instance,
        tag,
        response: error_response(TpmRc::FAILURE),
    }
    .encode()
}

/// The reply frame to the control request `payload`: its layout depends on the command, even
/// for a request that failed to decode (swtpm answers an unknown or short request with its
/// result code).
fn control_reply(
    instance: u32,
    tag: u32,
    payload: &[u8],
    result: Result<ControlReply, EngineError>,
) -> Vec<u8> {
    Frame::Control {
        instance,
        tag,
        payload: encode_control_reply(ctrl::request_cmd(payload), result),
    }
    .encode()
}

async fn handle_frame(
    engines: &BTreeMap<u32, Arc<dyn TpmEngine>>,
    frame: Frame,
) -> Option<Vec<u8>> {
    match frame {
        Frame::Command {
            instance,
            tag,
            locality,
            command,
        } => {
            let Some(engine) = engines.get(&instance) else {
                tracing::warn!(instance, "command for unknown vTPM instance");
                return Some(failed_command(instance, tag));
            };
            match engine
                .execute(TpmRequest::Command { command, locality })
                .await
            {
                Ok(TpmReply::Response(response)) => Some(
                    Frame::Response {
                        instance,
                        tag,
                        response,
                    }
                    .encode(),
                ),
                Ok(TpmReply::Control(_)) | Err(_) => Some(failed_command(instance, tag)),
            }
        }
        Frame::Control {
            instance,
            tag,
            payload,
        } => {
            let result = match control_target(engines, instance, &payload) {
                Ok((op, engine)) => engine.control(op).await,
                Err(e) => Err(e),
            };
            Some(control_reply(instance, tag, &payload, result))
        }
        // Only the manager sends responses.
        Frame::Response { instance, .. } => {
            tracing::warn!(instance, "response frame from the backend");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mux;
    use super::super::stream_pair;
    use super::*;
    use crate::engine::ControlOp;
    use crate::engine::CtrlResult;
    use crate::engine::SimTpm;

    const GET_RANDOM_8: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8];

    #[tokio::test]
    async fn manager_routes_by_instance_and_locality_travels_with_the_command() {
        let (back, man) = stream_pair();
        let mut manager = VtpmManager::new();
        let a = Arc::new(SimTpm::started());
        let b = Arc::new(SimTpm::new());
        manager.add_instance(1, a.clone());
        manager.add_instance(2, b);
        let server = tokio::spawn(manager.serve(man));
        let (client, router) = mux(back);
        let routing = tokio::spawn(router.run());
        let ra = client.command(1, GET_RANDOM_8.to_vec(), 0).await.unwrap();
        let rb = client.command(2, GET_RANDOM_8.to_vec(), 0).await.unwrap();
        assert_eq!(crate::tpm_header::response_code(&ra), Some(TpmRc::SUCCESS));
        assert_eq!(
            crate::tpm_header::response_code(&rb),
            Some(TpmRc::INITIALIZE)
        );
        let rc = client.command(9, GET_RANDOM_8.to_vec(), 0).await.unwrap();
        assert_eq!(crate::tpm_header::response_code(&rc), Some(TpmRc::FAILURE));
        client.command(1, GET_RANDOM_8.to_vec(), 2).await.unwrap();
        assert_eq!(a.last_locality(), 2);
        assert!(client.control(1, ControlOp::SetLocality(9)).await.is_err());
        assert_eq!(
            client
                .control(1, ControlOp::GetTpmEstablished)
                .await
                .unwrap(),
            ControlReply::TpmEstablished(false)
        );
        drop(client);
        server.abort();
        routing.abort();
    }

    /// An engine that logs each request as it starts and holds commands while `hold` is set.
    struct Gate {
        name: &'static str,
        inner: SimTpm,
        log: Arc<std::sync::Mutex<Vec<String>>>,
        hold: std::sync::atomic::AtomicBool,
        release: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl TpmEngine for Gate {
        async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
            let what = match &request {
                TpmRequest::Command { .. } => "command".to_string(),
                TpmRequest::Control(op) => format!("{op:?}"),
            };
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {what}", self.name));
            if matches!(request, TpmRequest::Command { .. })
                && self.hold.load(std::sync::atomic::Ordering::SeqCst)
            {
                self.release.notified().await;
            }
            self.inner.execute(request).await
        }
    }

    /// Every task of the (current-thread) runtime runs until it waits on something outside.
    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_instances_reset_waits_for_its_earlier_command_and_only_a_cancel_overtakes_it() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gate = |name| {
            Arc::new(Gate {
                name,
                inner: SimTpm::started(),
                log: log.clone(),
                hold: std::sync::atomic::AtomicBool::new(false),
                release: tokio::sync::Notify::new(),
            })
        };
        let (slow, other) = (gate("1"), gate("2"));
        slow.hold.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut manager = VtpmManager::new();
        manager.add_instance(1, slow.clone());
        manager.add_instance(2, other);
        let (back, man) = stream_pair();
        tokio::spawn(manager.serve(man));
        let (client, router) = mux(back);
        tokio::spawn(router.run());
        let client = Arc::new(client);

        let command = tokio::spawn({
            let client = client.clone();
            async move { client.command(1, GET_RANDOM_8.to_vec(), 0).await }
        });
        settle().await;
        // The guest left and the next one connects: Stop, then Init, behind the command.
        let reset = tokio::spawn({
            let client = client.clone();
            async move {
                let stop = client.control(1, ControlOp::Stop).await;
                let init = client
                    .control(
                        1,
                        ControlOp::Init {
                            delete_volatile: true,
                        },
                    )
                    .await;
                (stop, init)
            }
        });
        settle().await;
        client.post_control(1, ControlOp::CancelCommand).unwrap();
        let elsewhere = client.command(2, GET_RANDOM_8.to_vec(), 0).await.unwrap();
        assert_eq!(
            crate::tpm_header::response_code(&elsewhere),
            Some(TpmRc::SUCCESS)
        );
        settle().await;
        assert_eq!(
            *log.lock().unwrap(),
            ["1 command", "1 CancelCommand", "2 command"],
            "only the cancel reached instance 1 while its command ran"
        );
        assert!(!reset.is_finished());

        slow.release.notify_one();
        assert!(command.await.unwrap().is_ok());
        let (stop, init) = reset.await.unwrap();
        assert!(stop.is_ok() && init.is_ok());
        assert_eq!(
            log.lock().unwrap()[3..],
            ["1 Stop", "1 Init { delete_volatile: true }"]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn frames_past_an_instances_queue_are_refused_at_once() {
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let slow = Arc::new(Gate {
            name: "1",
            inner: SimTpm::started(),
            log: log.clone(),
            hold: std::sync::atomic::AtomicBool::new(true),
            release: tokio::sync::Notify::new(),
        });
        let mut manager = VtpmManager::new();
        manager.add_instance(1, slow.clone());
        let (mut back, man) = stream_pair();
        tokio::spawn(manager.serve(man));
        // Raw frames: one running, a full queue behind it, and one more.
        for tag in 0..=u32::try_from(MAX_QUEUED_PER_INSTANCE + 1).unwrap() {
            let frame = Frame::Command {
                instance: 1,
                tag,
                locality: 0,
                command: GET_RANDOM_8.to_vec(),
            };
            back.tx.send(frame.encode()).unwrap();
        }
        settle().await;
        let refused = Frame::into_reply(back.rx.next().await.unwrap()).unwrap();
        assert_eq!(
            refused,
            Frame::Response {
                instance: 1,
                tag: u32::try_from(MAX_QUEUED_PER_INSTANCE + 1).unwrap(),
                response: error_response(TpmRc::FAILURE),
            }
        );
        assert_eq!(log.lock().unwrap().len(), 1);
        // Released, the queue drains in order.
        slow.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        slow.release.notify_one();
        for tag in 0..=u32::try_from(MAX_QUEUED_PER_INSTANCE).unwrap() {
            let reply = Frame::into_reply(back.rx.next().await.unwrap()).unwrap();
            assert!(matches!(reply, Frame::Response { tag: t, .. } if t == tag));
        }
    }

    /// An engine whose cancels wait until the test lets each through, counting them.
    struct HeldCancel {
        cancels: std::sync::atomic::AtomicUsize,
        release: tokio::sync::Semaphore,
    }

    impl HeldCancel {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                cancels: std::sync::atomic::AtomicUsize::new(0),
                release: tokio::sync::Semaphore::new(0),
            })
        }
    }

    #[async_trait::async_trait]
    impl TpmEngine for HeldCancel {
        async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
            if matches!(request, TpmRequest::Control(ControlOp::CancelCommand)) {
                self.cancels
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.release.acquire().await.unwrap().forget();
            }
            SimTpm::started().execute(request).await
        }
    }

    fn cancel_frame(instance: u32, tag: u32) -> Vec<u8> {
        Frame::Control {
            instance,
            tag,
            payload: ctrl::encode_request(&ControlOp::CancelCommand),
        }
        .encode()
    }

    /// A cancel reply's tag and what it says.
    fn cancel_reply(bytes: Vec<u8>) -> (u32, Result<ControlReply, CtrlResult>) {
        let Frame::Control { tag, payload, .. } = Frame::into_reply(bytes).unwrap() else {
            panic!("not a control reply");
        };
        let reply = ctrl::decode_reply(CtrlCmd::CANCEL_TPM_CMD, &payload).unwrap();
        (tag, reply)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_cancel_while_its_instances_cancel_runs_is_merged_and_answered_at_once() {
        let (one, two) = (HeldCancel::new(), HeldCancel::new());
        let mut manager = VtpmManager::new();
        manager.add_instance(1, one.clone());
        manager.add_instance(2, two.clone());
        let (mut back, man) = stream_pair();
        tokio::spawn(manager.serve(man));
        // Instance 1's first cancel runs and stays; its next two are merged into it; instance
        // 2's runs alongside; instance 9 has no engine.
        for (instance, tag) in [(1, 0), (1, 1), (1, 2), (2, 3), (9, 4), (9, 5)] {
            back.tx.send(cancel_frame(instance, tag)).unwrap();
        }
        // A cancel whose body does not decode is refused as running it would be.
        let mut bad = ctrl::encode_request(&ControlOp::CancelCommand);
        bad.push(0);
        let bad_rc = ctrl::decode_request(&bad).unwrap_err().result_code();
        let bad = Frame::Control {
            instance: 1,
            tag: 6,
            payload: bad,
        };
        back.tx.send(bad.encode()).unwrap();
        settle().await;
        let done = Ok(ControlReply::Done);
        let not_running = Err(EngineError::NotRunning.result_code());
        let mut answered = BTreeMap::new();
        while let Some(reply) = back.rx.try_recv() {
            let (tag, reply) = cancel_reply(reply);
            answered.insert(tag, reply);
        }
        assert_eq!(
            answered,
            BTreeMap::from([
                (1, done.clone()),
                (2, done.clone()),
                (4, not_running.clone()),
                (5, not_running),
                (6, Err(bad_rc)),
            ])
        );
        let ordering = std::sync::atomic::Ordering::SeqCst;
        assert_eq!(one.cancels.load(ordering), 1);
        assert_eq!(two.cancels.load(ordering), 1);

        // Once instance 1's cancel is done, its next cancel runs again.
        one.release.add_permits(1);
        assert_eq!(
            cancel_reply(back.rx.next().await.unwrap()),
            (0, done.clone())
        );
        back.tx.send(cancel_frame(1, 7)).unwrap();
        settle().await;
        assert_eq!(one.cancels.load(ordering), 2);
        one.release.add_permits(1);
        two.release.add_permits(1);
        let mut last = [
            cancel_reply(back.rx.next().await.unwrap()),
            cancel_reply(back.rx.next().await.unwrap()),
        ];
        last.sort_unstable_by_key(|(tag, _)| *tag);
        assert_eq!(last, [(3, done.clone()), (7, done)]);
    }
}
