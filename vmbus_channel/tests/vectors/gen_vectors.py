#!/usr/bin/env python3
"""Writes one raw .bin per VMBus control message, packed from the C struct layouts of Linux
include/linux/hyperv.h (all structs __packed, little-endian) and, for the messages Linux does
not define (6.0 forms, TL_CONNECT_RESULT, UNLOAD_COMPLETE body), OpenVMM vmbus_core.

This script is independent of the Rust code: tests/control_vectors.rs decodes each file with
the Rust codec, checks the fields below and re-encodes it byte for byte.

Run from this directory: python3 gen_vectors.py
"""
import struct
import uuid

def hdr(t):
    # struct vmbus_channel_message_header { u32 msgtype; u32 padding; }
    return struct.pack("<II", t, 0)

def guid(s):
    # Hyper-V GUIDs: first three fields little-endian.
    return uuid.UUID(s).bytes_le

IF_ID = guid("f8615163-df3e-46c5-913f-f2d2f965ed0e")
INST_ID = guid("00112233-4455-6677-8899-aabbccddeeff")
USER = bytes(range(1, 121))

def offer():
    # struct vmbus_channel_offer (176 bytes)
    return (IF_ID + INST_ID + struct.pack("<QQ", 0, 0)
            + struct.pack("<HH", 0x0003, 16)   # chn_flags, mmio_megabytes
            + USER
            + struct.pack("<HH", 2, 8))        # sub_channel_index, reserved3 (mmio optional)

vectors = {
    # vmbus_channel_offer_channel: offer, child_relid, monitorid, monitor_allocated:1,
    # is_dedicated_interrupt:1, connection_id
    "offer_channel": hdr(1) + offer() + struct.pack("<IBBHI", 7, 0, 0, 1, 0x2007),
    "rescind_channel_offer": hdr(2) + struct.pack("<I", 7),
    "request_offers": hdr(3),
    "all_offers_delivered": hdr(4),
    # vmbus_channel_open_channel
    "open_channel": hdr(5) + struct.pack("<IIIII", 7, 0x11, 0x22, 3, 9) + USER,
    # OpenVMM OpenChannel2: + connection_id u32, event_flag u16, flags u16
    "open_channel2": hdr(5) + struct.pack("<IIIII", 7, 0x11, 0x22, 3, 9) + USER
                     + struct.pack("<IHH", 0x2007, 7, 1),
    "open_channel_result": hdr(6) + struct.pack("<III", 7, 0x11, 0),
    "close_channel": hdr(7) + struct.pack("<I", 7),
    # vmbus_channel_gpadl_header: child_relid, gpadl, range_buflen, rangecount, then
    # struct gpa_range { u32 byte_count; u32 byte_offset; u64 pfn_array[]; }
    "gpadl_header": hdr(8) + struct.pack("<IIHH", 7, 0x22, 3 * 8, 1)
                    + struct.pack("<IIQQ", 2 * 4096, 0, 0x100, 0x101),
    # vmbus_channel_gpadl_body: msgnumber, gpadl, pfn[]
    "gpadl_body": hdr(9) + struct.pack("<II", 1, 0x22) + struct.pack("<QQQ", 0x102, 0x103, 0x104),
    "gpadl_created": hdr(10) + struct.pack("<IIi", 7, 0x22, 0),
    "gpadl_teardown": hdr(11) + struct.pack("<II", 7, 0x22),
    "gpadl_torndown": hdr(12) + struct.pack("<I", 0x22),
    "rel_id_released": hdr(13) + struct.pack("<I", 7),
    # vmbus_channel_initiate_contact: version, target_vcpu, interrupt_page (union with
    # msg_sint, msg_vtl, ...), monitor_page1, monitor_page2. Win8.1 form.
    "initiate_contact": hdr(14) + struct.pack("<IIQQQ", 0x30000, 0, 0x5000, 0x6000, 0x7000),
    # 6.0 form: target info = sint 2, vtl 0, features (confidential channels = 0x10) in the
    # upper half; then the client id GUID (OpenVMM InitiateContact2).
    "initiate_contact2": hdr(14) + struct.pack("<IIBBHIQQ", 0x60000, 1, 2, 0, 0, 0x10, 0, 0)
                         + guid("c0ffee00-0000-0000-0000-000000000001"),
    # vmbus_channel_version_response: version_supported, connection_state, padding, msg_conn_id
    "version_response": hdr(15) + struct.pack("<BBHI", 1, 0, 0, 4),
    "version_response2": hdr(15) + struct.pack("<BBHII", 1, 0, 0, 4, 0x10),
    "unload": hdr(16),
    "unload_complete": hdr(17),
    # vmbus_channel_tl_connect_request: guest_endpoint_id, host_service_id
    "tl_connect_request": hdr(21) + guid("11111111-2222-3333-4444-555555555555")
                          + guid("66666666-7777-8888-9999-aaaaaaaaaaaa"),
    "tl_connect_request2": hdr(21) + guid("11111111-2222-3333-4444-555555555555")
                           + guid("66666666-7777-8888-9999-aaaaaaaaaaaa")
                           + guid("bbbbbbbb-cccc-dddd-eeee-ffffffffffff"),
    # vmbus_channel_modifychannel: child_relid, target_vp
    "modify_channel": hdr(22) + struct.pack("<II", 7, 5),
    # OpenVMM TlConnectResult: endpoint_id, service_id, status i32
    "tl_connect_result": hdr(23) + guid("11111111-2222-3333-4444-555555555555")
                         + guid("66666666-7777-8888-9999-aaaaaaaaaaaa")
                         + struct.pack("<i", -1073741258),  # STATUS_CONNECTION_REFUSED
    # vmbus_channel_modifychannel_response: child_relid, status
    "modify_channel_response": hdr(24) + struct.pack("<Ii", 7, 0),
}

# Sizes of the Linux structs, header included.
expected = {
    "offer_channel": 8 + 176 + 12, "rescind_channel_offer": 12, "request_offers": 8,
    "all_offers_delivered": 8, "open_channel": 148, "open_channel_result": 20,
    "close_channel": 12, "gpadl_created": 20, "gpadl_teardown": 16, "gpadl_torndown": 12,
    "rel_id_released": 12, "initiate_contact": 40, "version_response": 16, "unload": 8,
    "tl_connect_request": 40, "modify_channel": 16, "modify_channel_response": 16,
}
for name, size in expected.items():
    assert len(vectors[name]) == size, (name, len(vectors[name]), size)
for name, data in vectors.items():
    assert len(data) <= 240, name
    with open(name + ".bin", "wb") as f:
        f.write(data)
print(len(vectors), "vectors written")
