"""tests/support/background.py: a shared build's markers, as the waiting tests read them."""
import pytest

from tests.support.background import build_main, wait_ready


def test_a_finished_build_is_returned_and_a_failed_one_explained(tmp_path):
    built = tmp_path / "ok"
    build_main(["build", str(built)], lambda dest: dest.mkdir(), "usage")
    assert wait_ready(built, timeout_s=1) == built and built.is_dir()

    broken = tmp_path / "broken"
    broken.with_suffix(".log").write_text("dvc repro: stage 'prepare' failed\n")

    def fail(dest):
        raise RuntimeError("the build broke")

    with pytest.raises(RuntimeError, match="the build broke"):
        build_main(["build", str(broken)], fail, "usage")
    with pytest.raises(RuntimeError,
                       match=r"(?s)broken was not made.*the build broke.*stage 'prepare' failed"):
        wait_ready(broken, timeout_s=5)
    with pytest.raises(RuntimeError, match="timed out"):
        wait_ready(tmp_path / "never", timeout_s=0)
    with pytest.raises(SystemExit, match="usage"):
        build_main(["lock"], fail, "usage")
