//! GPADL requests from a hostile guest: parsing and validation never panic, accepted GPADLs
//! only name pages inside guest memory and rebuild the same request, and the map's views and
//! teardowns stay consistent.

#![forbid(unsafe_code)]
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus_channel::bus::GpadlRequest;
use vmbus_channel::gpadl::Gpadl;
use vmbus_channel::gpadl::GpadlMap;
use vmbus_channel::memory::GuestMemory;
use vmbus_channel::memory::PAGE_SIZE;
use vmbus_channel::protocol::GpadlId;

fuzz_target!(|input: (u16, Vec<u64>, u32)| {
    let (count, buf, ring_offset) = input;
    let mem = GuestMemory::new(32 * PAGE_SIZE).unwrap();
    let request = GpadlRequest {
        id: GpadlId(1),
        count,
        buf,
    };
    let Ok(gpadl) = Gpadl::new(&request, &mem) else {
        return;
    };
    for range in gpadl.ranges() {
        for &pfn in &range.pfns {
            assert!(pfn < 32);
        }
    }
    assert_eq!(gpadl.to_request(), request);
    let _ = gpadl.ring_pages(ring_offset);

    let map = GpadlMap::new();
    map.add(gpadl.clone()).unwrap();
    assert!(map.add(gpadl).is_err());
    let view = map.view(GpadlId(1)).unwrap();
    let mut teardown = map.teardown(GpadlId(1)).unwrap();
    assert!(!teardown.is_complete());
    drop(view);
    assert!(teardown.is_complete());
});
