"""Every dvc.yaml stage lists the code it runs: the import closure of its command's modules.

A stage whose deps miss a module it imports is not re-run when that module changes, and
`dvc repro` then keeps outputs made by old code. The closure is computed from the source
(every `import` statement, those inside functions included), within this project's packages.
"""

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("portraitseg", "datatool", "trainer")
# The modules each stage's command runs (the CLI module only parses options and is left out:
# editing help text should not re-run the pipeline).
ENTRY_MODULES = {
    "demo": ["datatool.demo"],
    "ingest": ["datatool.ingest", "datatool.sources"],
    "teacher-files": ["portraitseg.teacher_files"],
    "pseudolabel": ["datatool.pseudolabel", "portraitseg.teachers"],
    "backgrounds": ["datatool.backgrounds"],
    "synth": ["datatool.synth"],
    "synth-video": ["datatool.synth_video"],
    "boundary": ["datatool.boundary"],
    "split": ["datatool.split"],
    "encoder": ["trainer.models.encoder_import", "trainer.models.selfie_import", "trainer.checkpoint",
                "portraitseg.teacher_files"],  # the CLI resolves a teacher-file name (encoder.tflite: mediapipe-selfie)
    "train": ["trainer.train"],
    "export": ["trainer.export.calibration", "trainer.export.pipeline"],
    "evaluate": ["trainer.evaluate", "trainer.evaluation_report"],
}


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """Project modules `path` imports (absolute and relative, at any depth of the file)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name.split(".")[0] in PACKAGES and module_file(name) is not None}


def closure(entries: list[str]) -> set[Path]:
    """Every project file the entry modules import, directly or not (packages: their whole folder)."""
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path.name == "__init__.py" and name in entries:  # an entry package: all of its modules run
            todo.extend(f"{name}.{file.stem}" for file in path.parent.glob("*.py") if file.stem != "__init__")
        todo.extend(imported_modules(path, name))
        for parent in range(1, name.count(".") + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            todo.append(name.rsplit(".", parent)[0])
    return {module_file(name).relative_to(ROOT) for name in seen}


def covered(path: Path, deps: list[str]) -> bool:
    """`path` is a dep, or lies in a folder that is one."""
    return any(path.as_posix() == dep or path.as_posix().startswith(dep.rstrip("/") + "/") for dep in deps)


def stage_deps(stage: dict) -> list[str]:
    body = stage.get("do", stage)
    return [dep for dep in body.get("deps", []) if isinstance(dep, str)]


@pytest.mark.parametrize("stage_name", sorted(ENTRY_MODULES))
def test_stage_deps_cover_the_code_it_runs(stage_name):
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    deps = stage_deps(stages[stage_name])
    missing = sorted(str(path) for path in closure(ENTRY_MODULES[stage_name]) if not covered(path, deps))
    assert not missing, f"dvc.yaml stage {stage_name} runs these files but does not list them as deps: {missing}"


def test_every_stage_is_checked():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(ENTRY_MODULES)
