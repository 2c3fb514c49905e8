//! A real Linux guest's TPM through the ring: QEMU's `-tpmdev emulator` talks to our
//! [`QemuSocket`](vtpm_ring::qemu::QemuSocket) as if it were swtpm, and every TPM command and
//! power operation travels frontend -> shared pages -> backend -> manager -> the instance's
//! swtpm.
//!
//! The guest is Debian's kernel with a busybox initramfs whose init prints the TPM version
//! the kernel found, sends TPM2_GetRandom through /dev/tpm0 and prints the reply. Needs
//! `qemu-system-x86_64`, a kernel in /boot, busybox-static and swtpm (`cargo xtask deps`
//! installs them); without them the tests skip, except under CI, where they fail. TCG, or
//! KVM when /dev/kvm works.

#![forbid(unsafe_code)]
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests fail by panicking")]

use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::process::Command;
use tokio::sync::mpsc;
use vtpm_ring::engine::SwtpmEngine;
use vtpm_ring::engine::TpmEngine;
use vtpm_ring::stack::StackConfig;
use vtpm_ring::stack::VtpmStack;
use vtpm_ring::tpm_header::TpmRc;
use vtpm_ring::tpm_header::response_code;

const MARK: &str = "VTPM-GUEST";
/// How long one boot may take under TCG (about 8 s here).
const BOOT: Duration = Duration::from_secs(90);

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

fn find_kernel() -> Option<PathBuf> {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    kernels.sort();
    kernels.pop()
}

struct Tools {
    qemu: PathBuf,
    kernel: PathBuf,
    busybox: PathBuf,
}

/// The tools, or `None` (skip) when one is missing outside CI.
fn tools() -> Option<Tools> {
    let found = (|| {
        Some(Tools {
            qemu: which("qemu-system-x86_64")?,
            kernel: find_kernel()?,
            busybox: ["/bin/busybox", "/usr/bin/busybox"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())?,
        })
    })();
    let have_swtpm = which("swtpm").is_some();
    match (found, have_swtpm) {
        (Some(t), true) => Some(t),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!(
                "the QEMU guest test needs qemu-system-x86_64, a /boot kernel, busybox and swtpm"
            )
        }
        _ => {
            eprintln!("skipping: qemu-system-x86_64, a /boot kernel, busybox or swtpm missing");
            None
        }
    }
}

