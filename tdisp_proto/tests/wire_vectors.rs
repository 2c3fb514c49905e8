//! Golden vectors of the guest<->host protocol (OpenVMM's `tdisp.proto`): one raw protobuf
//! file per command variant and per response variant in `tests/vectors/`, named for the
//! variant. The bytes were produced by `protoc --encode` from the `.txtpb` beside each (with
//! `tests/vectors/tdisp.proto`), not by this crate. Each test decodes the file into the typed
//! value written here and checks that encoding gives the same bytes back; a second test has
//! protoc decode every vector when protoc is installed.

#![forbid(unsafe_code)]
#![expect(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail the test by panicking"
)]

use std::path::Path;
use std::path::PathBuf;
use tdisp_proto::TdispDeviceInterfaceInfo;
use tdisp_proto::TdispGuestOperationError;
use tdisp_proto::TdispGuestProtocolType;
use tdisp_proto::TdispGuestUnbindReason;
use tdisp_proto::TdispReportType;
use tdisp_proto::TdispTdiState;
use tdisp_proto::wire::CommandPacket;
use tdisp_proto::wire::GuestCommand;
use tdisp_proto::wire::GuestReply;
use tdisp_proto::wire::ResponsePacket;

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(vectors().join(format!("{name}.bin"))).expect("vector file")
}

fn commands() -> Vec<(&'static str, GuestCommand)> {
    vec![
        (
            "command_get_device_interface_info",
            GuestCommand::NegotiateProtocol(TdispGuestProtocolType::AmdSevTioV1),
        ),
        ("command_bind", GuestCommand::LockDeviceResources),
        (
            "command_get_tdi_report",
            GuestCommand::GetAttestationReport(TdispReportType::InterfaceReport),
        ),
        (
            "command_get_tdi_report_nonce",
            GuestCommand::GetFreshAttestationReport {
                report_type: TdispReportType::Measurements,
                nonce: std::array::from_fn(|i| i as u8),
            },
        ),
        ("command_start_tdi", GuestCommand::StartTdi),
        (
            "command_unbind",
            GuestCommand::Unbind(TdispGuestUnbindReason::Graceful),
        ),
    ]
}

fn response(
    before: TdispTdiState,
    after: TdispTdiState,
    result: Result<GuestReply, TdispGuestOperationError>,
) -> ResponsePacket {
    ResponsePacket {
        state_before: before,
        state_after: after,
        result,
    }
}

fn responses() -> Vec<(&'static str, ResponsePacket)> {
    use TdispTdiState::*;
    let mut report = vec![0; 16];
    report[0] = 1;
    report[12] = 1;
    vec![
        (
            "response_get_device_interface_info",
            response(
                Uninitialized,
                Unlocked,
                Ok(GuestReply::NegotiateProtocol(TdispDeviceInterfaceInfo {
                    guest_protocol_type: TdispGuestProtocolType::AmdSevTioV1,
                    supported_features: 0,
                    tdisp_device_id: 7,
                })),
            ),
        ),
        (
            "response_bind",
            response(Unlocked, Locked, Ok(GuestReply::LockDeviceResources)),
        ),
        (
            "response_get_tdi_report",
            response(
                Locked,
                Locked,
                Ok(GuestReply::GetAttestationReport {
                    report_type: TdispReportType::InterfaceReport,
                    report,
                }),
            ),
        ),
        (
            "response_start_tdi",
            response(Locked, Run, Ok(GuestReply::StartTdi)),
        ),
        (
            "response_unbind",
            response(Run, Unlocked, Ok(GuestReply::Unbind)),
        ),
        (
            "response_error_invalid_device_state",
            response(
                Locked,
                Unlocked,
                Err(TdispGuestOperationError::InvalidDeviceState),
            ),
        ),
    ]
}

#[test]
fn every_command_vector_decodes_to_its_variant_and_reencodes_byte_for_byte() {
    for (name, command) in commands() {
        let bytes = read(name);
        let expected = CommandPacket {
            device_id: 7,
            command,
        };
        assert_eq!(CommandPacket::decode(&bytes), Ok(expected), "{name}");
        assert_eq!(expected.encode(), bytes, "{name}");
    }
}

#[test]
fn every_response_vector_decodes_to_its_variant_and_reencodes_byte_for_byte() {
    for (name, expected) in responses() {
        let bytes = read(name);
        assert_eq!(
            ResponsePacket::decode(&bytes).as_ref(),
            Ok(&expected),
            "{name}"
        );
        assert_eq!(expected.encode().unwrap(), bytes, "{name}");
    }
}

