//! Round trips of real, succeeding TPM 2.0 commands through the whole split driver:
//! frontend -> shared pages -> backend -> multiplexed stream -> manager -> swtpm -> back, on
//! protocols v1 and v2, and through the TPM socket a tpm2-tools client uses. The reference
//! in the same run is the same command written straight to a swtpm's data socket (its own
//! process, same flags), so the difference is what the ring adds.
//!
//! Between the two, `engine_only` calls a [`SwtpmEngine`] directly (its own swtpm, same
//! flags), as the manager does: what the engine layer adds before any ring is involved.
//!
//! Commands (every response is checked for `TPM_RC_SUCCESS`):
//! - `read_clock_10B`: TPM2_ReadClock, 10 bytes;
//! - `get_random_32`: TPM2_GetRandom(32), 12 bytes (44-byte response);
//! - `context_load_1908B`: TPM2_ContextLoad of a saved RSA-3072 key with SHA-512 name
//!   algorithm and the largest policy digest and auth value it allows, followed by the
//!   14-byte TPM2_FlushContext of the loaded copy. At 1908 bytes it is the largest TPM 2.0
//!   command we found that succeeds on swtpm: every other variable field of a command is a
//!   TPM2B capped at 1 KiB or less (MAX_DIGEST_BUFFER, MAX_NV_BUFFER_SIZE), and a context
//!   blob is as large as the object it saves (libtpms 0.9 supports RSA up to 3072 bits).
//!   A packet near 4 KiB therefore cannot come from a command that succeeds; the ring's
//!   packet handling at 4 KiB is covered by the protocol property tests instead. 1908 bytes
//!   fit the default v2 layout (one shared page, 4088 bytes), so no extra page is used.
//!
//! Every measured loop runs inside a task on one current-thread tokio runtime (as the TPM
//! socket serving a client does), for the reference too; swtpm runs in its own process.
//! After the criterion groups, `paired` prints medians of the commands sent in turn on every
//! path, round after round, so a slow spell on the shared machine hits all paths alike, and
//! the spread of each round's overhead over the reference's batch run just before it.
//!
//! Where the scheduler puts each swtpm matters more than anything the ring does: on a small
//! VM, a swtpm on the other (idle) vCPU costs every round trip two cross-vCPU wakeups, about
//! 75 us more than the same swtpm on the caller's vCPU (measured for swtpm alone: 8.3 vs
//! 83-92 us), and it hits one path for a whole run, the reference included. For figures that
//! compare the paths rather than the placement, pin the run to one CPU:
//! `taskset -c 1 target/release/deps/round_trip-* --bench` (swtpm inherits the affinity).

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, reason = "bench setup fails loudly")]
#![expect(clippy::panic, reason = "a failed TPM command fails the bench")]

use criterion::BenchmarkId;
use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::engine::swtpm::StateDirs;
use vtpm_ring::engine::swtpm::SwtpmConfig;
use vtpm_ring::engine::swtpm::SwtpmEngine;
use vtpm_ring::engine::swtpm::SwtpmProcess;
use vtpm_ring::frontend::Frontend;
use vtpm_ring::protocol::Protocols;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::VtpmStack;
use vtpm_ring::tpm_command::command;
use vtpm_ring::tpm_header::TpmCc;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::TpmSt;
use vtpm_ring::tpm_header::response_code;

const READ_CLOCK: [u8; 10] = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x81];
const GET_RANDOM_32: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 32];
/// TPM2_CreatePrimary.
const CREATE_PRIMARY: TpmCc = TpmCc(0x131);
/// TPM2_ContextSave.
const CONTEXT_SAVE: TpmCc = TpmCc(0x162);
/// TPM2_FlushContext.
const FLUSH_CONTEXT: TpmCc = TpmCc(0x165);
/// TPM2_ContextLoad.
const CONTEXT_LOAD: TpmCc = TpmCc(0x161);
/// TPM_ALG_SHA512: the largest name algorithm, so the largest policy and auth value.
const SHA512: u16 = 0x0d;
const SHA512_SIZE: usize = 64;

