"""One reader per real source format. `read_source` dispatches on `SourceConfig.kind`.

Reader contract (every module here follows it):

* signature ``read_<kind>(src: SourceConfig, ledger: Ledger) -> Iterator[dict]``;
* yields canonical records built with `routerforge.data.records.make_pair` / `make_outcome` /
  `make_judge_score` (which one is `SOURCE_KINDS[kind]`), each carrying its file, 1-based line and
  original id;
* a malformed row is reported with ``ledger.bad(src.name, file, line, reason, detail, field)`` (reason
  codes in `routerforge.data.report.BAD_ROW_HINTS`) and skipped; every yielded row is counted with
  ``ledger.count(src.name, "read", kept=1)``, every row skipped on purpose with a named drop reason;
* stops after `src.max_rows` valid rows when that is set;
* a missing file or an unusable file as a whole raises `DataError` with a one-line fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator

from routerforge.data.config import SourceConfig
from routerforge.data.report import Ledger

# kind -> "module:function"; imported lazily so one reader's optional dependency never breaks another.
READERS: dict[str, str] = {
    "arena_conversations": "routerforge.data.readers.arena:read_arena_conversations",
    "arena_kaggle": "routerforge.data.readers.arena_kaggle:read_arena_kaggle",
    "arena_hp": "routerforge.data.readers.arena_hp:read_arena_hp",
    "fastchat_single_judge": "routerforge.data.readers.fastchat_judge:read_fastchat_single_judge",
    "routellm_gpt4_judge": "routerforge.data.readers.routellm_judge:read_routellm_gpt4_judge",
    "fastchat_pair_judge": "routerforge.data.readers.fastchat_judge:read_fastchat_pair_judge",
    "alpaca_eval_annotations": "routerforge.data.readers.alpaca_eval:read_alpaca_eval_annotations",
    "routellm_csv": "routerforge.data.readers.outcome_tables:read_routellm_csv",
    "llmrouter_json": "routerforge.data.readers.outcome_tables:read_llmrouter_json",
    "zeroeval_summary": "routerforge.data.readers.outcome_tables:read_zeroeval_summary",
    "outcomes": "routerforge.data.readers.outcome_tables:read_outcomes",
}


def reader_for(kind: str) -> Callable[[SourceConfig, Ledger], Iterator[dict]]:
    module, func = READERS[kind].split(":")
    return getattr(importlib.import_module(module), func)


def read_source(src: SourceConfig, ledger: Ledger) -> Iterator[dict]:
    """Stream the canonical records of one configured source."""
    return reader_for(src.kind)(src, ledger)
