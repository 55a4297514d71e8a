"""The package manager's `--json` records: built from its results, documented field by field."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from modelmora import output
from modelmora.bundle import CreateResult
from modelmora.bundleimport import ImportResult
from modelmora.cache import GcReport
from modelmora.lockfile import LockedFile
from modelmora.project import InstallResult, ModelInfo, VerifyResult

DOCS = Path(__file__).parent.parent / "docs" / "json.md"
RECORDS: list[Any] = [
    output.LockJson,
    output.LockChangeJson,
    output.LockCheckJson,
    output.StaleModelJson,
    output.InstallJson,
    output.ModelJson,
    output.FileJson,
    output.VerifyJson,
    output.GcJson,
    output.CacheDuJson,
    output.SnapshotJson,
    output.CacheModelJson,
    output.BundleCreateJson,
    output.BundleImportJson,
]


def test_every_field_of_every_record_is_documented() -> None:
    documented = set(re.findall(r"`(\w+)`", DOCS.read_text()))
    for record in RECORDS:
        missing = set(record.__annotations__) - documented
        assert not missing, f"{record.__name__}: {sorted(missing)} not in docs/json.md"


def test_records_hold_plain_json_values_with_exactly_the_declared_fields() -> None:
    file = LockedFile("model.safetensors", 10, "ab" * 32)
    info = ModelInfo("m", "embedding", "hf://org/m", "main", "c0ffee", 10, (file,), True, None)
    built = [
        (output.install_json(InstallResult(("m",), 1, 10, 2, ("old",))), output.InstallJson),
        (output.model_json(info, files=True), output.ModelJson),
        (output.verify_json(VerifyResult(3, 30, ("x",), (), ("x",))), output.VerifyJson),
        (output.gc_json(GcReport(1, 2, 3), [], dry_run=True), output.GcJson),
        (
            output.bundle_create_json(CreateResult(("m",), 2, 20, 10240, "ab" * 32), "m.tar"),
            output.BundleCreateJson,
        ),
        (output.bundle_import_json(ImportResult(("m",), 1, 10, 1, 1)), output.BundleImportJson),
    ]
    for record, schema in built:
        assert set(record) == set(schema.__annotations__)
        assert all(not isinstance(value, tuple) for value in record.values())  # lists, not tuples
    assert output.model_json(info, files=True)["files"] == [
        {"path": "model.safetensors", "size": 10, "sha256": "ab" * 32}
    ]
    assert "files" not in output.model_json(info, files=False)
