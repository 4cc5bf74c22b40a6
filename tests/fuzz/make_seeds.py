#!/usr/bin/python3
"""Writes the seed corpora of the libFuzzer targets in tests/fuzz/.

Usage: tests/fuzz/make_seeds.py [OUTPUT_DIR]   (default: tests/fuzz/corpus)

Each target gets a directory of small inputs in the layout its fuzz_<name>.cpp
documents: valid messages (startup packets, SSLRequest, CancelRequest, Query,
the backend login sequence, SCRAM exchanges from the RFC 7677 test vector and
computed ones with channel binding) and a few malformed ones. The output is
deterministic, so re-running it produces no diff. Python standard library only.
"""

import base64
import hashlib
import hmac
import os
import shutil
import struct
import sys

# ---------------------------------------------------------------------------
# PostgreSQL protocol 3.0 encoders (as protocol/*.cpp write them).


def int32(v):
    return struct.pack("!i", v)


def cstr(s):
    if isinstance(s, str):
        s = s.encode()
    return s + b"\0"


def msg(type_char, body):
    return type_char.encode() + struct.pack("!I", len(body) + 4) + body


def untyped(body):
    return struct.pack("!I", len(body) + 4) + body


def startup(params, protocol=196608):
    body = int32(protocol)
    for k, v in params:
        body += cstr(k) + cstr(v)
    return untyped(body + b"\0")


SSL_REQUEST = untyped(int32(80877103))
GSSENC_REQUEST = untyped(int32(80877104))


def cancel(pid, key):
    return untyped(int32(80877102) + int32(pid) + int32(key))


def query(sql):
    return msg("Q", cstr(sql))


def password(p):
    return msg("p", cstr(p))


def sasl_initial(mech, data):
    return msg("p", cstr(mech) + int32(len(data)) + data)


def sasl_response(data):
    return msg("p", data)


def auth(code, rest=b""):
    return msg("R", int32(code) + rest)


def error(fields, type_char="E"):
    body = b""
    for f, v in fields:
        body += f.encode() + cstr(v)
    return msg(type_char, body + b"\0")


# ---------------------------------------------------------------------------
# SCRAM-SHA-256 (RFC 5802 / RFC 7677).

PASSWORD = b"pencil"
RFC_SALT_B64 = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST = "n,,n=user,r=" + RFC_CLIENT_NONCE
RFC_SERVER_FIRST = ("r=" + RFC_CLIENT_NONCE + RFC_SERVER_NONCE + ",s=" + RFC_SALT_B64 +
                    ",i=4096")
