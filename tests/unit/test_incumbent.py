"""The incumbent file: what evaluate reads and the flow writes (slimline/evaluation/incumbent.py)."""
from __future__ import annotations

import pytest

from slimline.evaluation import incumbent


def test_missing_file_means_no_incumbent_and_writing_is_byte_stable(tmp_path):
    path = tmp_path / "models" / "incumbent.json"
    assert incumbent.read(path) is None
    assert incumbent.write("student.fp16", path) is True
    first = path.read_bytes()
    assert incumbent.read(path) == "student.fp16"
    assert incumbent.write("student.fp16", path) is False and path.read_bytes() == first
    assert incumbent.write(None, path) is True and incumbent.read(path) is None


@pytest.mark.parametrize("text, says", [("{not json", "not valid JSON"),
                                        ('{"variant": "a", "when": 1}', "must hold exactly ['variant']"),
                                        ('["a"]', "must hold exactly ['variant'], found list"),
                                        ('{"variant": 3}', "'variant' must be a variant name or null")])
def test_a_foreign_file_is_refused_naming_the_reset(tmp_path, text, says):
    path = tmp_path / "incumbent.json"
    path.write_text(text)
    with pytest.raises(incumbent.IncumbentError, match="slimline incumbent --reset") as err:
        incumbent.read(path)
    assert says in str(err.value)
    assert incumbent.write("student", path) is True and incumbent.read(path) == "student"  # replaced


def test_cli_shows_and_resets(tmp_path, capsys):
    path = tmp_path / "incumbent.json"
    incumbent.write("student", path)
    assert incumbent.main(["--file", str(path)]) == 0 and "incumbent student" in capsys.readouterr().out
    assert incumbent.main(["--file", str(path), "--reset"]) == 0
    assert incumbent.read(path) is None and "no incumbent" in capsys.readouterr().out
