"""Every release of a site's DP counts, kept in one file of the site's so none goes unseen.

The noisy counts (clients/scorer/private_counts.py) are drawn once and kept in the scorer's
cache, but the cache is not where the privacy lives: the same interactions at another path,
under another ``--cache-dir``, in a second ``serve`` replica or after a damaged cache file would
be drawn again, each draw reporting its own ε while their sum is what the users' privacy costs.
So each draw is first written here, keyed by the interactions' content (their users, items and
times, whatever the file is called or however it is written), and a new draw of counts already
released is refused unless the operator allows it; the total ε over the releases is reported
(basic composition: an upper bound).

The file is JSON (``{"format": ..., "releases": [...]}``), written atomically; by default
``$FEDXREC_COUNT_LEDGER`` or ``$XDG_STATE_HOME/fedxrec/count_releases.json`` (``~/.local/state``):
one per machine. Replicas on several machines share it only if it lies on storage they share
(``--count-ledger``). Like the training ledger it guards against accidents, not the operator.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.scorer.private_counts import CountPrivacy

FORMAT = "fedxrec-count-releases-1"


class CountReleaseRefused(ValueError):
    """A new draw of counts already released, or a ledger that cannot be read."""


def default_count_ledger() -> Path:
    explicit = os.environ.get("FEDXREC_COUNT_LEDGER")
    if explicit:
        return Path(explicit)
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "fedxrec" / "count_releases.json"


@dataclass(frozen=True)
class CountReleases:
    path: Path
    allow_new: bool = False  # the operator's consent to another release of the same counts

    def releases_of(self, data_key: str) -> list[dict[str, Any]]:
        return [r for r in self._read() if r.get("data") == data_key]

    def total_epsilon(self, data_key: str) -> float:
        return sum(float(r["epsilon"]) for r in self.releases_of(data_key))

    def record(self, data_key: str, privacy: CountPrivacy, where: str) -> float:
        """Write down a release of ``data_key``'s counts before it is drawn; the total ε after."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.with_name(self.path.name + ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two replicas starting at once: one draws
            return self._record(data_key, privacy, where)

    def _record(self, data_key: str, privacy: CountPrivacy, where: str) -> float:
        releases = self._read()
        before = [r for r in releases if r.get("data") == data_key]
        if before and not self.allow_new:
            spent = sum(float(r["epsilon"]) for r in before)
            last = before[-1]
            raise CountReleaseRefused(
                f"these interactions' DP counts were released {len(before)} time(s) already "
                f"(ε {spent:g} in all; the last at ε {last['epsilon']:g} on "
                f"{last['when']}, cached in {last['where']}), as {self.path} records; drawing "
                f"them again is a new release (ε {spent + privacy.epsilon:g} in all). Point "
                "--cache-dir at the cache that holds them, or pass --new-count-release to "
                "release them again"
            )
        releases.append(
            {
                "data": data_key,
                "epsilon": privacy.epsilon,
                "delta": privacy.delta,
                "max_items_per_user": privacy.max_items,
                "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "where": where,
            }
        )
        self._write(releases)
        return sum(float(r["epsilon"]) for r in releases if r["data"] == data_key)

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
            releases = saved["releases"]
            if saved.get("format") != FORMAT or not isinstance(releases, list):
                raise ValueError("not a fedxrec count-release ledger")
            for r in releases:
                float(r["epsilon"]), str(r["data"]), str(r["when"]), str(r["where"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            raise CountReleaseRefused(
                f"{self.path} cannot be read ({type(err).__name__}: {err}): it records every "
                "release of the site's DP counts, so none is drawn without it; restore it from "
                "a backup, or point --count-ledger at another file to start a new record"
            ) from None
        return releases

    def _write(self, releases: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"format": FORMAT, "releases": releases}, fh, indent=1)
            os.replace(tmp, self.path)
        finally:
            Path(tmp).unlink(missing_ok=True)
