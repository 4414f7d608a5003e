"""CI that cannot lie about skips (issue 18 item 9): with ``PLML_STRICT_SKIPS=1`` (set by
``.ci/run``) a test skipped for any reason but the allowed ones fails the session, naming each
one. Locally the tests that need PostgreSQL, Chromium or ../shared still skip cleanly.

Only the tests that need a GPU (or run on one) may skip in CI: the machines CI runs on have none.
Under xdist the controller sees every worker's reports, so the check runs there."""

from __future__ import annotations

import os

import pytest

#: the skip reasons CI accepts (substrings): GPU-only paths
ALLOWED_SKIP_REASONS = ("this machine has a GPU", "NVML sees a GPU here", "needs a GPU", "CUDA is not available")

_skipped: list[tuple[str, str]] = []


def _strict() -> bool:
    return os.environ.get("PLML_STRICT_SKIPS", "") not in ("", "0")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason))


def disallowed(skipped: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(node, reason) for node, reason in skipped if not any(ok in reason for ok in ALLOWED_SKIP_REASONS)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput") or not _strict():  # an xdist worker, or not CI
        return
    bad = disallowed(_skipped)
    if bad:
        session.config._plml_bad_skips = bad
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    bad = getattr(config, "_plml_bad_skips", [])
    if bad:
        terminalreporter.section("skips CI does not allow (PLML_STRICT_SKIPS=1)", red=True)
        for node, reason in bad:
            terminalreporter.line(f"SKIPPED, NOT ALLOWED: {node}: {reason}")
        terminalreporter.line(f"{len(bad)} test(s) skipped that must run here: install what they name (.ci/run) "
                              f"or allow the reason in plml_assets_tests/strict_skips.py (GPU-only paths)")
