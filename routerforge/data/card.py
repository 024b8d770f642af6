"""Dataset card (README.md with Hugging Face dataset-card YAML front matter) for a prepared dataset."""

from __future__ import annotations

import yaml


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def dataset_card(manifest: dict, stats: dict, config: dict) -> str:
    counts = manifest["counts"]
    n_pairs = sum(counts["pairs"].values())
    n_outcomes = sum(counts["outcomes"].values())
    front = {
        "pretty_name": f"RouterForge dataset {manifest['name']}",
        "tags": ["llm-routing", "preference", "routerforge"],
        "task_categories": ["text-classification"],
        "size_categories": [_size_category(n_pairs + n_outcomes)],
        "configs": [{"config_name": t, "data_dir": t} for t in ("pairs", "outcomes", "prompts")],
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {manifest['name']} (version {manifest['version']})", "",
             "Router training data built by RouterForge `data_prep` "
             "(ingest → validate → clean → convert and merge → decontaminate → split → embed).", "",
             f"- content fingerprint: `{manifest['content_fingerprint']}`",
             f"- input fingerprint (config + input files): `{manifest['input_fingerprint']}`",
             f"- encoder: `{manifest['encoder']['id']}` (revision `{manifest['encoder']['revision']}`, "
             f"dim {manifest['encoder']['dim']})",
             f"- models ({len(manifest['models'])}): " + ", ".join(f"`{m}`" for m in manifest["models"]), "",
             "## Tables", "", "| table | train | validation | test |", "|---|---|---|---|"]
    for table, c in counts.items():
        lines.append(f"| {table} | {c['train']} | {c['validation']} | {c['test']} |")
    lines += ["", "## Sources", "", "| source | kind | role | weight | path or Hub dataset |", "|---|---|---|---|---|"]
    for name, s in manifest["sources"].items():
        where = (f"Hub dataset `{s['hub']}` at `{s['revision']}` (split {s['split']})" if s.get("hub")
                 else f"`{s['path']}`")
        lines.append(f"| {name} | {s['kind']} | {s['role']} | {s['weight']} | {where} |")
    lines += ["", "## Rows kept and dropped, per source and stage", "",
              "Every row entering a stage is kept or dropped for a named reason (kept + dropped = input).", "",
              "| source | stage | input | kept | dropped (by reason) |", "|---|---|---|---|---|"]
    for source, stages in stats["per_source"].items():
        for stage, c in stages.items():
            dropped = ", ".join(f"{k}: {v}" for k, v in c["dropped"].items()) or "-"
            lines.append(f"| {source} | {stage} | {c['input']} | {c['kept']} | {dropped} |")
    if manifest["eval_sets"]:
        lines += ["", "## Evaluation sets (held out, decontaminated against)", "",
                  "| set | prompts | rows | models |", "|---|---|---|---|"]
        for name, e in manifest["eval_sets"].items():
            lines.append(f"| {name} | {e['prompts']} | {e['rows']} | {', '.join(e['models'])} |")
    lines += ["", "## Use", "", "```python", "from routerforge.data.dataset_io import load_prepared",
              f"ds = load_prepared('{config['output_root']}/{manifest['name']}')  # newest version (LATEST)",
              "ds.pairs['train'], ds.outcomes['train'], ds.embeddings('train')", "```", "",
              "## Limitations", "",
              "Preference labels inherit the biases of their sources (Arena voters, the LLM judge, benchmark "
              "graders). Prompts are the first user turn only. Licenses of the sources apply to the rows they "
              "contributed; see the `source` column.", ""]
    return "\n".join(lines)
