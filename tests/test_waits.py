"""No test can hang: every blocking wait in the tests has a timeout, and pytest-timeout is the backstop.

A static check over the test sources: a call that
blocks until something else happens (``subprocess.run``, ``Popen.wait`` / ``communicate``,
``urlopen``, ``Thread.join``, ``Event.wait``, ``Queue.get`` ...) must say how long it may wait.
Polling loops are written with a deadline (see ``_wait_until`` in tests/models/test_serving.py);
anything missed is stopped by the global ``timeout`` of pytest-timeout (pyproject.toml).
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "tests").rglob("*.py"))

# Calls that block until another process, thread or host acts: they need ``timeout=``.
NEEDS_TIMEOUT_KEYWORD = {"run", "check_output", "check_call", "communicate", "urlopen", "create_connection"}
# Methods that block forever when called without any argument (``x.join()``, ``event.wait()``, ``q.get()``).
BLOCK_WITHOUT_ARGUMENT = {"wait", "join", "get", "acquire", "recv"}


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    if isinstance(node.func, ast.Name):
        return node.func.id
    return None


def unbounded_waits(source: str) -> list[tuple[int, str]]:
    """(line, call) of every blocking call in ``source`` that sets no timeout."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or (name := _call_name(node)) is None:
            continue
        keywords = {keyword.arg for keyword in node.keywords}
        if name in NEEDS_TIMEOUT_KEYWORD and "timeout" not in keywords:
            if name == "run" and not (isinstance(node.func, ast.Attribute) and
                                      isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"):
                continue  # asyncio.run(...), runner.run(...): not a subprocess
            found.append((node.lineno, name))
        elif name in BLOCK_WITHOUT_ARGUMENT and not node.args and not node.keywords:
            found.append((node.lineno, name))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_blocking_call_has_a_timeout(path):
    problems = unbounded_waits(path.read_text())
    assert not problems, f"{path.relative_to(ROOT)}: blocking calls without a timeout at lines {problems}"


def test_the_check_finds_unbounded_waits():
    source = ("import subprocess\nsubprocess.run(['x'])\nthread.join()\nevent.wait()\nqueue.get()\n"
              "subprocess.run(['x'], timeout=5)\nthread.join(timeout=5)\n', '.join(parts)\nasyncio.run(main())\n")
    assert unbounded_waits(source) == [(2, "run"), (3, "join"), (4, "wait"), (5, "get")]


def test_pytest_timeout_is_the_backstop():
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert 60 <= int(options["timeout"]) <= 1800
    import pytest_timeout  # noqa: F401 - installed with the test extra
