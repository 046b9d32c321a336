"""The shipped example (examples/webapp) deployed end to end, as `make demo` does it:
real dev server, control worker and agent processes, the CLI as a user runs it."""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

import pytest

from starter.releases import ReleaseRef
from tests.conftest import ROOT, Stack, wait_for
from workflows.release import ReleaseStatus

EXAMPLE = ROOT / "examples" / "webapp"


def copy_example(stack: Stack) -> tuple[Path, str]:
    """The example pipeline in this test's world: its own name, pool and an absolute drop."""
    name = f"webapp-{stack.suffix}"  # pipelines are shared by every test on the dev server
    text = (EXAMPLE / "pipeline.yml").read_text()
    for old, new in (
        ("\nname: webapp\n", f"\nname: {name}\n"),
        ("path: ./drops", f"path: {EXAMPLE / 'drops'}"),
        ("pool: linux", f"pool: {stack.pool('linux')}"),
    ):
        assert old in text, f"the example pipeline no longer has {old!r}"
        text = text.replace(old, new)
    path = stack.root / "pipeline.yml"
    path.write_text(text)
    return path, name


def create_and_wait(stack: Stack, pipeline: Path, *options: str) -> ReleaseRef:
    done = stack.cli("release", "create", str(pipeline), "--wait", *options)
    assert done.returncode == 0, done.stdout + done.stderr
    first = done.stdout.splitlines()[0]
    match = re.fullmatch(r"created \S+ Release-\d+ \((\S+)\)", first)
    assert match, first
    return ReleaseRef.parse(match.group(1))


def log_of(stack: Stack, status: ReleaseStatus, stage: str, task: str) -> str:
    latest = status.stage(stage).latest
    assert latest is not None, f"{stage} was never deployed"
    run = next(run for run in latest.tasks if run.task == task)
    return stack.log_text(run.log)


@pytest.mark.e2e
async def test_example_webapp_deploys_through_all_stages_and_switches_current(
    stack: Stack,
) -> None:
    pipeline, name = copy_example(stack)
    await stack.start_worker()
    await stack.start_agent("local-agent")
    deployments = stack.data_dir / "deployments" / name
    ports = {"dev": "8001", "qa": "8002", "prod": "8003"}

    ref = create_and_wait(stack, pipeline)
    status = await stack.status(ref)
    assert {v.name: v.status.value for v in status.stages} == dict.fromkeys(ports, "succeeded")
    for stage, port in ports.items():
        current = deployments / stage / "current"
        assert os.readlink(current) == "releases/Release-1"
        assert current.resolve() == (deployments / stage / "releases" / "Release-1").resolve()
        assert (current / "VERSION").read_text().strip() == "1.1.0"  # latest of the drop
        config = configparser.ConfigParser(interpolation=None)
        config.read(current / "config.ini")
        assert config["webapp"]["port"] == port
        assert config["webapp"]["stage"] == stage
        assert config["webapp"]["release"] == "Release-1"
        # Nothing of a deployment is left behind: no temporary links or directories.
        assert sorted(p.name for p in (deployments / stage).iterdir()) == ["current", "releases"]
    smoke = log_of(stack, status, "prod", "smoke test")
    assert "ok      config port is 8003, expected 8003" in smoke
    assert "ok      GET / carries the greeting 'Welcome to webapp'" in smoke
    assert "ok      GET /health answered 200 OK" in smoke
    assert "smoke test passed: prod serves webapp 1.1.0 with port 8003" in smoke
    assert "FAILED" not in smoke

    # A second release of the older version takes over `current`; Release-1 stays for rollback.
    ref2 = create_and_wait(stack, pipeline, "--artifact", "app=1.0.0")
    assert ref2.number == 2
    for stage in ports:
        current = deployments / stage / "current"
        assert os.readlink(current) == "releases/Release-2"
        assert (current / "VERSION").read_text().strip() == "1.0.0"
        assert "release = Release-2" in (current / "config.ini").read_text()
        assert (deployments / stage / "releases" / "Release-1" / "config.ini").is_file()
    smoke = log_of(stack, await stack.status(ref2), "prod", "smoke test")
    assert "note    webapp 1.0.0 has no /health" in smoke
    assert "smoke test passed: prod serves webapp 1.0.0 with port 8003" in smoke

    # Rolling prod back is a redeploy of Release-1: it unpacks that release again over
    # its existing directory and points `current` back at it.
    prod = deployments / "prod"
    (prod / "releases" / "Release-1" / "stray-file").write_text("left by hand\n")
    redeploy = stack.cli("redeploy", str(ref), "prod")
    assert redeploy.returncode == 0, redeploy.stdout + redeploy.stderr

    async def rolled_back() -> ReleaseStatus | None:
        status = await stack.status(ref)
        attempts = status.stage("prod").attempts
        return status if len(attempts) == 2 and attempts[-1].status.is_final else None

    status = await wait_for(rolled_back, timeout=60, what="the prod redeploy of Release-1")
    assert status.stage("prod").status.value == "succeeded"
    assert os.readlink(prod / "current") == "releases/Release-1"
    assert (prod / "current" / "VERSION").read_text().strip() == "1.1.0"
    assert not (prod / "releases" / "Release-1" / "stray-file").exists()
    assert sorted(p.name for p in (prod / "releases").iterdir()) == ["Release-1", "Release-2"]
