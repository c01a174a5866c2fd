#!/usr/bin/env python3
"""An independent verifier of the Lattice audit log, written from audit/FORMAT.md alone.

What it proves: that FORMAT.md is enough for a third party to check a log. Nothing here comes
from the Rust sources: CRC32C is a table computed here, SHA-256 is hashlib's, and Ed25519 is the
`cryptography` package's. It follows the "Verifying" section step by step and in its order
(the walk, steps 1-3, in record order; each epoch's signature, step 4, when the epoch ends; then
steps 5 and 6), with the record number N it defines for every kind of damage; where FORMAT.md
leaves a point open, the reading taken is marked "READING:".

    python verify_from_format.py AUDIT_DIR [--pubkey FILE] [--since-head FILE]

AUDIT_DIR is `<data_dir>/audit` (a data dir holding an `audit/` folder is accepted too).
Prints `intact ...` and exits 0, or prints `<kind> at record N: detail` and exits 1, with the
kinds of FORMAT.md: modified, deleted, reordered, duplicated, truncated, renamed, unsealed,
forged, rolled back. Exit 2 is a usage error (no usable key, an unreadable or malformed head).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import sys
from dataclasses import dataclass, field

MAGIC = b"LTAUDIT2"
MAGIC_V1 = b"LTAUDIT1"
MIN_LEN = 89  # seq 8 + time 8 + kind_len 1 + session_len 2 + principal_len 2 + payload_len 4 + prev 32 + hash 32
MAX_LEN = 16 * 1024 * 1024
SEAL_KIND = "audit.seal"
SEAL_DOMAIN = b"lattice-audit-seal-v2"
HEAD_FORMAT = "lattice-audit-head-v2"
SEGMENT_RE = re.compile(r"^seg-(\d{20})\.log$")
# FORMAT.md "Seals": exactly these bytes, `base` in decimal without leading zeros, `sig` 128
# lower-case hex digits, no white space, keys in this order.
SEAL_PAYLOAD_RE = re.compile(rb'\A\{"base":(0|[1-9][0-9]*),"sig":"([0-9a-f]{128})"\}\Z')
LOWER_HEX_RE = re.compile(r"\A[0-9a-f]*\Z")  # FORMAT.md: signing.pub and a head's hex are lower-case
ZERO32 = bytes(32)

# --------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), reflected, polynomial 0x1EDC6F41 (reversed: 0x82F63B78), table-driven.


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C


# --------------------------------------------------------------------------------------------
# Records.


@dataclass
class Record:
    seq: int
    time_ns: int
    kind: str
    session: str
    principal: str
    payload: bytes
    prev: bytes
    hash: bytes
    segment: str = ""
    offset: int = 0


class Damage(Exception):
    def __init__(self, kind: str, at: int, detail: str):
        super().__init__(f"{kind} at record {at}: {detail}")
        self.kind = kind
        self.at = at
        self.detail = detail


class BodyError(ValueError):
    pass


def decode_body(body: bytes) -> Record:
    """Parse a frame body (the CRC already checked). Raises BodyError if its fields do not
    fill it exactly."""
    n = len(body)
    pos = 0

    def take(k: int) -> bytes:
        nonlocal pos
        if pos + k > n:
            raise BodyError(f"field runs past the body ({pos}+{k} > {n})")
        out = body[pos : pos + k]
        pos += k
        return out

    seq, time_ns = struct.unpack("<QQ", take(16))
    kind_b = take(take(1)[0])
    session_b = take(struct.unpack("<H", take(2))[0])
    principal_b = take(struct.unpack("<H", take(2))[0])
    payload = take(struct.unpack("<I", take(4))[0])
    prev = take(32)
    hsh = take(32)
    if pos != n:
        raise BodyError(f"{n - pos} bytes left over after the hash")
    try:
        kind = kind_b.decode("utf-8")
        session = session_b.decode("utf-8")
        principal = principal_b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BodyError(f"a text field is not UTF-8: {e}") from None
    return Record(seq, time_ns, kind, session, principal, payload, prev, hsh)


def encode_body(seq: int, time_ns: int, kind: str, session: str, principal: str,
                payload: bytes, prev: bytes) -> bytes:
    """Body bytes with the hash computed (for tools and tests that build or re-chain frames)."""
    k, s, p = kind.encode(), session.encode(), principal.encode()
    head = (struct.pack("<QQ", seq, time_ns) + bytes([len(k)]) + k
            + struct.pack("<H", len(s)) + s + struct.pack("<H", len(p)) + p
            + struct.pack("<I", len(payload)) + payload + prev)
    return head + hashlib.sha256(head).digest()


def encode_frame(body: bytes) -> bytes:
    return struct.pack("<II", len(body), crc32c(body)) + body


def seal_message(base: int, seq: int, time_ns: int, prev: bytes) -> bytes:
    msg = SEAL_DOMAIN + struct.pack("<QQQ", base, seq, time_ns) + prev
    assert len(msg) == 77
    return msg


def seal_payload(base: int, sig: bytes) -> bytes:
    """The one spelling of a seal's payload."""
    return b'{"base":%d,"sig":"%s"}' % (base, sig.hex().encode())


