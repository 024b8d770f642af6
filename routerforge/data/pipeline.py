"""The data-prep pipeline: ingest -> validate -> clean -> convert and merge -> decontaminate -> split -> embed.

Each stage is a function of the previous stage's files and writes its own directory under
``<output_root>/<name>/.work/<input fingerprint>/<stage>/``; a stage directory is renamed into place
only when complete (with the ledger snapshot), so an interrupted run resumes at the first stage that
did not finish. The last stage writes the versioned dataset directory atomically
(`routerforge.data.dataset_io.write_dataset_dir`) and removes the work directory.

Stage by stage:

1. ``ingest``: read every source with its reader (validate: malformed rows are reported with file,
   line, field and reason) and clean it (`routerforge.data.clean`); one Arrow file per source.
2. ``convert``: outcomes and judge scores become pairs (`routerforge.data.convert`); evaluation
   sources and per-source holdouts become long outcome tables (``eval/<set>.jsonl``); everything
   else merges into one pairs table and one outcomes table, rows weighted by their source's weight.
3. ``decontaminate``: drop training rows whose prompt matches an evaluation prompt exactly (normalised
   text) or by embedding cosine >= threshold; every removal is listed in decontamination.jsonl.
4. ``split``: near-duplicate prompts are grouped (cosine >= clean.near_duplicate_cosine) and each group
   is assigned train / validation / test by a seeded hash (`routerforge.data.split`).
5. ``embed``: the prompt table of each split gets its embeddings (cached; reused from stage 3), and the
   versioned dataset is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, concatenate_datasets
from datasets.arrow_writer import ArrowWriter

import routerforge
from routerforge.config import config_to_dict, dump_config
from routerforge.data.clean import clean_records
from routerforge.data.config import SOURCE_KINDS, PrepConfig, SourceConfig
from routerforge.data.convert import CONVERTERS, groups_by_prompt
from routerforge.data.dataset_io import DATA_FORMAT_VERSION, SPLITS, write_dataset_dir
from routerforge.data.hub_source import forget_resolutions, resolve_hub_source
from routerforge.data.readers import read_source
from routerforge.data.readers._io import expand_paths, open_bytes
from routerforge.data.records import (
    JUDGE_SCORE_FEATURES,
    OUTCOME_FEATURES,
    PAIR_FEATURES,
    make_outcome,
    prompt_features,
    prompt_id_for,
)
from routerforge.data.report import Ledger
from routerforge.data.similarity import max_cosine, near_duplicate_groups
from routerforge.data.split import assign_split, in_holdout
from routerforge.errors import DataError, StrictModeError
from routerforge.io.digest import sha256_file
from routerforge.io.names import COMPLETE_MARKER, LATEST_FILE

STAGES = ("ingest", "convert", "decontaminate", "split", "embed")
FEATURES_BY_KIND = {"pairs": PAIR_FEATURES, "outcomes": OUTCOME_FEATURES, "judge_scores": JUDGE_SCORE_FEATURES}


@dataclass
class PrepRun:
    """One pipeline run: config, where its work goes, its ledger, and (optionally) an accelerator."""

    cfg: PrepConfig
    input_fingerprint: str
    accelerator: object | None = None
    ledger: Ledger = field(default_factory=Ledger)
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))

    @property
    def dataset_root(self) -> Path:
        return Path(self.cfg.output_root) / self.cfg.name

    @property
    def version(self) -> str:
        return self.input_fingerprint[:12]

    @property
    def work_dir(self) -> Path:
        return self.dataset_root / ".work" / self.input_fingerprint[:16]

    def stage_dir(self, stage: str) -> Path:
        return self.work_dir / stage

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process


# --------------------------------------------------------------------------------------------------
# fingerprints
# --------------------------------------------------------------------------------------------------

def input_fingerprint(cfg: PrepConfig) -> str:
    """sha256 over the resolved config, the bytes of every input file, and the data format version.

    Same config + same input files -> same fingerprint -> same dataset version (a re-run is a no-op).
    A Hub source counts by its resolved commit sha (a moved branch is a new version).
    """
    h = hashlib.sha256()
    h.update(f"format={DATA_FORMAT_VERSION}\n".encode())
    h.update(dump_config(cfg).encode())
    files: list[Path] = []
    for src in cfg.sources:
        if src.hub:
            hub = resolve_hub_source(src)
            h.update(f"{hub.repo_id}\x1f{hub.sha}\x1f{hub.split}\x1f{list(hub.data_files)}\n".encode())
        else:
            files += expand_paths(src.path, src.name)
        if src.questions_path:
            files += expand_paths(src.questions_path, src.name)
    for extra in cfg.decontaminate.extra_eval_files:
        files += expand_paths(extra, "decontaminate.extra_eval_files")
    for path in files:
        h.update(f"{path}\x1f{sha256_file(path)}\n".encode())
    return h.hexdigest()


def _content_fingerprint(tables: dict[str, DatasetDict]) -> str:
    """sha256 over every row of every table, in order (the Arrow buffers), independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(tables):
        for split in sorted(tables[name]):
            ds = tables[name][split]
            h.update(f"{name}/{split}/{len(ds)}\n".encode())
            for batch in ds.with_format("arrow").iter(batch_size=10_000):
                for column in batch.column_names:
                    h.update(column.encode())
                    for buf in batch.column(column).combine_chunks().buffers():
                        if buf is not None:
                            h.update(memoryview(buf))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# small IO helpers
