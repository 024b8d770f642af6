"""Model price tables and the cost of an outcome.

A price table maps a model name to ``(input, output)`` prices in USD per million tokens. Two real
formats are read:

* RouterArena `model_cost/cost.json` (RouteWorks/RouterArena):
  ``{model: {input_token_price_per_million, output_token_price_per_million}}``;
* LLMRouter `default_llm.json` (ulab-uiuc/LLMRouter):
  ``{name: {input_price, output_price, model: "<provider>/<id>", ...}}`` with prices per million
  tokens; each entry is indexed by its key and by its `model` id.

`attach_cost` fills an outcome's `cost` (USD) from its token counts:
``cost = (input_tokens * input_price + output_tokens * output_price) / 1e6``. When the outcome has no
`input_tokens`, the count is estimated as ``len(prompt) / chars_per_token`` (OpenAI's rule of thumb of
~4 characters per English token), so the cost is then an estimate; the outcome's `input_tokens` stays
None so the estimate is never mistaken for a measured count. Output tokens must be known, or an
`assumed_output_tokens` given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

from routerforge.data.readers._io import load_json
from routerforge.errors import DataError

PriceTable = dict[str, tuple[float, float]]
"""model -> (USD per million input tokens, USD per million output tokens)."""

_FORMATS = {
    "routerarena": ("input_token_price_per_million", "output_token_price_per_million"),
    "llmrouter": ("input_price", "output_price"),
}


def _price(value: object, path: Path, model: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise DataError(f"{path}: model '{model}': {field} must be a number of USD per million tokens >= 0, "
                        f"got {value!r}.")
    return float(value)


def load_price_table(path: str | Path) -> PriceTable:
    """Read a RouterArena or LLMRouter price table; DataError naming the file when it is neither."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"price table '{path}' is not a file; check the path.")
    table = load_json(path, "prices")
    if not isinstance(table, dict) or not table or not all(isinstance(v, dict) for v in table.values()):
        raise DataError(f"{path}: a price table is a JSON object of {{model: {{...prices...}}}}; this file is not.")
    first = next(iter(table.values()))
    fmt = next((name for name, fields in _FORMATS.items() if all(f in first for f in fields)), None)
    if fmt is None:
        raise DataError(f"{path}: unknown price-table format; expected entries with "
                        f"input_token_price_per_million/output_token_price_per_million (RouterArena) or "
                        f"input_price/output_price (LLMRouter).")
    in_field, out_field = _FORMATS[fmt]
    prices: PriceTable = {}
    for key, entry in table.items():
        if in_field not in entry or out_field not in entry:
            raise DataError(f"{path}: model '{key}' lacks {in_field} or {out_field}.")
        pair = (_price(entry[in_field], path, key, in_field), _price(entry[out_field], path, key, out_field))
        names = [key]
        if fmt == "llmrouter" and isinstance(entry.get("model"), str):
            names.append(entry["model"])
        for name in names:
            if name in prices and prices[name] != pair:
                raise DataError(f"{path}: model '{name}' appears twice with different prices "
                                f"{prices[name]} and {pair}.")
            prices[name] = pair
    return prices


def attach_cost(outcome: dict, prices: PriceTable, *, chars_per_token: float = 4.0,
                assumed_output_tokens: int | None = None) -> dict:
    """A copy of `outcome` with `cost` (USD) computed from `prices`; a cost the source reported is kept.

    chars_per_token: characters per token used to estimate missing input tokens from the prompt.
    assumed_output_tokens: output tokens to assume when the outcome has none (None: they are required).
    """
    if outcome.get("cost") is not None:
        return dict(outcome)
    if chars_per_token <= 0:
        raise ValueError(f"chars_per_token must be > 0, got {chars_per_token}")
    model = outcome["model"]
    if model not in prices:
        raise DataError(f"no price for model '{model}' in the price table; add it to the table or alias the "
                        f"model name to one that is there.")
    input_price, output_price = prices[model]
    input_tokens = outcome.get("input_tokens")
    if input_tokens is None:
        input_tokens = len(outcome["prompt"]) / chars_per_token  # an estimate: the tokenizer is unknown
    output_tokens = outcome.get("output_tokens")
    if output_tokens is None:
        output_tokens = assumed_output_tokens
    if output_tokens is None:
        raise DataError(f"outcome {outcome.get('source_file')}:{outcome.get('source_line')} ({model}) has no "
                        f"output_tokens; record them or pass assumed_output_tokens.")
    out = dict(outcome)
    out["cost"] = (input_tokens * input_price + output_tokens * output_price) / 1e6
    return out


def attach_costs(outcomes: Iterable[dict], prices: PriceTable, **kwargs) -> Iterator[dict]:
    """`attach_cost` over a stream of outcomes."""
    for outcome in outcomes:
        yield attach_cost(outcome, prices, **kwargs)
