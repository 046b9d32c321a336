"""Artifacts: pinning versions at release time, and the agent's content-hash cache.

Real files in tmp_path, a real git repository, a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import os
import re
import stat
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from activities.artifact_pinning import resolve_artifacts, version_key
from activities.artifact_sources import ArtifactError
from activities.artifacts import ArtifactCache
from workflows.pipeline import Artifact, GitArtifact, HttpArtifact, LocalArtifact
from workflows.release import ResolvedArtifact

# --- helpers ------------------------------------------------------------------------


def local(path: str = "drop", version: str = "latest") -> LocalArtifact:
    return LocalArtifact(alias="app", type="local", path=path, version=version)


def make_version_folder(drop: Path, version: str) -> Path:
    folder = drop / version
    (folder / "bin").mkdir(parents=True)
    (folder / "VERSION").write_text(version)
    (folder / "bin" / "deploy.sh").write_text("#!/bin/sh\necho deploy\n")
    (folder / "bin" / "deploy.sh").chmod(0o755)
    return folder


def make_tar_gz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: webapp\n")
    return path


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    drop = tmp_path / "drop"
    for version in ("1.9", "1.9.2", "1.10.0"):
        make_version_folder(drop, version)
    (drop / ".2.0-in-progress").mkdir()  # hidden: a build still copying
    (drop / "notes.txt").write_text("not a version")
    return drop


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, str]:
    """A repository with two commits on main and an annotated tag v1 on the first."""
    path = tmp_path / "repo"
    git("init", "--quiet", "-b", "main", str(path))
    (path / "app.txt").write_text("one\n")
    git("add", ".", cwd=path)
    git("commit", "--quiet", "-m", "first", cwd=path)
    git("tag", "-a", "v1", "-m", "version 1", cwd=path)
    first = git("rev-parse", "HEAD", cwd=path)
    (path / "app.txt").write_text("two\n")
    (path / "later.txt").write_text("later\n")
    git("add", ".", cwd=path)
    git("commit", "--quiet", "-m", "second", cwd=path)
    return {"path": str(path), "first": first, "second": git("rev-parse", "HEAD", cwd=path)}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving tmp_path/www: (base url, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- resolving versions when a release is created --------------------------------------


def test_natural_version_order() -> None:
    versions = ["1.9", "1.10.0", "1.9.2", "1.2"]
    assert sorted(versions, key=version_key) == ["1.2", "1.9", "1.9.2", "1.10.0"]


def test_latest_picks_the_highest_natural_version(drop: Path, pipeline_file: Path) -> None:
    [resolved] = resolve_artifacts([local()], pipeline_file, {})
    assert resolved.version == "1.10.0"
    assert resolved.source == str(drop)
    assert resolved.location == str(drop / "1.10.0")


def test_latest_counts_archives_and_ties_go_to_the_newest(drop: Path, pipeline_file: Path) -> None:
    make_tar_gz(drop / "1.11.0.tar.gz", {"VERSION": b"1.11.0"})
    [resolved] = resolve_artifacts([local()], pipeline_file, {})
    assert (resolved.version, resolved.location) == ("1.11.0", str(drop / "1.11.0.tar.gz"))

    # 1.011.0 is 1.11.0 by number: the newer entry wins the tie.
    make_zip(drop / "1.011.0.zip", {"VERSION": b"1.011.0"})
    os.utime(drop / "1.11.0.tar.gz", ns=(1_000_000_000, 1_000_000_000))
    [resolved] = resolve_artifacts([local()], pipeline_file, {})
    assert resolved.version == "1.011.0"


def test_override_pins_the_given_version(drop: Path, pipeline_file: Path) -> None:
    make_zip(drop / "0.5.zip", {"VERSION": b"0.5"})
    [folder] = resolve_artifacts([local()], pipeline_file, {"app": "1.9.2"})
    assert (folder.version, folder.location) == ("1.9.2", str(drop / "1.9.2"))
    [archive] = resolve_artifacts([local()], pipeline_file, {"app": "0.5"})
    assert (archive.version, archive.location) == ("0.5", str(drop / "0.5.zip"))
    [default] = resolve_artifacts([local(version="1.9")], pipeline_file, {})
    assert default.version == "1.9"
    [latest] = resolve_artifacts([local(version="1.9")], pipeline_file, {"app": "latest"})
    assert latest.version == "1.10.0"


def test_absolute_drop_path_stays(drop: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "pipeline.yaml"
    [resolved] = resolve_artifacts([local(path=str(drop))], elsewhere, {})
    assert resolved.source == str(drop)


def test_unknown_version_lists_the_available_ones(drop: Path, pipeline_file: Path) -> None:
    with pytest.raises(ArtifactError) as error:
        resolve_artifacts([local()], pipeline_file, {"app": "2.0"})
    message = str(error.value)
    assert "'app'" in message and "'2.0'" in message
    assert "available: 1.10.0, 1.9.2, 1.9" in message
    assert "in-progress" not in message and "notes" not in message


@pytest.mark.parametrize(
    ("artifacts", "overrides", "expected"),
    [
        ([local()], {"api": "1.0"}, "no artifact 'api' in the pipeline (artifacts: app)"),
        ([local(path="missing")], {}, "'app': drop folder"),
        ([local(path="empty")], {}, "has no versions"),
        (
            [HttpArtifact(alias="tool", type="http", url="http://h/{{ version }}")],
            {},
            "'tool' (http) has no version",
        ),
        (
            [HttpArtifact(alias="tool", type="http", url="http://h/{{ vresion }}", version="1")],
            {},
            "'tool': url",
        ),
    ],
)
def test_resolution_errors_name_the_alias(
    tmp_path: Path,
    pipeline_file: Path,
    artifacts: list[Artifact],
    overrides: dict[str, str],
    expected: str,
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=re.escape(expected)):
        resolve_artifacts(artifacts, pipeline_file, overrides)


def test_http_url_is_rendered_with_the_version(pipeline_file: Path) -> None:
    sha = "ab" * 32
    artifact = HttpArtifact(
        alias="tool",
        type="http",
        url="https://example.com/tool/{{ version }}/tool-{{ version }}.tar.gz",
        version="1.0",
        sha256=sha,
        extract=False,
    )
    [default] = resolve_artifacts([artifact], pipeline_file, {})
    assert default.source == "https://example.com/tool/1.0/tool-1.0.tar.gz"
    assert (default.version, default.sha256, default.extract) == ("1.0", sha, False)
    [override] = resolve_artifacts([artifact], pipeline_file, {"tool": "2.1"})
    assert override.source == "https://example.com/tool/2.1/tool-2.1.tar.gz"


def test_git_refs_resolve_to_commits(repo: dict[str, str], pipeline_file: Path) -> None:
    artifact = GitArtifact(alias="src", type="git", repository="repo", ref="main")
    [main] = resolve_artifacts([artifact], pipeline_file, {})
    assert (main.source, main.version, main.commit) == (repo["path"], "main", repo["second"])
    [tag] = resolve_artifacts([artifact], pipeline_file, {"src": "v1"})
    assert (tag.version, tag.commit) == ("v1", repo["first"])  # the commit, not the tag object
    [short] = resolve_artifacts([artifact], pipeline_file, {"src": repo["first"][:10]})
    assert short.commit == repo["first"]
    head = GitArtifact(alias="src", type="git", repository=repo["path"])
    assert resolve_artifacts([head], pipeline_file, {})[0].commit == repo["second"]


def test_git_refs_of_a_remote_resolve_with_ls_remote(
    repo: dict[str, str], pipeline_file: Path
) -> None:
    url = f"file://{repo['path']}"
    artifact = GitArtifact(alias="src", type="git", repository=url, ref="v1")
    [tag] = resolve_artifacts([artifact], pipeline_file, {})
    assert (tag.source, tag.commit) == (url, repo["first"])
    assert resolve_artifacts([artifact], pipeline_file, {"src": "main"})[0].commit == repo["second"]
    with pytest.raises(ArtifactError, match="'src': ref 'nope' does not resolve"):
        resolve_artifacts([artifact], pipeline_file, {"src": "nope"})


def test_git_ref_that_does_not_resolve(repo: dict[str, str], pipeline_file: Path) -> None:
    artifact = GitArtifact(alias="src", type="git", repository="repo", ref="release/9")
    with pytest.raises(ArtifactError, match="'src': ref 'release/9' does not resolve"):
        resolve_artifacts([artifact], pipeline_file, {})
    with pytest.raises(ArtifactError, match="'src': repository .* does not exist"):
        resolve_artifacts(
            [GitArtifact(alias="src", type="git", repository="nowhere")], pipeline_file, {}
        )


# --- the agent's cache ------------------------------------------------------------------


async def test_folder_drop_lands_at_dest_and_second_fetch_is_a_cache_hit(
    drop: Path, pipeline_file: Path, tmp_path: Path
) -> None:
    [artifact] = resolve_artifacts([local()], pipeline_file, {})
    cache = ArtifactCache(tmp_path / "cache")

    first = await cache.fetch(artifact, tmp_path / "a1")
    assert (first.alias, first.version, first.cached) == ("app", "1.10.0", False)
    assert tree(tmp_path / "a1") == tree(drop / "1.10.0")
    assert first.bytes == sum(len(data) for data in tree(drop / "1.10.0").values())
    assert cache.files_hashed == 2

    # A new process (a restarted agent) finds the memo in index.json: stats only, no reads.
    again = ArtifactCache(tmp_path / "cache")
    second = await again.fetch(artifact, tmp_path / "a2")
    assert second.cached is True
    assert again.files_hashed == 0
    assert tree(tmp_path / "a2") == tree(drop / "1.10.0")
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert str(drop / "1.10.0" / "VERSION") in index["files"]

    # A changed file changes the key: a new entry, with only that file hashed again.
    (drop / "1.10.0" / "VERSION").write_text("1.10.0 rebuilt")
    third = await again.fetch(artifact, tmp_path / "a3")
    assert third.cached is False and again.files_hashed == 1
    assert (tmp_path / "a3" / "VERSION").read_text() == "1.10.0 rebuilt"


async def test_cached_files_are_hard_links_and_a_file_changed_in_place_is_rebuilt(
    drop: Path, pipeline_file: Path, tmp_path: Path
) -> None:
    [artifact] = resolve_artifacts([local()], pipeline_file, {})
    cache = ArtifactCache(tmp_path / "cache")
    await cache.fetch(artifact, tmp_path / "placed")
    [entry] = [p for p in (tmp_path / "cache" / "blobs").iterdir() if p.is_dir()]
    placed = tmp_path / "placed" / "VERSION"
    assert placed.stat().st_ino == (entry / "VERSION").stat().st_ino
    assert os.access(tmp_path / "placed" / "bin" / "deploy.sh", os.X_OK)

    # A task's `cp -r` of the artifact makes ordinary, writable files.
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(tmp_path / "placed"), str(copy)], check=True)
    assert stat.S_IMODE((copy / "VERSION").stat().st_mode) & 0o200

    # A task that writes into an artifact in place changes the cached file too:
    # the next hit notices and rebuilds the entry from the drop.
    with placed.open("a") as out:
        out.write(" tampered")
    again = await cache.fetch(artifact, tmp_path / "placed-again")
    assert again.cached is False
    assert (tmp_path / "placed-again" / "VERSION").read_text() == (
        drop / "1.10.0" / "VERSION"
    ).read_text()
    third = await cache.fetch(artifact, tmp_path / "placed-third")
    assert third.cached is True


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
async def test_archive_drop_is_extracted_at_dest_and_cached(
    kind: str, tmp_path: Path, pipeline_file: Path
) -> None:
    files = {"VERSION": b"3.0", "conf/app.ini": b"[app]\nport=8001\n"}
    drop = tmp_path / "drop"
    drop.mkdir()
    maker = make_tar_gz if kind == "tar.gz" else make_zip
    archive = maker(drop / f"3.0.{kind}", files)
    [artifact] = resolve_artifacts([local()], pipeline_file, {})
    cache = ArtifactCache(tmp_path / "cache")

    first = await cache.fetch(artifact, tmp_path / "a1")
    assert first.cached is False and tree(tmp_path / "a1") == files
    key = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert (tmp_path / "cache" / "blobs" / key).is_dir()

    second = await ArtifactCache(tmp_path / "cache").fetch(artifact, tmp_path / "a2")
    assert second.cached is True and tree(tmp_path / "a2") == files
    assert cache.files_hashed == 1


async def test_two_fetches_at_once_build_the_entry_once(
    drop: Path, pipeline_file: Path, tmp_path: Path
) -> None:
    [artifact] = resolve_artifacts([local()], pipeline_file, {})
    cache = ArtifactCache(tmp_path / "cache")
    results = await asyncio.gather(
        cache.fetch(artifact, tmp_path / "a1"), cache.fetch(artifact, tmp_path / "a2")
    )
    assert sorted(r.cached for r in results) == [False, True]
    assert tree(tmp_path / "a1") == tree(tmp_path / "a2") == tree(drop / "1.10.0")
    assert len(list((tmp_path / "cache" / "blobs").iterdir())) == 1


async def test_dest_must_not_exist(drop: Path, pipeline_file: Path, tmp_path: Path) -> None:
    [artifact] = resolve_artifacts([local()], pipeline_file, {})
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        await ArtifactCache(tmp_path / "cache").fetch(artifact, tmp_path / "taken")


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
@pytest.mark.parametrize("member", ["../evil", "/tmp/evil", "sub/../../evil"])
async def test_archive_member_escaping_dest_is_refused(
    kind: str, member: str, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    maker = make_tar_gz if kind == "tar.gz" else make_zip
    archive = maker(drop / f"6.6.{kind}", {"ok.txt": b"fine", member: b"owned"})
    artifact = ResolvedArtifact(
        alias="app", type="local", version="6.6", source=str(drop), location=str(archive)
    )
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(ArtifactError, match=f"'app': archive member '{member}' escapes"):
        await cache.fetch(artifact, tmp_path / "dest")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "cache" / "evil").exists()
    assert not (tmp_path / "dest").exists()
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []


async def test_http_download_is_verified_extracted_and_cached(
    web: tuple[str, Path], tmp_path: Path
) -> None:
    base, www = web
    files = {"tool/run.sh": b"#!/bin/sh\n", "tool/README": b"hello"}
    data = make_tar_gz(www / "tool-1.2.tar.gz", files).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    artifact = ResolvedArtifact(
        alias="tool", type="http", version="1.2", source=f"{base}/tool-1.2.tar.gz", sha256=sha
    )
    cache = ArtifactCache(tmp_path / "cache")

    first = await cache.fetch(artifact, tmp_path / "t1")
    assert first.cached is False and tree(tmp_path / "t1") == files

    (www / "tool-1.2.tar.gz").unlink()  # a hit does not touch the server
    second = await cache.fetch(artifact, tmp_path / "t2")
    assert second.cached is True and tree(tmp_path / "t2") == files


async def test_http_checksum_mismatch_is_refused(web: tuple[str, Path], tmp_path: Path) -> None:
    base, www = web
    data = make_tar_gz(www / "tool-1.2.tar.gz", {"a": b"a"}).read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    expected = "0" * 64
    artifact = ResolvedArtifact(
        alias="tool",
        type="http",
        version="1.2",
        source=f"{base}/tool-1.2.tar.gz",
        sha256=expected,
    )
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(ArtifactError) as error:
        await cache.fetch(artifact, tmp_path / "t1")
    assert "'tool'" in str(error.value)
    assert expected in str(error.value) and actual in str(error.value)
    assert not (tmp_path / "t1").exists()
    assert list((tmp_path / "cache" / "blobs").iterdir()) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


async def test_http_plain_file_keeps_the_url_basename(
    web: tuple[str, Path], tmp_path: Path
) -> None:
    base, www = web
    (www / "migrate.sql").write_text("select 1;")
    artifact = ResolvedArtifact(alias="db", type="http", version="7", source=f"{base}/migrate.sql")
    cache = ArtifactCache(tmp_path / "cache")
    result = await cache.fetch(artifact, tmp_path / "db")
    assert tree(tmp_path / "db") == {"migrate.sql": b"select 1;"}
    assert result.bytes == 9
    # Without a checksum the key is the URL: the entry is reused while it exists.
    assert (await cache.fetch(artifact, tmp_path / "db2")).cached is True

    missing = ResolvedArtifact(alias="db", type="http", version="8", source=f"{base}/nope.sql")
    with pytest.raises(ArtifactError, match="'db': GET .* answered 404"):
        await cache.fetch(missing, tmp_path / "db3")


@pytest.mark.parametrize("remote", [False, True])
async def test_git_artifact_is_the_tree_at_the_commit_without_dot_git(
    remote: bool, repo: dict[str, str], pipeline_file: Path, tmp_path: Path
) -> None:
    repository = f"file://{repo['path']}" if remote else "repo"
    artifact = GitArtifact(alias="src", type="git", repository=repository, ref="v1")
    [resolved] = resolve_artifacts([artifact], pipeline_file, {})
    cache = ArtifactCache(tmp_path / "cache")

    result = await cache.fetch(resolved, tmp_path / "src")
    assert result.cached is False and result.version == "v1"
    assert tree(tmp_path / "src") == {"app.txt": b"one\n"}  # not the later commit
    assert not (tmp_path / "src" / ".git").exists()
    key = hashlib.sha256(f"git:{repo['first']}".encode()).hexdigest()
    assert (tmp_path / "cache" / "blobs" / key).is_dir()
    assert (await cache.fetch(resolved, tmp_path / "src2")).cached is True
