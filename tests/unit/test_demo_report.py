"""The demo's held-out routing report: counts and real mean scores per set and routed-to model, and the
prompts the router ranks at both ends."""

import json

from routerforge.demo import held_out_outcomes, held_out_routing_report

STRONG, WEAK = "org/strong-model", "weak-model"


def test_held_out_outcomes_keep_prompts_graded_for_both_models(tmp_path):
    rows = [("a", STRONG, 1.0), ("a", WEAK, 0.0), ("b", STRONG, 1.0), ("c", WEAK, 1.0), ("c", "other", 0.0)]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "model": m, "score": s}) + "\n" for p, m, s in rows))
    outcomes, set_of = held_out_outcomes([path], STRONG, WEAK)
    assert outcomes == {"a": {STRONG: 1.0, WEAK: 0.0}}
    assert set_of == {"a": "gsm8k"}


def test_report_counts_and_means_per_set_and_routed_model():
    outcomes = {"p1": {WEAK: 1.0, STRONG: 1.0}, "p2": {WEAK: 0.0, STRONG: 1.0}, "p3": {WEAK: 0.0, STRONG: 0.0},
                "q1": {WEAK: 0.5, STRONG: 0.25}}
    set_of = {"p1": "gsm8k", "p2": "gsm8k", "p3": "gsm8k", "q1": "mt_bench"}
    routes = [{"prompt": "p1", "model": WEAK, "score": 0.1}, {"prompt": "p2", "model": STRONG, "score": 0.9},
              {"prompt": "p3", "model": STRONG, "score": 0.7}, {"prompt": "q1", "model": WEAK, "score": 0.2}]
    report = held_out_routing_report(routes, outcomes, set_of, STRONG, WEAK, examples_per_side=1)
    lines = report.splitlines()
    assert lines[0] == ("| set | routed to | prompts | weak-model mean score | strong-model mean score | "
                        "strong - weak |")
    assert lines[2:6] == ["| gsm8k | weak-model | 1 | 1.000 | 1.000 | +0.000 |",
                          "| gsm8k | strong-model | 2 | 0.000 | 0.500 | +0.500 |",
                          "| mt_bench | weak-model | 1 | 0.500 | 0.250 | -0.250 |",
                          "| mt_bench | strong-model | 0 | - | - | - |"]
    gsm8k = report.split("gsm8k: ")[1].splitlines()
    # lowest score first, then highest; each with the real scores of both models
    assert gsm8k[1].split() == ["0.100", "weak-model", "1", "/", "1", "'p1'"]
    assert gsm8k[2].split() == ["0.900", "strong-model", "0", "/", "1", "'p2'"]
