"""The model card (README.md) of a registry checkpoint, rendered from its manifest and calibration.

The card is a pure function of manifest.json and calibration.json, so it is re-rendered whenever either
changes (export, `routerforge calibrate`, `routerforge eval --save`) and never drifts from them. Its YAML front
matter is the Hugging Face model-card metadata (https://huggingface.co/docs/hub/model-cards#model-card-metadata):
`library_name`, `license`, `tags`, `base_model` (the encoder, backbone or policy the router builds on, when it
is a Hub id), `datasets` (Hub dataset ids, when the sources were Hub datasets) and `model-index` (every saved
evaluation), built with huggingface_hub's `ModelCardData` so the Hub's card validator accepts it.
"""

from __future__ import annotations

import math
from pathlib import Path

from huggingface_hub import EvalResult, ModelCardData

from routerforge.registry.families import card_text
from routerforge.registry.load import HUB_ID_RE

_MAX_DATA_ROWS = 20
# The license the card declares unless the manifest names one (`license`, a Hub license id): the code's own.
DEFAULT_LICENSE = "apache-2.0"
METRIC_NAMES = {"apgr": "APGR", "cpt50": "CPT(50%)", "cpt80": "CPT(80%)", "auc": "AUC", "aiq": "AIQ",
                "zero_router_aiq": "AIQ of the zero router", "oracle_aiq": "AIQ of the oracle"}


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _scalars(block: dict) -> list[tuple[str, object]]:
    return [(k, v) for k, v in sorted(block.items()) if isinstance(v, (int, float, str, bool))]


def base_model_id(manifest: dict) -> str | None:
    """The Hub id the router builds on (its prompt encoder or backbone; Router-R1's policy), None if not a Hub id.

    Encoder ids carry their backend ("sentence_transformers:sentence-transformers/all-MiniLM-L6-v2"); the packaged
    MiniLM records its real Hub id. Local directories (e.g. a tiny model built for a test) are no Hub id.
    """
    candidates = [str((manifest.get("encoder") or {}).get("id") or "").split(":", 1)[-1],
                  str(((manifest.get("config") or {}).get("model") or {}).get("policy") or "")]
    for candidate in candidates:
        if HUB_ID_RE.match(candidate) and ".." not in candidate and not Path(candidate).exists():
            return candidate
    return None


def evaluation_results(manifest: dict) -> list[EvalResult]:
    """One model-index entry per saved evaluation (set, pair) and metric: APGR, CPT50, CPT80, AUC (binary) or AIQ."""
    results = []
    for set_name, ev in sorted((manifest.get("evaluations") or {}).items()):
        pair = f"{ev['strong']} vs {ev['weak']}" if ev.get("strong") and ev.get("weak") else "all models"
        for metric, value in (ev.get("metrics") or {}).items():
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                continue  # undefined on this set (e.g. APGR when both models score the same); the report says why
            results.append(EvalResult(
                task_type="text-classification", task_name="LLM routing", dataset_type=set_name,
                dataset_name=f"{set_name} ({pair})", metric_type=metric, metric_name=METRIC_NAMES.get(metric, metric),
                metric_value=round(float(value), 6)))
    return results


def card_data(manifest: dict) -> ModelCardData:
    """The Hub metadata of the card's front matter (https://huggingface.co/docs/hub/model-cards#model-card-metadata).

    datasets: only Hub dataset ids (`data.hub_datasets`, recorded when the sources were Hub datasets); a local
    dataset's name is no Hub id, so it stays in the card's text.
    """
    router_type = manifest.get("router_type", "router")
    hub_datasets = [str(d) for d in (manifest.get("data") or {}).get("hub_datasets") or []]
    results = evaluation_results(manifest)
    return ModelCardData(
        library_name="routerforge",
        license=str(manifest.get("license") or DEFAULT_LICENSE),
        tags=["routerforge", "llm-routing", "router", str(router_type)],
        base_model=base_model_id(manifest),
        datasets=hub_datasets or None,
        model_name=f"{manifest.get('router', manifest.get('recipe', 'router'))} {manifest.get('version', '')}".strip()
        if results else None,
        eval_results=results or None,
    )


