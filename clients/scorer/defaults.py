"""The scorer's choices and defaults that its command line offers, in a module that imports
nothing: `fedxrec rank --help` builds its parser from them without loading torch."""

PRECISIONS = ("auto", "fp16", "fp32")
DEFAULT_MAX_ITEMS = 20  # DP counts: distinct items per user, chosen on validation
# (docs/experiments/local-dp-counts.md)
