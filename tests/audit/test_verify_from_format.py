"""Both audit-log verifiers read FORMAT.md the same way: same damage kind, same record number.

What this proves: `verify_from_format.py` beside this file is a verifier written from
audit/FORMAT.md alone (no Rust source read). Each test makes a real log by running the gateway
(LATTICE_BIN, default target/debug/lattice of this checkout), edits it the way someone without
the signing key could (decoding frames per FORMAT.md and, for the "re-chained" edits, encoding
them again with correct CRCs, hashes and links), and checks that this verifier and
`lattice audit verify` give the same verdict: the same exit code, and for a damaged log the same
`<kind> at record N`, which must be the kind and N that FORMAT.md's "Verifying" section gives the
edit (the first failure met in its order: the walk, steps 1-3, in record order, each epoch's
signature, step 4, when the epoch ends). An intact log must get the same summary from both, as
far as FORMAT.md defines it: the totals and head, per epoch the records its last seal signs and
its number of seals, and over the whole log the fewest and most records one seal added. A few tests sign seals with the test
log's own key, to exercise FORMAT.md's epoch rules, which no keyless edit reaches.

Where the two still disagree after following FORMAT.md literally, the test is marked
xfail(strict, raises=Disagreement) with both verdicts in its reason: a point FORMAT.md leaves
open, or a place where one verifier does not do what it says; any other failure in such a test
still fails the run.

Every test uses its own temporary directory and its own gateway, so the tests can run in
parallel (pytest -n) and leave nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VERIFIER = HERE / "verify_from_format.py"
LATTICE_BIN = os.environ.get("LATTICE_BIN") or str(REPO / "target" / "debug" / "lattice")

sys.path.insert(0, str(HERE))
import verify_from_format as vff  # noqa: E402  (CRC32C, the body layout, the seal message)

KINDS = ("modified", "deleted", "reordered", "duplicated", "truncated", "renamed", "unsealed",
         "forged", "rolled back")
DAMAGE_RE = re.compile(r"\b(" + "|".join(KINDS) + r") at record (\d+)")
SUMMARY_RE = re.compile(r"(\d+) records \((\d+) events, (\d+) seals\) in (\d+) segments; "
                        r"head (\d+) ([0-9a-f]{64})")
EPOCH_RE = re.compile(r"^signed: records (\d+)\.\.=(\d+) \((\d+) records\) by the seal at record "
                      r"(\d+) \((\d+) seals\)$", re.M)
ADDS_RE = re.compile(r"^each seal adds (\d+)\.\.=(\d+) records to what is signed\b", re.M)
CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


# --------------------------------------------------------------------------------------------
# A gateway per test.


@pytest.fixture
def work():
    with tempfile.TemporaryDirectory(prefix="lattice-vff-") as d:
        yield Path(d)


def serve(work: Path, calls: int, segment_bytes: int | None = None, tag: str = "serve",
          audit: str = "", refused: bool = False):
    """Run `lattice serve` on a config whose data dir is work/data (extra `[audit]` lines in
    `audit`), make `calls` chat calls, SIGTERM it and check it exits 0. Returns the data dir.
    With refused=True, check instead that the gateway refuses to start (exits non-zero)."""
    if not os.access(LATTICE_BIN, os.X_OK):
        pytest.fail(f"no lattice binary at {LATTICE_BIN} (build it or set LATTICE_BIN)")
    data = work / "data"
    cfg = work / f"{tag}.toml"
    text = (f'data_dir = "{data}"\n[server]\nlisten = "127.0.0.1:0"\n'
            '[upstreams.mock]\nkind = "mock"\n[[routes]]\nmodel = "demo"\nupstream = "mock"\n')
    if segment_bytes is not None or audit:
        text += "[audit]\n" + audit + "\n"
        if segment_bytes is not None:
            text += f"segment_bytes = {segment_bytes}\n"
    cfg.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATTICE_")}
    out_path, err_path = work / f"{tag}.stdout", work / f"{tag}.stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([LATTICE_BIN, "serve", "--config", str(cfg)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, env=env, cwd=work)
    try:
        deadline = time.monotonic() + 60
        first = ""
        while "\n" not in first:
            if refused and proc.poll() is not None:
                assert proc.returncode != 0, "gateway exited 0 without serving"
                return err_path.read_text(errors="replace")
            if proc.poll() is not None:
                pytest.fail(f"gateway exited {proc.returncode} before listening:\n"
                            f"{err_path.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail("gateway did not print its listening line within 60 s")
            time.sleep(0.01)
            first = out_path.read_text(errors="replace")
        m = re.match(r"lattice listening on (http://127\.0\.0\.1:\d+)\s*$", first.splitlines()[0])
        assert m, f"unexpected first stdout line: {first.splitlines()[0]!r}"
        base = m.group(1)
        assert not refused, "the gateway started on a log it should have refused"
        for _ in range(calls):
            req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(CHAT).encode(),
                                         headers={"content-type": "application/json"}, method="POST")
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200
                assert json.loads(resp.read())["object"] == "chat.completion"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        assert rc == 0, f"gateway exited {rc} on SIGTERM:\n{err_path.read_text(errors='replace')}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return data


# --------------------------------------------------------------------------------------------
# The two verifiers.


@dataclass
class Verdict:
    rc: int
    out: str
    kind: str | None
    at: int | None

    def key(self):
        return (self.rc, self.kind, self.at)

    def summary(self):
        """For an intact log: the totals and head; per epoch the records its last seal signs, how
        many, that seal and the epoch's number of seals; and (one line for the whole log) the
        fewest and most records one seal added."""
        m = SUMMARY_RE.search(self.out)
        return ((m.groups() if m else None), [m.groups() for m in EPOCH_RE.finditer(self.out)],
                [m.groups() for m in ADDS_RE.finditer(self.out)])


def _verdict(p: subprocess.CompletedProcess) -> Verdict:
    out = (p.stdout + p.stderr).strip()
    m = DAMAGE_RE.search(out) if p.returncode == 1 else None
    return Verdict(p.returncode, out, m.group(1) if m else None, int(m.group(2)) if m else None)


def _args(since_head: Path | None, pubkey: Path | None) -> list[str]:
    return (["--pubkey", str(pubkey)] if pubkey else []) + (
        ["--since-head", str(since_head)] if since_head else [])


def rust_verify(data: Path, since_head: Path | None = None, pubkey: Path | None = None) -> Verdict:
    cmd = [LATTICE_BIN, "audit", "verify", "--data-dir", str(data)] + _args(since_head, pubkey)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATTICE_")}
    return _verdict(subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env))


def our_verify(data: Path, since_head: Path | None = None, pubkey: Path | None = None) -> Verdict:
    """verify_from_format.main, in this process (its command line; test_intact_log_agrees runs
    it as a script too)."""
    argv = [str(data / "audit")] + _args(since_head, pubkey)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = vff.main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    return _verdict(subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue()))


class Disagreement(AssertionError):
    """The two verifiers' verdicts differ (exit code, damage kind, record number, or an intact
    log's summary). The xfail tests below expect exactly this, so that any other failure in them
    still fails the run."""


def agree(data: Path, since_head: Path | None = None, pubkey: Path | None = None):
    ours = our_verify(data, since_head, pubkey)
    rust = rust_verify(data, since_head, pubkey)
    print(f"ours: {ours.out}\nrust: {rust.out}")  # shown with -rA, or when the test fails
    if ours.key() != rust.key():
        raise Disagreement(f"verdicts differ:\n  ours: {ours.out}\n  rust: {rust.out}")
    return ours, rust


def assert_intact(data: Path, since_head: Path | None = None, pubkey: Path | None = None,
                  epochs: int | None = None):
    """Both exit 0 with the same summary (see Verdict.summary), which is what FORMAT.md makes of
    the log's seals (expected_summary); with `epochs`, in that many epochs."""
    ours, rust = agree(data, since_head, pubkey)
    assert ours.rc == 0 and ours.out.startswith("intact"), f"not intact:\n  {ours.out}\n  {rust.out}"
    if ours.summary() != rust.summary():
        raise Disagreement(f"summaries differ:\n  ours: {ours.out}\n  rust: {rust.out}")
    total, eps, add = ours.summary()
    assert total, ours.out
    assert (eps, add) == expected_summary(data), (ours.out, expected_summary(data))
    if epochs is not None:
        assert len(eps) == epochs, ours.out
    return ours, rust


