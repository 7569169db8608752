import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from clients.federation.privacy import (
    LedgerError,
    PrivacyBudgetExceeded,
    PrivacyLedger,
    default_delta,
    noise_for_budget,
)


def _open(tmp_path, **kw):
    args = dict(platform="books", num_users=500, delta=0.0, epsilon_budget=4.0, accountant="rdp")
    args.update(kw)
    return PrivacyLedger.open(tmp_path, **args)


def test_epsilon_equals_opacus_recomputed_from_the_saved_file(tmp_path):
    ledger = _open(tmp_path)
    ledger.reserve("run", 1, 1.1, 0.064, 16)
    ledger.reserve("run", 2, 1.1, 0.064, 16)
    saved = json.loads((tmp_path / "privacy_ledger.json").read_text())
    accountant = RDPAccountant()
    for r in saved["releases"]:
        accountant.history.append((r["noise_multiplier"], r["sample_rate"], r["steps"]))
    expected = accountant.get_epsilon(delta=saved["delta"])
    assert saved["delta"] == pytest.approx(default_delta(500)) == pytest.approx(1e-5)
    assert saved["releases"][-1]["epsilon_after"] == pytest.approx(expected)
    assert _open(tmp_path).spent == pytest.approx(expected)  # a restarted site sees the same


def test_prv_accountant_too(tmp_path):
    ledger = _open(tmp_path, accountant="prv")
    eps = ledger.reserve("run", 1, 1.0, 0.05, 40)
    acc = PRVAccountant()
    acc.history = [(1.0, 0.05, 40)]
    assert eps == pytest.approx(acc.get_epsilon(delta=default_delta(500)), rel=1e-6)


def test_epsilon_is_the_accountant_over_mixed_releases(tmp_path):
    """Rounds, LoRA-heavy rounds and a personalisation at other (σ, q): one ε over all of them."""
    ledger = _open(tmp_path, accountant="prv", epsilon_budget=50.0)
    releases = [(1.2, 0.28, 40), (1.2, 0.28, 40), (2.0, 0.55, 10), (0.9, 0.1, 25)]
    for r, (sigma, q, steps) in enumerate(releases, start=1):
        eps = ledger.reserve("run", r, sigma, q, steps)
    acc = PRVAccountant()
    acc.history = list(releases)
    assert eps == pytest.approx(acc.get_epsilon(delta=ledger.delta), rel=1e-6)
    assert _open(tmp_path, accountant="prv", epsilon_budget=50.0).spent == pytest.approx(eps)


def test_overrun_is_refused_and_not_recorded(tmp_path):
    ledger = _open(tmp_path, epsilon_budget=1.0)
    with pytest.raises(PrivacyBudgetExceeded, match="above the site's budget of 1"):
        ledger.reserve("run", 1, 0.5, 0.1, 200)
    assert ledger.releases == [] and _open(tmp_path, epsilon_budget=1.0).releases == []


def test_planned_noise_fills_the_budget_over_the_planned_rounds(tmp_path):
    ledger = _open(tmp_path, epsilon_budget=3.0)
    sigma = ledger.noise_for_run("run", 0.064, steps_left=4 * 16)
    for r in range(1, 5):
        eps = ledger.reserve("run", r, sigma, 0.064, 16)
    assert 2.9 <= eps <= 3.0
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.reserve("run", 5, sigma, 0.064, 16)
    assert _open(tmp_path, epsilon_budget=3.0).noise_for_run("run", 0.064, 16) == sigma


def test_noise_for_an_exhausted_budget_is_refused():
    with pytest.raises(PrivacyBudgetExceeded, match="already spent"):
        noise_for_budget(
            [(0.5, 0.5, 1000)],
            target_epsilon=1.0,
            delta=1e-3,
            sample_rate=0.1,
            steps=10,
            accountant="rdp",
        )


def test_delta_above_one_over_users_is_refused(tmp_path):
    with pytest.raises(LedgerError, match="δ ≤ 1/users"):
        _open(tmp_path, delta=0.01)


def test_corrupt_or_foreign_ledger_is_refused(tmp_path):
    _open(tmp_path).reserve("run", 1, 1.0, 0.1, 10)
    with pytest.raises(LedgerError, match="belongs to platform 'books'"):
        _open(tmp_path, platform="movies")
    (tmp_path / "privacy_ledger.json").write_text("{broken")
    with pytest.raises(LedgerError, match="unreadable"):
        _open(tmp_path)
