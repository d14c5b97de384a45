"""The CLI's output formats (controller/cli/formats.py): tables and show views for people,
JSON/YAML/CSV with exact values for programs, -c choosing columns or fields."""

from __future__ import annotations

import argparse
import csv
import io
import json

import pytest
import yaml

from controller.cli.formats import (
    Col,
    GiB,
    MiB,
    add_output_options,
    emit_list,
    emit_show,
    field_text,
    human_size,
    size,
    view_lines,
)

ROWS = [{"name": "web-1", "memory_mib": 2048, "size_bytes": 1536, "tags": ["a", "b"],
         "error": None},
        {"name": "db-1", "memory_mib": 512, "size_bytes": 10 * GiB, "tags": [],
         "error": "disk full"}]
COLUMNS = [Col("NAME", "name"), size("MEMORY", "memory_mib", MiB), size("SIZE", "size_bytes"),
           Col("TAGS", "tags", lambda r: ",".join(r["tags"])), Col("ERROR", "error")]


def _args(*argv: str, columns: list[Col] | None = COLUMNS) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vauban thing list")
    add_output_options(p, columns)
    return p.parse_args(list(argv))


@pytest.mark.parametrize(("n", "text"), [
    (None, "-"), (0, "0 B"), (512, "512 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
    (2048 * MiB, "2 GiB"), (10 * GiB + 512 * MiB, "10.5 GiB"), (3 * 1024 * GiB, "3 TiB"),
])
def test_human_size_is_binary(n: int | None, text: str) -> None:
    assert human_size(n) == text


def test_table_shows_sizes_in_binary_units(capsys: pytest.CaptureFixture[str]) -> None:
    assert emit_list(_args(), ROWS, COLUMNS) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "MEMORY", "SIZE", "TAGS", "ERROR"]
    assert lines[1].split() == ["web-1", "2", "GiB", "1.5", "KiB", "a,b", "-"]
    assert lines[2].split() == ["db-1", "512", "MiB", "10", "GiB", "disk", "full"]


def test_json_and_yaml_hold_the_objects_whole_with_exact_values(
        capsys: pytest.CaptureFixture[str]) -> None:
    emit_list(_args("-o", "json"), ROWS, COLUMNS)
    assert json.loads(capsys.readouterr().out) == ROWS
    emit_list(_args("--json"), ROWS, COLUMNS)  # the older flag: the same
    assert json.loads(capsys.readouterr().out) == ROWS
    emit_list(_args("-o", "yaml"), ROWS, COLUMNS)
    assert yaml.safe_load(capsys.readouterr().out) == ROWS


def test_columns_choose_and_order_what_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    emit_list(_args("-c", "size,NAME"), ROWS, COLUMNS)
    assert [line.split()[-1] for line in capsys.readouterr().out.splitlines()] == \
        ["NAME", "web-1", "db-1"]
    emit_list(_args("-o", "json", "-c", "name", "-c", "memory"), ROWS, COLUMNS)
    assert json.loads(capsys.readouterr().out) == [{"name": "web-1", "memory_mib": 2048},
                                                   {"name": "db-1", "memory_mib": 512}]
    emit_list(_args("-o", "yaml", "-c", "memory_mib"), ROWS, COLUMNS)  # the field's name too
    assert yaml.safe_load(capsys.readouterr().out) == [{"memory_mib": 2048},
                                                       {"memory_mib": 512}]


def test_csv_has_a_header_row_and_exact_values(capsys: pytest.CaptureFixture[str]) -> None:
    emit_list(_args("-o", "csv"), ROWS, COLUMNS)
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["name", "memory_mib", "size_bytes", "tags", "error"],
                    ["web-1", "2048", "1536", '["a", "b"]', ""],
                    ["db-1", "512", str(10 * GiB), "[]", "disk full"]]


def test_an_unknown_column_is_a_usage_error_naming_the_valid_ones(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        emit_list(_args("-c", "name,colour"), ROWS, COLUMNS)
    assert exit_.value.code == 2
    err = capsys.readouterr()
    assert "unknown column 'colour' (valid: name, memory, size, tags, error)" in err.err
    assert err.out == ""


def test_an_unknown_format_is_a_usage_error_naming_the_valid_ones(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _args("-o", "xml")
    assert exit_.value.code == 2
    assert "choose from table, json, yaml, csv" in capsys.readouterr().err.replace("'", "")


VOLUME = {"name": "data", "size_gib": 10, "used_bytes": 3 * MiB, "attached": False,
          "snapshots": ["s1", "s2"], "target": None,
          "pool": {"name": "fast", "free_bytes": 1024},
          "rules": [{"port": 22, "cidr": "10.0.0.0/8"}, {"port": 80, "cidr": None}]}


def test_show_view_is_key_value_lines_nested_parts_indented() -> None:
    assert view_lines(VOLUME) == [
        "name: data",
        "size_gib: 10 GiB",
        "used_bytes: 3 MiB",
        "attached: no",
        "snapshots: s1, s2",
        "target: -",
        "pool:",
        "  name: fast",
        "  free_bytes: 1 KiB",
        "rules:",
        "  - port: 22",
        "    cidr: 10.0.0.0/8",
        "  - port: 80",
        "    cidr: -",
    ]


def test_show_formats_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    emit_show(_args(columns=None), VOLUME)
    assert capsys.readouterr().out.splitlines()[0] == "name: data"
    emit_show(_args("-c", "name,size_gib", columns=None), VOLUME)
    assert capsys.readouterr().out == "name: data\nsize_gib: 10 GiB\n"
    emit_show(_args("-o", "json", "-c", "size_gib", columns=None), VOLUME)
    assert json.loads(capsys.readouterr().out) == {"size_gib": 10}
    emit_show(_args("-o", "yaml", columns=None), VOLUME)
    assert yaml.safe_load(capsys.readouterr().out) == VOLUME
    emit_show(_args("-o", "csv", "-c", "name", "-c", "used_bytes", columns=None), VOLUME)
    assert capsys.readouterr().out == f"name,used_bytes\ndata,{3 * MiB}\n"


def test_show_uses_its_own_view_unless_fields_are_chosen(
        capsys: pytest.CaptureFixture[str]) -> None:
    def view(obj: dict[str, object]) -> None:
        print(f"the volume {obj['name']}")

    emit_show(_args(columns=None), VOLUME, view)
    assert capsys.readouterr().out == "the volume data\n"
    emit_show(_args("-c", "pool", columns=None), VOLUME, view)
    assert capsys.readouterr().out == "pool:\n  name: fast\n  free_bytes: 1 KiB\n"


def test_show_refuses_an_unknown_field_naming_the_valid_ones(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        emit_show(_args("-c", "colour", columns=None), VOLUME)
    assert exit_.value.code == 2
    assert "unknown field 'colour' (valid: name, size_gib, used_bytes" in capsys.readouterr().err


def test_a_field_reads_as_in_the_show_view() -> None:
    assert field_text("memory_mib", 4096) == "4 GiB"
    assert field_text("storage_gib", 0) == "0 B"
    assert field_text("vcpus", 8) == "8"
