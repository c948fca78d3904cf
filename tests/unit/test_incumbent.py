"""The incumbent file: what evaluate reads and the flow writes (slimline/evaluation/incumbent.py)."""
from __future__ import annotations

import json

import pytest

from slimline.evaluation import incumbent


def test_missing_file_means_no_incumbent_and_writing_is_byte_stable(tmp_path):
    path = tmp_path / "models" / "incumbent.json"
    assert incumbent.read(path) is None
    assert incumbent.write("student.fp16@onnxruntime", path) is True
    first = path.read_bytes()
    assert incumbent.read(path) == "student.fp16@onnxruntime"
    assert incumbent.write("student.fp16@onnxruntime", path) is False and path.read_bytes() == first
    assert incumbent.write(None, path) is True and incumbent.read(path) is None
    assert json.loads(path.read_text()) == {"variant": None}


def test_the_variant_and_its_runtime_round_trip_byte_stable(tmp_path):
    path = tmp_path / "incumbent.json"
    assert incumbent.write("student.int8_static@openvino", path) is True
    assert json.loads(path.read_text()) == {"variant": "student.int8_static", "runtime": "openvino"}
    first = path.read_bytes()
    assert incumbent.read(path) == "student.int8_static@openvino"
    assert incumbent.write("student.int8_static@openvino", path) is False and path.read_bytes() == first
    # the same variant on another runtime is another candidate: the file changes
    assert incumbent.write("student.int8_static@onnxruntime", path) is True
    assert json.loads(path.read_text()) == {"variant": "student.int8_static", "runtime": "onnxruntime"}


def test_a_file_from_before_runtimes_names_an_onnxruntime_incumbent(tmp_path):
    path = tmp_path / "incumbent.json"
    path.write_text('{"variant": "student.fp16"}\n')
    assert incumbent.read(path) == "student.fp16@onnxruntime"
    # accepting it again rewrites it in the new form, naming the runtime
    assert incumbent.write("student.fp16@onnxruntime", path) is False  # the same candidate: left alone
    assert incumbent.write("student.fp16@openvino", path) is True
    assert incumbent.read(path) == "student.fp16@openvino"


@pytest.mark.parametrize("text, says", [
    ("{not json", "not valid JSON"),
    ('{"variant": "a", "when": 1}',
     "must hold ['runtime', 'variant'] (or 'variant' alone), found ['variant', 'when']"),
    ('["a"]', "must hold ['runtime', 'variant'] (or 'variant' alone), found list"),
    ('{"variant": 3}', "'variant' must be a variant name, not 3"),
    ('{"variant": "a", "runtime": ""}', "'runtime' must be a runtime name, not ''")])
def test_a_foreign_file_is_refused_naming_the_reset(tmp_path, text, says):
    path = tmp_path / "incumbent.json"
    path.write_text(text)
    with pytest.raises(incumbent.IncumbentError, match="slimline incumbent --reset") as err:
        incumbent.read(path)
    assert says in str(err.value)
    assert incumbent.write("student@onnxruntime", path) is True  # replaced
    assert incumbent.read(path) == "student@onnxruntime"


def test_cli_shows_and_resets(tmp_path, capsys):
    path = tmp_path / "incumbent.json"
    incumbent.write("student@openvino", path)
    assert incumbent.main(["--file", str(path)]) == 0
    assert "incumbent student@openvino" in capsys.readouterr().out
    assert incumbent.main(["--file", str(path), "--reset"]) == 0
    assert incumbent.read(path) is None and "no incumbent" in capsys.readouterr().out