def expected_summary(data: Path):
    """FORMAT.md's intact summary, from the seals of the log: per epoch (a run of seals with one
    `base`) the records base..=S-1 its last seal S signs, how many, S and its number of seals;
    over the whole log the fewest and most records one seal added, its write and the seal before
    it (seq - the previous seal's seq; for the log's first seal, seq - base)."""
    seals = [(r.seq, json.loads(r.payload)["base"]) for _, recs in read_log(data / "audit")
             for r in recs if r.is_seal]
    runs: list[list[tuple[int, int]]] = []
    for seq, base in seals:
        if runs and runs[-1][-1][1] == base:
            runs[-1].append((seq, base))
        else:
            runs.append([(seq, base)])
    eps = [(str(r[0][1]), str(r[-1][0] - 1), str(r[-1][0] - r[0][1]), str(r[-1][0]), str(len(r)))
           for r in runs]
    adds = [seals[0][0] - seals[0][1]] + [b[0] - a[0] for a, b in zip(seals, seals[1:])]
    return eps, [(str(min(adds)), str(max(adds)))]


def assert_rejected(data: Path, kind: str, at: int, since_head: Path | None = None,
                    pubkey: Path | None = None):
    """Both exit 1 with `<kind> at record <at>`, which is what FORMAT.md gives the edit."""
    ours, rust = agree(data, since_head, pubkey)
    assert ours.rc == 1 and ours.kind, f"neither verifier rejected:\n  {ours.out}\n  {rust.out}"
    assert (ours.kind, ours.at) == (kind, at), (
        f"expected {kind} at record {at}:\n  ours: {ours.out}\n  rust: {rust.out}")
    return ours, rust


def assert_unusable(data: Path, since_head: Path | None = None, pubkey: Path | None = None):
    """Both refuse the input itself (exit 2: not a key, not a head)."""
    ours, rust = agree(data, since_head, pubkey)
    assert ours.rc == 2, f"expected exit 2:\n  ours: {ours.out}\n  rust: {rust.out}"


# --------------------------------------------------------------------------------------------
# Frames, per FORMAT.md.


@dataclass
class Rec:
    seq: int
    time_ns: int
    kind: str
    session: str
    principal: str
    payload: bytes
    prev: bytes
    hash: bytes

    def head(self) -> bytes:
        k, s, p = self.kind.encode(), self.session.encode(), self.principal.encode()
        return (struct.pack("<QQ", self.seq, self.time_ns) + bytes([len(k)]) + k
                + struct.pack("<H", len(s)) + s + struct.pack("<H", len(p)) + p
                + struct.pack("<I", len(self.payload)) + self.payload + self.prev)

    def frame(self) -> bytes:
        body = self.head() + self.hash
        return struct.pack("<II", len(body), vff.crc32c(body)) + body

    @property
    def is_seal(self) -> bool:
        return self.kind == "audit.seal"


def seg_name(seq: int) -> str:
    return f"seg-{seq:020d}.log"


def read_log(audit: Path) -> list[tuple[str, list[Rec]]]:
    """Every segment (name, records), checking each frame as it goes."""
    segs = []
    for p in sorted(audit.glob("seg-*.log")):
        data = p.read_bytes()
        assert data[:8] == b"LTAUDIT2"
        pos, recs = 8, []
        while pos < len(data):
            ln, crc = struct.unpack_from("<II", data, pos)
            body = data[pos + 8 : pos + 8 + ln]
            assert len(body) == ln and vff.crc32c(body) == crc
            r = vff.decode_body(body)
            rec = Rec(r.seq, r.time_ns, r.kind, r.session, r.principal, r.payload, r.prev, r.hash)
            assert rec.frame() == data[pos : pos + 8 + ln]  # decoding and encoding round-trip
            recs.append(rec)
            pos += 8 + ln
        segs.append((p.name, recs))
    return segs


