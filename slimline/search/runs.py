"""Running one structure-search candidate as a DVC experiment, and finding the
ones already run.

    dvc --wait-for-lock exp run --temp --name <candidate> -S key=value ... <stage>

`--temp` runs the experiment in a throwaway copy of the repository, so several
candidates run side by side without touching the workspace; DVC takes its
repository lock only while it stashes each one (--wait-for-lock queues them
there). DVC runs the stages the target's stage depends on only if they are not
up to date (`prepare` is normally restored from the cache), never the stages
after it. The experiment commit holds params.yaml, dvc.lock and the stage's
metrics; the stage leaves its untracked run record (train time, ORT latency)
in the folder named by SLIMLINE_RUN_RECORD_DIR (slimline.report.keep_run_record).
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

from slimline.repo import GitError, child_env, dvc_remote, git, git_remote, head, stop_group
from slimline.search.space import THREADS_KEY, Candidate

RECORDS = Path(".slimline/search")  # under the repository root; ignored by git
FAILED = "failed.json"
REPORT_KEYS = ("val_accuracy", "test_accuracy", "params", "flops")  # from reports/<stage>.json
# val_count / val_correct: the validation images behind val_accuracy (the leaderboard's
# 95% intervals). flows/search.py's pool artifacts carry every METRIC_KEYS entry.
METRIC_KEYS = (*REPORT_KEYS, "val_count", "val_correct")
# A Python traceback's last line: the error a crashed stage (a bug, out of memory) died of.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b:")


def code_state(root: Path) -> str:
    """A digest of uncommitted changes to the code and the stage graph ("" when clean).
    Experiments include them, so a candidate's identity must too."""
    diff = git("diff", "HEAD", "--", "tasks", "slimline", "dvc.yaml", cwd=root)
    new = git("ls-files", "--others", "--exclude-standard", "--", "tasks", "slimline", cwd=root).split()
    if not diff and not new:
        return ""
    h = hashlib.sha256(diff.encode())
    for rel in sorted(new):
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


def record_dir(root: Path, baseline: str, name: str) -> Path:
    return root / RECORDS / baseline[:12] / name


def exp_refs(root: Path, baseline: str) -> dict[str, str]:
    """{experiment name: commit} for the experiments of `baseline` (DVC keeps them as git refs)."""
    from dvc.repo.experiments.exceptions import InvalidExpRefError
    from dvc.repo.experiments.refs import ExpRefInfo

    out = {}
    for line in git("for-each-ref", "--format=%(objectname) %(refname)", "refs/exps/", cwd=root).splitlines():
        sha, ref = line.split(" ", 1)
        try:
            info = ExpRefInfo.from_ref(ref)
        except InvalidExpRefError:  # DVC's queue bookkeeping refs (refs/exps/celery/...) are not experiments
            continue
        if info.baseline_sha == baseline and info.name:
            out[info.name] = sha
    return out


def val_count(root: Path, rev: str, report: dict) -> int | None:
    """The number of validation images the stage's val accuracy was measured on.

    The training reports hold only the accuracy (correct / n over the whole val split,
    slimline/training/loop.py's evaluate), so n comes from the val split's size in
    `prepare`'s report at the same commit (reports/prepare.json, tracked in git, so the
    experiment commit holds it). A report that records its own count wins. None when
    neither has it (an older experiment): the leaderboard then uses the point value.
    """
    if isinstance(report.get("val_count"), int):
        return report["val_count"]
    try:
        prepare = json.loads(git("show", f"{rev}:reports/prepare.json", cwd=root))
    except (GitError, OSError, ValueError):  # no prepare report at that commit (or no git), or not JSON
        return None
    n = (prepare.get("sizes") or {}).get("val")
    return n if isinstance(n, int) and n > 0 else None


def read_metrics(root: Path, rev: str, stage: str) -> dict:
    report = json.loads(git("show", f"{rev}:reports/{stage}.json", cwd=root))
    out = {k: report[k] for k in REPORT_KEYS}
    n = val_count(root, rev, report)
    acc = out["val_accuracy"]
    out["val_count"] = n
    out["val_correct"] = None if n is None or acc is None else round(acc * n)
    return out


def read_run_record(folder: Path, stage: str) -> dict:
    """Train time and latency from the stage's run record, if this machine ran it."""
    path = folder / f"{stage}.run.json"
    if not path.exists():
        return {"train_seconds": None, "ort_p50_ms_b1": None}
    run = json.loads(path.read_text())
    seconds = run.get("kd_train_seconds", run.get("train_seconds"))  # distill: the KD student's
    return {"train_seconds": seconds, "ort_p50_ms_b1": run.get("ort_p50_ms_b1")}


def base_record(c: Candidate) -> dict:
    return {"name": c.name, "target": c.target, "choice": c.choice, "structure": c.structure,
            "status": "failed", "reason": None, "source": "ran", "experiment": None,
            **{k: None for k in METRIC_KEYS}, "train_seconds": None, "ort_p50_ms_b1": None,
            "wall_seconds": None}


def finished_record(root: Path, c: Candidate, baseline: str, rev: str, source: str) -> dict:
    return {**base_record(c), "status": "ok", "source": source, "experiment": rev,
            **read_metrics(root, rev, c.stage),
            **read_run_record(record_dir(root, baseline, c.name), c.stage)}


