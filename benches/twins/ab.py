"""Interleaved A/B timing of processes that speak the speed harness's line protocol.

Every command is a `gm-speed` binary or a twin (`driver.py --mode eager|compile`); each runs as
its own process. All of them set the case up (after the cases listed behind `@@`, to reproduce
the state a process reaches in `cargo xtask speed`, which sets every case up in the table's
order), run one untimed block, and then time one block each per round, in an order that rotates
from round to round, like `cargo xtask speed`. It prints each command's median step time, its
minor page faults per step (Linux), and the median over rounds of its block time over the first
command's block time of the same round.

    cd benches/twins
    python ab.py glow_sample_64 20 13 ../../target/release/gm-speed /tmp/gm-speed-old \\
        "python driver.py --mode compile@@glow_train_b64"

Two copies of the same command give the size of the noise: a paired ratio within about 5% of 1
is not a difference. Prefix a command with `env NAME=value` to set a variable for it alone.
"""

import json
import os
import shlex
import statistics
import subprocess
import sys


def minor_faults(pid):
    """Minor page faults of process `pid` so far, or 0 where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])
    except OSError:
        return 0


class Side:
    def __init__(self, spec):
        command, _, before = spec.partition("@@")
        self.label = spec
        self.before = [c for c in before.split(",") if c]
        self.process = subprocess.Popen(
            shlex.split(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        while True:
            reply = self.process.stdout.readline()
            if not reply:
                raise SystemExit(f"{self.label}: the process ended")
            try:
                answer = json.loads(reply)
            except json.JSONDecodeError:
                continue  # a line of the process's own output
            if not answer.get("ok", False):
                raise SystemExit(f"{self.label}: {answer.get('error')}")
            return answer

    def time(self, case, steps):
        """Milliseconds per step of one block, and minor page faults per step."""
        faults = minor_faults(self.process.pid)
        seconds = self.ask(f"time {case} {steps}")["seconds"]
        return seconds / steps * 1000.0, (minor_faults(self.process.pid) - faults) / steps

    def close(self):
        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
        except OSError:
            pass
        self.process.wait()


def main():
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    case, steps, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sides = [Side(spec) for spec in sys.argv[4:]]
    for side in sides:
        for other in side.before:
            side.ask(f"setup {other}")
        side.ask(f"setup {case}")
        side.time(case, steps)  # the untimed block
    times = [[] for _ in sides]
    faults = [[] for _ in sides]
    for r in range(rounds):
        for k in range(len(sides)):
            i = (k + r) % len(sides)
            ms, f = sides[i].time(case, steps)
            times[i].append(ms)
            faults[i].append(f)
    for side in sides:
        side.close()
    for side, t, f in zip(sides, times, faults):
        ratio = statistics.median(b / a for a, b in zip(times[0], t))
        print(f"{statistics.median(t):9.3f} ms  {statistics.median(f):9.1f} faults/step  "
              f"paired ratio {ratio:.3f}  {side.label}")


if __name__ == "__main__":
    main()
