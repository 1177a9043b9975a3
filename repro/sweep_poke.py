"""Ask process PID's state (in DIR) for canary sweeps as fast as possible for SECS seconds."""
from __future__ import annotations

import os
import struct
import sys
import time

sys.path.insert(0, "/work/wt/review")
from kfence_py.state import CONTROL_FIELDS, CONTROL_OFFSET


def main() -> None:
    state_dir, pid, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
    path = os.path.join(state_dir, f"{pid}.state")
    while not os.path.exists(path):
        time.sleep(0.01)
    fd = os.open(path, os.O_RDWR)
    at = CONTROL_OFFSET + CONTROL_FIELDS["canary_sweep"]
    end, asked = time.time() + secs, 0
    while time.time() < end:
        asked += 1
        os.pwrite(fd, struct.pack("<I", asked), at)
        time.sleep(0.0005)
    print("sweeps asked", asked)


if __name__ == "__main__":
    main()
