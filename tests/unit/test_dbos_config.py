"""dbos-config.yaml, read by DBOS's own CLI only, says what the service's typed config says."""

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dbos
import pytest
from dbos._dbos_config import load_config, translate_dbos_config_to_config_file

from runtime import lifecycle
from runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
URL = "postgresql://saga:secret@db.example:5432/orders?sslmode=require"


@pytest.fixture
def from_yaml(monkeypatch: pytest.MonkeyPatch) -> Mapping[str, Any]:
    """The file as DBOS's CLI reads it: from the working directory, DATABASE_URL substituted."""
    monkeypatch.setenv("DATABASE_URL", URL)
    monkeypatch.chdir(ROOT)
    return load_config()


def shared_settings(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every setting both configs state (a dotted path, down through nested mappings), with
    its two values."""
    shared: dict[str, tuple[Any, Any]] = {}
    for key in a.keys() & b.keys():
        if isinstance(a[key], Mapping) and isinstance(b[key], Mapping):
            for path, values in shared_settings(a[key], b[key]).items():
                shared[f"{key}.{path}"] = values
        else:
            shared[key] = (a[key], b[key])
    return shared


def test_the_yaml_states_nothing_the_service_configures_otherwise(
    from_yaml: Mapping[str, Any],
) -> None:
    service = translate_dbos_config_to_config_file(lifecycle.dbos_config(URL, Settings()))

    shared = shared_settings(from_yaml, service)

    assert {"name", "system_database_url"} <= shared.keys()
    assert {path: values for path, values in shared.items() if values[0] != values[1]} == {}
    assert from_yaml["name"] == lifecycle.APP_NAME
    assert from_yaml["system_database_url"] == URL
    assert from_yaml["language"] == "python"


def test_the_yaml_uses_only_what_dbos_config_schema_allows(from_yaml: Mapping[str, Any]) -> None:
    schema = json.loads((Path(dbos.__file__).parent / "dbos-config.schema.json").read_text())
    allowed = schema["properties"]

    assert set(from_yaml) <= set(allowed)
    for section in ("database", "runtimeConfig"):
        assert set(from_yaml[section]) <= set(allowed[section]["properties"])


def test_the_commands_the_yaml_gives_dbos_run_the_service_and_our_migrations(
    from_yaml: Mapping[str, Any],
) -> None:
    [start] = from_yaml["runtimeConfig"]["start"]
    [migrate] = from_yaml["database"]["migrate"]

    assert shlex.split(start) == [".venv/bin/python", "-m", "api"]  # as `make run`
    assert shlex.split(migrate) == [".venv/bin/python", "-m", "alembic", "upgrade", "head"]
    assert (ROOT / ".venv/bin/python").exists()
    assert (ROOT / "api/__main__.py").exists()
