"""llama.cpp binaries for the benches, built once into the cache from the llama.cpp source that the
llama-cpp-python sdist vendors (vendor/llama.cpp), and helpers that run them on a GGUF file.

The build is for a generic x86-64 with AVX2: this virtual CPU advertises instructions it cannot run, so a native
build (-march=native) dies with "Illegal instruction". Everything lives in CACHE_ROOT/llama.cpp/ (the sdist, its
extracted tree and build-<version>/); the build runs once, under `nice -n 19`, and takes a while on 2 cores.

    python bench/llama_cpp.py   # build if missing, print the binaries' paths and the llama.cpp version
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from hubprune.pruning.gguf import cache_root

LLAMA_CPP_PYTHON = "0.3.36"  # its vendored llama.cpp is ggml-org/llama.cpp@0c1e570 (its CHANGELOG)
CMAKE_FLAGS = [
    "-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
    "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release",
    # only what the three targets need: no tests, server, web UI, unified app or HTTPS downloads
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_EXAMPLES=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DBUILD_SHARED_LIBS=OFF",
]  # fmt: skip
# llama-simple is the greedy generator: model, prompt, -n tokens, argmax sampling, no chat mode, no stdin, exits.
# (llama-cli here is the server code's chat front end and builds only with it; llama-completion can do it too,
# with -no-cnv --temp 0, but adds sampler chains, an " [end of text]" marker and an interactive mode to keep off.)
TARGETS = {"perplexity": "llama-perplexity", "tokenize": "llama-tokenize", "generate": "llama-simple"}


def _say(message: str) -> None:
    print(f"[llama.cpp] {message}", file=sys.stderr, flush=True)


def _folder() -> Path:
    return cache_root() / "llama.cpp"


def _source() -> Path:
    """The extracted sdist's vendor/llama.cpp, downloaded and extracted if missing."""
    folder = _folder()
    tree = folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not (tree / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        sdist = folder / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
        if not sdist.exists():
            _say(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist into {folder}")
            spec = f"llama-cpp-python=={LLAMA_CPP_PYTHON}"
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d"]
            subprocess.run([*pip, str(folder), spec], check=True)
        _say(f"extracting {sdist.name}")
        with tempfile.TemporaryDirectory(dir=folder) as scratch, tarfile.open(sdist) as tar:
            tar.extractall(scratch, filter="data")
            shutil.rmtree(tree, ignore_errors=True)
            (Path(scratch) / tree.name).rename(tree)
    return tree / "vendor" / "llama.cpp"


def binaries() -> dict[str, Path]:
    """{"perplexity", "tokenize", "generate"} -> the built binaries' paths, building them first if any is missing."""
    build = _folder() / f"build-{LLAMA_CPP_PYTHON}"
    paths = {key: build / "bin" / target for key, target in TARGETS.items()}
    if all(path.exists() for path in paths.values()):
        return paths
    missing = [tool for tool in ("cmake", "g++") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"building llama.cpp needs {' and '.join(missing)}: install them (apt-get install cmake g++)")
    _folder().mkdir(parents=True, exist_ok=True)
    source = _source()
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _say(f"configuring {source} into {build}")
    nice = ["nice", "-n", "19"]
    run = {"check": True, "stdout": sys.stderr}
    subprocess.run([*nice, "cmake", "-S", str(source), "-B", str(build), *generator, *CMAKE_FLAGS], **run)
    _say(f"building {', '.join(TARGETS.values())} (many minutes on 2 cores)")
    subprocess.run([*nice, "cmake", "--build", str(build), "-j", "2", "--target", *TARGETS.values()], **run)
    return paths


def version() -> str:
    """llama.cpp's version, build and commit as the binaries report them: "0.5.0-dev (build 1, commit 0c1e570)"."""
    done = subprocess.run([binaries()["perplexity"], "--version"], capture_output=True, text=True)
    found = re.search(r"version: (.+)", done.stdout + done.stderr)
    return found.group(1).strip() if found else "unknown"


def _run(command: list[str | Path], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a binary without a terminal on stdin; its stderr (llama.cpp's log) is kept for errors only."""
    command = [str(part) for part in command]
    stdin_kind = subprocess.DEVNULL if stdin is None else None
    done = subprocess.run(command, input=stdin, stdin=stdin_kind, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}):\n{tail}")
    return done


def perplexity(gguf: Path, text_file: Path, ctx: int = 512, binary: Path | None = None) -> float:
    """llama-perplexity's "Final estimate" on text_file (`-m GGUF -f TEXT -c CTX`).

    What it scores: the file (less one trailing newline) is tokenized whole, with BOS in front when the GGUF's
    tokenizer.ggml.add_bos_token says so, and cut into floor(n / CTX) back-to-back chunks of CTX tokens; it needs
    n >= 2 * CTX, and the remainder is dropped. In each chunk the first token is *overwritten* by BOS (when the
    model adds one), the chunk is decoded alone (no context from the previous chunk), and only the second half is
    scored: the tokens at positions CTX/2 + 1 .. CTX - 1, i.e. CTX/2 - 1 tokens per chunk, each predicted with at
    least CTX/2 tokens of context. The estimate is exp(mean NLL) over all scored tokens of all chunks.
    """
    command = [binary or binaries()["perplexity"], "-m", gguf, "-f", text_file, "-c", str(ctx)]
    done = _run(command)
    output = done.stdout + done.stderr
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", output)
    if not found:
        raise RuntimeError(f"no final estimate in llama-perplexity's output:\n{output[-2000:]}")
    return float(found.group(1))


def tokenize(gguf: Path, text: str, bos: bool = False, binary: Path | None = None) -> list[int]:
    """Token ids of text (sent on stdin, verbatim: `--stdin --ids --no-escape --no-parse-special --log-disable`,
    plus `--no-bos` unless bos). With bos=True, BOS is added only if the GGUF's add_bos_token says so, as
    llama-perplexity does; special-token text such as "<|im_start|>" is tokenized as plain text, as there too."""
    command = [binary or binaries()["tokenize"], "-m", gguf, "--stdin", "--ids", "--no-escape", "--no-parse-special"]
    command += ["--log-disable"] + ([] if bos else ["--no-bos"])
    lines = [line for line in _run(command, stdin=text).stdout.splitlines() if line.startswith("[")]
    if not lines:
        raise RuntimeError("llama-tokenize printed no id list")
    return [int(token) for token in lines[-1].strip("[]").split(",") if token.strip()]


def generate(gguf: Path, prompt: str, n_tokens: int, binary: Path | None = None) -> str:
    """The greedy (argmax) continuation of prompt, at most n_tokens tokens (less if the model ends the text):
    `llama-simple -m GGUF -n N PROMPT`. llama-simple tokenizes the prompt with the model's BOS rule, parses special
    tokens, and prints the prompt's tokens, the continuation's and a newline; the continuation is what follows the
    prompt's text."""
    done = _run([binary or binaries()["generate"], "-m", gguf, "-n", str(n_tokens), prompt])
    at = done.stdout.find(prompt)
    if at < 0:
        raise RuntimeError(f"llama-simple's output does not repeat the prompt:\n{done.stdout!r}")
    return done.stdout[at + len(prompt) :].removesuffix("\n")


def main() -> None:
    for key, path in binaries().items():
        print(f"{key}: {path}")
    print(f"llama.cpp: {version()} (vendored by llama-cpp-python {LLAMA_CPP_PYTHON})")


if __name__ == "__main__":
    main()
