//! The secured-message decoder facing arbitrary records: nothing may panic, nothing forged
//! opens, a refused record leaves the sequence number alone, and whatever is sealed opens.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdisp_host::spdm::crypto::KeySchedule;
use tdisp_host::spdm::secured;

const SESSION: u32 = 0xffff_0001;

fuzz_target!(|data: &[u8]| {
    let schedule = KeySchedule::new(&[7; 48], &[9; 48]);
    let mut receiver = schedule.handshake_keys();
    let _ = secured::Record::parse(data);
    // The fuzzer cannot forge a tag: an arbitrary record never opens.
    assert!(secured::open(&mut receiver.request, SESSION, data).is_err());

    // What is sealed opens to the same message, in order, even after a refused record.
    let mut sender = schedule.handshake_keys();
    let record = secured::seal(&mut sender.request, SESSION, data).expect("fits a record");
    let opened = secured::open(&mut receiver.request, SESSION, &record).expect("opens");
    assert_eq!(opened, data);
    // A replay of the same record is refused.
    assert!(secured::open(&mut receiver.request, SESSION, &record).is_err());
});
