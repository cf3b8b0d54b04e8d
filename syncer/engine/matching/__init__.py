"""Live subscriptions' filters and the matcher that finds which of them a change meets.

`filters` validates and compiles a CEL filter; `activation` types a change's variables
as their source columns; `index` and `matcher` find the matching live subscriptions in
two phases (an index on pinned values, then CEL on the candidates).
"""

from syncer.engine.matching.activation import Activation, activation
from syncer.engine.matching.analysis import (
    MAX_DEPTH,
    MAX_LENGTH,
    MAX_LIST_SIZE,
    MAX_REGEX_LENGTH,
    Pin,
    RangePin,
)
from syncer.engine.matching.filters import Filter, compile_filter
from syncer.engine.matching.index import PinIndex, RangeIndex, exact_key, index_key
from syncer.engine.matching.matcher import DEFAULT_UNPINNED_QUOTA, Matcher, MatchResult
from syncer.errors import FilterError, FilterProblem

__all__ = [
    "DEFAULT_UNPINNED_QUOTA",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MAX_LIST_SIZE",
    "MAX_REGEX_LENGTH",
    "Activation",
    "Filter",
    "FilterError",
    "FilterProblem",
    "MatchResult",
    "Matcher",
    "Pin",
    "PinIndex",
    "RangeIndex",
    "RangePin",
    "activation",
    "compile_filter",
    "exact_key",
    "index_key",
]
