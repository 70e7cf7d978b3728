"""Ports and processes of a local Kafka broker on this machine.

Job
---
:func:`_free_ports` and :func:`_port_is_free` find listener ports on 127.0.0.1;
:func:`_signal_group` signals a broker's process group; :func:`_process_fingerprint`
recognises a process again (start time and command line), so a recycled pid is never
taken for our broker; :func:`_tail` reads the end of its log. :func:`_load_state`,
:func:`_alive` and :func:`_clear_state` read, check and remove the pid and state files of a
broker started from the command line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out as free right now, distinct (all held open together)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the JVM sets on its server sockets, so TIME_WAIT leftovers of a broker
        # we just killed do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _process_fingerprint(pid: int) -> str | None:
    """Start time and command line of a live process, to recognise it again later."""
    proc = Path("/proc") / str(pid)
    if proc.is_dir():
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z":  # exited, only waiting to be reaped
            return None
        return f"{fields[19]} {cmdline.strip()}"
    ps = shutil.which("ps")
    if ps is None:
        return None
    out = subprocess.run(  # noqa: S603 - fixed argv
        [ps, "-o", "lstart=,command=", "-p", str(pid)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return out.stdout.strip() or None


def _state_paths(state_dir: Path) -> tuple[Path, Path]:
    return state_dir / "broker.pid", state_dir / "broker.json"


def _load_state(state_dir: Path) -> dict[str, Any] | None:
    pid_file, info_file = _state_paths(state_dir)
    if not pid_file.is_file() or not info_file.is_file():
        return None
    try:
        info: dict[str, Any] = json.loads(info_file.read_text(encoding="utf-8"))
        info["pid"] = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return info


def _alive(info: Mapping[str, Any]) -> bool:
    """Is the recorded broker still the very process we started (not a recycled pid)?"""
    return _process_fingerprint(int(info["pid"])) == info.get("fingerprint")


def _clear_state(state_dir: Path, info: Mapping[str, Any] | None) -> None:
    for path in _state_paths(state_dir):
        path.unlink(missing_ok=True)
    if info and info.get("remove_data_dir") and info.get("data_dir"):
        shutil.rmtree(info["data_dir"], ignore_errors=True)