# --------------------------------------------------------------------------------------------------

def _write_arrow(path: Path, features, rows: Iterable[dict]) -> int:
    writer = ArrowWriter(features=features, path=str(path))
    try:
        for row in rows:
            writer.write(row)
        n, _ = writer.finalize()
    finally:
        writer.close()
    return n


def _read_arrow(path: Path) -> Dataset:
    return Dataset.from_file(str(path))


def _sorted_by_prompt(ds: Dataset) -> Dataset:
    """`ds` in prompt_id order (a stable sort: rows of one prompt keep their read order).

    Not `Dataset.sort`: datasets 5.2 passes `null_placement` to pyarrow's sort as a whole-sort option,
    which pyarrow >= 25 deprecates with a FutureWarning on every prep run (pyarrow now wants it per sort
    key). prompt_id is never null, so no null placement is needed at all: the plain sort keys below work
    on every pyarrow `datasets` accepts and give the same order. The sorted view stays in memory
    (8 bytes of index per row) instead of an indices cache file beside the stage's Arrow file.
    """
    order = pc.sort_indices(ds.data.table.select(["prompt_id"]), sort_keys=[("prompt_id", "ascending")])
    return ds.select(order, keep_in_memory=True)


def _iter_rows(ds: Dataset, batch_size: int = 10_000) -> Iterator[dict]:
    """Rows as dicts with ClassLabel values decoded back to names (for re-encoding by ArrowWriter)."""
    winner_names = ds.features["winner"].names if "winner" in ds.features else None
    for batch in ds.iter(batch_size=batch_size):
        keys = list(batch)
        for i in range(len(batch[keys[0]])):
            row = {k: batch[k][i] for k in keys}
            if winner_names is not None:
                row["winner"] = winner_names[row["winner"]]
            yield row


def _write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _read_jsonl(path: Path) -> list[dict]:
    with open_bytes(path) as fh:  # extra evaluation files may be gzipped
        return [json.loads(line) for line in fh if line.strip()]


def _finish_stage(run: PrepRun, stage: str, tmp: Path) -> None:
    (tmp / "ledger.json").write_text(json.dumps(run.ledger.to_json()), encoding="utf-8")
    (tmp / COMPLETE_MARKER).write_text("ok\n", encoding="utf-8")
    final = run.stage_dir(stage)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _new_stage_dir(run: PrepRun, stage: str) -> Path:
    tmp = run.work_dir / f".tmp-{stage}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


# --------------------------------------------------------------------------------------------------
# 1. ingest: read + validate + clean
# --------------------------------------------------------------------------------------------------

