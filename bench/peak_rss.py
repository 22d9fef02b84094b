"""Run a Python script or module (-m) in this process and write its peak resident memory to a file.

The peak comes from /proc/self/status VmHWM, which belongs to this process's own address space. A parent's
wait4() rusage cannot be used: Linux carries ru_maxrss across fork and exec, so a child would report the
parent's peak whenever that was higher.

    python peak_rss.py OUT_FILE -m package.module args...
    python peak_rss.py OUT_FILE path/to/script args...
"""

import atexit
import runpy
import sys


def _report(path: str) -> None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                kib = int(line.split()[1])
    with open(path, "w") as out:
        out.write(str(kib * 1024))


def main() -> None:
    out_file, target, *rest = sys.argv[1:]
    atexit.register(_report, out_file)
    if target == "-m":
        module, *args = rest
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *rest]
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