def read_flat(data: Path) -> list[Rec]:
    segs = read_log(data / "audit")
    assert len(segs) == 1, "these edits are written for a one-segment log"
    return segs[0][1]


def write_segments(audit: Path, segs: list[tuple[str, list[Rec]]]) -> None:
    for p in audit.glob("seg-*.log"):
        p.unlink()
    for name, recs in segs:
        (audit / name).write_bytes(b"LTAUDIT2" + b"".join(r.frame() for r in recs))


def write_flat(data: Path, recs: list[Rec]) -> None:
    write_segments(data / "audit", [(seg_name(1), recs)])


def rechain(recs: list[Rec], start: int = 0, renumber: bool = False) -> list[Rec]:
    """Recompute hash (and prev, and with renumber seq) from index `start` on, the way a writer
    without the key would: every CRC, hash and link correct."""
    out = [replace(r) for r in recs]
    for i in range(start, len(out)):
        r = out[i]
        if renumber:
            r.seq = i + 1
        r.prev = out[i - 1].hash if i else bytes(32)
        r.hash = vff.hashlib.sha256(r.head()).digest()
    return out


def first_call_end(recs: list[Rec]) -> int:
    return next(i for i, r in enumerate(recs) if r.kind == "call.end" and b'"status":200' in r.payload)


def with_status_403(recs: list[Rec]) -> tuple[list[Rec], int]:
    """Rewrite the first call.end's status 200 -> 403 and re-chain everything after it."""
    k = first_call_end(recs)
    recs = [replace(r) for r in recs]
    recs[k].payload = recs[k].payload.replace(b'"status":200', b'"status":403', 1)
    return rechain(recs, k), k


def flip_byte(path: Path, offset: int) -> None:
    b = bytearray(path.read_bytes())
    b[offset] ^= 0x01
    path.write_bytes(bytes(b))


def last_seal_before(recs: list[Rec], k: int) -> int:
    """The sequence of the last seal before index k: an edit at k leaves it verifying."""
    return [r.seq for r in recs[:k] if r.is_seal][-1]


def forged_at(recs: list[Rec], k: int) -> int:
    """Where FORMAT.md step 4 reports an edit at index k of an epoch that began before it:
    `forged` at the record after the last seal that verifies, the last seal before k."""
    return last_seal_before(recs, k) + 1


