"""Every page of the documentation runs: README.md and every `.md` under docs/, one test per page.

Each page's ```python blocks run in order in one namespace (as a reader pastes them), in a fresh
folder. A block that needs files or services the reader has (a training run, a dataset, the Hub)
is preceded by `<!-- docs-test setup: NAME -->`; `SETUPS[NAME]` makes them first. Nothing is
skipped. Every relative link of a page (outside code) must name a file that exists, and a
`#fragment` into a page one of its headings.
"""

from __future__ import annotations

import re
import sys
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difnet.encoders import ENCODERS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SETUP_MARK = re.compile(r"<!-- (?:docs|readme)-test setup: ([\w-]+) -->")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)\n(?P<code>.*?)^(?P=indent)```$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@dataclass(frozen=True)
class Block:
    """One fenced Python block: its first line in the page, its code, its setup (or None)."""

    line: int
    code: str
    setup: str | None


def python_blocks(text: str) -> list[Block]:
    """The ```python blocks of `text`, dedented (a block may sit in a list item)."""
    blocks = []
    for match in FENCE.finditer(text):
        if match.group("lang") != "python":
            continue
        before = text[: match.start()].rstrip().splitlines()
        mark = SETUP_MARK.search(before[-1]) if before else None
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(line, textwrap.dedent(match.group("code")), mark and mark.group(1)))
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    prose = FENCE.sub("", text)
    return {slug(line.lstrip("#")) for line in prose.splitlines() if re.match(r"#{1,6} ", line)}


def relative_links(text: str) -> list[str]:
    """The link targets of `text` outside code (fenced or inline) that are not URLs."""
    prose = re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))
    targets = [match.group("target") for match in LINK.finditer(prose)]
    return [target for target in targets if not re.match(r"[a-z]+:", target)]


class FakeHubApi:
    """Stands in for `huggingface_hub.HfApi`: records the uploaded folder's files."""

    uploads: list[tuple[str, list[str]]] = []

    def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False) -> None:
        pass

    def upload_folder(self, repo_id: str, folder_path: str) -> str:
        FakeHubApi.uploads.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return f"https://huggingface.co/{repo_id}"


def a_training_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """`runs/voc/best.pt` as `difnet train` writes it (a DifNet-18 for 21 classes, untrained),
    and a Hub that records uploads (installed or not, huggingface_hub is replaced)."""
    from difnet.models import DifNet
    from difnet.training import TrainConfig, save_model

    torch.manual_seed(0)
    save_model("runs/voc/best.pt", DifNet(depth=18, num_classes=21), TrainConfig(device="cpu"))
    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(HfApi=FakeHubApi))


def camvid_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """`data/camvid`: a tiny CamVid in the SegNet tutorial's layout (3 train, 2 val, 2 test)."""
    from data_fixtures import write_camvid_fixture

    write_camvid_fixture(Path("data"))


def folder_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """`data/shapes/{train,val}/{images,masks}`: paired folders of 4 classes."""
    from data_fixtures import write_folder_fixture

    for split, seed in (("train", 0), ("val", 1)):
        write_folder_fixture(Path("data/shapes") / split, num_classes=4, seed=seed)


def voc_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """`data/VOCdevkit/VOC2012`: a tiny Pascal VOC 2012 with SBD's SegmentationClassAug."""
    from data_fixtures import write_voc_fixture

    write_voc_fixture(Path("data"))


def a_photo(monkeypatch: pytest.MonkeyPatch) -> None:
    """`street.png`: a 48x64 RGB photo."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save("street.png")


SETUPS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "a-training-run": a_training_run,
    "camvid-data": camvid_data,
    "folder-data": folder_data,
    "voc-data": voc_data,
    "a-photo": a_photo,
}


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_harness_finds_the_pages_blocks_and_setups():
    assert {"README.md", "docs/models.md", "docs/training.md"} <= {page_id(page) for page in PAGES}
    for page in PAGES:
        assert {block.setup for block in python_blocks(page.read_text()) if block.setup} <= set(SETUPS), page
    inner = python_blocks("- item\n\n  <!-- docs-test setup: x -->\n  ```python\n  a = 1\n  ```\n")
    assert inner == [Block(4, "a = 1\n", "x")]
    assert python_blocks("```bash\nls\n```\n```python\nb = 2\n```\n") == [Block(4, "b = 2\n", None)]
    assert slug("The guided walk (`guided_walk_stride`)") == "the-guided-walk-guided_walk_stride"
    assert relative_links("[a](docs/x.md#y) `[b](c.md)` [d](https://e.org)") == ["docs/x.md#y"]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    FakeHubApi.uploads.clear()
    namespace: dict = {"__name__": "docs"}
    registered = dict(ENCODERS)  # a page may register an encoder: the other tests never see it
    blocks = python_blocks(page.read_text())
    try:
        for block in blocks:
            if block.setup:
                SETUPS[block.setup](monkeypatch)
            try:
                exec(compile(block.code, f"{page_id(page)}:{block.line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(
                    f"the {page_id(page)} block at line {block.line} fails: {error!r}"
                ) from error
    finally:
        ENCODERS.clear()
        ENCODERS.update(registered)
    if any(".push_to_hub(" in block.code for block in blocks):  # the Hub was replaced: check the upload
        assert FakeHubApi.uploads, f"{page_id(page)} pushes to the Hub, but nothing was uploaded"
        for repo_id, files in FakeHubApi.uploads:
            assert {"config.json", "model.safetensors"} <= set(files), (repo_id, files)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_of_the_page_resolves(page):
    text = page.read_text()
    for target in relative_links(text):
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page_id(page)} links to {target}, which does not exist"
        if fragment and linked.suffix == ".md":
            assert fragment in anchors(linked.read_text()), (
                f"{page_id(page)}: no heading #{fragment} in {path}"
            )
