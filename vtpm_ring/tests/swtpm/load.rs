//! Many guests at once: every response reaches its sender, nothing is lost.

use super::extended;
use super::get_random;
use super::rc;
use super::stack;
use vtpm_ring::tpm_command::pcr_extend_sha256;
use vtpm_ring::tpm_command::pcr_read_sha256;

const GUESTS: u16 = 16;
const COMMANDS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_guests_times_five_hundred_commands_each_get_their_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack(dir.path(), GUESTS).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (g, guest) in stack.guests().iter().enumerate() {
        let tpm = guest.frontend().clone();
        // Each guest's PCR 16 holds a value only it can have: a reply that crossed instances
        // shows up as the wrong PCR value, one that crossed requests as the wrong length.
        let mine = [g as u8 + 1; 32];
        tasks.spawn(async move {
            assert_eq!(
                rc(&tpm.transmit(&pcr_extend_sha256(16, &mine)).await.unwrap()),
                0
            );
            let want = extended(&mine);
            for i in 0..COMMANDS {
                if i % 50 == 0 {
                    let r = tpm.transmit(&pcr_read_sha256(16).unwrap()).await.unwrap();
                    assert_eq!(rc(&r), 0);
                    assert_eq!(&r[r.len() - 32..], want, "guest {g} command {i}");
                } else {
                    let n = 1 + ((i + g) % 32) as u16;
                    let r = tpm.transmit(&get_random(n)).await.unwrap();
                    assert_eq!(rc(&r), 0);
                    assert_eq!(r.len(), 12 + usize::from(n), "guest {g} command {i}");
                }
            }
            COMMANDS
        });
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        answered += done.unwrap();
    }
    assert_eq!(answered, usize::from(GUESTS) * COMMANDS);
    stack.shutdown().await.unwrap();
}
