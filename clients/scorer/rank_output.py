"""What `fedxrec rank` prints: a table for people, JSON for machines."""

from __future__ import annotations

from typing import Any

from clients.scorer.model import SiteScorer
from clients.scorer.ranking import Query, Recommendation


def _history_ids(scorer: SiteScorer, query: Query) -> list[str]:
    return [scorer.index.items[r].item_id for r in query.history_rows]


def rank_json(
    scorer: SiteScorer, users: list[tuple[str | None, Query]], ranked: list[list[Recommendation]]
) -> dict[str, Any]:
    return {
        "adapter_hash": scorer.model.adapter_hash,
        "round": scorer.model.adapter_round,
        "catalogue_hash": scorer.index.catalogue_hash,
        "ranking": "hybrid" if scorer.local else "text-only",
        "fusion": scorer.local.describe() if scorer.local else None,
        "users": [
            {
                "user_id": user,
                "history": query.text if query.text else _history_ids(scorer, query),
                "items": [{"rank": n, **r.to_dict()} for n, r in enumerate(recs, start=1)],
            }
            for (user, query), recs in zip(users, ranked, strict=True)
        ],
    }


def print_rank_table(
    scorer: SiteScorer, users: list[tuple[str | None, Query]], ranked: list[list[Recommendation]]
) -> None:
    model = scorer.model
    round_text = f", round {model.adapter_round}" if model.adapter_round is not None else ""
    ranking = "text-only"
    if scorer.local:
        fusion = scorer.local.fusion
        weights = ", ".join(f"{k} {v:.2f}" for k, v in fusion.mix.items())
        fallback = fusion.fallback
        weights += (
            f", count shrinkage κ {fusion.kappa:g}; new users: model prior "
            f"{fusion.new_user_model:.1f}, popularity {1 - fusion.new_user_model:.1f}; new items: "
            + ("model z" if fallback is None else f"{fallback[0]:g}·model z + {fallback[1]:g}")
        )
        privacy = scorer.local.index.privacy
        counts = (
            f"; counts user-level DP ε={privacy['epsilon']:g}, δ={privacy['delta']:.1e}"
            if privacy
            else ""
        )
        ranking = f"hybrid ({weights}; fitted on the site's validation split{counts})"
    print(
        f"adapter {model.adapter_hash}{round_text}; catalogue of {len(scorer.index)} items; "
        f"ranking: {ranking}"
    )
    for (user, query), recs in zip(users, ranked, strict=True):
        history = query.text if query.text else ", ".join(_history_ids(scorer, query))
        print(f"\nuser {user or '-'}: history {_clip(history, 70)}")
        id_width = max([len("item_id"), *(len(r.item_id) for r in recs)])
        print(f"{'rank':>4}  {'item_id':<{id_width}}  {'score':>7}  {'title':<32}  because")
        for n, r in enumerate(recs, start=1):
            because = ", ".join(f"{_clip(e.title, 24)} {e.similarity:.2f}" for e in r.because)
            print(
                f"{n:>4}  {r.item_id:<{id_width}}  {r.score:>7.4f}  {_clip(r.title, 32):<32}  "
                f"{because}"
            )


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