def head_of(data: Path) -> dict:
    p = subprocess.run([LATTICE_BIN, "audit", "head", "--data-dir", str(data)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    h = json.loads(p.stdout)
    assert h["format"] == "lattice-audit-head-v2" and h["seal"] == h["seq"] + 1
    return h


def log_key(data: Path) -> Ed25519PrivateKey:
    """The test log's own signing key (a 32-byte seed), for the tests of rules no keyless edit
    reaches."""
    return Ed25519PrivateKey.from_private_bytes((data / "audit" / "signing.key").read_bytes())


def resign(recs: list[Rec], key: Ed25519PrivateKey, base_of=lambda r, base: base,
           only=lambda r: True) -> list[Rec]:
    """Re-chain every record and sign every seal again (those `only` selects; the others keep
    their payload) under `key`, with base base_of(r, base)."""
    out: list[Rec] = []
    for r in recs:
        r = replace(r, prev=out[-1].hash if out else bytes(32))
        if r.is_seal and only(r):
            base = base_of(r, json.loads(r.payload)["base"])
            r.payload = vff.seal_payload(base, key.sign(vff.seal_message(base, r.seq, r.time_ns, r.prev)))
        r.hash = vff.hashlib.sha256(r.head()).digest()
        out.append(r)
    return out


def recovery_records(data: Path) -> list[tuple[int, dict]]:
    return [(r.seq, json.loads(r.payload)) for _, recs in read_log(data / "audit") for r in recs
            if r.kind == "audit.recovery"]


def assert_recovery_record(data: Path, after_seal: int, torn: Path | None, unsealed: int,
                           vouch_from: int, skipped: bool):
    """FORMAT.md "Recovery records": the gateway's first write on start, right after the old
    last seal, is an `audit.recovery` record naming what it set aside and skipped."""
    recs = [r for _, rs in read_log(data / "audit") for r in rs]
    rec = recs[after_seal]  # the record after seal `after_seal` (sequences start at 1)
    assert rec.seq == after_seal + 1 and rec.kind == "audit.recovery", rec
    p = json.loads(rec.payload)
    assert set(p) == {"set_aside", "unsealed_records", "skipped", "seals_vouch_from"}, p
    if torn is None:
        assert not p["set_aside"], p
    else:  # the torn-* file and its size
        assert torn.name in json.dumps(p["set_aside"]), p
        assert torn.stat().st_size in p["set_aside"].values(), p
    assert p["unsealed_records"] == unsealed, p
    assert p["seals_vouch_from"] == vouch_from, p
    assert bool(p["skipped"]) == skipped, p
    seal = recs[after_seal + 1]  # sealed like any other
    assert seal.is_seal and json.loads(seal.payload)["base"] == vouch_from, seal


# --------------------------------------------------------------------------------------------
# The untouched log, and which key.


def test_intact_log_agrees(work):
    data = serve(work, calls=4)
    ours, _ = assert_intact(data, epochs=1)
    # the verifier as a script, given the data dir itself
    p = subprocess.run([sys.executable, str(VERIFIER), str(data)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == ours.out, (p.stdout, p.stderr)
    recs = read_flat(data)
    assert recs and recs[-1].is_seal and any(r.kind == "call.end" for r in recs)
    assert not recovery_records(data)  # nothing set aside, nothing skipped: no recovery record
    for r in recs:  # every seal payload is in its one spelling
        if r.is_seal:
            assert re.fullmatch(rb'\{"base":1,"sig":"[0-9a-f]{128}"\}', r.payload), r.payload
    # --pubkey from a file outside the data dir (white space around the line is fine)
    pub = work / "pub.txt"
    pub.write_text("  " + (data / "audit" / "signing.pub").read_text().strip() + " \n\n")
    assert_intact(data, pubkey=pub)
    # another key's: no seal verifies, `forged` at the epoch's base (step 4)
    pub.write_text("ed25519:" + Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex() + "\n")
    assert_rejected(data, "forged", 1, pubkey=pub)
    # not a key at all
    pub.write_text("ed25519:1234\n")
    assert_unusable(data, pubkey=pub)


def test_pubkey_in_upper_case_hex(work):
    # FORMAT.md "Files": `ed25519:<64 lower-case hex digits>`; the log's own key in upper case is
    # not a key (exit 2).
    data = serve(work, calls=1)
    pub = work / "pub.txt"
    hx = (data / "audit" / "signing.pub").read_text().strip().split(":", 1)[1]
    assert re.fullmatch(r"[0-9a-f]{64}", hx), hx
    pub.write_text("ed25519:" + hx.upper() + "\n")
    assert_unusable(data, pubkey=pub)


def test_resigned_under_a_new_key_in_the_data_dir(work):
    # Someone who can write the data dir but has not got the key makes a key of their own,
    # rewrites a record, re-signs every seal and replaces signing.pub (and signing.key). Against
    # the data dir's own signing.pub the log is "intact" in both verifiers (FORMAT.md "Which
    # key"): only a public key kept outside the data dir shows it.
    data = serve(work, calls=3)
    audit = data / "audit"
    exported = work / "exported.pub"
    exported.write_text((audit / "signing.pub").read_text())
    recs, _ = with_status_403(read_flat(data))
    key = Ed25519PrivateKey.generate()
    write_flat(data, resign(recs, key))
    (audit / "signing.pub").write_text("ed25519:" + key.public_key().public_bytes_raw().hex() + "\n")
    (audit / "signing.key").write_bytes(key.private_bytes_raw())
    assert_intact(data)
    assert_rejected(data, "forged", 1, pubkey=exported)


# --------------------------------------------------------------------------------------------
# Raw edits: bytes changed (step 1: `modified` at the expected sequence).

FLIPS = {  # byte offset in the one segment, and the record it is in
    "magic": (lambda recs: 0, 1),
    "len low byte": (lambda recs: 8, 1),
    "crc": (lambda recs: 12, 1),
    "seq": (lambda recs: 16, 1),
    "kind": (lambda recs: 8 + 8 + 17, 1),
    "payload": (lambda recs: 8 + len(recs[0].frame()) + 8 + 60, 2),
    "prev": (lambda recs: 8 + sum(len(r.frame()) for r in recs[:2]) - 40, 2),
    "hash": (lambda recs: 8 + sum(len(r.frame()) for r in recs[:2]) - 1, 2),
    "last byte": (lambda recs: 8 + sum(len(r.frame()) for r in recs) - 1, -1),
}


@pytest.mark.parametrize("where", FLIPS)
def test_flip_a_byte(work, where):
    data = serve(work, calls=3)
    recs = read_flat(data)
    offset, at = FLIPS[where]
    flip_byte(data / "audit" / seg_name(1), offset(recs))
    assert_rejected(data, "modified", at if at > 0 else recs[-1].seq)


def test_flip_len_high_byte_reads_as_truncated(work):
    # A length made larger than what is left of the last segment: a frame cut short at the end
    # of the last segment, `truncated`, at the record it starts.
    data = serve(work, calls=3)
    flip_byte(data / "audit" / seg_name(1), 8 + 2)
    assert_rejected(data, "truncated", 1)


def test_cut_the_last_record_short(work):
    data = serve(work, calls=3)
    last = read_flat(data)[-1].seq
    seg = data / "audit" / seg_name(1)
    seg.write_bytes(seg.read_bytes()[:-10])
    assert_rejected(data, "truncated", last)


@pytest.mark.parametrize("tail, kind", [(b"\0" * 5, "truncated"), (b"\0" * 8, "modified")],
                         ids=["a partial frame header", "a zero length"])
def test_bytes_after_the_last_frame(work, tail, kind):
    data = serve(work, calls=1)
    last = read_flat(data)[-1].seq
    seg = data / "audit" / seg_name(1)
    seg.write_bytes(seg.read_bytes() + tail)
    assert_rejected(data, kind, last + 1)


def _body_left_over(r: Rec) -> bytes:  # a byte between prev and hash
    head = r.head() + b"\0"
    return head + vff.hashlib.sha256(head).digest()


def _body_payload_len(r: Rec, delta: int) -> bytes:  # payload_len off by delta, bytes unchanged
    head = bytearray(r.head())
    at = 16 + 1 + len(r.kind.encode()) + 2 + len(r.session.encode()) + 2 + len(r.principal.encode())
    (n,) = struct.unpack_from("<I", head, at)
    struct.pack_into("<I", head, at, n + delta)
    return bytes(head) + vff.hashlib.sha256(bytes(head)).digest()


BODY_EDITS = {
    # Step 1: len in range, CRC32C and hash right, but the length-prefixed fields do not fill the
    # body exactly: `modified` at the record.
    "a byte left over": _body_left_over,
    "payload_len one too large": lambda r: _body_payload_len(r, 1),
    "payload_len one too small": lambda r: _body_payload_len(r, -1),
    # READING (FORMAT.md says UTF-8 and gives no kind for a field that is not): `modified`.
    "kind not UTF-8": lambda r: (lambda h: h + vff.hashlib.sha256(h).digest())(
        replace(r, kind="call.end").head().replace(b"call.end", b"call.\xffnd", 1)),
}


@pytest.mark.parametrize("edit", BODY_EDITS)
def test_fields_that_do_not_fill_the_body(work, edit):
    data = serve(work, calls=2)
    recs = read_flat(data)
    i = first_call_end(recs)
    body = BODY_EDITS[edit](recs[i])
    assert len(body) >= 89 and vff.hashlib.sha256(body[:-32]).digest() == body[-32:]
    frames = [r.frame() for r in recs]
    frames[i] = struct.pack("<II", len(body), vff.crc32c(body)) + body
    (data / "audit" / seg_name(1)).write_bytes(b"LTAUDIT2" + b"".join(frames))
    assert_rejected(data, "modified", recs[i].seq)


# --------------------------------------------------------------------------------------------
# Raw edits: frames removed, moved or copied (step 2, which tells them apart). Records are
# numbered from 1; r(n) is record n.


def _move(recs, i, j):
    recs = list(recs)
    recs.insert(j, recs.pop(i))
    return recs


def _renumber_4_as_3(recs):
    recs = [replace(r) for r in recs]
    recs[3].seq = 3
    return rechain(recs, 3)


def _unlink_5(recs):  # record 5's prev no longer its predecessor's hash; CRC and hash right
    recs = [replace(r) for r in recs]
    recs[4].prev = bytes(32)
    recs[4].hash = vff.hashlib.sha256(recs[4].head()).digest()
    return recs


SEQUENCE_EDITS = {
    # name: (edit, kind, N)
    "delete 3": (lambda r: r[:2] + r[3:], "deleted", 3),  # 4 where 3 belongs, 5 after it
    "swap 3 and 4": (lambda r: r[:2] + [r[3], r[2]] + r[4:], "reordered", 3),  # 3 right after 4
    "swap 3 and 7": (lambda r: r[:2] + [r[6]] + r[3:6] + [r[2]] + r[7:], "deleted", 3),
    "move 3 after 6": (lambda r: _move(r, 2, 5), "deleted", 3),
    "move 6 before 3": (lambda r: _move(r, 5, 2), "reordered", 3),
    "copy 3 right after it": (lambda r: r[:3] + [r[2]] + r[3:], "duplicated", 3),
    "copy 3 after 6": (lambda r: r[:6] + [r[2]] + r[6:], "reordered", 3),
    "renumber 4 as 3, re-chained": (_renumber_4_as_3, "reordered", 3),  # e-1, not a copy
    "relink 5": (_unlink_5, "modified", 5),
}


@pytest.mark.parametrize("edit", SEQUENCE_EDITS)
def test_sequence_edits(work, edit):
    data = serve(work, calls=3)
    fn, kind, at = SEQUENCE_EDITS[edit]
    write_flat(data, fn(read_flat(data)))
    assert_rejected(data, kind, at)


# --------------------------------------------------------------------------------------------
# Re-chained edits: every CRC, hash and link correct; only the seals can tell. FORMAT.md step 4
# reports `forged` at the record after the last seal that still verifies, step 5 `unsealed` at
# the first record past the last seal.


def test_rewrite_status_and_rechain(work):
    data = serve(work, calls=3)
    orig = read_flat(data)
    recs, k = with_status_403(orig)
    write_flat(data, recs)
    assert_rejected(data, "forged", forged_at(orig, k))


def test_rewrite_status_and_drop_later_seals(work):
    data = serve(work, calls=3)
    orig = read_flat(data)
    recs, k = with_status_403(orig)
    recs = recs[: k + 1] + [r for r in recs[k + 1 :] if not r.is_seal]
    write_flat(data, rechain(recs, k, renumber=True))
    assert_rejected(data, "unsealed", last_seal_before(orig, k) + 1)


@pytest.mark.parametrize("where", ["in its place", "at the end"])
def test_rewrite_status_and_replay_an_older_seal(work, where):
    data = serve(work, calls=3)
    orig = read_flat(data)
    recs, k = with_status_403(orig)
    older = next(r for r in orig[:k] if r.is_seal)  # a genuine seal from before the change
    own = next(i for i in range(k + 1, len(recs)) if recs[i].is_seal)
    after = [r for r in recs[k + 1 :] if not r.is_seal]
    if where == "in its place":
        n_before = sum(1 for r in recs[k + 1 : own] if not r.is_seal)
        tail = after[:n_before] + [replace(older)] + after[n_before:]
    else:
        tail = after + [replace(older)]
    write_flat(data, rechain(recs[: k + 1] + tail, k, renumber=True))
    assert_rejected(data, "forged", forged_at(orig, k))


def test_remove_every_seal_and_rechain(work):
    data = serve(work, calls=3)
    recs = [r for r in read_flat(data) if not r.is_seal]
    write_flat(data, rechain(recs, 0, renumber=True))
    assert_rejected(data, "unsealed", 1)


def test_delete_a_record_and_rechain(work):
    data = serve(work, calls=3)
    recs = read_flat(data)
    k = first_call_end(recs)
    write_flat(data, rechain(recs[:k] + recs[k + 1 :], k, renumber=True))
    assert_rejected(data, "forged", forged_at(recs, k))


def test_append_rechained_records(work):
    data = serve(work, calls=3)
    recs = read_flat(data)
    extra = [replace(r) for r in recs if not r.is_seal][-2:]
    write_flat(data, rechain(recs + extra, len(recs), renumber=True))
    assert_rejected(data, "unsealed", recs[-1].seq + 1)


def test_append_rechained_records_and_a_replayed_seal(work):
    data = serve(work, calls=3)
    recs = read_flat(data)
    extra = [replace(r) for r in recs if not r.is_seal][-2:] + [replace(recs[-1])]
    write_flat(data, rechain(recs + extra, len(recs), renumber=True))
    assert_rejected(data, "forged", recs[-1].seq + 1)  # the genuine last seal still verifies


def test_two_edits_the_walk_comes_before_the_last_epochs_signature(work):
    # A rewritten, re-chained record (step 4 would say `forged`) and, further on in the same
    # (last) epoch, a flipped byte in the last record L: FORMAT.md checks an epoch's signature
    # when the epoch ends, here after the last record, so the walk meets `modified` at L first.
    data = serve(work, calls=3)
    orig = read_flat(data)
    recs, k = with_status_403(orig)
    write_flat(data, recs)
    seg = data / "audit" / seg_name(1)
    clean = seg.read_bytes()
    flip_byte(seg, 8 + sum(len(r.frame()) for r in recs) - 1)
    assert_rejected(data, "modified", recs[-1].seq)
    # Records past the last seal as well (step 5): step 4 for the last epoch comes first.
    seg.write_bytes(clean)
    extra = [replace(r) for r in recs if not r.is_seal][-2:]
    write_flat(data, rechain(recs + extra, len(recs), renumber=True))
    assert_rejected(data, "forged", forged_at(orig, k))


# --------------------------------------------------------------------------------------------
# Segments.


def several_segments(work: Path) -> tuple[Path, list[tuple[str, list[Rec]]]]:
    data = serve(work, calls=14, segment_bytes=4096)
    segs = read_log(data / "audit")
    assert len(segs) >= 3, [n for n, _ in segs]
    return data, segs


def test_several_segments_intact(work):
    data, segs = several_segments(work)
    assert_intact(data, epochs=1)
    seq = 1
    for name, recs in segs:  # each segment is named for the sequence of its first record
        assert name == seg_name(seq)
        seq += len(recs)
    (data / "audit" / seg_name(seq)).write_bytes(b"LTAUDIT2")  # an empty last segment: the next record's
    assert_intact(data)
    (data / "audit" / seg_name(seq)).unlink()
    (data / "audit" / seg_name(seq + 1)).write_bytes(b"LTAUDIT2")  # named for the wrong record
    assert_rejected(data, "renamed", seq)


@pytest.mark.parametrize("how", ["second +1", "last -1", "first to 0"])
def test_rename_a_segment(work, how):
    data, segs = several_segments(work)
    audit = data / "audit"
    names = [n for n, _ in segs]
    num = [int(n[4:24]) for n in names]
    src, dst, at = {
        "second +1": (names[1], seg_name(num[1] + 1), num[1]),
        "last -1": (names[-1], seg_name(num[-1] - 1), num[-1]),
        "first to 0": (names[0], seg_name(0), 1),
    }[how]
    (audit / src).rename(audit / dst)
    assert_rejected(data, "renamed", at)  # at the sequence the chain is at there


SEGMENT_EDITS = {
    # name: (edit of [(name, records)] or of the files, kind, N as a function of segs)
    "version 1 magic": ("magic", "modified", lambda segs: 1),
    "second segment removed": ("unlink 1", "renamed", lambda segs: segs[1][1][0].seq),
    "first segment cut short": ("cut 0", "modified", lambda segs: segs[0][1][-1].seq),
    "first record of the second moved to the first": ("move", "renamed",
                                                      lambda segs: segs[1][1][0].seq + 1),
}


@pytest.mark.parametrize("edit", SEGMENT_EDITS)
def test_segment_edits(work, edit):
    data, segs = several_segments(work)
    audit = data / "audit"
    how, kind, at = SEGMENT_EDITS[edit]
    first = audit / segs[0][0]
    if how == "magic":
        first.write_bytes(b"LTAUDIT1" + first.read_bytes()[8:])
    elif how == "unlink 1":
        (audit / segs[1][0]).unlink()
    elif how == "cut 0":  # a frame cut short, but not in the last segment
        first.write_bytes(first.read_bytes()[:-10])
    else:
        moved = [(n, list(r)) for n, r in segs]
        moved[0][1].append(moved[1][1].pop(0))
        write_segments(audit, moved)
    assert_rejected(data, kind, at(segs))


def test_swap_across_a_segment_boundary(work):
    # The last record E of one segment swapped with the first record E+1 of the next: step 2's
    # "the record right after it in the same segment" is not E (it is in the next segment), so
    # E+1 where E belongs is `deleted` at E. (The same swap inside a segment is `reordered`.)
    data, segs = several_segments(work)
    assert len(segs[0][1]) >= 2 and len(segs[1][1]) >= 2
    swapped = [(n, list(r)) for n, r in segs]
    swapped[0][1][-1], swapped[1][1][0] = swapped[1][1][0], swapped[0][1][-1]
    write_segments(data / "audit", swapped)
    assert_rejected(data, "deleted", segs[0][1][-1].seq)


# --------------------------------------------------------------------------------------------
# Rollback: cut back to an older head; only a head kept outside the data dir shows it.


def test_roll_back_is_caught_by_a_kept_head(work):
    data = serve(work, calls=2, tag="first")
    audit = data / "audit"
    snap = work / "snapshot"
    snap.mkdir()
    for p in audit.glob("seg-*.log"):
        shutil.copy2(p, snap / p.name)
    serve(work, calls=3, tag="second")
    assert not recovery_records(data)  # a clean restart writes none
    h = head_of(data)
    head = work / "head.json"  # outside the data dir
    head.write_text(json.dumps(h))
    assert_intact(data, since_head=head)  # the log holds the head it just printed

    def restore():
        for p in audit.glob("seg-*.log"):
            p.unlink()
        for p in snap.iterdir():
            shutil.copy2(p, audit / p.name)

    restore()
    assert_intact(data)  # cut back to an older head, the log alone looks intact
    last = read_flat(data)[-1].seq
    assert_rejected(data, "rolled back", last + 1, since_head=head)  # the first record cut off
    # Cut back and written on past the head: record `seq` is there, with another hash.
    serve(work, calls=4, tag="third")
    assert read_flat(data)[-1].seq > h["seq"]
    assert_intact(data)
    assert_rejected(data, "rolled back", h["seq"], since_head=head)


def test_kept_head_not_signed_by_the_key(work):
    data = serve(work, calls=2)
    h = head_of(data)
    h["hash"] = "00" * 32  # no longer what the signature signs
    head = work / "head.json"
    head.write_text(json.dumps(h))
    assert_rejected(data, "forged", h["seq"], since_head=head)


HEAD_EDITS = {
    # FORMAT.md: a head has `seal == seq + 1` and `1 <= base <= seq` (`seq` is not signed);
    # anything else is not a head, and `verify --since-head` exits 2.
    "seq one less": lambda h: {**h, "seq": h["seq"] - 1},
    "base 0": lambda h: {**h, "base": 0},
    "format": lambda h: {**h, "format": "lattice-audit-head-v1"},
    "not JSON": lambda h: None,
}
HEAD_SPELLINGS = {
    # FORMAT.md: "A head has exactly these keys, its hex in lower case": the log's own head spelt
    # otherwise is not a head either, though the signature covers what it says.
    "upper-case hash": lambda h: json.dumps({**h, "hash": h["hash"].upper()}),
    "upper-case signature": lambda h: json.dumps({**h, "signature": h["signature"].upper()}),
    "an extra key": lambda h: json.dumps({**h, "note": "kept by ops"}),
    "a key missing": lambda h: json.dumps({k: v for k, v in h.items() if k != "time_ns"}),
    "a key twice": lambda h: json.dumps(h)[:-1] + ', "seq": %d}' % h["seq"],
}


@pytest.mark.parametrize("edit", list(HEAD_EDITS) + list(HEAD_SPELLINGS))
def test_kept_head_input(work, edit):
    data = serve(work, calls=1)
    h = head_of(data)
    head = work / "head.json"
    head.write_text(json.dumps(h))
    assert_intact(data, since_head=head)  # the head as printed: a head, and the log holds it
    if edit in HEAD_EDITS:
        new = HEAD_EDITS[edit](h)
        head.write_text("not a head" if new is None else json.dumps(new))
    else:
        head.write_text(HEAD_SPELLINGS[edit](h))
    assert_unusable(data, since_head=head)


# --------------------------------------------------------------------------------------------
# What the gateway does on start with a damaged log (FORMAT.md "Recovery"), and epochs.


def test_restart_sets_an_unsealed_tail_aside(work):
    # Records appended after the last seal look like a write a crash cut short: the gateway cuts
    # them into a torn-*.bin file on start, records that in an audit.recovery record, and the
    # log verifies again. (Both verifiers reject the edited log before that.)
    data = serve(work, calls=3, tag="first")
    recs = read_flat(data)
    extra = [replace(r) for r in recs if not r.is_seal][-2:]
    write_flat(data, rechain(recs + extra, len(recs), renumber=True))
    assert_rejected(data, "unsealed", recs[-1].seq + 1)
    serve(work, calls=1, tag="second")
    torn = list((data / "audit").glob("torn-*.bin"))
    assert len(torn) == 1
    assert_recovery_record(data, recs[-1].seq, torn[0], unsealed=2, vouch_from=1, skipped=False)
    assert_intact(data, epochs=1)


def test_new_epoch_after_allow_corruption_still_reports_the_damage(work):
    data = serve(work, calls=3, tag="first")
    orig = read_flat(data)
    recs, k = with_status_403(orig)
    write_flat(data, recs)
    assert "allow_corruption" in serve(work, calls=0, tag="refused", refused=True)
    serve(work, calls=2, tag="epoch", audit="allow_corruption = true")
    last_old = orig[-1].seq
    assert_recovery_record(data, last_old, None, unsealed=0, vouch_from=last_old + 1, skipped=True)
    bases = {json.loads(r.payload)["base"] for r in read_flat(data) if r.is_seal}
    assert bases == {1, last_old + 1}, bases  # a second epoch, vouching only for what it wrote
    assert_rejected(data, "forged", forged_at(orig, k))
    # The order (FORMAT.md "Verifying"): the first epoch's signature is checked when it ends, at
    # the first seal of the second, so damage to the walk after that seal is met later ...
    seg = data / "audit" / seg_name(1)
    now, clean = read_flat(data), seg.read_bytes()
    first_new_seal = next(r.seq for r in now if r.is_seal and r.seq > last_old)
    assert first_new_seal < now[-1].seq
    flip_byte(seg, len(clean) - 1)  # the last record's hash
    assert_rejected(data, "forged", forged_at(orig, k))
    # ... and damage to the walk before it (the recovery record, record last_old + 1) first.
    seg.write_bytes(clean)
    flip_byte(seg, 8 + sum(len(r.frame()) for r in now[:last_old]) + 8 + 20)
    assert_rejected(data, "modified", last_old + 1)


def test_epoch_after_an_unsealed_flood(work):
    # More re-chained records past the last seal than the writer ever leaves unsealed (8192): refused on start;
    # with allow_corruption the gateway sets them aside and starts a new epoch right after the
    # last seal, which vouches for itself: the log is intact, in two epochs.
    data = serve(work, calls=3, tag="first")
    recs = read_flat(data)
    last_old = recs[-1].seq
    ev = [r for r in recs if not r.is_seal][-1]
    write_flat(data, rechain(recs + [replace(ev) for _ in range(8193)], len(recs), renumber=True))
    assert_rejected(data, "unsealed", last_old + 1)
    assert "allow_corruption" in serve(work, calls=0, tag="refused", refused=True)
    serve(work, calls=2, tag="epoch", audit="allow_corruption = true")
    torn = list((data / "audit").glob("torn-*.bin"))
    assert len(torn) == 1
    # (the flood is also reported as skipped damage: more than the writer leaves unsealed)
    assert_recovery_record(data, last_old, torn[0], unsealed=8193, vouch_from=last_old + 1,
                           skipped=True)
    assert_intact(data, epochs=2)
    # Hiding that record: rewrite it and re-chain. No seal of the new epoch verifies any more:
    # `forged` at its base.
    recs = [replace(r) for r in read_flat(data)]
    rec = recs[last_old]
    rec.payload = rec.payload.replace(b'"unsealed_records":8193', b'"unsealed_records":0')
    assert b'"unsealed_records":0' in rec.payload
    write_flat(data, rechain(recs, last_old))
    assert_rejected(data, "forged", last_old + 1)


def _new_epoch(data: Path, base_from_p) -> int:
    """Append two events and a seal after the last seal P, all seals signed with the log's own
    key, the new seal with base base_from_p(P). Returns P."""
    recs = read_flat(data)
    p = recs[-1].seq
    extra = [replace(r) for r in recs if not r.is_seal][-2:] + [replace(recs[-1])]
    recs = rechain(recs + extra, len(recs), renumber=True)
    write_flat(data, resign(recs, log_key(data), lambda r, b: base_from_p(p) if r.seq > p else b))
    return p


FORGED_THEN_EPOCH = {
    # The first epoch rewritten and re-chained (its seals not re-signed); a second epoch after its
    # last seal P, two events and a seal at P+3 signed with the log's own key, with this base.
    # name: (base from P, verdict from (P, where step 4 reports the first epoch))
    # A good second epoch: the first epoch's signature, checked when it ends, fails.
    "base P+1": (lambda p: p + 1, lambda p, f: ("forged", f)),
    # FORMAT.md step 3: the seal's own checks come before the signature of the epoch it ends.
    "base inside the first epoch": (lambda p: p - 1, lambda p, f: ("forged", p + 3)),
    "one record between the epochs": (lambda p: p + 2, lambda p, f: ("unsealed", p + 1)),
}


@pytest.mark.parametrize("case", list(FORGED_THEN_EPOCH))
def test_forged_epoch_then_a_new_epoch(work, case):
    data = serve(work, calls=3)
    orig = read_flat(data)
    recs, k = with_status_403(orig)
    p = recs[-1].seq
    extra = [replace(r) for r in recs if not r.is_seal][-2:] + [replace(recs[-1])]
    recs = rechain(recs + extra, len(recs), renumber=True)
    base_from_p, verdict = FORGED_THEN_EPOCH[case]
    write_flat(data, resign(recs, log_key(data), lambda r, b: base_from_p(p),
                            only=lambda r: r.seq > p))  # only the new seal is signed
    kind, n = verdict(p, forged_at(orig, k))
    assert_rejected(data, kind, n)


EPOCH_RULES = {
    # FORMAT.md "Epochs" and step 3. name: (new seal's base from P, verdict from P)
    "base one past the old last seal": (lambda p: p + 1, lambda p: ("intact", 2)),
    "base at the old last seal": (lambda p: p, lambda p: ("intact", 2)),
    "base inside the old epoch": (lambda p: p - 1, lambda p: ("forged", p + 3)),
    "one record between the epochs": (lambda p: p + 2, lambda p: ("unsealed", p + 1)),
}


@pytest.mark.parametrize("rule", EPOCH_RULES)
def test_epoch_rules_signed_with_the_logs_key(work, rule):
    data = serve(work, calls=3)
    base_from_p, verdict = EPOCH_RULES[rule]
    p = _new_epoch(data, base_from_p)
    kind, n = verdict(p)
    if kind != "intact":
        assert_rejected(data, kind, n)
        return
    # The intact summary of two epochs: per epoch the records its last seal signs (base..=P+2
    # for the new one) and its seals; over the whole log one line, each seal adding "its write,
    # and the seal before it": P+3 - P = 3 records for the new epoch's seal, whichever its base.
    ours, _ = assert_intact(data, epochs=n)
    _, eps, add = ours.summary()
    b = base_from_p(p)
    assert eps[1] == (str(b), str(p + 2), str(p + 3 - b), str(p + 3), "1"), ours.out
    assert int(add[0][1]) >= 3, ours.out


def test_a_seal_with_another_base_inside_an_epoch(work):
    data = serve(work, calls=3)
    recs = read_flat(data)
    seals = [r.seq for r in recs if r.is_seal]
    odd = seals[2]  # base 2 where base 1 is the epoch's: not past what the seal before covers
    write_flat(data, resign(recs, log_key(data), lambda r, b: 2 if r.seq == odd else b))
    assert_rejected(data, "forged", odd)


def test_first_seal_with_base_above_1(work):
    # FORMAT.md step 3: for the first seal of the log, records 1..base-1 (which no seal covers)
    # are `unsealed` at 1.
    data = serve(work, calls=3)
    recs = read_flat(data)
    first = next(r.seq for r in recs if r.is_seal)
    recs = rechain([r for r in recs if r.seq != first], 0, renumber=True)  # the first seal removed
    write_flat(data, resign(recs, log_key(data), lambda r, b: 2))
    assert_rejected(data, "unsealed", 1)


# --------------------------------------------------------------------------------------------
# The last seal's own bytes. Its signature covers base, seq, time_ns and prev, not how its
# payload is spelt, and no later record chains its hash: FORMAT.md fixes the one spelling, and
# any other is `forged` at the seal.

RESPELL = {
    "spaces": lambda p, b: json.dumps(p).encode(),
    "key order": lambda p, b: json.dumps({"sig": p["sig"], "base": p["base"]},
                                         separators=(",", ":")).encode(),
    "trailing space": lambda p, b: b + b" ",
    "upper-case hex": lambda p, b: json.dumps({"base": p["base"], "sig": p["sig"].upper()},
                                              separators=(",", ":")).encode(),
    "leading zero": lambda p, b: b.replace(b'"base":1,', b'"base":01,', 1),
    "extra key": lambda p, b: json.dumps({**p, "note": "x"}, separators=(",", ":")).encode(),
    "duplicate key": lambda p, b: ('{"base":%d,"sig":"%s","sig":"%s"}'
                                   % (p["base"], "00" * 64, p["sig"])).encode(),
}


@pytest.mark.parametrize("how", RESPELL)
def test_respell_the_last_seal(work, how):
    data = serve(work, calls=2)
    recs = read_flat(data)
    last = recs[-1]
    assert last.is_seal
    last.payload = RESPELL[how](json.loads(last.payload), last.payload)
    write_flat(data, rechain(recs, len(recs) - 1))
    assert_rejected(data, "forged", last.seq)
