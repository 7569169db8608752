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
    with pytest.raises(LedgerError, match="not valid JSON.*restore it from a backup"):
        _open(tmp_path)


def _spent_ledger(tmp_path):
    ledger = _open(tmp_path, epsilon_budget=50.0)
    for r in range(1, 4):
        ledger.reserve("run", r, 1.0, 0.1, 10)
    return tmp_path / "privacy_ledger.json"


def _edit(path, change):
    saved = json.loads(path.read_text())
    change(saved)
    path.write_text(json.dumps(saved))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["releases"][1].update(noise_multiplier=100.0), "release 2 does not match"),
        (lambda d: d["releases"].clear(), "head does not match"),
        (lambda d: d["releases"].pop(1), "release 2 does not match"),
        (lambda d: d["releases"].reverse(), "release 1 does not match"),
        (lambda d: d["releases"][0].update(sample_rate=0.0), "impossible sample_rate = 0.0"),
        (lambda d: d["releases"][0].update(steps=-3), "impossible steps = -3"),
        (lambda d: d["releases"][0].update(steps="ten"), "impossible steps = 'ten'"),
        (lambda d: d["releases"][2].update(noise_multiplier=float("nan")), "impossible noise"),
        (lambda d: d["releases"][0].pop("sample_rate"), "release 1 has no 'sample_rate'"),
        (lambda d: d.update(delta=0.5), "δ = 0.5 is outside"),
        (lambda d: d.update(delta="small"), "'delta' is 'small'"),
        (lambda d: d.update(accountant="gdp"), "unknown accountant 'gdp'"),
        (lambda d: d.update(releases={"a": 1}), "'releases' is not a list"),
        (lambda d: d.update(planned_noise={"run": -1}), "'planned_noise' must map"),
        (lambda d: d["releases"][0].update(noise_multiplier=0.01), "impossible noise_multiplier"),
    ],
)
def test_an_edited_ledger_is_refused_with_the_file_named(tmp_path, change, message):
    path = _spent_ledger(tmp_path)
    _edit(path, change)
    with pytest.raises(LedgerError, match=message) as err:
        _open(tmp_path, epsilon_budget=50.0)
    assert str(path) in str(err.value) and "restore" in str(err.value)


