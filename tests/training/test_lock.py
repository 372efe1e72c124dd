"""One process per run folder: the lock names its holder, is re-entrant in-process, and dies with its process."""

import os
import signal
import subprocess
import sys
import time

import pytest

from visattn.training.lock import RunInUse, RunLock

_HOLD = "import sys, time; from visattn.training.lock import RunLock; RunLock(sys.argv[1]).acquire(); " \
        "print('held', flush=True); time.sleep(60)"


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks are POSIX-only")
def test_second_process_is_refused_by_pid_until_the_holder_dies(tmp_path):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunInUse, match=rf"in use by another process \(PID {proc.pid}\)"):
            RunLock(tmp_path / "run").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with RunLock(tmp_path / "run") as lock:  # kill -9 released it: no stale-lock clean-up needed
        assert lock.held
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    assert not lock.held


def test_lock_is_reentrant_within_a_process_and_released_by_the_last_holder(tmp_path):
    outer = RunLock(tmp_path).acquire()
    inner = RunLock(tmp_path).acquire()  # e.g. a study holding a run while train() takes it again
    inner.release()
    inner.release()  # idempotent
    script = "import sys; from visattn.training.lock import RunLock; RunLock(sys.argv[1]).acquire()"
    assert subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True).returncode != 0
    outer.release()
    assert subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True).returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="advisory locks are POSIX-only")
def test_resuming_a_live_run_is_refused(tmp_path):
    from visattn.config import load_train_config
    from visattn.training.run import train

    cfg = load_train_config(None, ["data.num_train=64", "data.num_val=32", "data.batch_size=32", "loop.epochs=1",
                                   "model.kwargs={layers: [1, 1, 1, 1], channels: [8, 8, 8, 8], stem_width: 8}",
                                   "model.small_input=true", "loop.progress=false"])
    train(cfg, run_dir=tmp_path / "run")
    proc = _holder(tmp_path / "run")
    try:
        start = time.perf_counter()
        with pytest.raises(RunInUse, match=f"PID {proc.pid}"):
            train(cfg, run_dir=tmp_path / "run", resume=True)
        assert time.perf_counter() - start < 30
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with pytest.raises(FileExistsError, match="holds a run already"):
        train(cfg, run_dir=tmp_path / "run")
