"""Turn a recipe's export into a versioned registry checkpoint, and update one in place (calibration, eval).

    finalize_export("checkpoints/mf/mf-tiny/final", "checkpoints")   ->  checkpoints/mf/1.0.0/

    checkpoints/<router>/<version>/
        model.safetensors, config.json       the recipe's files, copied bit for bit (plus backbone/, tokenizer/
                                             for routers with a transformer encoder)
        manifest.json                        the recipe's manifest + router, version, model prices, registry
                                             record, evaluations; `files` = sha256 of every other file
        README.md                            model card with Hub metadata (routerforge/registry/card.py)
        calibration.json                     thresholds per strong share (empty until `routerforge calibrate`)
        eval/<set>.json, eval/<set>.png      evaluation reports and their plots (`routerforge eval --save`)
    checkpoints/<router>/LATEST              the newest version (routerforge/registry/versions.py)

The recipe's export is verified first (sha256 of its files): a damaged run is never promoted to a version.
Everything is assembled in a temporary sibling directory (including any evaluation and calibration asked
for) that is renamed into place only when complete; LATEST moves last. Versions only increase.

`update_checkpoint` is how anything changes a checkpoint afterwards: it verifies every listed file first (so
re-hashing cannot bless a tampered file), writes the new files atomically, re-renders the card and rewrites
manifest.json with the new hashes. A Hub snapshot (symlinks into the HF cache) is refused: copy it first.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from routerforge.errors import CheckpointError, DataError
from routerforge.eval.report import (
    EVAL_DIR,
    SET_NAME_RE,
    EvalResult,
    evaluate_router,
    headline_metrics,
    render_plot,
    summary_json,
)
from routerforge.eval.thresholds import CALIBRATION_FILE, calibrate_router, empty_calibration, read_calibration
from routerforge.io.atomic import DestinationExistsError, atomic_directory, atomic_write_bytes
from routerforge.io.digest import sha256_file
from routerforge.registry.card import render_card
from routerforge.registry.load import verify_checkpoint
from routerforge.registry.versions import (
    MANIFEST_FILE,
    check_new_version,
    check_router_name,
    next_version,
    write_latest,
)

CARD_FILE = "README.md"
REGISTRY_FORMAT_VERSION = 1


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n").encode("utf-8")


def _check_relative(rel: str) -> str:
    parts = rel.split("/")
    if not rel or rel.startswith("/") or ".." in parts or any(p.startswith(".") for p in parts) or rel == MANIFEST_FILE:
        raise ValueError(f"checkpoint file path {rel!r} must be relative, without '..' or hidden parts")
    return rel


def _refuse_symlinks(directory: Path) -> None:
    links = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_symlink())
    if links:
        raise CheckpointError(f"{directory}: {', '.join(links[:3])} are symlinks (a Hub snapshot in the HF cache?); "
                              f"copy the checkpoint to a directory of its own before changing it.")


def normalize_prices(prices: Mapping[str, object] | None, pool: Sequence[str]) -> dict[str, dict | None]:
    """{model: {"input": USD/1M tokens, "output": USD/1M tokens} or None} for every pool model."""
    out: dict[str, dict | None] = {m: None for m in pool}
    for model, price in (prices or {}).items():
        if isinstance(price, Mapping):
            pair = (price.get("input", price.get("input_usd_per_million_tokens")),
                    price.get("output", price.get("output_usd_per_million_tokens")))
        else:
            pair = tuple(price)  # (input, output)
        if len(pair) != 2 or any(not isinstance(v, (int, float)) or v < 0 for v in pair):
            raise CheckpointError(f"price of {model}: expected (input, output) USD per million tokens >= 0, got "
                                  f"{price!r}.")
        if model in out:
            out[model] = {"input": float(pair[0]), "output": float(pair[1])}
    return out


def update_checkpoint(directory: str | Path, files: Mapping[str, bytes],
                      manifest_update: Callable[[dict], None] | None = None) -> dict:
    """Add/replace `files` ({relative path: bytes}) in a verified checkpoint; return the new manifest."""
    directory = Path(directory)
    _refuse_symlinks(directory)
    manifest, _ = verify_checkpoint(directory)
    manifest = copy.deepcopy(manifest)
    listed = dict(manifest["files"])
    for rel, data in files.items():
        atomic_write_bytes(directory / _check_relative(rel), data)
        listed[rel] = sha256_file(directory / rel)
    manifest["files"] = listed
    if manifest_update is not None:
        manifest_update(manifest)
    if CARD_FILE in listed:
        calibration = read_calibration(directory, CALIBRATION_FILE in listed)
        atomic_write_bytes(directory / CARD_FILE, render_card(manifest, calibration).encode("utf-8"))
        listed[CARD_FILE] = sha256_file(directory / CARD_FILE)
    manifest["files"] = dict(sorted(listed.items()))
    atomic_write_bytes(directory / MANIFEST_FILE, _json_bytes(manifest))
    return manifest


def finalize_export(export_dir: str | Path, registry_root: str | Path = "checkpoints", *,
                    router_name: str | None = None, version: str | None = None,
                    prices: Mapping[str, object] | None = None,
                    eval_outcomes: Mapping[str, str | Path] | None = None, strong: str | None = None,
                    weak: str | None = None, router_pair: Sequence[str] | None = None, gate_set: str | None = None,
                    calibration_prompts: Sequence[str] | None = None,
                    strong_shares: Sequence[float] = (0.2, 0.5, 0.8), n_bootstrap: int = 200, seed: int = 0,
                    embedding_cache_dir: str | Path | None = None) -> Path:
    """Copy a recipe's export into `<registry_root>/<router>/<version>/` (module docstring); return that path.

    router_name: default the manifest's recipe (mf, cluster, difficulty).
    version: MAJOR.MINOR.PATCH higher than every existing one; default the next MINOR (1.0.0 first).
    prices: {model: (input, output) USD per million tokens}; default the prices the recipe recorded.
    eval_outcomes: {set name: long outcome table} evaluated into eval/ (binary with strong/weak, else multi);
    gate_set: one of those names whose headline metric becomes manifest metrics.gate (for `routerforge publish`).
    calibration_prompts: prompts (e.g. the validation split's) to calibrate `strong_shares` on; needs strong/weak.
    n_bootstrap: resamples for the evaluation's confidence intervals (count).
    """
    export_dir = Path(export_dir)
    manifest, _config = verify_checkpoint(export_dir)
    name = check_router_name(router_name or str(manifest.get("recipe") or manifest["router_type"]))
    router_dir = Path(registry_root) / name
    router_dir.mkdir(parents=True, exist_ok=True)
    version = check_new_version(router_dir, version) if version is not None else next_version(router_dir)
    if gate_set is not None and gate_set not in (eval_outcomes or {}):
        raise CheckpointError(f"gate_set {gate_set!r} is not one of the evaluation sets "
                              f"{sorted(eval_outcomes or {})}.")
    final = router_dir / version
    try:
        with atomic_directory(final, replace=False) as tmp:
            for rel in manifest["files"]:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(export_dir / rel, tmp / rel)
            recorded_prices = (manifest.get("data") or {}).get("prices_usd_per_million_tokens")
            new = copy.deepcopy(manifest)
            new.update({
                "router": name,
                "version": version,
                "model_prices_usd_per_million_tokens": normalize_prices(
                    prices if prices is not None else recorded_prices, manifest["model_pool"]),
                "registry": {"format_version": REGISTRY_FORMAT_VERSION, "exported_from": str(export_dir),
                             "finalized_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             "recipe_files_sha256": dict(manifest["files"])},
                "evaluations": dict(manifest.get("evaluations") or {}),
            })
            new["metrics"] = dict(manifest.get("metrics") or {})
            if hub_ids := hub_dataset_ids(manifest.get("data") or {}):
                new["data"] = {**new.get("data", {}), "hub_datasets": hub_ids}
            calibration = (read_calibration(export_dir, True) if CALIBRATION_FILE in manifest["files"]
                           else empty_calibration())
            atomic_write_bytes(tmp / CALIBRATION_FILE, _json_bytes(calibration))
            atomic_write_bytes(tmp / CARD_FILE, render_card(new, calibration).encode("utf-8"))
            new["files"] = {rel: sha256_file(tmp / rel) for rel in sorted({*manifest["files"], CALIBRATION_FILE,
                                                                             CARD_FILE})}
            atomic_write_bytes(tmp / MANIFEST_FILE, _json_bytes(new))

            if eval_outcomes or calibration_prompts:
                from routerforge.router import Router

                router = Router.from_pretrained(tmp, embedding_cache_dir=embedding_cache_dir)
                for set_name, table in (eval_outcomes or {}).items():
                    result = evaluate_router(router, table, strong=strong, weak=weak, router_pair=router_pair,
                                             n_bootstrap=n_bootstrap, seed=seed)
                    result.summary["checkpoint"] = str(final)  # where it will live, not the temporary directory
                    save_evaluation(tmp, result, set_name, gate=set_name == gate_set)
                if calibration_prompts:
                    write_calibration(tmp, calibrate_router(router, calibration_prompts, strong_shares, strong=strong,
                                                            weak=weak, router_pair=router_pair, seed=seed))
            verify_checkpoint(tmp, expected_version=version)
    except DestinationExistsError:
        raise CheckpointError(f"{final} appeared while exporting (another export of {version}?); versions are "
                              f"immutable, export again for the next version.") from None
    write_latest(router_dir, version)
    return final


def hub_dataset_ids(data: Mapping) -> list[str]:
    """Hub ids of the training dataset's sources that were Hub datasets (its manifest's `sources.*.hub`), for the
    card's `datasets:`; empty when the dataset directory is gone or every source was a local file."""
    if data.get("hub_datasets"):
        return sorted(str(d) for d in data["hub_datasets"])
    if not data.get("path"):
        return []
    path = Path(str(data["path"])) / MANIFEST_FILE
    try:
        sources = json.loads(path.read_text(encoding="utf-8")).get("sources") or {}
    except (OSError, ValueError, AttributeError):
        return []
    return sorted({str(s["hub"]) for s in sources.values() if isinstance(s, dict) and s.get("hub")})