# --------------------------------------------------------------------------------------------
# Keys and heads.


def parse_pubkey_line(text: str):
    """`ed25519:<64 lower-case hex digits>` (FORMAT.md "Files"). READING: white space around the
    line is ignored (the file is "one line")."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    line = text.strip()
    if not line.startswith("ed25519:"):
        raise ValueError("public key is not `ed25519:<64 hex digits>`")
    hx = line[len("ed25519:") :]
    if len(hx) != 64 or not LOWER_HEX_RE.match(hx):
        raise ValueError("public key is not `ed25519:<64 lower-case hex digits>`")
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hx))


def sig_ok(pub, sig: bytes, msg: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        pub.verify(sig, msg)
        return True
    except InvalidSignature:
        return False


@dataclass
class Seal:
    rec: Record
    base: int
    sig: bytes


@dataclass
class Epoch:
    base: int
    seals: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Step 1, the reading part: every segment and frame, in position order.


@dataclass
class SegmentStart:
    name: str
    number: int          # the sequence its name gives; -1 when it has no 20-digit number
    bad_magic: str = ""  # why it is not a segment, or ""


@dataclass
class FrameError:
    kind: str            # truncated or modified
    detail: str


def list_segments(audit_dir: str) -> list[tuple[str, int]]:
    """(file name, sequence in its name) for every segment file, in name order.

    READING: a file that starts with `seg-` and ends with `.log` but has not 20 digits between
    is taken as a renamed segment (number -1), since skipping it would hide records. Other files
    (`signing.*`, `torn-*.bin`, anything else) are not part of the chain."""
    out = []
    for name in os.listdir(audit_dir):
        if not os.path.isfile(os.path.join(audit_dir, name)):
            continue
        m = SEGMENT_RE.match(name)
        if m:
            out.append((name, int(m.group(1))))
        elif name.startswith("seg-") and name.endswith(".log"):
            out.append((name, -1))
    out.sort(key=lambda t: t[0])
    return out


def scan(audit_dir: str) -> tuple[list, int]:
    """Every segment start, record and frame error in position order (a segment's frames stop
    at its first bad frame), and the number of segments."""
    segments = list_segments(audit_dir)
    items: list = []
    for idx, (name, number) in enumerate(segments):
        with open(os.path.join(audit_dir, name), "rb") as f:
            data = f.read()
        last_segment = idx == len(segments) - 1
        if data[:8] != MAGIC:
            why = ("a version 1 segment (LTAUDIT1), which this format refuses"
                   if data[:8] == MAGIC_V1 else "not a segment: the magic is not LTAUDIT2")
            items.append(SegmentStart(name, number, why))
            continue
        items.append(SegmentStart(name, number))
        cut = "truncated" if last_segment else "modified"
        pos = 8
        while pos < len(data):
            if len(data) - pos < 8:
                items.append(FrameError(cut, f"{len(data) - pos} bytes of a frame header at "
                                             f"offset {pos} of {name}"))
                break
            ln, crc = struct.unpack_from("<II", data, pos)
            if ln < MIN_LEN or ln > MAX_LEN:
                items.append(FrameError("modified", f"frame length {ln} out of range at offset "
                                                    f"{pos} of {name}"))
                break
            if pos + 8 + ln > len(data):
                items.append(FrameError(cut, f"the frame at offset {pos} of {name} needs {ln} "
                                             f"body bytes, {len(data) - pos - 8} there"))
                break
            body = data[pos + 8 : pos + 8 + ln]
            if crc32c(body) != crc:
                items.append(FrameError("modified", f"CRC32C mismatch in the frame at offset "
                                                    f"{pos} of {name}"))
                break
            # `hash` = SHA-256(body minus hash): the last 32 bytes, whatever the rest holds.
            if hashlib.sha256(body[:-32]).digest() != body[-32:]:
                items.append(FrameError("modified", f"hash mismatch in the frame at offset "
                                                    f"{pos} of {name}"))
                break
            try:
                rec = decode_body(body)
            except BodyError as e:
                # Step 1: length-prefixed fields that do not fill the body exactly: `modified`.
                # READING: so is a kind, session or principal that is not UTF-8 (FORMAT.md says
                # they are UTF-8, and gives no other kind for one that is not).
                items.append(FrameError("modified", f"the frame at offset {pos} of {name}: {e}"))
                break
            rec.segment, rec.offset = name, pos
            items.append(rec)
            pos += 8 + ln
    return items, len(segments)


def record_after(items: list, i: int) -> Record | None:
    """"The record right after it in the same segment" (step 2): the next item, if it is a record
    (a segment start or a bad frame is not; a segment's frames stop at its first bad one)."""
    nxt = items[i + 1] if i + 1 < len(items) else None
    return nxt if isinstance(nxt, Record) else None


# --------------------------------------------------------------------------------------------
# Steps 1-3: the walk.


def parse_seal(rec: Record) -> Seal:
    """Step 3's first half: the exact payload, empty session and principal, 1 <= base < seq;
    else `forged` at the seal."""
    if rec.session or rec.principal:
        raise Damage("forged", rec.seq, "a seal record with a session or principal")
    m = SEAL_PAYLOAD_RE.match(rec.payload)
    if not m:
        raise Damage("forged", rec.seq,
                     'the seal payload is not exactly {"base":N,"sig":"<128 lower-case hex>"}')
    base = int(m.group(1))
    if not (1 <= base < rec.seq):
        raise Damage("forged", rec.seq, f"seal base {base} is not in 1..={rec.seq - 1}")
    return Seal(rec, base, bytes.fromhex(m.group(2).decode()))


def walk(items: list, pub) -> tuple[list[Record], list[Epoch]]:
    """Steps 1-3 in record order, with step 4 for each epoch that ends at the first seal of the
    next one; raises the first failure met. Returns the records and their epochs (the last
    epoch's signature not yet checked: it ends after the last record).

    READING: at the first seal of a new epoch, step 3 for that seal (its payload, its base past
    what the previous seal covers, the records between the epochs `unsealed`) comes before step 4
    for the epoch it ends: the walk's checks of a record come first, as for every record, and
    only a seal that passes them starts a new epoch."""
    records: list[Record] = []
    epochs: list[Epoch] = []
    e, prev_hash = 1, ZERO32
    for i, it in enumerate(items):
        if isinstance(it, SegmentStart):
            if it.bad_magic:
                raise Damage("modified", e, f"{it.name}: {it.bad_magic}")
            if it.number != e:
                if it.number == -1:
                    raise Damage("renamed", e, f"{it.name} is not named seg-<20 digits>.log")
                raise Damage("renamed", e, f"{it.name} is named for record {it.number} but "
                                           f"the chain is at record {e} there")
            continue
        if isinstance(it, FrameError):
            raise Damage(it.kind, e, it.detail)
        rec: Record = it
        where = f"({rec.segment} offset {rec.offset})"
        if rec.seq != e:
            if rec.seq > e:
                nxt = record_after(items, i)
                if nxt is not None and nxt.seq == e:
                    raise Damage("reordered", e, f"record {rec.seq} comes before record {e} "
                                                 f"{where}")
                raise Damage("deleted", e, f"record {rec.seq} follows record {e - 1} {where}")
            if rec.seq == e - 1 and rec.hash == prev_hash:
                raise Damage("duplicated", rec.seq, f"record {rec.seq} appears twice {where}")
            raise Damage("reordered", rec.seq, f"record {rec.seq} comes after record {e - 1} "
                                               f"{where}")
        if rec.prev != prev_hash:
            raise Damage("modified", rec.seq,
                         f"prev does not match the hash of record {rec.seq - 1} {where}")
        if rec.kind == SEAL_KIND:
            seal = parse_seal(rec)
            if not epochs:
                # Step 3: for the first seal of the log, records 1..base-1: `unsealed` at 1.
                if seal.base > 1:
                    raise Damage("unsealed", 1,
                                 f"records 1..={seal.base - 1} are covered by no seal (the "
                                 f"first seal, record {rec.seq}, has base {seal.base})")
                epochs.append(Epoch(seal.base))
            elif seal.base != epochs[-1].base:
                last = epochs[-1].seals[-1].rec.seq  # the previous seal record
                # It covers base..=last-1; the new base must be past that.
                if seal.base <= last - 1:
                    raise Damage("forged", rec.seq,
                                 f"seal base {seal.base} is not past record {last - 1}, the "
                                 f"last one the seal at record {last} covers")
                if seal.base > last + 1:
                    raise Damage("unsealed", last + 1,
                                 f"records {last + 1}..={seal.base - 1} are covered by no "
                                 f"seal (an epoch ends at the seal at record {last}, the "
                                 f"next begins at record {seal.base})")
                # The previous epoch ends here: step 4 for it.
                forged = check_epoch(epochs[-1], pub)
                if forged is not None:
                    raise forged
                epochs.append(Epoch(seal.base))
            epochs[-1].seals.append(seal)
        records.append(rec)
        prev_hash = rec.hash
        e += 1
    return records, epochs


# --------------------------------------------------------------------------------------------
# Step 4: signatures.


def check_epoch(ep: Epoch, pub) -> Damage | None:
    def ok(s: Seal) -> bool:
        return sig_ok(pub, s.sig, seal_message(s.base, s.rec.seq, s.rec.time_ns, s.rec.prev))

    seals = ep.seals
    if ok(seals[-1]):
        return None
    # The epoch's seals verify up to the first record rewritten and fail from there on: find the
    # last that verifies (lo) with log2(seals) verifications. seals[hi] fails throughout. The
    # damage is `forged` at the record after the last seal that verifies (which vouches for
    # itself too), at `base` when none verifies.
    lo, hi = -1, len(seals) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(seals[mid]):
            lo = mid
        else:
            hi = mid
    bad = seals[hi].rec.seq
    if lo >= 0:
        good = seals[lo].rec.seq
        return Damage("forged", good + 1,
                      f"the seal at record {bad} does not verify, the one at record {good} does: "
                      f"records {good + 1}..={bad - 1} are not what was signed")
    return Damage("forged", ep.base,
                  f"no seal of the epoch from record {ep.base} verifies (the first: record {bad}): "
                  f"records {ep.base}..={bad - 1} are not what was signed, or not under this key")


# --------------------------------------------------------------------------------------------
# Steps 5 and 6, and the whole.


def verify(audit_dir: str, pub, since_head: dict | None = None) -> str:
    items, nsegments = scan(audit_dir)
    # Steps 1-3, and step 4 for every epoch but the last (raises the first failure met).
    records, epochs = walk(items, pub)
    # After the last record: step 4 for the last epoch, then step 5.
    if epochs:
        forged = check_epoch(epochs[-1], pub)
        if forged is not None:
            raise forged

    # Step 5: records past the last seal (and a log with records but no seal).
    seals = [s for ep in epochs for s in ep.seals]
    if records and records[-1].kind != SEAL_KIND:
        first = seals[-1].rec.seq + 1 if seals else records[0].seq
        raise Damage("unsealed", first,
                     f"records {first}..={records[-1].seq} come after the last seal"
                     if seals else f"{len(records)} records and no seal")

    # Step 6: a kept head.
    if since_head is not None:
        check_head(since_head, records, pub)

    # Summary: for each epoch, which records its last seal signs and how many seals it has; over
    # the whole log, the fewest and most records one seal added to what is signed: its write,
    # and the seal before it. So a seal adds `seq - previous seal's seq` records, in a new epoch
    # too (its base is the previous seal record or the one after it, which vouches for itself);
    # the log's first seal, with no seal before it, adds its write, `seq - base`.
    nseals = len(seals)
    head = records[-1] if records else None
    lines = [
        f"intact: {len(records)} records ({len(records) - nseals} events, {nseals} seals) in "
        f"{nsegments} segments" + (f"; head {head.seq} {head.hash.hex()}" if head else "")
    ]
    for ep in epochs:
        last = ep.seals[-1]
        lines.append(
            f"signed: records {ep.base}..={last.rec.seq - 1} ({last.rec.seq - ep.base} records) "
            f"by the seal at record {last.rec.seq} ({len(ep.seals)} seals)"
        )
    if seals:
        adds = [seals[0].rec.seq - seals[0].base] + [
            b.rec.seq - a.rec.seq for a, b in zip(seals, seals[1:])
        ]
        lines.append(f"each seal adds {min(adds)}..={max(adds)} records to what is signed "
                     f"(its write, and the seal before it)")
    if since_head is not None:
        lines.append(f"extends the kept head: record {since_head['seq']} (seal {since_head['seal']})")
    return "\n".join(lines)


class HeadError(ValueError):
    """A kept head that is not a head at all (usage error, exit 2)."""


HEAD_KEYS = ("format", "seq", "hash", "seal", "base", "time_ns", "signature")


def _object_no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise HeadError(f"the kept head has the key {dup[0]!r} more than once")
    return dict(pairs)


def parse_head(text: str) -> dict:
    """A kept head, as "Heads and witnesses" writes it: exactly its seven keys, its hex in lower
    case, `seal == seq + 1` and `1 <= base <= seq`; anything else is not a head, refused like an
    unreadable argument (exit 2).

    READING: a key given twice is not "exactly these keys" (it is refused, not read as its last
    value); seq, seal, base and time_ns are JSON integers in u64 range (not 41.0, not true)."""
    try:
        h = json.loads(text, object_pairs_hook=_object_no_duplicates)
    except ValueError as e:
        raise HeadError(f"the kept head is not JSON: {e}") from None
    if not isinstance(h, dict):
        raise HeadError("the kept head is not a JSON object")
    if set(h) != set(HEAD_KEYS):
        extra, missing = sorted(set(h) - set(HEAD_KEYS)), sorted(set(HEAD_KEYS) - set(h))
        raise HeadError(f"the kept head has not exactly the keys {', '.join(HEAD_KEYS)} "
                        f"(extra: {extra}, missing: {missing})")
    if h["format"] != HEAD_FORMAT:
        raise HeadError(f"the kept head's format is not {HEAD_FORMAT}")
    for k in ("seq", "seal", "base", "time_ns"):
        v = h[k]
        if not isinstance(v, int) or isinstance(v, bool) or not (0 <= v < 1 << 64):
            raise HeadError(f"the kept head's {k} is not a u64")
    for k, n in (("hash", 32), ("signature", 64)):
        v = h[k]
        if not isinstance(v, str) or len(v) != 2 * n or not LOWER_HEX_RE.match(v):
            raise HeadError(f"the kept head's {k} is not {2 * n} lower-case hex digits")
    if h["seal"] != h["seq"] + 1 or not (1 <= h["base"] <= h["seq"]):
        raise HeadError(f"the kept head breaks seal == seq + 1 and 1 <= base <= seq (seq "
                        f"{h['seq']}, seal {h['seal']}, base {h['base']})")
    return h


def check_head(head: dict, records: list[Record], pub) -> None:
    """Step 6, once the log is otherwise intact."""
    seq, seal, base, time_ns = head["seq"], head["seal"], head["base"], head["time_ns"]
    hsh, sig = bytes.fromhex(head["hash"]), bytes.fromhex(head["signature"])
    if not sig_ok(pub, sig, seal_message(base, seal, time_ns, hsh)):
        raise Damage("forged", seq, f"the kept head (record {seq}) is not signed by this key")
    last = records[-1].seq if records else 0
    if last < seq:
        raise Damage("rolled back", last + 1,
                     f"the kept head names record {seq}, the log ends at record {last}: records "
                     f"{last + 1}..={seq} were cut off")
    rec = records[seq - 1]
    assert rec.seq == seq
    if rec.hash != hsh:
        raise Damage("rolled back", seq,
                     f"record {seq} has hash {rec.hash.hex()}, the kept head says {hsh.hex()}")


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Verify a Lattice audit log (from FORMAT.md alone).")
    ap.add_argument("audit_dir")
    ap.add_argument("--pubkey", help="file holding `ed25519:<hex>` (default AUDIT_DIR/signing.pub); "
                                     "the `ed25519:<hex>` text itself is accepted too")
    ap.add_argument("--since-head", help="a head kept outside the data dir (one line of JSON)")
    a = ap.parse_args(argv)

    audit_dir = a.audit_dir
    if not os.path.isdir(audit_dir):
        print(f"error: {audit_dir} is not a directory", file=sys.stderr)
        return 2
    if not any(SEGMENT_RE.match(n) for n in os.listdir(audit_dir)) and os.path.isdir(
        os.path.join(audit_dir, "audit")
    ):
        audit_dir = os.path.join(audit_dir, "audit")
    try:
        if a.pubkey and a.pubkey.startswith("ed25519:"):
            pub = parse_pubkey_line(a.pubkey)
        else:
            with open(a.pubkey or os.path.join(audit_dir, "signing.pub")) as f:
                pub = parse_pubkey_line(f.read())
    except (OSError, ValueError) as e:
        print(f"error: no usable public key: {e}", file=sys.stderr)
        return 2
    head = None
    if a.since_head:
        try:
            with open(a.since_head) as f:
                head = parse_head(f.read().strip())
        except (OSError, HeadError) as e:
            print(f"error: no usable kept head: {e}", file=sys.stderr)
            return 2
    try:
        print(verify(audit_dir, pub, head))
        return 0
    except Damage as d:
        print(str(d))
        return 1


if __name__ == "__main__":
    sys.exit(main())
