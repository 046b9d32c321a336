"""The agent's artifact cache: put a release's pinned artifacts into a job's work directory.

Each artifact's content is kept once per agent, as a fully extracted read-only
tree under `<root>/blobs/<key>/`, where the key is a content hash (see
`ArtifactCache.fetch`). A job gets a tree of hard links to the cached files, so
a cache hit costs a few stats and links, not a download or an unpack.

Crash and concurrency safety: an entry is built in a temporary directory next
to the blobs and moved into place with one `os.replace`, so an entry either is
complete or does not exist; two processes that build the same entry at once
both succeed and the loser discards its copy. Within one process an
`asyncio.Lock` per key makes the second fetch wait for the first and reuse it.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpx

from activities.artifact_sources import ArtifactError, archive_version, is_remote_repository
from workflows.release import ResolvedArtifact

CHUNK_SIZE = 1 << 20
STALE_TEMP_SECONDS = 24 * 3600
GIT_TIMEOUT_SECONDS = 600
HTTP_TIMEOUT = httpx.Timeout(30.0, read=300.0)

_COMMIT = re.compile(r"^[0-9a-f]{7,64}$")

HttpClientFactory = Callable[[], httpx.AsyncClient]
# Fills an empty staging directory with an artifact's content; returns the content key.
Fill = Callable[[Path], Awaitable[str]]


@dataclass
class FetchResult:
    """What `ArtifactCache.fetch` placed, and whether the cache already had it."""

    alias: str
    version: str
    path: Path
    cached: bool
    bytes: int
    seconds: float


def _default_http_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(follow_redirects=True, timeout=HTTP_TIMEOUT)


class ArtifactCache:
    """Content-addressed artifact cache of one agent, rooted at `root`.

    Keys: a local archive's sha256; a local folder's tree hash; an http
    download's declared `sha256` (or the URL's hash when none is declared);
    "git:" + commit for a git artifact. Files are hashed in 1 MiB chunks, and a
    local file's hash is memoised in `<root>/index.json` by path, size, mtime
    and inode, so a cache hit on a local artifact only stats its files.
    """

    def __init__(self, root: Path, http_client_factory: HttpClientFactory | None = None):
        self.root = root
        self.files_hashed = 0  # files read to hash them (memo misses); for tests and metrics
        self._blobs = root / "blobs"
        self._tmp = root / "tmp"
        self._index_path = root / "index.json"
        self._http_client_factory = http_client_factory or _default_http_client
        self._locks: dict[str, asyncio.Lock] = {}
        self._index: dict[str, list[Any]] | None = None
        self._index_dirty = False
        self._index_lock = threading.Lock()
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        # Leftovers of a crashed process: in-progress entries are ".tmp-*" in blobs/.
        _discard_stale(self._blobs, prefix=".tmp-")
        _discard_stale(self._tmp, prefix="")

    async def fetch(self, artifact: ResolvedArtifact, dest: Path) -> FetchResult:
        """Place the artifact's content as a new directory `dest` (its parent must exist).

        local folder → its files; local archive → its extracted contents; http →
        the download, extracted when `extract` is set and the URL names an
        archive, else the one file under the URL's basename; git → the tree at
        `commit`, without `.git`. The cache side is idempotent (an entry is built
        once, completely or not at all); `dest` is not: it must not exist, so a
        retried job clears its work directory first. Raises ArtifactError (do not
        retry) when the artifact is missing, corrupt, unsafe or fails its
        checksum; network and disk errors propagate and may be retried.
        """
        started = time.perf_counter()
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(f"artifact {artifact.alias!r}: {dest} exists already")
        key, fill = await self._plan(artifact)
        key, cached = await self._ensure(key, fill)
        await asyncio.to_thread(self._save_index)
        size = await asyncio.to_thread(self._place, key, dest)
        return FetchResult(
            alias=artifact.alias,
            version=artifact.version,
            path=dest,
            cached=cached,
            bytes=size,
            seconds=time.perf_counter() - started,
        )

    # --- planning: the key, and how to build the entry when it is missing -------------

    async def _plan(self, artifact: ResolvedArtifact) -> tuple[str, Fill]:
        alias = artifact.alias
        if artifact.type == "local":
            if not artifact.location:
                raise ArtifactError(f"artifact {alias!r}: no version location was pinned")
            location = Path(artifact.location)
            is_dir: bool = await asyncio.to_thread(location.is_dir)
            if is_dir:
                key = await asyncio.to_thread(self._tree_key, location)
                return key, _in_thread(self._copy_tree, location)
            is_file: bool = await asyncio.to_thread(location.is_file)
            if is_file and archive_version(location.name):
                key = await asyncio.to_thread(self._file_sha, location)
                return key, _in_thread(self._unpack_local_archive, alias, location)
            raise ArtifactError(
                f"artifact {alias!r}: version {artifact.version!r} is gone from the drop"
                f" ({location} is not a folder or an archive)"
            )
        if artifact.type == "http":
            return self._plan_http(artifact)
        if artifact.type == "git":
            commit = artifact.commit or ""
            if not _COMMIT.match(commit):
                raise ArtifactError(f"artifact {alias!r}: {commit!r} is not a commit sha")
            key = _digest(f"git:{commit}")
            return key, _in_thread(self._export_git, alias, artifact.source, commit, key)
        raise ArtifactError(f"artifact {alias!r}: unknown artifact type {artifact.type!r}")

    def _plan_http(self, artifact: ResolvedArtifact) -> tuple[str, Fill]:
        alias, url = artifact.alias, artifact.source
        name = _url_basename(url)
        unpack = artifact.extract and archive_version(name) is not None
        expected = artifact.sha256.lower() if artifact.sha256 else None
        if expected:
            # An unpacked archive shares its entry with a local drop of the same file.
            key = expected if unpack else _digest(f"file:{name}:{expected}")
        else:
            key = _digest(f"url:{'unpack' if unpack else 'file'}:{url}")

        async def fill(staging: Path) -> str:
            download = Path(await asyncio.to_thread(_temp_file, self._tmp, name))
            try:
                actual = await self._download(alias, url, download)
                if expected and actual != expected:
                    raise ArtifactError(
                        f"artifact {alias!r}: download from {url} has sha256 {actual},"
                        f" expected {expected}"
                    )
                if unpack:
                    await asyncio.to_thread(_unpack_file, alias, download, name, staging)
                else:
                    await asyncio.to_thread(os.replace, download, staging / name)
            finally:
                await asyncio.to_thread(download.unlink, missing_ok=True)
            return key

        return key, fill

    async def _download(self, alias: str, url: str, target: Path) -> str:
        """Stream `url` into `target`; returns its sha256. 4xx is final, 5xx retryable."""
        digest = hashlib.sha256()
        async with self._http_client_factory() as client, client.stream("GET", url) as response:
            status = response.status_code
            if 400 <= status < 500 and status not in (408, 429):
                raise ArtifactError(f"artifact {alias!r}: GET {url} answered {status}")
            response.raise_for_status()
            out = await asyncio.to_thread(open, target, "wb")
            try:
                async for chunk in response.aiter_bytes(CHUNK_SIZE):
                    await asyncio.to_thread(_write_hashing, out, digest, chunk)
            finally:
                await asyncio.to_thread(out.close)
        return digest.hexdigest()

    # --- building and placing entries ------------------------------------------------

    def _blob(self, key: str) -> Path:
        return self._blobs / key

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _ensure(self, key: str, fill: Fill) -> tuple[str, bool]:
        """Build the entry for `key` unless someone did meanwhile: (final key, was cached)."""
        async with self._lock(key):
            if await asyncio.to_thread(self._intact, key):
                return key, True
            staging = Path(
                await asyncio.to_thread(tempfile.mkdtemp, prefix=".tmp-", dir=self._blobs)
            )
            try:
                final = await fill(staging)
                await asyncio.to_thread(self._commit, staging, final)
            except BaseException:
                _remove_tree(staging)
                raise
            return final, False

    def _intact(self, key: str) -> bool:
        """Is the entry there and unchanged since it was made?

        Jobs get hard links to the cached files, with their ordinary modes, so a
        task's `cp -r` makes ordinary writable copies. A task that writes to an
        artifact file *in place* would change the cache through its link: every
        hit therefore compares each file's size and mtime with the manifest
        written when the entry was made (stat only, no hashing) and rebuilds a
        changed entry.
        """
        blob = self._blob(key)
        if not blob.is_dir():
            return False
        try:
            manifest = json.loads(self._manifest(key).read_text())
        except (OSError, ValueError):
            manifest = None
        if manifest is None or manifest != _stat_manifest(blob):
            _remove_tree(blob)
            return False
        return True

    def _manifest(self, key: str) -> Path:
        return self._blobs.parent / "manifests" / f"{key}.json"

    def _commit(self, staging: Path, key: str) -> None:
        """Move a complete tree in with its stat manifest; a concurrent winner keeps its copy."""
        _write_atomically(self._manifest(key), json.dumps(_stat_manifest(staging)))
        target = self._blob(key)
        try:
            # Same parent directory, so a read-only tree can be renamed.
            os.replace(staging, target)
        except OSError:
            if not target.is_dir():
                raise
            _remove_tree(staging)

    def _place(self, key: str, dest: Path) -> int:
        """Hard-link the entry's files into a new `dest` (copy across devices); total bytes."""
        partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
        try:
            os.chmod(partial, 0o755)
            size = _link_tree(self._blob(key), partial)
            if dest.exists():
                raise FileExistsError(f"{dest} appeared while the artifact was being placed")
            os.rename(partial, dest)
        except BaseException:
            _remove_tree(partial)
            raise
        return size

    def _copy_tree(self, folder: Path, staging: Path) -> str:
        """Copy a drop folder into staging; the key is the hash of what was copied."""
        entries = []
        for rel, entry in _walk(folder):
            target = staging / rel
            if entry.is_symlink():
                link = os.readlink(entry.path)
                os.symlink(link, target)
                entries.append((rel, "l", link))
            elif entry.is_dir(follow_symlinks=False):
                target.mkdir()
                entries.append((rel, "d", ""))
            elif entry.is_file(follow_symlinks=False):
                before = entry.stat(follow_symlinks=False)
                executable = bool(before.st_mode & 0o111)
                # The key pass hashed this file moments ago: the memo answers, and the
                # copy itself is the kernel's (copy_file_range), not a second hash.
                sha = self._file_sha(Path(entry.path), before)
                shutil.copyfile(entry.path, target)
                after = os.stat(entry.path)
                if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                    raise OSError(f"{entry.path} changed while it was copied; try again")
                os.chmod(target, 0o755 if executable else 0o644)
                entries.append((rel, "x" if executable else "f", sha))
        return _tree_digest(entries)

    def _unpack_local_archive(self, alias: str, archive: Path, staging: Path) -> str:
        with open(archive, "rb") as file:
            # From the open file, so a replaced archive cannot be stored under the old key.
            sha = self._file_sha(archive, os.fstat(file.fileno()), file)
            file.seek(0)
            _unpack(alias, file, archive.name, staging)
        return sha

    def _export_git(self, alias: str, source: str, commit: str, key: str, staging: Path) -> str:
        """The tree at `commit` into staging: `git archive` from the repository, no .git."""
        if not is_remote_repository(source) and Path(source).is_dir():
            _git_archive(alias, source, commit, staging)
            return key
        if source.startswith("-"):
            raise ArtifactError(f"artifact {alias!r}: {source!r} is not a repository")
        with tempfile.TemporaryDirectory(dir=self._tmp) as work:
            _run_git(alias, ["init", "--quiet", "--bare", work])
            fetch = ["-C", work, "fetch", "--quiet", "--no-tags"]
            try:
                _run_git(alias, [*fetch, "--depth=1", "--", source, commit])
            except ArtifactError:
                # A server that refuses to fetch a bare sha: fetch every branch and tag.
                refs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
                _run_git(alias, [*fetch, "--", source, *refs])
            _git_archive(alias, work, commit, staging)
        return key

    # --- content hashes and their memo -------------------------------------------------

    def _tree_key(self, folder: Path) -> str:
        """Tree hash of a folder; memoised file hashes make this a walk of stats."""
        entries = []
        for rel, entry in _walk(folder):
            if entry.is_symlink():
                entries.append((rel, "l", os.readlink(entry.path)))
            elif entry.is_dir(follow_symlinks=False):
                entries.append((rel, "d", ""))
            elif entry.is_file(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                sha = self._file_sha(Path(entry.path), info)
                entries.append((rel, "x" if info.st_mode & 0o111 else "f", sha))
        return _tree_digest(entries)

    def _file_sha(
        self, path: Path, info: os.stat_result | None = None, file: IO[bytes] | None = None
    ) -> str:
        """sha256 of a local file, memoised by (absolute path, size, mtime_ns, inode)."""
        path = path.absolute()
        info = info or path.stat()
        signature = [info.st_size, info.st_mtime_ns, info.st_ino]
        with self._index_lock:
            memo = self._load_index().get(str(path))
            if memo is not None and memo[:3] == signature:
                return str(memo[3])
        if file is not None:
            file.seek(0)
            sha = _hash_stream(file)
        else:
            with open(path, "rb") as opened:
                sha = _hash_stream(opened)
        with self._index_lock:
            self.files_hashed += 1
            self._load_index()[str(path)] = [*signature, sha]
            self._index_dirty = True
        return sha

    def _load_index(self) -> dict[str, list[Any]]:
        if self._index is None:
            self._index = _read_index(self._index_path)
        return self._index

    def _save_index(self) -> None:
        """Merge with what other processes wrote, then replace the file atomically."""
        with self._index_lock:
            if not self._index_dirty or self._index is None:
                return
            merged = _read_index(self._index_path)
            merged.update(self._index)
            self._index = merged
            fd, temp = tempfile.mkstemp(prefix=".index-", dir=self._tmp)
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump({"files": merged}, out)
                os.replace(temp, self._index_path)
            except BaseException:
                os.unlink(temp)
                raise
            self._index_dirty = False


# --- files, trees and archives ------------------------------------------------------------


def _in_thread(build: Callable[..., str], *args: Any) -> Fill:
    """A Fill that runs `build(*args, staging)` in a worker thread."""

    async def fill(staging: Path) -> str:
        return await asyncio.to_thread(build, *args, staging)

    return fill


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _hash_stream(file: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := file.read(CHUNK_SIZE):
        digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "wb") as out:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _write_hashing(out: IO[bytes], digest: Any, chunk: bytes) -> None:
    digest.update(chunk)
    out.write(chunk)


def _temp_file(directory: Path, name: str) -> str:
    fd, path = tempfile.mkstemp(prefix=".download-", suffix=f"-{name}", dir=directory)
    os.close(fd)
    return path


def _tree_digest(entries: list[tuple[str, str, str]]) -> str:
    """Hash of sorted (relative path, kind, sha or link target); kind d/f/x/l."""
    digest = hashlib.sha256(b"stageflow-tree-1\0")
    for rel, kind, value in sorted(entries):
        digest.update(f"{kind}\0{rel}\0{value}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _walk(root: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry under root as (posix relative path, entry), parents first, no symlink
    followed, hidden entries included (a drop's version folder is copied whole)."""
    stack = [("", str(root))]
    while stack:
        prefix, directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                rel = f"{prefix}{entry.name}"
                yield rel, entry
                if entry.is_dir(follow_symlinks=False):
                    stack.append((f"{rel}/", entry.path))


def _link_tree(source: Path, dest: Path) -> int:
    """Recreate source's tree at dest with hard links to its files; total file bytes."""
    total = 0
    can_link = True
    for rel, entry in _walk(source):
        target = os.path.join(dest, rel)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(target)
        else:
            total += entry.stat(follow_symlinks=False).st_size
            if can_link:
                try:
                    os.link(entry.path, target)
                    continue
                except OSError as error:
                    # Another file system: every link would fail; other errors
                    # (too many links to one file) are for this file only.
                    can_link = error.errno != errno.EXDEV
            shutil.copy2(entry.path, target)
    return total


def _stat_manifest(tree: Path) -> dict[str, list[int]]:
    """Size and mtime of every regular file in a tree, by relative path."""
    manifest = {}
    for dirpath, _dirnames, filenames in os.walk(tree):
        for name in filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode):
                manifest[os.path.relpath(path, tree)] = [info.st_size, info.st_mtime_ns]
    return manifest


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


def _remove_tree(path: Path) -> None:
    """Remove a tree that may have been sealed read-only."""
    if not os.path.lexists(path):
        return
    for dirpath, _dirnames, _filenames in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _discard_stale(directory: Path, prefix: str) -> None:
    """Remove temporary entries old enough that the process writing them is gone."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for entry in os.scandir(directory):
        if not entry.name.startswith(prefix):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                continue
            if entry.is_dir(follow_symlinks=False):
                _remove_tree(Path(entry.path))
            else:
                os.unlink(entry.path)
        except OSError:
            pass  # another process cleaned it first


def _read_index(path: Path) -> dict[str, list[Any]]:
    try:
        files = json.loads(path.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}  # a memo only: start again rather than fail a deployment
    return files if isinstance(files, dict) else {}


def _url_basename(url: str) -> str:
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        return "download"
    return name


def _check_member(alias: str, name: str) -> None:
    """Refuse archive members that would land outside the destination."""
    normal = name.replace("\\", "/")
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal) or ".." in normal.split("/"):
        raise ArtifactError(f"artifact {alias!r}: archive member {name!r} escapes the archive")


def _unpack_file(alias: str, archive: Path, name: str, staging: Path) -> None:
    with open(archive, "rb") as file:
        _unpack(alias, file, name, staging)


def _unpack(alias: str, file: IO[bytes], name: str, staging: Path) -> None:
    if name.endswith(".zip"):
        _unpack_zip(alias, file, staging)
    else:
        _unpack_tar(alias, file, staging, stream=False)


def _unpack_tar(alias: str, file: IO[bytes], staging: Path, stream: bool) -> None:
    """Extract a tar (any compression; `stream`: a pipe, read once) with the data filter."""

    def guard(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        _check_member(alias, member.name)
        return tarfile.data_filter(member, path)

    try:
        opened = (
            tarfile.open(fileobj=file, mode="r|*")
            if stream
            else tarfile.open(fileobj=file, mode="r:*")
        )
        with opened as archive:
            archive.extractall(staging, filter=guard)
    except tarfile.FilterError as error:
        raise ArtifactError(f"artifact {alias!r}: unsafe archive member: {error}") from error
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ArtifactError(f"artifact {alias!r}: not a readable tar archive: {error}") from error


def _unpack_zip(alias: str, file: IO[bytes], staging: Path) -> None:
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
            for member in members:
                _check_member(alias, member.filename)
            for member in members:
                path = archive.extract(member, staging)
                mode = member.external_attr >> 16
                if member.create_system == 3 and stat.S_ISREG(mode) and mode & 0o111:
                    os.chmod(path, 0o755)
    except zipfile.BadZipFile as error:
        raise ArtifactError(f"artifact {alias!r}: not a readable zip archive: {error}") from error


def _run_git(alias: str, args: list[str]) -> None:
    """Run git with an argv list (never a shell); ArtifactError with its last words."""
    try:
        done = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ArtifactError(f"artifact {alias!r}: `git {' '.join(args)}`: {error}") from error
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()
        raise ArtifactError(
            f"artifact {alias!r}: `git {' '.join(args)}` failed"
            + (f": {detail[-1]}" if detail else "")
        )


def _git_archive(alias: str, repository: str, commit: str, staging: Path) -> None:
    """Stream `git archive` of the commit straight into the tar extractor."""
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(
            ["git", "-C", repository, "archive", "--format=tar", commit],
            stdout=subprocess.PIPE,
            stderr=errors,
        )
        assert process.stdout is not None
        failure: ArtifactError | None = None
        try:
            _unpack_tar(alias, process.stdout, staging, stream=True)
            # The tar reader stops at the end marker; read git's padding so it exits 0.
            while process.stdout.read(CHUNK_SIZE):
                pass
        except ArtifactError as error:
            failure = error  # git's own complaint, if any, says more
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            process.stdout.close()
        if process.wait(timeout=GIT_TIMEOUT_SECONDS) != 0:
            errors.seek(0)
            detail = errors.read().decode(errors="replace").strip()
            raise ArtifactError(
                f"artifact {alias!r}: cannot export commit {commit} from {repository}: {detail}"
            ) from failure
        if failure is not None:
            raise failure
