"""`gguf`: parse, call one library function, print; and the --gguf option that prune and build-family share."""

from __future__ import annotations

from pathlib import Path

import click

from hubprune import manifest
from hubprune.cli import output
from hubprune.cli.options import StagedCommand, option
from hubprune.export.gguf import NEEDS_LLAMA_QUANTIZE, WRITABLE, parse_types
from hubprune.export.members import export_gguf
from hubprune.publish.licence import known_licence

TYPES_HELP = (
    f"GGUF types, comma-separated, any case: {', '.join(WRITABLE)}. K-quants ({NEEDS_LLAMA_QUANTIZE[5]} and the "
    "like) are made from the F16 file by llama.cpp's llama-quantize."
)


def _types(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    try:
        return parse_types(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


gguf_option = option(
    "--gguf",
    "gguf_types",
    stage="gguf",
    callback=_types,
    help=f"Also write every member as GGUF for llama.cpp and Ollama: {TYPES_HELP}",
)


@click.command("gguf", cls=StagedCommand)
@click.argument("path", type=click.Path(path_type=Path))
@option("--types", "types", required=True, stage="gguf", callback=_types, help=TYPES_HELP)
@option(
    "--source",
    stage="gguf",
    type=click.Path(path_type=Path),
    help="The .gguf file the family was built from (not needed for the embedded default): its metadata and "
    "tokenizer are copied as they are.",
)
def gguf_command(path: Path, types: tuple[str, ...], source: Path | None) -> None:
    """Write the members of a family (or one member, or one pruned checkpoint) as GGUF files beside their
    safetensors, for llama.cpp, Ollama and LM Studio."""
    with output.progress_display() as show:
        licence = known_licence(manifest.locate(path).family_dir or path)
        written = export_gguf(path, types, source=source, licence=licence, on_progress=show)
    click.echo(output.gguf_table(written))
