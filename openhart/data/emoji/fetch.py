"""Emoji packages: ``npm pack`` downloads cached as tarballs, and reading a tarball or folder.

Nothing from a package is installed or executed; only its JSON data and images are read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from openhart.data.emoji.sets import DEFAULT_PACKAGES, EMOJI_SETS, FORBIDDEN_PACKAGES

logger = logging.getLogger(__name__)

# Inside a package, the only files the builder reads (a tarball is filtered while streaming, so the
# sprite sheets and font sources never reach memory). Apple/Facebook image folders never match.
_USED_FILES = re.compile(
    r"^(?:[^/]+|data/[^/]+\.json|img/(?:google|twitter)/64/[^/]+\.png|(?:color|black)/svg/[^/]+\.svg)$"
)


class EmojiPackage:
    """The files of one npm package, from a ``.tgz`` (read once, filtered) or an unpacked folder."""

    def __init__(self, origin: Path, files: dict[str, bytes] | None = None, folder: Path | None = None):
        self.origin = origin
        self._files = files
        self._folder = folder
        meta = json.loads(self.read("package.json"))
        self.name: str = meta.get("name", "")
        self.version: str = meta.get("version", "")

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> EmojiPackage:
        path = Path(path)
        if path.is_dir():
            for folder in (path, path / "package"):
                if (folder / "package.json").is_file():
                    return cls(path, folder=folder)
            raise ValueError(f"sources: {path} has no package.json (nor package/package.json)")
        if path.is_file() and path.name.endswith((".tgz", ".tar.gz", ".tar")):
            files: dict[str, bytes] = {}
            with tarfile.open(path, mode="r|*") as archive:
                for member in archive:
                    # npm tarballs hold everything under one top folder ("package/"); drop it.
                    _, _, relative = member.name.lstrip("./").partition("/")
                    if member.isfile() and _USED_FILES.match(relative):
                        handle = archive.extractfile(member)
                        if handle is not None:
                            files[relative] = handle.read()
            if "package.json" not in files:
                raise ValueError(f"sources: {path} is not an npm package tarball (no package.json)")
            return cls(path, files=files)
        raise ValueError(f"sources: {path} is neither a package folder nor a .tgz tarball")

    def read(self, relative: str) -> bytes:
        if self._files is not None:
            if relative not in self._files:
                raise FileNotFoundError(f"{self.origin}: no {relative}")
            return self._files[relative]
        assert self._folder is not None
        return (self._folder / relative).read_bytes()

    def read_json(self, relative: str) -> Any:
        return json.loads(self.read(relative))

    def exists(self, relative: str) -> bool:
        if self._files is not None:
            return relative in self._files
        assert self._folder is not None
        return (self._folder / relative).is_file()

    def __repr__(self) -> str:
        return f"EmojiPackage({self.name}@{self.version} from {self.origin})"


def _tarball_name(package: str, version: str) -> str:
    return f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"


def fetch_packages(
    cache_dir: str | os.PathLike[str],
    packages: dict[str, str] | None = None,
    npm: str = "npm",
) -> list[Path]:
    """Tarballs of ``packages`` (name -> version) in ``cache_dir``, fetched with ``npm pack`` when
    missing. Nothing is installed or executed from the packages."""
    packages = DEFAULT_PACKAGES if packages is None else packages
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarballs = []
    for package, version in packages.items():
        if package in FORBIDDEN_PACKAGES:
            raise ValueError(f"packages: {package} is not used ({FORBIDDEN_PACKAGES[package]})")
        target = cache_dir / _tarball_name(package, version)
        if not target.is_file():
            if shutil.which(npm) is None:
                raise RuntimeError(
                    f"npm not found: install Node.js, or download {package}@{version} and pass it with --sources"
                )
            logger.info("npm pack %s@%s -> %s", package, version, cache_dir)
            result = subprocess.run(
                [npm, "pack", f"{package}@{version}", "--pack-destination", str(cache_dir), "--silent"],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0 or not target.is_file():
                raise RuntimeError(f"npm pack {package}@{version} failed: {result.stderr.strip()[-800:]}")
        tarballs.append(target)
    return tarballs


def _expand_sources(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Package folders and tarballs; a folder that is not a package stands for its contents."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if not path.exists():
            raise ValueError(f"sources: {path} does not exist")
        is_package = (
            path.is_file() or (path / "package.json").is_file() or (path / "package/package.json").is_file()
        )
        if is_package:
            found.append(path)
            continue
        children = sorted(
            child
            for child in path.iterdir()
            if child.name.endswith((".tgz", ".tar.gz"))
            or (
                child.is_dir()
                and ((child / "package.json").is_file() or (child / "package/package.json").is_file())
            )
        )
        if not children:
            raise ValueError(f"sources: {path} holds no package folder or .tgz")
        found.extend(children)
    return found


def open_packages(sources: Iterable[str | os.PathLike[str]]) -> dict[str, EmojiPackage]:
    """Package name -> package for every source; forbidden or duplicated packages are errors."""
    packages: dict[str, EmojiPackage] = {}
    known = {s.package for s in EMOJI_SETS.values()}
    for path in _expand_sources(sources):
        package = EmojiPackage.open(path)
        if package.name in FORBIDDEN_PACKAGES:
            raise ValueError(
                f"sources: {path} is {package.name}, never used ({FORBIDDEN_PACKAGES[package.name]})"
            )
        if package.name not in known:
            logger.warning("sources: ignoring %s (not an emoji set this builder knows)", package)
            continue
        if package.name in packages:
            raise ValueError(f"sources: {package.name} given twice ({packages[package.name].origin}, {path})")
        packages[package.name] = package
    return packages