def render_card(manifest: dict, calibration: dict) -> str:
    """README.md text: front matter, what the router is, pool, encoder, data, metrics, calibration, use."""
    name = manifest.get("router", manifest.get("recipe", "router"))
    version = manifest.get("version", "unversioned")
    router_type = manifest.get("router_type", "?")
    git = manifest.get("git") or {}
    lines = ["---", card_data(manifest).to_yaml(), "---", "",
             f"# {name} {version}", "", card_text(router_type), "",
             f"- recipe: `{manifest.get('recipe')}`; created {manifest.get('created_at', '?')}",
             f"- code: git {git.get('sha') or 'unknown'}{' (uncommitted changes)' if git.get('dirty') else ''}",
             f"- libraries: {', '.join(f'{k} {v}' for k, v in (manifest.get('libraries') or {}).items() if v)}", "",
             "## Model pool", "", "| # | model | price in / out (USD per 1M tokens) |", "|---|---|---|"]
    prices = manifest.get("model_prices_usd_per_million_tokens") or {}
    for i, model in enumerate(manifest.get("model_pool", [])):
        price = prices.get(model)
        shown = f"{price['input']:g} / {price['output']:g}" if price else "not recorded"
        lines.append(f"| {i} | {model} | {shown} |")
    encoder = manifest.get("encoder") or {}
    lines += ["", "## Encoder", "",
              f"`{encoder.get('id') or encoder.get('name')}` revision `{encoder.get('revision')}`"
              + (f", settings `{encoder['settings']}`" if encoder.get("settings") else "")
              + (f", {encoder['dim']} dimensions" if encoder.get("dim") else "") + ". Loading refuses another "
              "encoder (id, revision or settings), since other vectors give silently wrong routes.", "",
              "## Training data", ""]
    data = manifest.get("data") or {}
    rows = _scalars(data)[:_MAX_DATA_ROWS]
    lines += [f"- {k}: {_fmt(v)}" for k, v in rows] or ["- (not recorded)"]
    training = _scalars(manifest.get("training") or {})[:_MAX_DATA_ROWS]
    if training:
        lines += ["", "## Training", ""] + [f"- {k}: {_fmt(v)}" for k, v in training]
    metrics = _scalars(manifest.get("metrics") or {})
    lines += ["", "## Metrics", ""] + ([f"- {k}: {_fmt(v)}" for k, v in metrics] or ["- (none recorded)"])
    gate = (manifest.get("metrics") or {}).get("gate")
    if isinstance(gate, dict):
        lines.append(f"- promotion gate: {gate.get('metric')} on '{gate.get('set')}' = {_fmt(gate.get('value'))}")
    for set_name, ev in sorted((manifest.get("evaluations") or {}).items()):
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in ev.get("metrics", {}).items())
        lines.append(f"- `{set_name}` ({ev.get('kind')}, n={ev.get('n')}): {shown} ([report]({ev.get('report')}))")
    lines += ["", "## Calibration", ""]
    entries = calibration.get("calibrations", [])
    if not entries:
        lines.append("Not calibrated. Run `routerforge calibrate CHECKPOINT --prompts YOUR_PROMPTS --strong-share "
                     "0.2 0.5` on your own traffic before routing by share.")
    for entry in entries:
        data_info = entry.get("data", {})
        lines += [f"{entry['strong']} over {entry['weak']} ({entry['score']['rule']}), on "
                  f"{data_info.get('calibration_prompts')} prompts (fingerprint "
                  f"`{str(data_info.get('prompts_fingerprint'))[:16]}`), {data_info.get('holdout_prompts')} held out:",
                  "", "| strong share | threshold | held-out share |", "|---|---|---|"]
        for row in entry["thresholds"]:
            held = "-" if row.get("holdout_share") is None else f"{row['holdout_share']:.3f}"
            lines.append(f"| {row['strong_share']:g} | {row['threshold']:.6g} | {held} |")
        lines.append("")
    lines += ["", "## Use", "", "```python", "from routerforge import Router",
              "router = Router.from_pretrained(\"ORG/NAME\")  # the newest published version (branch main)",
              f"router = Router.from_pretrained(\"ORG/NAME\", revision=\"v{version}\")  # exactly this version",
              "router.route([\"Prove that sqrt(2) is irrational.\"], strong_share=0.2)",
              "```", "", "```", "routerforge route CHECKPOINT \"your prompt\"",
              "routerforge eval CHECKPOINT --outcomes outcomes.jsonl --strong STRONG --weak WEAK", "```", "",
              "## Intended use", "",
              "Choose, per prompt, which model of the pool answers it, trading answer quality for cost: send the "
              "prompts that need a strong model to it and the rest to a cheaper one. The scores rank prompts; "
              "calibrate the threshold on your own traffic so the share sent to the strong model is the one you "
              "budget for.", "",
              "## Limitations", "",
              "- The router learned from the training data above; its ranking degrades on prompts unlike them "
              "(other languages, domains or prompt lengths). Evaluate on your own outcomes with `routerforge eval`.",
              "- Model names are the pool above. For other models, map them to pool members (`--router-pair`), "
              "which assumes the new pair differs the way the trained pair did.",
              "- Thresholds calibrated on one traffic mix route a different share on another; re-calibrate when "
              "your traffic changes.",
              "- Costs and prices are the ones recorded at training time; provider prices change.", ""]
    return "\n".join(lines)
