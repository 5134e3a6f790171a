"""Every Python block of README.md runs, in order, in one namespace (as a reader pastes them).

A block that needs files or services the reader has (a training run, the Hub) is preceded by
`<!-- readme-test setup: NAME -->`; `SETUPS[NAME]` generates them first. Nothing is skipped.
"""

from __future__ import annotations

import re
import sys
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from difnet.encoders import ENCODERS

README = Path(__file__).resolve().parents[1] / "README.md"
SETUP_MARK = re.compile(r"<!-- readme-test setup: ([\w-]+) -->")
FENCE = re.compile(r"^(?P<indent> *)```python\n(?P<code>.*?)^(?P=indent)```$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    """One fenced Python block: its first line in README.md, its code, its setup (or None)."""

    line: int
    code: str
    setup: str | None


def readme_blocks(text: str) -> list[Block]:
    """The ```python blocks of `text`, dedented (a block may sit in a list item)."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        mark = SETUP_MARK.search(before[-1]) if before else None
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(line, textwrap.dedent(match.group("code")), mark and mark.group(1)))
    return blocks


class FakeHubApi:
    """Stands in for `huggingface_hub.HfApi`: records the uploaded folder's files."""

    uploads: list[tuple[str, list[str]]] = []

    def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False) -> None:
        pass

    def upload_folder(self, repo_id: str, folder_path: str) -> str:
        FakeHubApi.uploads.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return f"https://huggingface.co/{repo_id}"


def a_training_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """`runs/voc/best.pt` as `difnet train` writes it (a DifNet-18, untrained), and a Hub that
    records uploads (installed or not, huggingface_hub is replaced)."""
    from difnet.models import DifNet
    from difnet.training import TrainConfig, save_model

    torch.manual_seed(0)
    save_model("runs/voc/best.pt", DifNet(depth=18, num_classes=21), TrainConfig(device="cpu"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=FakeHubApi))


SETUPS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {"a-training-run": a_training_run}


def test_the_harness_finds_the_blocks_and_their_setups():
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 3
    assert {block.setup for block in blocks if block.setup} <= set(SETUPS)
    inner = readme_blocks("- item\n\n  <!-- readme-test setup: x -->\n  ```python\n  a = 1\n  ```\n")
    assert inner == [Block(4, "a = 1\n", "x")]


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    registered = dict(ENCODERS)  # the blocks register an encoder: the other tests never see it
    try:
        for block in readme_blocks(README.read_text()):
            if block.setup:
                SETUPS[block.setup](monkeypatch)
            try:
                exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"the README.md block at line {block.line} fails: {error!r}") from error
    finally:
        ENCODERS.clear()
        ENCODERS.update(registered)
    assert FakeHubApi.uploads == [("you/difnet-voc", ["config.json", "model.safetensors"])]