fn sized(data: &[u8]) -> Vec<u8> {
    let mut b = (data.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(data);
    b
}

/// TPM2_CreatePrimary(owner) of a restricted RSA-3072 storage key (AES-256-CFB), SHA-512
/// name algorithm, a 64-byte policy and a 64-byte auth value: as large as an object gets.
fn create_primary_rsa3072() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&0x4000_0001u32.to_be_bytes()); // TPM_RH_OWNER
    b.extend_from_slice(&9u32.to_be_bytes());
    b.extend_from_slice(&[0x40, 0, 0, 9, 0, 0, 0, 0, 0]); // TPM_RS_PW
    let sensitive = [sized(&[0x22; SHA512_SIZE]), sized(&[])].concat(); // auth, data
    b.extend_from_slice(&sized(&sensitive));
    let public: Vec<u8> = [
        &[0, 1][..],                  // RSA
        &SHA512.to_be_bytes(),        // nameAlg
        &[0, 3, 0x04, 0x72], // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|noDA|restricted|decrypt
        &sized(&[0x11; SHA512_SIZE]), // authPolicy
        &[0, 6, 1, 0, 0, 0x43], // AES-256-CFB
        &[0, 0x10],          // scheme NULL
        &[0x0c, 0],          // 3072 bits
        &[0, 0, 0, 0],       // default exponent
        &[0, 0],             // unique
    ]
    .concat();
    b.extend_from_slice(&sized(&public));
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // outsideInfo, creationPCR
    command(TpmSt::SESSIONS, CREATE_PRIMARY, &b)
}

fn handle_after_header(response: &[u8]) -> u32 {
    u32::from_be_bytes(response[10..14].try_into().unwrap())
}

fn check(response: &[u8]) -> &[u8] {
    if response_code(response) != Some(TpmRc::SUCCESS) {
        panic!("TPM command failed: {response:02x?}");
    }
    response
}

/// Sends `c` over a raw swtpm-style socket.
async fn socket_round_trip(stream: &mut TcpStream, c: &[u8]) -> Vec<u8> {
    stream.write_all(c).await.unwrap();
    let mut response = vec![0u8; 10];
    stream.read_exact(&mut response).await.unwrap();
    let size = u32::from_be_bytes(response[2..6].try_into().unwrap()) as usize;
    response.resize(size, 0);
    stream.read_exact(&mut response[10..]).await.unwrap();
    response
}

/// One path to a TPM.
#[derive(Clone)]
enum Path {
    Socket(Arc<tokio::sync::Mutex<TcpStream>>),
    /// The engine alone, as the manager calls it: no ring, no stream.
    Engine(Arc<SwtpmEngine>),
    Ring(Arc<Frontend>),
}

impl Path {
    async fn send(&self, c: &[u8]) -> Vec<u8> {
        match self {
            Path::Socket(s) => socket_round_trip(&mut *s.lock().await, c).await,
            Path::Engine(e) => e.command(c.to_vec(), 0).await.unwrap(),
            Path::Ring(f) => f.transmit(c).await.unwrap(),
        }
    }

    /// A TPM2_ContextLoad of a saved maximal RSA-3072 key, made on this path's TPM.
    async fn context_load(&self) -> Vec<u8> {
        let primary = self.send(&create_primary_rsa3072()).await;
        let handle = handle_after_header(check(&primary));
        let saved = self
            .send(&command(
                TpmSt::NO_SESSIONS,
                CONTEXT_SAVE,
                &handle.to_be_bytes(),
            ))
            .await;
        self.flush(handle).await;
        command(TpmSt::NO_SESSIONS, CONTEXT_LOAD, &check(&saved)[10..])
    }

    /// One measured operation: `c`, or for a ContextLoad, the load and the flush.
    async fn operate(&self, c: &[u8]) {
        let response = self.send(black_box(c)).await;
        check(&response);
        if c[6..10] == CONTEXT_LOAD.0.to_be_bytes() {
            self.flush(handle_after_header(&response)).await;
        }
    }

    /// TPM2_FlushContext of `handle`, which must succeed.
    async fn flush(&self, handle: u32) {
        let flush = command(TpmSt::NO_SESSIONS, FLUSH_CONTEXT, &handle.to_be_bytes());
        check(&self.send(&flush).await);
    }

    /// `iters` operations in one task on `rt`; their total time.
    fn run(&self, rt: &Runtime, c: &[u8], iters: u64) -> Duration {
        let (path, c) = (self.clone(), c.to_vec());
        rt.block_on(rt.spawn(async move {
            let start = Instant::now();
            for _ in 0..iters {
                path.operate(&c).await;
            }
            start.elapsed()
        }))
        .unwrap()
    }
}

/// Rounds of the paired comparison, and operations per path and round.
const PAIRED_ROUNDS: usize = 200;
const PAIRED_BATCH: u64 = 10;