RFC_CLIENT_FINAL = ("c=biws,r=" + RFC_CLIENT_NONCE + RFC_SERVER_NONCE +
                    ",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_FINAL = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
# Same bytes as channelBindingData() in fuzz_scram_server.cpp / fuzz_scram_client.cpp.
CHANNEL_BINDING = bytes(range(32))
CBIND_HEADER = "p=tls-server-end-point,,"


def b64(b):
    return base64.b64encode(b).decode()


def scram_exchange(gs2, user, client_nonce, server_nonce, salt, iterations, cbind_data=b""):
    """Returns (client_first, server_first, client_final, server_final)."""
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    bare = "n=" + user + ",r=" + client_nonce
    server_first = ("r=" + client_nonce + server_nonce + ",s=" + b64(salt) + ",i=" +
                    str(iterations))
    without_proof = ("c=" + b64(gs2.encode() + cbind_data) + ",r=" + client_nonce +
                     server_nonce)
    auth_message = (bare + "," + server_first + "," + without_proof).encode()
    signature = hmac.new(stored_key, auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    server_signature = hmac.new(server_key, auth_message, "sha256").digest()
    return (gs2 + bare, server_first, without_proof + ",p=" + b64(proof),
            "v=" + b64(server_signature))


RFC_SALT = base64.b64decode(RFC_SALT_B64)
assert scram_exchange("n,,", "user", RFC_CLIENT_NONCE, RFC_SERVER_NONCE, RFC_SALT, 4096) == (
    RFC_CLIENT_FIRST, RFC_SERVER_FIRST, RFC_CLIENT_FINAL, RFC_SERVER_FINAL)


def pieces(flags, *parts):
    """Flags byte, then the parts joined by 0xff (the SCRAM targets' layout)."""
    return bytes([flags]) + b"\xff".join(p.encode() if isinstance(p, str) else p for p in parts)


# ---------------------------------------------------------------------------
# Corpora.


def framer_input(stream, split=0, max_sel=0):
    """The framer targets' layout: 2 control bytes, then the stream."""
    return bytes([((split >> 8) << 2 | max_sel) & 0xff, split & 0xff]) + stream


def frontend_framer():
    extended = (msg("P", cstr("") + cstr("SELECT $1::int") + struct.pack("!h", 1) + int32(23)) +
                msg("B", cstr("") + cstr("") + struct.pack("!hhh", 0, 1, 0) + int32(1) + b"7" +
                    struct.pack("!h", 0)) +
                msg("D", b"P" + cstr("")) + msg("E", cstr("") + int32(0)) + msg("S", b""))
    copy = query("COPY t FROM STDIN") + msg("d", b"1\tone\n") + msg("d", b"2\ttwo\n") + msg(
        "c", b"")
    return {
        "query": framer_input(query("SELECT 1")),
        "query_split_header": framer_input(query("SELECT 1"), split=3),
        "pipeline": framer_input(query("BEGIN") + query("INSERT INTO t VALUES (1)") +
                                 query("COMMIT") + msg("X", b""), split=20),
        "extended": framer_input(extended, split=len(extended) // 2),
        "copy": framer_input(copy, split=7, max_sel=2),
        "password": framer_input(password("secret")),
        "sasl": framer_input(sasl_initial("SCRAM-SHA-256", RFC_CLIENT_FIRST.encode()) +
                             sasl_response(RFC_CLIENT_FINAL.encode()), split=40),
        "terminate": framer_input(msg("X", b"")),
        "partial_body": framer_input(query("SELECT 1")[:9], split=2),
        "partial_header": framer_input(b"Q\0\0", split=1),
        "bad_type": framer_input(query("SELECT 1") + b"=\0\0\0\x04"),
        "bad_type_nul": framer_input(b"\0\0\0\0\x08abcd"),
        "short_length": framer_input(b"Q\0\0\0\x03"),
        "sync_too_long": framer_input(b"S\0\0\x4e\x24"),  # 20004 > small limit
        "query_too_large": framer_input(b"Q\x7f\xff\xff\xff", max_sel=0),
        "query_over_small_max": framer_input(b"Q\0\0\x40\0" + b"x" * 16, max_sel=2),
        "zero_max": framer_input(msg("S", b""), max_sel=3),
    }


def backend_framer():
    login = (auth(0) + msg("S", cstr("server_version") + cstr("15.4")) +
             msg("S", cstr("client_encoding") + cstr("UTF8")) +
             msg("K", int32(4242) + int32(-559038737)) + msg("Z", b"I"))
    rows = (msg("T", struct.pack("!h", 1) + cstr("?column?") + int32(0) + struct.pack("!h", 0) +
                int32(23) + struct.pack("!hih", 4, -1, 0)) +
            msg("D", struct.pack("!h", 1) + int32(1) + b"1") + msg("C", cstr("SELECT 1")) +
            msg("Z", b"T"))
    return {
        "login_ok": framer_input(login, split=11),
        "auth_sasl": framer_input(auth(10, cstr("SCRAM-SHA-256-PLUS") + cstr("SCRAM-SHA-256") +
                                       b"\0")),
        "auth_sasl_continue": framer_input(auth(11, RFC_SERVER_FIRST.encode())),
        "auth_sasl_final": framer_input(auth(12, RFC_SERVER_FINAL.encode()) + auth(0)),
        "auth_md5": framer_input(auth(5, b"\x01\x02\x03\x04")),
        "auth_cleartext": framer_input(auth(3)),
        "auth_gss": framer_input(auth(7)),
        "rows": framer_input(rows, split=30),
        "error": framer_input(error([("S", "FATAL"), ("V", "FATAL"), ("C", "28P01"),
                                     ("M", 'password authentication failed for user "app"'),
                                     ("F", "auth.c"), ("L", "330"), ("R", "auth_failed")])),
        "error_detail_hint": framer_input(error([("S", "ERROR"), ("C", "23505"),
                                                 ("M", "duplicate key"), ("D", "Key (id)=(1)"),
                                                 ("H", "try another")]) + msg("Z", b"E")),
        "notice": framer_input(error([("S", "NOTICE"), ("C", "00000"), ("M", "hello")], "N")),
        "error_no_code": framer_input(error([("M", "no sqlstate")])),
        "error_truncated": framer_input(msg("E", b"SERROR\0CXX0")),
        "command_complete": framer_input(msg("C", cstr("INSERT 0 1")) + msg("Z", b"I")),
        "ready_bad_status": framer_input(msg("Z", b"X")),
        "key_short": framer_input(msg("K", int32(1))),
        "auth_too_long": framer_input(b"R\0\0\x80\0" + int32(0)),  # small type > 30000
        "bad_type": framer_input(b"Q\0\0\0\x04"),
        "short_length": framer_input(b"Z\0\0\0\x02I"),
        "datarow_too_large": framer_input(b"D\x40\0\0\0", max_sel=1),
        "partial": framer_input(msg("S", cstr("a") + cstr("b"))[:6], split=3),
    }


def startup_corpus():
    return {
        "startup": startup([("user", "app"), ("database", "shop")]),
        "startup_many": startup([("user", "app"), ("database", "shop"),
                                 ("application_name", "psql"), ("client_encoding", "UTF8"),
                                 ("options", "-c search_path=evil")]),
        "startup_protocol_32": startup([("user", "app"), ("_pq_.x", "1")], protocol=196610),
        "startup_replication": startup([("user", "app"), ("replication", "database")]),
        "startup_no_params": startup([]),
        "startup_empty_value": startup([("user", "")]),
        "ssl_request": SSL_REQUEST,
        "ssl_request_trailing": SSL_REQUEST + b"\x16\x03\x01",  # B15
        "gssenc_request": GSSENC_REQUEST,
        "cancel": cancel(4242, 123456789),
        "cancel_long": untyped(int32(80877102) + int32(1) + int32(2) + int32(3)),  # B21
        "no_terminator": startup([("user", "app")])[:-1],  # B9
        "odd_strings": untyped(int32(196608) + cstr("user") + b"\0"),  # B10
        "duplicate_key": startup([("user", "a"), ("user", "b")]),
        "length_mismatch": b"\0\0\0\x20" + startup([("user", "app")])[4:],
        "length_too_small": b"\0\0\0\x04\0\x03\0\0",  # B3
        "length_huge": b"\x7f\xff\xff\xff\0\x03\0\0",  # B4
        "tls_client_hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # B18
        "partial": b"\0\0\0",
        "unknown_code": untyped(int32(1234 << 16 | 5678)),  # B7
    }


def frontend_decoders():
    client_first = RFC_CLIENT_FIRST.encode()
    return {
        "password": cstr("secret"),
        "password_md5": cstr("md5" + "0123456789abcdef" * 2),
        "password_empty": b"\0",
        "query": cstr("SELECT 1"),
        "query_multi": cstr("BEGIN; UPDATE t SET v = v + 1 WHERE k = 'x'; COMMIT"),
        "query_no_nul": b"SELECT 1",  # B37
        "query_embedded_nul": b"SELECT\0 1\0",  # B37
        "sasl_initial": cstr("SCRAM-SHA-256") + int32(len(client_first)) + client_first,
        "sasl_initial_plus": (cstr("SCRAM-SHA-256-PLUS") +
                              int32(len(CBIND_HEADER) + 21) +
                              (CBIND_HEADER + "n=,r=abcdefghijklmnop").encode()),
        "sasl_initial_no_data": cstr("SCRAM-SHA-256") + int32(-1),
        "sasl_initial_empty_data": cstr("SCRAM-SHA-256") + int32(0),
        "sasl_initial_negative": cstr("SCRAM-SHA-256") + int32(-2) + b"xx",
        "sasl_initial_len_beyond": cstr("SCRAM-SHA-256") + int32(1000) + b"n,,",
        "sasl_initial_len_short": cstr("SCRAM-SHA-256") + int32(1) + b"n,,",
        "sasl_initial_no_len": cstr("SCRAM-SHA-256") + b"\0\0",
        "empty": b"",
    }


def scram_server():
    salt = RFC_SALT
    plus = scram_exchange(CBIND_HEADER, "", "clientnonceplus0123", RFC_SERVER_NONCE, salt, 4096,
                          CHANNEL_BINDING)
    y_flag = scram_exchange("y,,", "", "clientnonceyflag", RFC_SERVER_NONCE, salt, 4096)
    libpq = scram_exchange("n,,", "", "3JpQvhWnk8cmyBF0b9C8uCkN", RFC_SERVER_NONCE, salt, 4096)
    nonce = RFC_CLIENT_NONCE + RFC_SERVER_NONCE
    return {
        "rfc7677": pieces(0, "SCRAM-SHA-256", RFC_CLIENT_FIRST, RFC_CLIENT_FINAL),
        "rfc7677_replayed": pieces(0, "SCRAM-SHA-256", RFC_CLIENT_FIRST, RFC_CLIENT_FINAL,
                                   RFC_CLIENT_FIRST, RFC_CLIENT_FINAL),
        "rfc7677_mock": pieces(2, "SCRAM-SHA-256", RFC_CLIENT_FIRST, RFC_CLIENT_FINAL),
        "libpq_empty_user": pieces(0, "SCRAM-SHA-256", libpq[0], libpq[2]),
        "plus_tls": pieces(1, "SCRAM-SHA-256-PLUS", plus[0], plus[2]),
        "plus_over_plaintext": pieces(0, "SCRAM-SHA-256-PLUS", plus[0], plus[2]),  # B31
        "plus_wrong_cbind": pieces(1, "SCRAM-SHA-256-PLUS", plus[0],
                                   plus[2].replace("c=cD", "c=cE", 1)),  # B30
        "y_flag_plaintext": pieces(0, "SCRAM-SHA-256", y_flag[0], y_flag[2]),
        "y_flag_tls": pieces(1, "SCRAM-SHA-256", y_flag[0], y_flag[2]),  # B29
        "n_flag_tls": pieces(1, "SCRAM-SHA-256", libpq[0], libpq[2]),
        "unknown_mechanism": pieces(0, "SCRAM-SHA-1", RFC_CLIENT_FIRST),  # B27
        "authzid": pieces(0, "SCRAM-SHA-256", "n,a=admin,n=user,r=abc"),
        "extension_m": pieces(0, "SCRAM-SHA-256", "n,,m=ext,n=user,r=abc"),
        "missing_nonce": pieces(0, "SCRAM-SHA-256", "n,,n=user"),  # B28
        "duplicate_nonce": pieces(0, "SCRAM-SHA-256", "n,,n=user,r=abc,r=def"),
        "trailing_comma": pieces(0, "SCRAM-SHA-256", "n,,n=user,r=abc,"),
        "nonprintable_nonce": pieces(0, "SCRAM-SHA-256", "n,,n=user,r=a\x01b"),
        "unknown_cbind_type": pieces(1, "SCRAM-SHA-256-PLUS", "p=tls-unique,,n=,r=abc"),
        "wrong_proof": pieces(0, "SCRAM-SHA-256", RFC_CLIENT_FIRST,
                              "c=biws,r=" + nonce + ",p=" + b64(bytes(32))),
        "proof_bad_base64": pieces(0, "SCRAM-SHA-256", RFC_CLIENT_FIRST,
                                   "c=biws,r=" + nonce + ",p=!!!!"),
        "proof_not_last": pieces(0, "SCRAM-SHA-256", RFC_CLIENT_FIRST,
                                 RFC_CLIENT_FINAL + ",x=1"),
        "nonce_not_extended": pieces(0, "SCRAM-SHA-256", RFC_CLIENT_FIRST,
                                     RFC_CLIENT_FINAL.replace(RFC_SERVER_NONCE, "xyz")),
        "extension_before_proof": pieces(0, "SCRAM-SHA-256", RFC_CLIENT_FIRST,
                                         "c=biws,r=" + nonce + ",x=ext," +
                                         RFC_CLIENT_FINAL.split(",")[-1]),
        "huge_nonce": pieces(0, "SCRAM-SHA-256", "n,,n=user,r=" + "A" * 1100),
        "nul_in_message": pieces(0, "SCRAM-SHA-256", "n,,n=user,r=abc\0def"),
        "empty": b"\0",
    }


def scram_client():
    salt = RFC_SALT
    # With i=1 the exchange is cheap, so the fuzzer explores past serverFirst fast.
    cheap = scram_exchange("n,,", "user", RFC_CLIENT_NONCE, "srv", b"salt", 1)
    plus = scram_exchange(CBIND_HEADER, "user", RFC_CLIENT_NONCE, "srvplus", salt, 16,
                          CHANNEL_BINDING)
    y_flag = scram_exchange("y,,", "user", RFC_CLIENT_NONCE, "srvy", salt, 2)
    return {
        "rfc7677": pieces(0, RFC_SERVER_FIRST, RFC_SERVER_FINAL),
        "rfc7677_extra": pieces(0, RFC_SERVER_FIRST, RFC_SERVER_FINAL, RFC_SERVER_FIRST,
                                RFC_SERVER_FINAL),
        "cheap": pieces(0, cheap[1], cheap[3]),
        "plus": pieces(3, plus[1], plus[3]),
        "y_flag": pieces(1, y_flag[1], y_flag[3]),
        "server_error": pieces(0, cheap[1], "e=invalid-proof"),
        "bad_signature": pieces(0, cheap[1], "v=" + b64(bytes(32))),
        "signature_bad_base64": pieces(0, cheap[1], "v=abc"),
        "final_extension": pieces(0, cheap[1], cheap[3] + ",x=1"),
        "nonce_mismatch": pieces(0, "r=someoneelse,s=" + RFC_SALT_B64 + ",i=1"),
        "nonce_not_extended": pieces(0, "r=" + RFC_CLIENT_NONCE + ",s=" + RFC_SALT_B64 + ",i=1"),
        "salt_bad_base64": pieces(0, "r=" + RFC_CLIENT_NONCE + "x,s=@@@@,i=1"),
        "salt_empty": pieces(0, "r=" + RFC_CLIENT_NONCE + "x,s=,i=1"),
        "iterations_zero": pieces(0, "r=" + RFC_CLIENT_NONCE + "x,s=" + RFC_SALT_B64 + ",i=0"),
        "iterations_huge": pieces(0, "r=" + RFC_CLIENT_NONCE + "x,s=" + RFC_SALT_B64 +
                                  ",i=99999999999"),
        "iterations_garbage": pieces(0, "r=" + RFC_CLIENT_NONCE + "x,s=" + RFC_SALT_B64 +
                                     ",i=1x"),
        "trailing_garbage": pieces(0, cheap[1] + ",", cheap[3]),
        "reserved_mext": pieces(0, "m=ext," + cheap[1], cheap[3]),
        "nul_in_message": pieces(0, "r=" + RFC_CLIENT_NONCE + "x\0,s=" + RFC_SALT_B64 + ",i=1"),
        "empty": b"\0",
    }


CORPORA = {
    "frontend_framer": frontend_framer,
    "backend_framer": backend_framer,
    "startup": startup_corpus,
    "frontend_decoders": frontend_decoders,
    "scram_server": scram_server,
    "scram_client": scram_client,
}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus")
    total = 0
    for name, make in CORPORA.items():
        target_dir = os.path.join(out_dir, name)
        shutil.rmtree(target_dir, ignore_errors=True)
        os.makedirs(target_dir)
        for seed, data in sorted(make().items()):
            with open(os.path.join(target_dir, seed), "wb") as f:
                f.write(data)
            total += len(data)
        print(f"{name}: {len(make())} seeds")
    print(f"total {total} bytes in {out_dir}")


if __name__ == "__main__":
    main()
