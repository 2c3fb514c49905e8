//! An in-process TPM 2.0 engine for tests and examples.
//!
//! It implements a handful of commands exactly as the TPM 2.0 specification (part 3) marshals
//! them: `TPM2_Startup`, `TPM2_Shutdown`, `TPM2_GetRandom`, `TPM2_PCR_Read` and `TPM2_PCR_Extend`
//! (with a password session), over one SHA-256 PCR bank of 24 PCRs. Every other command code
//! gets `TPM_RC_COMMAND_CODE`. What it does not do: other PCR banks (they read as unallocated),
//! PCR locality rules (the locality is recorded, not enforced), HMAC/policy/audit sessions
//! (`TPM_RC_AUTH_CONTEXT`), persistence. Control operations follow swtpm: after `Stop` or
//! `Shutdown` commands fail until `Init`, and `Init` requires a new `TPM2_Startup`.

use super::Capabilities;
use super::ControlOp;
use super::ControlReply;
use super::CtrlResult;
use super::EngineError;
use super::TpmEngine;
use super::TpmReply;
use super::TpmRequest;
use crate::tpm_header::HeaderError;
use crate::tpm_header::TPM_HEADER_SIZE;
use crate::tpm_header::TpmCc;
use crate::tpm_header::TpmRc;
use crate::tpm_header::TpmSt;
use crate::tpm_header::error_response;
use crate::tpm_header::validate_command;
use async_trait::async_trait;
use sha2::Digest;
use sha2::Sha256;
use std::sync::Mutex;
use std::sync::PoisonError;

const PCR_COUNT: usize = 24;
const SHA256_SIZE: usize = 32;
/// `TPM_ALG_ID`s of hash algorithms.
const ALG_SHA1: u16 = 0x0004;
const ALG_SHA256: u16 = 0x000b;
const ALG_SHA384: u16 = 0x000c;
const ALG_SHA512: u16 = 0x000d;
const ALG_SM3_256: u16 = 0x0012;
const TPM_SU_CLEAR: u16 = 0;
const TPM_SU_STATE: u16 = 1;
/// The password authorization session handle.
const TPM_RS_PW: u32 = 0x4000_0009;
/// Most PCR digests one TPM2_PCR_Read returns (the spec's limit of 8 per response).
const MAX_READ_DIGESTS: usize = 8;
/// Most entries accepted in a TPML of selections or digests (one per hash algorithm).
const MAX_BANKS: u32 = 16;
/// `sizeofSelect` limit: enough octets for 32 PCRs.
const MAX_SELECT: u8 = 4;

type Pcrs = [[u8; SHA256_SIZE]; PCR_COUNT];

fn reset_pcrs() -> Pcrs {
    let mut pcrs = [[0u8; SHA256_SIZE]; PCR_COUNT];
    // PC Client: the D-RTM PCRs 17..=22 start at all ones until a D-RTM event resets them.
    for pcr in pcrs.iter_mut().take(23).skip(17) {
        *pcr = [0xff; SHA256_SIZE];
    }
    pcrs
}

fn digest_size(alg: u16) -> Option<usize> {
    match alg {
        ALG_SHA1 => Some(20),
        ALG_SHA256 | ALG_SM3_256 => Some(32),
        ALG_SHA384 => Some(48),
        ALG_SHA512 => Some(64),
        _ => None,
    }
}

/// A cursor over untrusted big-endian bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], TpmRc> {
        if self.0.len() < n {
            return Err(TpmRc::INSUFFICIENT_P1);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, TpmRc> {
        self.bytes(1)?
            .first()
            .copied()
            .ok_or(TpmRc::INSUFFICIENT_P1)
    }
    fn u16(&mut self) -> Result<u16, TpmRc> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, TpmRc> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], TpmRc> {
        let n = self.u16()?;
        self.bytes(n.into())
    }
    fn finish(&self) -> Result<(), TpmRc> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(TpmRc::SIZE_P1)
        }
    }
}

