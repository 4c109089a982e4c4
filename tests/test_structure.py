"""The code's shape, checked: layers without cycles, modules a reader can hold, and each piece of
knowledge in one place (what a grep of the tree would show)."""

import ast
import re
from pathlib import Path

import pytest

from devtools.shape import closure, cycles, external_imports, functions, import_graph, modules

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("adapt", "app")
MAX_LINES = 700
ALLOWED_LONG = {"adapt/data/synthetic.py"}  # the synthetic world generator: one job, kept whole


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_and_function_level_imports_are_edges(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("def f():\n    from p import b\n")
    (pkg / "b.py").write_text("")
    mods = {"p": pkg / "__init__.py", "p.a": pkg / "a.py", "p.b": pkg / "b.py"}
    assert import_graph(mods) == {"p": {"p.a"}, "p.a": {"p", "p.b"}, "p.b": set()}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package):
    """No module imports, directly or through others, a module that imports it (lazy imports
    inside functions count: they hide a cycle, they do not remove it)."""
    mods = {**modules("adapt"), **(modules("app") if package == "app" else {})}
    assert cycles(import_graph(mods)) == []


def test_the_library_never_imports_the_app_or_gradio():
    for name, path in modules("adapt").items():
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) (app|gradio)\b", text, re.M), name


