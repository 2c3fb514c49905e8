//! The emulated device's IDE_KM decoder and key slots facing a hostile requester: the input is
//! split into requests (length-prefixed), each handled in turn. Nothing may panic; every
//! answer is the ack its request's object calls for, echoing its stream, key/substream and
//! port; a refused request changes no key slot; K_SET_STOP always empties its slot.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use tdisp_host::dsm::ide_km::IdeKmDevice;
use tdisp_host::dsm::ide_km::IdeKmRequest;

fuzz_target!(|data: &[u8]| {
    let mut device = IdeKmDevice::new();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len).min(tail.len());
        let (request, tail) = tail.split_at(len);
        rest = tail;
        let _ = IdeKmRequest::parse(request);
        let before = device.programmed();
        match device.handle(request) {
            Ok(response) => {
                let expected = match request[0] {
                    0x00 => 0x01,
                    0x02 => 0x03,
                    0x04 | 0x05 => 0x06,
                    other => panic!("answered object {other:#04x}"),
                };
                assert_eq!(response[0], expected);
                if expected != 0x01 {
                    assert_eq!(response.len(), 7);
                    // Stream id, key/substream and port are echoed.
                    assert_eq!(response[3], request[3]);
                    assert_eq!(response[5..7], request[5..7]);
                }
                if request[0] == 0x02 && response[4] != 0 {
                    assert_eq!(device.programmed(), before, "refused KEY_PROG kept a key");
                }
                if request[0] == 0x05 {
                    assert!(device.programmed() <= before);
                }
            }
            Err(_) => assert_eq!(device.programmed(), before, "refused request changed slots"),
        }
    }
});
