"""The site's privacy ledger: every DP-SGD release it has made, kept on its own disk.

Unit of privacy: one user of this platform. The ledger holds the accountant's history, a list of
(noise multiplier σ, sampling rate q, steps), from which ε at the site's δ is recomputed by Opacus'
accountant. It is written (atomically) *before* a round's training starts, so a crash can only
over-count spending, never forget it; it survives restarts and refuses rounds that would go past the
budget.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis

from clients.federation.ledger_file import (
    CHAINED_MARKER,
    FORMAT,
    LedgerError,
    PrivacyBudgetExceeded,
    chain_of,
    check_noise_floor,
    genesis,
    head_of,
    read_ledger,
)
from shared.config import MIN_NOISE_MULTIPLIER, default_delta

__all__ = ["LedgerError", "PrivacyBudgetExceeded", "PrivacyLedger", "default_delta"]

LEDGER_FILE = "privacy_ledger.json"


@dataclass
class Release:
    run_id: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float
    time: float = field(default_factory=time.time)
    chain: str = ""  # hash of the previous release's chain and of this release (ledger_file.py)


@dataclass
class PrivacyLedger:
    path: Path
    platform: str
    num_users: int
    delta: float
    epsilon_budget: float
    accountant: str = "prv"
    releases: list[Release] = field(default_factory=list)
    planned_noise: dict[str, float] = field(default_factory=dict)  # run id -> σ chosen for it

    # -- persistence ----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        state_dir: str | Path,
        *,
        platform: str,
        num_users: int,
        delta: float,
        epsilon_budget: float,
        accountant: str = "prv",
    ) -> PrivacyLedger:
        """Load the site's ledger, or start one. δ must not exceed 1/users; 0 = the default."""
        if num_users < 1:
            raise LedgerError(f"platform '{platform}' has no users to train on")
        delta = delta or default_delta(num_users)
        if delta > 1.0 / num_users:
            raise LedgerError(
                f"privacy.delta={delta:g} is above 1/users = {1.0 / num_users:g} for platform "
                f"'{platform}'; user-level DP needs δ ≤ 1/users: lower it or leave it 0 (automatic)"
            )
        path = Path(state_dir) / LEDGER_FILE
        ledger = cls(path, platform, num_users, delta, epsilon_budget, accountant)
        if path.is_file():
            saved = read_ledger(path, platform, num_users)
            # Keep accounting consistent with what was already spent.
            ledger.delta, ledger.accountant = saved["delta"], saved["accountant"]
            ledger.releases = [Release(**r) for r in saved["releases"]]
            ledger.planned_noise = saved["planned_noise"]
            if saved["adopted"]:
                ledger.save()  # chained from now on
        return ledger

    def check_expected(self, releases: int, epsilon: float) -> None:
        """Refuse a ledger that shows less than the site reported before: it was lost (deleted)
        or rolled back, and the budget would be spent again."""
        if len(self.releases) < releases or self.spent < epsilon * (1 - 1e-6):
            raise LedgerError(
                f"privacy ledger {self.path} shows {len(self.releases)} releases and ε = "
                f"{self.spent:.3f}, but this site reported {releases} releases and ε = "
                f"{epsilon:.3f} earlier in this federation: the ledger was deleted or rolled back, "
                "so spending would start again. Restore the ledger from a backup; this site "
                "will not train until then"
            )

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        link = genesis(self.platform, self.delta, self.accountant)
        for release in self.releases:
            link = release.chain = chain_of(link, asdict(release))
        payload = {
            "format": FORMAT,
            "head": head_of(link, self.planned_noise),
            "platform": self.platform,
            "num_users": self.num_users,
            "delta": self.delta,
            "epsilon_budget": self.epsilon_budget,
            "accountant": self.accountant,
            "planned_noise": self.planned_noise,
            "releases": [asdict(r) for r in self.releases],
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger.")
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        (self.path.parent / CHAINED_MARKER).touch()

    # -- accounting -----------------------------------------------------------------------------
    @property
    def history(self) -> list[tuple[float, float, int]]:
        return [(r.noise_multiplier, r.sample_rate, r.steps) for r in self.releases]

    def epsilon(self, extra: list[tuple[float, float, int]] | None = None) -> float:
        """ε spent (plus ``extra`` releases), recomputed by Opacus' accountant from the history."""
        return epsilon_of(self.history + list(extra or []), self.delta, self.accountant)

    @property
    def spent(self) -> float:
        return self.epsilon()

    def noise_for_run(
        self,
        run_id: str,
        sample_rate: float,
        steps_left: int,
        max_noise_multiplier: float = math.inf,
    ) -> float:
        """σ for this run: the smallest that keeps every step still planned inside the budget.

        Chosen once per run (the first round the site trains in it) and reused after, so every
        step of a run has the same σ; steps at another sampling rate are their own releases.
        Refused when that σ is above ``max_noise_multiplier``: what is left of the budget buys
        only noise.
        """
        if run_id in self.planned_noise:
            return self.planned_noise[run_id]
        sigma = noise_for_budget(
            self.history,
            target_epsilon=self.epsilon_budget,
            delta=self.delta,
            sample_rate=sample_rate,
            steps=max(steps_left, 1),
            accountant=self.accountant,
        )
        if sigma > max_noise_multiplier:
            raise PrivacyBudgetExceeded(
                f"platform '{self.platform}': {self.epsilon_budget - self.spent:.3f} of its ε "
                f"budget {self.epsilon_budget:g} is left (spent {self.spent:.3f} at δ="
                f"{self.delta:.2e}); {steps_left} more steps would need noise σ = {sigma:.1f}, "
                f"above privacy.max_noise_multiplier = {max_noise_multiplier:g}, so its updates "
                "would be noise. This site stops training; a new budget is a decision for your "
                "privacy policy, not for fedxrec"
            )
        self.planned_noise[run_id] = sigma
        self.save()
        return sigma

    def reserve(
        self,
        run_id: str,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
    ) -> float:
        """Record a release before it happens; refuse if it would exceed the budget."""
        check_noise_floor(noise_multiplier, "the noise multiplier σ")
        after = self.epsilon([(noise_multiplier, sample_rate, steps)])
        if after > self.epsilon_budget * (1 + 1e-6):
            raise PrivacyBudgetExceeded(
                f"platform '{self.platform}': training round {server_round} would bring ε to "
                f"{after:.3f}, above the site's budget of {self.epsilon_budget:g} (already spent "
                f"{self.spent:.3f} at δ={self.delta:.2e}). This site stops training; raise "
                "privacy.epsilon only if your privacy policy allows it"
            )
        self.releases.append(
            Release(run_id, server_round, noise_multiplier, sample_rate, steps, after)
        )
        self.save()
        return after


def epsilon_of(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return float("inf")
    if accountant == "rdp":
        return _rdp_epsilon(history, delta)
    acc = create_accountant(accountant)
    acc.history = list(history)
    # A site small enough to sample every user (q = 1) makes Opacus' PRV take log(1 - q) = log 0
    # = -inf, the right limit there (every t passes its comparison); numpy's divide-by-zero
    # warning says nothing, and is silenced for those histories only.
    full_batch = any(q >= 1 for _, q, _ in history)
    with warnings.catch_warnings():
        # PRV sizes its domain with an RDP bound, which warns when its best order is the largest
        # alpha: the domain is then wider than needed, the PRV ε itself is unaffected.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        with np.errstate(divide="ignore") if full_batch else contextlib.nullcontext():
            return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=4096)
def _rdp_of_one_step(sample_rate: float, sigma: float) -> np.ndarray:
    return np.asarray(
        rdp_analysis.compute_rdp(
            q=sample_rate, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
        )
    )


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Opacus' RDP accountant's ε, the same sum of the same terms: a release's RDP is its steps
    times one step's, so one step's is computed once per (q, σ). Opacus computes it anew for
    every release at every call, and the budget search calls it for every σ it tries over the
    whole history (most of a comparison's seconds were spent there)."""
    rdp = sum([_rdp_of_one_step(q, sigma) * steps for sigma, q, steps in history])
    eps, _ = rdp_analysis.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
    )
    return float(eps)


def noise_for_budget(
    history: list[tuple[float, float, int]],
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    tolerance: float = 0.005,
) -> float:
    """Smallest σ such that history + (σ, q, steps) stays within ``target_epsilon``."""
    if epsilon_of(history, delta, accountant) >= target_epsilon:
        raise PrivacyBudgetExceeded(
            f"the privacy budget ε={target_epsilon:g} is already spent; no further training"
        )

    def eps(sigma: float) -> float:
        return epsilon_of(history + [(sigma, sample_rate, steps)], delta, accountant)

    low, high = MIN_NOISE_MULTIPLIER, 2.0
    if eps(low) <= target_epsilon:  # a budget this large: the floor, never less noise
        return low
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise PrivacyBudgetExceeded(f"no noise level fits ε={target_epsilon:g}")
    while high - low > tolerance * high:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
