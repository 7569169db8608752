"""The scorer's choices and defaults that its command line offers, in a module that imports
nothing: `fedxrec rank --help` builds its parser from them without loading torch."""

PRECISIONS = ("auto", "fp16", "fp32")
DEFAULT_MAX_ITEMS = 20  # DP counts: distinct items per user, chosen on validation
# (docs/experiments/local-dp-counts.md)
# full: every request ranks the whole catalogue; flat / hnsw: two-stage ranking over a FAISS
# index (clients/scorer/candidates.py); auto: by catalogue size
CANDIDATE_KINDS = ("auto", "full", "flat", "hnsw")
FULL_MAX_ITEMS = 50_000  # auto: full ranking up to here, HNSW candidates beyond
