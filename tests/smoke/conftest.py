"""The container suite (``test_containers.py``, marked ``docker``) runs only where it
can: with pytest-celery's plugin loaded, which ``pyproject.toml``'s ``addopts`` disable
(``-p no:celery``) and ``-p celery`` loads again, and with a Docker daemon answering. Elsewhere
its tests are skipped with the reason, before any of their fixtures is looked up, so
``make test`` reports them skipped and the local suite (``test_local.py``) runs the same
scenarios on the local servers."""

from __future__ import annotations

import gc
import warnings

import pytest

#: The README's command for the container suite.
COMMAND = ".venv/bin/python -m pytest -p celery tests/smoke/test_containers.py"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"docker: runs in containers with pytest-celery; needs Docker and `{COMMAND}`",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    in_containers = [item for item in items if item.get_closest_marker("docker")]
    if not in_containers:
        return
    reason = _why_no_containers(config)
    if reason is not None:
        for item in in_containers:
            item.add_marker(pytest.mark.skip(reason=reason))


def _why_no_containers(config: pytest.Config) -> str | None:
    """Why the container suite cannot run here, or ``None`` when it can."""
    plugins = config.pluginmanager
    if not (plugins.has_plugin("celery") or plugins.has_plugin("pytest_celery")):
        return (
            "pytest-celery's plugin is not loaded (pyproject's addopts disable it with "
            f"-p no:celery); the container suite runs with `{COMMAND}`"
        )
    import docker

    # A daemon that is not there fails the client half-built, its socket left to the
    # garbage collector: that socket's ResourceWarning is not this run's concern.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=5)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # no socket, refused, a wrong DOCKER_HOST: no daemon
            reason = f"no Docker daemon answers ({type(exc).__name__}: {exc})"
        else:
            reason = None
        gc.collect()
    return None if reason is None else f"{reason}; the container suite needs one"
