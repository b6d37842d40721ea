"""The facility configuration's [content] section: optional, its defaults those of `content.limits` and
`content.worker`, and a mistake named by its field."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from qlinkmed.qlinkd.content.limits import DEFAULT_LIMITS, limits_of
from qlinkmed.qlinkd.content.worker import DEFAULT_MEMORY_BYTES
from qlinkmed.qlinkd.errors import ConfigError
from qlinkmed.qlinkd.ops.config import load_facility_config
from qlinkmed.qlinkd.ops.pki import write_demo_pki
from tests.paths import REPO


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("etc-qlink")
    shutil.copy(REPO / "systemd" / "examples" / "hospital-a.toml", root / "hospital-a.toml")
    write_demo_pki(root / "pki", ["hospital-a", "hospital-b"], ["pacs-a", "ehr-a", "pacs-b"])
    (root / "psk").mkdir()
    (root / "psk" / "hospital-a--hospital-b.key").write_bytes(random.Random(7).randbytes(1024))
    return root / "hospital-a.toml"


def _with_content(example: Path, section: str) -> Path:
    path = example.with_name(f"content-{abs(hash(section))}.toml")
    path.write_text(example.read_text() + "\n[content]\n" + section + "\n")
    return path


def test_defaults_are_the_limits_and_budget_of_the_content_package(example: Path) -> None:
    content = load_facility_config(example).content
    assert limits_of(content) == DEFAULT_LIMITS
    assert content.validator_memory_bytes == DEFAULT_MEMORY_BYTES and content.validators == 1


def test_the_section_sets_the_limits(example: Path) -> None:
    path = _with_content(example, "max_file_bytes = 1073741824\nvalidators = 2\nvalidator_memory_bytes = 0")
    content = load_facility_config(path).content
    assert limits_of(content).max_file_bytes == 1 << 30
    assert (content.validators, content.validator_memory_bytes) == (2, 0)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("max_ehr_bytes = 9000000", "content.max_ehr_bytes"),
        ("max_decoded_bytes = 0", "content.max_decoded_bytes"),
        ("validators = 0", "content.validators"),
        ("validator_memory_bytes = 1000", "content.validator_memory_bytes"),
        ("max_bytes = 1", "content.max_bytes"),
    ],
)
def test_a_mistake_names_its_field(example: Path, line: str, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_facility_config(_with_content(example, line))
    assert caught.value.field == field
