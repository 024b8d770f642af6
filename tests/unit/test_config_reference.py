"""The configuration reference (docs/config/<recipe>.md) is generated from the typed configs and up to date,
and every recipe's --help lists every config key with its type, default and help."""

from __future__ import annotations

import dataclasses

import pytest

from routerforge.config_reference import config_class, config_keys, format_help, pages
from routerforge.recipes import recipes
from tests.fixtures.recipe_runner import REPO_ROOT


def test_generated_pages_are_up_to_date_and_linked_from_readme():
    generated = pages()
    assert set(generated) == {f"{name}.md" for name in recipes()}
    stale = [name for name, text in generated.items()
             if (REPO_ROOT / "docs/config" / name).read_text(encoding="utf-8") != text]
    assert stale == [], f"run `python -m routerforge.config_reference` to regenerate {stale}"
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert all(f"docs/config/{name}" in readme for name in generated)


@pytest.mark.parametrize("recipe", list(recipes()))
def test_help_lists_every_leaf_key_with_type_default_and_help(recipe):
    cls = config_class(recipe)
    keys = config_keys(cls)
    text = format_help(cls)

    def leaves(c, prefix=""):
        import typing

        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from leaves(hints[f.name], f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    assert [k.key for k in keys] and sorted(k.key for k in keys) == sorted(leaves(cls))
    for key in keys:
        assert key.help, f"{recipe}: {key.key} has no help text"
        assert f"  {key.key} ({key.type}" in text and f"default {key.default})" in text