def stage_ingest(run: PrepRun) -> None:
    out = _new_stage_dir(run, "ingest")
    for src in run.cfg.sources:
        produces = SOURCE_KINDS[src.kind]
        t0 = time.perf_counter()
        records = clean_records(read_source(src, run.ledger), src, run.cfg.clean, run.ledger, produces)
        n = _write_arrow(out / f"{src.name}.arrow", FEATURES_BY_KIND[produces], records)
        run.log(f"  ingest {src.name} ({src.kind}): {n} rows kept in {time.perf_counter() - t0:.1f}s")
    if run.ledger.bad_rows:
        run.ledger.write_bad_rows(out / "bad_rows.jsonl")
        run.log(f"  {len(run.ledger.bad_rows)} malformed rows reported (see bad_rows.jsonl); "
                f"by source and reason: {json.dumps(run.ledger.bad_counts())}")
        if run.cfg.strict:
            raise StrictModeError(f"--strict: {len(run.ledger.bad_rows)} malformed rows "
                                  f"(first: {run.ledger.bad_rows[0].format()}); fix them or run without --strict.")
    _finish_stage(run, "ingest", out)


# --------------------------------------------------------------------------------------------------
# 2. convert and merge; eval sets and holdouts
# --------------------------------------------------------------------------------------------------

def _eval_outcomes_from_judge(group: list[dict], src: SourceConfig) -> Iterator[dict]:
    """Judge scores of one prompt -> one outcome per model: mean over turns of score/10 (MT-Bench style)."""
    by_model: dict[str, list[dict]] = defaultdict(list)
    for row in group:
        by_model[row["model"]].append(row)
    for model, rows in sorted(by_model.items()):
        first = min(rows, key=lambda r: r["turn"])
        yield make_outcome(prompt=first["prompt"], model=model,
                           score=float(np.mean([r["judge_score"] for r in rows])) / 10.0,
                           source=src.name, source_file=first["source_file"], source_line=first["source_line"],
                           source_id=first["source_id"], task=src.task or src.name)


def _eval_outcome_row(row: dict) -> dict:
    return {k: row[k] for k in ("prompt_id", "prompt", "model", "score", "cost", "input_tokens",
                                 "output_tokens", "task", "source", "source_id")}


def _route_holdout(run: PrepRun, src: SourceConfig, produces: str, ds: Dataset,
                   eval_rows: dict[str, list[dict]]) -> Iterator[list[dict]]:
    """Yield the training groups (records of one prompt); evaluation sets and holdouts go to `eval_rows`."""
    for group in groups_by_prompt(_iter_rows(ds)):
        pid = group[0]["prompt_id"]
        if src.role == "eval" or in_holdout(pid, run.cfg.holdout_seed, src.holdout):
            run.ledger.count(src.name, "holdout", dropped={"evaluation_set": len(group)})
            rows = group if produces == "outcomes" else list(_eval_outcomes_from_judge(group, src))
            eval_rows[src.name].extend(_eval_outcome_row(r) for r in rows)
            continue
        run.ledger.count(src.name, "holdout", kept=len(group))
        yield group


def _tee_rows(groups: Iterator[list[dict]], writer: ArrowWriter) -> Iterator[list[dict]]:
    for group in groups:
        for row in group:
            writer.write(row)
        yield group