def test_modules_stay_readable():
    long = {
        str(p.relative_to(REPO)): n
        for pkg in PACKAGES
        for p in modules(pkg).values()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert set(long) <= ALLOWED_LONG, long


def occurrences(pattern: str, packages=PACKAGES) -> set[str]:
    regex = re.compile(pattern)
    return {str(p.relative_to(REPO)) for pkg in packages for p in modules(pkg).values() if regex.search(p.read_text())}


def test_each_piece_of_knowledge_lives_in_one_place():
    # atomic writes: the rename of a finished temporary file onto its final name
    assert occurrences(r"os\.replace\(") == {"adapt/files.py"}
    # parameter counting on the meta device
    assert occurrences(r"torch\.device\([\"']meta[\"']\)") == {"adapt/counts.py"}
    # the merged-checkpoint writer and the train-then-save sequence
    assert occurrences(r"\.merge\(\)[\s\S]*save_file\(") == {"adapt/export.py"}
    assert occurrences(r"save_adapter\(", PACKAGES + ("bench",)) == {"adapt/export.py", "adapt/pipeline.py"}
    # task options built from a dataset: by the tasks, asked for through one function
    assert occurrences(r"dataset\.ignore_index") == {"adapt/tasks/openvocab.py", "adapt/tasks/concept.py"}
    # the text format of clicks is read by one parser
    assert occurrences(r"split\([\"'];[\"']\)") == {"adapt/tasks/dichotomous.py"}
    # sha256 of a file and human-readable sizes
    assert occurrences(r"hashlib\.sha256\(\)") == {"adapt/files.py", "adapt/weights.py"}  # weights: streamed download
    assert occurrences(r"def \w*(fmt|format)_bytes") == {"adapt/files.py"}
    # zipping a folder, and asking how many GPUs the studio has
    assert occurrences(r"ZipFile\([^)]*[\"']w[\"']", PACKAGES + ("bench", "devtools")) == {"adapt/files.py"}
    assert occurrences(r"cuda\.(device_count|is_available)\(", ("app",)) == {"app/gpus.py"}


def test_the_app_never_branches_on_a_task_name():
    """What a task's masks are, how they are drawn and whether the user names the classes are asked
    of the task (Task.mask, adapt/tasks/masks.py), never decided by comparing its name in app/."""
    from adapt.tasks import TASKS

    names = "|".join(map(re.escape, TASKS))
    literal = rf"[\"'](?:{names})[\"']"
    compared = (
        rf"[=!]=\s*{literal}"  # task == "openvocab"
        rf"|{literal}\s*[=!]="  # "dichotomous" != task
        rf"|\bin\s*[(\[{{]\s*{literal}"  # task in ("openvocab", ...)
        r"|\btask\w*\.name\s*[=!]="  # task_obj.name == ...
        r"|\[[\"']task[\"']\]\s*[=!]="  # spec["task"] == ...
    )
    branches = ['task == "openvocab"', "'dichotomous' != t", 'task_obj.name == "x"', 'spec["task"] != x']
    assert all(re.search(compared, b) for b in branches + ['if t in ("openvocab",):'])
    assert occurrences(compared, ("app",)) == set()


def string_literals(path: Path) -> set[str]:
    return {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_the_planner_names_no_method():
    """What a method costs in memory is declared by the method (Handle.memory), not by a table of
    method names in the planner."""
    from adapt.methods import METHODS

    assert string_literals(REPO / "adapt/planner.py") & set(METHODS) == set()


def test_architectures_are_known_only_to_backbones():
    """What an architecture is and can do (memory blocks, embedding, upstream format, ONNX) is
    asked of its Backbone subclass: outside adapt/backbones/ no module reads a spec's or a catalog
    entry's kind, nor names an architecture that is not a whole family."""
    from adapt.backbones import ARCHITECTURES, FAMILIES

    kinds = sorted(set(ARCHITECTURES) - set(FAMILIES))
    assert kinds  # e.g. sam2, tinyvit
    names = "|".join(map(re.escape, kinds))
    pattern = r"(spec|arch)(\.get\(|\[)[\"']kind[\"']|\.arch\b.*[\"']kind[\"']|[\"'](" + names + r")[\"']"
    readers = {p for p in occurrences(pattern) if not p.startswith("adapt/backbones/")}
    assert readers == set()
    for name, path in {**modules("adapt"), **modules("app")}.items():
        if not name.startswith("adapt.backbones"):
            assert string_literals(path) & set(kinds) == set(), name


def test_job_folder_names_are_spelled_once():
    names = [
        "data.zip",
        "adapter.zip",
        "merged.safetensors",
        "result.json",
        "before.png",
        "preview.png",
        "after.png",
        "_pred.png",
        "labelset",
        "labelset.zip",
    ]
    for name in names:
        assert occurrences(r"(?<![\w.-])" + re.escape(name) + r"[\"']") == {"app/config.py"}, name
    assert occurrences(r"[\"']checkpoint\.pt[\"']") == {"adapt/train.py"}
    assert occurrences(r"[\"']events\.jsonl[\"']") == {"adapt/events.py"}


def test_the_event_log_has_one_owner():
    """Events are written, read and folded through adapt.events: no other module spells the key
    that names an event, or writes an event by its name."""
    # (adapt/data/labelstudio.py spells Label Studio's own result field "type", not an event's)
    assert occurrences(r"[\"']type[\"']") - {"adapt/data/labelstudio.py"} == {"adapt/events.py"}
    assert occurrences(r"\blog\(\s*[\"']") == set()


def test_the_trainer_reads_top_to_bottom():
    tree = ast.parse((REPO / "adapt" / "train.py").read_text())
    (loop,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train"]
    assert loop.end_lineno - loop.lineno + 1 < 110


def test_the_cli_offers_exactly_the_registered_tasks():
    from adapt.__main__ import TASK_NAMES
    from adapt.tasks import TASKS

    assert TASK_NAMES == list(TASKS)


def test_dataset_kinds_are_the_tasks():
    """adapt.data checks masks per task below the task layer; its list must be the registry's."""
    from adapt.data import TASKS as DATASET_KINDS
    from adapt.tasks import TASKS

    assert list(DATASET_KINDS) == list(TASKS)


REQUEST_SIDE = (
    "app.studio",
    "app.label_rest",
    "app.ui",
    "app.rest",
    "app.lsbackend",
)  # the page and the request facade


def imports_gradio(path: Path) -> bool:
    return "gradio" in external_imports(path)


def test_the_job_process_imports_neither_the_page_nor_the_request_facade():
    """The worker (and everything it imports, lazily or not) is the job side: it never reaches the
    request side or Gradio, so a job runs where neither is installed or loaded."""
    mods = {**modules("adapt"), **modules("app")}
    reached = closure(import_graph(mods), "app.run.worker")
    assert {"app.jobs", "app.jobs.train", "app.jobs.label"} <= reached
    assert not {m for m in reached if any(m == r or m.startswith(r + ".") for r in REQUEST_SIDE)}
    assert not {m for m in reached if imports_gradio(mods[m])}
    assert imports_gradio(mods["app.ui.page"])  # the check sees Gradio where it is


def test_loading_the_job_process_loads_no_gradio():
    import subprocess
    import sys

    code = "import app.run.worker, app.jobs, sys; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


MAX_FUNCTION = 120  # lines


def test_no_function_is_too_long():
    """A function a reader can hold: none over MAX_FUNCTION lines (the synthetic world generator's
    module aside, kept whole as above)."""
    long = [
        f"{p.relative_to(REPO)}:{name} ({n} lines)"
        for pkg in PACKAGES
        for p in modules(pkg).values()
        if str(p.relative_to(REPO)) not in ALLOWED_LONG
        for name, _, n in functions(p)
        if n > MAX_FUNCTION
    ]
    assert long == []


# What the studio may ask of the library: the use-case floor (what runs, what is decided before a
# run, what a run reports, labelling a folder), the adapter files (local and on the Hub), data
# loading and the files and pictures made of it, and the registries (backbones, methods, tasks,
# weights, the measured evidence per method). Everything else (the trainer, the planner, a task's
# module, a method's) is reached through these.
APP_MAY_IMPORT = {
    "floor": {"adapt.pipeline", "adapt.preflight", "adapt.events", "adapt.batch"},
    "adapter files": {"adapt.export", "adapt.hub"},
    "data": {"adapt.data", "adapt.archive", "adapt.files", "adapt.render"},
    "registries": {"adapt.backbones", "adapt.methods", "adapt.tasks", "adapt.weights", "adapt.evidence"},
}


def test_the_app_imports_only_the_floor_files_data_and_registries():
    allowed = set().union(*APP_MAY_IMPORT.values())
    mods = {**modules("adapt"), **modules("app")}
    graph = import_graph(mods)
    reached = {(m, w) for m in graph if m.startswith("app") for w in graph[m] if w.startswith("adapt")}
    assert {(m, w) for m, w in reached if w not in allowed} == set()
    assert {w for _, w in reached} >= {"adapt.pipeline", "adapt.export", "adapt.data", "adapt.tasks"}
