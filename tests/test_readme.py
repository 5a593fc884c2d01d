"""The README stays short and its set-up commands and links stay true (issue 29)."""

import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_short():
    assert len(read("README.md").splitlines()) <= 200


def test_the_test_command_is_what_ci_runs():
    readme, ci = read("README.md"), read(".ci/run")
    for command in (
        '.venv/bin/pip install -e ".[test]"',
        '.venv/bin/python -m pytest -q -m "slow or not slow"',
    ):
        assert command in readme
        assert command.replace("install -e", "install --quiet -e") in ci or command in ci
    assert 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && ' in readme


def test_the_train_command_names_the_console_script_and_flags_that_exist():
    readme = read("README.md")
    command = (
        "python3 -m venv .venv && .venv/bin/pip install -e . && "
        ".venv/bin/keras-ssam train --dataset digits --optimizer ssam-f --epochs 10"
    )
    assert command in readme
    assert re.search(r'^keras-ssam = "', read("pyproject.toml"), re.M)


def anchors(markdown):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


LINKS = re.findall(r"\]\(([^)#]+)(#[^)]+)?\)", read("README.md"))


@pytest.mark.parametrize("target, anchor", [link for link in LINKS if "://" not in link[0]])
def test_links_resolve(target, anchor):
    assert os.path.exists(os.path.join(ROOT, target)), target
    if anchor:
        assert anchor[1:] in anchors(read(target)), f"{target}{anchor}"