fn kvm_usable() -> bool {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    (cpu.contains(" vmx") || cpu.contains(" svm"))
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// The guest's /init: report the TPM the kernel found, TPM2_GetRandom(16) through /dev/tpm0,
/// then wait (the host reads PCRs and resets or stops the machine).
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
exec 0</dev/console 1>/dev/console 2>&1
echo "VTPM-GUEST driver $(dmesg | grep -m1 'tpm_tis.*TPM')"
echo "VTPM-GUEST version $(cat /sys/class/tpm/tpm0/tpm_version_major 2>/dev/null || echo none)"
printf '\200\001\000\000\000\014\000\000\001\173\000\020' > /tmp/cmd
exec 3<>/dev/tpm0
cat /tmp/cmd >&3
dd bs=4096 count=1 <&3 2>/dev/null | od -An -tx1 -v | tr -d ' \n' > /tmp/rsp
exec 3<&-
echo "VTPM-GUEST getrandom $(cat /tmp/rsp)"
echo "VTPM-GUEST ready"
while true; do sleep 60; done
"#;

/// Builds the initramfs with busybox's own cpio writer.
async fn initramfs(tools: &Tools, dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for d in ["bin", "dev", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&tools.busybox, root.join("bin/busybox")).unwrap();
    let init = root.join("init");
    std::fs::write(&init, INIT).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = dir.join("initrd.cpio");
    let mut cpio = Command::new(&tools.busybox)
        .args(["cpio", "-o", "-H", "newc", "-F"])
        .arg(&out)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let list = "bin\nbin/busybox\ndev\nproc\nsys\ntmp\ninit\n";
    cpio.stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .await
        .unwrap();
    let status = cpio.wait().await.unwrap();
    assert!(status.success(), "busybox cpio failed");
    out
}

/// A running QEMU whose serial console lines arrive on `console`.
struct Guest {
    child: Child,
    console: mpsc::UnboundedReceiver<String>,
    monitor: PathBuf,
    log: Vec<String>,
}

impl Guest {
    async fn start(
        tools: &Tools,
        initrd: &Path,
        tpm_socket: &Path,
        name: &str,
        dir: &Path,
    ) -> Self {
        let monitor = dir.join(format!("{name}.monitor"));
        let mut child = Command::new(&tools.qemu)
            .args(["-accel", if kvm_usable() { "kvm" } else { "tcg" }])
            .args(["-m", "256", "-display", "none", "-serial", "stdio"])
            .args(["-nodefaults", "-no-user-config"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-kernel")
            .arg(&tools.kernel)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-smbios")
            .arg(format!("type=1,serial={name}"))
            .arg("-chardev")
            .arg(format!("socket,id=chrtpm,path={}", tpm_socket.display()))
            .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
            .args(["-device", "tpm-tis,tpmdev=tpm0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, console) = mpsc::unbounded_channel();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                eprintln!("qemu: {line}");
            }
        });
        Self {
            child,
            console,
            monitor,
            log: Vec::new(),
        }
    }

    /// The rest of the first console line starting with `MARK key`, within one boot's time.
    async fn expect(&mut self, key: &str) -> String {
        let prefix = format!("{MARK} {key}");
        let wait = async {
            while let Some(line) = self.console.recv().await {
                let line = line.trim_end_matches('\r').to_owned();
                self.log.push(line.clone());
                if let Some(rest) = line.strip_prefix(&prefix) {
                    return Some(rest.trim().to_owned());
                }
            }
            None
        };
        match tokio::time::timeout(BOOT, wait).await {
            Ok(Some(rest)) => rest,
            _ => panic!(
                "no `{prefix}` on the console; console so far:\n{}",
                self.log.join("\n")
            ),
        }
    }

    async fn monitor(&self, command: &str) {
        let mut stream = tokio::net::UnixStream::connect(&self.monitor)
            .await
            .unwrap();
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        // Let the monitor read the line before the connection goes.
        let mut banner = [0u8; 256];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            use tokio::io::AsyncReadExt;
            let mut seen = Vec::new();
            while let Ok(n) = stream.read(&mut banner).await {
                if n == 0 {
                    break;
                }
                seen.extend_from_slice(&banner[..n]);
                if String::from_utf8_lossy(&seen).matches("(qemu)").count() >= 2 {
                    break;
                }
            }
        })
        .await;
    }

    /// Checks what one boot printed: a TPM 2.0 and a successful GetRandom(16).
    async fn booted_with_tpm(&mut self) {
        // The driver's own line, e.g. `tpm_tis MSFT0101:00: 2.0 TPM (device-id 0x1, rev-id 1)`.
        let driver = self.expect("driver").await;
        assert!(
            driver.contains("tpm_tis") && driver.contains("2.0 TPM"),
            "{driver}"
        );
        assert_eq!(self.expect("version").await, "2", "kernel's TPM version");
        let reply = self.expect("getrandom").await;
        // tag 8001, size 0x1c, TPM_RC_SUCCESS, 16 random bytes.
        assert_eq!(reply.len(), 2 * 28, "GetRandom reply {reply}");
        assert!(reply.starts_with("80010000001c000000000010"), "{reply}");
        self.expect("ready").await;
    }

    async fn stop(mut self) {
        self.monitor("quit").await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// TPM2_PCR_Read of sha256 PCRs 0..=7, sent straight to the engine (host side).
async fn pcrs(engine: &Arc<SwtpmEngine>) -> Vec<Vec<u8>> {
    let command = vec![
        0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0, 0x0b, 3, 0xff, 0, 0,
    ];
    let response = engine.command(command, 0).await.unwrap();
    assert_eq!(response_code(&response), Some(TpmRc::SUCCESS));
    // header, update counter, the selection echoed (4 + 2 + 1 + 3), digest count.
    let mut at = 10 + 4 + 10;
    let count = u32::from_be_bytes(response[at..at + 4].try_into().unwrap());
    at += 4;
    let mut out = Vec::new();
    for _ in 0..count {
        let len = usize::from(u16::from_be_bytes([response[at], response[at + 1]]));
        out.push(response[at + 2..at + 2 + len].to_vec());
        at += 2 + len;
    }
    assert_eq!(out.len(), 8, "eight sha256 PCRs");
    out
}

fn workdir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("vtpm-qemu-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn stack(dir: &Path, sockets: &[&str]) -> VtpmStack {
    let mut config = StackConfig::new(dir.join("state"), 0);
    config.qemu_sockets = sockets.iter().map(|s| dir.join(s)).collect();
    VtpmStack::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linux_guest_uses_its_vtpm_through_the_ring_and_survives_a_reset() {
    let Some(tools) = tools() else { return };
    let dir = workdir("reset");
    let initrd = initramfs(&tools, &dir).await;
    let stack = stack(&dir, &["tpm.sock"]).await;
    let guest_tpm = &stack.qemu_guests()[0];
    let engine = stack.engine(guest_tpm.instance()).unwrap().clone();

    let mut guest = Guest::start(&tools, &initrd, guest_tpm.path(), "guest-a", &dir).await;
    guest.booted_with_tpm().await;
    // SeaBIOS measured the boot into this guest's swtpm.
    let first = pcrs(&engine).await;
    let zero = vec![0u8; 32];
    assert!(
        first.iter().all(|p| *p != zero),
        "PCRs 0-7 extended: {first:02x?}"
    );

    // A guest reset: QEMU sends STOP / SET_BUFFERSIZE / INIT through the ring, so the second
    // boot measures into a freshly reset TPM and ends with the same PCRs (without the reset
    // they would be extended twice).
    guest.monitor("system_reset").await;
    guest.booted_with_tpm().await;
    let second = pcrs(&engine).await;
    assert_eq!(first, second, "the second boot started from reset PCRs");

    guest.stop().await;
    stack.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_at_once_each_measure_into_their_own_vtpm() {
    let Some(tools) = tools() else { return };
    let dir = workdir("two");
    let initrd = initramfs(&tools, &dir).await;
    let stack = stack(&dir, &["a.sock", "b.sock"]).await;
    let (ga, gb) = (&stack.qemu_guests()[0], &stack.qemu_guests()[1]);
    assert_ne!(ga.instance(), gb.instance());
    let mut a = Guest::start(&tools, &initrd, ga.path(), "guest-a", &dir).await;
    let mut b = Guest::start(&tools, &initrd, gb.path(), "guest-b", &dir).await;
    futures::join!(a.booted_with_tpm(), b.booted_with_tpm());
    let pa = pcrs(stack.engine(ga.instance()).unwrap()).await;
    let pb = pcrs(stack.engine(gb.instance()).unwrap()).await;
    // Their SMBIOS tables differ (serial numbers), and SeaBIOS measures them into PCR 1.
    assert_ne!(
        pa[1], pb[1],
        "each guest's measurements landed in its own TPM"
    );
    assert_eq!(pa[0], pb[0], "same firmware, same PCR 0");
    futures::join!(a.stop(), b.stop());
    stack.shutdown().await.unwrap();
}