def stage_convert(run: PrepRun) -> None:
    out = _new_stage_dir(run, "convert")
    ingest = run.stage_dir("ingest")
    (out / "eval").mkdir()
    eval_rows: dict[str, list[dict]] = defaultdict(list)
    pair_parts: list[Path] = []
    outcome_parts: list[Path] = []
    for src in run.cfg.sources:
        produces = SOURCE_KINDS[src.kind]
        ds = _read_arrow(ingest / f"{src.name}.arrow")
        if produces == "pairs":
            run.ledger.count(src.name, "convert", kept=len(ds))
            path = out / f"pairs-{src.name}.arrow"
            _write_arrow(path, PAIR_FEATURES, _iter_rows(ds))
            pair_parts.append(path)
            continue

        ds = _sorted_by_prompt(ds)
        groups = _route_holdout(run, src, produces, ds, eval_rows)
        if src.role == "eval":
            for _ in groups:
                pass
            continue
        pair_path, outcome_path = out / f"pairs-{src.name}.arrow", out / f"outcomes-{src.name}.arrow"
        outcome_writer = ArrowWriter(features=OUTCOME_FEATURES, path=str(outcome_path)) \
            if produces == "outcomes" else None
        try:
            if outcome_writer is not None:  # training outcomes are kept as a table too (cluster/probe routers)
                groups = _tee_rows(groups, outcome_writer)
            _write_arrow(pair_path, PAIR_FEATURES, CONVERTERS[src.convert.rule](groups, src, run.ledger))
        finally:
            if outcome_writer is not None:
                outcome_writer.finalize()
                outcome_writer.close()
        pair_parts.append(pair_path)
        if outcome_writer is not None:
            outcome_parts.append(outcome_path)
    for name, rows in eval_rows.items():
        _write_jsonl(out / "eval" / f"{name}.jsonl", rows)
    _merge_parts(pair_parts, PAIR_FEATURES, out / "pairs.arrow")
    _merge_parts(outcome_parts, OUTCOME_FEATURES, out / "outcomes.arrow")
    for part in pair_parts + outcome_parts:
        part.unlink()
    _finish_stage(run, "convert", out)


def _merge_parts(parts: list[Path], features, dest: Path) -> None:
    _write_arrow(dest, features, (row for part in parts for row in _iter_rows(_read_arrow(part))))


# --------------------------------------------------------------------------------------------------
# 3. decontaminate
# --------------------------------------------------------------------------------------------------

def _extra_eval_prompts(path_pattern: str) -> Iterator[tuple[str, str]]:
    """(set name, prompt) from extra eval files: `prompt`, first of `turns`, or `eval_prompt` fields."""
    for path in expand_paths(path_pattern, "decontaminate.extra_eval_files"):
        for row in _read_jsonl(path):
            text = row.get("prompt") or row.get("eval_prompt") or (row.get("turns") or [None])[0]
            if isinstance(text, str) and text.strip():
                yield path.stem, text


def _embed(run: PrepRun, texts: list[str], distributed: bool = False) -> np.ndarray:
    """Embed through the cache; `distributed` (all ranks must call) splits the misses across processes."""
    from routerforge.encoders import embed_texts

    return embed_texts(texts, run.cfg.encoder, accelerator=run.accelerator if distributed else None,
                       progress=run.is_main_process)


def _unique_prompts(*tables: Dataset) -> dict[str, str]:
    prompts: dict[str, str] = {}
    for ds in tables:
        for batch in ds.select_columns(["prompt_id", "prompt"]).iter(batch_size=10_000):
            for pid, text in zip(batch["prompt_id"], batch["prompt"], strict=True):
                prompts.setdefault(pid, text)
    return prompts


def _decontam_inputs(run: PrepRun) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """(training prompt_id -> text, evaluation prompt_id -> (set, text)), both in a deterministic order."""
    conv = run.stage_dir("convert")
    eval_prompts: dict[str, tuple[str, str]] = {}
    for path in sorted((conv / "eval").glob("*.jsonl")):
        for row in _read_jsonl(path):
            eval_prompts.setdefault(row["prompt_id"], (path.stem, row["prompt"]))
    for pattern in run.cfg.decontaminate.extra_eval_files:
        for set_name, text in _extra_eval_prompts(pattern):
            eval_prompts.setdefault(prompt_id_for(text), (set_name, text))
    train = _unique_prompts(_read_arrow(conv / "pairs.arrow"), _read_arrow(conv / "outcomes.arrow"))
    return dict(sorted(train.items())), dict(sorted(eval_prompts.items()))


def warm_embedding_cache(run: PrepRun) -> None:
    """Embed every training and evaluation prompt across all processes so stage 3 only reads the cache.

    The calls are exactly stage 3's (same texts, same order, so the same length-sorted batches): the
    dataset is then bitwise identical to a one-process run.
    """
    train_prompts, eval_prompts = _decontam_inputs(run)
    _embed(run, list(train_prompts.values()), distributed=True)
    _embed(run, [text for _, text in eval_prompts.values()], distributed=True)


