"""Differential test of the default Rego bundle: regorus (inside `lattice policy eval`) against
OPA's own Go engine (OPA v1.20.2 through `opa-golib-python-bindings`, pinned in
tests/policy/requirements-opa.txt and installed into tests/.venv by tests/sdk/setup.sh).

Both engines load the same bundle (every `*.rego` under policies/, every `data.json` at its
OPA-style mount: `policies/lattice/data.json` is `data.lattice`) and evaluate
`data.lattice.authz.decision` for a deterministic set of input documents (schema v1,
policies/README.md) that crosses principals of every team, unknown/empty teams, the admin role
and absent principals with models inside and outside the teams' patterns, tool lists, and times
around the business-hours edges. `allow`, the reasons (as sets) and the obligations must be
equal; an evaluation error counts as "fail closed" on either side and only agrees with an error.

This test found that the default bundle let an anonymous call (`principal: null`) through on
regorus, where OPA failed closed: regorus makes `object.get` on a non-object and
`sprintf("%q", [null])` undefined, where OPA raises an error. The bundle now guards these
inputs, and they are part of the sweep (a null, a string, and a null-team principal).

The binary comes from $LATTICE_BIN (default <repo>/target/debug/lattice).
Run: tests/.venv/bin/python -m pytest -q -p no:cacheprovider tests/policy
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opa_bindings import OpaEngine, OpaError

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE = REPO_ROOT / "policies"
DECISION = "lattice.authz.decision"
LATTICE_BIN = Path(os.environ.get("LATTICE_BIN") or REPO_ROOT / "target" / "debug" / "lattice")
MIN_INPUTS = 300

ABSENT = object()  # a field left out of the input document altogether

# ---- the bundle, loaded into OPA -----------------------------------------------------------


def bundle_files() -> list[Path]:
    """The bundle's files as lattice reads them: `*.rego` and `*.json`, dot-files skipped."""
    out = []
    for path in sorted(BUNDLE.rglob("*")):
        rel = path.relative_to(BUNDLE)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix in (".rego", ".json"):
            out.append(path)
    return out


def mount(rel: Path, value: Any) -> Any:
    """`a/b/data.json` -> {"a": {"b": value}} (what lattice's bundle loader does)."""
    for key in reversed(rel.parent.parts):
        value = {key: value}
    return value


def load_opa() -> OpaEngine:
    engine = OpaEngine()
    rego = 0
    for path in bundle_files():
        rel = path.relative_to(BUNDLE)
        if path.suffix == ".rego":
            engine.add_policy(rel.as_posix(), path.read_text())
            rego += 1
        else:
            # OPA bundles read only data.json (and data.yaml); lattice reads every *.json. They
            # agree while every data file is a data.json: refuse to compare anything else.
            assert path.name == "data.json", (
                f"{rel}: lattice mounts every *.json file, an OPA bundle only data.json; "
                "rename it or teach this test the difference"
            )
            engine.add_data(mount(rel, json.loads(path.read_text())))
    assert rego > 0, f"no .rego file under {BUNDLE}"
    return engine


# ---- the input documents -------------------------------------------------------------------


def principal(pid: str, kind: str, user: str, team: Any, roles: Any, **attrs: str) -> dict:
    p = {"id": pid, "kind": kind, "user": user, "team": team, "roles": roles, "attributes": attrs}
    return {k: v for k, v in p.items() if v is not ABSENT}


PRINCIPALS: list[tuple[str, Any]] = [
    ("research", principal("key_r1", "api_key", "ana", "research", ["developer"], cost_center="r-17")),
    ("research-mtls", principal("spiffe://lattice.local/client/r2", "mtls", "r2", "research", [])),
    ("analysts", principal("key_y1", "api_key", "ann", "analysts", ["developer"])),
    ("support", principal("key_s1", "api_key", "bo", "support", ["agent"])),
    ("finance", principal("sub-cy", "jwt", "cy", "finance", ["analyst"], cost_center="f-3")),
    ("unknown-team", principal("key_m1", "api_key", "dee", "marketing", ["developer"])),
    ("empty-team", principal("key_e1", "api_key", "eve", "", [])),
    ("no-team-field", principal("key_n1", "api_key", "fay", ABSENT, ["developer"])),
    ("no-roles-field", principal("key_n2", "api_key", "gus", "research", ABSENT)),
    ("admin-no-team", principal("key_a1", "api_key", "root", "ops", ["admin"])),
    ("admin-support", principal("key_a2", "api_key", "hal", "support", ["developer", "admin"])),
    ("admin-finance", principal("sub-ivy", "jwt", "ivy", "finance", ["admin"])),
    ("Admin-case", principal("key_a3", "api_key", "jo", "research", ["Admin"])),
    ("principal-empty-object", {}),
    ("principal-absent", ABSENT),
    ("principal-null", None),
    ("principal-string", "key_x"),
    ("team-null", principal("key_t", "api_key", "tim", None, [])),
]