def known(root: Path, candidates: list[Candidate], baseline: str,
          retry_failed: bool = False) -> dict[str, dict]:
    """Records of the candidates a rerun skips: finished experiments of this baseline
    (and, unless retry_failed, candidates already recorded as failed here)."""
    refs = exp_refs(root, baseline)
    out = {}
    for c in candidates:
        if c.name in refs:
            out[c.name] = finished_record(root, c, baseline, refs[c.name], "reused")
        elif not retry_failed and (record_dir(root, baseline, c.name) / FAILED).exists():
            failed = json.loads((record_dir(root, baseline, c.name) / FAILED).read_text())
            out[c.name] = {**base_record(c), "reason": failed["reason"], "source": "reused"}
    return out


def error_line(lines: list[str]) -> str:
    """The stage's own message (`ERROR [stage]: ...`), else the exception a crash
    ended with, else DVC's first error line."""
    stage = [line for line in lines if line.startswith("ERROR [") and "]:" in line]
    if stage:
        return stage[0].strip()
    crash = [line for line in lines if EXCEPTION_LINE.match(line)]
    if crash:
        return crash[-1].strip()
    dvc = [line for line in lines if line.startswith("ERROR")]
    if dvc:
        return dvc[0].strip()
    tail = [line for line in lines if line.strip()]
    return tail[-1].strip() if tail else "no output"


def _fail(root: Path, c: Candidate, baseline: str, reason: str, seconds: float | None) -> dict:
    folder = record_dir(root, baseline, c.name)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FAILED).write_text(json.dumps({"reason": reason, "overrides": c.overrides}, indent=2))
    return {**base_record(c), "reason": reason, "wall_seconds": seconds}


def run_experiment(root: Path, c: Candidate, threads: int | None,
                   log: Callable[[str], None] = print) -> dict:
    """Run candidate `c` as a DVC experiment of HEAD; its record, finished or failed.

    threads: train.num_threads for this candidate (an `-S` override, so the
    experiment records it), or None to keep params.yaml's.
    """
    baseline = head(root)
    if c.error:
        log(f"{c.name}: rejected by the params schema: {c.error}")
        return _fail(root, c, baseline, c.error, None)
    folder = record_dir(root, baseline, c.name)
    (folder / FAILED).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "exp", "run", "--temp", "--name", c.name,
           *c.set_args(threads), c.stage]
    log(f"{c.name}: {' '.join(cmd[2:])}")
    tail: deque[str] = deque(maxlen=60)
    start = time.perf_counter()
    # Own process group: a stopped search stops its experiments (see flows/search.py).
    proc = subprocess.Popen(cmd, cwd=root, env=child_env(SLIMLINE_RUN_RECORD_DIR=str(folder)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            start_new_session=True)
    try:
        for line in proc.stdout:
            tail.append(line.rstrip())
            log(f"[{c.name}] {line.rstrip()}")
        rc = proc.wait()
    finally:
        stop_group(proc)  # interrupted or cancelled: stop dvc and the stage under it
    seconds = time.perf_counter() - start
    rev = exp_refs(root, baseline).get(c.name)
    if rc != 0 or rev is None:
        return _fail(root, c, baseline, error_line(list(tail)) if rc else
                     f"dvc exp run ended without an experiment named {c.name}", seconds)
    return {**finished_record(root, c, baseline, rev, "ran"), "wall_seconds": seconds}


# The stages before each target's own, and the params sections they read (dvc.yaml).
UPSTREAM = {"train_baseline": {"prepare": ("data",)},
            "distill": {"prepare": ("data",), "train_baseline": ("baseline", "train")}}


def shared_stages_ready(root: Path, c: Candidate, threads: int | None, raw: dict) -> bool:
    """Whether the stages before the candidate's own are up to date here and stay so
    under its overrides, so that every candidate restores them from the DVC cache.
    If not (a fresh clone, or a student search whose thread count changes the
    teacher's `train` params), the first candidate must reproduce them alone; the
    others then restore them from DVC's run cache instead of each redoing them."""
    from dvc.repo import Repo

    changes = {**c.overrides, **({THREADS_KEY: threads} if threads is not None else {})}
    touched = {k.split(".")[0] for k, v in changes.items()
               if (raw.get(k.split(".")[0]) or {}).get(k.split(".", 1)[1]) != v}
    upstream = UPSTREAM[c.stage]
    if any(touched & set(sections) for sections in upstream.values()):
        return False
    try:
        with Repo(str(root)) as repo:
            # DVC resolves a bare stage name against the working directory, not the repo:
            # name dvc.yaml by its path so that a search run from elsewhere (--root) works.
            return not repo.status(targets=[f"{Path(root).resolve() / 'dvc.yaml'}:{s}" for s in upstream])
    except Exception:  # noqa: BLE001 - e.g. another DVC process holds the lock: assume not ready (the safe order)
        return False


def push_experiment(root: Path, name: str) -> str:
    """`dvc exp push`: the experiment's commit to the git remote and its outputs to the
    DVC remote, so `dvc exp show` lists it (and `dvc exp pull` fetches it) anywhere."""
    origin, storage = git_remote(root), dvc_remote(root)
    if not (origin and storage):
        return "not pushed: no git remote and DVC remote configured"
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "push", origin, name], cwd=root,
                          env=child_env(), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"dvc exp push {origin} {name} failed: "
                           f"{error_line((proc.stdout + proc.stderr).splitlines())}")
    return f"pushed to git remote '{origin}' and DVC remote '{storage}'"
