"""Ranks for the launcher's fault tests, without torch (they start in a blink): rank 1 fails,
with an error of its own or by SIGKILL; rank 0 waits, as a rank blocked in a collective on
its dead peer would, after leaving its pid in a file.

    torchrun ... -m tests.support.fake_ranks error|kill PIDFILE
"""
import os
import signal
import sys
import time
from pathlib import Path

from slimline.training import distributed

if __name__ == "__main__":
    how, pidfile = sys.argv[1], Path(sys.argv[2])
    if distributed.current().rank == 1:
        if how == "error":
            distributed.record_failure("loss became nan in epoch 2")
            sys.exit(2)
        os.kill(os.getpid(), signal.SIGKILL)
    pidfile.write_text(str(os.getpid()))
    time.sleep(300)