MODELS = [
    "gpt-4o",  # gpt-* (research) but not support's exact gpt-4o-mini
    "gpt-4o-mini",  # exact for support, gpt-* for research
    "gpt-4o-mini-2024-07-18",  # longer than support's exact name
    "gpt-",  # the bare prefix itself
    "o1",  # o*
    "o3-mini",
    "omni-large",  # o* is a plain prefix: also matches
    "demo",  # exact for every team
    "demo-alias",  # not the exact name
    "claude-3-5-haiku-latest",  # claude-* (research, finance)
    "claude-opus-4",
    "llama-3.1-70b",  # no team lists it
    "GPT-4o",  # case matters
]

TOOLS: list[Any] = [
    [],
    ["web_search"],
    ["calculator"],
    ["code_interpreter", "calculator"],
    ["shell"],
    ["calculator", "shell"],
    ["web_search", "shell", "file_delete"],
    ["calculator", "calculator"],
    ["Bash", "Read", "Edit", "mcp__github__create_issue"],  # a coding agent's own tools
    ABSENT,
]

# (weekday, hour) around the business-hours edges (Mon-Fri, 08 <= hour < 18, UTC).
WEEK_START = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)  # a Monday
TIMES = [
    ("Monday", 7),
    ("Monday", 8),
    ("Tuesday", 0),
    ("Wednesday", 12),
    ("Thursday", 17),
    ("Thursday", 23),
    ("Friday", 17),
    ("Friday", 18),
    ("Saturday", 7),
    ("Saturday", 12),
    ("Sunday", 8),
    ("Sunday", 17),
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def time_doc(weekday: str, hour: int) -> dict:
    t = WEEK_START + dt.timedelta(days=WEEKDAYS.index(weekday), hours=hour, minutes=27, seconds=21)
    assert t.strftime("%A") == weekday
    return {"unix": int(t.timestamp()), "rfc3339": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "weekday": weekday, "hour": hour}


def request_doc(model: str, tools: Any, i: int) -> dict:
    anthropic = model.startswith("claude-")
    surface = "messages" if anthropic else ("chat.completions", "embeddings")[i % 2]
    req = {
        "surface": surface,
        "method": "POST",
        "path": {"messages": "/v1/messages", "chat.completions": "/v1/chat/completions", "embeddings": "/v1/embeddings"}[surface],
        "model": model,
        "provider": "anthropic" if anthropic else ("mock" if model.startswith("demo") else "openai"),
        "upstream": "anthropic" if anthropic else "openai",
        "stream": i % 3 == 0,
        "max_tokens": 512 if i % 2 else None,
        "tools": tools,
        "session": f"s-{i}",
        # Another principal's session (delegation within a team), none, or null.
        "session_owner": [ABSENT, None, {"id": "p0", "user": "u0", "team": "research"},
                          {"id": "p0", "user": "u0", "team": "support"}, {"id": "p0", "user": "u0", "team": ""}][i % 5],
        "estimated_cost_usd": 0.0123,
    }
    return {k: v for k, v in req.items() if v is not ABSENT}


def input_doc(p: Any, model: str, tools: Any, when: tuple[str, int] | None, i: int) -> dict:
    doc: dict[str, Any] = {"version": 1}
    if p is not ABSENT:
        doc["principal"] = p
    doc["request"] = request_doc(model, tools, i)
    doc["budget"] = {}
    if when is not None:
        doc["time"] = time_doc(*when)
    return doc


def build_inputs() -> list[dict]:
    P, M, T, H = [p for _, p in PRINCIPALS], MODELS, TOOLS, TIMES
    noon = ("Wednesday", 12)
    docs: list[dict] = []
    # Model access: every principal x every model (no tools, in business hours).
    docs += [input_doc(p, m, [], noon, len(docs) + k) for k, (p, m) in enumerate((p, m) for p in P for m in M)]
    # Tool allow-list: every principal x every tool list (an allowed model).
    docs += [input_doc(p, "demo", t, noon, len(docs) + k) for k, (p, t) in enumerate((p, t) for p in P for t in T)]
    # Business hours: every principal x every time, and without a time at all.
    docs += [input_doc(p, "demo", [], h, len(docs) + k) for k, (p, h) in enumerate((p, h) for p in P for h in H + [None])]
    # Mixed: several reasons at once; co-prime strides walk the combinations.
    for i in range(160):
        docs.append(input_doc(P[i % len(P)], M[(i * 5 + 1) % len(M)], T[(i * 7 + 2) % len(T)], H[(i * 11 + 3) % len(H)], i))
    seen, out = set(), []
    for d in docs:
        key = json.dumps(d, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


# ---- evaluating ------------------------------------------------------------------------------

# An outcome: ("decision", allow, sorted reasons, obligations) or ("error", message).


def opa_outcome(engine: OpaEngine, doc: dict) -> tuple:
    try:
        d = engine.eval_document(DECISION, doc)
    except OpaError as e:  # includes OpaUndefinedError
        return ("error", str(e))
    return normalize(d)


def lattice_outcome(doc: dict) -> tuple:
    r = subprocess.run(
        [str(LATTICE_BIN), "policy", "eval", "--input", "-", "--bundle", str(BUNDLE)],
        input=json.dumps(doc), capture_output=True, text=True, timeout=60,
    )
    if r.returncode != 0:
        # `lattice policy eval` exits 2 when the decision fails closed (error, undefined,
        # malformed); anything else is the test harness's problem.
        assert r.returncode == 2 and r.stderr.startswith("lattice: "), (r.returncode, r.stdout, r.stderr)
        return ("error", r.stderr.strip())
    out = json.loads(r.stdout)
    assert re.fullmatch(r"[0-9a-f]{64}", out["bundle_sha256"]), out
    return normalize(out["decision"])


def normalize(d: Any) -> tuple:
    if not isinstance(d, dict) or not isinstance(d.get("allow"), bool):
        return ("error", f"malformed decision: {d!r}")
    reasons = d.get("reasons", [])
    return ("decision", d["allow"], sorted(reasons), d.get("obligations", {}))


def same(a: tuple, b: tuple) -> bool:
    """Equal decisions; two errors agree (both fail closed) whatever their messages."""
    return a[0] == b[0] == "error" or a == b


def describe(doc: dict, opa: tuple, lat: tuple) -> str:
    return (
        f"input:\n{json.dumps(doc, indent=2)}\n"
        f"OPA:     {json.dumps(opa)}\n"
        f"lattice: {json.dumps(lat)}"
    )


@pytest.fixture(scope="module")
def opa() -> OpaEngine:
    return load_opa()


@pytest.fixture(scope="module")
def lattice_bin() -> Path:
    if not LATTICE_BIN.is_file() or not os.access(LATTICE_BIN, os.X_OK):
        pytest.fail(
            f"lattice binary not found or not executable: {LATTICE_BIN} "
            "(build it with `cargo build -p lattice-gateway` or set LATTICE_BIN)",
            pytrace=False,
        )
    return LATTICE_BIN


@pytest.fixture(scope="module")
def results(opa: OpaEngine, lattice_bin: Path) -> list[tuple[dict, tuple, tuple]]:
    docs = build_inputs()
    started = time.monotonic()
    opa_out = [opa_outcome(opa, d) for d in docs]
    with ThreadPoolExecutor(max_workers=max(4, os.cpu_count() or 1)) as pool:
        lat_out = list(pool.map(lattice_outcome, docs))
    print(f"\ndifferential: {len(docs)} inputs through OPA and lattice in {time.monotonic() - started:.1f}s")
    return list(zip(docs, opa_out, lat_out))


# ---- tests -----------------------------------------------------------------------------------

# Every reason the policy can give, by kind. A reason of no kind here fails the coverage test:
# a new rule in the policy needs inputs here that exercise it.
REASON_KINDS = {
    "no_principal": re.compile(r"the call has no identified principal"),
    "no_team_access": re.compile(r'team ".*" has no access to models'),
    "model_denied": re.compile(r'team ".*" may not use model ".*"'),
    "tool_denied": re.compile(r'tool ".*" is not allowed for team ".*"'),
    "business_hours": re.compile(r"this team may call models in business hours only \(Mon-Fri 08:00-18:00 UTC\)"),
}


def reason_kind(reason: str) -> str | None:
    return next((k for k, rx in REASON_KINDS.items() if rx.fullmatch(reason)), None)


def test_regorus_and_opa_agree(results: list) -> None:
    assert len(results) >= MIN_INPUTS, f"only {len(results)} distinct inputs"
    mismatches = [describe(doc, o, l) for doc, o, l in results if not same(o, l)]
    for m in mismatches:
        print(f"\nMISMATCH\n{m}")
    assert not mismatches, f"{len(mismatches)} of {len(results)} inputs decided differently; first:\n{mismatches[0]}"


def test_inputs_cover_every_outcome(results: list) -> None:
    outcomes = [o for _, o, _ in results]
    assert any(o[0] == "decision" and o[1] for o in outcomes), "no input is allowed"
    assert any(o[0] == "decision" and not o[1] for o in outcomes), "no input is denied"
    reasons = {r for o in outcomes if o[0] == "decision" for r in o[2]}
    unknown = sorted(r for r in reasons if reason_kind(r) is None)
    assert not unknown, f"reasons of no known kind (add inputs and a kind for them): {unknown}"
    missing = set(REASON_KINDS) - {reason_kind(r) for r in reasons}
    assert not missing, f"no input produced a reason of kind {sorted(missing)}"
    # Several reasons at once, and each obligation shape.
    assert any(o[0] == "decision" and len(o[2]) >= 2 for o in outcomes), "no input has two reasons"
    obligations = [o[3] for o in outcomes if o[0] == "decision"]
    assert any("model" in ob for ob in obligations), "no model override obligation"
    assert any("model_lock" in ob for ob in obligations), "no model lock obligation"
    assert any("allowed_tools" in ob and "model" not in ob for ob in obligations), "no tools-only obligation"
    assert any(ob == {} for ob in obligations), "no input without obligations"
    assert any(ob.get("allowed_tools") == ["*"] for ob in obligations), "no general-purpose team"
    assert any(ob.get("session_shared") is True for ob in obligations), "no shared session"


def test_a_known_denial_is_exact_in_both_engines(opa: OpaEngine, lattice_bin: Path) -> None:
    doc = input_doc(dict(PRINCIPALS)["support"], "gpt-4o", ["web_search"], ("Saturday", 12), 1)
    want = (
        "decision",
        False,
        ['team "support" may not use model "gpt-4o"', 'tool "web_search" is not allowed for team "support"'],
        {"model": "gpt-4o-mini", "allowed_tools": [], "model_lock": {"models": ["gpt-4o-mini", "demo"]}},
    )
    assert opa_outcome(opa, doc) == want
    assert lattice_outcome(doc) == want


def test_the_comparison_catches_a_wrong_decision(opa: OpaEngine) -> None:
    """A decision that differs in any one field, or an error against a decision, is a mismatch."""
    doc = input_doc(dict(PRINCIPALS)["finance"], "claude-opus-4", ["shell"], ("Sunday", 17), 2)
    real = opa_outcome(opa, doc)
    assert real[0] == "decision" and real[1] is False and len(real[2]) == 2, real
    tampered = [
        ("decision", True, real[2], real[3]),
        ("decision", False, real[2][:1], real[3]),
        ("decision", False, real[2] + ["an extra reason"], real[3]),
        ("decision", False, real[2], {**real[3], "model": "demo"}),
        ("decision", False, real[2], {"allowed_tools": ["calculator", "shell"]}),
        ("error", "fail closed"),
    ]
    for t in tampered:
        assert not same(real, t), t
        assert not same(t, real), t
    # Reasons are a set: their order never matters.
    reordered = {"allow": False, "reasons": list(reversed(real[2])), "obligations": dict(real[3])}
    assert same(real, normalize(reordered))
    assert same(("error", "a"), ("error", "b"))
