//! Interleavings of a cancel with the commands around it, made explicit: the backend runs
//! only when the test polls it, and a cancel's window is filled through `cancel_between`.

use super::*;
use crate::backend::BackendConfig;
use crate::testbed::Testbed;
use crate::tpm_command::get_random;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::Poll;

/// How long the window waits for the second command to be submitted. With the fix it never
/// is (the wait runs out), so this only bounds how long the test takes.
const SUBMIT_WAIT: Duration = Duration::from_millis(200);

/// A cancel looks at the first command in flight; before it marks anything, that command is
/// answered and a second caller submits the next. The cancel must not reach the next one.
fn a_cancel_never_reaches_the_command_submitted_after_its_look(protocols: Protocols) {
    let (bed, backend) = Testbed::new(BackendConfig::default(), &[1]).unwrap();
    let guest = bed.add_guest(DomainId(2)).unwrap();
    bed.add_device(guest.id(), 0, 1).unwrap();
    let mut pool = LocalPool::new();
    pool.spawner().spawn_local(backend).unwrap();
    let config = FrontendConfig {
        protocols,
        // No timers: every wait here is on the backend the test polls.
        timeout: None,
        ..FrontendConfig::default()
    };
    let front = Arc::new(pool.run_until(Frontend::connect(&guest, config)).unwrap());
    let first_command = get_random(8);
    let mut first = Box::pin(front.transmit(&first_command));
    // Submitted; the backend has not run since.
    assert!(
        pool.run_until(async { futures::poll!(first.as_mut()) })
            .is_pending()
    );
    let (polled_tx, polled_rx) = mpsc::channel();
    let mut first_look = None;
    front
        .cancel_between(|| {
            let answer = pool.run_until(first).unwrap();
            assert_eq!(answer.len(), 20, "{answer:02x?}");
            let second = {
                let front = front.clone();
                async move { front.transmit(&get_random(16)).await }
            };
            // Polled once on a thread of its own (it may have to wait for the cancel to end),
            // then handed back, so that the test alone decides when it and the backend run.
            std::thread::spawn(move || {
                let mut second = Box::pin(second);
                let once = futures::executor::block_on(async { futures::poll!(second.as_mut()) });
                let _ = polled_tx.send((once, second));
            });
            // Without the fix the second command is submitted by now, and the mark that
            // follows lands on it.
            first_look = polled_rx.recv_timeout(SUBMIT_WAIT).ok();
        })
        .unwrap();
    let (once, mut second) = first_look.unwrap_or_else(|| polled_rx.recv().unwrap());
    let second = match once {
        Poll::Ready(answer) => answer,
        // Once more without the backend: a v1 command the cancel reached ends here.
        Poll::Pending => match pool.run_until(async { futures::poll!(second.as_mut()) }) {
            Poll::Ready(answer) => answer,
            Poll::Pending => pool.run_until(second),
        },
    };
    assert_eq!(
        second.as_ref().map(Vec::len),
        Ok(28),
        "GetRandom(16), submitted after the cancel looked at GetRandom(8), got {second:02x?}"
    );
}

#[test]
fn a_v2_cancel_never_reaches_the_command_submitted_after_its_look() {
    a_cancel_never_reaches_the_command_submitted_after_its_look(Protocols::V2_ONLY);
}

#[test]
fn a_v1_cancel_never_reaches_the_command_submitted_after_its_look() {
    a_cancel_never_reaches_the_command_submitted_after_its_look(Protocols::V1_ONLY);
}
