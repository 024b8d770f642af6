"""Calibrate a router's strong/weak threshold on the user's own prompts, and apply it.

RouteLLM users' top complaint: thresholds calibrated on Arena prompts send the wrong share of *their*
traffic to the strong model (RouteLLM's `calibrate_threshold.py` computes them on Arena data only). Here the
threshold for a share s is the (1 − s) quantile of the router's scores on the user's prompts:

    strong  iff  score > threshold + tol,  or  |score − threshold| <= tol  and  u(prompt) < tie_fraction

Ties. Routers with few distinct scores (a cluster router has one per cluster; identical prompts score the
same) cannot reach an arbitrary share with a plain threshold: a tie group goes all or nothing. The prompts
tied at the threshold are split: a share `tie_fraction` of them, chosen by a hash of the prompt text
(`u(prompt)` uniform in [0, 1)), goes to the strong model. The choice is deterministic per prompt, so a
repeated prompt is always routed the same way; it is the same "split the tie group uniformly" convention
the binary metrics use for tied scores (routerforge/eval/binary.py). Scores closer than `tol` = 1e-6 count
as tied: the same prompt can score a few ulps apart in batches of other shapes.

Held-out check. A share `holdout_fraction` of the prompts (by a seeded hash of the text, so duplicates stay
together) is not used to set thresholds; the share each threshold achieves on them is reported with a 95%
Wilson interval. With n_c calibration and n_h held-out prompts from the same traffic, the held-out share
differs from the target by about sqrt(s(1 − s)(1/n_c + 1/n_h)) (one standard deviation): 1.6 points for
s = 0.5 and 2,000 + 2,000 prompts.

calibration.json (inside the checkpoint, listed with its sha256 in manifest.json)::

    {"format_version": 1, "tie_tolerance": 1e-06,
     "calibrations": [{"strong": ..., "weak": ..., "score": {"kind": "pair" | "pair_free",
                       "router_pair": [S, W] | null, "rule": "..."},
                       "data": {"file", "file_sha256", "prompts_fingerprint", "prompts", "calibration_prompts",
                                "holdout_prompts", "holdout_fraction", "split_seed"},
                       "created_at": ISO time,
                       "thresholds": [{"strong_share", "threshold", "tie_fraction", "calibration_share",
                                       "holdout_share", "holdout_ci95"}, ...]}]}

One entry per (strong, weak) pair; calibrating the same pair again replaces it.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routerforge.errors import CheckpointError, DataError
from routerforge.io.digest import sha256_file

CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT_VERSION = 1
TIE_TOLERANCE = 1e-6
SHARE_MATCH = 1e-9  # two strong shares closer than this are the same calibrated share
_UNIFORM_DENOMINATOR = float(1 << 64)


def empty_calibration() -> dict:
    """What a fresh export holds: no thresholds yet (`routerforge calibrate` adds them)."""
    return {"format_version": CALIBRATION_FORMAT_VERSION, "tie_tolerance": TIE_TOLERANCE, "calibrations": []}


# ------------------------------------------------------------------------------------------------ threshold math
def prompt_uniform(prompt: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the prompt text (sha256), for splitting ties and held-out sets."""
    digest = hashlib.sha256(f"{salt}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _UNIFORM_DENOMINATOR


def strong_mask(scores: np.ndarray, prompts: Sequence[str], threshold: float, tie_fraction: float,
                tolerance: float = TIE_TOLERANCE) -> np.ndarray:
    """Boolean [n]: which prompts the calibrated rule (module docstring) sends to the strong model."""
    scores = np.asarray(scores, dtype=np.float64)
    above = scores > threshold + tolerance
    tied = np.abs(scores - threshold) <= tolerance
    if tie_fraction <= 0.0 or not tied.any():
        return above
    routed = above.copy()
    for i in np.flatnonzero(tied):
        routed[i] = prompt_uniform(prompts[i]) < tie_fraction
    return routed


def threshold_for_share(scores: np.ndarray, share: float, tolerance: float = TIE_TOLERANCE) -> tuple[float, float]:
    """(threshold, tie_fraction) sending round(share * n) of these scores to the strong model."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0 or not np.all(np.isfinite(scores)):
        raise DataError("calibration needs a non-empty vector of finite router scores.")
    if not 0.0 <= share <= 1.0:
        raise DataError(f"strong share {share} is not in [0, 1].")
    ordered = np.sort(scores)[::-1]
    k = int(round(share * len(scores)))
    if k == 0:
        return float(ordered[0]), 0.0
    threshold = float(ordered[k - 1])
    above = int(np.sum(scores > threshold + tolerance))
    tied = int(np.sum(np.abs(scores - threshold) <= tolerance))
    return threshold, min(1.0, max(0.0, (k - above) / tied))


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (Wilson 1927); (nan, nan) for n = 0."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def holdout_mask(prompts: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Boolean [n]: the held-out prompts (a seeded hash of the text below `fraction`)."""
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"--holdout-fraction {fraction} must be in [0, 1).")
    return np.array([prompt_uniform(p, salt=f"holdout-{seed}") < fraction for p in prompts], dtype=bool)