/// The same-run comparison made robust to a busy machine: every path runs a batch of the
/// same operation in turn, round after round. Printed per path: the median per-operation
/// time and its overhead over swtpm alone; then the overhead of each round against the
/// reference's batch just before it (a slow spell hits both alike), as the median and the
/// middle half of the rounds, which shows how far one run's figure can be trusted.
fn paired(rt: &Runtime, label: &str, paths: &[(&str, Path, Vec<u8>)]) {
    let mut samples = vec![Vec::with_capacity(PAIRED_ROUNDS); paths.len()];
    for _ in 0..PAIRED_ROUNDS {
        for ((_, path, c), times) in paths.iter().zip(&mut samples) {
            times.push(path.run(rt, c, PAIRED_BATCH) / PAIRED_BATCH as u32);
        }
    }
    let percent = |ratio: f64| (ratio - 1.0) * 100.0;
    let reference = &samples[0];
    for ((name, _, _), times) in paths.iter().zip(&samples) {
        let mut ratios: Vec<f64> = times
            .iter()
            .zip(reference)
            .map(|(t, r)| t.as_secs_f64() / r.as_secs_f64())
            .collect();
        ratios.sort_unstable_by(f64::total_cmp);
        let at = |q: usize| ratios[(ratios.len() - 1) * q / 4];
        let mut sorted = times.clone();
        sorted.sort_unstable();
        let mut reference = reference.clone();
        reference.sort_unstable();
        let (median, reference) = (sorted[sorted.len() / 2], reference[reference.len() / 2]);
        println!(
            "paired {label} {name:>14}: median {:>7.1} us ({:+.0}% over swtpm alone; \
             by round {:+.1}%, middle half {:+.1}%..{:+.1}%)",
            median.as_secs_f64() * 1e6,
            percent(median.as_secs_f64() / reference.as_secs_f64()),
            percent(at(2)),
            percent(at(1)),
            percent(at(3)),
        );
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The reference: a plain swtpm, same flags, its socket used directly.
    let reference_dir = StateDirs::new(dir.path().join("reference"))
        .create(0)
        .unwrap();
    let reference = rt
        .block_on(SwtpmProcess::spawn(&SwtpmConfig::default(), &reference_dir))
        .unwrap();
    let direct = rt
        .block_on(TcpStream::connect(reference.data_addr()))
        .unwrap();
    direct.set_nodelay(true).unwrap();
    let mut stacks = Vec::new();
    for (name, protocols, first) in [("v1", Protocols::V1_ONLY, 1), ("v2", Protocols::V2_ONLY, 2)] {
        let mut config = StackConfig::new(dir.path().join(name), 1);
        config.frontend.protocols = protocols;
        config.first_instance = first;
        stacks.push((name, rt.block_on(VtpmStack::start(config)).unwrap()));
    }
    let socket = rt
        .block_on(TcpStream::connect(stacks[1].1.guests()[0].data_addr()))
        .unwrap();
    socket.set_nodelay(true).unwrap();
    // The engine the ring's manager would call, on its own swtpm: what the engine layer
    // (locks, timeout, liveness check, framing) adds before any ring is involved.
    let engine = rt
        .block_on(SwtpmEngine::start(
            0,
            &StateDirs::new(dir.path().join("engine")),
            SwtpmConfig::default(),
        ))
        .unwrap();
    let mut paths: Vec<(&str, Path)> = vec![
        ("swtpm_direct", Path::Socket(Arc::new(direct.into()))),
        ("engine_only", Path::Engine(Arc::new(engine))),
    ];
    for (name, stack) in &stacks {
        paths.push((name, Path::Ring(stack.guests()[0].frontend().clone())));
    }
    paths.push(("v2_tpm_socket", Path::Socket(Arc::new(socket.into()))));
    let loads: Vec<Vec<u8>> = paths
        .iter()
        .map(|(_, p)| rt.block_on(p.context_load()))
        .collect();
    let load_label = format!("context_load_{}B", loads[0].len());

    let mut group = c.benchmark_group("round_trip");
    group.throughput(Throughput::Elements(1));
    for (size, cmd) in [
        ("read_clock_10B", &READ_CLOCK[..]),
        ("get_random_32", &GET_RANDOM_32[..]),
    ] {
        for (name, path) in &paths {
            group.bench_with_input(BenchmarkId::new(*name, size), &cmd, |b, cmd| {
                b.iter_custom(|iters| path.run(&rt, cmd, iters));
            });
        }
    }
    for ((name, path), load) in paths.iter().zip(&loads) {
        group.bench_with_input(BenchmarkId::new(*name, &load_label), load, |b, load| {
            b.iter_custom(|iters| path.run(&rt, load, iters));
        });
    }
    group.finish();

    let random: Vec<_> = paths
        .iter()
        .map(|(n, p)| (*n, p.clone(), GET_RANDOM_32.to_vec()))
        .collect();
    paired(&rt, "get_random_32", &random);
    let load: Vec<_> = paths
        .iter()
        .zip(&loads)
        .map(|((n, p), l)| (*n, p.clone(), l.clone()))
        .collect();
    paired(&rt, &load_label, &load);
    drop((paths, random, load));
    for (_, stack) in stacks {
        rt.block_on(stack.shutdown()).unwrap();
    }
    drop(reference);
}

criterion_group!(benches, bench);
criterion_main!(benches);