def stage_decontaminate(run: PrepRun) -> None:
    out = _new_stage_dir(run, "decontaminate")
    conv = run.stage_dir("convert")
    pairs, outcomes = _read_arrow(conv / "pairs.arrow"), _read_arrow(conv / "outcomes.arrow")
    train_prompts, eval_prompts = _decontam_inputs(run)
    train_ids, eval_ids = list(train_prompts), list(eval_prompts)
    train_emb = _embed(run, list(train_prompts.values()))
    eval_emb = _embed(run, [text for _, text in eval_prompts.values()])
    best, arg = max_cosine(train_emb, eval_emb)
    threshold = run.cfg.decontaminate.cosine_threshold
    removed: dict[str, str] = {}
    report: list[dict] = []
    eval_set = set(eval_ids)
    for k, pid in enumerate(train_ids):
        if pid in eval_set:  # prompt_id is the hash of the normalised text: an exact match
            reason, match, cos = "decontam_exact", pid, 1.0
        elif best[k] >= threshold:
            reason, match, cos = "decontam_cosine", eval_ids[int(arg[k])], float(best[k])
        else:
            continue
        removed[pid] = reason
        report.append({"prompt_id": pid, "reason": reason, "cosine": round(cos, 4),
                       "eval_set": eval_prompts[match][0], "eval_prompt_id": match,
                       "prompt": train_prompts[pid][:200], "eval_prompt": eval_prompts[match][1][:200]})
    _write_jsonl(out / "decontamination.jsonl", report)

    def keep(ds: Dataset, dest: Path, features, stage: str) -> None:
        def rows() -> Iterator[dict]:
            for row in _iter_rows(ds):
                reason = removed.get(row["prompt_id"])
                if reason:
                    run.ledger.count(row["source"], stage, dropped={reason: 1})
                else:
                    run.ledger.count(row["source"], stage, kept=1)
                    yield row
        _write_arrow(dest, features, rows())

    # Pairs and outcome rows are counted apart: an outcome source has both, and one sum would mix units.
    keep(pairs, out / "pairs.arrow", PAIR_FEATURES, "decontaminate_pairs")
    keep(outcomes, out / "outcomes.arrow", OUTCOME_FEATURES, "decontaminate_outcomes")
    kept_ids = [i for i in train_ids if i not in removed]
    rows_kept = np.asarray([k for k, i in enumerate(train_ids) if i not in removed], dtype=np.int64)
    np.save(out / "prompt_embeddings.npy", train_emb[rows_kept] if len(rows_kept) else train_emb[:0])
    _write_jsonl(out / "prompts.jsonl", ({"prompt_id": i, "prompt": train_prompts[i]} for i in kept_ids))
    shutil.copytree(conv / "eval", out / "eval")
    run.log(f"  decontaminate: {len(eval_ids)} eval prompts; removed {len(removed)} of {len(train_ids)} "
            f"training prompts ({sum(r == 'decontam_exact' for r in removed.values())} exact, "
            f"{sum(r == 'decontam_cosine' for r in removed.values())} cosine >= {threshold})")
    _finish_stage(run, "decontaminate", out)


# --------------------------------------------------------------------------------------------------
# 4. split by prompt group
# --------------------------------------------------------------------------------------------------