# ------------------------------------------------------------------------------------------------ prompt files
def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a .jsonl ({"prompt": ...} objects or JSON strings), .csv (a `prompt` column) or .txt file
    (one prompt per line); DataError naming file:line for the first bad row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file not found: {path}; pass a .jsonl, .csv or .txt file.")
    prompts: list[str] = []
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{line_no}: invalid JSON ({err.msg}).") from None
                text = row.get("prompt") if isinstance(row, dict) else row
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"{path}:{line_no}: expected a non-empty string 'prompt' (chat turns: pass the "
                                    f"text the router should read).")
                prompts.append(text)
    elif suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            if "prompt" not in (reader.fieldnames or []):
                raise DataError(f"{path}:1: the CSV header needs a 'prompt' column; it has {reader.fieldnames}.")
            for row_no, row in enumerate(reader, start=2):
                text = row.get("prompt")
                if not text or not text.strip():
                    raise DataError(f"{path}:{row_no}: empty prompt.")
                prompts.append(text)
    elif suffix == ".txt":
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        raise DataError(f"{path}: unsupported prompts format '{suffix or '(none)'}'; use .jsonl, .csv or .txt.")
    if not prompts:
        raise DataError(f"{path}: no prompts.")
    return prompts


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """sha256 over the sorted sha256 of each prompt: the same multiset of prompts, the same fingerprint."""
    digest = hashlib.sha256()
    for item in sorted(hashlib.sha256(p.encode()).hexdigest() for p in prompts):
        digest.update(item.encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ calibration
def calibrate_router(router, prompts: Sequence[str], strong_shares: Sequence[float], *, strong: str | None = None,
                     weak: str | None = None, router_pair: Sequence[str] | None = None,
                     holdout_fraction: float = 0.25, seed: int = 0, source: str | Path | None = None) -> dict:
    """One calibration entry (module docstring) for `router` on `prompts`; nothing is written."""
    shares = [float(s) for s in strong_shares]
    if not shares:
        raise DataError("give at least one --strong-share (a fraction in [0, 1], e.g. 0.2).")
    for share in shares:
        if not 0.0 <= share <= 1.0:
            raise DataError(f"--strong-share {share} is not a fraction in [0, 1] (0.2 = 20% of prompts).")
    prompts = list(prompts)
    spec = router.score_spec(strong, weak, router_pair)
    if spec.strong is None or spec.weak is None:
        raise DataError("name the strong and weak model (--strong NAME --weak NAME): they are what the calibrated "
                        "router returns.")
    held = holdout_mask(prompts, holdout_fraction, seed)
    if held.all():
        raise DataError(f"every prompt fell in the held-out share {holdout_fraction}; add prompts or lower it.")
    if holdout_fraction > 0 and not held.any():
        raise DataError(f"no prompt fell in the held-out share {holdout_fraction}; add prompts.")
    scores = router.scores_for(prompts, spec)
    cal_idx, hold_idx = np.flatnonzero(~held), np.flatnonzero(held)
    cal_prompts = [prompts[i] for i in cal_idx]
    hold_prompts = [prompts[i] for i in hold_idx]
    thresholds = []
    for share in sorted(set(shares)):
        threshold, tie_fraction = threshold_for_share(scores[cal_idx], share)
        cal_share = float(strong_mask(scores[cal_idx], cal_prompts, threshold, tie_fraction).mean())
        row = {"strong_share": share, "threshold": threshold, "tie_fraction": tie_fraction,
               "calibration_share": cal_share, "holdout_share": None, "holdout_ci95": None}
        if len(hold_idx):
            routed = strong_mask(scores[hold_idx], hold_prompts, threshold, tie_fraction)
            row["holdout_share"] = float(routed.mean())
            row["holdout_ci95"] = list(wilson_interval(int(routed.sum()), len(routed)))
        thresholds.append(row)
    data = {"file": str(source) if source is not None else None,
            "file_sha256": sha256_file(Path(source)) if source is not None and Path(source).is_file() else None,
            "prompts_fingerprint": prompts_fingerprint(prompts), "prompts": len(prompts),
            "calibration_prompts": len(cal_idx), "holdout_prompts": len(hold_idx),
            "holdout_fraction": holdout_fraction, "split_seed": seed}
    return {"strong": spec.strong, "weak": spec.weak, "score": spec.to_dict(), "data": data,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "thresholds": thresholds}


def merge_calibration(calibration: dict, entry: dict) -> dict:
    """`calibration` with `entry` replacing any entry for the same (strong, weak) pair."""
    kept = [e for e in calibration.get("calibrations", []) if (e["strong"], e["weak"]) != (entry["strong"],
                                                                                            entry["weak"])]
    return {**empty_calibration(), **{k: v for k, v in calibration.items() if k != "calibrations"},
            "calibrations": [*kept, entry]}


def read_calibration(directory: Path, listed: bool) -> dict:
    """calibration.json of a checkpoint (empty when the export has none)."""
    path = Path(directory) / CALIBRATION_FILE
    if not listed or not path.is_file():
        return empty_calibration()
    try:
        calibration = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); re-run `routerforge calibrate`.") from None
    if not isinstance(calibration, dict) or not isinstance(calibration.get("calibrations"), list):
        raise CheckpointError(f"{path}: expected {{'calibrations': [...]}}; re-run `routerforge calibrate`.")
    return calibration