fn response(tag: TpmSt, body: &[u8]) -> Vec<u8> {
    let size = TPM_HEADER_SIZE + body.len();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&tag.0.to_be_bytes());
    // Bodies are built here and bounded far below 4 GiB.
    out.extend_from_slice(&u32::try_from(size).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&TpmRc::SUCCESS.0.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[derive(Debug)]
struct SimState {
    running: bool,
    started: bool,
    pcrs: Pcrs,
    saved: Option<Pcrs>,
    update_counter: u32,
    locality: u8,
    last_locality: u8,
}

/// The in-process TPM engine. See the module docs for what it implements.
#[derive(Debug)]
pub struct SimTpm {
    state: Mutex<SimState>,
}

impl Default for SimTpm {
    fn default() -> Self {
        Self::new()
    }
}

impl SimTpm {
    /// A powered-on TPM waiting for `TPM2_Startup` (like swtpm without `startup-clear`).
    pub fn new() -> Self {
        Self {
            state: Mutex::new(SimState {
                running: true,
                started: false,
                pcrs: reset_pcrs(),
                saved: None,
                update_counter: 0,
                locality: 0,
                last_locality: 0,
            }),
        }
    }

    /// A TPM on which `TPM2_Startup(CLEAR)` already ran (like swtpm's `startup-clear`).
    pub fn started() -> Self {
        let tpm = Self::new();
        tpm.lock().started = true;
        tpm
    }

    /// The locality of the last command executed.
    pub fn last_locality(&self) -> u8 {
        self.lock().last_locality
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Executes one command synchronously and returns the response.
    pub fn execute_command(&self, command: &[u8], locality: u8) -> Result<Vec<u8>, EngineError> {
        let mut state = self.lock();
        if !state.running {
            return Err(EngineError::NotRunning);
        }
        state.last_locality = locality;
        Ok(state.run(command).unwrap_or_else(error_response))
    }
}

impl SimState {
    fn run(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmRc> {
        let header = validate_command(command).map_err(HeaderError::response_code)?;
        let cc = TpmCc(header.code.get());
        let tag = TpmSt(header.tag.get());
        let body = command.get(TPM_HEADER_SIZE..).unwrap_or_default();
        if !self.started && cc != TpmCc::STARTUP {
            return Err(TpmRc::INITIALIZE);
        }
        let no_sessions = || {
            if tag == TpmSt::NO_SESSIONS {
                Ok(())
            } else {
                Err(TpmRc::AUTH_CONTEXT)
            }
        };
        match cc {
            TpmCc::STARTUP => {
                no_sessions()?;
                self.startup(body)
            }
            TpmCc::SHUTDOWN => {
                no_sessions()?;
                self.shutdown(body)
            }
            TpmCc::GET_RANDOM => {
                no_sessions()?;
                get_random(body)
            }
            TpmCc::PCR_READ => {
                no_sessions()?;
                self.pcr_read(body)
            }
            TpmCc::PCR_EXTEND => {
                if tag != TpmSt::SESSIONS {
                    return Err(TpmRc::AUTH_MISSING);
                }
                self.pcr_extend(body)
            }
            _ => Err(TpmRc::COMMAND_CODE),
        }
    }

    fn startup(&mut self, body: &[u8]) -> Result<Vec<u8>, TpmRc> {
        let mut r = Reader(body);
        let su = r.u16()?;
        r.finish()?;
        if self.started {
            return Err(TpmRc::INITIALIZE);
        }
        match su {
            TPM_SU_CLEAR => {
                self.pcrs = reset_pcrs();
                self.update_counter = 0;
            }
            TPM_SU_STATE => {
                self.pcrs = self.saved.ok_or(TpmRc::VALUE_P1)?;
            }
            _ => return Err(TpmRc::VALUE_P1),
        }
        self.saved = None;
        self.started = true;
        Ok(response(TpmSt::NO_SESSIONS, &[]))
    }

    fn shutdown(&mut self, body: &[u8]) -> Result<Vec<u8>, TpmRc> {
        let mut r = Reader(body);
        let su = r.u16()?;
        r.finish()?;
        self.saved = match su {
            TPM_SU_CLEAR => None,
            TPM_SU_STATE => Some(self.pcrs),
            _ => return Err(TpmRc::VALUE_P1),
        };
        Ok(response(TpmSt::NO_SESSIONS, &[]))
    }

    fn pcr_read(&self, body: &[u8]) -> Result<Vec<u8>, TpmRc> {
        let mut r = Reader(body);
        let count = r.u32()?;
        if count > MAX_BANKS {
            return Err(TpmRc::SIZE_P1);
        }
        let mut selection_out = Vec::new();
        let mut digests: Vec<&[u8; SHA256_SIZE]> = Vec::new();
        for _ in 0..count {
            let alg = r.u16()?;
            let size = r.u8()?;
            if size > MAX_SELECT {
                return Err(TpmRc::VALUE_P1);
            }
            let select = r.bytes(size.into())?;
            digest_size(alg).ok_or(TpmRc::HASH_P1)?;
            let mut out_bits = vec![0u8; size.into()];
            if alg == ALG_SHA256 {
                for (byte_index, byte) in select.iter().enumerate() {
                    for bit in 0..8 {
                        let pcr = byte_index * 8 + bit;
                        if byte & (1 << bit) == 0 || digests.len() >= MAX_READ_DIGESTS {
                            continue;
                        }
                        if let (Some(value), Some(out)) =
                            (self.pcrs.get(pcr), out_bits.get_mut(byte_index))
                        {
                            digests.push(value);
                            *out |= 1 << bit;
                        }
                    }
                }
            }
            selection_out.extend_from_slice(&alg.to_be_bytes());
            selection_out.push(size);
            selection_out.extend_from_slice(&out_bits);
        }
        r.finish()?;
        let mut body = Vec::new();
        body.extend_from_slice(&self.update_counter.to_be_bytes());
        body.extend_from_slice(&count.to_be_bytes());
        body.extend_from_slice(&selection_out);
        body.extend_from_slice(&(digests.len() as u32).to_be_bytes());
        for d in digests {
            body.extend_from_slice(&(SHA256_SIZE as u16).to_be_bytes());
            body.extend_from_slice(d);
        }
        Ok(response(TpmSt::NO_SESSIONS, &body))
    }

    fn pcr_extend(&mut self, body: &[u8]) -> Result<Vec<u8>, TpmRc> {
        let mut r = Reader(body);
        let handle = r.u32()?;
        let auth_size = r.u32()?;
        let auth = r.bytes(usize::try_from(auth_size).map_err(|_| TpmRc::SIZE_P1)?)?;
        let mut a = Reader(auth);
        let session = a.u32()?;
        let _nonce = a.tpm2b()?;
        let attributes = a.u8()?;
        let password = a.tpm2b()?;
        if session != TPM_RS_PW {
            return Err(TpmRc::HANDLE_S1);
        }
        if !a.0.is_empty() {
            // A second session (audit/encrypt) is not implemented here.
            return Err(TpmRc::AUTH_CONTEXT);
        }
        let pcr = usize::try_from(handle)
            .ok()
            .filter(|h| *h < PCR_COUNT)
            .ok_or(TpmRc::VALUE_H1)?;
        // PCR authValue is the empty buffer.
        if !password.is_empty() {
            return Err(TpmRc::AUTH_FAIL_S1);
        }
        let count = r.u32()?;
        if count > MAX_BANKS {
            return Err(TpmRc::SIZE_P1);
        }
        let mut sha256_digests = Vec::new();
        for _ in 0..count {
            let alg = r.u16()?;
            let size = digest_size(alg).ok_or(TpmRc::HASH_P1)?;
            let digest = r.bytes(size)?;
            if alg == ALG_SHA256 {
                sha256_digests.push(digest);
            }
        }
        r.finish()?;
        // Parse fully before changing anything: a malformed command leaves the PCR untouched.
        let value = self.pcrs.get_mut(pcr).ok_or(TpmRc::VALUE_H1)?;
        for digest in sha256_digests {
            let mut h = Sha256::new();
            h.update(*value);
            h.update(digest);
            value.copy_from_slice(&h.finalize());
        }
        self.update_counter = self.update_counter.wrapping_add(1);
        // parameterSize 0, then the password session's response: empty nonce, the
        // continueSession attribute echoed, empty hmac.
        let body = [0, 0, 0, 0, 0, 0, attributes & 0x01, 0, 0];
        Ok(response(TpmSt::SESSIONS, &body))
    }
}

fn get_random(body: &[u8]) -> Result<Vec<u8>, TpmRc> {
    let mut r = Reader(body);
    let requested = r.u16()?;
    r.finish()?;
    // A TPM returns at most the size of its largest digest.
    let n = usize::from(requested).min(SHA256_SIZE);
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|_| TpmRc::FAILURE)?;
    let mut out = Vec::with_capacity(2 + n);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(response(TpmSt::NO_SESSIONS, &out))
}

#[async_trait]
impl TpmEngine for SimTpm {
    async fn execute(&self, request: TpmRequest) -> Result<TpmReply, EngineError> {
        match request {
            TpmRequest::Command { command, locality } => self
                .execute_command(&command, locality)
                .map(TpmReply::Response),
            TpmRequest::Control(op) => {
                let mut state = self.lock();
                let reply = match op {
                    ControlOp::Init { delete_volatile } => {
                        state.running = true;
                        state.started = false;
                        if delete_volatile {
                            state.saved = None;
                        }
                        ControlReply::Done
                    }
                    ControlOp::Shutdown | ControlOp::Stop => {
                        state.running = false;
                        ControlReply::Done
                    }
                    ControlOp::SetLocality(l) if l <= 4 => {
                        state.locality = l;
                        ControlReply::Done
                    }
                    ControlOp::SetLocality(_) | ControlOp::ResetTpmEstablished(5..) => {
                        return Err(EngineError::Refused(CtrlResult::BAD_LOCALITY));
                    }
                    // Commands run to completion under the lock: there is never one to cancel.
                    ControlOp::CancelCommand => ControlReply::Done,
                    // No D-RTM here, so the flag is never set.
                    ControlOp::GetTpmEstablished => ControlReply::TpmEstablished(false),
                    ControlOp::ResetTpmEstablished(_) => ControlReply::Done,
                    // Nothing persists, so there is nothing to store.
                    ControlOp::StoreVolatile => ControlReply::Done,
                    ControlOp::GetCapability => ControlReply::Capabilities(
                        Capabilities::new()
                            .with_init(true)
                            .with_shutdown(true)
                            .with_get_tpm_established(true)
                            .with_set_locality(true)
                            .with_cancel_tpm_cmd(true)
                            .with_store_volatile(true)
                            .with_reset_tpm_established(true)
                            .with_stop(true),
                    ),
                    ControlOp::GetStateBlob { .. }
                    | ControlOp::SetStateBlob { .. }
                    | ControlOp::GetConfig
                    | ControlOp::SetBufferSize(_) => {
                        return Err(EngineError::Unsupported(op.cmd()));
                    }
                };
                Ok(TpmReply::Control(reply))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm_header::response_code;
    use tpm2_protocol::data::TpmCc as Cc;
    use tpm2_protocol::frame::TpmCommand;
    use tpm2_protocol::frame::TpmGetRandomResponse;
    use tpm2_protocol::frame::TpmPcrExtendCommand;
    use tpm2_protocol::frame::TpmPcrReadCommand;
    use tpm2_protocol::frame::TpmPcrReadResponse;
    use tpm2_protocol::frame::TpmResponse;

    const STARTUP_CLEAR: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];
    const GET_RANDOM_16: [u8; 12] = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 16];
    /// PCR_Read of sha256 PCRs 0, 1 and 16: selection 03 00 01.
    const PCR_READ_0_1_16: [u8; 20] = [
        0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0, 0x0b, 3, 0x03, 0x00, 0x01,
    ];

    /// PCR_Extend(pcr, sha256 digest) with an empty password session.
    fn pcr_extend(pcr: u32, digest: [u8; 32]) -> Vec<u8> {
        let mut c = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x82];
        c.extend_from_slice(&pcr.to_be_bytes());
        c.extend_from_slice(&9u32.to_be_bytes());
        c.extend_from_slice(&[0x40, 0, 0, 0x09, 0, 0, 0x01, 0, 0]);
        c.extend_from_slice(&1u32.to_be_bytes());
        c.extend_from_slice(&0x000bu16.to_be_bytes());
        c.extend_from_slice(&digest);
        let len = c.len() as u32;
        c[2..6].copy_from_slice(&len.to_be_bytes());
        c
    }

    fn run(tpm: &SimTpm, c: &[u8]) -> Vec<u8> {
        tpm.execute_command(c, 0).unwrap()
    }

    #[test]
    fn test_vectors_are_valid_per_tpm2_protocol() {
        TpmCommand::cast(&PCR_READ_0_1_16)
            .unwrap()
            .unmarshal::<TpmPcrReadCommand>()
            .unwrap();
        let ext = pcr_extend(3, [1; 32]);
        let parsed = TpmCommand::cast(&ext)
            .unwrap()
            .unmarshal::<TpmPcrExtendCommand>()
            .unwrap();
        assert_eq!(parsed.handles[0].value(), 3);
    }

    #[test]
    fn commands_before_startup_get_initialize() {
        let tpm = SimTpm::new();
        assert_eq!(
            response_code(&run(&tpm, &GET_RANDOM_16)),
            Some(TpmRc::INITIALIZE)
        );
        assert_eq!(
            run(&tpm, &STARTUP_CLEAR),
            [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0]
        );
        assert_eq!(
            response_code(&run(&tpm, &STARTUP_CLEAR)),
            Some(TpmRc::INITIALIZE)
        );
    }

    #[test]
    fn get_random_marshals_a_tpm2b() {
        let tpm = SimTpm::started();
        let r = run(&tpm, &GET_RANDOM_16);
        let view = TpmResponse::cast(&r).unwrap();
        view.validate(Cc::GetRandom).unwrap();
        let parsed = view.unmarshal::<TpmGetRandomResponse>().unwrap();
        assert_eq!(parsed.random_bytes.len(), 16);
        assert_eq!(r.len(), 10 + 2 + 16);
        let again = run(&tpm, &GET_RANDOM_16);
        assert_ne!(r[12..], again[12..]);
    }

    #[test]
    fn get_random_caps_at_digest_size() {
        let tpm = SimTpm::started();
        let mut c = GET_RANDOM_16;
        c[11] = 200;
        let r = run(&tpm, &c);
        assert_eq!(u16::from_be_bytes([r[10], r[11]]), 32);
    }

    #[test]
    fn pcr_extend_then_read_matches_sha256_chain() {
        let tpm = SimTpm::started();
        let digest = [0xab; 32];
        let r = run(&tpm, &pcr_extend(16, digest));
        assert_eq!(
            r,
            [
                0x80, 0x02, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0
            ]
        );
        TpmResponse::cast(&r)
            .unwrap()
            .validate(Cc::PcrExtend)
            .unwrap();
        let expected: [u8; 32] = Sha256::new()
            .chain_update([0u8; 32])
            .chain_update(digest)
            .finalize()
            .into();
        let r = run(&tpm, &PCR_READ_0_1_16);
        let view = TpmResponse::cast(&r).unwrap();
        view.validate(Cc::PcrRead).unwrap();
        let parsed = view.unmarshal::<TpmPcrReadResponse>().unwrap();
        assert_eq!(u32::from(parsed.pcr_update_counter), 1);
        assert_eq!(parsed.pcr_values.len(), 3);
        assert_eq!(&parsed.pcr_values[0][..], &[0u8; 32]);
        assert_eq!(&parsed.pcr_values[2][..], &expected);
        assert_eq!(
            &*parsed.pcr_selection_out[0].pcr_select,
            &[0x03, 0x00, 0x01]
        );
    }

    #[test]
    fn pcr_read_of_unallocated_bank_returns_empty_selection() {
        let tpm = SimTpm::started();
        let mut c = PCR_READ_0_1_16;
        c[15] = 0x04; // sha1
        let r = run(&tpm, &c);
        let parsed = TpmResponse::cast(&r)
            .unwrap()
            .unmarshal::<TpmPcrReadResponse>()
            .unwrap();
        assert_eq!(parsed.pcr_values.len(), 0);
        assert_eq!(&*parsed.pcr_selection_out[0].pcr_select, &[0, 0, 0]);
    }

    #[test]
    fn pcr_read_caps_at_eight_digests() {
        let tpm = SimTpm::started();
        let mut c = PCR_READ_0_1_16;
        c[17..20].copy_from_slice(&[0xff, 0xff, 0xff]);
        let r = run(&tpm, &c);
        let parsed = TpmResponse::cast(&r)
            .unwrap()
            .unmarshal::<TpmPcrReadResponse>()
            .unwrap();
        assert_eq!(parsed.pcr_values.len(), 8);
        assert_eq!(&*parsed.pcr_selection_out[0].pcr_select, &[0xff, 0, 0]);
    }

    #[test]
    fn malformed_commands_get_precise_codes() {
        let tpm = SimTpm::started();
        let mut no_auth = pcr_extend(0, [0; 32]);
        no_auth[1] = 0x01;
        assert_eq!(
            response_code(&run(&tpm, &no_auth)),
            Some(TpmRc::AUTH_MISSING)
        );
        assert_eq!(
            response_code(&run(&tpm, &pcr_extend(24, [0; 32]))),
            Some(TpmRc::VALUE_H1)
        );
        let mut unknown_alg = pcr_extend(0, [0; 32]);
        unknown_alg[31..33].copy_from_slice(&[0x12, 0x34]);
        assert_eq!(
            response_code(&run(&tpm, &unknown_alg)),
            Some(TpmRc::HASH_P1)
        );
        let mut trailing = GET_RANDOM_16.to_vec();
        trailing.push(0);
        trailing[5] = 13;
        assert_eq!(response_code(&run(&tpm, &trailing)), Some(TpmRc::SIZE_P1));
        let unknown_cc = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x99];
        assert_eq!(
            response_code(&run(&tpm, &unknown_cc)),
            Some(TpmRc::COMMAND_CODE)
        );
    }

    #[test]
    fn shutdown_state_then_startup_state_keeps_pcrs() {
        let tpm = SimTpm::started();
        run(&tpm, &pcr_extend(0, [5; 32]));
        let before = run(&tpm, &PCR_READ_0_1_16);
        let shutdown_state = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x45, 0, 1];
        assert_eq!(
            response_code(&run(&tpm, &shutdown_state)),
            Some(TpmRc::SUCCESS)
        );
        futures::executor::block_on(tpm.control(ControlOp::Init {
            delete_volatile: false,
        }))
        .unwrap();
        let mut startup_state = STARTUP_CLEAR;
        startup_state[11] = 1;
        assert_eq!(
            response_code(&run(&tpm, &startup_state)),
            Some(TpmRc::SUCCESS)
        );
        let after = run(&tpm, &PCR_READ_0_1_16);
        // The update counter restarts, values survive.
        assert_eq!(before[14..], after[14..]);
    }

    #[test]
    fn startup_clear_resets_pcrs_after_init() {
        let tpm = SimTpm::started();
        run(&tpm, &pcr_extend(0, [5; 32]));
        futures::executor::block_on(tpm.control(ControlOp::Init {
            delete_volatile: true,
        }))
        .unwrap();
        run(&tpm, &STARTUP_CLEAR);
        let r = run(&tpm, &PCR_READ_0_1_16);
        let parsed = TpmResponse::cast(&r)
            .unwrap()
            .unmarshal::<TpmPcrReadResponse>()
            .unwrap();
        assert_eq!(&parsed.pcr_values[0][..], &[0u8; 32]);
    }

    #[test]
    fn stopped_engine_refuses_commands_until_init() {
        let tpm = SimTpm::started();
        futures::executor::block_on(tpm.control(ControlOp::Stop)).unwrap();
        assert_eq!(
            tpm.execute_command(&GET_RANDOM_16, 0).unwrap_err(),
            EngineError::NotRunning
        );
        futures::executor::block_on(tpm.control(ControlOp::Init {
            delete_volatile: false,
        }))
        .unwrap();
        assert_eq!(
            response_code(&run(&tpm, &GET_RANDOM_16)),
            Some(TpmRc::INITIALIZE)
        );
    }
}
