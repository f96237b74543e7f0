#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Sources: the bundled captures (captures/*.pcap), ../shared/captures (pcap files), and the
HTTP texts in ../shared/http-text (libhtp `.t` files: `>>>` client data, `<<<` server data;
llhttp markdown cases), and small adversarial captures (`gatescope-gen adversarial`, when
target/release/gatescope-gen is built). Input formats are documented in src/fuzzing.rs; this script must
agree with them. Deterministic: the same sources give the same seeds.

    python3 fuzz/seed-corpus.py            # from the repository root
"""

import hashlib
import pathlib
import random
import re
import struct
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
OUT = ROOT / "fuzz" / "corpus"

# Same order as LINKS in src/fuzzing.rs.
LINKS = [1, 101, 113, 276, 0, 108, 228, 229, 12, 14, 147]
MAX_SEED = 64 * 1024


def write(target, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    (d / name).write_bytes(data)


def encode_dt(us):
    for e in range(4):
        m = us >> (8 * e)
        if m < 64:
            return (e << 6) | m
    return 0xFF


def pcap_frames(raw):
    """(linktype, [(ts_us, caplen_data, origlen)]) of a classic pcap, or None."""
    if len(raw) < 24:
        return None
    magic = raw[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        return None
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    link = struct.unpack(e + "I", raw[20:24])[0] & 0x0FFFFFFF
    frames = []
    off = 24
    while off + 16 <= len(raw):
        sec, frac, cap, orig = struct.unpack(e + "IIII", raw[off:off + 16])
        off += 16
        data = raw[off:off + cap]
        off += cap
        us = sec * 1_000_000 + (frac // 1000 if nano else frac)
        frames.append((us, data, orig))
    return link, frames


def pipeline_seed(link, frames, settings):
    if link not in LINKS:
        return None
    out = bytearray([LINKS.index(link), settings])
    prev = None
    for ts, data, orig in frames:
        dt = 0 if prev is None else ts - prev
        back = dt < 0
        prev = ts
        data = data[:0xFFFF]
        cut = min(max(orig - len(data), 0), 0x3F)
        frame = struct.pack("<H", len(data)) + bytes(
            [encode_dt(abs(dt)), cut | (0x80 if back else 0)]) + data
        if len(out) + len(frame) > MAX_SEED:
            break
        out += frame
    return bytes(out)


def pcaps(tmp):
    files = sorted((ROOT / "captures").glob("*.pcap"))
    if (SHARED / "captures").is_dir():
        files += sorted(p for p in (SHARED / "captures").rglob("*")
                        if p.is_file() and p.suffix in (".pcap", ".cap", ".pcapng"))
    gen = ROOT / "target" / "release" / "gatescope-gen"
    if gen.exists():
        listing = subprocess.run([gen, "adversarial", "--list"], capture_output=True,
                                 text=True, check=True).stdout
        for kind in (line.split()[0] for line in listing.splitlines() if line.strip()):
            out = pathlib.Path(tmp) / f"{kind}.pcap"
            count = {"endless-head": 20_000, "tiny-chunks": 500, "huge-chunk": 3_000,
                     "huge-content-length": 3_000, "ooo-flood": 20}.get(kind, 100)
            subprocess.run([gen, "adversarial", kind, "--out", out, "--count", str(count)],
                           capture_output=True, check=True)
            files.append(out)
    return files


def http_texts():
    """(client bytes, server bytes) conversations."""
    convs = []
    libhtp = SHARED / "http-text" / "libhtp"
    for t in sorted(libhtp.glob("*.t")) if libhtp.is_dir() else []:
        raw = t.read_bytes()
        parts = re.split(rb"(?m)^(>>>|<<<)\r?\n", raw)
        client, server = bytearray(), bytearray()
        events = []
        for i in range(1, len(parts) - 1, 2):
            side, body = parts[i], parts[i + 1]
            (client if side == b">>>" else server).extend(body)
            events.append((side == b">>>", body))
        convs.append((bytes(client), bytes(server), events))
    llhttp = SHARED / "http-text" / "llhttp"
    for md in sorted(llhttp.rglob("*.md")) if llhttp.is_dir() else []:
        text = md.read_text(errors="replace")
        for m in re.finditer(r'<!-- meta=(\{[^>]*\}) -->\s*```http\n(.*?)```', text, re.S):
            meta, body = m.group(1), m.group(2)
            data = bytearray()
            for line in body.split("\n")[:-1]:
                cont = line.endswith("\\")
                if cont:
                    line = line[:-1]
                line = (line.replace("\\r", "\r").replace("\\n", "\n")
                        .replace("\\t", "\t").replace("\\\\", "\\"))
                data += line.encode("utf-8", "replace")
                if not cont:
                    data += b"\r\n"
            if '"response"' in meta:
                req = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
                convs.append((req, bytes(data), [(True, req), (False, bytes(data))]))
            else:
                convs.append((bytes(data), b"", [(True, bytes(data))]))
    return convs


def session_seed(events, mode):
    out = bytearray([mode])
    for from_client, body in events:
        for i in range(0, max(len(body), 1), 0xFFFF):
            piece = body[i:i + 0xFFFF]
            out += bytes([0 if from_client else 1]) + struct.pack("<H", len(piece)) + piece
            out += bytes([7, 2])  # 2 ms pass
    out += bytes([4, 5])  # FIN from the client, then from the server
    return bytes(out)


def h1_seeds(stream, method_bits):
    for splits in ([0xEF] * 4, [0, 1, 2, 3], [0x20, 0xF3, 0x40, 0x10], [7, 0x80, 0x3F, 1]):
        yield bytes([method_bits] + splits) + stream[:MAX_SEED]


def reassembly_seeds():
    rng = random.Random(7)
    for n in range(40):
        out = bytearray(struct.pack("<I", rng.choice([0, 1000, 0xFFFFFF00, rng.getrandbits(32)])))
        out += bytes([rng.choice([0, 4, 16, 255]), rng.choice([0, 3, 31])])
        for _ in range(rng.randint(1, 30)):
            kind = rng.choice([0, 0, 0, 1, 3, 2])
            op = kind | (rng.choice([0, 0, 0x10]) if kind in (0, 3) else 0)
            if kind in (0, 3) and rng.random() < 0.1:
                op |= 0x20
            if kind in (0, 3) and rng.random() < 0.1:
                op |= 0x40
            out.append(op)
            if kind == 0:
                out += struct.pack("<h", rng.randint(-100, 300))
            elif kind == 3:
                out += struct.pack("<I", rng.getrandbits(32))
            elif kind == 1:
                out += struct.pack("<h", rng.randint(-10, 400))
            if kind in (0, 3):
                ln = rng.randint(0, 255)
                out += bytes([ln, rng.choice([0, 0, 0, 5])])
                if op & 0x40:
                    out += bytes(rng.getrandbits(8) for _ in range(ln))
        yield bytes(out)


def main():
    n = {}
    tmp = tempfile.TemporaryDirectory()
    for i, p in enumerate(pcaps(tmp.name)):
        raw = p.read_bytes()
        write("pcap", bytes([(0, 1, 9, 4, 16, 20)[i % 6]]) + raw[:MAX_SEED])
        parsed = pcap_frames(raw)
        if parsed:
            link, frames = parsed
            for settings in (0x00, 0x11, 0x01, 0x10, 0x20, 0x24):
                s = pipeline_seed(link, frames, settings)
                if s:
                    write("pipeline", s)
    for client, server, events in http_texts():
        head = client.startswith(b"HEAD ")
        connect = client.startswith(b"CONNECT ")
        method_bits = 2 if head else 3 if connect else 1
        for s in h1_seeds(client, 0):
            write("h1", s)
        if server:
            for s in h1_seeds(server, method_bits):
                write("h1", s)
        write("session", session_seed(events, 0))
        write("session", session_seed(events, 1))
    for s in reassembly_seeds():
        write("reassembly", s)
    for d in sorted(OUT.iterdir()):
        n[d.name] = len(list(d.iterdir()))
    print(" ".join(f"{k}={v}" for k, v in n.items()))


if __name__ == "__main__":
    sys.exit(main())