def stage_split(run: PrepRun) -> None:
    out = _new_stage_dir(run, "split")
    dec = run.stage_dir("decontaminate")
    prompts = _read_jsonl(dec / "prompts.jsonl")
    ids = [p["prompt_id"] for p in prompts]
    emb = np.load(dec / "prompt_embeddings.npy")
    groups = near_duplicate_groups(ids, emb, run.cfg.clean.near_duplicate_cosine)
    sc = run.cfg.split
    split_of = {pid: assign_split(groups[pid], sc.seed, sc.validation, sc.test) for pid in ids}
    n_grouped = sum(1 for pid in ids if groups[pid] != pid)
    _write_jsonl(out / "prompts.jsonl", ({**p, "group_id": groups[p["prompt_id"]],
                                          "split": split_of[p["prompt_id"]]} for p in prompts))
    for table, features in (("pairs", PAIR_FEATURES), ("outcomes", OUTCOME_FEATURES)):
        ds = _read_arrow(dec / f"{table}.arrow")
        for split in SPLITS:
            rows = (r for r in _iter_rows(ds) if split_of[r["prompt_id"]] == split)
            _write_arrow(out / f"{table}-{split}.arrow", features, rows)
    shutil.copytree(dec / "eval", out / "eval")
    shutil.copy(dec / "decontamination.jsonl", out / "decontamination.jsonl")
    np.save(out / "prompt_embeddings.npy", emb)
    run.log(f"  split: {len(ids)} prompts, {n_grouped} folded into near-duplicate groups; "
            + ", ".join(f"{s}={sum(v == s for v in split_of.values())}" for s in SPLITS))
    _finish_stage(run, "split", out)


# --------------------------------------------------------------------------------------------------
# 5. embed and write the versioned dataset
# --------------------------------------------------------------------------------------------------

def encoder_info(cfg) -> dict:
    """What the manifest records about the encoder: enough to embed new prompts the same way."""
    from routerforge.encoders import build_encoder, encoder_manifest

    return {**encoder_manifest(build_encoder(cfg)), "backend": cfg.backend, "model": cfg.model,
            "max_length": cfg.max_length, "normalize": cfg.normalize}


def _hub_record(src: SourceConfig) -> dict:
    """What the manifest records of a Hub source: the id, the requested and the resolved revision."""
    if not src.hub:
        return {}
    hub = resolve_hub_source(src)
    return {"hub": hub.repo_id, "revision": hub.sha, "requested_revision": src.revision or "main",
            "split": hub.split, "data_files": list(hub.data_files)}


def stage_embed(run: PrepRun) -> Path:
    sp = run.stage_dir("split")
    prompts = _read_jsonl(sp / "prompts.jsonl")
    emb = np.load(sp / "prompt_embeddings.npy")
    if len(prompts) != len(emb):  # the embeddings were made in stage 3; recompute if anything is off
        emb = _embed(run, [p["prompt"] for p in prompts])
    encoder = encoder_info(run.cfg.encoder)
    dim = int(encoder["dim"])
    feats = prompt_features(dim)
    prompt_tables = DatasetDict()
    for split in SPLITS:
        idx = [k for k, p in enumerate(prompts) if p["split"] == split]
        prompt_tables[split] = Dataset.from_dict(
            {"prompt_id": [prompts[k]["prompt_id"] for k in idx], "prompt": [prompts[k]["prompt"] for k in idx],
             "embedding": emb[idx].astype(np.float32).tolist() if idx else []}, features=feats)
    pairs = DatasetDict({s: _read_arrow(sp / f"pairs-{s}.arrow") for s in SPLITS})
    outcomes = DatasetDict({s: _read_arrow(sp / f"outcomes-{s}.arrow") for s in SPLITS})
    if sum(len(pairs[s]) for s in SPLITS) == 0 and sum(len(outcomes[s]) for s in SPLITS) == 0:
        raise DataError("no training rows left after cleaning and decontamination; see stats in "
                        f"{run.work_dir} and relax the filters or add sources.")
    content_fp = _content_fingerprint({"prompts": prompt_tables, "pairs": pairs, "outcomes": outcomes})
    models = sorted(set(concatenate_datasets([pairs[s] for s in SPLITS])["model_a"])
                    | set(concatenate_datasets([pairs[s] for s in SPLITS])["model_b"])
                    | set(concatenate_datasets([outcomes[s] for s in SPLITS])["model"]))
    stats = run.ledger.stats()
    counts = {name: {s: len(t[s]) for s in SPLITS}
              for name, t in (("prompts", prompt_tables), ("pairs", pairs), ("outcomes", outcomes))}
    eval_sets = {}
    for path in sorted((sp / "eval").glob("*.jsonl")):
        rows = _read_jsonl(path)
        eval_sets[path.stem] = {"rows": len(rows), "prompts": len({r["prompt_id"] for r in rows}),
                                "models": sorted({r["model"] for r in rows})}
    manifest = {
        "name": run.cfg.name,
        "version": run.version,
        "data_format_version": DATA_FORMAT_VERSION,
        "input_fingerprint": run.input_fingerprint,
        "content_fingerprint": content_fp,
        "created_by": f"routerforge {routerforge.__version__}",
        "created_unix": int(time.time()),
        "encoder": encoder,
        "models": models,
        "counts": counts,
        "eval_sets": eval_sets,
        "sources": {s.name: {"kind": s.kind, "path": s.path, "weight": s.weight, "role": s.role, **_hub_record(s)}
                    for s in run.cfg.sources},
    }

    def fill(tmp: Path) -> dict:
        was_disabled = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # nine instantaneous "Saving the dataset" bars are only noise
        try:
            for name, tables in (("prompts", prompt_tables), ("pairs", pairs), ("outcomes", outcomes)):
                # one shard per split, also for an empty split (0 shards cannot be loaded back)
                tables.save_to_disk(str(tmp / name), num_shards={s: 1 for s in tables})
        finally:
            if not was_disabled:
                datasets.enable_progress_bars()
        shutil.copytree(sp / "eval", tmp / "eval")
        shutil.copy(sp / "decontamination.jsonl", tmp / "decontamination.jsonl")
        run.ledger.write_bad_rows(tmp / "bad_rows.jsonl")
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True), encoding="utf-8")
        (tmp / "config.yaml").write_text(dump_config(run.cfg), encoding="utf-8")
        from routerforge.data.card import dataset_card

        (tmp / "README.md").write_text(dataset_card(manifest, stats, config_to_dict(run.cfg)), encoding="utf-8")
        return manifest

    return write_dataset_dir(run.dataset_root, run.version, fill)