def write_calibration(directory: str | Path, entry: dict) -> dict:
    """Merge a calibration entry into a checkpoint's calibration.json (update_checkpoint); return the manifest."""
    from routerforge.eval.thresholds import merge_calibration

    directory = Path(directory)
    manifest, _ = verify_checkpoint(directory)
    merged = merge_calibration(read_calibration(directory, CALIBRATION_FILE in manifest["files"]), entry)

    def record(m: dict) -> None:
        m["calibration"] = {"pairs": [f"{e['strong']} over {e['weak']}" for e in merged["calibrations"]],
                            "fingerprints": {f"{e['strong']} over {e['weak']}": e["data"]["prompts_fingerprint"]
                                             for e in merged["calibrations"]}}

    return update_checkpoint(directory, {CALIBRATION_FILE: _json_bytes(merged)}, record)


def save_evaluation(checkpoint_dir: str | Path, result: EvalResult, set_name: str, *, gate: bool = False) -> dict:
    """Store eval/<set>.json and eval/<set>.png in a checkpoint (manifest + card updated); return the manifest.

    gate: make this evaluation's headline metric (APGR binary, AIQ multi) the manifest's metrics.gate, which
    `routerforge publish` compares with the latest published version.
    """
    if not SET_NAME_RE.match(set_name):
        raise DataError(f"evaluation set name {set_name!r}: use letters, digits, '.', '_' or '-'.")
    with tempfile.TemporaryDirectory(prefix="routerforge-plot-") as tmp:
        plot_bytes = render_plot(result, Path(tmp) / "plot.png").read_bytes()
    report_rel, plot_rel = f"{EVAL_DIR}/{set_name}.json", f"{EVAL_DIR}/{set_name}.png"
    metrics = headline_metrics(result)
    gate_metric = "apgr" if result.kind == "binary" else "aiq"
    if gate and metrics[gate_metric] is None:
        raise CheckpointError(f"{set_name}: {gate_metric} is undefined (the strong and weak model score the same "
                              f"on average), so it cannot be the promotion gate.")

    def record(manifest: dict) -> None:
        evaluations = dict(manifest.get("evaluations") or {})
        s = result.summary
        evaluations[set_name] = {"kind": result.kind, "n": s["n"], "metrics": metrics, "report": report_rel,
                                 "plot": plot_rel, "outcomes_sha256": s["outcomes"]["sha256"],
                                 **({"strong": s["strong"], "weak": s["weak"]} if result.kind == "binary" else {})}
        manifest["evaluations"] = evaluations
        if gate:
            manifest.setdefault("metrics", {})["gate"] = {"set": set_name, "metric": gate_metric,
                                                          "value": metrics[gate_metric], "higher_is_better": True}

    return update_checkpoint(checkpoint_dir, {report_rel: summary_json(result), plot_rel: plot_bytes}, record)


def register_run_export(export_cfg, export_dir: str | Path, registry_root: str | Path) -> Path | None:
    """What every recipe calls after its export (main process): register it when `export.registry` is on.

    Returns the versioned checkpoint directory, or None when registration is off.
    """
    if not export_cfg.registry:
        return None
    return finalize_export(export_dir, registry_root, version=export_cfg.version)