def test_non_utf8_ledger_is_refused(tmp_path):
    (tmp_path / "privacy_ledger.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(LedgerError, match="not UTF-8"):
        _open(tmp_path)


def _unchained(d):
    d.pop("format"), d.pop("head"), *(r.pop("chain") for r in d["releases"])


def test_an_older_ledger_without_a_chain_is_checked_and_chained(tmp_path):
    path = _spent_ledger(tmp_path)
    _edit(path, _unchained)
    (tmp_path / "privacy_ledger.chained").unlink()  # a site that never had a chained ledger
    ledger = _open(tmp_path, epsilon_budget=50.0)
    assert len(ledger.releases) == 3
    saved = json.loads(path.read_text())
    assert saved["format"] == "fedxrec-privacy-ledger-3" and saved["head"]
    assert (tmp_path / "privacy_ledger.chained").is_file()


@pytest.mark.parametrize(
    ("change", "marker", "message"),
    [
        (lambda d: d.pop("format"), True, "format is missing, but it carries a hash chain"),
        (lambda d: d.pop("format"), False, "format is missing, but it carries a hash chain"),
        (_unchained, True, "format is missing, but it was chained"),
        (lambda d: d.update(format="fedxrec-privacy-ledger-1"), True, "carries a hash chain"),
    ],
)
def test_a_chained_ledger_cannot_be_downgraded_to_skip_its_chain(tmp_path, change, marker, message):
    """Deleting the format key (and even the chain) no longer makes the ledger read as an old
    unchained one whose edited releases would be accepted and chained anew."""
    path = _spent_ledger(tmp_path)
    _edit(path, lambda d: [change(d), d["releases"][1].update(noise_multiplier=100.0)])
    if not marker:
        (tmp_path / "privacy_ledger.chained").unlink()
    with pytest.raises(LedgerError, match=message):
        _open(tmp_path, epsilon_budget=50.0)


def test_planned_noise_is_covered_by_the_chain_and_a_format_2_ledger_still_loads(tmp_path):
    from clients.federation.ledger_file import chain_of, genesis

    ledger = _open(tmp_path, epsilon_budget=50.0)
    ledger.noise_for_run("run", 0.1, 30)
    ledger.reserve("run", 1, ledger.planned_noise["run"], 0.1, 10)
    path = tmp_path / "privacy_ledger.json"
    _edit(path, lambda d: d["planned_noise"].update(run=0.6))
    with pytest.raises(LedgerError, match="head does not match its last release and planned"):
        _open(tmp_path, epsilon_budget=50.0)

    def as_format_2(d):  # what the previous version wrote: the head is the last release's chain
        d["planned_noise"]["run"] = ledger.planned_noise["run"]
        link = genesis("books", d["delta"], d["accountant"])
        for release in d["releases"]:
            link = chain_of(link, release)
        d.update(format="fedxrec-privacy-ledger-2", head=link)

    _edit(path, as_format_2)
    again = _open(tmp_path, epsilon_budget=50.0)
    assert again.planned_noise == ledger.planned_noise and len(again.releases) == 1
    assert json.loads(path.read_text())["format"] == "fedxrec-privacy-ledger-3"  # upgraded


def test_a_tiny_sigma_is_refused_before_the_accountant_sees_it(tmp_path):
    from shared.config import ConfigError, FedxrecConfig

    with pytest.raises(ConfigError, match=r"privacy.noise_multiplier' must be 0 .* or >= 0.5"):
        FedxrecConfig().with_overrides({"privacy.noise_multiplier": 0.01})
    ledger = _open(tmp_path, epsilon_budget=50.0)
    with pytest.raises(LedgerError, match="σ = 0.01 is below the floor 0.5"):
        ledger.reserve("run", 1, 0.01, 0.1, 10)
    assert ledger.releases == []
    _spent_ledger(tmp_path)
    _edit(tmp_path / "privacy_ledger.json", lambda d: d["planned_noise"].update(run=0.01))
    with pytest.raises(LedgerError, match=r"'planned_noise' must map run ids to finite σ >= 0.5"):
        _open(tmp_path, epsilon_budget=50.0)
    # an enormous budget gets the floor, not a smaller σ
    assert noise_for_budget(
        [], target_epsilon=1e6, delta=1e-5, sample_rate=0.1, steps=10, accountant="rdp"
    ) == pytest.approx(0.5)


def test_a_lost_or_rolled_back_ledger_is_refused(tmp_path):
    path = _spent_ledger(tmp_path)
    ledger = _open(tmp_path, epsilon_budget=50.0)
    ledger.check_expected(3, ledger.spent)  # what the coordinator remembers: fine
    path.unlink()  # lost
    fresh = _open(tmp_path, epsilon_budget=50.0)
    with pytest.raises(LedgerError, match="shows 0 releases.*reported 3 releases"):
        fresh.check_expected(3, ledger.spent)


def test_an_exhausted_site_is_refused_instead_of_sending_noise(tmp_path):
    ledger = _open(tmp_path, epsilon_budget=2.0)
    sigma = ledger.noise_for_run("first", 0.3, 40, max_noise_multiplier=20.0)
    for r in range(1, 5):
        ledger.reserve("first", r, sigma, 0.3, 10)
    left = 2.0 - ledger.spent
    with pytest.raises(
        PrivacyBudgetExceeded, match="above privacy.max_noise_multiplier = 20"
    ) as err:
        ledger.noise_for_run("second", 0.3, 40, max_noise_multiplier=20.0)
    assert f"{left:.3f} of its ε budget 2 is left" in str(err.value)
    assert "second" not in _open(tmp_path, epsilon_budget=2.0).planned_noise


def test_a_site_that_samples_every_user_gets_its_epsilon_without_a_numpy_warning():
    """q = 1 (a small site): Opacus' PRV takes log(1 - q) = log 0, the right limit; its ε is the
    analytic Gaussian mechanism's for the composed noise σ/√steps, and nothing is printed."""
    import math
    import warnings

    from clients.federation.privacy import epsilon_of
    from clients.scorer.private_counts import gaussian_delta

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning would fail here
        epsilon = epsilon_of([(1.0, 1.0, 10)], 1e-5, "prv")
        sigma = noise_for_budget(
            [], target_epsilon=8.0, delta=1e-5, sample_rate=1.0, steps=40, accountant="prv"
        )
    assert gaussian_delta(epsilon, 1 / math.sqrt(10)) == pytest.approx(1e-5, rel=0.02)
    assert 0.3 < sigma < 10


def test_rdp_epsilon_is_opacus_rdp_accountants_to_the_bit():
    # epsilon_of computes one step's RDP once per (q, σ); it must be Opacus' accountant exactly
    import random

    from opacus.accountants import RDPAccountant

    from clients.federation.privacy import epsilon_of

    rng = random.Random(0)
    for _ in range(20):
        history = [
            (rng.choice([0.5, 1.0, 2.0, rng.uniform(0.5, 5.0)]), rng.choice([0.01, 1.0, rng.random()]), rng.randint(1, 200))
            for _ in range(rng.randint(1, 5))
        ]  # fmt: skip
        delta = rng.choice([1e-5, 1e-3])
        reference = RDPAccountant()
        reference.history = list(history)
        assert epsilon_of(history, delta, "rdp") == float(reference.get_epsilon(delta=delta))
        # and again from the cache, unchanged
        assert epsilon_of(history, delta, "rdp") == float(reference.get_epsilon(delta=delta))