def find_calibration(calibration: dict, strong: str | None, weak: str | None, where: str) -> dict:
    """The entry for (strong, weak), or the only entry when both are None; CheckpointError otherwise."""
    entries = calibration.get("calibrations", [])
    pairs = ", ".join(f"{e['strong']} over {e['weak']}" for e in entries) or "none"
    if not entries:
        raise CheckpointError(f"{where}: not calibrated; run `routerforge calibrate {where} --prompts FILE "
                              f"--strong-share 0.2 0.5` on your own prompts first.")
    if strong is None and weak is None:
        if len(entries) == 1:
            return entries[0]
        raise CheckpointError(f"{where}: calibrated for several pairs ({pairs}); name strong and weak.")
    for entry in entries:
        if (entry["strong"], entry["weak"]) == (strong, weak):
            return entry
    raise CheckpointError(f"{where}: not calibrated for {strong} over {weak} (calibrated: {pairs}); run "
                          f"`routerforge calibrate` with --strong {strong} --weak {weak}.")


def threshold_row(entry: dict, share: float, where: str) -> dict:
    for row in entry["thresholds"]:
        if abs(row["strong_share"] - share) <= SHARE_MATCH:
            return row
    shares = ", ".join(f"{row['strong_share']:g}" for row in entry["thresholds"])
    raise CheckpointError(f"{where}: strong_share {share:g} is not calibrated for {entry['strong']} over "
                          f"{entry['weak']} (calibrated: {shares}); run `routerforge calibrate ... --strong-share "
                          f"{share:g}`.")