#[test]
fn vectors_cover_every_variant_and_nothing_else() {
    let mut on_disk: Vec<String> = std::fs::read_dir(vectors())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".bin").map(str::to_owned))
        .collect();
    on_disk.sort();
    let mut named: Vec<String> = commands()
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(responses().iter().map(|(n, _)| n.to_string()))
        .collect();
    named.sort();
    assert_eq!(on_disk, named);
}

/// The protoc to run, or `None` (with a note naming `skipping`) when none is installed.
fn protoc(skipping: &str) -> Option<std::ffi::OsString> {
    let protoc = std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
    if std::process::Command::new(&protoc)
        .arg("--version")
        .output()
        .is_err()
    {
        println!("note: protoc not on PATH; skipping {skipping}");
        return None;
    }
    Some(protoc)
}

/// Every vector's name with the schema message it holds.
fn named_messages() -> impl Iterator<Item = (&'static str, &'static str)> {
    commands()
        .into_iter()
        .map(|(n, _)| (n, "tdisp.GuestToHostCommand"))
        .chain(
            responses()
                .into_iter()
                .map(|(n, _)| (n, "tdisp.GuestToHostResponse")),
        )
}

/// `protoc --{mode}={message}` of the vector file `file` with the vectors' schema: its output.
fn run_protoc(protoc: &std::ffi::OsStr, mode: &str, message: &str, file: &str) -> Vec<u8> {
    let dir = vectors();
    let input = std::fs::File::open(dir.join(file)).expect("vector file");
    let output = std::process::Command::new(protoc)
        .arg(format!("--{mode}={message}"))
        .arg("--proto_path")
        .arg(&dir)
        .arg("tdisp.proto")
        .stdin(input)
        .output()
        .expect("protoc runs");
    assert!(
        output.status.success(),
        "protoc --{mode} of {file}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn protoc_decodes_every_vector_with_the_schema() {
    let Some(protoc) = protoc("the protoc decode of the golden vectors") else {
        return;
    };
    for (name, message) in named_messages() {
        let output = run_protoc(&protoc, "decode", message, &format!("{name}.bin"));
        let text = String::from_utf8_lossy(&output);
        let expected = std::fs::read_to_string(vectors().join(format!("{name}.txtpb"))).unwrap();
        // Every field and enum name of the text source appears in protoc's rendering.
        for field in expected
            .split_whitespace()
            .filter(|w| w.ends_with(':') || w.starts_with("TDISP_"))
        {
            assert!(
                text.contains(field),
                "{name}: protoc output lacks {field}\n{text}"
            );
        }
    }
}

/// The vectors are protoc's own encoding of their text sources, and protoc finds no field in
/// them that the schema does not name (an unknown field would print as a bare number).
#[test]
fn protoc_encodes_every_text_source_to_its_vector_and_sees_no_unknown_field() {
    let Some(protoc) = protoc("the protoc encode of the text sources") else {
        return;
    };
    for (name, message) in named_messages() {
        assert_eq!(
            run_protoc(&protoc, "encode", message, &format!("{name}.txtpb")),
            read(name),
            "{name}: protoc encodes the text source to other bytes"
        );
        let decoded = String::from_utf8(run_protoc(
            &protoc,
            "decode",
            message,
            &format!("{name}.bin"),
        ))
        .unwrap();
        assert!(
            !decoded
                .lines()
                .any(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())),
            "{name}: protoc sees a field the schema does not name\n{decoded}"
        );
    }
}

/// `GetTdiReport` as OpenVMM's schema has it: no field 2.
#[derive(Clone, PartialEq, prost::Message)]
struct OpenVmmGetTdiReport {
    #[prost(int32, tag = "1")]
    report_type: i32,
}

#[test]
fn the_nonce_extension_is_skipped_by_a_decoder_without_it_and_refused_at_other_lengths() {
    use prost::Message;
    // The command vector's get_tdi_report body: tag 4 (0x22), length, then the request.
    let bytes = read("command_get_tdi_report_nonce");
    let body = &bytes[4..];
    assert_eq!(usize::from(bytes[3]), body.len());
    let openvmm = OpenVmmGetTdiReport::decode(body).expect("unknown field skipped");
    assert_eq!(openvmm.report_type, 4);

    for length in [1, 31, 33, 64] {
        let mut message = CommandPacket {
            device_id: 7,
            command: GuestCommand::GetAttestationReport(TdispReportType::Measurements),
        }
        .to_proto();
        if let Some(tdisp_proto::wire::proto::guest_to_host_command::Command::GetTdiReport(r)) =
            &mut message.command
        {
            r.nonce = vec![0xa5; length];
        }
        assert_eq!(
            CommandPacket::decode(&message.encode_to_vec()),
            Err(tdisp_proto::wire::WireError::NonceLength(length)),
            "{length}"
        );
    }
}