STAGE_FUNCS = {"ingest": stage_ingest, "convert": stage_convert, "decontaminate": stage_decontaminate,
               "split": stage_split}


def run_pipeline(cfg: PrepConfig, *, until: str = "embed", force: bool = False, accelerator=None,
                 keep_work: bool = False, log: Callable[[str], None] | None = None) -> Path | None:
    """Run the stages up to `until` (resuming finished ones); return the dataset dir when `until` is embed."""
    if until not in STAGES:
        raise DataError(f"unknown stage '{until}'; stages are {', '.join(STAGES)}")
    forget_resolutions()  # Hub sources: resolve each revision once per run, now
    run = PrepRun(cfg=cfg, input_fingerprint=input_fingerprint(cfg), accelerator=accelerator)
    if log is not None:
        run.log = log
    final = run.dataset_root / run.version
    if until == "embed" and not force and (final / COMPLETE_MARKER).is_file():
        run.log(f"dataset {cfg.name} version {run.version} is up to date: {final}")
        if run.is_main_process:
            from routerforge.io.atomic import atomic_write_text

            atomic_write_text(run.dataset_root / LATEST_FILE, run.version + "\n")
        return final
    if force and run.work_dir.exists() and run.is_main_process:
        shutil.rmtree(run.work_dir)
    run.work_dir.mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        done = run.stage_dir(stage) / COMPLETE_MARKER
        if stage != "embed" and done.is_file():
            run.ledger = Ledger.from_json(json.loads((run.stage_dir(stage) / "ledger.json").read_text()),
                                          echo=None)
            run.log(f"[{stage}] already done, resuming after it")
        elif stage == "embed":
            run.log("[embed]")
            if stage == until:
                path = stage_embed(run) if run.is_main_process else None
                if run.is_main_process and not keep_work:
                    shutil.rmtree(run.dataset_root / ".work", ignore_errors=True)
                return path
        else:
            run.log(f"[{stage}]")
            if stage == "decontaminate" and run.accelerator is not None and run.accelerator.num_processes > 1:
                warm_embedding_cache(run)  # every rank embeds its shard; rank 0 then reads the cache
            if run.is_main_process:
                STAGE_FUNCS[stage](run)
            if run.accelerator is not None:
                run.accelerator.wait_for_everyone()
        if stage == until:
            return None
    return None
