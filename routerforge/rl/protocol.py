"""The Router-R1 text protocol: tags, the stop at a closing tag, parsing, format validation, the answer.

Router-R1 (Zhang, Feng, You, arXiv 2506.09033; code ulab-uiuc/Router-R1) has the policy LLM write

    <think> ... </think>                      internal reasoning
    <search> Model-Name: sub-query </search>  a call to one candidate model of the pool
    <information> ... </information>          the candidate's answer, inserted by the environment
    <answer> ... </answer>                    the final answer, which ends the episode

Generation stops at a closing ``</search>`` (the environment then runs the call and appends the
``<information>`` block) or ``</answer>``. What we follow, and where we deviate:

* Tags, the ``Model-Name: query`` call syntax and the ``\\n\\n<information>...</information>\\n\\n``
  insertion follow Router-R1's ``router_r1/llm_agent/generation.py``.
* The stop is the FIRST closing ``</search>`` or ``</answer>`` in a generated segment (what a
  stop-string in ``generate`` produces). Router-R1 post-processes a segment by cutting at the first
  ``</answer>`` or else at the LAST ``</search>`` and runs every call in it; we run one call per turn,
  so ``max_turns`` bounds the number of calls exactly.
* The call is split at the first ``:``. Router-R1's format reward demands exactly one ``:`` in the
  search content, which punishes sub-queries such as "at 3:00 ...": we only forbid ``:`` in model
  names (the pool config checks that).
* Format rules (``validate_format``) are Router-R1's ``format_reward`` (``verl/trainer/main_ppo.py``):
  starts with ``<think>``, ends with ``</answer>``, tags balanced and not nested, exactly one answer,
  a non-empty think, as many ``<information>`` as ``<search>`` blocks, a ``Model-Name: query`` with
  a known model and a non-empty query that is not the template placeholder. We add the tag ORDER of
  Search-R1's ``is_valid_sequence``: ``think (search information think)* answer``, with nothing but
  whitespace between blocks, so a trajectory that skips the reasoning after new information or
  writes text outside the tags is a violation too. We do not punish a query that mentions the
  called model's name (Router-R1 does, against pasting model descriptions into calls).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TAGS = ("think", "search", "information", "answer")
STOP_TAGS = ("search", "answer")
# Placeholders of the prompt template (Router-R1 punishes a call that copies them literally).
PLACEHOLDER_WORDS = ("model-name", "llm-name", "your-query", "sub-query")

_TAG_RE = re.compile(r"</?(?:think|search|information|answer)>")
_BLOCK_RE = re.compile(r"<(think|search|information|answer)>(.*?)</\1>", re.DOTALL)
_STOP_RE = re.compile(r"</(search|answer)>")


@dataclass(frozen=True)
class Block:
    """One tagged block of a trajectory: `tag`, its stripped `content`, and its [start, end) in the text."""

    tag: str
    content: str
    start: int
    end: int


@dataclass(frozen=True)
class SearchCall:
    """A parsed ``<search>`` block: the model name and the sub-query (both stripped)."""

    model: str
    query: str


@dataclass(frozen=True)
class FormatCheck:
    """Result of `validate_format`: `ok`, and when not ok a one-line `reason` (for logs and tests)."""

    ok: bool
    reason: str = ""


def cut_at_stop(generated: str) -> tuple[str, str | None]:
    """Cut a generated segment just after its first ``</search>`` or ``</answer>``.

    Returns (kept text, "search" | "answer"), or (the whole text, None) when the segment has no stop
    tag (the policy ended with EOS or hit its length limit).
    """
    match = _STOP_RE.search(generated)
    if match is None:
        return generated, None
    return generated[:match.end()], match.group(1)


def last_open_search(segment: str) -> str | None:
    """Content of the ``<search>`` block that a segment ending in ``</search>`` closes, else None."""
    if not segment.endswith("</search>"):
        return None
    start = segment.rfind("<search>")
    if start < 0:
        return None
    return segment[start + len("<search>"):-len("</search>")]


def parse_search(content: str) -> SearchCall | None:
    """``"Model-Name: sub-query"`` -> SearchCall, split at the first ``:``; None when there is no ``:``."""
    name, sep, query = content.partition(":")
    if not sep:
        return None
    return SearchCall(model=name.strip(), query=query.strip())


def blocks(text: str) -> list[Block]:
    """All well-formed ``<tag>...</tag>`` blocks of `text`, in order (non-greedy, same-tag close)."""
    return [Block(m.group(1), m.group(2).strip(), m.start(), m.end()) for m in _BLOCK_RE.finditer(text)]


def extract_answer(text: str) -> str | None:
    """The stripped content of the LAST ``<answer>`` block, or None (Router-R1's ``extract_solution``)."""
    answers = [b for b in blocks(text) if b.tag == "answer"]
    return answers[-1].content if answers else None


def strip_protocol_tags(text: str) -> str:
    """`text` without any protocol tag markup.

    Used on candidate answers before they go inside ``<information>``: a candidate that writes
    ``<think>`` (reasoning models do) or ``<answer>`` would otherwise nest tags in the trajectory and
    cost the policy a format violation it did not make.
    """
    return _TAG_RE.sub("", text)


def information_block(candidate_text: str) -> str:
    """The text the environment inserts after a call (Router-R1: ``\\n\\n<information>X</information>\\n\\n``)."""
    return f"\n\n<information>{strip_protocol_tags(candidate_text).strip()}</information>\n\n"


def _search_problem(content: str, model_names: set[str] | None) -> str | None:
    call = parse_search(content)
    if call is None:
        return f"search '{content[:60]}' is not 'Model-Name: query'"
    if not call.query:
        return f"search to '{call.model}' has an empty query"
    lowered = content.lower()
    if any(word in lowered for word in PLACEHOLDER_WORDS):
        return f"search '{content[:60]}' copies the template placeholder"
    if model_names is not None and call.model not in model_names:
        return f"search names unknown model '{call.model}'"
    return None


def validate_format(text: str, model_names: Iterable[str] | None = None) -> FormatCheck:
    """Check a whole response (everything after the prompt) against the protocol; see the module docstring.

    model_names: the pool's model names a call may use (None: any name is accepted).
    """
    names = set(model_names) if model_names is not None else None
    stripped = text.strip()
    if not stripped.startswith("<think>"):
        return FormatCheck(False, "does not start with <think>")
    if not stripped.endswith("</answer>"):
        return FormatCheck(False, "does not end with </answer>")
    for tag in TAGS:
        opened, closed = stripped.count(f"<{tag}>"), stripped.count(f"</{tag}>")
        if opened != closed:
            return FormatCheck(False, f"{opened} <{tag}> but {closed} </{tag}>")

    # Walk the text block by block: anything but whitespace between blocks, or a tag inside a block
    # (nesting), is a violation; the tags must follow think (search information think)* answer.
    expected = {"start": ("think",), "think": ("search", "answer"), "search": ("information",),
                "information": ("think",), "answer": ()}
    state, position = "start", 0
    for block in blocks(stripped):
        between = stripped[position:block.start]
        if between.strip():
            return FormatCheck(False, f"text outside tags before <{block.tag}>: '{between.strip()[:40]}'")
        inner = stripped[block.start + len(block.tag) + 2:block.end - len(block.tag) - 3]
        if _TAG_RE.search(inner):
            return FormatCheck(False, f"tags nested inside <{block.tag}>")
        if block.tag not in expected[state]:
            return FormatCheck(False, f"<{block.tag}> after {'the start' if state == 'start' else f'<{state}>'}")
        if block.tag == "think" and block.content in ("", "..."):
            return FormatCheck(False, "empty <think>")
        if block.tag == "search":
            problem = _search_problem(block.content, names)
            if problem:
                return FormatCheck(False, problem)
        state, position = block.tag, block.end
    if stripped[position:].strip():
        return FormatCheck(False, "text after </answer>")
    if state != "answer":  # unreachable after the end/balance checks, kept as the grammar's last word
        return FormatCheck(False, "does not end with an answer block")
    return FormatCheck(True)


def render_prompt(question: str, models: Sequence[tuple[str, str]]) -> str:
    """The instruction that tells the policy the protocol and the pool, followed by the question.

    models: (name, description) pairs; a description should say what the model is good at and what it
    costs (Router-R1 conditions the policy only on such descriptors, which is what lets it route to
    models it was not trained with).
    """
    catalog = "\n".join(f"- {name}: {description}" for name, description in models)
    names = ", ".join(name for name, _ in models)
    return (
        "Answer the question below. Reason inside <think> ... </think> first, and again every time you "
        "receive new information.\n"
        "If you need help, call one model of the pool by writing <search> Model-Name: your question for it "
        "</search>, where Model-Name is exactly one of: " + names + ". Its reply comes back inside "
        "<information> ... </information>. Calls cost money: call a model only when it is worth it, and "
        "prefer cheaper models that can do the job.\n"
        "When you are done, write only the final answer inside <answer> ... </answer>, e.g. <answer> 42 </answer>.\n"
        "Models:\n" + catalog + "\n"
        "Question: " + question.strip() + "\n"
    )
