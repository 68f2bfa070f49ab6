"""What the package imports: the code a saved model folder ships (its remote code and `pipelines.py`) imports only the
standard library and the core packages, imports its siblings the way `transformers` follows them, and does nothing
but define things when imported; and the package's own modules import each other without a cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from helpers import dotted_name

import hf_sentence_vae
from hf_sentence_vae import hub

PACKAGE_DIR = Path(hf_sentence_vae.__file__).parent
# Imported by the shipped code: besides the standard library, these (and `tokenizers` by the tokenizer's file);
# `numpy` is a requirement of `transformers` itself.
CORE = {"torch", "transformers", "numpy"}
# Standard-library modules that do I/O a loaded model has no business doing.
FORBIDDEN = {"subprocess", "socket", "urllib", "http", "shutil", "pickle", "ctypes"}
# The only calls evaluated when a shipped file is imported.
ALLOWED_AT_IMPORT = {"logging.get_logger", "torch.no_grad", "math.log", "math.sqrt", "math.pi", "dataclass", "field"}


def _import_time_nodes(body):
    """Statements and expressions evaluated when a module is imported: module-level code, class bodies,
    decorators and default values (not function bodies)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from node.decorator_list
            yield from node.args.defaults
            yield from (d for d in node.args.kw_defaults if d is not None)
        elif isinstance(node, ast.ClassDef):
            yield from node.decorator_list
            yield from node.bases
            yield from node.keywords
            yield from _import_time_nodes(node.body)
        else:
            yield node


def _shipped_folder(tmp_path, tiny_model, tiny_tokenizer) -> Path:
    """A Hub-ready folder: `save_pretrained` of a model and its tokenizer, and the pipeline (`hub.add_pipeline`)."""
    tiny_model(vocab_size=len(tiny_tokenizer)).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    hub.add_pipeline(tmp_path)
    return tmp_path


def test_shipped_code_imports_only_core_packages_and_does_no_io_at_import(tiny_model, tiny_tokenizer, tmp_path):
    """Parse the files a Hub-ready folder actually ships. The remote code (what `save_pretrained` copies): imports are
    the standard library, torch, transformers and numpy (plus tokenizers for the tokenizer), or each other as
    `from .module import name` (what transformers follows and copies; `from . import module` is not followed); the
    only calls made at import time are a few harmless ones (no open/read/write, network, subprocess or
    environment-dependent I/O). `pipelines.py` travels alone (`custom_pipelines`): no relative import at all."""
    folder = _shipped_folder(tmp_path, tiny_model, tiny_tokenizer)
    shipped = sorted(folder.glob("*.py"))
    names = {p.name for p in shipped}
    assert {"configuration_sentence_vae.py", "modeling_sentence_vae.py", "pipelines.py"} <= names
    assert not names & {
        "training.py",
        "trainer.py",
        "data.py",
        "checkpointing.py",
        "hub.py",
        "metrics.py",
        "loading.py",
    }
    stdlib = set(sys.stdlib_module_names)
    for path in shipped:
        assert path.read_bytes() == (PACKAGE_DIR / path.name).read_bytes(), path.name
        tree = ast.parse(path.read_text(), filename=path.name)
        is_pipeline = path.name == "pipelines.py"
        allowed = CORE | ({"tokenizers"} if path.name.startswith("tokenization") else set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert not is_pipeline, "pipelines.py must not import package modules"
                assert node.module is not None, f"{path.name}: `from . import ...` is not followed by transformers"
                assert (folder / f"{node.module}.py").is_file(), f"{path.name} imports .{node.module}, not shipped"
                continue
            if isinstance(node, ast.ImportFrom):
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                assert top in stdlib or top in allowed, f"{path.name} imports {module}"
                assert top not in FORBIDDEN, f"{path.name} imports {module}"
        if is_pipeline:
            continue  # it registers its task when imported: that is its job
        for node in _import_time_nodes(tree.body):
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                name = dotted_name(call.func)
                assert name in ALLOWED_AT_IMPORT, f"{path.name}:{call.lineno} calls {name}() at import time"
            for sub in ast.walk(node):
                assert not isinstance(sub, (ast.With, ast.AsyncWith, ast.Global)), f"{path.name}:{sub.lineno}"


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports (at module level or inside functions), from the source."""
    modules = {
        ".".join(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE_DIR.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            edges |= {target for target in targets if target in modules and target != name}
        graph[name] = edges
    return graph


def test_the_package_has_no_import_cycle():
    """No module imports (directly or through others, counting imports inside functions) one that imports it back;
    a package's `__init__` re-exporting its modules counts as importing them."""
    graph = _package_imports()
    assert "hf_sentence_vae.training.trainer" in graph and graph["hf_sentence_vae.hub"]
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
