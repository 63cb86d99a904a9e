"""``openhart data ...``: dataset builders.

openhart data emoji --out data/emoji-64
openhart data emoji --out data/emoji-64 --sources ~/Downloads/openmoji-17.0.0.tgz --set openmoji-color

Register on the main app with ``app.add_typer(data_app, name="data")``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from openhart.data.emoji import DEFAULT_PACKAGES, EMOJI_SETS, build_emoji_dataset, fetch_packages
from openhart.error_boundary import ErrorBoundaryGroup
from openhart.errors import InvalidInputError, NetworkError, OpenHARTError

data_app = typer.Typer(
    cls=ErrorBoundaryGroup, add_completion=False, no_args_is_help=True, help="Build training datasets."
)
logger = logging.getLogger(__name__)


@data_app.callback()
def data() -> None:
    """Build training datasets."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "openhart" / "emoji-packages"


@data_app.command("emoji")
def emoji(
    out: Annotated[Path, typer.Option("--out", help="Output folder (images/, metadata.jsonl, LICENSES.md).")],
    sources: Annotated[
        list[Path] | None,
        typer.Option(
            "--sources",
            help="Package tarball (.tgz) or folder, or a folder of them; repeat for several. "
            "Without it the pinned packages are fetched with `npm pack` into --cache-dir.",
        ),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Where `npm pack` puts tarballs [~/.cache/openhart/emoji-packages]."
        ),
    ] = None,
    image_size: Annotated[int, typer.Option("--image-size", min=8, help="Side of the square images.")] = 64,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help=f"Only these sets (repeatable): {', '.join(EMOJI_SETS)}. Default: all available."
        ),
    ] = None,
    test_fraction: Annotated[
        float,
        typer.Option(
            "--test-fraction", min=0.0, max=0.99, help="Share of concepts held out as split 'test'."
        ),
    ] = 0.05,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redraw images already on disk.")] = False,
    keep_ambiguous: Annotated[
        bool,
        typer.Option(
            "--keep-ambiguous",
            help="Keep drawings that cannot show their caption (tone variants identical to another "
            "tone, one drawing for many flags).",
        ),
    ] = False,
) -> None:
    """Build the emoji dataset from openly licensed sets (Noto, Twemoji, OpenMoji, Fluent Flat)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if sets:
        unknown = [s for s in sets if s not in EMOJI_SETS]
        if unknown:
            raise InvalidInputError(f"--set: unknown set(s) {unknown}; choose from {list(EMOJI_SETS)}")
    try:
        if not sources:
            wanted = {EMOJI_SETS[s].package for s in sets} if sets else set(DEFAULT_PACKAGES)
            packages = {name: version for name, version in DEFAULT_PACKAGES.items() if name in wanted}
            sources = fetch_packages(cache_dir or default_cache_dir(), packages)
        report = build_emoji_dataset(
            out, sources, image_size=image_size, sets=sets or None, test_fraction=test_fraction,
            overwrite=overwrite, drop_ambiguous=not keep_ambiguous, progress=True,
        )  # fmt: skip
    except OpenHARTError:
        raise
    except (ValueError, FileNotFoundError) as error:  # the messages name the source, set or option
        raise InvalidInputError(str(error)) from error
    except RuntimeError as error:  # `npm pack` missing or failing: the packages could not be had
        raise NetworkError(str(error)) from error
    typer.echo(json.dumps(asdict(report), indent=2))
