"""The privacy ledger on disk: every field checked on load, every release chained to the last.

Each release carries ``chain`` = SHA-256 of the previous release's chain and of its own fields; the
first is chained to the ledger's identity (platform, δ, accountant). An edited σ, q, step count or
δ, a removed release or a reordered one breaks the chain, and the site refuses to train with a
message naming the file. A ledger cut back to an earlier, consistent state (or deleted) is what the
coordinator catches: it remembers how many releases each site had reported and sends that count
with every round (``PrivacyLedger.check_expected``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from shared.config import MIN_NOISE_MULTIPLIER

FORMAT = "fedxrec-privacy-ledger-3"  # 3: the head also covers planned_noise
PREVIOUS_FORMAT = "fedxrec-privacy-ledger-2"  # read, verified, and saved again as 3
GENESIS_TAG = "fedxrec-privacy-ledger-2"  # the chain's salt since format 2: never changes
CHAINED_MARKER = "privacy_ledger.chained"  # beside a ledger once it was chained: no way back
ACCOUNTANTS = ("prv", "rdp")


class LedgerError(ValueError):
    """The ledger file is unreadable, was edited, or belongs to other data."""


def check_noise_floor(sigma: float, what: str) -> None:
    """Refuse a σ below MIN_NOISE_MULTIPLIER (shared/config.py says why) before it reaches the
    accountant, whose memory would grow without bound."""
    if not sigma >= MIN_NOISE_MULTIPLIER:
        raise LedgerError(
            f"{what} = {sigma:g} is below the floor {MIN_NOISE_MULTIPLIER:g}: its ε is useless at "
            "any budget, and accounting for it would exhaust the memory; set "
            "privacy.noise_multiplier=0 to let the site choose σ for its budget"
        )


class PrivacyBudgetExceeded(RuntimeError):
    """Training this round would take the site past its ε budget (here, not in privacy.py, so
    that the ClientApp can catch it without importing Opacus)."""


def genesis(platform: str, delta: float, accountant: str) -> str:
    return _digest(["genesis", GENESIS_TAG, platform, repr(float(delta)), accountant])


def head_of(last_link: str, planned_noise: dict[str, float]) -> str:
    """The ledger's head: its last release's chain and the σ planned for each run."""
    return _digest([last_link, sorted((k, repr(float(v))) for k, v in planned_noise.items())])


def chain_of(previous: str, release: dict[str, Any]) -> str:
    fields = [
        release["run_id"],
        int(release["server_round"]),
        repr(float(release["noise_multiplier"])),
        repr(float(release["sample_rate"])),
        int(release["steps"]),
        repr(float(release["epsilon_after"])),
        repr(float(release["time"])),
    ]
    return _digest([previous, *fields])


def _digest(parts: list[Any]) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def read_ledger(path: Path, platform: str, num_users: int) -> dict[str, Any]:
    """The saved ledger, every field validated and the chain verified; raises LedgerError."""

    def refuse(problem: str, fix: str = "restore it from a backup") -> LedgerError:
        return LedgerError(
            f"privacy ledger {path}: {problem}. It records privacy already spent, so this site "
            f"will not train with it: {fix}"
        )

    try:
        saved = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise refuse("not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise refuse(f"not valid JSON ({err.msg}, line {err.lineno})") from None
    except OSError as err:
        raise refuse(f"cannot be read ({err})") from None
    if not isinstance(saved, dict):
        raise refuse("not a JSON object")
    if saved.get("platform") != platform:
        raise LedgerError(
            f"privacy ledger {path} belongs to platform '{saved.get('platform')}', not "
            f"'{platform}': give each platform its own state folder"
        )
    delta = _number(saved.get("delta"), refuse, "delta")
    if not 0 < delta <= 1.0 / num_users:
        raise refuse(
            f"δ = {delta:g} is outside (0, 1/users = {1.0 / num_users:g}]: user-level DP needs "
            "δ ≤ 1/users"
        )
    accountant = saved.get("accountant")
    if accountant not in ACCOUNTANTS:
        raise refuse(f"unknown accountant {accountant!r} (known: {', '.join(ACCOUNTANTS)})")
    releases = saved.get("releases")
    if not isinstance(releases, list):
        raise refuse("'releases' is not a list")
    planned = saved.get("planned_noise", {})
    if not isinstance(planned, dict) or not all(
        isinstance(k, str) and _finite(v) and v >= MIN_NOISE_MULTIPLIER for k, v in planned.items()
    ):
        raise refuse(f"'planned_noise' must map run ids to finite σ >= {MIN_NOISE_MULTIPLIER}")
    fmt = saved.get("format")
    carries_chain = "head" in saved or any(isinstance(r, dict) and "chain" in r for r in releases)
    chained = fmt in (FORMAT, PREVIOUS_FORMAT)
    if not chained and (
        fmt is not None or carries_chain or (path.parent / CHAINED_MARKER).exists()
    ):
        raise refuse(
            f"its format is {'missing' if fmt is None else repr(fmt)}, but it "
            + ("carries a hash chain" if carries_chain else f"was chained ({CHAINED_MARKER})")
            + ": a chained ledger does not turn back into an unchained one unless it was edited"
        )
    link = genesis(platform, delta, accountant)
    for n, release in enumerate(releases, start=1):
        _check_release(release, n, refuse)
        link = chain_of(link, release)
        if chained and release.get("chain") != link:
            raise refuse(
                f"release {n} does not match the chain of the releases before it: the file was "
                "edited, truncated in the middle or reordered"
            )
    head = head_of(link, planned) if fmt == FORMAT else link
    if chained and saved.get("head") != head:
        raise refuse(
            "its head does not match its last release and planned noise: the file was edited"
        )
    return {
        "delta": delta,
        "accountant": accountant,
        "releases": releases,
        "planned_noise": dict(planned),
        "adopted": fmt != FORMAT,  # an older ledger: saved in this format from now on
    }


def _check_release(release: Any, n: int, refuse: Any) -> None:
    if not isinstance(release, dict):
        raise refuse(f"release {n} is not a JSON object")
    checks = {
        "run_id": lambda v: isinstance(v, str) and bool(v),
        "server_round": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "noise_multiplier": lambda v: _finite(v) and v >= MIN_NOISE_MULTIPLIER,
        "sample_rate": lambda v: _finite(v) and 0 < v <= 1,
        "steps": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "epsilon_after": lambda v: _finite(v) and v >= 0,
        "time": lambda v: _finite(v),
    }
    for key, ok in checks.items():
        if key not in release:
            raise refuse(f"release {n} has no '{key}'")
        if not ok(release[key]):
            raise refuse(f"release {n} has an impossible {key} = {release[key]!r}")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, refuse: Any, key: str) -> float:
    if not _finite(value):
        raise refuse(f"'{key}' is {value!r}, not a finite number")
    return float(value)
