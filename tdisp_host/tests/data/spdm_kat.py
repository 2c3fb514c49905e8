"""Independent derivation of the SPDM 1.2 known answers used by tests/spdm_kat.rs.

Written from DSP0274 1.2 section 12 (key schedule) and section 15 (signing), with Python's
hashlib/hmac and the `cryptography` package; it shares no code with the Rust implementation.
Run: python3 tdisp_host/tests/data/spdm_kat.py
"""
import hashlib, hmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

H = 48

def extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha384).digest()

def expand(prk, info, n):
    out, t, i = b"", b"", 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha384).digest()
        out += t
        i += 1
    return out[:n]

def bin_concat(n, label, context=b""):
    return n.to_bytes(2, "little") + b"spdm1.2 " + label + context

dhe = bytes(range(1, 49))
th1 = hashlib.sha384(b"TH1 transcript").digest()
th2 = hashlib.sha384(b"TH2 transcript").digest()

hs = extract(bytes(H), dhe)
req_hs = expand(hs, bin_concat(H, b"req hs data", th1), H)
rsp_hs = expand(hs, bin_concat(H, b"rsp hs data", th1), H)
salt1 = expand(hs, bin_concat(H, b"derived"), H)
master = extract(salt1, bytes(H))
req_app = expand(master, bin_concat(H, b"req app data", th2), H)
rsp_app = expand(master, bin_concat(H, b"rsp app data", th2), H)

def kv(name, secret):
    print(f"{name}_key = {expand(secret, bin_concat(32, b'key'), 32).hex()}")
    print(f"{name}_iv = {expand(secret, bin_concat(12, b'iv'), 12).hex()}")

print(f"req_finished = {expand(req_hs, bin_concat(H, b'finished'), H).hex()}")
print(f"rsp_finished = {expand(rsp_hs, bin_concat(H, b'finished'), H).hex()}")
kv("req_hs", req_hs)
kv("rsp_hs", rsp_hs)
kv("req_app", req_app)
kv("rsp_app", rsp_app)

# Signature: prefix x4, zero pad, context right-aligned in 36 bytes, transcript hash.
context = b"responder-key_exchange_rsp signing"
message = b"dmtf-spdm-v1.2.*" * 4 + bytes(36 - len(context)) + context + th1
key = ec.derive_private_key(0x1234567890ABCDEF, ec.SECP384R1())
der = key.sign(message, ec.ECDSA(hashes.SHA384()))
r, s = decode_dss_signature(der)
pub = key.public_key().public_numbers()
print(f"public_key = 04{pub.x:096x}{pub.y:096x}")
print(f"signature = {r:096x}{s:096x}")
